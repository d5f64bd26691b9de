"""Does distillation pay? Teacher, student alone and distilled students over several seeds.

    python benchmarks/kd_gain.py --seeds 0 1 2 --out runs/kd_gain

For each seed: generate the synthetic dataset with that seed, train the teacher (cached), the
student alone, and one distilled student per variant (output only; output plus MSE, CWD or
PKD features), all with the same recipe. Reports mean and spread of mAP50-95 (best.pt
on the val split), the gain over the student alone and the share of the teacher-student gap that
distillation closes. Finished runs are kept in OUT/results.json, so an interrupted benchmark
picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from dataclasses import replace
from datetime import date
from pathlib import Path

from yolodistill import yolo_backend as yb
from yolodistill.quickstart import Plan, prepare_data, prepare_teacher, train_run, val_metrics

VARIANTS = {
    "output": dict(d_output=True),
    "feature-mse": dict(d_feature=True, feature_loss="mse"),
    "feature-cwd": dict(d_feature=True, feature_loss="cwd"),
    "feature-pkd": dict(d_feature=True, feature_loss="pkd"),
}
MAP = "metrics/mAP_0.5:0.95"


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/kd_gain")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plan", default="default", help="a plan of cfg/quickstart.yaml to start from")
    ap.add_argument("--teacher-epochs", type=int)
    ap.add_argument("--student-epochs", type=int)
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    yb.set_yolov5_verbosity(False)

    overrides = {k: v for k, v in dict(teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                                       n_train=args.n_train, imgsz=args.imgsz).items() if v is not None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results: dict = json.loads(store.read_text()) if store.exists() else {}

    for seed in args.seeds:
        plan = replace(Plan.named(args.plan), seed=seed, **overrides)
        root = out / f"seed{seed}"
        data = prepare_data(root, plan)
        runs = results.setdefault(str(seed), {})
        if "teacher" not in runs:
            teacher = prepare_teacher(root, plan, data, args.device)
            runs["teacher"] = val_metrics(teacher, data, plan, args.device, root)[MAP]
            store.write_text(json.dumps(results, indent=1))
        teacher = root / "teacher" / "weights" / "best.pt"
        todo = [("baseline", {})] + [(v, dict(VARIANTS[v], t_weights=str(teacher), f_weight=plan.feature_weight))
                                     for v in args.variants]
        for name, extra in todo:
            if name in runs:
                continue
            r = train_run(root, name, plan, data, args.device, cfg=plan.student_cfg, epochs=plan.student_epochs,
                          **extra)
            runs[name] = r[MAP]
            store.write_text(json.dumps(results, indent=1))

    seeds = [str(s) for s in args.seeds]
    teacher = [results[s]["teacher"] for s in seeds]
    baseline = [results[s]["baseline"] for s in seeds]
    lines = [f"kd_gain, {date.today()}, seeds {' '.join(seeds)}, plan {args.plan} {overrides or ''}",
             "", "| run | mAP50-95 (mean ± sd) | gain over student alone | share of teacher gap closed |",
             "| --- | --- | --- | --- |",
             f"| teacher | {_mean_sd(teacher)} | | |", f"| student alone | {_mean_sd(baseline)} | | |"]
    for v in args.variants:
        vals = [results[s][v] for s in seeds]
        gains = [a - b for a, b in zip(vals, baseline)]
        # The share of the gap is undefined for a seed whose teacher is no better than the student alone.
        gaps = [(a - b) / (t - b) for a, b, t in zip(vals, baseline, teacher) if t > b]
        closed = f"{statistics.mean(gaps) * 100:.0f}% ({len(gaps)} seeds)" if gaps else "n/a (no teacher gap)"
        lines.append(f"| distilled, {v} | {_mean_sd(vals)} | {_mean_sd(gains)} | {closed} |")
    report = "\n".join(lines)
    (out / "report.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
