"""`classify filter`: pick the images of a local unlabeled pool that match the prompts.

The offline counterpart of searching LAION by text: every pool image's teacher embedding (from a
store, so the pool is embedded once) goes through the head (zero-shot text prompts, or a probe);
an image is kept for the class it scores highest on when that probability reaches --min-prob,
and at most --per-class images (the most confident) are kept per class. The picks are copied,
linked or only listed, and always written to picks.csv.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from yolodistill.errors import UserError

LOGGER = logging.getLogger("yolodistill")
MODES = ("copy", "link", "list")


def select(probs: torch.Tensor, *, min_prob: float, per_class: Optional[int]) -> list[tuple[int, int, float]]:
    """(row, class, prob) picks from (N, C) probabilities: argmax class, prob >= min_prob, top per_class per class."""
    p, cls = probs.max(1)
    picks = []
    for c in range(probs.shape[1]):
        rows = torch.nonzero((cls == c) & (p >= min_prob)).flatten()
        rows = rows[p[rows].argsort(descending=True)]
        if per_class:
            rows = rows[:per_class]
        picks += [(int(r), c, float(p[r])) for r in rows]
    return picks


def filter_pool(store_path: str, head_path: str, out: str, *, min_prob: float = 0.5,
                per_class: Optional[int] = None, mode: str = "copy", exist_ok: bool = False,
                batch_size: int = 4096) -> dict[str, int]:
    """Write the picks of the pool under `out` (class subfolders); returns the count per class."""
    from .clip_teacher import load_head_for_store
    from .store import TeacherStore

    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: choose {', '.join(MODES)}")
    if not 0 <= min_prob <= 1:
        raise UserError("--min-prob must be between 0 and 1")
    store = TeacherStore.open(store_path, kind="embedding")
    head = load_head_for_store(head_path, store, "pool store")
    if store.source is None or not Path(store.source).is_dir():
        raise UserError(f"the pool folder of store {store_path} ({store.source}) is gone")
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not exist_ok:
        raise UserError(f"{out_dir} is not empty (use --exist-ok to write into it)")
    with torch.no_grad():
        probs = torch.cat([head(store.lookup(store.keys[i:i + batch_size])).softmax(1)
                           for i in range(0, len(store), batch_size)])
    picks = select(probs, min_prob=min_prob, per_class=per_class)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {c: 0 for c in head.classes}
    source = Path(store.source)
    with open(out_dir / "picks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "prob"])
        for row, c, p in picks:
            key, name = store.keys[row], head.classes[c]
            w.writerow([str(source / key), name, f"{p:.5f}"])
            counts[name] += 1
            if mode == "list":
                continue
            dst = out_dir / name / key.replace("/", "__")  # flattened: pool subfolders may repeat file names
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            if mode == "copy":
                shutil.copy2(source / key, dst)
            else:
                os.symlink((source / key).resolve(), dst)
    LOGGER.info(f"kept {len(picks)} of {len(store)} pool images (min prob {min_prob}"
                f"{f', at most {per_class} per class' if per_class else ''}): "
                + ", ".join(f"{c} {n}" for c, n in counts.items()) + f" -> {out_dir}")
    return counts
