"""Which distillation pays where the models have learned: every loss against the student alone, over seeds.

    python benchmarks/kd_gain.py --seeds 0 1 2 --out runs/kd_conv --budget-minutes 140

Plan `converged` of cfg/quickstart.yaml (larger than the quickstart, the same recipe, the hardest data, 100
epochs for every model: see the plan's comment; `--plan benchmark` is the first, 30-epoch plan). Per seed:
the dataset generated with the seed, a yolov5s teacher, then yolov5n students trained alone and distilled
from it: output only; output + PKD, CWD or MSE features; PKD features only. Then the fine-tuning case:
teacher and student pretrained on that data are trained further on a small set of another style (plan
`finetune_hard`, or `finetune` for plan `benchmark`: `data synth --style textured`), the student alone and
distilled from the fine-tuned teacher. Then the
capacity-gap pair: a yolov5m teacher distilled into a yolov5n and into a yolov5s.

Runs go one at a time over all seeds (every seed's teacher, then every seed's student alone, then each
variant), so the main comparison fills first; a run's teacher, starting weights and baseline come before
it. Finished runs are kept in OUT/results.json and an interrupted run resumes from its last.pt; with
--budget-minutes the benchmark stops before a run that would not fit (estimated from finished runs of the
same kind) and says how to go on. The report gives mean ± sd of mAP50-95 (best.pt, chosen on val, scored
on the test split where the plan has one, else on val), the gain
over the student alone, the share of the teacher's lead closed, for each pair of runs with the same
teacher and baseline their per-seed difference with its 95% t-interval (paired_stats.py: same seed, same
machine; shown when the interval excludes 0), and plots of val mAP
per epoch (OUT/curves.png). Every finished run is also mirrored to benchmarks/records/<OUT's name>.json
(figures and curve, committed): a report in a checkout without runs/ still counts it, named as recorded.
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
from typing import Callable, NamedTuple, Optional, Union

from yolodistill import quickstart
from yolodistill import yolo_backend as yb

import run_records  # benchmarks/, beside this file
from paired_stats import paired_interval

MAP = "metrics/mAP_0.5:0.95"
LOGGER = logging.getLogger("yolodistill")


class Run(NamedTuple):
    """One training run of the benchmark; `teacher` and `init` name other runs (their best.pt)."""

    model: str  # model yaml
    teacher: Optional[str] = None  # the run that teaches it; None: trained alone
    distill: Optional[dict] = None  # TrainOptions fields; None: the plan's own setting (when taught)
    init: Optional[str] = None  # the run whose weights it starts from (fine-tuning); None: random weights
    target: bool = False  # trained on the fine-tuning plan's small set of another style instead of the plan's
    epochs: Union[str, int] = "student"  # which of its plan's epoch counts, "teacher" or "student"; or a number


def feature(loss: str, weight: float, output: bool = True) -> dict:
    """Feature distillation (which also distils the outputs, at the plan's weight unless output=False)."""
    return dict(d_feature=True, feature_loss=loss, f_weight=weight, **({} if output else {"d_weight": 0.0}))


N, S, M = "yolov5n.yaml", "yolov5s.yaml", "yolov5m.yaml"
# Feature weights: those of the earlier benchmark (RESULTS.md), where MSE at 0.5 hurt and 0.05 helped.
# Order = run order (each over all seeds): the main comparison and the plan's setting first, then what is cheap.
RUNS = {
    "teacher yolov5s": Run(S, epochs="teacher"),
    "yolov5n alone": Run(N),
    "output": Run(N, "teacher yolov5s", dict(d_output=True)),
    "output + pkd": Run(N, "teacher yolov5s", feature("pkd", 0.1)),
    # fine-tuning, the common real case: teacher and student pretrained on the plan's data (the runs above),
    # then trained on a small set of another style; the teacher is fine-tuned first, as users would
    "fine-tuned teacher yolov5s": Run(S, init="teacher yolov5s", target=True, epochs="teacher"),
    "fine-tuned yolov5n alone": Run(N, init="yolov5n alone", target=True),
    "fine-tuned, output": Run(N, "fine-tuned teacher yolov5s", dict(d_output=True), init="yolov5n alone",
                              target=True),
    "fine-tuned, plan's setting": Run(N, "fine-tuned teacher yolov5s", init="yolov5n alone", target=True),
    "yolov5n on the small set only": Run(N, target=True),  # what the pretraining gives
    # the other feature losses: after the fine-tuning rows, which cost a tenth of one of these
    "output + cwd": Run(N, "teacher yolov5s", feature("cwd", 0.1)),
    "pkd only": Run(N, "teacher yolov5s", feature("pkd", 0.1, output=False)),
    "output + mse": Run(N, "teacher yolov5s", feature("mse", 0.05)),  # last: it was the least stable at 30 epochs
    "yolov5s alone": Run(S),  # where the plan trains teacher and student alike, the teacher's run (not trained again)
    # the capacity-gap pair: a larger teacher, into the small and the middle student, with the setting that
    # paid best at plan converged (outputs, mse_ciou: RESULTS.md; the plan's output + pkd cost 1.7 points)
    "teacher yolov5m": Run(M, epochs="teacher"),
    "yolov5m -> yolov5n": Run(N, "teacher yolov5m", dict(d_output=True, output_loss="mse_ciou")),
    "yolov5m -> yolov5s": Run(S, "teacher yolov5m", dict(d_output=True, output_loss="mse_ciou")),
    # screens, run only when named in --rows: the output weight, and a schedule twice as long for both the
    # student alone and the distilled one (distillation is known to pay more with longer training)
    "output, d_weight 3": Run(N, "teacher yolov5s", dict(d_output=True, d_weight=3.0)),
    # the output loss in yolov5's own forms: objectness taught on every cell (the teacher's view of clutter),
    # classes as probabilities, boxes by CIoU on the task's scale (mse's box part is next to nothing)
    "output, kl": Run(N, "teacher yolov5s", dict(d_output=True, output_loss="kl")),
    # mse's objectness and classes (its better mAP50 on seed 0) with kl's CIoU boxes (its better localization)
    "output, mse_ciou": Run(N, "teacher yolov5s", dict(d_output=True, output_loss="mse_ciou")),
    "output + pkd, mse_ciou": Run(N, "teacher yolov5s", dict(feature("pkd", 0.1), output_loss="mse_ciou")),
    # the fine-tuning case with 100 epochs on the small set instead of the plan's: whether distillation needs
    # more steps than the plan's fine-tuning gives (30 epochs of 128 images: 240 steps) to pay
    "fine-tuned yolov5n alone, 100 epochs": Run(N, init="yolov5n alone", target=True, epochs=100),
    "fine-tuned, output, 100 epochs": Run(N, "fine-tuned teacher yolov5s", dict(d_output=True), init="yolov5n alone",
                                          target=True, epochs=100),
    "yolov5n alone, 60 epochs": Run(N, epochs=60),
    "output, 60 epochs": Run(N, "teacher yolov5s", dict(d_output=True), epochs=60),
}
SCREENS = ("output, d_weight 3", "output, kl", "output, mse_ciou", "output + pkd, mse_ciou",
           "fine-tuned yolov5n alone, 100 epochs", "fine-tuned, output, 100 epochs", "yolov5n alone, 60 epochs",
           "output, 60 epochs")
# the fine-tuning set matches its plan's difficulty: on easier data than they were pretrained on, teacher and
# student would both saturate and leave no lead to distil
FINETUNE_PLANS = {"converged": "finetune_hard"}


def finetune_plan(plan_name: str) -> str:
    """The fine-tuning plan that goes with a plan of cfg/quickstart.yaml."""
    return FINETUNE_PLANS.get(plan_name, "finetune")


MIN_GAP = 0.005  # a teacher less than half a point ahead leaves no gap worth dividing by


def baseline(label: str) -> Optional[str]:
    """The run a taught run is compared with: the same model, start and data, trained alone."""
    run = RUNS[label]
    if run.teacher is None:
        return None
    alone = Run(run.model, init=run.init, target=run.target, epochs=run.epochs)
    return next((k for k, r in RUNS.items() if r == alone), None)


def with_dependencies(labels: list[str]) -> list[str]:
    """`labels` in RUNS order, each preceded by the runs it needs (its teacher, its starting weights, the
    baseline it is compared with)."""
    order: list[str] = []

    def add(label: str) -> None:
        run = RUNS[label]
        for need in (run.teacher, run.init, baseline(label)):
            if need and need not in order:
                add(need)
        if label not in order:
            order.append(label)

    for label in (k for k in RUNS if k in labels):
        add(label)
    return order


def epochs_of(run: Run, plan: quickstart.Plan) -> int:
    if isinstance(run.epochs, int):
        return run.epochs
    return plan.teacher_epochs if run.epochs == "teacher" else plan.student_epochs


def same_training(label: str, done: dict, plan: quickstart.Plan) -> Optional[str]:
    """A finished run of this seed trained exactly as `label` would be (e.g. `yolov5s alone` and the teacher
    when the plan gives both the same epochs): its result stands for this one instead of a second training."""
    run = RUNS[label]
    key = run._replace(epochs=epochs_of(run, plan))
    return next((k for k in done if k in RUNS and k != label and "same_as" not in done[k]
                 and RUNS[k]._replace(epochs=epochs_of(RUNS[k], plan)) == key), None)


def _save(store: Path, results: dict) -> None:
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(store)
    run_records.write(store.parent, results)  # the figures outlive runs/ (benchmarks/records)


def _run_dir(name: str) -> str:
    return (name.replace(" -> ", "_to_").replace(" + ", "_").replace(", ", "_").replace("'", "")
            .replace(":", "").replace(" ", "_"))


def distill_options(run: Run, plan: quickstart.Plan) -> dict:
    """TrainOptions fields of a taught run: its own, the output term at the plan's weight and with the plan's
    loss unless it says."""
    if run.distill is None:
        return plan.distill_options()
    return {"d_output": True, "d_weight": plan.output_weight, "output_loss": plan.output_loss, **run.distill}


def kind(run: Run) -> str:
    """Runs of one kind take about the same time (the budget's estimate)."""
    role = "teacher" if run.epochs == "teacher" else "distilled" if run.teacher else "alone"
    length = f" {run.epochs} epochs" if isinstance(run.epochs, int) else ""
    return f"{Path(run.model).stem} {role}{length}" + (" fine-tuning" if run.target else "")


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


def _best(result: dict) -> str:
    return str(Path(result["save_dir"]) / "weights" / "best.pt")


def run_all(args, plans: dict[bool, quickstart.Plan], results: dict, store: Path) -> bool:
    """Train every missing run, each over all seeds before the next; False if the budget stopped it first.
    plans: the plan's sizes for the source data (False) and the fine-tuning set (True)."""
    budget = Budget(args.budget_minutes, results)
    for label in with_dependencies(args.rows):
        run = RUNS[label]
        for seed in args.seeds:
            plan = replace(plans[run.target], seed=seed)
            root = Path(args.out) / f"seed{seed}"
            done = results.setdefault(str(seed), {})
            if label in done:
                continue
            twin = same_training(label, done, plan)
            if twin is not None:
                done[label] = {**done[twin], "same_as": twin}
                _save(store, results)
                continue
            if not budget.allows(kind(run)):
                return False
            data = quickstart.prepare_data(root / "target" if run.target else root, plan)
            extra = {}
            if run.teacher:
                extra.update(t_weights=_best(done[run.teacher]), **distill_options(run, plan))
            if run.init:
                extra.update(weights=_best(done[run.init]))
            t0 = time.time()
            r = quickstart.train_or_resume(root, _run_dir(label), plan, data, "cpu", cfg=run.model,
                                           epochs=epochs_of(run, plan), **extra)
            done[label] = run_records.finished(r, t0, kind(run), data=data, plan=plan)
            _save(store, results)
    return True


def _mean_sd(xs: list[float], scale: float = 1.0, fmt: str = ".3f") -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(scale * xs[0], fmt)
    return f"{format(scale * statistics.mean(xs), fmt)} ± {format(scale * statistics.stdev(xs), fmt.lstrip('+'))}"


def plan_run(plan: quickstart.Plan) -> Optional[str]:
    """The yolov5s -> yolov5n run whose own setting is the plan's (besides the one that says `None`)."""
    return next((k for k, r in RUNS.items() if r.teacher == "teacher yolov5s" and r.distill is not None
                 and distill_options(r, plan) == plan.distill_options()), None)


def _val_maps(result: dict) -> list[float]:
    return run_records.curve(result)


def first_epoch_at(curve: list[float], level: float) -> Optional[int]:
    """The first epoch (1-based) whose val mAP reaches `level`; None if none does."""
    return next((i + 1 for i, m in enumerate(curve) if m >= level), None)


def _catch_up(results: dict, label: str, base: str, seeds: list[int]) -> str:
    """Per seed, the epoch at which a taught run first scores the best mAP its student alone reached: how much
    of the schedule distillation saves. (Not the length of a shorter schedule: the learning rate decays over
    the run's own epochs.)"""
    cells = []
    for s in seeds:
        curve = _val_maps(results[str(s)][label])
        epoch = first_epoch_at(curve, max(_val_maps(results[str(s)][base]), default=float("inf")))
        cells.append(f"{epoch}/{len(curve)}" if epoch else f"never/{len(curve)}")
    return ", ".join(cells)


def headline_metric(results: dict, seeds: list[int]) -> tuple[str, str]:
    """("test_map", "test") when every run shown was scored on a test split, else ("map", "val"): val chose
    each best.pt, so a val figure flatters it and is the headline only where no test split exists."""
    shown = [r for s in seeds for r in results.get(str(s), {}).values()]
    return ("test_map", "test") if shown and all("test_map" in r for r in shown) else ("map", "val")


def gain_pays(gains: list[float]) -> str:
    """Whether a gain is shown: its paired 95% interval over the seeds lies above 0 ("-" below 2 seeds)."""
    if len(gains) < 2:
        return "-"
    return "yes" if paired_interval(gains).low > 0 else "no"


def report(results: dict, seeds: list[int], title: str, plan: quickstart.Plan) -> str:
    metric, split = headline_metric(results, seeds)

    def per_seed(label: str, key: str = metric) -> dict[int, float]:
        return {s: results[str(s)][label].get(key) for s in seeds if label in results.get(str(s), {})}

    setting = ", ".join(f"{k} {v}" for k, v in plan.distill_options().items())
    lines = [title, "", f"The plan's setting is {setting}: the run `{plan_run(plan)}`, and the runs a yolov5m "
             f"teaches and `fine-tuned, plan's setting`. Every `fine-tuned` run and `yolov5n on the small set "
             f"only` are trained and scored on the small set of the other style.", "",
             f"| run | seeds | {split} mAP50-95 (mean ± sd) | gain over the student alone, points [95% interval] | "
             "pays (interval above 0) | share of the teacher's lead closed | "
             "first epoch at the student alone's best (of its epochs) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[str]] = {}  # (teacher, baseline) -> the runs they compare
    for label, run in RUNS.items():
        got = per_seed(label)
        if not got:
            continue
        gain, clear, share, catch_up = "", "", "", ""
        base = baseline(label)
        if base is not None:
            groups.setdefault((run.teacher, base), []).append(label)
            alone, teacher = per_seed(base), per_seed(run.teacher)
            machines = per_seed(label, "machine")
            both = [s for s in got if s in alone and s in teacher and
                    machines[s] == per_seed(base, "machine")[s] == per_seed(run.teacher, "machine")[s]]
            gains = [got[s] - alone[s] for s in both]
            gain = paired_interval(gains).describe() if gains else "-"
            clear = gain_pays(gains)
            shares = [(got[s] - alone[s]) / (teacher[s] - alone[s]) for s in both
                      if teacher[s] - alone[s] >= MIN_GAP]
            share = (f"{100 * statistics.mean(shares):.0f}% (per seed: "
                     f"{', '.join(f'{100 * x:.0f}%' for x in shares)})") if shares else "-"
            catch_up = _catch_up(results, label, base, both)
        twins = {results[str(s)][label].get("same_as") for s in got} - {None}
        name = label + (f" (the run of {', '.join(sorted(twins))}: trained alike)" if twins else "")
        lines.append(f"| {name} | {len(got)} | {_mean_sd(list(got.values()))} | {gain} | {clear} | {share} | "
                     f"{catch_up} |")

    lines += ["", "Paired differences between runs with the same teacher and baseline (same seed, same machine): "
              "the mean and its 95% t-interval, shown when the interval excludes 0.", ""]
    lines += paired_differences(per_seed, [pair for labels in groups.values()
                                           for pair in itertools.combinations(labels, 2)])
    lines += ["", "The capacity gap: the same student and setting taught by another teacher (same seed).", ""]
    lines += paired_differences(per_seed, teacher_pairs())
    return "\n".join(lines) + "\n"


def teacher_pairs() -> list[tuple[str, str]]:
    """(A, B) taught runs that differ only in their teacher (the larger teacher's run first): whether a
    larger teacher teaches the same student better."""
    pairs = []
    for a, b in itertools.permutations(RUNS, 2):
        ra, rb = RUNS[a], RUNS[b]
        if (ra.teacher and rb.teacher and ra.teacher != rb.teacher and RUNS[ra.teacher].model == M
                and ra._replace(teacher=None) == rb._replace(teacher=None)):
            pairs.append((a, b))
    return pairs


def paired_differences(per_seed: Callable[..., dict], pairs: list[tuple[str, str]]) -> list[str]:
    """A table row for each pair (A, B) run on a common seed on one machine (`per_seed(label, key)` gives
    {seed: value} of "map" and "machine"): A - B in points with its 95% t-interval, and whether it is shown
    (paired_stats.py). Seeds whose two runs trained on different machines are left out, and counted."""
    lines = ["| A - B | seeds | difference, points [95% interval] | shown |", "| --- | --- | --- | --- |"]
    for a, b in pairs:
        pa, pb = per_seed(a), per_seed(b)
        ma, mb = per_seed(a, "machine"), per_seed(b, "machine")
        common = [s for s in pa if s in pb]
        diffs = [pa[s] - pb[s] for s in common if ma[s] == mb[s]]
        apart = len(common) - len(diffs)
        note = f" ({apart} seed{'s' * (apart > 1)} left out: its runs trained on different machines)" if apart else ""
        if diffs:
            interval = paired_interval(diffs)
            lines.append(f"| {a} - {b} | {len(diffs)} | {interval.describe()} | {interval.verdict}{note} |")
        elif apart:
            lines.append(f"| {a} - {b} | 0 | - | -{note} |")
    return lines


def plot_curves(results: dict, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5), tight_layout=True)
    for ax, target, title in ((axes[0], False, "the plan's data"), (axes[1], True, "fine-tuning on the other style")):
        for i, label in enumerate(k for k, r in RUNS.items() if r.target == target):
            for j, seed in enumerate(sorted(results)):
                if label in results[seed] and "same_as" not in results[seed][label]:
                    ax.plot(_val_maps(results[seed][label]), color=f"C{i % 10}", alpha=0.8, lw=1,
                            label=label if j == 0 else None)
        ax.set(xlabel="epoch", ylabel="val mAP50-95", title=f"kd_gain, {title}: every run, every seed")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, text: str, plot: Optional[Path], stopped_at: Optional[float]) -> None:
    """OUT/report.md (and the screen): the table, the plot, and how to go on if the budget stopped the run."""
    if plot is not None:
        text += f"\nplot: {plot}\n"
    if stopped_at is not None:
        text += (f"\nStopped by --budget-minutes {stopped_at:g} before the next run; the same command goes on "
                 f"from {out / 'results.json'}.\n")
    (out / "report.md").write_text(text)
    print(text)


def _stamp(path: Path, plan: quickstart.Plan) -> dict:
    """The plan's sizes (not its seed), written to `path`; refuses a folder that holds runs of another plan."""
    sizes = {k: v for k, v in vars(plan).items() if k != "seed"}
    if path.exists() and not run_records.same_plan(json.loads(path.read_text()), sizes):
        raise SystemExit(f"kd_gain: {path.parent} holds runs of another plan ({path}): use another --out")
    path.write_text(json.dumps(sizes, indent=1))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", help="where the runs go (default: runs/kd_gain_PLAN)")
    ap.add_argument("--plan", default="converged", help="a plan of cfg/quickstart.yaml")
    ap.add_argument("--finetune-plan", help="the plan of the fine-tuning runs' small set (default: "
                    f"{', '.join(f'{v} for plan {k}' for k, v in FINETUNE_PLANS.items())}, else finetune)")
    ap.add_argument("--rows", nargs="+", default=[k for k in RUNS if k not in SCREENS], choices=list(RUNS),
                    help=f"runs to train (with the runs they need); default: all but the screens {SCREENS}")
    ap.add_argument("--budget-minutes", type=float, help="stop before a run that would end past this")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--teacher-epochs", type=int)
    ap.add_argument("--student-epochs", type=int)
    ap.add_argument("--difficulty", type=float, help="of the plan's synthetic data (`data synth --difficulty`)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    yb.set_yolov5_verbosity(False)

    overrides = {k: v for k, v in dict(n_train=args.n_train, teacher_epochs=args.teacher_epochs,
                                       student_epochs=args.student_epochs,
                                       difficulty=args.difficulty).items() if v is not None}
    plan = replace(quickstart.Plan.named(args.plan), **overrides)
    args.finetune_plan = args.finetune_plan or finetune_plan(args.plan)
    target = quickstart.Plan.named(args.finetune_plan)
    args.out = args.out or f"runs/kd_gain_{args.plan}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    # runs of another plan must not be resumed or averaged with these
    sizes = _stamp(out / "plan.json", plan)
    target_sizes = _stamp(out / "plan_finetune.json", target)
    results: dict = json.loads(store.read_text()) if store.exists() else {}
    finished = run_all(args, {False: plan, True: target}, results, store)
    title = (f"# kd_gain, {date.today()}\n\nplan {args.plan}: {sizes}\n\nfine-tuning plan {args.finetune_plan}: "
             f"{target_sizes}")
    if results:
        run_records.write(out, results)
    shown = run_records.merged(out, results)  # with the recorded runs of earlier checkouts (benchmarks/records)
    notes = [*run_records.recorded_note(shown, args.seeds, out), *run_records.machines_note(shown, args.seeds)]
    text = report(shown, args.seeds, title, plan) + "\n".join(notes)
    write_report(out, text, plot_curves(shown, out) if shown else None, None if finished else args.budget_minutes)


if __name__ == "__main__":
    main()
