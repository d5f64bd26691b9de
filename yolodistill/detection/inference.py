"""`yolodistill val` and `yolodistill detect`: yolov5's val.py and detect.py for what trains and what deploys -- a
checkpoint (loaded weights-only: yolov5's own commands call torch.load in a way current PyTorch refuses), an ONNX
file or a TensorRT engine -- and, for detect, on what it deploys on: images, videos, cameras and streams."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence, Union

from torch import nn

from .. import yolo_backend as yb
from ..errors import UserError
from ..media import Frame, MediaSources, VideoWriters, check_display, close_windows, open_sources, show
from ..paths import increment_dir
from ..run_logger import METRIC_COLUMNS
from ..runtime import EXPORTED, load_detector
from ..training import select_device
from .inference_options import DetectOptions, ValOptions

LOGGER = logging.getLogger("yolodistill")


def val(weights: str, data: str, **options) -> dict:
    """mAP of a checkpoint, ONNX file or TensorRT engine on a dataset split; `options`: ValOptions' fields (the
    `yolodistill val` flags). Returns P, R, mAP50, mAP50-95 and the val losses."""
    options = ValOptions(weights=weights, data=data, **options)
    data_dict = yb.load_data_yaml(data)
    if options.task not in data_dict:
        raise UserError(f"dataset yaml {data} has no '{options.task}' split")
    dev = select_device(options.device)
    model = load_detector(weights, trust=options.trust_checkpoint, data=data).to(dev).eval()
    exported = Path(weights).suffix.lower() in EXPORTED
    nc = 1 if options.single_cls else int(data_dict["nc"])
    model_nc = len(model.names) if exported else yb.num_classes(model)
    if not options.single_cls and model_nc != nc:
        raise UserError(f"{weights} has {model_nc} classes but {data} has {nc}: "
                        f"pass the dataset the model was trained on")
    stride = yb.max_stride(model)
    size = yb.check_img_size(options.imgsz, stride)
    if exported and model.input_hw and model.input_hw != (size, size):
        raise UserError(f"{weights} was exported for {model.input_hw[0]}x{model.input_hw[1]} images: "
                        f"pass --imgsz {model.input_hw[0]}")
    loader = yb.create_val_loader(data_dict[options.task], size, options.batch_size, stride, None,
                                  workers=options.workers, single_cls=options.single_cls, square=exported)
    save_dir = increment_dir(Path(options.project) / options.name, options.exist_ok)
    metrics, _ = yb.validate(model, data_dict, loader, imgsz=size, batch_size=options.batch_size, save_dir=save_dir,
                             half=dev.type != "cpu" and not exported, single_cls=options.single_cls,
                             verbose=options.verbose, conf_thres=options.conf_thres, iou_thres=options.iou_thres)
    LOGGER.info(f"Results saved to {save_dir}")
    return {"save_dir": str(save_dir), **dict(zip(METRIC_COLUMNS[:4], metrics[:4]))}


def detect(weights: str, source: str, **options) -> dict:
    """yolov5's detect.py: a .pt, .onnx or .engine detector over images, videos, folders, globs, .txt lists,
    cameras and streams; `options`: DetectOptions' fields (the `yolodistill detect` flags). Writes annotated
    images and .mp4 videos (and yolov5's --save-txt labels) to project/name; returns {"save_dir", "frames",
    "detections", "sources": [{"source", "kind", "frames", "detections"}]}."""
    options = DetectOptions(weights=weights, source=source, **options)
    sources = open_sources(source, vid_stride=options.vid_stride)  # a bad source fails before a model loads
    try:
        if options.view_img:
            check_display()
        dev = select_device(options.device)
        model = load_detector(weights, trust=options.trust_checkpoint, data=options.data).to(dev).eval()
        size, auto = _input_size(model, weights, options.imgsz)
        LOGGER.info(f"Detecting with {weights} on {sources.describe()} at {size[0]}x{size[1]}")
        save_dir = increment_dir(Path(options.project) / options.name, options.exist_ok)
        outputs = DetectionOutputs(save_dir, yb.de_parallel(model).names, options)
        nms = dict(conf_thres=options.conf_thres, iou_thres=options.iou_thres, classes=options.classes,
                   agnostic=options.agnostic_nms, max_det=options.max_det)
        frames = _detect_frames(model, sources, outputs, size=size, auto=auto, device=dev, nms=nms)
    finally:
        sources.close()
    if not frames and not sources.streams:
        raise UserError(f"--source {source}: not one frame could be read (damaged files?)")
    return _report(sources, outputs, frames)


def _input_size(model: nn.Module, weights: str, imgsz: Union[int, Sequence[int]]) -> tuple[tuple[int, int], bool]:
    """The (h, w) frames are letterboxed to, and whether padding stops at a stride multiple (yolov5's auto=pt):
    a checkpoint takes any such size; an exported file takes the size it was exported for, exactly."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2):
        raise UserError(f"--imgsz takes one size or two (h w), got {len(sizes)}")
    sizes *= 3 - len(sizes)  # one size: square
    fixed = getattr(model, "input_hw", None)
    if fixed:
        ignored = "" if tuple(sizes) == tuple(fixed) else f" (--imgsz {sizes[0]} {sizes[1]} does not apply)"
        LOGGER.info(f"{Path(weights).name} takes fixed {fixed[0]}x{fixed[1]} images: each frame is letterboxed to "
                    f"exactly that size{ignored}")
        return (int(fixed[0]), int(fixed[1])), False
    h, w = yb.check_img_size(sizes, yb.max_stride(model))
    return (h, w), Path(weights).suffix.lower() not in EXPORTED


def _detect_frames(model: nn.Module, sources: MediaSources, outputs: "DetectionOutputs", *, size: tuple[int, int],
                   auto: bool, device, nms: dict) -> int:
    """Detect on every frame with a progress line (frames, FPS); returns how many frames were processed. Ctrl-C
    ends a live run as its normal stop; everything written is finished (videos playable) however the loop ends."""
    from tqdm import tqdm

    stride = yb.max_stride(model)
    bar = tqdm(total=sources.expected_frames, unit="frame", desc="detect",
               bar_format="{desc}: {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}{postfix}]")
    interrupted = False
    try:
        for frame in sources.frames():
            im = yb.prepare_image(frame.image, size, stride=stride, auto=auto, device=device)
            boxes = yb.detect_boxes(model, im, frame.image.shape, **nms)
            keep_going = outputs.save(frame, boxes)
            bar.update(1)
            rate = bar.format_dict.get("rate")
            bar.set_postfix_str(f"{rate:.1f} FPS" if rate else "", refresh=False)
            if not keep_going:
                break
    except KeyboardInterrupt:
        if not sources.streams:
            raise  # files have an end: an interrupted run is not a finished one
        interrupted = True
    finally:
        bar.close()
        outputs.close()
    if interrupted:
        LOGGER.info(f"stopped by Ctrl-C after {bar.n} frames")
    return bar.n


def _report(sources: MediaSources, outputs: "DetectionOutputs", frames: int) -> dict:
    """Log how each live source ended and where the results are; the summary detect returns."""
    for stream in sources.streams:
        if stream.end_reason:
            LOGGER.info(f"{stream.path}: ended after {stream.frames_taken} frames: {stream.end_reason}")
    summary = [{"source": s.path, "kind": s.kind, "frames": s.frames_taken, "detections": outputs.detections.get(s, 0)}
               for s in sources.files + sources.streams]
    total = sum(s["detections"] for s in summary)
    labels = f", {outputs.label_files} label files in {outputs.save_dir / 'labels'}" if outputs.save_txt else ""
    LOGGER.info(f"{frames} frames, {total} detections{labels}; results saved to {outputs.save_dir}")
    return {"save_dir": str(outputs.save_dir), "frames": frames, "detections": total, "sources": summary,
            "videos": [str(p) for p in outputs.videos.written]}


class DetectionOutputs:
    """What detect keeps of each frame: the annotated image or video frame, yolov5's label file, the window."""

    def __init__(self, save_dir: Path, names, options: DetectOptions):
        self.save_dir, self.names = Path(save_dir), names
        self.save_img, self.save_txt, self.save_conf = not options.nosave, options.save_txt, options.save_conf
        self.view_img = options.view_img
        self.drawing = dict(line_width=options.line_thickness, hide_labels=options.hide_labels,
                            hide_conf=options.hide_conf)
        self.videos = VideoWriters(self.save_dir)
        self.detections: dict = {}  # source -> boxes found in it
        self.label_files = 0
        (self.save_dir / "labels" if self.save_txt else self.save_dir).mkdir(parents=True, exist_ok=True)

    def save(self, frame: Frame, boxes) -> bool:
        """Keep one frame's results; False once the user closed the view with q or Esc."""
        self.detections[frame.source] = self.detections.get(frame.source, 0) + len(boxes)
        if self.save_txt and len(boxes):  # as yolov5: a frame without detections gets no label file
            self._write_labels(frame, yb.label_lines(boxes, frame.image.shape, save_conf=self.save_conf))
        if not (self.save_img or self.view_img):
            return True
        annotated = yb.draw_boxes(frame.image, boxes, self.names, **self.drawing)
        if self.save_img and frame.source.kind == "image":
            self._write_image(frame, annotated)
        elif self.save_img:
            self.videos.write(frame, annotated)
        return show(frame.source.stem, annotated) if self.view_img else True

    def _write_labels(self, frame: Frame, lines: list[str]) -> None:
        # yolov5's names: im.txt for an image, {stem}_{frame}.txt (1-based) for a video or stream frame
        stem = frame.source.stem if frame.source.kind == "image" else f"{frame.source.stem}_{frame.index}"
        path = self.save_dir / "labels" / f"{stem}.txt"
        try:
            path.write_text("".join(line + "\n" for line in lines))
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        self.label_files += 1

    def _write_image(self, frame: Frame, image) -> None:
        import cv2

        path = self.save_dir / f"{frame.source.stem}{Path(frame.source.path).suffix}"
        if not cv2.imwrite(str(path), image):
            raise UserError(f"cannot write {path} (disk full, or no permission?)")

    def close(self) -> None:
        self.videos.release()
        if self.view_img:
            close_windows()
