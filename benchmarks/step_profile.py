"""Where a distillation step's time goes, part by part, next to a plain student step.

    python benchmarks/step_profile.py --imgsz 160 --batch-size 16 --steps 25

Both steps run on the same batch, alternating, with the parts timed one after another
(student forward, task loss, teacher forward, output loss, adapters + feature loss, backward,
optimizer step). The medians show what overhead.py's ratio is made of.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from yolodistill import yolo_backend as yb
from yolodistill.hooks import adapter_key
from yolodistill.losses import output_distillation_loss
from yolodistill.synth import generate
from yolodistill.detection.trainer import DistillTrainer, TrainOptions


class _Clock:
    def __init__(self):
        self.parts: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] = now - self._t
        self._t = now


def _step(trainer: DistillTrainer, imgs, targets, distil: bool) -> dict[str, float]:
    """One training step split into timed parts, in the order the trainer runs them."""
    clock = _Clock()
    d = trainer.distiller if distil else None
    if d is not None:
        teacher_raw = d.teacher(imgs)  # the distiller runs the teacher first (see yolodistill/distiller.py)
        clock.lap("teacher forward")
    pred = trainer.student(imgs)
    clock.lap("student forward")
    loss, _ = trainer.compute_loss(pred, targets)
    clock.lap("task loss")
    if d is not None:
        term = d.output_term
        out = sum(output_distillation_loss(pred, teacher_raw, term.nc, term.gains["box"], term.gains["obj"],
                                           term.gains["cls"]))
        clock.lap("output loss")
        s_feats, t_feats = d._student_rec.pop(), d._teacher_rec.pop()
        feat = torch.stack([d.feature_loss(d.adapters[adapter_key(p.student, p.teacher)](
            s_feats[p.student], size=t_feats[p.teacher].shape[-2:]), t_feats[p.teacher].float())
            for p in d.pairs]).mean()
        clock.lap("adapters + feature loss")
        loss = loss + (out + feat) * imgs.shape[0]
    loss.backward()
    clock.lap("backward")
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    clock.lap("optimizer step")
    return clock.parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--feature-loss", default="mse")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    yb.set_yolov5_verbosity(False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "data", n_train=args.batch_size * 2, n_val=4, n_test=0, imgsz=args.imgsz, progress=False)
        teacher = tmp / "teacher.pt"
        torch.save({"model": yb.build_model("yolov5s.yaml", 6).half(), "ema": None, "epoch": -1,
                    "optimizer": None}, teacher)

        def trainer(name: str, **kw) -> DistillTrainer:
            return DistillTrainer(TrainOptions(data=str(data), cfg="yolov5n.yaml", imgsz=args.imgsz,
                                               batch_size=args.batch_size, workers=0, device="cpu",
                                               project=str(tmp / "runs"), name=name, noautoanchor=True,
                                               noplots=True, epochs=1, **kw)).setup()

        plain = trainer("plain")
        distil = trainer("distil", t_weights=str(teacher), d_feature=True, feature_loss=args.feature_loss)
        distil.distiller.attach()
        imgs, targets, _, _ = next(iter(plain.train_loader))
        imgs = imgs.float() / 255
        rows = {"plain": [], "distil": []}
        for i in range(args.steps + 5):
            p, d = _step(plain, imgs, targets, False), _step(distil, imgs, targets, True)
            if i >= 5:  # warm-up steps are not timed
                rows["plain"].append(p)
                rows["distil"].append(d)
        distil.distiller.remove()
    print(f"median ms per part, imgsz {args.imgsz}, batch {args.batch_size}, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in rows["distil"][0]:
        med = {k: statistics.median(r[name] for r in v) * 1000 if name in v[0] else None for k, v in rows.items()}
        # plain rows lack the teacher parts
        plain_ms = f"{med['plain']:8.1f}" if med["plain"] is not None else f"{'-':>8}"
        print(f"{name:<26}{plain_ms}{med['distil']:8.1f}")
    totals = {k: statistics.median(sum(r.values()) for r in v) * 1000 for k, v in rows.items()}
    print(f"{'total':<26}{totals['plain']:8.1f}{totals['distil']:8.1f}")


if __name__ == "__main__":
    main()
