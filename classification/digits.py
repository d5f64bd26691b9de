"""scikit-learn's digits (1,797 real 8x8 handwritten images) as ImageFolder folders, for examples and benchmarks.

    DIR/full/train/<digit>/*.png   60% of the images (1,077), stratified, fixed by the split seed
    DIR/full/val/<digit>/*.png     20% (360): picks best.pt (the trainers read val/ when it exists)
    DIR/full/test/<digit>/*.png    20% (360): scores best.pt, a split that chose nothing
    DIR/few/train/<digit>/*.png    `few` labeled images per class, drawn from full/train
    DIR/few/val, DIR/few/test      the same images as full/val and full/test
    DIR/unlabeled/*.png            the rest of full/train, without labels

Why three splits: best.pt is the epoch with the best val top-1, a maximum over ~100 noisy readings, so its
val top-1 flatters it; only images that took no part in the choice say how good it is. Why 60/20/20: 360
images (36 a class) keep the test figure's binomial sd near 0.9 points at 97% top-1, and the 1,077 training
images still leave the few-label protocol 977 unlabeled ones (at 10 labels a class).

The splits never change with `seed`, which only picks the few labeled images, so every seed of a benchmark
is chosen on the same val images and scored on the same test images.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from yolodistill.data_options import DigitsOptions
from yolodistill.errors import UserError

SPLIT_SEED = 0  # the fixed val and test splits
HELD_OUT = 0.2  # of all images, for val and again for test


def _load_digits():
    """(images (N, 8, 8) uint8, targets (N,), train, val and test indices, each sorted)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise UserError("the digits data come with scikit-learn: pip install scikit-learn "
                        "(or pip install -e \".[bench]\")") from None
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    target = digits.target
    size = math.ceil(HELD_OUT * len(images))  # a count, so that val and test hold as many images
    rest, test_idx = train_test_split(np.arange(len(images)), test_size=size, stratify=target,
                                      random_state=SPLIT_SEED)
    train_idx, val_idx = train_test_split(rest, test_size=size, stratify=target[rest], random_state=SPLIT_SEED)
    return images, target, np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def _write(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="L").convert("RGB").save(path)


def write_digits(out: str | Path, **options) -> Path:
    """Write the folders above under `out`; returns `out`. `options`: DigitsOptions' fields (the `yolodistill data
    digits` flags: few, seed, exist_ok)."""
    options = DigitsOptions(out=str(out), **options)
    out, few = Path(out), options.few
    if out.exists() and any(out.iterdir()) and not options.exist_ok:
        raise UserError(f"{out} is not empty (use --exist-ok to overwrite)")
    if few < 1:
        raise UserError("--few must be at least 1 labeled image per class")
    images, target, train_idx, val_idx, test_idx = _load_digits()
    for sub in ("full", "few", "unlabeled"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for split, indices in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        for i in indices:
            _write(out / "full" / split / str(target[i]) / f"{i:04d}.png", images[i])
    rng = np.random.default_rng(options.seed)
    labeled = set()
    for digit in range(10):
        pool = train_idx[target[train_idx] == digit]
        if few > len(pool):
            raise UserError(f"--few {few}: digit {digit} has only {len(pool)} training images")
        labeled.update(int(i) for i in rng.choice(pool, size=few, replace=False))
    for i in train_idx:
        if i in labeled:
            _write(out / "few" / "train" / str(target[i]) / f"{i:04d}.png", images[i])
        else:
            _write(out / "unlabeled" / f"{i:04d}.png", images[i])
    for split in ("val", "test"):
        shutil.copytree(out / "full" / split, out / "few" / split)
    return out
