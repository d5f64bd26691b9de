"""Where a detection student still differs from its teacher, part by part: box, objectness and classes.

    python benchmarks/output_parts.py --teacher runs/kd_conv/seed0/teacher_yolov5s/weights/best.pt \
        --data runs/kd_conv/seed0/data/data.yaml --imgsz 160 \
        --students alone=runs/kd_conv/seed0/yolov5n_alone/weights/best.pt \
                   output=runs/kd_conv/seed0/output/weights/best.pt

On the val split, with every model in eval mode, for each student: the three parts of each output loss
(`mse`, `kl`) against the teacher, as they enter the training loss (yolov5's gains scaled to the image size,
classes and layers, from --hyp), and how well its boxes agree with the teacher's where the teacher sees an
object (mean IoU of the decoded boxes over the cells with teacher objectness above 0.5). It shows what an
output loss teaches (a part that is small in the loss is a part the student is barely pulled on) and what a
distilled student has taken from its teacher (the parts that fell against the student trained alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from yolodistill import yolo_backend as yb  # noqa: E402
from yolodistill.losses import output_distillation_loss  # noqa: E402
from yolodistill.losses.output import decode_boxes  # noqa: E402

PARTS = ("box", "obj", "cls")
FORMS = ("mse", "kl")  # the output losses whose parts differ (mse_ciou is mse's objectness and classes, kl's boxes)
SURE = 0.5  # teacher objectness above which a cell's box is compared


def elementwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two (N, 4) xyxy box sets (torchvision's box_iou is pairwise: an N x N matrix for
    the diagonal)."""
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp_min(0)
    inter = wh.prod(1)
    area = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area - inter)


def compare(teacher: torch.nn.Module, students: dict[str, torch.nn.Module], loader, gains: dict, nc: int) -> dict:
    """{student: {"mse": [box, obj, cls], "kl": [...], "iou": mean IoU, "cells": compared cells}}, the loss parts
    averaged over the val batches."""
    anchors = yb.detect_head(teacher).anchors
    out = {name: {**{k: torch.zeros(3, dtype=torch.float64) for k in FORMS}, "iou": 0.0, "cells": 0}
           for name in students}
    batches = 0
    with torch.no_grad():
        for imgs, *_ in loader:
            x = imgs.float() / 255
            t = yb.forward_raw(teacher, x)
            batches += 1
            for name, model in students.items():
                s = yb.forward_raw(model, x)
                for kind in FORMS:
                    parts = output_distillation_loss(s, t, nc, gains["box"], gains["obj"], gains["cls"], kind=kind,
                                                     anchors=anchors)
                    out[name][kind] += torch.tensor([p.item() for p in parts], dtype=torch.float64)
                for level, (sl, tl) in enumerate(zip(s, t)):
                    sure = tl[..., 4].sigmoid() > SURE
                    if sure.any():
                        iou = elementwise_iou(decode_boxes(sl, anchors[level])[sure],
                                              decode_boxes(tl, anchors[level])[sure])
                        out[name]["iou"] += iou.sum().item()
                        out[name]["cells"] += int(sure.sum())
    for r in out.values():
        for kind in FORMS:
            r[kind] = (r[kind] / batches).tolist()
        r["iou"] = r["iou"] / max(r["cells"], 1)
    return out


def table(results: dict) -> str:
    head = " | ".join(f"{kind} {part}" for kind in FORMS for part in PARTS)
    lines = [f"| student | {head} | mean IoU with the teacher's boxes (cells) |",
             "| --- |" + " --- |" * (len(FORMS) * len(PARTS) + 1)]
    for name, r in results.items():
        cells = " | ".join(f"{v:.5f}" for kind in FORMS for v in r[kind])
        lines.append(f"| {name} | {cells} | {r['iou']:.3f} ({r['cells']}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="the teacher's checkpoint")
    ap.add_argument("--students", nargs="+", required=True, metavar="NAME=WEIGHTS", help="students to compare")
    ap.add_argument("--data", required=True, help="dataset yaml (its val split is used)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--hyp", default=str(Path(__file__).resolve().parents[1] / "cfg" / "hyp.quickstart.yaml"),
                    help="the gains the parts are scaled by (default: the quickstart's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--trust-checkpoint", action="store_true", help="load the checkpoints with full pickle")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    names = dict(s.split("=", 1) for s in args.students)
    load = lambda p: yb.load_model(p, trust=args.trust_checkpoint).float().eval()  # noqa: E731
    teacher = load(args.teacher)
    students = {n: load(p) for n, p in names.items()}
    data = yb.load_data_yaml(args.data)
    nc = yb.num_classes(teacher)
    gains = yb.scaled_loss_gains(yb.load_hyp(args.hyp), yb.detect_head(teacher).nl, nc, args.imgsz)
    loader = yb.create_val_loader(data["val"], args.imgsz, args.batch_size, yb.max_stride(teacher), None, workers=0,
                                  square=True)
    print(f"gains box {gains['box']:g}, obj {gains['obj']:g}, cls {gains['cls']:g} (--hyp {args.hyp}, "
          f"{args.imgsz} px, {nc} classes)")
    print(table(compare(teacher, students, loader, gains, nc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
