"""Image folders for classification: ImageFolder-layout labeled data, unlabeled pools, transforms.

Keys are paths relative to a folder root with forward slashes ("cat/001.jpg"): the same key finds an
image's row in a teacher store (store.py) on any OS.

Unreadable or truncated images are skipped, with a count in the log: each folder is checked once,
by decoding every image, when its dataset is built (a truncated JPEG only fails on full decode).
A folder in which no image decodes is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from PIL import Image
from torch.utils.data import Dataset

from yolodistill.errors import UserError

LOGGER = logging.getLogger("yolodistill")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
UNLABELED = -1  # label of an image that only gets the distillation term


def list_images(folder: str | Path) -> list[str]:
    """Sorted keys of every image under `folder` (recursive); a missing or image-less folder is a UserError."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not keys:
        raise UserError(f"image folder {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return keys


def read_image(path: str | Path) -> Image.Image:
    """RGB PIL image, fully decoded (so truncation shows here, not inside a DataLoader worker)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def readable(root: Path, keys: Sequence[str], what: str, progress: bool = True) -> list[str]:
    """The keys whose images decode; logs how many were skipped; all unreadable is a UserError."""
    from tqdm import tqdm

    good, bad = [], []
    for key in tqdm(keys, desc=f"checking {what}", unit="img", disable=not progress or len(keys) < 2000,
                    leave=False):
        try:
            read_image(root / key)
            good.append(key)
        except Exception:  # noqa: BLE001 - PIL's plugins raise anything on a bad file (seen: ImportError of
            bad.append(key)  # a half-installed HEIF plugin on a junk .jpg); any failure means "unreadable"
    if bad:
        LOGGER.warning(f"{what}: skipped {len(bad)} unreadable or truncated image(s) of {len(keys)} "
                       f"(first: {root / bad[0]})")
    if not good:
        raise UserError(f"{what} {root}: none of its {len(keys)} images can be read")
    return good


@dataclass(frozen=True)
class LabeledFolder:
    """An ImageFolder-layout folder: root/<class>/<image>; classes sorted as torchvision's ImageFolder does."""

    root: Path
    classes: tuple[str, ...]
    keys: tuple[str, ...]
    labels: tuple[int, ...]

    @classmethod
    def scan(cls, folder: str | Path, *, check: bool = True) -> "LabeledFolder":
        root = Path(folder)
        keys = list_images(root)
        top = [k for k in keys if "/" not in k]
        if top:
            raise UserError(f"{root} holds images directly ({top[0]}); labeled data needs the ImageFolder layout "
                            f"{root}/<class>/<image>")
        if check:
            keys = readable(root, keys, "labeled folder")
        classes = sorted({k.split("/", 1)[0] for k in keys})
        # A class is a folder with images: an empty one would silently drop out of the class list.
        empty = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in classes
                       and not p.name.startswith("."))
        if empty:
            LOGGER.warning(f"{root}: skipped {len(empty)} class folder(s) without readable images "
                           f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}); "
                           f"{len(classes)} classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}")
        if len(classes) < 2:
            raise UserError(f"{root} has {len(classes)} class folder(s); classification needs at least 2")
        index = {c: i for i, c in enumerate(classes)}
        return cls(root, tuple(classes), tuple(keys), tuple(index[k.split("/", 1)[0]] for k in keys))

    def with_classes(self, classes: Sequence[str]) -> "LabeledFolder":
        """The same images labeled by another class list (a val split must use the train split's indices)."""
        if tuple(classes) == self.classes:
            return self
        unknown = sorted(set(self.classes) - set(classes))
        if unknown:
            raise UserError(f"{self.root} has class folder(s) {', '.join(unknown)} that the training data "
                            f"has no images of")
        index = {c: i for i, c in enumerate(classes)}
        return LabeledFolder(self.root, tuple(classes), self.keys,
                             tuple(index[k.split("/", 1)[0]] for k in self.keys))


def split_folders(data: str | Path) -> tuple[Path, Path]:
    """(train, val) folders of a dataset root laid out like yolov5's classification datasets: val/ when there is
    one, else test/. A test/ beside val/ is never trained or chosen on: it is left to score the chosen
    checkpoint (trainer.score_checkpoint)."""
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    train = root / "train"
    val = next((root / v for v in ("val", "test") if (root / v).is_dir()), None)
    if not train.is_dir() or val is None:
        raise UserError(f"{root} needs train/ and val/ (or test/) subfolders, each <class>/<image>")
    return train, val


class ImageDataset(Dataset):
    """(image tensor, label, store row) per image; label UNLABELED (-1) for unlabeled images, row -1 without a store.

    store_rows: each image's row in a teacher store (TeacherStore.rows_of), so the trainer reads a
    batch's cached teacher outputs with one gather (per-image lookups cost 13% of an epoch on digits).
    """

    def __init__(self, root: str | Path, keys: Sequence[str], labels: Optional[Sequence[int]],
                 transform: Callable, store_rows: Optional[Sequence[int]] = None):
        self.root = Path(root)
        self.keys = list(keys)
        self.labels = list(labels) if labels is not None else [UNLABELED] * len(self.keys)
        self.transform = transform
        self.store_rows = list(store_rows) if store_rows is not None else [-1] * len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.root / self.keys[i])), self.labels[i], self.store_rows[i]


def build_transform(imgsz: int, mean: Sequence[float], std: Sequence[float], *, train: bool,
                    fliplr: float = 0.5, scale: tuple[float, float] = (0.7, 1.0)) -> Callable:
    """PIL -> normalised (3, imgsz, imgsz) tensor; train adds a random resized crop and a horizontal flip."""
    from torchvision import transforms as T

    steps = ([T.RandomResizedCrop(imgsz, scale=scale, ratio=(0.9, 1.1), antialias=True)] if train
             else [T.Resize(imgsz, antialias=True), T.CenterCrop(imgsz)])
    if train and fliplr > 0:
        steps.append(T.RandomHorizontalFlip(fliplr))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
