"""yolodistill: knowledge distillation for YOLOv5 detectors and image classifiers, aimed at Jetson deployment.

The public names load lazily, so `import yolodistill` (and `yolodistill --help`) does not import
torch or yolov5.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "train": "trainer",
    "TrainOptions": "train_options",
    "DistillTrainer": "trainer",
    "DistillConfig": "config",
    "LayerPair": "config",
    "DistillationModel": "distiller",
    "detection_distiller": "distiller",
    "load_student": "students",
    "FrozenTeacher": "teacher",
    "load_teacher": "teacher",
    "val": "inference",
    "detect": "inference",
    "UserError": "errors",
    "export": "deploy.export",
    "benchmark": "deploy.benchmark",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'yolodistill' has no attribute {name!r}")
