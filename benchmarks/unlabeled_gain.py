"""What unlabeled images buy a detection student: 10% of the labels, and as many new images without labels.

    python benchmarks/unlabeled_gain.py --seeds 0 1 2 --budget-minutes 140

Plan `converged` of cfg/quickstart.yaml and its data (seed by seed, as benchmarks/kd_gain.py makes them; its
folder runs/kd_conv). At plan `benchmark`, the first choice, the 30-epoch student is limited by its steps and
not by its labels: with 10% of the labels it scored higher than with all of them (RESULTS.md), which leaves no
way to close. The distilled rows distil the outputs only by default (`--f-weight 0`: at plan `converged` pkd
features cost 1.7 points). The
teacher is kd_gain's yolov5s, trained on all the labels, and so is the line to reach, kd_gain's yolov5n
trained alone on all of them (both are trained here first if kd_gain has not). The yolov5n students here see
10% of the labeled images, each copied 10 times so that an epoch has as many steps as one over all the labels,
and as `--unlabeled` images (one beside each labeled image in every batch) as many new images of the same data
as the other 90%, which no model has seen: before 2026-12-07 the pool was those 90%, the teacher's own training
images, on which its soft targets are close to the labels it learned (that protocol is a screen now):

- 10% labels alone; 10% labels distilled (the plan's output term with --output-loss, features at --f-weight;
  no unlabeled images);
- + unlabeled, soft: the same distillation terms on the unlabeled images too;
- + unlabeled, pseudo-labels: the teacher's boxes above --conf as their targets, no soft terms;
- + unlabeled, soft + pseudo-labels;
- domain shift: the unlabeled images from the other style (`data synth --style textured`), soft terms;
- screens of `--unlabeled-ratio`, run only when named in --rows: soft terms at ratio 0.5 and 2.

Each row gets mean ± sd over the seeds, the gain over the 10%-label student, and the share of the way from it
to the 100%-label student; OUT/curves.png plots val mAP per epoch. Finished runs are kept in
OUT/results.json; an interrupted run resumes from its last.pt; --budget-minutes stops before a run that would
not fit, and the same command goes on. Finished runs are mirrored to benchmarks/records (run_records.py), and
the report counts recorded runs of earlier checkouts.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kd_gain  # noqa: E402  (the benchmark's runs and helpers)
import run_records  # noqa: E402

from yolodistill import quickstart  # noqa: E402
from yolodistill.config import DistillConfig  # noqa: E402
from yolodistill.losses import OUTPUT_LOSSES  # noqa: E402
from yolodistill import yolo_backend as yb  # noqa: E402
from yolodistill.synth import generate  # noqa: E402

LOGGER = logging.getLogger("yolodistill")
REPEAT = 10  # the 10% labeled images are copied this often: an epoch as long as one over all the labels

# label -> (unlabeled images: None; "unseen", as many new images of the plan's data as the other 90% (from the
# generator's unlabeled stream: no model trained on them); "rest", the other 90% of the training images, which
# the teacher was trained on with their labels; or "textured"; TrainOptions beyond the plan's sizes, or "plan"
# for the plan's distillation setting, "pseudo" or "plan+pseudo"; further TrainOptions)
ROWS: dict[str, tuple[Optional[str], object, dict]] = {
    "10% labels alone": (None, {}, {}),
    "10% labels, distilled": (None, "plan", {}),
    "+ unseen unlabeled, soft": ("unseen", "plan", {}),
    "+ unseen unlabeled, pseudo-labels": ("unseen", "pseudo", {}),
    "+ unseen unlabeled, soft + pseudo-labels": ("unseen", "plan+pseudo", {}),
    "domain shift: textured unlabeled, soft": ("textured", "plan", {}),
    # the protocol before 2026-12-07 (a screen now): the teacher's own training images as the unlabeled pool,
    # on which its soft targets are close to the labels it learned; run beside the unseen row, the difference
    # says how much those figures overstated what new footage gives
    "+ teacher's training images unlabeled, soft": ("rest", "plan", {}),
    # screens of --unlabeled-ratio (run when named in --rows): half and twice the default's unlabeled images
    # per labeled one (a step costs about 1 + ratio labeled steps)
    "+ unseen unlabeled, soft, ratio 0.5": ("unseen", "plan", {"unlabeled_ratio": 0.5}),
    "+ unseen unlabeled, soft, ratio 2": ("unseen", "plan", {"unlabeled_ratio": 2.0}),
    # a screen at equal cost: an epoch here takes 770 labeled + 770 unlabeled images, twice the 768 of an epoch
    # of the 100%-label runs, so 50 epochs take as many images as their 100 (the schedule is 50 epochs long)
    "+ unseen unlabeled, soft, 50 epochs": ("unseen", "plan", {"epochs": 50}),
}
SCREENS = ("+ teacher's training images unlabeled, soft", "+ unseen unlabeled, soft, ratio 0.5",
           "+ unseen unlabeled, soft, ratio 2", "+ unseen unlabeled, soft, 50 epochs")
BASE_LOW, BASE_FULL, TEACHER = "10% labels alone", "yolov5n alone", "teacher yolov5s"
SOFT = "+ unseen unlabeled, soft"  # the mode that needs no threshold: the others are compared with it
# kd_gain's student distilled on every label with this benchmark's default terms (outputs, mse_ciou): shown
# beside the rows, where kd_gain has it, since an unlabeled row may pass the 100%-label student alone
FULL_DISTILLED = "output, mse_ciou"
REFERENCE = {TEACHER: "teacher yolov5s, 100% labels (kd_gain)", BASE_FULL: "100% labels alone (kd_gain)",
             FULL_DISTILLED: "100% labels, distilled: outputs, mse_ciou (kd_gain)"}


def few_labels(root: Path, data_yaml: Path, fraction: float) -> tuple[Path, Path]:
    """The dataset yaml of `fraction` of the training images (each copied REPEAT times, labels too), and the
    list of the other training images (as unlabeled). The first images by name: the generator draws every
    image independently, so they are a random subset."""
    out = root / "few"
    done = out / ".complete"
    images = sorted((data_yaml.parent / "images" / "train").iterdir())
    n = max(1, round(fraction * len(images)))
    rest = out / "unlabeled.txt"
    if not done.is_file():
        if out.exists():
            shutil.rmtree(out)
        (out / "images").mkdir(parents=True)
        (out / "labels").mkdir()
        for img in images[:n]:
            label = data_yaml.parent / "labels" / "train" / f"{img.stem}.txt"
            for k in range(REPEAT):
                shutil.copy(img, out / "images" / f"{img.stem}_{k}{img.suffix}")
                shutil.copy(label, out / "labels" / f"{img.stem}_{k}.txt")
        rest.write_text("".join(f"{p.resolve()}\n" for p in images[n:]))
        val = (data_yaml.parent / "images" / "val").resolve()
        names = list(yb.load_data_yaml(data_yaml)["names"].values())
        (out / "data.yaml").write_text(f"path: {out.resolve()}\ntrain: images\nval: {val}\nnc: {len(names)}\n"
                                       f"names: {names}\n")
        done.write_text(f"{n}\n")
    return out / "data.yaml", rest


def unseen_pool(root: Path, n: int, plan: quickstart.Plan) -> Path:
    """n new images of the plan's data (seed, style, difficulty), from the generator's unlabeled stream: what
    `data synth --n-unlabeled` writes beside the plan's splits, disjoint from the images any model trained on."""
    folder = root / "unseen"
    if not (folder / ".complete").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        generate(folder, n_train=1, n_val=1, n_test=0, n_unlabeled=n, imgsz=plan.imgsz, seed=plan.seed,
                 difficulty=plan.difficulty, style=plan.style, progress=False)
        (folder / ".complete").write_text(f"{n}\n")
    return folder / "images" / "unlabeled"


def textured_pool(root: Path, n: int, plan: quickstart.Plan) -> Path:
    """n images of the other style (labels written by the generator are ignored by --unlabeled)."""
    folder = root / "textured"
    if not (folder / ".complete").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        generate(folder, n_train=n, n_val=1, n_test=0, imgsz=plan.imgsz, seed=plan.seed + 1000,
                 difficulty=plan.difficulty,
                 style="textured", progress=False)
        (folder / ".complete").write_text(f"{n}\n")
    return folder / "images" / "train"


def options(kind: object, plan: quickstart.Plan, conf: float) -> dict:
    """TrainOptions fields of a row's kind (ROWS' second item)."""
    if kind == "plan":
        return plan.distill_options()
    if kind == "pseudo":  # the teacher's boxes only: the output term is on but weighs nothing
        return dict(d_output=True, d_weight=0.0, pseudo_labels=conf)
    if kind == "plan+pseudo":
        return dict(plan.distill_options(), pseudo_labels=conf)
    return dict(kind)


def run_all(args, plan: quickstart.Plan, results: dict, store: Path, minutes: Optional[float]) -> bool:
    budget = kd_gain.Budget(minutes, results)
    for label in (r for r in ROWS if r in args.rows):
        unlabeled, kind, more = ROWS[label]
        for seed in args.seeds:
            splan = replace(plan, seed=seed)
            done = results.setdefault(str(seed), {})
            if label in done:
                continue
            reference = json.loads((Path(args.kd_gain) / "results.json").read_text())[str(seed)]
            ratio, epochs = more.get("unlabeled_ratio"), more.get("epochs", splan.student_epochs)
            run_kind = (f"yolov5n {'distilled' if kind != {} else 'alone'}{' + unlabeled' if unlabeled else ''}"
                        f"{f' ratio {ratio:g}' if ratio else ''}"
                        f"{f' {epochs} epochs' if epochs != splan.student_epochs else ''}")
            if not budget.allows(run_kind):
                return False
            root = Path(args.out) / f"seed{seed}"
            data = quickstart.prepare_data(Path(args.kd_gain) / f"seed{seed}", splan)
            few, rest = few_labels(root, data, args.fraction)
            extra = {k: v for k, v in {**options(kind, splan, args.conf), **more}.items() if k != "epochs"}
            if kind != {}:
                extra["t_weights"] = kd_gain._best(reference[TEACHER])
            n = len(rest.read_text().splitlines())  # every pool as large as the other 90%
            if unlabeled == "rest":
                extra["unlabeled"] = [str(rest)]
            elif unlabeled == "unseen":
                extra["unlabeled"] = [str(unseen_pool(root, n, splan))]
            elif unlabeled == "textured":
                extra["unlabeled"] = [str(textured_pool(root, n, splan))]
            t0 = time.time()
            r = quickstart.train_or_resume(root, kd_gain._run_dir(label.replace("%", "pct")), splan, few, "cpu",
                                           cfg=plan.student_cfg, epochs=epochs, **extra)
            done[label] = run_records.finished(r, t0, run_kind, data=data, plan=splan)
            kd_gain._save(store, results)
    return True


def report(results: dict, reference: dict, seeds: list[int], title: str) -> str:
    shown = [TEACHER, BASE_FULL, FULL_DISTILLED, *ROWS]
    metric, split = kd_gain.headline_metric({s: {k: v for k, v in {**reference.get(s, {}), **results.get(s, {})}.items()
                                                 if k in shown} for s in {*reference, *results}}, seeds)

    def per_seed(label: str, key: str = metric) -> dict[int, float]:
        source = reference if label in REFERENCE else results
        return {s: source[str(s)][label].get(key) for s in seeds if label in source.get(str(s), {})}

    low, full = per_seed(BASE_LOW), per_seed(BASE_FULL)
    lines = [title, "", f"| run | seeds | {split} mAP50-95 (mean ± sd) | gain over 10% labels alone, points | "
             "share of the way to 100% labels | training minutes (mean) |", "| --- | --- | --- | --- | --- | --- |"]
    for label in [TEACHER, BASE_FULL, FULL_DISTILLED, *ROWS]:
        got = per_seed(label)
        if not got:
            continue
        gain = share = ""
        if label != BASE_LOW and label not in (TEACHER, BASE_FULL):
            both = [s for s in got if s in low and s in full]
            gain = kd_gain._mean_sd([got[s] - low[s] for s in both], 100, "+.1f")
            shares = [(got[s] - low[s]) / (full[s] - low[s]) for s in both if full[s] - low[s] >= kd_gain.MIN_GAP]
            share = (f"{100 * statistics.mean(shares):.0f}% (per seed: "
                     f"{', '.join(f'{100 * x:.0f}%' for x in shares)})") if shares else "-"
        # the training cost beside: an unlabeled row sees (1 + ratio) images a step
        minutes = statistics.mean(per_seed(label, "minutes").values())
        lines.append(f"| {REFERENCE.get(label, label)} | {len(got)} | {kd_gain._mean_sd(list(got.values()))} | "
                     f"{gain} | {share} | {minutes:.1f} |")
    lines += ["", "Which way to use the teacher pays: paired differences (same seed, same machine) against the soft "
              "terms on unlabeled images, the mean and its 95% t-interval, shown when the interval excludes 0.", ""]
    lines += kd_gain.paired_differences(per_seed, [(label, SOFT) for label in ROWS
                                                   if label not in (BASE_LOW, SOFT, *SCREENS)])
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, reference: dict, out: Path) -> Path:
    """Every run of every seed, with kd_gain's (the lines to reach: the 100%-label students, the teacher)
    dashed in greys for the same seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), tight_layout=True)
    greys = {TEACHER: "0.0", FULL_DISTILLED: "0.35", BASE_FULL: "0.6"}
    curves = [(reference, label, dict(color=grey, ls="--")) for label, grey in greys.items()]
    curves += [(results, label, dict(color=f"C{i}")) for i, label in enumerate(ROWS)]
    for source, label, style in curves:
        seeds = [s for s in sorted(results) if label in source.get(s, {})]
        for j, seed in enumerate(seeds):
            ax.plot(run_records.curve(source[seed][label]), lw=1, label=REFERENCE.get(label, label) if j == 0 else None,
                    **style)
    ax.set(xlabel="epoch", ylabel="val mAP50-95", title="unlabeled_gain: every run, every seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/unlabeled_conv")
    ap.add_argument("--kd-gain", default="runs/kd_conv", help="kd_gain's OUT: its teacher and 100%% student")
    ap.add_argument("--plan", default="converged", help="a plan of cfg/quickstart.yaml (kd_gain's)")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the training images that keep labels")
    ap.add_argument("--conf", type=float, default=0.25, help="--pseudo-labels threshold of the pseudo-label rows")
    ap.add_argument("--rows", nargs="+", default=[r for r in ROWS if r not in SCREENS], choices=list(ROWS),
                    help=f"runs to train; default: all but the screens {SCREENS}")
    ap.add_argument("--budget-minutes", type=float, help="stop before a run that would end past this")
    ap.add_argument("--report-only", action="store_true", help="train nothing: the report of the runs done")
    ap.add_argument("--output-loss", default=DistillConfig.output_loss, choices=OUTPUT_LOSSES,
                    help="the output loss of the distilled rows (default: the trainer's), whatever the plan's")
    ap.add_argument("--f-weight", type=float, default=0.0, help="the feature weight of the distilled rows "
                    "(default 0: outputs only, the better setting at plan converged, RESULTS.md)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    yb.set_yolov5_verbosity(False)

    base = quickstart.Plan.named(args.plan)
    # kd_gain's folder is stamped with its plan as it stands (only its untaught runs are used here); the rows
    # of this benchmark distil with --output-loss and --f-weight
    plan = replace(base, output_loss=args.output_loss, feature_weight=args.f_weight)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = kd_gain._stamp(out / "plan.json", plan)
    t0 = time.time()
    # the teacher and the 100%-label student: kd_gain's runs, trained there first if missing
    Path(args.kd_gain).mkdir(parents=True, exist_ok=True)
    kd_gain._stamp(Path(args.kd_gain) / "plan.json", base)
    kd_args = argparse.Namespace(seeds=args.seeds, out=args.kd_gain, rows=[TEACHER, BASE_FULL],
                                 budget_minutes=args.budget_minutes)
    kd_results_path = Path(args.kd_gain) / "results.json"
    kd_results = json.loads(kd_results_path.read_text()) if kd_results_path.exists() else {}
    finetune = quickstart.Plan.named(kd_gain.finetune_plan(args.plan))
    finished = args.report_only or kd_gain.run_all(kd_args, {False: base, True: finetune}, kd_results,
                                                   kd_results_path)
    store = out / "results.json"
    results: dict = json.loads(store.read_text()) if store.exists() else {}
    if finished and not args.report_only:
        left = None if args.budget_minutes is None else args.budget_minutes - (time.time() - t0) / 60
        finished = run_all(args, plan, results, store, left)
    title = (f"# unlabeled_gain, {date.today()}\n\nplan {args.plan}: {sizes}; labeled fraction {args.fraction:g} "
             f"(each copied {REPEAT}x); pseudo-label confidence {args.conf:g}")
    for folder, runs in ((out, results), (Path(args.kd_gain), kd_results)):
        if runs:
            run_records.write(folder, runs)
    # with the recorded runs of earlier checkouts (benchmarks/records)
    shown, reference = run_records.merged(out, results), run_records.merged(Path(args.kd_gain), kd_results)
    plot = plot_curves(shown, reference, out) if shown else None
    used = {s: {k: r for k, r in reference.get(s, {}).items() if k in REFERENCE} for s in reference}
    notes = [*run_records.recorded_note(shown, args.seeds, out),
             *run_records.recorded_note(used, args.seeds, Path(args.kd_gain)),
             *run_records.machines_note({s: {**used.get(s, {}), **shown.get(s, {})} for s in {*used, *shown}},
                                        args.seeds)]
    kd_gain.write_report(out, report(shown, reference, args.seeds, title) + "\n".join(notes), plot,
                         None if finished else args.budget_minutes)


if __name__ == "__main__":
    main()
