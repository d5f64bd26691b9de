"""Teacher vs student speed on onnxruntime (CPU): is the speed-up at least 80% of the GFLOPs ratio?

    python benchmarks/deploy_speed.py --teacher runs/kd_gain/seed0/teacher/weights/best.pt \
        --student runs/kd_gain/seed0/distilled/weights/best.pt --repeats 3

Runs `yolodistill benchmark` (interleaved teacher/student rounds in one process) for each setting, several
times, and reports the speed-up (median latency ratio; images/s ratio for batches > 1) as a fraction of the
GFLOPs ratio. Settings: batch 1 with onnxruntime's default threads and with 1 thread (latency, what a
real-time camera pipeline sees), and batch 8 (throughput). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from datetime import date
from pathlib import Path

from yolodistill.deploy.benchmark import benchmark

SETTINGS = (("batch 1, default threads", 1, 0), ("batch 1, 1 thread", 1, 1), ("batch 8, default threads", 8, 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--out", default="runs/deploy_speed")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    out = Path(args.out)
    rows = {}
    for label, batch, threads in SETTINGS:
        for r in range(args.repeats):
            res = benchmark([args.teacher, args.student], batch=batch, threads=threads, runs=max(50, args.runs // batch),
                            warmup=20, out=out / f"b{batch}_t{threads}_r{r}", memory=r == 0, plot=False, show=False)
            q = res["ratios"][0]
            speed = q["speed_x"] if batch == 1 else q["throughput_x"]
            rows.setdefault(label, []).append({"speed_x": speed, "gflops_x": q["GFLOPs_x"],
                                               "teacher_ms": res["results"][0]["latency_ms_median"],
                                               "student_ms": res["results"][1]["latency_ms_median"]})
    (out / "deploy_speed.json").write_text(json.dumps(rows, indent=1))
    print(f"\nonnxruntime CPU, {date.today()}: speed-up / GFLOPs ratio, {args.repeats} repeats each")
    print(f"{'setting':<28}{'teacher ms':>12}{'student ms':>12}{'speed-up':>16}{'GFLOPs x':>10}{'share':>16}")
    for label, rs in rows.items():
        sp = [x["speed_x"] for x in rs]
        share = [x["speed_x"] / x["gflops_x"] for x in rs]
        sd = (lambda xs: f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")
        print(f"{label:<28}{statistics.median(x['teacher_ms'] for x in rs):>12.2f}"
              f"{statistics.median(x['student_ms'] for x in rs):>12.2f}{statistics.mean(sp):>11.2f}{sd(sp)}"
              f"{rs[0]['gflops_x']:>10.2f}{statistics.mean(share):>11.0%}{sd(share)}")


if __name__ == "__main__":
    main()
