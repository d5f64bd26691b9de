"""What a model file says about itself: the metadata_props an ONNX export writes (stride, names, task, imgsz, mean,
std, precision), read back in one place, and class names for a file that carries none.

A file built from an ONNX export (a TensorRT engine) carries no metadata: `yolodistill export` builds it from the
.onnx of the same stem, so the names and stride come from that file; else from a dataset yaml (--data); else
class0..N-1, with a warning.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Optional, Union

from ..errors import UserError

LOGGER = logging.getLogger("yolodistill")


def onnx_metadata(path: Union[str, Path]) -> dict:
    """The metadata_props of an ONNX file (its weights left unread), each value parsed back from its text form where
    it is a Python literal (stride, names, imgsz, ...), else kept as text."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {}
    for prop in proto.metadata_props:
        try:
            meta[prop.key] = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            meta[prop.key] = prop.value
    return meta


def sibling_onnx_metadata(path: Path) -> dict:
    """The metadata of the .onnx file `path` was built from (same stem, same folder), {} if there is none."""
    onnx_path = path.with_suffix(".onnx")
    if not onnx_path.is_file():
        return {}
    try:
        return onnx_metadata(onnx_path)
    except Exception as e:  # protobuf's DecodeError and friends: a damaged file only costs us the names
        LOGGER.warning(f"WARNING: cannot read {onnx_path} for the class names of {path.name} ({type(e).__name__})")
        return {}


def class_names(path: Path, meta: dict, data: Optional[Union[str, Path]], num_classes: int):
    """The class names of a file without its own: the sibling ONNX file's, else the dataset yaml's, else
    class0..N-1."""
    if "names" in meta:
        names, origin = meta["names"], path.with_suffix(".onnx")
    elif data:
        names, origin = _yaml_names(Path(data)), data
    else:
        LOGGER.warning(f"WARNING: {path} carries no class names and there is no "
                       f"{path.with_suffix('.onnx').name} beside it: labelling class0..class{num_classes - 1} "
                       f"(pass --data with the dataset yaml for names)")
        return [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise UserError(f"{path} predicts {num_classes} classes but {origin} names {len(names)}")
    return names


def _yaml_names(data: Path):
    import yaml

    try:
        names = (yaml.safe_load(data.read_text()) or {}).get("names")
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise UserError(f"cannot read class names from --data {data}: {e}") from None
    if not isinstance(names, (list, dict)):
        raise UserError(f"--data {data} has no `names` list")
    return names
