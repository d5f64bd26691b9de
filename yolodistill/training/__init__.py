"""The training run both tasks share: its loops (Trainer) and its set-up helpers (run folder, device, seed)."""

from .batches import endless_batches
from .loop import Trainer, TrainingError
from .setup import increment_dir, seed_everything, select_device

__all__ = ["Trainer", "TrainingError", "endless_batches", "increment_dir", "seed_everything", "select_device"]
