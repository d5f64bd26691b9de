"""Does distillation pay? Teacher, student alone and distilled students over several seeds.

    python benchmarks/kd_gain.py --seeds 0 1 2 --out runs/kd_gain

Pass 1, for each seed: the whole `yolodistill quickstart` pipeline with that seed (data generated
with the seed, yolov5s teacher, yolov5n student alone, yolov5n distilled with the plan's feature
loss), timed, so the seed-0 row of the default plan is the quickstart's own wall time.
Pass 2, for each seed: the other distillation variants (output only; output plus MSE, CWD or PKD
features) from the same teacher with the same recipe. Pass 1 finishes for every seed before
pass 2 starts, so the main comparison comes first.

Reports mean and spread (sample sd) of mAP50-95 of best.pt on the val split, the gain over the
student alone and the share of the teacher-student gap that distillation closes. Finished runs
are kept in OUT/results.json, so an interrupted benchmark picks up where it stopped.
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
from yolodistill import quickstart

VARIANTS = {
    "output": dict(d_output=True),
    "feature-mse": dict(d_feature=True, feature_loss="mse"),
    "feature-cwd": dict(d_feature=True, feature_loss="cwd"),
    "feature-pkd": dict(d_feature=True, feature_loss="pkd"),
}
MAP = "mAP50-95"
MIN_GAP = 0.005  # a teacher less than half a point ahead leaves no gap worth dividing by


def _mean_sd(xs: list[float], fmt: str = ".4f") -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt.lstrip('+'))}"


def _save(store: Path, results: dict) -> None:
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(store)


def run_quickstart(root: Path, plan: quickstart.Plan, device: str) -> dict:
    """Teacher, student alone and the plan's distilled student, as `yolodistill quickstart` runs them."""
    qs = quickstart.run(root, plan=plan, device=device)
    teacher, alone, distilled = (row[MAP] for row in qs["rows"])
    return {"teacher": teacher, "baseline": alone, plan.distill_label: distilled,
            "quickstart_minutes": qs["minutes"],
            "latency_ms": {k: row["latency_ms"] for k, row in zip(("teacher", "baseline", "distilled"), qs["rows"])}}


def run_variant(root: Path, plan: quickstart.Plan, variant: str, device: str) -> float:
    if VARIANTS[variant].get("d_feature") and plan.feature_weight <= 0:
        raise SystemExit(f"variant {variant} needs a feature weight, and plan {plan} distils outputs only")
    data = root / "data" / "data.yaml"
    teacher = root / "teacher" / "weights" / "best.pt"
    r = quickstart.train_run(root, variant, plan, data, device, cfg=plan.student_cfg, epochs=plan.student_epochs,
                             t_weights=str(teacher), d_weight=plan.output_weight, f_weight=plan.feature_weight,
                             **VARIANTS[variant])
    return r["metrics/mAP_0.5:0.95"]


def report(results: dict, seeds: list[str], variants: list[str], title: str) -> str:
    done = [s for s in seeds if "baseline" in results.get(s, {})]
    teacher = [results[s]["teacher"] for s in done]
    baseline = [results[s]["baseline"] for s in done]
    minutes = [results[s]["quickstart_minutes"] for s in done]
    lines = [title, "", f"seeds done: {' '.join(done) or 'none'}; quickstart pipeline wall time per seed: "
             f"{', '.join(f'{m:.1f}' for m in minutes)} min", "",
             "| run | seeds | mAP50-95 (mean ± sd) | gain over student alone, points | share of teacher gap closed |",
             "| --- | --- | --- | --- | --- |",
             f"| teacher | {len(done)} | {_mean_sd(teacher)} | | |",
             f"| student alone | {len(done)} | {_mean_sd(baseline)} | | |"]
    for v in variants:
        have = [s for s in done if v in results[s]]
        vals = [results[s][v] for s in have]
        gains = [(results[s][v] - results[s]["baseline"]) * 100 for s in have]
        # The share of the gap is undefined for a seed whose teacher is not clearly ahead of the student alone.
        gaps = [(results[s][v] - results[s]["baseline"]) / (results[s]["teacher"] - results[s]["baseline"])
                for s in have if results[s]["teacher"] - results[s]["baseline"] > MIN_GAP]
        closed = (f"{statistics.mean(gaps) * 100:.0f}% (per seed: {', '.join(f'{g * 100:.0f}%' for g in gaps)})"
                  if gaps else "n/a (no teacher gap)" if have else "-")
        lines.append(f"| distilled, {v} | {len(have)} | {_mean_sd(vals)} | {_mean_sd(gains, '+.2f')} | {closed} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/kd_gain")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--plan", default="default", help="a plan of cfg/quickstart.yaml to start from")
    ap.add_argument("--teacher-epochs", type=int)
    ap.add_argument("--student-epochs", type=int)
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--imgsz", type=int)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                    help="pass 2: distillation variants besides the plan's own (none: pass 1 only)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    yb.set_yolov5_verbosity(False)

    overrides = {k: v for k, v in dict(teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                                       n_train=args.n_train, imgsz=args.imgsz).items() if v is not None}
    base = replace(quickstart.Plan.named(args.plan), **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results: dict = json.loads(store.read_text()) if store.exists() else {}
    plan_of = {seed: replace(base, seed=seed) for seed in args.seeds}
    own = base.distill_label
    variants = [own] + [v for v in args.variants if v != own]
    sizes = {k: v for k, v in vars(base).items() if k != "seed"}
    title = f"kd_gain, {date.today()}, plan {args.plan} {overrides or ''}: {sizes}"

    for seed, plan in plan_of.items():  # pass 1: the quickstart pipeline per seed
        if "baseline" not in results.get(str(seed), {}):
            results[str(seed)] = run_quickstart(out / f"seed{seed}", plan, args.device)
            _save(store, results)
            print(report(results, [str(s) for s in args.seeds], variants, title))
    for seed, plan in plan_of.items():  # pass 2: the other variants, same teacher and data
        for v in variants:
            if v not in results[str(seed)]:
                results[str(seed)][v] = run_variant(out / f"seed{seed}", plan, v, args.device)
                _save(store, results)

    text = report(results, [str(s) for s in args.seeds], variants, title)
    (out / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
