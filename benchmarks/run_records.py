"""The benchmarks' finished runs, kept in the repository: their figures outlive the runs/ folder.

runs/ is not committed, and a fresh checkout (a new machine, CI, the next working session) starts without it.
The figures of a long benchmark would then survive only as prose in RESULTS.md, and a seed trained in a later
session could not be averaged with the earlier ones. So every save of a benchmark's OUT/results.json is
mirrored to benchmarks/records/<OUT's name>.json: each finished run's figures and its val mAP50-95 per epoch,
with the date it was recorded and the plan it ran under, without its (machine-local) folder.

A report merges the record with OUT/results.json: a run of OUT wins; a run only in the record is reported and
named as recorded. A recorded run is never a reason to skip training: its checkpoints are gone, and a run that
teaches or starts another needs them.

Each run also keeps the machine that trained it. Runs of one seed are not reproducible across machines (the
same command and seed gave a yolov5n 0.473, 0.450 and 0.436 on three VMs: RESULTS.md), so a report whose runs
came from more than one machine says which ran where.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from dataclasses import MISSING, fields
from datetime import date
from pathlib import Path
from typing import Optional

import torch

from yolodistill import quickstart
from yolodistill import yolo_backend as yb
from yolodistill.run_logger import read_results

ROOT = Path(__file__).resolve().parent.parent  # the repository (not RECORDS' parent: tests move RECORDS)
RECORDS = ROOT / "benchmarks" / "records"
MAP = "metrics/mAP_0.5:0.95"
LOGGER = logging.getLogger("yolodistill")
UNSTAMPED = "a machine not recorded (runs finished before 2026-12-07)"


def machine() -> str:
    """What a CPU run's figures depend on besides its seed: the processor (the instruction set its kernels use),
    the threads and the torch build. (The host name says nothing here: every VM is called the same.)"""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        first = info.read_text().split("\n\n", 1)[0]  # the first processor's block
        keys = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        keys = {k.strip(): v.strip() for k, v in keys.items()}
        if "model name" in keys:
            cpu = f"{keys['model name']} (family {keys.get('cpu family', '?')}, model {keys.get('model', '?')})"
    return (f"{cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}, "
            f"torch {torch.__version__}")


def commit() -> str:
    """The short hash of the checkout a benchmark runs from (a record's "commit")."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def write_json(path: Path, obj) -> Path:
    """`obj` as JSON at `path`, whole or not at all: written to a temporary file, then moved over the old one, so an
    interrupted write never leaves a half record to commit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)
    return path


def repo_file(path: str) -> str:
    """A file as a record names it: its path inside the repository, else its name alone (no machine's folders)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def finished(r: dict, t0: float, kind: str, *, data: Optional[Path] = None,
             plan: Optional[quickstart.Plan] = None) -> dict:
    """A benchmark's entry for a run that finished just now: its figures (`r`: quickstart.train_or_resume's), its
    minutes since `t0`, its kind, its folder and the machine that trained it. With the run's `data` yaml and
    `plan`, and a test split in the data, also best.pt's test mAP (`test_map`, `test_mAP50`): val chose best.pt,
    so its val figure flatters it."""
    entry = {"map": r[MAP], "mAP50": r["metrics/mAP_0.5"], "minutes": (time.time() - t0) / 60, "kind": kind,
             "save_dir": r["save_dir"], "machine": machine()}
    if data is not None and plan is not None and "test" in yb.load_data_yaml(data):
        test = quickstart.val_metrics(Path(r["save_dir"]) / "weights" / "best.pt", Path(data), plan, "cpu",
                                      Path(r["save_dir"]), task="test")
        entry.update(test_map=test["test/mAP_0.5:0.95"], test_mAP50=test["test/mAP_0.5"])
    return entry


def record_path(out: Path) -> Path:
    return RECORDS / f"{Path(out).name}.json"


def curve(result: dict) -> list[float]:
    """A run's val mAP50-95 per epoch: recorded, or read from its results.csv."""
    if "curve" in result:
        return result["curve"]
    if "save_dir" not in result:  # recorded after its folder was gone
        return []
    return [r[MAP] for r in read_results(Path(result["save_dir"]) / "results.csv")]


def _portable(result: dict, earlier: Optional[dict]) -> dict:
    """A run as the record keeps it: no machine-local folder, its curve, the date it was first recorded (and
    its machine, as recorded before if OUT's entry lacks it)."""
    kept = {k: v for k, v in result.items() if k not in ("save_dir", "recorded")}
    # a run whose folder is gone (an empty curve) keeps the curve recorded before, if any
    kept["curve"] = [round(x, 5) for x in curve(result)] or (earlier or {}).get("curve", [])
    kept["recorded_on"] = (earlier or {}).get("recorded_on", str(date.today()))
    if "machine" in (earlier or {}):  # so is the machine, for a run OUT holds from before runs were stamped
        kept.setdefault("machine", earlier["machine"])
    return kept


def same_plan(a: dict, b: dict) -> bool:
    """Two plan stamps (quickstart.Plan's fields but the seed) of the same runs; a field one of them lacks was
    added to Plan later, and its runs had the field's default (a field Plan no longer has is not compared)."""
    defaults = {f.name: f.default for f in fields(quickstart.Plan) if f.default is not MISSING}
    known = {f.name for f in fields(quickstart.Plan)} - {"seed"}
    return all(a.get(k, defaults.get(k)) == b.get(k, defaults.get(k)) for k in known)


def _read(out: Path, plan: dict) -> dict:
    path = record_path(out)
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    if not same_plan(record.get("plan", {}), plan):
        LOGGER.warning(f"{path}: runs of another plan than {Path(out) / 'plan.json'}'s, left out")
        return {}
    return record.get("runs", {})


def write(out: Path, results: dict) -> None:
    """Mirror OUT/results.json (stamped by OUT/plan.json) into the record; runs the record holds and `results`
    does not (an earlier checkout's) stay."""
    out = Path(out)
    plan = json.loads((out / "plan.json").read_text())
    runs = _read(out, plan)
    for seed, done in results.items():
        kept = runs.setdefault(seed, {})
        for label, result in done.items():
            if not result.get("recorded"):
                kept[label] = _portable(result, kept.get(label))
    write_json(record_path(out), {"plan": plan, "runs": runs})


def merged(out: Path, results: dict) -> dict:
    """OUT's runs, and the record's runs OUT lacks (marked `recorded`): what a report shows."""
    out = Path(out)
    plan_file = out / "plan.json"
    runs = _read(out, json.loads(plan_file.read_text())) if plan_file.is_file() else {}
    both = {seed: dict(done) for seed, done in results.items()}
    for seed, recorded in runs.items():
        for label, result in recorded.items():
            both.setdefault(seed, {}).setdefault(label, {**result, "recorded": True})
    return both


def recorded_note(results: dict, seeds: list[int], out: Path) -> list[str]:
    """A report's line naming the runs it took from the record, seed by seed (none: no line)."""
    cells = [f"seed {s}: {', '.join(label for label, r in results.get(str(s), {}).items() if r.get('recorded'))}"
             for s in seeds if any(r.get("recorded") for r in results.get(str(s), {}).values())]
    if not cells:
        return []
    return ["", f"From {record_path(out).relative_to(RECORDS.parent.parent)} (finished in an earlier checkout; "
            f"figures and curves only): {'; '.join(cells)}."]


def machines_note(results: dict, seeds: list[int]) -> list[str]:
    """A report's lines naming the machine of each run, when its runs came from more than one (none: no line)."""
    where: dict[str, dict[int, list[str]]] = {}
    for s in seeds:
        for label, r in results.get(str(s), {}).items():
            where.setdefault(r.get("machine", UNSTAMPED), {}).setdefault(s, []).append(label)
    if len(where) < 2:
        return []
    lines = ["", "These runs were trained on more than one machine, and the same seed is not reproducible across "
             "machines (benchmarks/RESULTS.md): a gain, share or difference between runs of two machines mixes "
             "them."]
    for name, per_seed in where.items():
        lines.append(f"- {name}: " + "; ".join(f"seed {s}: {', '.join(labels)}" for s, labels in per_seed.items()))
    return lines
