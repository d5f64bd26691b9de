"""`yolodistill val` and `yolodistill detect`: yolov5's val and detect for any student or teacher checkpoint,
loaded weights-only (yolov5's own commands call torch.load in a way current PyTorch refuses)."""

from __future__ import annotations

import logging
from pathlib import Path

from . import yolo_backend as yb
from .engine import increment_dir, select_device
from .errors import UserError
from .run_logger import METRIC_COLUMNS
from .students import DETECT, load_student

LOGGER = logging.getLogger("yolodistill")


def load_detector(weights: str | Path, *, trust: bool = False):
    """The FP32 detector of a checkpoint, with its INT8 fake quantizers back on after --qat (so val scores what
    deploys); an .onnx file runs through onnxruntime instead."""
    if str(weights).endswith(".onnx"):
        from .onnx_runtime import OnnxDetector

        if not Path(weights).is_file():
            raise UserError(f"{weights} not found")
        return OnnxDetector(weights)
    return load_student(weights, trust=trust, task=DETECT).model


def val(weights: str, data: str, *, imgsz: int = 640, batch_size: int = 32, device: str = "", task: str = "val",
        conf_thres: float = 0.001, iou_thres: float = 0.6, workers: int = 8, project: str = "runs/val",
        name: str = "exp", exist_ok: bool = False, verbose: bool = False, single_cls: bool = False,
        trust: bool = False) -> dict:
    """mAP of a checkpoint on a dataset split; returns P, R, mAP50, mAP50-95 and the val losses."""
    data_dict = yb.load_data_yaml(data)
    if task not in data_dict:
        raise UserError(f"dataset yaml {data} has no '{task}' split")
    dev = select_device(device)
    model = load_detector(weights, trust=trust).to(dev).eval()
    exported = str(weights).endswith(".onnx")
    nc = 1 if single_cls else int(data_dict["nc"])
    model_nc = len(model.names) if exported else yb.num_classes(model)
    if not single_cls and model_nc != nc:
        raise UserError(f"{weights} has {model_nc} classes but {data} has {nc}: "
                        f"pass the dataset the model was trained on")
    stride = yb.max_stride(model)
    size = yb.check_img_size(imgsz, stride)
    if exported and model.input_hw and model.input_hw != (size, size):
        raise UserError(f"{weights} was exported for {model.input_hw[0]}x{model.input_hw[1]} images: "
                        f"pass --imgsz {model.input_hw[0]}")
    loader = yb.create_val_loader(data_dict[task], size, batch_size, stride, None, workers=workers,
                                  single_cls=single_cls, square=exported)
    save_dir = increment_dir(Path(project) / name, exist_ok)
    metrics, _ = yb.validate(model, data_dict, loader, imgsz=size, batch_size=batch_size, save_dir=save_dir,
                             half=dev.type != "cpu" and not exported, single_cls=single_cls, verbose=verbose,
                             conf_thres=conf_thres, iou_thres=iou_thres)
    LOGGER.info(f"Results saved to {save_dir}")
    return {"save_dir": str(save_dir), **dict(zip(METRIC_COLUMNS[:4], metrics[:4]))}


def detect(weights: str, source: str, *, imgsz: int = 640, device: str = "", conf_thres: float = 0.25,
           iou_thres: float = 0.45, max_det: int = 1000, project: str = "runs/detect", name: str = "exp",
           exist_ok: bool = False, save_txt: bool = False, save_conf: bool = False, nosave: bool = False,
           line_width: int = 2,
           trust: bool = False) -> dict:
    """Detect objects in images; saves annotated copies (and YOLO-format txt labels with --save-txt)."""
    if str(weights).endswith(".onnx"):
        raise UserError(f"detect runs .pt checkpoints; score {weights} with `yolodistill val --weights {weights}`")
    files = yb.image_sources(source)
    dev = select_device(device)
    model = load_detector(weights, trust=trust).to(dev).eval()  # a --qat student with its INT8 quantizers
    size = yb.check_img_size(imgsz, yb.max_stride(model))
    save_dir = increment_dir(Path(project) / name, exist_ok)
    summary = yb.detect_images(model, files, imgsz=size, device=dev, save_dir=save_dir, conf_thres=conf_thres,
                               iou_thres=iou_thres, max_det=max_det, save_txt=save_txt, save_conf=save_conf,
                               save_img=not nosave,
                               line_width=line_width)
    total = sum(s["detections"] for s in summary)
    LOGGER.info(f"{len(summary)} images, {total} detections; results saved to {save_dir}")
    return {"save_dir": str(save_dir), "images": summary}
