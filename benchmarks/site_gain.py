"""The user's case: pretrained models, a new site with a few labels and far more footage that nobody has seen.

    python benchmarks/site_gain.py --seeds 0 1 2 3 4 --budget-minutes 140   # ~35-55 min a seed (2 cores)
    python benchmarks/site_gain.py --report-only                            # the table of what is recorded

Per seed, one seed after the other (so that a working session ends with whole seeds, which pair):

1. Pretraining, the stand-in for COCO weights: a yolov5s teacher and a yolov5n student trained alone on plan
   `default` of cfg/quickstart.yaml (the flat style, all 512 labels, 30 epochs): the quickstart's own teacher and
   student alone. Copied from benchmarks/quickstart_seeds.py's folder (--quickstart) when it holds them finished
   for the seed and plan (the same training), else trained here.
2. The site, plan `site`: `data synth --style textured` (the other style) from another seed (seed + SITE_SEED):
   64 labeled images (each copied REPEAT times: an epoch of 16 steps), 96 val images (they choose best.pt), 192
   test images (they score it) and an unlabeled pool of 1024 images that neither model has seen.
3. Rows, each fine-tuned from the pretrained weights for the plan's 30 epochs (the yolov5n rows from the
   pretrained yolov5n, taught by the fine-tuned teacher, as a user would fine-tune the teacher first):
   the pretrained models scored as they are; the fine-tuned teacher; the student fine-tuned alone; distilled
   on the labeled images (outputs, the plan's loss); + the unlabeled pool with the soft terms, with pseudo-labels
   (the teacher's boxes above --conf, no soft terms), with both.

The report: test mAP50-95 of each row (val chose best.pt), the gain over the student fine-tuned alone with its
paired 95% t-interval (same seed, same machine; "pays" when it lies above 0), the share of the fine-tuned
teacher's lead it closes, and the unlabeled rows against distillation on the labels alone. Finished runs are kept
in OUT/results.json and mirrored to benchmarks/records/site_gain.json (figures, curves, machine); an interrupted
run resumes from its last.pt, and --budget-minutes stops before a run that would not fit.
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
from typing import NamedTuple, Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kd_gain  # noqa: E402  (Budget, _save, _stamp, paired_differences, write_report)
import run_records  # noqa: E402
from paired_stats import paired_interval  # noqa: E402

from yolodistill import quickstart  # noqa: E402
from yolodistill import yolo_backend as yb  # noqa: E402
from yolodistill.synth import generate  # noqa: E402

LOGGER = logging.getLogger("yolodistill")
REPEAT = 4  # the site's labeled images are copied this often: 64 images give an epoch of 16 steps, not 4
SITE_SEED = 1000  # the site's images come from seed + SITE_SEED: no layout shared with the pretraining images
S, N = "yolov5s.yaml", "yolov5n.yaml"


class Row(NamedTuple):
    """One row: a model started from the pretrained `start` ("teacher" or "student"), fine-tuned on the site's
    labeled images (unless finetune=False: scored as it is), taught by the fine-tuned teacher in `mode`."""

    model: str
    start: str
    finetune: bool = True
    mode: str = ""  # "": alone; "soft": the plan's distillation terms; "pseudo": the teacher's boxes; "soft+pseudo"
    unlabeled: bool = False  # with the site's unlabeled pool beside every labeled batch


TEACHER_AS_IS, STUDENT_AS_IS = "pretrained teacher yolov5s, not fine-tuned", "pretrained yolov5n, not fine-tuned"
TEACHER, ALONE, LABELS = "fine-tuned teacher yolov5s", "yolov5n fine-tuned alone", "distilled on the labeled images"
SOFT = "+ unlabeled, soft terms"
ROWS = {  # in run order: the teacher before the rows it teaches, the baseline before the rows compared with it
    TEACHER_AS_IS: Row(S, "teacher", finetune=False),
    STUDENT_AS_IS: Row(N, "student", finetune=False),
    TEACHER: Row(S, "teacher"),
    ALONE: Row(N, "student"),
    LABELS: Row(N, "student", mode="soft"),
    SOFT: Row(N, "student", mode="soft", unlabeled=True),
    "+ unlabeled, pseudo-labels": Row(N, "student", mode="pseudo", unlabeled=True),
    "+ unlabeled, soft terms + pseudo-labels": Row(N, "student", mode="soft+pseudo", unlabeled=True),
}
TAUGHT = [k for k, r in ROWS.items() if r.mode]


def distill_options(row: Row, plan: quickstart.Plan, conf: float) -> dict:
    """TrainOptions fields of a taught row (besides the teacher and the unlabeled images)."""
    soft = plan.distill_options() if "soft" in row.mode else {}
    if row.mode == "pseudo":  # the teacher's boxes only: the output term is on (it runs the teacher) but weighs 0
        soft = dict(d_output=True, d_weight=0.0)
    return {**soft, **({"pseudo_labels": conf} if "pseudo" in row.mode else {})}


# ---- data and pretrained weights ---------------------------------------------------------------------------------

def site_data(root: Path, plan: quickstart.Plan) -> tuple[Path, Path]:
    """The site under root/site, made once: (the labeled images' dataset yaml, each image copied REPEAT times, with
    the site's val and test splits; the unlabeled folder)."""
    folder = root / "site"
    stamp = folder / ".complete"
    expected = (f"{plan.n_train} {plan.n_val} {plan.n_test} {plan.n_unlabeled} {plan.imgsz} {plan.seed + SITE_SEED} "
                f"{plan.difficulty} {plan.style} x{REPEAT}")
    if not (stamp.is_file() and stamp.read_text().strip() == expected):
        if folder.exists():
            shutil.rmtree(folder)
        source = generate(folder / "data", n_train=plan.n_train, n_val=plan.n_val, n_test=plan.n_test,
                          n_unlabeled=plan.n_unlabeled, imgsz=plan.imgsz, seed=plan.seed + SITE_SEED,
                          difficulty=plan.difficulty, style=plan.style, progress=False).parent
        labeled = folder / "labeled"
        (labeled / "images").mkdir(parents=True)
        (labeled / "labels").mkdir()
        for img in sorted((source / "images" / "train").iterdir()):
            for k in range(REPEAT):
                shutil.copy(img, labeled / "images" / f"{img.stem}_{k}{img.suffix}")
                shutil.copy(source / "labels" / "train" / f"{img.stem}.txt", labeled / "labels" / f"{img.stem}_{k}.txt")
        names = yb.load_data_yaml(source / "data.yaml")["names"]
        (labeled / "data.yaml").write_text(yaml.safe_dump({
            "path": str(labeled.resolve()), "train": "images", "val": str((source / "images" / "val").resolve()),
            "test": str((source / "images" / "test").resolve()), "nc": len(names), "names": dict(names)}))
        stamp.write_text(expected + "\n")
    return folder / "labeled" / "data.yaml", folder / "data" / "images" / "unlabeled"


def _same_student(run: Path, plan: quickstart.Plan) -> bool:
    """A finished yolov5n trained alone with the plan's epochs and seed (the quickstart's `student`)."""
    opt_file = run / "opt.yaml"
    if not (opt_file.is_file() and quickstart._finished(run / "weights" / "best.pt")):
        return False
    opt = yaml.safe_load(opt_file.read_text())
    return (opt.get("seed") == plan.seed and opt.get("epochs") == plan.student_epochs and not opt.get("t_weights")
            and Path(str(opt.get("cfg"))).name == plan.student_cfg and opt.get("imgsz") == plan.imgsz
            and not opt.get("weights"))


def _copy_run(src: Path, dst: Path) -> None:
    """best.pt and results.csv of a finished run, copied whole before they count (a later quickstart may delete
    the source)."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "weights").mkdir(parents=True)
    for name in ("weights/best.pt", "results.csv", "opt.yaml", "plan.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def pretrained(root: Path, seed: int, quickstart_dir: Path) -> dict[str, tuple[Path, str]]:
    """{"teacher": (run folder, where it came from), "student": ...}: plan `default`'s teacher and student alone
    for this seed, under root/pretrain: copied from the quickstart's folder when it holds them, else trained."""
    plan = replace(quickstart.Plan.named("default"), seed=seed)
    base = root / "pretrain"
    base.mkdir(parents=True, exist_ok=True)
    qs = quickstart_dir / f"seed{seed}"
    teacher, student = base / "teacher", base / "student"
    where = {}
    # the teacher: quickstart.prepare_teacher's cache, stamped with the plan
    if not quickstart._finished(teacher / "weights" / "best.pt"):
        stamp = qs / "teacher" / "plan.txt"
        expected = (f"{plan.teacher_cfg} {plan.teacher_epochs} {plan.imgsz} {plan.n_train} {plan.seed} "
                    f"{plan.optimizer} {plan.hyp} {plan.difficulty} {plan.nbs}")
        if quickstart._finished(qs / "teacher" / "weights" / "best.pt") and stamp.is_file() \
                and stamp.read_text().strip() == expected:
            _copy_run(qs / "teacher", teacher)
            (base / "teacher.from").write_text(f"{qs / 'teacher'}\n")
        else:
            quickstart.prepare_teacher(base, plan, quickstart.prepare_data(base, plan), "cpu", noplots=True)
            (base / "teacher.from").write_text("trained here\n")
    where["teacher"] = (teacher, (base / "teacher.from").read_text().strip())
    if not _same_student(student, plan):
        if _same_student(qs / "student", plan):
            _copy_run(qs / "student", student)
            (base / "student.from").write_text(f"{qs / 'student'}\n")
        else:
            quickstart.train_or_resume(base, "student", plan, quickstart.prepare_data(base, plan), "cpu",
                                       cfg=plan.student_cfg, epochs=plan.student_epochs, noplots=True)
            (base / "student.from").write_text("trained here\n")
    where["student"] = (student, (base / "student.from").read_text().strip())
    return where


# ---- the runs --------------------------------------------------------------------------------------------------

def _as_is(weights: Path, data: Path, plan: quickstart.Plan, out: Path) -> dict:
    """A pretrained model scored on the site's val and test splits, as it is."""
    val = quickstart.val_metrics(weights, data, plan, "cpu", out, task="val")
    test = quickstart.val_metrics(weights, data, plan, "cpu", out, task="test")
    return {"map": val["metrics/mAP_0.5:0.95"], "mAP50": val["metrics/mAP_0.5"],
            "test_map": test["test/mAP_0.5:0.95"], "test_mAP50": test["test/mAP_0.5"]}


def run_seed(seed: int, args, plan: quickstart.Plan, results: dict, store: Path, budget: kd_gain.Budget) -> bool:
    """Every missing row of one seed; False if the budget stopped it before a run."""
    root = Path(args.out) / f"seed{seed}"
    splan = replace(plan, seed=seed)
    done = results.setdefault(str(seed), {})
    if all(label in done for label in args.rows):
        return True
    if not budget.allows("pretraining and site data") and not (root / "pretrain" / "student.from").is_file():
        return False
    t0 = time.time()
    start = pretrained(root, seed, Path(args.quickstart))
    data, pool = site_data(root, splan)
    LOGGER.info(f"site_gain seed {seed}: pretrained {start}; site {data}")
    setup_minutes = (time.time() - t0) / 60
    for label in (k for k in ROWS if k in args.rows):
        if label in done:
            continue
        row = ROWS[label]
        if not budget.allows(label):
            return False
        t0 = time.time()
        weights, origin = start[row.start]
        if not row.finetune:
            done[label] = {**_as_is(weights / "weights" / "best.pt", data, splan, root / "as_is"),
                           "minutes": (time.time() - t0) / 60 + setup_minutes, "kind": label,
                           "save_dir": str(weights), "machine": run_records.machine(), "pretrained": origin}
            setup_minutes = 0.0
        else:
            extra = dict(weights=str(weights / "weights" / "best.pt"), noplots=True)
            if row.mode:
                extra.update(t_weights=kd_gain._best(done[TEACHER]), **distill_options(row, splan, args.conf))
            if row.unlabeled:
                extra["unlabeled"] = [str(pool)]
            r = quickstart.train_or_resume(root, kd_gain._run_dir(label), splan, data, "cpu", cfg=row.model,
                                           epochs=splan.teacher_epochs if row.model == S else splan.student_epochs,
                                           **extra)
            done[label] = {**run_records.finished(r, t0, label, data=data, plan=splan), "pretrained": origin}
        kd_gain._save(store, results)
    return True


# ---- the report ------------------------------------------------------------------------------------------------

def report(results: dict, seeds: list[int], title: str) -> str:
    def per_seed(label: str, key: str = "test_map") -> dict[int, object]:
        return {s: results[str(s)][label].get(key) for s in seeds if label in results.get(str(s), {})}

    alone, teacher = per_seed(ALONE), per_seed(TEACHER)
    lines = [title, "",
             "| row | seeds | test mAP50-95 (mean ± sd) | val mAP50-95 | gain over the student fine-tuned alone, "
             "points [95% interval] | pays (interval above 0) | share of the fine-tuned teacher's lead closed | "
             "training minutes (mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label in ROWS:
        got = per_seed(label)
        if not got:
            continue
        gain = pays = share = ""
        if label in TAUGHT:
            machine = per_seed(label, "machine")
            both = [s for s in got if s in alone and s in teacher
                    and machine[s] == per_seed(ALONE, "machine")[s] == per_seed(TEACHER, "machine")[s]]
            gains = [got[s] - alone[s] for s in both]
            gain = paired_interval(gains).describe() if gains else "-"
            pays = kd_gain.gain_pays(gains)
            shares = [(got[s] - alone[s]) / (teacher[s] - alone[s]) for s in both
                      if teacher[s] - alone[s] >= kd_gain.MIN_GAP]
            share = (f"{100 * statistics.mean(shares):.0f}% (per seed: "
                     f"{', '.join(f'{100 * x:.0f}%' for x in shares)})") if shares else "-"
        minutes = statistics.mean(per_seed(label, "minutes").values())
        lines.append(f"| {label} | {len(got)} | {kd_gain._mean_sd(list(got.values()))} | "
                     f"{kd_gain._mean_sd(list(per_seed(label, 'map').values()))} | {gain} | {pays} | {share} | "
                     f"{minutes:.1f} |")
    lines += ["", "What the unlabeled pool adds, and which way to use it: paired differences (same seed, same "
              "machine), test mAP50-95, the mean and its 95% t-interval.", ""]
    pairs = [(label, LABELS) for label in TAUGHT if ROWS[label].unlabeled]
    pairs += [(label, SOFT) for label in TAUGHT if ROWS[label].unlabeled and label != SOFT]
    lines += kd_gain.paired_differences(per_seed, pairs)
    return "\n".join(lines) + "\n"


def record_table(record: dict) -> str:
    """The report's tables made from benchmarks/records/site_gain.json alone (benchmarks/report.py), every
    recorded seed, with the machines named when more than one trained them."""
    runs = record["runs"]
    seeds = sorted(int(s) for s in runs)
    body = report(runs, seeds, "").lstrip("\n")
    return body + "\n".join(run_records.machines_note(runs, seeds)).rstrip() + "\n"


def plot_curves(results: dict, out: Path) -> Path:
    """Val mAP50-95 per epoch of every fine-tuned row, every seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), tight_layout=True)
    for i, label in enumerate(k for k, r in ROWS.items() if r.finetune):
        seeds = [s for s in sorted(results) if label in results[s]]
        for j, seed in enumerate(seeds):
            ax.plot(run_records.curve(results[seed][label]), color=f"C{i}", lw=1, label=label if j == 0 else None)
    ax.set(xlabel="epoch", ylabel="val mAP50-95 (the site)", title="site_gain: every fine-tuned row, every seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="runs/site_gain")
    ap.add_argument("--quickstart", default="runs/quickstart_seeds",
                    help="benchmarks/quickstart_seeds.py's folder: its teachers and students alone are the "
                         "pretrained models when it has them")
    ap.add_argument("--conf", type=float, default=0.25, help="--pseudo-labels threshold of the pseudo-label rows")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--budget-minutes", type=float, help="stop before a run that would end past this")
    ap.add_argument("--report-only", action="store_true", help="train nothing: the report of what is recorded")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    yb.set_yolov5_verbosity(False)

    plan = quickstart.Plan.named("site")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = kd_gain._stamp(out / "plan.json", plan)
    store = out / "results.json"
    results: dict = json.loads(store.read_text()) if store.exists() else {}
    finished = True
    if not args.report_only:
        budget = kd_gain.Budget(args.budget_minutes, results)
        for seed in args.seeds:
            if not run_seed(seed, args, plan, results, store, budget):
                finished = False
                break
    if results:
        run_records.write(out, results)
    shown = run_records.merged(out, results)  # with the recorded runs of earlier checkouts
    title = (f"# site_gain, {date.today()}\n\nplan site: {sizes}; labeled images copied {REPEAT}x; pretraining: "
             f"plan default; pseudo-label confidence {args.conf:g}")
    notes = [*run_records.recorded_note(shown, args.seeds, out), *run_records.machines_note(shown, args.seeds)]
    kd_gain.write_report(out, report(shown, args.seeds, title) + "\n".join(notes),
                         plot_curves(shown, out) if shown else None, None if finished else args.budget_minutes)


if __name__ == "__main__":
    main()
