"""The training run both tasks share: its loops (Trainer) and its set-up helpers (device, seed)."""

from .batches import endless_batches
from .loop import Trainer, TrainingError
from .setup import seed_everything, select_device

__all__ = ["Trainer", "TrainingError", "endless_batches", "seed_everything", "select_device"]
