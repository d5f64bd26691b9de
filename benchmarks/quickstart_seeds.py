"""`yolodistill quickstart` on several seeds, each run kept as a record: the figures the README quotes for it.

    python benchmarks/quickstart_seeds.py --seeds 0 7          # ~30 min a seed on a 2-core machine of 155 ms
    python benchmarks/quickstart_seeds.py --report-only        # the table of the committed record

Per seed: the machine's reference step first (benchmarks/step_profile.py: plain yolov5n, 160 px, batch 16),
then the quickstart under runs/quickstart_seeds/seed<N>, the reference step again (this VM's idle step has read 150
to 285 ms within one hour), then the record benchmarks/records/quickstart_<plan>.json gets the seed's entry: the
command, commit, machine, both reference steps, minutes (and per stage), and for the
teacher, the student alone and the distilled student their val mAP (val chose best.pt), test mAP and val
mAP50-95 per epoch (and the fourth student's, distilled with unlabeled images the teacher never saw, where the
plan has them). A seed already recorded on this machine is skipped (--again to redo it). Run alone on the
machine: the minutes are part of what is measured.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_records  # noqa: E402  (benchmarks/, beside this file)
from paired_stats import paired_interval  # noqa: E402
from yolodistill import quickstart  # noqa: E402

TARGET_STEP_MS = 116.0  # the reference step the time targets are set at


def record_path(plan_name: str) -> Path:
    return run_records.RECORDS / f"quickstart_{plan_name}.json"


def reference_step_ms(tries: int = 2) -> float:
    """The plain yolov5n training step of benchmarks/step_profile.py, in ms (its 'total' line, first column): the
    least of `tries` runs, as the first run after other work has read 250 ms where idle ones read 150."""
    steps = []
    for _ in range(tries):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--imgsz", "160",
                              "--batch-size", "16", "--steps", "25"], capture_output=True, text=True,
                             check=True).stdout
        steps.append(float(re.search(r"^total\s+([\d.]+)", out, re.M).group(1)))
    return min(steps)


def seed_entry(result: dict, out: Path, plan: quickstart.Plan, step_ms: float, commit: str) -> dict:
    models = {}
    for row, folder in zip(result["rows"], ("teacher", "student", "distilled", "unlabeled")):
        models[row["model"]] = {
            "val mAP50-95": row["mAP50-95"], "val mAP50": row["mAP50"],
            "test mAP50-95": row.get("test mAP50-95"), "test mAP50": row.get("test mAP50"),
            "curve": [round(r[run_records.MAP], 5) for r in
                      run_records.read_results(out / folder / "results.csv")]}
    return {"command": " ".join(["python", *sys.argv]), "commit": commit, "machine": run_records.machine(),
            "recorded_on": str(date.today()), "reference_step_ms": round(step_ms, 1),
            "minutes": round(result["minutes"], 2), "stages": {k: round(v, 2) for k, v in result["stages"].items()},
            "models": models, "plan": asdict(plan)}


def report(record: dict) -> str:
    """A row per seed: the reference step, minutes, test (val) mAP50-95 of each model, and the share of the teacher's
    lead each distilled student closes; seeds recorded before the quickstart had its fourth student (distilled with
    unlabeled images the teacher never saw) show "-" there."""
    lines = ["| seed | reference step before / after, ms | minutes (at 116 ms) | teacher test (val) | "
             "student alone test (val) | distilled test (val) | distilled + unlabeled test (val) | "
             "share of the lead closed, test (val): distilled; + unlabeled |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, e in sorted(record.items(), key=lambda kv: int(kv[0])):
        maps = list(e["models"].values())
        cells = [f"{m['test mAP50-95']:.3f} ({m['val mAP50-95']:.3f})" for m in maps] + ["-"] * (4 - len(maps))
        shares = []
        for distilled in maps[2:]:
            pair = []
            for key in ("test mAP50-95", "val mAP50-95"):
                share = quickstart.gap_closed(maps[0][key], maps[1][key], distilled[key])
                pair.append(f"{100 * share:.0f}%" if share is not None else "-")
            shares.append(f"{pair[0]} ({pair[1]})")
        steps = [e["reference_step_ms"], e.get("reference_step_ms_after", e["reference_step_ms"])]
        # scaled by the faster reading, the more cautious: a slower machine makes the scaled minutes smaller
        scaled = e["minutes"] * TARGET_STEP_MS / min(steps)
        lines.append(f"| {seed} | {steps[0]:.0f} / {steps[1]:.0f} | {e['minutes']:.1f} ({scaled:.1f}) | "
                     f"{' | '.join(cells)} | {'; '.join(shares)} |")
    notes = [f"Seed {seed}: {e['note']}" for seed, e in sorted(record.items(), key=lambda kv: int(kv[0]))
             if e.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []) + ["", paired_table(record)])


# (A, B) by position in a seed's models: teacher, alone, distilled, distilled + unlabeled
PAIRS = (("distilled", 2, "alone", 1), ("distilled + unlabeled", 3, "alone", 1),
         ("distilled + unlabeled", 3, "distilled", 2))


def paired_table(record: dict) -> str:
    """Test mAP50-95 differences paired by seed (both models of a pair trained in one run, so on one machine), with
    their 95% t-intervals; a seed without one of the two models is left out of that pair."""
    lines = ["| A - B, test mAP50-95 | seeds | difference, points [95% interval] | shown |", "| --- | --- | --- | --- |"]
    seeds = [list(e["models"].values()) for _, e in sorted(record.items(), key=lambda kv: int(kv[0]))]
    for name_a, a, name_b, b in PAIRS:
        diffs = [maps[a]["test mAP50-95"] - maps[b]["test mAP50-95"] for maps in seeds if len(maps) > max(a, b)]
        if diffs:
            interval = paired_interval(diffs)
            lines.append(f"| {name_a} - {name_b} | {interval.n} | {interval.describe()} | {interval.verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--plan", default="default")
    ap.add_argument("--out", default="runs/quickstart_seeds")
    ap.add_argument("--again", action="store_true", help="rerun seeds already recorded on this machine")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile (shown under the table)")
    args = ap.parse_args()
    path = record_path(args.plan)
    record = json.loads(path.read_text()) if path.is_file() else {}
    if args.report_only:
        print(report(record))
        return
    for seed in args.seeds:
        done = record.get(str(seed))
        if done and done["machine"] == run_records.machine() and not args.again:
            print(f"seed {seed} is recorded on this machine; --again to redo it")
            continue
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        step = reference_step_ms()
        print(f"seed {seed}: reference step {step:.1f} ms", flush=True)
        plan = quickstart.Plan.named(args.plan)
        out = Path(args.out) / f"seed{seed}"
        t0 = time.time()
        result = quickstart.run(out, plan=plan, seed=seed)
        print(f"seed {seed}: {(time.time() - t0) / 60:.1f} min", flush=True)
        record[str(seed)] = seed_entry(result, out, replace(plan, seed=seed), step, commit)
        if args.note:
            record[str(seed)]["note"] = args.note
        # measured again after: this VM's step has read 150 to 285 ms within one hour, idle
        record[str(seed)]["reference_step_ms_after"] = round(reference_step_ms(), 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
    print(report(record))


if __name__ == "__main__":
    main()
