"""Batches beside the main loader: an endless stream whose order depends only on a seed and the epoch."""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader


def endless_batches(loader: DataLoader, seed: int, epoch: int) -> Iterator[Any]:
    """The loader's batches, looping as long as asked. Its order (and, with worker processes, their
    augmentation) depends only on `seed` and `epoch`: a resumed run sees what the uninterrupted one would
    have. The loader must draw from its own `generator` (and a DistributedSampler takes set_epoch)."""
    loader.generator.manual_seed(seed * 100_003 + epoch)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:  # would spin forever: a drop_last loader over fewer items than one batch
            raise RuntimeError(f"the loader over {len(loader.dataset)} items gives no batch of {loader.batch_size}")
