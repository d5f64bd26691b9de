"""yolodistill: knowledge distillation for YOLOv5 detectors (and, later, classifiers) aimed at Jetson deployment."""

__version__ = "0.1.0"
