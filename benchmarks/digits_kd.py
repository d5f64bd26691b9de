"""Hinton KD on real images: scikit-learn's handwritten digits (1,797 8x8 images), over several seeds.

    python benchmarks/digits_kd.py --out runs/digits_kd --seeds 0 1 2

The digits are written once by `yolodistill.classification.digits.write_digits`: fixed stratified
train / val / test splits of 60 / 20 / 20 %, and 10 labeled images per class drawn once. Every run
picks its best.pt on val/, as the trainer does, and is scored on test/, which chose nothing. For each
seed, in one process:

  full-label protocol: teacher; student alone; student KD from the live teacher; student KD from
      the teacher's logits cached by `embed_classifiers` (`teacher_store=`);
  unlabeled protocol: the student alone on the few labels, and the student on those labels plus
      the rest of the training images as an unlabeled folder, distilled from that seed's
      full-data teacher.

Reports top-1 of best.pt on the test split (mean ± sample sd over seeds; its val top-1 beside it),
the KD-over-alone gains paired by seed with their 95% t-intervals; the epoch time of plain student
training against KD from the store and from the live teacher, their epochs interleaved in one process;
and a per-part profile of where KD's extra time goes.
Writes OUT/report.md, OUT/results.json and the committed record benchmarks/records/digits_kd.json, from
which `python benchmarks/report.py` makes the results table (report_table). About 11 minutes on a 2-core VM.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainers' per-batch bars would bury the report; read at tqdm import

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_records  # noqa: E402  (machine(), RECORDS)
from paired_stats import paired_interval  # noqa: E402

from yolodistill.classification.data import ImageDataset, LabeledFolder  # noqa: E402
from yolodistill.classification.digits import write_digits  # noqa: E402
from yolodistill.classification.embed import embed_classifiers  # noqa: E402
from yolodistill.classification.teachers import ClassifierTeachers  # noqa: E402
from yolodistill.classification.distill import KDTrainer  # noqa: E402
from yolodistill.classification.trainer import ClassifyOptions, ClassifyTrainer, score_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python benchmarks/digits_kd.py --out runs/digits_kd"  # what writes the committed record
TOP1 = "metrics/accuracy_top1"
ROWS = {  # report row -> results key
    "teacher": "teacher",
    "student alone": "alone",
    "student KD (live teacher)": "kd_live",
    "student KD (store)": "kd_store",
    "few-label student alone": "few_alone",
    "few-label + unlabeled KD": "few_kd",
}
COMPARED = (  # (taught row, its baseline trained alike): the gains the table tests, paired by seed
    ("student KD (live teacher)", "student alone"),
    ("few-label + unlabeled KD", "few-label student alone"),
)
TIMED = {  # throughput table column -> variant
    "plain student": "alone",
    "KD, store": "kd_store",
    "KD, live teacher": "kd_live",
}


def record_path(records: Optional[Path] = None) -> Path:
    """RECORDS/digits_kd.json; RECORDS is benchmarks/records unless given (read when called: tests redirect it)."""
    return Path(records or run_records.RECORDS) / "digits_kd.json"


def read_record(records: Optional[Path] = None) -> dict:
    """The committed record; a missing one stops with the command that makes it."""
    path = record_path(records)
    if not path.is_file():
        raise SystemExit(f"no record {path}: run {COMMAND} (it writes the record)")
    return json.loads(path.read_text())


def profile_parts(root: Path, store_dir: Path, args, repeats: int = 5) -> dict:
    """Where KD-from-store time goes: per-item dataset cost (us) and per-batch step costs (ms), minima."""
    import timeit

    import torch.nn.functional as F
    from torch.utils.data import default_collate

    from yolodistill.classification.data import build_transform
    from yolodistill.classification.losses import hinton_loss, soft_targets
    from yolodistill.classification.models import IMAGENET_MEAN, IMAGENET_STD, build_classifier
    from yolodistill.classification.store import TeacherStore

    folder = LabeledFolder.scan(root / "full" / "train")
    store = TeacherStore.open(store_dir, kind="logits")
    transform = build_transform(8, IMAGENET_MEAN, IMAGENET_STD, train=False)
    prefix = store.prefix_of(folder.root)
    sets = {"plain": ImageDataset(folder.root, folder.keys, folder.labels, transform),
            "store (row index)": ImageDataset(folder.root, folder.keys, folder.labels, transform,
                                              store.rows_of([prefix + k for k in folder.keys]))}
    n = len(folder.keys)
    # Interleaved and the minimum kept: the machine's other load only ever adds time.
    item_us = {k: float("inf") for k in sets}
    for _ in range(repeats):
        for k, ds in sets.items():
            item_us[k] = min(item_us[k], timeit.timeit(lambda: [ds[i] for i in range(n)], number=1) / n * 1e6)

    batch = range(args.batch_size)
    images, labels, index = default_collate([sets["store (row index)"][i] for i in batch])
    rows = store.take(index)
    n_classes = len(folder.classes)
    model = build_classifier(args.student, n_classes, imgsz=8)

    def ce_step():
        F.cross_entropy(model(images), labels).backward()

    def kd_step():
        probs = soft_targets(list(rows.view(len(rows), -1, n_classes).unbind(1)), args.temperature)
        sum(hinton_loss(model(images), probs, labels, temperature=args.temperature, alpha=args.alpha)).backward()

    parts = {"ce": ce_step, "kd": kd_step, "gather": lambda: store.take(index)}
    step_ms = {k: float("inf") for k in parts}
    for _ in range(repeats):
        for k, fn in parts.items():
            step_ms[k] = min(step_ms[k], timeit.timeit(fn, number=200) / 200 * 1e3)
    return {"items": n, "batches": -(-n // args.batch_size), "item_us": item_us, "step_ms": step_ms}


def mean_sd(xs: list[float], scale: float = 100.0, fmt: str = ".2f") -> str:
    if len(xs) == 1:
        return format(xs[0] * scale, fmt)
    return f"{format(statistics.mean(xs) * scale, fmt)} ± {format(statistics.stdev(xs) * scale, fmt)}"


def run_seed(seed: int, args, root: Path) -> dict:
    """Every run of one seed, {key: {"test_top1", "val_top1", "epoch_seconds", "wall_s"}}, and under "timing" the
    interleaved epoch seconds of each variant."""
    project = root / "runs" / f"seed{seed}"
    base = ClassifyOptions(imgsz=8, epochs=args.epochs, batch_size=args.batch_size, optimizer="AdamW",
                           lr0=args.lr0, augment=False,  # a flipped or cropped 8x8 digit is another digit
                           workers=args.workers, device="cpu", project=str(project), exist_ok=True, seed=seed,
                           temperature=args.temperature, alpha=args.alpha)
    full = replace(base, data=str(root / "full"), model=args.student)
    few = replace(base, data=str(root / "few"), model=args.student)
    out: dict = {}

    def record(key: str, trainer) -> str:
        t0 = time.perf_counter()
        res = trainer.run()  # best.pt: the epoch of the best val top-1
        test = score_checkpoint(res["best"], trainer.options.data, split="test", workers=args.workers)
        out[key] = {"test_top1": test[TOP1], "val_top1": res[TOP1], "epoch_seconds": res["epoch_seconds"],
                    "wall_s": time.perf_counter() - t0}
        print(f"seed {seed} {key:20s} top-1 test {test[TOP1] * 100:6.2f}% (val {res[TOP1] * 100:6.2f}%)  "
              f"median epoch {statistics.median(res['epoch_seconds']):.3f}s", flush=True)
        return res["best"]

    teacher = record("teacher", ClassifyTrainer(replace(full, model=args.teacher, name="teacher",
                                                        epochs=args.teacher_epochs)))
    store = project / "teacher_logits"
    # Built once per teacher, outside the timed epochs: that is the store's point.
    embed_classifiers(root / "full" / "train", store, ClassifierTeachers([teacher]), batch_size=256,
                      workers=0, exist_ok=True)

    record("alone", ClassifyTrainer(replace(full, name="alone")))
    record("kd_store", KDTrainer(replace(full, name="kd_store", teacher_store=str(store))))
    record("kd_live", KDTrainer(replace(full, name="kd_live", t_weights=[teacher])))
    # The few-label student alone sees 100 images an epoch, the KD run every training image (1,077): at equal
    # epochs it would get a tenth of the steps. --few-epochs gives it enough to plateau (see --help).
    record("few_alone", ClassifyTrainer(replace(few, name="few_alone", epochs=args.few_epochs)))
    record("few_kd", KDTrainer(replace(few, name="few_kd", t_weights=[teacher], unlabeled=[str(root / "unlabeled")])))
    out["timing"] = interleaved_epoch_seconds(replace(full, project=str(project / "timing")), teacher, store,
                                              args.timing_epochs, seed)
    return out


def interleaved_epoch_seconds(options: ClassifyOptions, teacher: str, store: Path, epochs: int, seed: int) -> dict:
    """{variant: training seconds per epoch}, the variants' epochs interleaved so drifting load hits all alike.

    Whole runs back to back proved too coarse beside a background job: in one of three seeds a run
    took 10 % longer per epoch than the same code in the other two. Round-robin epochs, in an order
    rotated each round, put every variant on the machine within a second of the others.
    """
    options = replace(options, epochs=epochs)  # the cosine schedule spans the timed epochs
    trainers = {"alone": ClassifyTrainer(replace(options, name="alone")),
                "kd_store": KDTrainer(replace(options, name="kd_store", teacher_store=str(store))),
                "kd_live": KDTrainer(replace(options, name="kd_live", t_weights=[teacher]))}
    seconds: dict[str, list[float]] = {k: [] for k in trainers}
    order = list(trainers)
    try:
        for t in trainers.values():
            t.setup()
        for epoch in range(epochs):
            k = (epoch + seed) % len(order)
            for key in order[k:] + order[:k]:
                t0 = time.perf_counter()
                trainers[key].train_epoch(epoch)
                seconds[key].append(time.perf_counter() - t0)
    finally:
        for t in trainers.values():
            if t.run_logger is not None:
                t.run_logger.close()
            t.cleanup()
    return seconds


# ---- the record and the reports ----------------------------------------------------------------------------

def seed_entry(runs: dict) -> dict:
    """What the record keeps of one seed's runs (run_seed's): each row's test and val top-1 and median epoch
    seconds, and each timed variant's median epoch seconds."""
    rows = {key: {"test_top1": runs[key]["test_top1"], "val_top1": runs[key]["val_top1"],
                  "epoch_seconds_median": round(statistics.median(runs[key]["epoch_seconds"]), 4)}
            for key in ROWS.values()}
    timing = {key: round(statistics.median(seconds), 4) for key, seconds in runs["timing"].items()}
    return {"rows": rows, "timing": timing}


def write_record(record: dict) -> Path:
    """The record, written whole or not at all: an interrupted write must not leave a half file to commit."""
    path = record_path()
    run_records.write_json(path, record)
    return path


def _top1(record: dict, key: str, split: str) -> list[float]:
    """A row's top-1 on `split` ("test" or "val"), one per seed in seed order (fractions)."""
    return [record["seeds"][s]["rows"][key][f"{split}_top1"] for s in sorted(record["seeds"], key=int)]


def report_table(record: dict) -> str:
    """The accuracy table of a record: each row's test top-1 (best.pt chosen on val), its val top-1 for
    reference, and the two KD-over-alone gains paired by seed, with their 95% t-intervals."""
    seeds = sorted(record["seeds"], key=int)
    counts = record["counts"]
    lines = [f"Record benchmarks/records/digits_kd.json: commit {record['commit']}, {record['machine']}, "
             f"{record['recorded_on']}, {record['minutes']:.1f} min. best.pt chosen on val ({counts['val']} "
             f"images), scored on test ({counts['test']} images, which chose nothing); top-1 %.",
             "",
             "| model | seeds | test top-1 % (mean ± sd) | val top-1 % (mean ± sd) | "
             + " | ".join(f"seed {s} test" for s in seeds) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in seeds) + " |"]
    for label, key in ROWS.items():
        test = _top1(record, key, "test")
        lines.append(f"| {label} | {len(seeds)} | {mean_sd(test)} | {mean_sd(_top1(record, key, 'val'))} | "
                     + " | ".join(f"{x * 100:.2f}" for x in test) + " |")
    lines += ["",
              "| test top-1, paired by seed | seeds | difference, points [95% t-interval] | shown (interval "
              "excludes 0) |",
              "| --- | --- | --- | --- |"]
    for taught, alone in COMPARED:
        gains = [t - a for t, a in zip(_top1(record, ROWS[taught], "test"), _top1(record, ROWS[alone], "test"))]
        interval = paired_interval(gains)
        lines.append(f"| {taught} - {alone} | {interval.n} | {interval.describe(fmt='+.2f')} | "
                     f"{interval.verdict} |")
    return "\n".join(lines)


def report(record: dict) -> str:
    """OUT/report.md: the data and recipe, report_table, the interleaved epoch times and the profile."""
    args, counts = record["args"], record["counts"]
    seeds = sorted(record["seeds"], key=int)
    few_steps = -(-counts["few"] // args["batch_size"])
    kd_steps = -(-(counts["few"] + counts["unlabeled"]) // args["batch_size"])
    lines = [
        "# Hinton KD on scikit-learn's digits",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Date {record['recorded_on']}; commit {record['commit']}; {record['machine']}; CPU only, possibly shared "
        f"with another job; {record['minutes']:.1f} min wall time.",
        "",
        f"Data: `sklearn.datasets.load_digits` written by `yolodistill.classification.digits.write_digits`: 8x8 "
        f"grey (0-16 scaled to 0-255) as RGB PNGs, fixed stratified split (random_state 0), {counts['train']} "
        f"train / {counts['val']} val / {counts['test']} test images; val/ picks every run's best.pt, test/ "
        f"scores it. Unlabeled protocol: {counts['few']} labeled train images ({args['per_class']} per class, "
        f"drawn once with seed 0) plus the other {counts['unlabeled']} train images as an unlabeled folder. Its "
        f"teacher is the full-data one, trained on those images' labels: the gain measures transfer from a "
        f"better-informed teacher, not semi-supervised learning from scratch.",
        "",
        f"Recipe: teacher `{args['teacher']}` ({args['teacher_epochs']} epochs), student `{args['student']}` "
        f"({args['epochs']} epochs); imgsz 8, no augmentation, batch {args['batch_size']}, AdamW lr0 "
        f"{args['lr0']:g} (cosine to 1 %), workers {args['workers']}; KD with T = {args['temperature']:g}, alpha = "
        f"{args['alpha']:g} (loss = alpha T² KL + (1 - alpha) CE; unlabeled images get the KD term only). The "
        f"few-label student alone trains {args['few_epochs']} epochs ({few_steps} steps each; the KD run takes "
        f"{kd_steps} an epoch).",
        "",
        report_table(record),
        "",
        f"Epoch time of the student on the full labeled split: training seconds per epoch, median of "
        f"{args['timing_epochs']} epochs per variant, the three variants' epochs interleaved round-robin in one "
        f"process (fresh students, same options as above). Throughput ratio = plain epoch time / KD epoch "
        f"time; target ≥ 0.95.",
        "",
        "| seed | " + " | ".join(TIMED) + " | ratio plain / store | ratio plain / live |",
        "| --- | " + " | ".join("---" for _ in TIMED) + " | --- | --- |",
    ]
    ratios: dict[str, list[float]] = {"kd_store": [], "kd_live": []}
    for s in seeds:
        med = record["seeds"][s]["timing"]
        for k in ratios:
            ratios[k].append(med["alone"] / med[k])
        lines.append(f"| {s} | " + " | ".join(f"{med[k]:.3f}" for k in TIMED.values())
                     + f" | {ratios['kd_store'][-1]:.3f} | {ratios['kd_live'][-1]:.3f} |")
    lines += ["", f"Throughput ratio over seeds (mean ± sd): store {mean_sd(ratios['kd_store'], 1.0, '.3f')}; "
                  f"live teacher {mean_sd(ratios['kd_live'], 1.0, '.3f')}.", ""]

    profile = record["profile"]
    items, batches, item_us, step_ms = (profile[k] for k in ("items", "batches", "item_us", "step_ms"))
    lines += [
        f"Where the time goes (`profile_parts`, after the runs: minimum of 5 interleaved passes over the "
        f"{items} training images, and of 5 x 200 repeats of each per-batch part on one batch of "
        f"{args['batch_size']}; an epoch is {items} items and {batches} batches):",
        "",
        "| part | cost | per epoch, ms | over plain, ms per epoch |",
        "| --- | --- | --- | --- |",
    ]
    for k, us in item_us.items():
        lines.append(f"| dataset item, {k} | {us:.1f} us | {us * items / 1e3:.1f} | "
                     f"{(us - item_us['plain']) * items / 1e3:+.1f} |")
    for label, ms, extra in (("CE step (forward, loss, backward)", step_ms["ce"], 0.0),
                             ("KD step (forward, loss, backward)", step_ms["kd"], step_ms["kd"] - step_ms["ce"]),
                             ("gather of a batch's rows by index", step_ms["gather"], step_ms["gather"])):
        lines.append(f"| {label} | {ms:.3f} ms | {ms * batches:.1f} | {extra * batches:+.1f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/digits_kd", help="output folder (data, runs, report.md)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100,
                   help="student epochs; at 60, KD at T 4, alpha 0.9 still trailed the student alone")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--few-epochs", type=int, default=200,
                   help="epochs of the few-label student alone; top-1 levels off by 200 (seed 0, on the earlier "
                        "70/30 split, val: 100 / 200 / 400 / 1257 epochs, the last as many steps as the KD run: "
                        "92.59 / 92.78 / 92.78 / 92.78 %%)")
    p.add_argument("--timing-epochs", type=int, default=25, help="epochs per variant of the interleaved timing")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--teacher", default="cnn",
                   help="teacher model; on 8x8 digits cnn (99.2 %% top-1, earlier 70/30 split) leaves the student "
                        "a wider gap than mlp_large (98.6 %%)")
    p.add_argument("--student", default="mlp_small", help="student model")
    p.add_argument("--lr0", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=10, help="labeled images per class, unlabeled protocol")
    p.add_argument("--workers", type=int, default=0, help="8x8 PNGs decode faster than a worker starts")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; these models are too small to gain from more, and one thread is "
                        "steadier beside other jobs")
    p.add_argument("--no-record", action="store_true",
                   help="a trial run (e.g. --epochs 1): leave benchmarks/records/digits_kd.json as it is")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    logging.getLogger("yolodistill").setLevel(logging.WARNING)
    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        sys.exit(f"{root} exists and is not empty: choose another --out or remove it")
    t0 = time.perf_counter()
    commit = run_records.commit()
    # The few labeled images are drawn once, with seed 0, for every run seed: only training varies.
    write_digits(root, few=args.per_class, seed=0)
    counts = {k: len(list((root / d).rglob("*.png"))) for k, d in
              (("train", "full/train"), ("val", "full/val"), ("test", "full/test"), ("few", "few/train"),
               ("unlabeled", "unlabeled"))}
    results = {}
    for seed in args.seeds:
        results[str(seed)] = run_seed(seed, args, root)
        (root / "results.json").write_text(json.dumps({"args": vars(args), "counts": counts, "runs": results},
                                                      indent=1))
    profile = profile_parts(root, root / "runs" / f"seed{args.seeds[0]}" / "teacher_logits", args)
    (root / "results.json").write_text(json.dumps({"args": vars(args), "counts": counts, "runs": results,
                                                  "profile": profile}, indent=1))
    record = {"command": ("python benchmarks/digits_kd.py " + " ".join(sys.argv[1:])).strip(), "commit": commit,
              "machine": run_records.machine(), "recorded_on": date.today().isoformat(),
              "minutes": round((time.perf_counter() - t0) / 60, 1), "args": vars(args), "counts": counts,
              "seeds": {seed: seed_entry(runs) for seed, runs in results.items()}, "profile": profile}
    if not args.no_record:
        print(f"record: {write_record(record)}")
    text = report(record)
    (root / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
