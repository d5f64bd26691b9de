"""The one module that talks to the `yolov5` package (7.0.14): a YOLOv5 upgrade touches only this file.

Everything here composes yolov5's own parts (models, dataloader, ComputeLoss, ModelEMA,
smart_optimizer, val) and fences off what does not work offline or with current PyTorch:
check_dataset (downloads a font), check_amp (downloads weights), attempt_load (torch.load
with weights_only=True fails on pickled modules) and detect.run (same loader).
"""

from __future__ import annotations

import logging
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml

from .checkpoint import load_checkpoint
from .errors import UserError

with warnings.catch_warnings():
    # yolov5 imports pkg_resources (deprecated) and a few modules that warn on import.
    warnings.simplefilter("ignore")
    import yolov5
    import yolov5.val as yolov5_val
    from yolov5.models.yolo import Detect, DetectionModel
    from yolov5.utils import dataloaders as yolov5_dataloaders
    from yolov5.utils.callbacks import Callbacks
    from yolov5.utils.general import (LOGGER, TQDM_BAR_FORMAT, check_img_size, increment_path, init_seeds,
                                      intersect_dicts, labels_to_class_weights, non_max_suppression, one_cycle,
                                      scale_boxes, xyxy2xywh)
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.metrics import fitness
    from yolov5.utils.plots import Annotator, colors
    from yolov5.utils.torch_utils import EarlyStopping, ModelEMA, de_parallel, select_device, smart_optimizer

__all__ = [
    "Callbacks", "ComputeLoss", "EarlyStopping", "ModelEMA", "TQDM_BAR_FORMAT", "YOLOV5_CHECKPOINT_MODULES",
    "check_img_size", "fitness", "increment_path", "init_seeds", "one_cycle", "select_device", "smart_optimizer",
    "de_parallel", "labels_to_class_weights",
]

YOLOV5_DIR = Path(yolov5.__file__).resolve().parent
YOLOV5_VERSION = yolov5.__version__
# Checkpoints written by the pip package name `yolov5.models.*`; those from the ultralytics repo
# name `models.*` (the pip package puts its root on sys.path so both resolve to the same files).
YOLOV5_CHECKPOINT_MODULES = ("yolov5.models.common.", "yolov5.models.yolo.", "yolov5.models.experimental.",
                             "models.common.", "models.yolo.", "models.experimental.")
# Repo-style names load as the pip package's classes, so isinstance checks hold for both.
YOLOV5_CHECKPOINT_ALIASES = {"models.": "yolov5.models."}
IMG_FORMATS = tuple(yolov5_dataloaders.IMG_FORMATS)
STANDARD_CFGS = tuple(sorted(p.name for p in (YOLOV5_DIR / "models").glob("yolov5*.yaml")))


def set_yolov5_verbosity(verbose: bool) -> None:
    """yolov5 logs through its own 'yolov5' logger; quiet it for tests and nested runs."""
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)


# --------------------------------------------------------------------------- files: hyps, model yamls, datasets

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
    for key in ("train", "val", "test"):
        if not data.get(key):
            continue
        entries = data[key] if isinstance(data[key], (list, tuple)) else [data[key]]
        resolved = [str(p if Path(p).is_absolute() else root / p) for p in entries]
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


# --------------------------------------------------------------------------- models

def build_model(cfg: str | Path | dict, nc: int, anchors: Any = None) -> nn.Module:
    """A fresh YOLOv5 DetectionModel from a yaml path, a packaged name or a yaml dict."""
    if not isinstance(cfg, dict):
        cfg = str(resolve_model_cfg(cfg))
    try:
        return DetectionModel(cfg, ch=3, nc=nc, anchors=anchors)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"cannot build a YOLOv5 model from {cfg if isinstance(cfg, str) else 'the yaml'}: {e}") from None


def load_yolov5_checkpoint(path: str | Path, *, trust: bool = False) -> Any:
    """torch.load of a yolov5 or yolodistill checkpoint, weights-only with yolov5's layer classes allowed."""
    return load_checkpoint(path, allowed_prefixes=YOLOV5_CHECKPOINT_MODULES, aliases=YOLOV5_CHECKPOINT_ALIASES,
                           trust=trust)


def load_detection_checkpoint(path: str | Path, *, trust: bool = False) -> dict:
    """Load a YOLOv5 checkpoint safely and check it holds a detection model ('ema' or 'model')."""
    ckpt = load_yolov5_checkpoint(path, trust=trust)
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, DetectionModel):
        what = type(model).__name__ if model is not None else "no 'model' entry"
        raise UserError(f"{path} is not a YOLOv5 detection checkpoint ({what})")
    return ckpt


def checkpoint_model(ckpt: dict) -> nn.Module:
    """The FP32 model of a checkpoint, EMA weights preferred (what yolov5's attempt_load returns, unfused)."""
    model = (ckpt.get("ema") or ckpt["model"]).float()
    if isinstance(getattr(model, "names", None), (list, tuple)):
        model.names = dict(enumerate(model.names))
    for m in model.modules():  # the compatibility fixes attempt_load applies to older checkpoints
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
        if isinstance(m, Detect) and not isinstance(m.anchor_grid, list):
            m.anchor_grid = [torch.zeros(1)] * m.nl
    return model


def load_model(path: str | Path, *, trust: bool = False) -> nn.Module:
    """A YOLOv5 detection model in FP32 from a checkpoint file (yolov5's attempt_load, weights-only)."""
    return checkpoint_model(load_detection_checkpoint(path, trust=trust))


def create_student(weights: str, cfg: str, nc: int, hyp: dict, *, trust: bool = False,
                   exclude_anchors: bool = False) -> tuple[nn.Module, Optional[dict]]:
    """The student as train.py builds it: from a cfg, or a cfg/checkpoint's yaml with matching weights transferred."""
    if weights:
        ckpt = load_detection_checkpoint(weights, trust=trust)
        src = ckpt["model"] if ckpt.get("model") is not None else ckpt["ema"]
        model = build_model(str(resolve_model_cfg(cfg)) if cfg else src.yaml, nc, hyp.get("anchors"))
        exclude = ["anchor"] if (cfg or hyp.get("anchors") or exclude_anchors) else []
        csd = intersect_dicts(src.float().state_dict(), model.state_dict(), exclude=exclude)
        model.load_state_dict(csd, strict=False)
        LOGGER.info(f"Transferred {len(csd)}/{len(model.state_dict())} items from {weights}")
        return model, ckpt
    if not cfg:
        raise UserError("either --weights or --cfg must be given for the student")
    return build_model(cfg, nc, hyp.get("anchors")), None


def detect_head(model: nn.Module) -> nn.Module:
    """The Detect module (last layer) of a YOLOv5 model."""
    head = de_parallel(model).model[-1]
    if not isinstance(head, Detect):
        raise UserError(f"model's last layer is {type(head).__name__}, not a YOLOv5 Detect head")
    return head


def num_classes(model: nn.Module) -> int:
    """Classes the Detect head predicts (a fresh model has no `.nc` attribute until training sets it)."""
    return int(detect_head(model).nc)


def detect_input_layers(model: nn.Module) -> list[str]:
    """Module names of the layers whose outputs feed Detect (P3, P4, P5 for the standard models)."""
    head = detect_head(model)
    sources = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    n = len(de_parallel(model).model)
    return [f"model.{i % n}" for i in sources]


def head_layout(model: nn.Module) -> dict:
    """What output distillation needs to match between student and teacher."""
    head = detect_head(model)
    return {"nc": int(head.nc), "nl": int(head.nl), "na": int(head.na),
            "anchors": (head.anchors * head.stride.view(-1, 1, 1)).detach().float().cpu(),  # pixels
            "stride": head.stride.detach().float().cpu()}


def copy_anchors(src: nn.Module, dst: nn.Module) -> None:
    """Give `dst`'s Detect head the anchors of `src` (both in grid units for the same strides)."""
    detect_head(dst).anchors.data.copy_(detect_head(src).anchors.to(detect_head(dst).anchors))


def forward_raw(model: nn.Module, imgs: torch.Tensor) -> list[torch.Tensor]:
    """Raw per-level head outputs of a model kept in eval mode, skipping Detect's box decode.

    In eval mode Detect also decodes boxes (sigmoid, grids, concatenation) for NMS; distillation
    compares the raw tensors only. Detect has no BatchNorm or dropout, so flagging just the head
    as training changes its return value and nothing else: the backbone's BN stays in eval.
    """
    head = detect_head(model)
    was_training = head.training
    head.training = True
    try:
        return list(model(imgs))
    finally:
        head.training = was_training


def raw_head_outputs(output: Any) -> list[torch.Tensor]:
    """Per-level raw head tensors (B, A, H, W, 5 + nc): training mode returns them, eval returns (pred, raw)."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):
        return output[1]
    return list(output)


def max_stride(model: nn.Module) -> int:
    """Grid size: the largest stride, at least 32 (as train.py)."""
    return max(int(de_parallel(model).stride.max()), 32)


def prepare_for_loss(model: nn.Module, hyp: dict, nc: int, imgsz: int, names: dict, labels: Sequence[np.ndarray],
                     label_smoothing: float = 0.0) -> dict:
    """Scale hyp gains to layers/classes/image size and attach what ComputeLoss reads, as train.py does."""
    hyp = dict(hyp)
    nl = detect_head(model).nl
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = label_smoothing
    m = de_parallel(model)
    m.nc, m.hyp, m.names = nc, hyp, names
    m.class_weights = labels_to_class_weights(list(labels), nc).to(next(m.parameters()).device) * nc
    return hyp


def model_stats(model: nn.Module, imgsz: int) -> dict:
    """Parameters and GFLOPs at imgsz (thop, as yolov5's model_info)."""
    params = sum(p.numel() for p in model.parameters())
    gflops = float("nan")
    try:
        import thop
        stride = max_stride(model)
        p = next(model.parameters())
        im = torch.empty((1, 3, stride, stride), device=p.device, dtype=p.dtype)
        gflops = thop.profile(deepcopy(de_parallel(model)), inputs=(im,), verbose=False)[0] / 1e9 * 2
        gflops *= (imgsz / stride) ** 2
    except Exception as e:  # thop is optional for yolov5 too; the count is informative only
        LOGGER.warning(f"WARNING: GFLOPs not counted ({type(e).__name__}: {e})")
    return {"params": params, "gflops": gflops}


def export_model(model: nn.Module, *, dynamic: bool = False, fuse: bool = True) -> nn.Module:
    """A copy ready to trace, as yolov5's export.py makes it: FP32, eval, Conv+BN fused, and Detect in export
    mode, returning one tensor (B, N, 5 + nc) of decoded boxes (xywh pixels, objectness, class scores)."""
    model = deepcopy(de_parallel(model)).float().eval()
    if fuse:
        level = LOGGER.level
        LOGGER.setLevel(logging.WARNING)  # fuse() prints the model summary
        try:
            model.fuse()
        finally:
            LOGGER.setLevel(level)
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.dynamic, m.export = False, dynamic, True
    return model


def export_metadata(model: nn.Module) -> dict:
    """What yolov5's DetectMultiBackend reads back from an ONNX file's metadata: stride and class names."""
    names = de_parallel(model).names
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return {"stride": max_stride(model), "names": names}


# --------------------------------------------------------------------------- data

def create_train_loader(path, imgsz: int, batch_size: int, stride: int, hyp: dict, *, workers: int, seed: int,
                        single_cls: bool = False, cache: Optional[str] = None, rect: bool = False,
                        image_weights: bool = False, quad: bool = False, rank: int = -1):
    """yolov5's augmenting (mosaic) training dataloader and its dataset; rank >= 0 (under torchrun) gives a
    DistributedSampler, each rank a disjoint shard of every epoch."""
    return _create_loader(path, imgsz, batch_size, stride, single_cls, hyp=hyp, augment=True, cache=cache,
                          rect=rect, workers=workers, image_weights=image_weights, quad=quad,
                          prefix="train: ", shuffle=True, seed=seed, rank=rank)


def create_val_loader(path, imgsz: int, batch_size: int, stride: int, hyp: Optional[dict], *, workers: int,
                      single_cls: bool = False, cache: Optional[str] = None, square: bool = False):
    """yolov5's rectangular validation dataloader (as train.py builds it); `square` pads every image to
    imgsz x imgsz, as yolov5's val does for exported models with a fixed input size."""
    return _create_loader(path, imgsz, batch_size, stride, single_cls, hyp=hyp, cache=cache, rect=not square,
                          workers=workers, pad=0.0 if square else 0.5, prefix="val: ")[0]


def _create_loader(path, *args, **kwargs):
    try:
        loader, dataset = yolov5_dataloaders.create_dataloader(path, *args, **kwargs)
    except MemoryError:
        raise
    except Exception as e:  # yolov5 reports unreadable data with bare Exception and AssertionError
        raise UserError(f"cannot load images from {path}: {str(e).splitlines()[0]}") from None
    if kwargs.get("rank", -1) in (-1, 0):
        report_scan(path, dataset, kwargs.get("prefix", ""))
    return loader, dataset


def _listed_images(path) -> list[str]:
    """Image files as yolov5's LoadImagesAndLabels lists them: folders recursively, .txt files line by line."""
    import glob
    import os

    files: list[str] = []
    for p in map(Path, path if isinstance(path, (list, tuple)) else [path]):
        if p.is_dir():
            files += glob.glob(str(p / "**" / "*.*"), recursive=True)
        elif p.is_file():
            parent = str(p.parent) + os.sep
            lines = p.read_text(errors="ignore").strip().splitlines()
            files += [x.replace("./", parent, 1) if x.startswith("./") else x for x in lines]
    return sorted(x.replace("/", os.sep) for x in files if x.split(".")[-1].lower() in IMG_FORMATS)


def _skip_reason(im_file: str) -> str:
    """Why yolov5's scan dropped an image: its own message, or plainer words when the image does not decode."""
    from PIL import Image

    if not Path(im_file).is_file():  # a stale line of a .txt image list
        return "file not found"
    try:
        with Image.open(im_file) as im:
            im.verify()
    except Exception:  # noqa: BLE001 - PIL's plugins raise anything on junk (an ImportError of a HEIF plugin, seen)
        return "not a readable image (empty, truncated or not an image file)"
    label = yolov5_dataloaders.img2label_paths([im_file])[0]
    # yolov5 words a short line among good ones as a numpy error ("inhomogeneous shape"): name the line instead.
    lines = Path(label).read_text(errors="ignore").splitlines() if Path(label).is_file() else []
    for i, line in enumerate(lines, 1):
        n = len(line.split())
        if 0 < n < 5 or n == 6:
            return f"{label} line {i} has {n} numbers, a box label needs 5 (class x_center y_center width height)"
    msg = yolov5_dataloaders.verify_image_label((im_file, label, ""))[-1]
    reason = " ".join(msg.partition("ignoring corrupt image/label: ")[2].split()).replace("[ ", "[")  # numpy pads
    return reason or "rejected by yolov5's image/label check"


def report_scan(path, dataset, prefix: str = "") -> dict:
    """Log, on yolodistill's logger, what yolov5's label scan dropped and how many images train as background.

    yolov5 drops an image whose file or label file is corrupt (wrong column count, coordinates outside
    [0, 1], negative values) and prints why only on its own logger and progress bar; the counts here
    reach the user's log. Returns {"found", "skipped": [image, ...], "background"}.
    """
    log = logging.getLogger("yolodistill")
    found = _listed_images(path)
    kept = set(dataset.im_files)
    skipped = [f for f in found if f not in kept]
    background = sum(1 for lb in dataset.labels if len(lb) == 0)
    if skipped:
        shown = "; ".join(f"{f}: {_skip_reason(f)}" for f in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        log.warning(f"{prefix}WARNING: skipped {len(skipped)} of {len(found)} images with a corrupt image or label "
                    f"file ({shown}{more}); using the other {len(dataset.im_files)}")
    if background:
        log.warning(f"{prefix}WARNING: {background} of {len(dataset.im_files)} images have no labels (empty or "
                    f"missing label file) and count as background images with no objects")
    return {"found": len(found), "skipped": skipped, "background": background}


def autoanchor(dataset, model: nn.Module, *, thr: float, imgsz: int) -> None:
    """yolov5's AutoAnchor: re-fit the anchors to the labels when they fit poorly."""
    from yolov5.utils.autoanchor import check_anchors
    check_anchors(dataset, model=model, thr=thr, imgsz=imgsz)


def reweight_images(dataset, model: nn.Module, maps: np.ndarray, nc: int) -> None:
    """--image-weights: resample the epoch's images towards classes with low mAP (train.py's rule)."""
    import random

    from yolov5.utils.general import labels_to_image_weights
    cw = model.class_weights.cpu().numpy() * (1 - maps) ** 2 / nc
    iw = labels_to_image_weights(dataset.labels, nc=nc, class_weights=cw)
    dataset.indices = random.choices(range(dataset.n), weights=iw, k=dataset.n)


def check_labels(dataset, nc: int, data_path: str) -> None:
    """Class ids of the training labels must be < nc (train.py asserts this)."""
    labels = np.concatenate(dataset.labels, 0) if len(dataset.labels) else np.zeros((0, 5))
    if len(labels) and int(labels[:, 0].max()) >= nc:
        raise UserError(f"label class {int(labels[:, 0].max())} exceeds nc={nc} in {data_path}; "
                        f"class ids must be 0..{nc - 1}")


# --------------------------------------------------------------------------- validation and inference

def validate(model: nn.Module, data: dict, dataloader, *, imgsz: int, batch_size: int, save_dir: Path,
             half: bool = False, compute_loss=None, single_cls: bool = False, verbose: bool = False,
             iou_thres: float = 0.6, conf_thres: float = 0.001) -> tuple[tuple, np.ndarray]:
    """mAP through yolov5's val.run: ((P, R, mAP50, mAP50-95, box, obj, cls), per-class mAP)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)  # val writes results.html there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = yolov5_val.run(data, batch_size=batch_size, imgsz=imgsz, half=half, model=model,
                             single_cls=single_cls, dataloader=dataloader, save_dir=save_dir, plots=False,
                             callbacks=Callbacks(), compute_loss=compute_loss, verbose=verbose,
                             iou_thres=iou_thres, conf_thres=conf_thres)
    results, maps = out[0], out[1]
    return tuple(float(x) for x in results), maps


def image_sources(source: str | Path) -> list[Path]:
    """Image files from a file, a folder, a glob or a .txt list."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
    elif p.is_file() and p.suffix == ".txt":
        files = [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path().glob(str(source))) if any(c in str(source) for c in "*?[") else []
    files = [f for f in files if f.suffix[1:].lower() in IMG_FORMATS]
    if not files:
        raise UserError(f"no images found at {source}")
    return files


@torch.no_grad()
def detect_images(model: nn.Module, files: Sequence[Path], *, imgsz: int, device: torch.device, save_dir: Path,
                  conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000, save_txt: bool = False,
                  save_img: bool = True, line_width: int = 2) -> list[dict]:
    """Run detection on image files; draws boxes with OpenCV (no font download) and returns per-image counts."""
    import cv2
    from yolov5.utils.augmentations import letterbox

    stride = max_stride(model)
    names = de_parallel(model).names
    model.eval()
    save_dir.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (save_dir / "labels").mkdir(exist_ok=True)
    summary = []
    for f in files:
        im0 = cv2.imread(str(f))
        if im0 is None:
            LOGGER.warning(f"WARNING: skipping unreadable image {f}")
            continue
        im = letterbox(im0, imgsz, stride=stride, auto=True)[0].transpose((2, 0, 1))[::-1]  # HWC BGR -> CHW RGB
        im = torch.from_numpy(np.ascontiguousarray(im)).to(device).float()[None] / 255
        pred = non_max_suppression(model(im)[0], conf_thres, iou_thres, max_det=max_det)[0]
        pred[:, :4] = scale_boxes(im.shape[2:], pred[:, :4], im0.shape).round()
        annotator = Annotator(im0, line_width=line_width, example=str(names), pil=False)
        lines = []
        for *xyxy, conf, cls in reversed(pred.tolist()):
            c = int(cls)
            annotator.box_label(xyxy, f"{names[c]} {conf:.2f}", color=colors(c, True))
            gn = torch.tensor(im0.shape)[[1, 0, 1, 0]]
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            lines.append(("%g " * 6).rstrip() % (c, *xywh, conf))
        if save_img:
            cv2.imwrite(str(save_dir / f.name), annotator.result())
        if save_txt:
            (save_dir / "labels" / f"{f.stem}.txt").write_text("".join(line + "\n" for line in lines))
        summary.append({"image": str(f), "detections": len(lines)})
    return summary


def lr_lambda(epochs: int, lrf: float, cos_lr: bool):
    """train.py's LR schedule: cosine (one_cycle) or linear from 1 to lrf."""
    if cos_lr:
        return one_cycle(1, lrf, epochs)
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def warmup_iterations(hyp: dict, batches_per_epoch: int) -> int:
    """train.py's warmup length: max(warmup_epochs of batches, 100); none at all for warmup_epochs 0 (a
    fine-tune), where train.py would still warm up for 100 batches."""
    if hyp["warmup_epochs"] <= 0:
        return -1
    return max(round(hyp["warmup_epochs"] * batches_per_epoch), 100)
