"""Does INT8 keep the distilled student's accuracy? FP32 vs post-training INT8 vs QAT INT8, all scored as
ONNX files through onnxruntime, over the seeds of a kd_gain / quickstart run.

    python benchmarks/qat_int8.py --runs runs/kd_gain --seeds 0 1 2 --epochs 5

For each seed folder (teacher/, distilled/, data/ as `yolodistill quickstart` leaves them; --student names
another run folder, e.g. `--student output` for kd_gain.py's output-distilled yolov5n):
  fp32  the distilled student exported to ONNX
  ptq   the same student with INT8 ranges calibrated on 512 training images, no training (Q/DQ ONNX):
        `yolodistill export --int8 --data DATA --calib-images 512`
  qat   `yolodistill train --weights distilled.pt --qat` for --epochs epochs with the teacher still distilling
        (output + pkd features, as the student was trained), exported to a Q/DQ ONNX
  ft32  the control: the same fine-tune without --qat (FP32), so that what QAT gains from the extra epochs of
        distillation is not mistaken for INT8 being free
Each ONNX file is validated with `yolodistill val --weights file.onnx` (square letterbox at the training size, as yolov5
validates exported models) on the val split and, where the data has one, on the test split (the fine-tunes chose
their best.pt on val: test is the figure). Results go to OUT/qat_int8.json (resumable), a table on stdout, and the
record benchmarks/records/qat_int8.json (command, commit, machine, figures per seed), from which
`python benchmarks/report.py` makes RESULTS.md's table with paired 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_records  # noqa: E402  (benchmarks/, beside this file)
from paired_stats import paired_interval  # noqa: E402

from yolodistill import yolo_backend as yb  # noqa: E402
from yolodistill.deploy.export import export
from yolodistill.detection.inference import val
from yolodistill.paths import cfg_path
from yolodistill.detection.trainer import DistillTrainer, TrainOptions

MAP, MAP50 = "metrics/mAP_0.5:0.95", "metrics/mAP_0.5"


def onnx_map(weights: Path, data: str, imgsz: int, out: Path, export_kw: Optional[dict] = None) -> dict:
    """Export `weights` (export_kw: e.g. int8=True, data=... for post-training INT8) and score the ONNX file."""
    report = export(weights, imgsz=[imgsz], output=str(out / f"{weights.parent.parent.name}.onnx"),
                    **(export_kw or {}))
    onnx_path = Path(report["onnx"])
    r = val(str(onnx_path), data, imgsz=imgsz, batch_size=32, workers=2, project=str(out / "val"), name="v")
    scores = {"mAP50-95": r[MAP], "mAP50": r[MAP50], "onnx": str(onnx_path), "qdq_coverage": report["qdq_coverage"]}
    if "test" in yb.load_data_yaml(data):
        t = val(str(onnx_path), data, imgsz=imgsz, batch_size=32, workers=2, task="test", project=str(out / "val"),
                name="t")
        scores.update({"test mAP50-95": t[MAP], "test mAP50": t[MAP50]})
    return scores


PAIRS = (("ptq", "fp32"), ("qat", "fp32"), ("qat", "ft32"))


def record_path() -> Path:
    return run_records.RECORDS / "qat_int8.json"


def write_record(results: dict, args, source: str) -> None:
    """The seeds' figures (no machine-local paths) with the command, commit and machine, written atomically."""
    commit = run_records.commit()
    seeds = {key: {k: ({m: v for m, v in r.items() if m != "onnx"} if isinstance(r, dict) else r)
                   for k, r in row.items()} for key, row in results.items()}
    record = {"command": " ".join(["python", *sys.argv]), "commit": commit, "machine": run_records.machine(),
              "recorded_on": str(date.today()), "source": source, "epochs": args.epochs, "seeds": seeds}
    path = record_path()
    run_records.write_json(path, record)


def report(record: dict) -> str:
    """Per seed the four files' mAP50-95 on test (val where the data had no test split), then each pair's
    per-seed difference with its 95% t-interval."""
    seeds = record["seeds"]
    split = "test" if all("test mAP50-95" in row[v] for row in seeds.values() for v in ("fp32", "ptq", "qat", "ft32")) \
        else "val"
    key = "test mAP50-95" if split == "test" else "mAP50-95"
    lines = [f"{record['recorded_on']}, {record['machine']}, commit {record['commit']}, students of "
             f"`{record['source']}`, QAT {record['epochs']} epochs; {split} mAP50-95 of each ONNX file:", "",
             "| seed | FP32 | PTQ INT8 | QAT INT8 | FP32 fine-tuned alike (control) |", "| --- | --- | --- | --- | --- |"]
    for seed, row in seeds.items():
        lines.append(f"| {seed} | " + " | ".join(f"{row[v][key]:.3f}" for v in ("fp32", "ptq", "qat", "ft32")) + " |")
    lines += ["", "| A - B | seeds | difference, points [95% interval] | shown |", "| --- | --- | --- | --- |"]
    for a, b in PAIRS:
        interval = paired_interval([row[a][key] - row[b][key] for row in seeds.values()])
        lines.append(f"| {a} - {b} | {interval.n} | {interval.describe()} | {interval.verdict} |")
    return "\n".join(lines)


def finetuned_checkpoint(student: Path, out: Path, epochs: int, device: str, qat: bool) -> Path:
    """The student trained `epochs` more with its own distillation setting and nominal batch, with or without QAT."""
    opt = yb.load_yolov5_checkpoint(student)["opt"]
    run = DistillTrainer(TrainOptions(
        data=opt["data"], weights=str(student), imgsz=opt["imgsz"], nbs=opt.get("nbs", 64),
        batch_size=opt["batch_size"], epochs=epochs, optimizer=opt["optimizer"], t_weights=opt["t_weights"],
        d_feature=opt["d_feature"], d_output=opt["d_output"], f_weight=opt["f_weight"],
        feature_loss=opt["feature_loss"], qat=qat, device=device, workers=2, project=str(out),
        name="qat" if qat else "ft32", exist_ok=True, noautoanchor=True, seed=opt["seed"],
        hyp="" if qat else str(cfg_path("hyp.finetune.yaml")))).run()
    return Path(run["best"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/kd_gain", help="folder with seed0/, seed1/, ... from kd_gain.py")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--student", default="distilled",
                   help="the distilled student's run folder in each seed folder (kd_gain.py: e.g. output)")
    p.add_argument("--epochs", type=int, default=5, help="QAT fine-tuning epochs")
    p.add_argument("--calib-images", type=int, default=512, help="training images calibrating the ptq variant")
    p.add_argument("--out", default="runs/qat_int8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-record", action="store_true", help="keep no record in benchmarks/records")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "qat_int8.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    for seed in args.seeds:
        key = f"seed{seed}"
        seed_dir = Path(args.runs) / key
        student = seed_dir / args.student / "weights" / "best.pt"
        opt = yb.load_yolov5_checkpoint(student)["opt"]
        data, imgsz = opt["data"], int(opt["imgsz"])
        work = out / key
        variants = {  # checkpoint, export options
            "fp32": lambda: (student, {}),
            "ptq": lambda: (student, {"int8": True, "data": data, "calib_images": args.calib_images}),
            "qat": lambda: (finetuned_checkpoint(student, work, args.epochs, args.device, qat=True), {}),
            "ft32": lambda: (finetuned_checkpoint(student, work, args.epochs, args.device, qat=False), {}),
        }
        row = results.setdefault(key, {"epochs": args.epochs})
        for name, make in variants.items():
            if name not in row:  # resumable, variant by variant
                weights, export_kw = make()
                row[name] = onnx_map(weights, data, imgsz, work / f"{name}_onnx", export_kw)
                store.write_text(json.dumps(results, indent=1))
    print(f"\nINT8 vs FP32 distilled yolov5n, mAP50-95 through onnxruntime ({date.today()}, QAT {args.epochs} epochs)")
    print(f"{'seed':<8}{'fp32':>9}{'ptq':>9}{'qat':>9}{'ft32':>9}{'ptq-fp32':>10}{'qat-fp32':>10}{'qat-ft32':>10}")
    for key, row in results.items():
        f, pt, qa, ft = (row[k]["mAP50-95"] for k in ("fp32", "ptq", "qat", "ft32"))
        print(f"{key:<8}{f:>9.4f}{pt:>9.4f}{qa:>9.4f}{ft:>9.4f}{(pt - f) * 100:>+10.2f}{(qa - f) * 100:>+10.2f}"
              f"{(qa - ft) * 100:>+10.2f}")
    for a, b in PAIRS:
        d = [(r[a]["mAP50-95"] - r[b]["mAP50-95"]) * 100 for r in results.values()]
        sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
        print(f"{a} - {b}: {statistics.mean(d):+.2f}{sd} points (val mAP50-95)")
    if not args.no_record:
        write_record(results, args, Path(args.runs).name)
        print(f"\n{report(json.loads(record_path().read_text()))}\n\nrecorded in {record_path()}")


if __name__ == "__main__":
    main()
