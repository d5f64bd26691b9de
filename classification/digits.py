"""scikit-learn's digits (1,797 real 8x8 handwritten images) as ImageFolder folders, for examples and benchmarks.

    DIR/full/train/<digit>/*.png   70% of the images (stratified, fixed by the split seed)
    DIR/full/val/<digit>/*.png     the fixed 30% test split, also used as few/val
    DIR/few/train/<digit>/*.png    `few` labeled images per class, drawn from full/train
    DIR/few/val -> the same test split
    DIR/unlabeled/*.png            the rest of full/train, without labels

The split never changes with `seed`, which only picks the few labeled images, so every seed of a
benchmark is scored on the same test images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from yolodistill.errors import UserError

SPLIT_SEED = 0  # the fixed test split
TEST_SIZE = 0.3


def _load_digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise UserError("the digits data come with scikit-learn: pip install scikit-learn "
                        "(or pip install -e \".[bench]\")") from None
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    idx = np.arange(len(images))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_SIZE, stratify=digits.target,
                                           random_state=SPLIT_SEED)
    return images, digits.target, np.sort(train_idx), np.sort(test_idx)


def _write(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="L").convert("RGB").save(path)


def write_digits(out: str | Path, *, few: int = 10, seed: int = 0, exist_ok: bool = False) -> Path:
    """Write the folders above under `out`; returns `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not exist_ok:
        raise UserError(f"{out} is not empty (use --exist-ok to overwrite)")
    if few < 1:
        raise UserError("--few must be at least 1 labeled image per class")
    images, target, train_idx, test_idx = _load_digits()
    for sub in ("full", "few", "unlabeled"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for i in train_idx:
        _write(out / "full" / "train" / str(target[i]) / f"{i:04d}.png", images[i])
    for i in test_idx:
        _write(out / "full" / "val" / str(target[i]) / f"{i:04d}.png", images[i])
    rng = np.random.default_rng(seed)
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
    shutil.copytree(out / "full" / "val", out / "few" / "val")
    return out
