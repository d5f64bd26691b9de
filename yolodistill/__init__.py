"""yolodistill: knowledge distillation for YOLOv5 detectors and image classifiers, aimed at Jetson deployment.

The public names load lazily, so `import yolodistill` (and `yolodistill --help`) does not import
torch or yolov5.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "train": "detection.trainer",
    "TrainOptions": "detection.train_options",
    "DistillTrainer": "detection.trainer",
    "DistillConfig": "config",
    "LayerPair": "config",
    "DistillationModel": "distiller",
    "DistillerConfig": "distiller",
    "detection_distiller": "detection.distillation",
    "load_student": "students",
    "FrozenTeacher": "detection.teacher",
    "load_teacher": "detection.teacher",
    "val": "detection.inference",
    "detect": "detection.inference",
    "UserError": "errors",
    "export": "deploy.export",
    "benchmark": "deploy.benchmark",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'yolodistill' has no attribute {name!r}")
