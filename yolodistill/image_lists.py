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
