"""Time per training step: plain student, teacher inference alone, and distillation, side by side in one run.

    python benchmarks/overhead.py --imgsz 160 --batch-size 16 --steps 20
    python benchmarks/overhead.py --device 0 --imgsz 640 --batch-size 32   # CUDA: AMP steps, FP16 teacher

The three measurements are interleaved step by step on the same batches (from the embedded
synthetic dataset, yolov5's mosaic dataloader), so machine noise hits them alike. The printed
ratio distillation / (student + teacher inference) is what hooks, adapters and distillation
losses cost on top of the unavoidable teacher forward pass; 1.0 means nothing extra. A fourth measurement is
the same distillation step on the same images as an unlabeled batch (`--unlabeled`: no targets, so no task
loss, only the distillation terms); the second ratio is its time over the labeled distillation step's.

Each run is kept in benchmarks/records/overhead.json (--record NAME: records/NAME.json; --no-record: none),
under its setting (models, image size, batch, losses, device), after the runs recorded before: the command,
commit, machine, date, the machine's reference step (benchmarks/step_profile.py: plain yolov5n, 160 px, batch
16, measured just before), the medians and the two ratios. `python benchmarks/report.py` makes the table of
benchmarks/RESULTS.md from it. Run alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_records  # noqa: E402  (benchmarks/, beside this file)
from yolodistill import yolo_backend as yb  # noqa: E402
from yolodistill.config import DistillConfig  # noqa: E402
from yolodistill.losses import OUTPUT_LOSSES  # noqa: E402
from yolodistill.synth import generate  # noqa: E402
from yolodistill.detection.trainer import DistillTrainer, TrainingBatch, TrainOptions  # noqa: E402

RECORD = "overhead"  # benchmarks/records/overhead.json


def _trainer(data: Path, project: Path, name: str, args, **distill) -> DistillTrainer:
    options = TrainOptions(data=str(data), cfg=args.student, imgsz=args.imgsz, batch_size=args.batch_size,
                           workers=0, device=args.device, project=str(project), name=name, noautoanchor=True,
                           noplots=True, epochs=1, **distill)
    return DistillTrainer(options).setup()


def _timed(fn, cuda: bool) -> float:
    """Wall time of fn(); on CUDA after the queued kernels finished (they run asynchronously)."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def record_path(name: str = RECORD, records: Optional[Path] = None) -> Path:
    """records/NAME.json; the folder is run_records.RECORDS read at call time (tests redirect it)."""
    return Path(records or run_records.RECORDS) / f"{name}.json"


def read_record(records: Optional[Path] = None, name: str = RECORD) -> dict:
    """{setting: [run, ...]}; a missing record stops with the command that makes it."""
    path = record_path(name, records)
    if not path.is_file():
        flag = "" if name == RECORD else f" --record {name}"
        raise SystemExit(f"no record {path}: run python benchmarks/overhead.py{flag} (alone on the machine)")
    return json.loads(path.read_text())


def write_record(setting: str, run: dict, name: str = RECORD) -> Path:
    """Append `run` to the runs of `setting` in records/NAME.json (earlier runs stay); written to a temporary file
    first, then moved over the record, so an interrupted write leaves the old record whole."""
    path = record_path(name)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.setdefault(setting, []).append(run)
    run_records.write_json(path, record)
    return path


file_name = run_records.repo_file  # kept under this name: the tests and callers use it


def setting_label(args: argparse.Namespace) -> str:
    """What a run measured, as the record's key: student <- teacher, image size, batch, losses, device."""
    teacher = file_name(args.teacher_weights) if args.teacher_weights else f"{args.teacher} random"
    device = args.device if args.device == "cpu" or args.device.startswith("cuda") else f"cuda:{args.device}"
    return (f"{args.student} <- {teacher} {args.imgsz}px b{args.batch_size} {args.output_loss}/{args.feature_loss} "
            f"{device}")


def report(record: dict) -> str:
    """A row per recorded run, setting by setting: the machine's reference step (ms), the medians (s/step) and the
    two ratios, each ratio of steps timed side by side in that run."""
    lines = ["| setting | date, commit | machine | reference step, ms | plain student step, s | teacher inference, s | "
             "distillation step, s | ratio distill/(student+teacher) | unlabeled/labeled step ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for setting, runs in record.items():
        for r in runs:
            med, ratio = r["median_s"], r["ratios"]
            where = r["machine"] + (f"; {r['device']}" if r.get("device") else "")
            step = f"{r['reference_step_ms']:.0f}" if r.get("reference_step_ms") else "-"
            lines.append(f"| {setting} | {r['recorded_on']}, {r.get('commit', '-')} | {where} | {step} | {med['student']:.3f} | "
                         f"{med['teacher']:.3f} | {med['distill']:.3f} | {ratio['distill/(student+teacher)']:.3f} | "
                         f"{ratio['unlabeled/labeled']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--student", default="yolov5n.yaml")
    ap.add_argument("--teacher", default="yolov5s.yaml")
    ap.add_argument("--teacher-weights", help="a trained teacher checkpoint (trusted: loaded with pickle) instead of "
                    "a randomly initialised --teacher. A loss that skips the cells a teacher calls background "
                    "(mse_ciou, kl) is timed as in training only with a teacher that has learned what background is")
    ap.add_argument("--feature-loss", default="mse")
    ap.add_argument("--output-loss", default=DistillConfig.output_loss, choices=OUTPUT_LOSSES,
                    help="the output loss of the distillation step (default: the trainer's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, or a CUDA device such as 0 (AMP steps, FP16 teacher)")
    ap.add_argument("--record", default=RECORD, metavar="NAME",
                    help="keep the run in benchmarks/records/NAME.json (default: %(default)s)")
    ap.add_argument("--no-record", action="store_true", help="keep no record (and skip the reference step)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    yb.set_yolov5_verbosity(False)
    step_ms = None
    if not args.no_record:
        import quickstart_seeds  # benchmarks/, beside this file

        step_ms = quickstart_seeds.reference_step_ms()  # before the timing, so it does not load the machine then

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "data", n_train=args.batch_size * 4, n_val=8, n_test=0, imgsz=args.imgsz, progress=False)
        if args.teacher_weights:
            teacher_path = Path(args.teacher_weights)
        else:
            teacher_path = tmp / "teacher.pt"
            torch.save({"model": yb.build_model(args.teacher, 6).half(), "ema": None, "epoch": -1, "optimizer": None},
                       teacher_path)

        plain = _trainer(data, tmp / "runs", "plain", args)
        distil = _trainer(data, tmp / "runs", "distil", args, t_weights=str(teacher_path), d_feature=True,
                          feature_loss=args.feature_loss, output_loss=args.output_loss,
                          trust_checkpoint=bool(args.teacher_weights))
        distil.distiller.attach()
        batches = []
        for imgs, targets, _, _ in plain.train_loader:
            batches.append((imgs.to(plain.device).float() / 255, targets.to(plain.device)))
            if len(batches) == 4:
                break

        cuda = plain.device.type == "cuda"
        times = {"student": [], "teacher": [], "distill": [], "unlabeled": []}
        for step in range(args.warmup + args.steps):
            imgs, targets = batches[step % len(batches)]
            # Same step index for both trainers: warmup LR/accumulation logic is identical.
            t_student = _timed(lambda: plain.train_batch(TrainingBatch(imgs, targets), step), cuda)
            t_teacher = _timed(lambda: distil.teacher(imgs), cuda)
            t_distill = _timed(lambda: distil.train_batch(TrainingBatch(imgs, targets), step), cuda)
            t_unlabeled = _timed(lambda: distil.train_batch(TrainingBatch(imgs, None), step), cuda)
            if step >= args.warmup:
                for key, t in zip(times, (t_student, t_teacher, t_distill, t_unlabeled)):
                    times[key].append(t)
        distil.distiller.remove()

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["distill"] / (med["student"] + med["teacher"])
    where = (f"{torch.cuda.get_device_name()}, AMP steps, FP16 teacher" if args.device != "cpu" else
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# overhead, {date.today()}, {where}, torch {torch.__version__}")
    teacher = args.teacher_weights or f"{args.teacher} (random weights)"
    print(f"student {args.student}, teacher {teacher}, imgsz {args.imgsz}, batch {args.batch_size}, "
          f"output loss {args.output_loss}, feature loss {args.feature_loss}, {args.steps} steps (median s/step)")
    print(f"{'plain student step':<28}{med['student']:.3f}")
    print(f"{'teacher inference':<28}{med['teacher']:.3f}")
    print(f"{'distillation step':<28}{med['distill']:.3f}")
    print(f"{'ratio distill/(student+teacher)':<28} {ratio:.3f}")
    print(f"{'unlabeled distillation step':<28}{med['unlabeled']:.3f}")
    print(f"{'ratio unlabeled/labeled step':<28} {med['unlabeled'] / med['distill']:.3f}")
    if args.no_record:
        return
    commit = run_records.commit()
    run = {"command": " ".join(["python", *sys.argv]), "commit": commit, "machine": run_records.machine(),
           "device": where if args.device != "cpu" else None, "recorded_on": str(date.today()),
           "reference_step_ms": round(step_ms, 1), "steps": args.steps, "warmup": args.warmup,
           "median_s": {k: round(v, 5) for k, v in med.items()},
           "ratios": {"distill/(student+teacher)": round(ratio, 4),
                      "unlabeled/labeled": round(med["unlabeled"] / med["distill"], 4)}}
    path = write_record(setting_label(args), run, args.record)
    print(f"reference step {step_ms:.1f} ms; recorded in {path}")


if __name__ == "__main__":
    main()
