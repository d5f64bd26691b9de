"""Where packaged files live: `cfg/` installs as the package `yolodistill.cfg` (editable or not)."""

from __future__ import annotations

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
