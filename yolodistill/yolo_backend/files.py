"""Files a yolov5 user brings: hyperparameter yamls, model yamls, dataset yamls (read offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from ..errors import UserError
from ._yolov5 import IMG_FORMATS, STANDARD_CFGS, YOLOV5_DIR


def default_hyp_path() -> Path:
    """yolov5's hyp.scratch-low.yaml, the train.py default."""
    return YOLOV5_DIR / "data" / "hyps" / "hyp.scratch-low.yaml"


def resolve_hyp(path: str | Path | None) -> Path:
    """A hyp yaml path, or a bare name of one of yolov5's packaged hyps (`hyp.scratch-high.yaml`)."""
    if not path:
        return default_hyp_path()
    p = Path(path)
    if p.is_file():
        return p
    packaged = YOLOV5_DIR / "data" / "hyps" / p.name
    if packaged.is_file():
        return packaged
    raise UserError(f"hyperparameter file not found: {path}")


def load_hyp(path: str | Path | None) -> dict:
    """Read a hyperparameter yaml into a dict (safe_load only)."""
    p = resolve_hyp(path)
    hyp = _read_yaml(p, "hyperparameter file")
    missing = {"lr0", "lrf", "momentum", "weight_decay", "box", "obj", "cls"} - set(hyp)
    if missing:
        raise UserError(f"hyperparameter file {p} lacks {', '.join(sorted(missing))}")
    return hyp


def resolve_model_cfg(cfg: str | Path) -> Path:
    """A model yaml path, or a bare name of one of yolov5's packaged ones (`yolov5n.yaml`)."""
    p = Path(cfg)
    if p.is_file():
        return p
    name = p.name if p.suffix else p.name + ".yaml"
    packaged = YOLOV5_DIR / "models" / name
    if packaged.is_file():
        return packaged
    raise UserError(f"model config not found: {cfg} (packaged ones: {', '.join(STANDARD_CFGS)})")


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, errors="ignore") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} does not hold a mapping")
    return data


def load_data_yaml(path: str | Path) -> dict:
    """Read a YOLOv5 dataset yaml offline and check its image folders; yolov5's check_dataset downloads.

    A relative `path:` is taken relative to the yaml's folder when that folder holds it, else the
    working directory (yolov5 resolves it against its own install folder, which is never right for
    a pip install). train/val/test entries are folders, image lists (.txt) or lists of those.
    """
    yaml_path = Path(path)
    data = _read_yaml(yaml_path, "dataset yaml")
    for key in ("train", "val"):
        if not data.get(key):
            raise UserError(f"dataset yaml {yaml_path} has no '{key}' entry")
    names = data.get("names")
    if names is None:
        raise UserError(f"dataset yaml {yaml_path} has no 'names' entry")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        raise UserError(f"dataset yaml {yaml_path}: 'names' must be a list or a mapping")
    nc = int(data.get("nc", len(names)))
    if nc != len(names):
        raise UserError(f"dataset yaml {yaml_path}: nc={nc} but {len(names)} names are listed")

    root = Path(data.get("path") or "")
    if not root.is_absolute():
        beside = (yaml_path.parent / root).resolve()
        root = beside if beside.exists() else root.resolve()
    out = dict(data, path=str(root), names=names, nc=nc)
    for key in ("train", "val", "test", "unlabeled"):
        if not data.get(key):
            continue
        entries = data[key] if isinstance(data[key], (list, tuple)) else [data[key]]
        resolved = [str(p if Path(p).is_absolute() else root / p) for p in entries]
        if key == "unlabeled":  # the forms --unlabeled takes (folders, .txt lists, globs), checked as it checks them
            try:
                image_files(resolved, "unlabeled")
            except UserError as e:
                raise UserError(f"dataset yaml {yaml_path}: {e}") from None
        else:
            for p in resolved:
                if not Path(p).exists():
                    raise UserError(f"dataset yaml {yaml_path}: {key} path does not exist: {p}")
            if count_images(resolved) == 0:
                raise UserError(f"dataset yaml {yaml_path}: no images found in {key} path(s) {', '.join(resolved)}")
        out[key] = resolved[0] if len(resolved) == 1 else resolved
    return out


def count_images(paths: Sequence[str]) -> int:
    """Number of image files in folders (recursive) or listed in .txt files."""
    n = 0
    for p in map(Path, paths):
        if p.is_dir():
            n += sum(1 for f in p.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
        elif p.is_file() and p.suffix == ".txt":
            n += sum(1 for line in p.read_text(errors="ignore").splitlines() if line.strip())
        elif p.is_file() and p.suffix[1:].lower() in IMG_FORMATS:
            n += 1
    return n


def image_files(specs: Sequence[str], what: str) -> list[str]:
    """Absolute paths of the images (yolov5's formats) that folders, .txt lists, globs or files name."""
    from ..image_lists import image_files as listed

    return listed(specs, what, suffixes=IMG_FORMATS)
