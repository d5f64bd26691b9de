"""The prepared GPU check (issue 15): everything that needs CUDA, in one run of a few minutes, into one report.

    bash benchmarks/gpu_check.sh [OUT]          # the wrapper: wheels, the no-GPU line, a time limit
    python benchmarks/gpu_check.py --out OUT    # this script, on a machine with a CUDA GPU

Stages, each timed and each allowed to fail on its own (the report says why and the next stage runs):
1. data: the quickstart's synthetic set (`data synth`, difficulty 0, 160 px).
2. train: a yolov5s teacher, then a yolov5n distilled from it (output distillation), with AMP on CUDA and the
   teacher in FP16 -- the CUDA training path, which CPU CI never runs.
3. overhead: benchmarks/overhead.py on CUDA: plain AMP step, FP16 teacher inference, distillation step, ratio.
4. engines: teacher and student to ONNX, then FP16 and INT8 (calibrated Q/DQ) TensorRT engines with the
   installed TensorRT, each compared with its ONNX file by `yolodistill export` (refused if it disagrees).
5. val: mAP of each checkpoint and each engine on the val split, the same table as `yolodistill val`.
6. speed: teacher vs student engines, `yolodistill benchmark --backend tensorrt` (latency, throughput, memory).
OUT/report.md and OUT/report.json hold the figures; OUT/log.txt the whole log. Work files go to --work.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

LOGGER = logging.getLogger("yolodistill")
ROOT = Path(__file__).resolve().parents[1]


class Report:
    """Stages in order: name, status (ok / failed / skipped), seconds, figures, and why when not ok."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.stages, self.t0, self.budget_s = out, [], time.time(), budget_s

    def stage(self, name: str, fn, *, needs: tuple = ()) -> dict:
        """Run fn() -> figures; record it. Skipped if a stage it needs failed or the time budget is spent."""
        failed = [s["name"] for s in self.stages if s["name"] in needs and s["status"] != "ok"]
        left = self.budget_s - (time.time() - self.t0)
        if failed or left < 20:
            why = f"needs {', '.join(failed)}, which did not finish" if failed else "the time budget is spent"
            return self._add(name, "skipped", 0.0, {}, why)
        LOGGER.info(f"gpu_check: {name} ({left:.0f} s left)")
        t = time.time()
        try:
            return self._add(name, "ok", time.time() - t, fn() or {}, "")
        except Exception as e:  # noqa: BLE001 - a stage's failure is a finding to report, not the end of the check
            LOGGER.error("".join(traceback.format_exception(e)))
            return self._add(name, "failed", time.time() - t, {}, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")

    def _add(self, name, status, seconds, figures, why) -> dict:
        entry = {"name": name, "status": status, "seconds": round(seconds, 1), "figures": figures, "why": why}
        self.stages.append(entry)
        self.write()
        return entry

    def figures(self, name: str) -> dict:
        return next((s["figures"] for s in self.stages if s["name"] == name), {})

    def write(self, meta: dict | None = None) -> None:
        if meta is not None:
            self.meta = meta
        meta = getattr(self, "meta", {})
        (self.out / "report.json").write_text(json.dumps({"meta": meta, "stages": self.stages}, indent=1))
        lines = ["# gpu_check", "", *(f"- {k}: {v}" for k, v in meta.items()), ""]
        for s in self.stages:
            lines.append(f"## {s['name']}: {s['status']} ({s['seconds']} s)" + (f" -- {s['why']}" if s["why"] else ""))
            lines += [f"- {k}: {v}" for k, v in s["figures"].items()] + [""]
        (self.out / "report.md").write_text("\n".join(lines))


def machine() -> dict:
    import torch

    from yolodistill.runtime.tensorrt_engine import tensorrt_status

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "tensorrt": tensorrt_status()[1]}


def train_models(work: Path, epochs: int) -> dict:
    """A yolov5s teacher and a yolov5n distilled from it on CUDA (AMP, FP16 teacher); their best.pt and mAP."""
    from yolodistill.quickstart import Plan, prepare_data, train_run

    plan = replace(Plan.named("default"), teacher_epochs=epochs, student_epochs=epochs, batch_size=32, nbs=32)
    data = prepare_data(work, plan)
    teacher = train_run(work, "teacher", plan, data, "0", cfg=plan.teacher_cfg, epochs=epochs)
    student = train_run(work, "distilled", plan, data, "0", cfg=plan.student_cfg, epochs=epochs,
                        t_weights=teacher["best"], d_output=True)
    pick = lambda r: {k: r[k] for k in r if k.startswith("metrics/")}  # noqa: E731
    return {"data": str(data), "teacher": teacher["best"], "student": student["best"],
            "teacher metrics": pick(teacher), "student metrics": pick(student)}


def overhead() -> dict:
    """benchmarks/overhead.py on CUDA, its printed lines as figures."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--device", "0", "--imgsz", "640",
           "--batch-size", "32", "--steps", "20"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=True).stdout
    LOGGER.info(out)
    return {"command": " ".join(cmd[1:]), "output": out.strip().splitlines()}


def engines(work: Path, weights: dict, data: str) -> dict:
    """FP16 and INT8 engines of teacher and student, each parity-checked against its ONNX file by export()."""
    from yolodistill.deploy.export import export

    made = {}
    for role in ("teacher", "student"):
        for precision in ("fp16", "int8"):
            onnx = work / "engines" / f"{role}_{precision}.onnx"
            kw = dict(half=True) if precision == "fp16" else dict(int8=True, data=data)
            made[f"{role} {precision}"] = export(weights[role], include=("onnx", "engine"), imgsz=[160],
                                                 output=str(onnx), **kw)["engine"]
    return made


def val_all(work: Path, files: dict, data: str) -> dict:
    from yolodistill.detection.inference import val

    scores = {}
    for label, path in files.items():
        m = val(path, data, imgsz=160, batch_size=32, device="0", project=str(work / "val"),
                name=label.replace(" ", "_"))
        scores[label] = {k: round(v, 4) for k, v in m.items() if k.startswith("metrics/")}
    return scores


def speed(work: Path, weights: dict) -> dict:
    from yolodistill.deploy.benchmark import benchmark

    figures = {}
    for batch in (1, 32):
        r = benchmark([weights["teacher"], weights["student"]], backend="tensorrt", imgsz=[160], batch_size=batch,
                      half=True, runs=300, project=str(work), name=f"benchmark_b{batch}", exist_ok=True, plot=False,
                      show=False)
        figures[f"batch {batch}"] = {"results": r["results"], "ratios": r["ratios"], "device": r["meta"]["device"]}
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu_check", help="report.md, report.json, log.txt")
    ap.add_argument("--work", default=None, help="datasets, runs and engines (default OUT/../gpu_check_work)")
    ap.add_argument("--epochs", type=int, default=12, help="teacher and student epochs")
    ap.add_argument("--budget-minutes", type=float, default=7.0, help="later stages are skipped past this")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out.parent / "gpu_check_work"
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[logging.FileHandler(out / "log.txt"), logging.StreamHandler()])
    report = Report(out, args.budget_minutes * 60)
    report.write(machine())
    trained = report.stage("train", lambda: train_models(work, args.epochs))["figures"]
    report.stage("overhead", overhead)
    report.stage("engines", lambda: engines(work, trained, trained["data"]), needs=("train",))
    files = {"teacher .pt": trained.get("teacher"), "student .pt": trained.get("student"),
             **report.figures("engines")}
    report.stage("val", lambda: val_all(work, files, trained["data"]), needs=("train",))
    report.stage("speed", lambda: speed(work, trained), needs=("train",))
    failed = [s["name"] for s in report.stages if s["status"] != "ok"]
    LOGGER.info(f"gpu_check: report in {out / 'report.md'}" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
