"""Which images a user means: one reading of folders, .txt lists, globs and image files for both tasks."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError


def image_files(specs: Sequence[str], what: str, *, suffixes: Iterable[str]) -> list[str]:
    """Absolute paths of the images that `specs` name, in order, each once: folders (recursively), .txt lists
    (one path a line, relative to the list's folder), globs, or image files; `suffixes` without the dot, lower
    case. A spec that names nothing is a UserError that says which (`what` names the option)."""
    ok = {s.lower().lstrip(".") for s in suffixes}
    is_image = lambda f: str(f).rsplit(".", 1)[-1].lower() in ok  # noqa: E731
    files: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = [str(f) for f in sorted(p.rglob("*")) if is_image(f) and f.is_file()]
        elif p.is_file() and p.suffix == ".txt":
            lines = [line.strip() for line in p.read_text(errors="ignore").splitlines() if line.strip()]
            found = [str(f if Path(f).is_absolute() else p.parent / f) for f in lines]
        elif p.is_file():
            found = [str(p)] if is_image(p) else []
        elif any(c in str(spec) for c in "*?["):
            found = sorted(f for f in glob.glob(str(spec), recursive=True) if is_image(f))
        else:
            raise UserError(f"{what} {spec} does not exist")
        if not found:
            raise UserError(f"{what} {spec}: no images found")
        files += [str(Path(f).resolve()) for f in found]
    return list(dict.fromkeys(files))


def unlabeled_only(files: Sequence[str], *, labeled: Iterable[str], val: Iterable[str],
                   what: str = "--unlabeled") -> list[str]:
    """`files` (absolute) without the labeled training images, which are warned about and used once, as labeled;
    refuses validation images (they would leak into the evaluation) and a set with nothing left. The same rule
    for detection and classification."""
    import logging

    val_files = {str(Path(f).resolve()) for f in val}
    leaked = [f for f in files if f in val_files]
    if leaked:
        raise UserError(f"{what} holds {len(leaked)} validation image(s), e.g. {leaked[0]}: they would leak into "
                        f"the evaluation; leave the val split out of the unlabeled images")
    labeled_files = {str(Path(f).resolve()) for f in labeled}
    both = [f for f in files if f in labeled_files]
    if both:
        logging.getLogger("yolodistill").warning(
            f"WARNING: {len(both)} of the {what} images are also labeled training images (e.g. {both[0]}); each is "
            f"used once, as labeled")
        files = [f for f in files if f not in labeled_files]
    if not files:
        raise UserError(f"{what}: every image is also a labeled training image; nothing is left unlabeled")
    return list(files)
