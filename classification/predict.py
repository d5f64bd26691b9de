"""`classify predict` (image files and folders) and `classify demo` (live top-k from an OpenCV camera).

A student checkpoint is self-contained: a classifier outputs class logits; a CLIP-distilled student
outputs an embedding and carries the head (text prompts or linear probe) it was distilled with.
`--head` swaps in another head for the same teacher, e.g. new prompts, without retraining.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image
from torch import nn

from yolodistill import media
from yolodistill.errors import UserError
from .data import IMAGE_SUFFIXES, build_transform, list_images, read_image
from .models import build_classifier, read_checkpoint
from yolodistill.training import select_device

LOGGER = logging.getLogger("yolodistill")


class Predictor:
    """Class probabilities of PIL images from a student checkpoint, (N, C)."""

    def __init__(self, weights: Union[str, Path], *, head: Optional[str] = None, device: str = "cpu"):
        ckpt = read_checkpoint(weights)
        self.device = select_device(device)
        self.model = build_classifier(ckpt["arch"], ckpt["num_classes"], imgsz=ckpt["imgsz"])
        self.model.load_state_dict(ckpt["model"])
        self.model.eval().to(self.device)
        self.head: Optional[nn.Module] = None
        self.classes = list(ckpt["classes"])
        if head:
            from .clip_teacher import load_head

            self.head, head_teacher = load_head(head)
            if "teacher" in ckpt and head_teacher != ckpt["teacher"]:
                raise UserError(f"head {head} was made with another teacher than the one student {weights} "
                                f"was distilled from")
            self.classes = list(self.head.classes)
        elif "head" in ckpt:
            self.head = head_from_checkpoint(ckpt["head"])
        if self.head is not None:
            self.head.eval().to(self.device)
            if self.head.weight.shape[1] != ckpt["num_classes"]:
                raise UserError(f"head expects {self.head.weight.shape[1]}-d embeddings, "
                                f"the student outputs {ckpt['num_classes']}")
        self.transform = build_transform(ckpt["imgsz"], ckpt["mean"], ckpt["std"], train=False)

    @torch.no_grad()
    def probs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        out = self.model(x)
        if self.head is not None:
            out = self.head(out)
        return out.float().softmax(1).cpu()

    def topk(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        p, i = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classes[j], float(q)) for q, j in zip(pr, ir)] for pr, ir in zip(p.tolist(), i.tolist())]


def head_from_checkpoint(d: dict) -> nn.Module:
    from .clip_teacher import LinearHead

    return LinearHead(d["weight"], d["bias"], d["scale"], d["classes"])


def image_paths(sources: Sequence[str]) -> list[Path]:
    """Image files given directly or found under folders; anything else is a UserError."""
    paths: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            paths += [p / k for k in list_images(p)]
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(p)
        elif p.is_file():
            raise UserError(f"{p} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        else:
            raise UserError(f"{p} does not exist")
    if not paths:
        raise UserError("no images given")
    return paths


def predict(weights: str, sources: Sequence[str], *, k: int = 5, head: Optional[str] = None, device: str = "cpu",
            batch_size: int = 32, save_csv: Optional[str] = None) -> list[dict]:
    """Top-k classes of each image; unreadable images are reported and skipped."""
    predictor = Predictor(weights, head=head, device=device)
    paths = image_paths(sources)
    results: list[dict] = []
    skipped = 0
    for start in range(0, len(paths), batch_size):
        batch, ok = [], []
        for p in paths[start:start + batch_size]:
            try:
                batch.append(read_image(p))
                ok.append(p)
            except Exception:  # noqa: BLE001 - PIL plugins raise anything on a bad file (see data.readable)
                skipped += 1
                LOGGER.warning(f"{p}: unreadable or truncated image, skipped")
        if not batch:
            continue
        for p, top in zip(ok, predictor.topk(predictor.probs(batch), k)):
            results.append({"image": str(p), "top": top})
            LOGGER.info(f"{p}: " + ", ".join(f"{c} {q:.3f}" for c, q in top))
    if not results:
        raise UserError(f"none of the {len(paths)} images could be read")
    if skipped:
        LOGGER.warning(f"skipped {skipped} unreadable image(s) of {len(paths)}")
    if save_csv:
        with open(save_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image"] + [x for i in range(k) for x in (f"class{i + 1}", f"prob{i + 1}")])
            for r in results:
                w.writerow([r["image"]] + [x for c, q in r["top"] for x in (c, f"{q:.5f}")])
    return results


def demo(weights: str, camera: Union[int, str] = 0, *, k: int = 3, head: Optional[str] = None, device: str = "cpu",
         show: bool = True, max_frames: int = 0) -> int:
    """Live top-k over frames of a camera index or a video file; q or Esc quits. Returns frames processed."""
    import cv2

    predictor = Predictor(weights, head=head, device=device)
    # media.py's readers, as detect's: a camera keeps only its newest frame, so a slow model does not fall behind
    sources = media.open_sources(str(camera), option="--camera")
    frames = 0
    try:
        for frame in sources.frames():
            image = frame.image
            top = predictor.topk(predictor.probs([Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))]), k)[0]
            for i, (c, q) in enumerate(top):
                cv2.putText(image, f"{c} {q:.2f}", (10, 30 + 28 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
            frames += 1
            if show:
                if not media.show("yolodistill classify demo (q quits)", image):
                    break
            else:
                LOGGER.info(f"frame {frames}: " + ", ".join(f"{c} {q:.3f}" for c, q in top))
            if 0 < max_frames <= frames:
                break
    finally:
        sources.close()
        if show:
            media.close_windows()
    if frames == 0:
        raise UserError(f"camera {camera!r} gave no frames")
    return frames
