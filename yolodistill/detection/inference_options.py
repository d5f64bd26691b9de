"""The options of `yolodistill val` and `yolodistill detect`, in yolov5 val.py's and detect.py's spelling with their
defaults, declared once (yolodistill.options); no torch here, so building the command-line parser stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..options import option, shared

WEIGHTS_HELP = "checkpoint (.pt), exported ONNX file (.onnx) or TensorRT engine (.engine, where TensorRT is)"
SOURCE_HELP = ("image or video file, folder, glob, .txt list (one source a line), camera index (0) or "
               "rtsp:// rtmp:// http:// stream URL")


@dataclass
class ValOptions:
    """`yolodistill val`: mAP of a checkpoint, ONNX file or TensorRT engine on a dataset split."""

    weights: str = option("", WEIGHTS_HELP, required=True)
    data: str = option("", "dataset yaml", required=True)
    conf_thres: float = option(0.001, "confidence threshold")
    iou_thres: float = option(0.6, "NMS IoU threshold")
    imgsz: int = option(640, "inference size (pixels)", flags=("--img", "--img-size"))
    batch_size: int = option(32, "batch size")
    task: str = option("val", "dataset split", choices=["train", "val", "test"])
    single_cls: bool = option(False, "treat as single-class dataset")
    workers: int = shared("workers", 8)
    device: str = shared("device", "")
    project: str = shared("project", "runs/val")
    name: str = shared("name", "exp")
    exist_ok: bool = shared("exist_ok", False)
    trust_checkpoint: bool = shared("trust_checkpoint", False)
    verbose: bool = option(False, "mAP of every class too (the command prints it)", cli=False)


@dataclass
class DetectOptions:
    """`yolodistill detect`: yolov5's detect.py on images, videos, folders, globs, lists, cameras and streams."""

    weights: str = option("", WEIGHTS_HELP, required=True)
    source: str = option("", SOURCE_HELP, required=True)
    conf_thres: float = option(0.25, "confidence threshold")
    iou_thres: float = option(0.45, "NMS IoU threshold")
    data: Optional[str] = option(None, "dataset yaml: class names for an .engine without its .onnx beside it")
    imgsz: list = option([640], "inference size h,w", flags=("--img", "--img-size"), type=int)
    max_det: int = option(1000, "maximum detections per image")
    view_img: bool = option(False, "show results (q or Esc in the window stops)")
    save_txt: bool = option(False, "save results to *.txt (YOLO format: class x y w h)")
    save_conf: bool = option(False, "save confidences in --save-txt labels")
    nosave: bool = option(False, "do not save images/videos")
    classes: Optional[list] = option(None, "filter by class: --classes 0, or --classes 0 2 3", nargs="+", type=int)
    agnostic_nms: bool = option(False, "class-agnostic NMS")
    line_thickness: int = option(3, "bounding box thickness (pixels)")
    hide_labels: bool = option(False, "hide labels")
    hide_conf: bool = option(False, "hide confidences")
    vid_stride: int = option(1, "video frame-rate stride")
    device: str = shared("device", "")
    project: str = shared("project", "runs/detect")
    name: str = shared("name", "exp")
    exist_ok: bool = shared("exist_ok", False)
    trust_checkpoint: bool = shared("trust_checkpoint", False)
