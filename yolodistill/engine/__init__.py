"""The training engine both tasks share: the run loop (Engine) and the run's set-up helpers."""

from .batches import endless_batches
from .loop import Engine, TrainingError
from .setup import increment_dir, seed_everything, select_device

__all__ = ["Engine", "TrainingError", "endless_batches", "increment_dir", "seed_everything", "select_device"]
