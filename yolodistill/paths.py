"""Where files live: packaged configs (`cfg/` installs as the package `yolodistill.cfg`, editable or not), the
local folder of pretrained weights that a bare name such as `yolov5n.pt` is looked up in, and numbered run folders."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import yaml

from .errors import UserError


def cfg_path(name: str) -> Path:
    """Path of a packaged YAML file under cfg/, e.g. `quickstart.yaml`."""
    path = Path(str(resources.files("yolodistill.cfg").joinpath(name)))
    if not path.is_file():
        raise UserError(f"packaged config {name} not found in {path.parent} (broken install?)")
    return path


def load_cfg(name: str) -> dict:
    """A packaged YAML file as a dict (safe_load only)."""
    with open(cfg_path(name)) as f:
        return yaml.safe_load(f)


WEIGHTS_ENV = "YOLODISTILL_WEIGHTS"
# yolov5's own release assets: what `--weights yolov5n.pt` downloads in yolov5's train.py. We never download (the
# training boxes this runs on often have no internet): the user fetches them once, into weights_dir().
YOLOV5_RELEASE = "https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}"
YOLOV5_RELEASED = {f"yolov5{size}{p6}{cls}.pt" for size in "nsmlx" for p6 in ("", "6") for cls in ("", "-cls", "-seg")}


def weights_dir() -> Path:
    """The folder of pretrained weights: $YOLODISTILL_WEIGHTS, else yolodistill/weights under the user's cache
    ($XDG_CACHE_HOME, else ~/.cache)."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "yolodistill" / "weights"


def local_weights(path: str | os.PathLike) -> Path:
    """`path` itself when it exists or names a folder; a bare file name (`yolov5n.pt`) that is not here is looked up in
    weights_dir(), as yolov5 would download it into the working directory. A miss returns `path` unchanged, for the
    caller's own not-found error (weights_hint says where to put the file)."""
    path = Path(path)
    if path.exists() or path.parent != Path("."):
        return path
    stored = weights_dir() / path.name
    return stored if stored.exists() else path


def weights_hint(path: str | os.PathLike) -> str:
    """For a missing bare name: where it was looked for and where it comes from; "" for any other path."""
    path = Path(path)
    if path.parent != Path("."):
        return ""
    hint = f"not here, nor in {weights_dir()} (${WEIGHTS_ENV})"
    if path.name in YOLOV5_RELEASED:
        hint += f"; fetch it once where there is internet: {YOLOV5_RELEASE.format(name=path.name)}"
    return hint


def increment_dir(path: Path, exist_ok: bool) -> Path:
    """runs/train/exp, exp2, exp3, ... as yolov5 numbers its runs (the folder is not created)."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.name}{n}").exists():
        n += 1
    return path.with_name(f"{path.name}{n}")
