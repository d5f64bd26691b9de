"""Teacher vs student speed on onnxruntime (CPU): is the speed-up at least 80% of the GFLOPs ratio?

    python benchmarks/deploy_speed.py --teacher runs/kd_gain/seed0/teacher/weights/best.pt \
        --student runs/kd_gain/seed0/distilled/weights/best.pt --repeats 3

Runs `yolodistill benchmark` (interleaved teacher/student rounds in one process) for each setting, several
times, and reports the speed-up (median latency ratio; images/s ratio for batches > 1) as a fraction of the
GFLOPs ratio. Settings: batch 1 with onnxruntime's default threads and with 1 thread (latency, what a
real-time camera pipeline sees), and batch 8 (throughput). Run it on an otherwise idle machine.

Each run is appended to benchmarks/records/deploy_speed.json (--record NAME: records/NAME.json; --no-record:
none; earlier runs stay): the command, commit, machine, date, the machine's reference step
(benchmarks/step_profile.py: plain yolov5n, 160 px, batch 16, measured just before), the two files (their paths
inside the repository, else their names), the image size, and per setting each repeat's teacher and student
median latency, speed-up and GFLOPs ratio. `python benchmarks/report.py` makes the table of benchmarks/RESULTS.md
from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_records  # noqa: E402  (benchmarks/, beside this file)
from yolodistill.deploy.benchmark import benchmark  # noqa: E402

RECORD = "deploy_speed"  # benchmarks/records/deploy_speed.json
SETTINGS = (("batch 1, default threads", 1, 0), ("batch 1, 1 thread", 1, 1), ("batch 8, default threads", 8, 0))


def record_path(name: str = RECORD, records: Optional[Path] = None) -> Path:
    """records/NAME.json; the folder is run_records.RECORDS read at call time (tests redirect it)."""
    return Path(records or run_records.RECORDS) / f"{name}.json"


def read_record(records: Optional[Path] = None, name: str = RECORD) -> list:
    """[run, ...], oldest first; a missing record stops with the command that makes it."""
    path = record_path(name, records)
    if not path.is_file():
        flag = "" if name == RECORD else f" --record {name}"
        raise SystemExit(f"no record {path}: run python benchmarks/deploy_speed.py --teacher T.pt --student S.pt{flag} "
                         f"(alone on the machine)")
    return json.loads(path.read_text())


def write_record(run: dict, name: str = RECORD) -> Path:
    """Append `run` to records/NAME.json (earlier runs stay); written to a temporary file first, then moved over
    the record, so an interrupted write leaves the old record whole."""
    path = record_path(name)
    record = json.loads(path.read_text()) if path.is_file() else []
    record.append(run)
    run_records.write_json(path, record)
    return path


file_name = run_records.repo_file  # kept under this name: the tests and callers use it


def _figure(x: float, digits: int) -> Optional[float]:
    """`x` rounded; None for a ratio benchmark() could not form (nan), which JSON has no number for."""
    return round(x, digits) if math.isfinite(x) else None


def _mean_sd(xs: list[float], fmt: str) -> str:
    return f"{statistics.mean(xs):{fmt}}" + (f" ± {statistics.stdev(xs):{fmt}}" if len(xs) > 1 else "")


def report(record: list) -> str:
    """A table per recorded run, under a line naming it (date, machine, reference step, files, image size): per
    setting the median teacher and student latency over the repeats (ms per call: a batch of 8 at batch 8), the
    speed-up (images/s ratio at batch 8; mean ± sd over the repeats), the GFLOPs ratio and the speed-up's share of
    it (mean ± sd, percent)."""
    blocks = []
    for run in record:
        step = f"{run['reference_step_ms']:.0f} ms" if run.get("reference_step_ms") else "not measured"
        size = f", {'x'.join(map(str, run['imgsz']))} px" if run.get("imgsz") else ""
        lines = [f"{run['recorded_on']}, {run['machine']} (reference step {step}), {run['device']}: "
                 f"teacher {run['teacher']}, student {run['student']}{size}, {run['repeats']} repeats",
                 "",
                 "| setting | teacher ms | student ms | speed-up (mean ± sd) | GFLOPs ratio | "
                 "share of the GFLOPs ratio (mean ± sd) |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for label, repeats in run["settings"].items():
            teacher = statistics.median(r["teacher_ms"] for r in repeats)
            student = statistics.median(r["student_ms"] for r in repeats)
            kept = [r for r in repeats if r["speed_x"] is not None and r["gflops_x"]]
            ratios = "- | - | -"
            if kept:
                ratios = (f"{_mean_sd([r['speed_x'] for r in kept], '.2f')} | {kept[0]['gflops_x']:.2f} | "
                          f"{_mean_sd([100 * r['speed_x'] / r['gflops_x'] for r in kept], '.0f')}%")
            lines.append(f"| {label} | {teacher:.2f} | {student:.2f} | {ratios} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--out", default="runs/deploy_speed")
    p.add_argument("--record", default=RECORD, metavar="NAME",
                   help="keep the run in benchmarks/records/NAME.json (default: %(default)s)")
    p.add_argument("--no-record", action="store_true", help="keep no record (and skip the reference step)")
    args = p.parse_args()
    for flag, path in (("--teacher", args.teacher), ("--student", args.student)):
        if not Path(path).is_file():
            raise SystemExit(f"{flag} {path}: no such file")
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: at least 1")
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    step_ms = None
    if not args.no_record:
        import quickstart_seeds  # benchmarks/, beside this file

        step_ms = quickstart_seeds.reference_step_ms()  # before the timing, so it does not load the machine then
    machine = run_records.machine()  # before the runs: benchmark() leaves torch at its last setting's threads
    out = Path(args.out)
    rows = {}
    for label, batch, threads in SETTINGS:
        for r in range(args.repeats):
            res = benchmark([args.teacher, args.student], batch_size=batch, threads=threads,
                            runs=max(50, args.runs // batch), warmup=20, project=str(out),
                            name=f"b{batch}_t{threads}_r{r}", exist_ok=True, memory=r == 0, plot=False, show=False)
            q, imgsz = res["ratios"][0], res["meta"].get("imgsz")
            speed = q["speed_x"] if batch == 1 else q["throughput_x"]
            rows.setdefault(label, []).append({"speed_x": _figure(speed, 4), "gflops_x": _figure(q["GFLOPs_x"], 4),
                                               "teacher_ms": round(res["results"][0]["latency_ms_median"], 3),
                                               "student_ms": round(res["results"][1]["latency_ms_median"], 3)})
    (out / "deploy_speed.json").write_text(json.dumps(rows, indent=1))
    commit = run_records.commit()
    import onnxruntime  # benchmark() ran on it: importable here

    run = {"command": " ".join(["python", *sys.argv]), "commit": commit, "machine": machine,
           "device": f"onnxruntime {onnxruntime.__version__}, CPU", "recorded_on": str(date.today()),
           "reference_step_ms": round(step_ms, 1) if step_ms is not None else None,
           "teacher": file_name(args.teacher), "student": file_name(args.student), "imgsz": imgsz,
           "repeats": args.repeats, "runs": args.runs, "settings": rows}
    print(f"\nspeed-up / GFLOPs ratio, {args.repeats} repeats each\n")
    print(report([run]))
    if not args.no_record:
        print(f"\nrecorded in {write_record(run, args.record)}")


if __name__ == "__main__":
    main()
