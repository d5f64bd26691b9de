"""Where on the difficulty dial do a yolov5s teacher and a yolov5n student land? Curves for choosing the default.

    python benchmarks/calibrate_synth.py --difficulty 0 0.25 0.5 --imgsz 160 --epochs 30 --out runs/calibrate

For each difficulty: `data synth` with that setting (the quickstart's sizes: 512 train / 160 val images, seed
0), then the teacher and the student alone trained with the quickstart's recipe (optimizer, hyp, batch,
nominal batch), unless overridden here. Reports the final val mAP50-95 of best.pt of both, the gap in points
and minutes per epoch, and plots val mAP per epoch of every run (OUT/curves.png) and final mAP against
difficulty (OUT/dial.png). Finished runs are kept in OUT/results.json and interrupted ones resume from their
last.pt, so a stopped benchmark picks up where it stopped; `--report` only rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Optional

from yolodistill import quickstart
from yolodistill.run_logger import read_results

MAP = "metrics/mAP_0.5:0.95"


def _save(store: Path, results: dict) -> None:
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(store)


def key(difficulty: float, model: str, plan: quickstart.Plan) -> str:
    return f"d{difficulty:g}/{Path(model).stem}/{plan.imgsz}px/{plan.optimizer}/nbs{plan.nbs}"


def report(results: dict, out: Path, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_setting: dict[tuple[float, str], dict] = {}  # (difficulty, recipe) -> {model stem: result}
    for k, r in results.items():
        d, model, recipe = k.split("/", 2)
        by_setting.setdefault((float(d[1:]), recipe), {})[model] = r

    def cell(r: Optional[dict], fmt: str) -> str:
        return format(r["map"], fmt) if r else "-"

    lines = [title, "", "| difficulty | recipe | teacher yolov5s | student yolov5n alone | gap, points | "
             "min/epoch (s, n) |", "| --- | --- | --- | --- | --- | --- |"]
    rows = []
    for (d, recipe), models in sorted(by_setting.items()):
        t, s = models.get("yolov5s"), models.get("yolov5n")
        gap = f"{100 * (t['map'] - s['map']):.1f}" if t and s else "-"
        per_epoch = " / ".join(f"{r['minutes'] / r['epochs']:.2f}" if r else "-" for r in (t, s))
        lines.append(f"| {d:g} | {recipe} | {cell(t, '.3f')} | {cell(s, '.3f')} | {gap} | {per_epoch} |")
        rows.append((d, recipe, t, s))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), tight_layout=True)
    for k, r in sorted(results.items()):
        curve = [row[MAP] for row in read_results(Path(r["save_dir"]) / "results.csv")]
        ax1.plot(range(len(curve)), curve, label=k, ls="-" if "yolov5s" in k else "--")
    ax1.set(xlabel="epoch", ylabel="val mAP50-95", title="per epoch")
    ax1.legend(fontsize=6)
    for rest in sorted({r[1] for r in rows}):
        for i, model in ((2, "teacher yolov5s"), (3, "student yolov5n alone")):
            pts = sorted((r[0], r[i]["map"]) for r in rows if r[1] == rest and r[i])
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=f"{model} ({rest})")
    ax2.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax2.set(xlabel="difficulty", ylabel="final val mAP50-95 (best.pt)", title="along the dial")
    ax2.legend(fontsize=6)
    fig.savefig(out / "calibration.png", dpi=120)
    plt.close(fig)
    return "\n".join(lines) + f"\n\nplot: {out / 'calibration.png'}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--difficulty", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    ap.add_argument("--models", nargs="+", default=["yolov5s.yaml", "yolov5n.yaml"])
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--nbs", type=int, default=None, help="nominal batch (default: the quickstart plan's)")
    ap.add_argument("--optimizer", default=None, help="default: the quickstart plan's")
    ap.add_argument("--out", default="runs/calibrate")
    ap.add_argument("--report", action="store_true", help="only rewrite the report from OUT/results.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    plan = replace(quickstart.Plan.named("default"), imgsz=args.imgsz)
    plan = replace(plan, **{k: v for k, v in (("nbs", args.nbs), ("optimizer", args.optimizer)) if v is not None})
    for d in [] if args.report else args.difficulty:
        dplan = replace(plan, difficulty=d)
        root = out / f"d{d:g}_{plan.imgsz}px"
        data = quickstart.prepare_data(root, dplan)
        for model in args.models:
            k = key(d, model, dplan)
            if k in results:
                continue
            t0 = time.time()
            name = f"{Path(model).stem}_{dplan.optimizer}_nbs{dplan.nbs}"
            r = quickstart.train_or_resume(root, name, dplan, data, "cpu", cfg=model, epochs=args.epochs)
            results[k] = {"map": r[MAP], "mAP50": r["metrics/mAP_0.5"], "epochs": args.epochs,
                          "minutes": (time.time() - t0) / 60, "save_dir": str(root / name)}
            _save(store, results)
    title = (f"# synthetic-data calibration, {date.today()}: {plan.n_train} train / {plan.n_val} val images, "
             f"{args.epochs} epochs, batch {plan.batch_size}, hyp {plan.hyp}")
    text = report(results, out, title)
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
