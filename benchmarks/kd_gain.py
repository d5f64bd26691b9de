"""Which distillation pays where the models have learned: every loss against the student alone, over seeds.

    python benchmarks/kd_gain.py --seeds 0 1 2 --out runs/kd_gain --budget-minutes 140

Plan `benchmark` of cfg/quickstart.yaml (larger than the quickstart; same recipe). Per seed: the dataset
generated with the seed, a yolov5s teacher, then yolov5n students trained alone and distilled from it:
output only; output + MSE, CWD or PKD features; PKD features only. Then the capacity-gap pair: a yolov5m
teacher distilled into a yolov5n and into a yolov5s (each against that student alone).

Rows are run one at a time over all seeds (every seed's teacher, then every seed's student alone, then
each variant), so the main comparison fills first. Finished runs are kept in OUT/results.json and an
interrupted run resumes from its last.pt; with --budget-minutes the benchmark stops before a run that
would not fit (estimated from finished runs of the same kind) and says how to go on. The report gives
mean ± sd of mAP50-95 (best.pt, val split), the gain over the student alone, the share of the teacher's
lead closed, for each pair of losses whether their per-seed difference exceeds its own seed spread, and
a plot of val mAP per epoch (OUT/curves.png).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import NamedTuple, Optional

from yolodistill import quickstart
from yolodistill import yolo_backend as yb
from yolodistill.run_logger import read_results

MAP = "metrics/mAP_0.5:0.95"
LOGGER = logging.getLogger("yolodistill")


class Row(NamedTuple):
    student: str  # model yaml
    teacher: Optional[str]  # teacher model yaml; None: the student alone
    distill: dict  # TrainOptions fields; {"plan": True} means the plan's own setting


def feature(loss: str, weight: float, output: bool = True) -> dict:
    """Feature distillation (which also distils the outputs, at the plan's weight unless output=False)."""
    return dict(d_feature=True, feature_loss=loss, f_weight=weight, **({} if output else {"d_weight": 0.0}))


# Feature weights: those of the earlier benchmark (RESULTS.md), where MSE at 0.5 hurt and 0.05 helped.
ROWS = {
    "yolov5n alone": Row("yolov5n.yaml", None, {}),
    "output": Row("yolov5n.yaml", "yolov5s.yaml", dict(d_output=True)),
    "output + mse": Row("yolov5n.yaml", "yolov5s.yaml", feature("mse", 0.05)),
    "output + cwd": Row("yolov5n.yaml", "yolov5s.yaml", feature("cwd", 0.1)),
    "output + pkd": Row("yolov5n.yaml", "yolov5s.yaml", feature("pkd", 0.1)),
    "pkd only": Row("yolov5n.yaml", "yolov5s.yaml", feature("pkd", 0.1, output=False)),
    "yolov5s alone": Row("yolov5s.yaml", None, {}),
    "yolov5m -> yolov5n": Row("yolov5n.yaml", "yolov5m.yaml", {"plan": True}),
    "yolov5m -> yolov5s": Row("yolov5s.yaml", "yolov5m.yaml", {"plan": True}),
}
BASELINE = {"yolov5n.yaml": "yolov5n alone", "yolov5s.yaml": "yolov5s alone"}
TEACHER_ROWS = {"yolov5s.yaml": "teacher yolov5s", "yolov5m.yaml": "teacher yolov5m"}
MIN_GAP = 0.005  # a teacher less than half a point ahead leaves no gap worth dividing by


def _save(store: Path, results: dict) -> None:
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(store)


def _run_dir(name: str) -> str:
    return name.replace(" -> ", "_to_").replace(" + ", "_").replace("'", "").replace(" ", "_")


def distill_options(row: Row, plan: quickstart.Plan) -> dict:
    """TrainOptions fields of a distilled row: its own, the output term at the plan's weight unless it says."""
    if row.distill.get("plan"):
        return plan.distill_options()
    return {"d_output": True, "d_weight": plan.output_weight, **row.distill}


class Budget:
    """Stops the benchmark before a run that would end past the budget (estimated from finished runs)."""

    def __init__(self, minutes: Optional[float], results: dict):
        self.t0, self.minutes, self.results = time.time(), minutes, results

    def allows(self, kind: str) -> bool:
        if self.minutes is None:
            return True
        runs = [r for seed in self.results.values() for r in seed.values()]
        same = [r["minutes"] for r in runs if r.get("kind") == kind]
        # a kind not run yet: as long as the longest run so far (nothing run yet: let it start)
        estimate = statistics.median(same) if same else max((r["minutes"] for r in runs), default=0.0)
        return (time.time() - self.t0) / 60 + estimate <= self.minutes


def run_all(args, plan: quickstart.Plan, results: dict, store: Path) -> bool:
    """Train every missing run; False if the budget stopped it first."""
    budget = Budget(args.budget_minutes, results)
    order: list[tuple[str, str]] = []  # each teacher just before the first row that needs it
    for r in (r for r in ROWS if r in args.rows):
        if ROWS[r].teacher and ("teacher", ROWS[r].teacher) not in order:
            order.append(("teacher", ROWS[r].teacher))
        order.append(("row", r))
    for what, name in order:
        for seed in args.seeds:
            splan = replace(plan, seed=seed)
            root = Path(args.out) / f"seed{seed}"
            done = results.setdefault(str(seed), {})
            label = TEACHER_ROWS[name] if what == "teacher" else name
            if label in done:
                continue
            row = ROWS.get(name)
            model = name if what == "teacher" else row.student
            kind = f"{Path(model).stem} " + ("teacher" if what == "teacher" else "distilled" if row.teacher else "alone")
            if not budget.allows(kind):
                return False
            data = quickstart.prepare_data(root, splan)
            t0 = time.time()
            if what == "teacher":
                r = quickstart.train_or_resume(root, _run_dir(label), splan, data, "cpu", cfg=model,
                                               epochs=splan.teacher_epochs)
            else:
                extra = {}
                if row.teacher:
                    teacher = root / _run_dir(TEACHER_ROWS[row.teacher]) / "weights" / "best.pt"
                    extra = dict(t_weights=str(teacher), **distill_options(row, splan))
                r = quickstart.train_or_resume(root, _run_dir(name), splan, data, "cpu", cfg=row.student,
                                               epochs=splan.student_epochs, **extra)
            done[label] = {"map": r[MAP], "mAP50": r["metrics/mAP_0.5"], "minutes": (time.time() - t0) / 60,
                           "kind": kind, "save_dir": r["save_dir"]}
            _save(store, results)
    return True


def _mean_sd(xs: list[float], scale: float = 1.0, fmt: str = ".3f") -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(scale * xs[0], fmt)
    return f"{format(scale * statistics.mean(xs), fmt)} ± {format(scale * statistics.stdev(xs), fmt.lstrip('+'))}"


def plan_row(plan: quickstart.Plan) -> Optional[str]:
    """The yolov5s -> yolov5n row trained with the plan's own distillation setting."""
    return next((r for r, row in ROWS.items() if row.teacher == "yolov5s.yaml" and not row.distill.get("plan")
                 and distill_options(row, plan) == plan.distill_options()), None)


def report(results: dict, seeds: list[int], title: str, plan: quickstart.Plan) -> str:
    setting = ", ".join(f"{k} {v}" for k, v in plan.distill_options().items())
    def per_seed(label: str) -> dict[int, float]:
        return {s: results[str(s)][label]["map"] for s in seeds if label in results.get(str(s), {})}

    lines = [title, "", f"The quickstart's setting ({setting}) is the row `{plan_row(plan)}`.", "", "| run | seeds | mAP50-95 (mean ± sd) | gain over the student alone, points | "
             "share of the teacher's lead closed |", "| --- | --- | --- | --- | --- |"]
    for label in list(TEACHER_ROWS.values()) + list(ROWS):
        got = per_seed(label)
        if not got:
            continue
        gain, share = "", ""
        row = ROWS.get(label)
        if row is not None and row.teacher:
            alone, teacher = per_seed(BASELINE[row.student]), per_seed(TEACHER_ROWS[row.teacher])
            both = [s for s in got if s in alone and s in teacher]
            gain = _mean_sd([got[s] - alone[s] for s in both], 100, "+.1f")
            shares = [(got[s] - alone[s]) / (teacher[s] - alone[s]) for s in both
                      if teacher[s] - alone[s] >= MIN_GAP]
            share = (f"{100 * statistics.mean(shares):.0f}% (per seed: "
                     f"{', '.join(f'{100 * x:.0f}%' for x in shares)})") if shares else "-"
        lines.append(f"| {label} | {len(got)} | {_mean_sd(list(got.values()))} | {gain} | {share} |")

    distilled = [r for r in ROWS if ROWS[r].teacher == "yolov5s.yaml"]
    lines += ["", "Paired differences between losses (same seed, same teacher and data): mean ± sd over seeds, "
              "and whether |mean| exceeds that seed spread.", "",
              "| A - B | seeds | difference, points | exceeds the seed spread |", "| --- | --- | --- | --- |"]
    for a, b in itertools.combinations(distilled, 2):
        pa, pb = per_seed(a), per_seed(b)
        diffs = [pa[s] - pb[s] for s in pa if s in pb]
        if len(diffs) >= 2:
            mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
            lines.append(f"| {a} - {b} | {len(diffs)} | {100 * mean:+.1f} ± {100 * sd:.1f} | "
                         f"{'yes' if abs(mean) > sd else 'no'} |")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), tight_layout=True)
    labels = sorted({label for seed in results.values() for label in seed})
    for i, label in enumerate(labels):
        for j, seed in enumerate(sorted(results)):
            if label in results[seed]:
                rows = read_results(Path(results[seed][label]["save_dir"]) / "results.csv")
                ax.plot([r[MAP] for r in rows], color=f"C{i % 10}", alpha=0.8, lw=1,
                        label=label if j == 0 else None)
    ax.set(xlabel="epoch", ylabel="val mAP50-95", title="kd_gain: every run, every seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/kd_gain")
    ap.add_argument("--plan", default="benchmark", help="a plan of cfg/quickstart.yaml")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--budget-minutes", type=float, help="stop before a run that would end past this")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--teacher-epochs", type=int)
    ap.add_argument("--student-epochs", type=int)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    yb.set_yolov5_verbosity(False)

    overrides = {k: v for k, v in dict(n_train=args.n_train, teacher_epochs=args.teacher_epochs,
                                       student_epochs=args.student_epochs).items() if v is not None}
    plan = replace(quickstart.Plan.named(args.plan), **overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    sizes = {k: v for k, v in vars(plan).items() if k != "seed"}
    stamp = out / "plan.json"  # runs of another plan must not be resumed or averaged with these
    if stamp.exists() and json.loads(stamp.read_text()) != sizes:
        raise SystemExit(f"kd_gain: {out} holds runs of another plan ({stamp}): use another --out")
    stamp.write_text(json.dumps(sizes, indent=1))
    results: dict = json.loads(store.read_text()) if store.exists() else {}
    finished = run_all(args, plan, results, store)
    text = report(results, args.seeds, f"# kd_gain, {date.today()}, plan {args.plan}: {sizes}", plan)
    if results:
        text += f"\nplot: {plot_curves(results, out)}\n"
    if not finished:
        text += (f"\nStopped by --budget-minutes {args.budget_minutes:g} before the next run; the same command "
                 f"goes on from {store}.\n")
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
