"""`classify embed`: run a teacher once over a folder and keep its outputs in a store (store.py).

Training then reads teacher outputs from the store, so epochs run at student speed. The store holds
OpenCLIP image embeddings (L2-normalised, (N, D)) or classifier logits ((N, n_teachers * C): an
ensemble keeps each member's logits, because members are averaged after softening at the
training temperature, which the store must not fix).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from .data import ImageDataset, build_transform, list_images, readable
from .store import write_store

LOGGER = logging.getLogger("yolodistill")


def _batches(loader: DataLoader, fn: Callable[[torch.Tensor], torch.Tensor], device) -> Iterator[torch.Tensor]:
    with torch.no_grad():
        for images, _, _ in loader:
            yield fn(images.to(device)).float().cpu()


def _loader(root: Path, keys: Sequence[str], transform, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(ImageDataset(root, keys, None, transform), batch_size=batch_size, shuffle=False,
                      num_workers=workers)


def embed_clip(source: str | Path, out: str | Path, clip, *, batch_size: int = 64, workers: int = 4,
               dtype: str = "float32", exist_ok: bool = False) -> Path:
    """OpenCLIP image embeddings of every readable image under `source` into the store `out`."""
    root = Path(source)
    keys = readable(root, list_images(root), "image folder")
    device = next(clip.model.parameters()).device
    loader = _loader(root, keys, clip.preprocess, batch_size, workers)
    path = write_store(out, keys, _batches(loader, clip.encode_images, device), teacher=clip.identity,
                       kind="embedding", source=root, exist_ok=exist_ok, dtype=dtype)
    LOGGER.info(f"{len(keys)} embeddings (dim {clip.embed_dim}) of {root} -> {path}")
    return path


def embed_classifiers(source: str | Path, out: str | Path, teachers, *, batch_size: int = 64, workers: int = 4,
                      dtype: str = "float32", exist_ok: bool = False) -> Path:
    """Logits of one or more classifier teachers (ClassifierTeachers) for every readable image under `source`."""
    root = Path(source)
    keys = readable(root, list_images(root), "image folder")
    first = teachers.metas[0]
    transform = build_transform(first["imgsz"], first["mean"], first["std"], train=False)
    device = next(teachers.parameters()).device

    def logits(x: torch.Tensor) -> torch.Tensor:  # (B, n_teachers * C), members side by side
        return teachers(x, first["mean"], first["std"]).flatten(1)

    loader = _loader(root, keys, transform, batch_size, workers)
    path = write_store(out, keys, _batches(loader, logits, device), teacher=teachers.identity, kind="logits",
                       source=root, exist_ok=exist_ok, dtype=dtype)
    LOGGER.info(f"{len(keys)} logit rows ({len(teachers.members)} teacher(s)) of {root} -> {path}")
    return path
