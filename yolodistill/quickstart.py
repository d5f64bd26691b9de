"""`yolodistill quickstart`: the whole story on the embedded synthetic dataset, on a laptop CPU.

generate data -> train a yolov5s teacher -> train a yolov5n student alone -> distil a yolov5n student
(output + feature) -> distil another on the labeled images and on unlabeled ones no model has seen (where the
plan has them) -> score each on the test split (val chose each best.pt) -> a table (params, GFLOPs, val and test
mAP, CPU latency) and one plot of val mAP per epoch -> the distilled student val prefers, exported and
benchmarked. The teacher is cached: a rerun reuses a finished teacher, resumes an interrupted one from its
last.pt, and never reuses a broken file.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import torch

from . import yolo_backend as yb
from .detection.train_options import TrainOptions
from .detection.trainer import DistillTrainer
from .errors import UserError
from .paths import cfg_path, load_cfg
from .quickstart_options import QuickstartOptions
from .run_logger import read_results
from .synth import generate

LOGGER = logging.getLogger("yolodistill")
DATA_DONE = ".complete"  # written after the last image, so a half-generated dataset is never reused


@dataclass(frozen=True)
class Plan:
    """Sizes of a quickstart run, as listed in cfg/quickstart.yaml."""

    n_train: int
    n_val: int
    imgsz: int
    batch_size: int
    teacher_epochs: int
    student_epochs: int
    teacher_cfg: str
    student_cfg: str
    feature_loss: str
    feature_weight: float  # 0: output distillation alone
    optimizer: str
    hyp: str  # a packaged cfg/ file name or a path
    seed: int
    difficulty: float = 1.0  # of the synthetic data (yolodistill.synth.Difficulty.level)
    nbs: int = 64  # images per optimizer step (yolov5's nominal batch)
    output_weight: float = 1.0  # --d_weight of the distilled student
    output_loss: str = "mse"  # --output-loss of the distilled student
    style: str = "flat"  # of the synthetic data (yolodistill.synth.STYLES)
    n_test: int = 0  # test images, which score best.pt after val chose it (0: no test split, val figures only)
    n_unlabeled: int = 0  # images without labels, unseen by the teacher: a fourth student distils on them too

    @property
    def distill_label(self) -> str:
        """What the distilled student is distilled with: `output` or `feature-<loss>` (output + features)."""
        return f"feature-{self.feature_loss}" if self.feature_weight > 0 else "output"

    def distill_options(self) -> dict:
        """TrainOptions fields of the distilled student (besides the teacher)."""
        return dict(d_output=True, d_weight=self.output_weight, output_loss=self.output_loss,
                    d_feature=self.feature_weight > 0, feature_loss=self.feature_loss, f_weight=self.feature_weight)

    @classmethod
    def named(cls, name: str) -> "Plan":
        """`default` or `fast` from the packaged cfg/quickstart.yaml."""
        return cls(**load_cfg("quickstart.yaml")[name])


def train_run(out: Path, name: str, plan: Plan, data: Path, device: str, **extra) -> dict:
    """One `yolodistill train` run under out/name with the plan's sizes; returns its final metrics."""
    hyp = plan.hyp if Path(plan.hyp).is_file() else str(cfg_path(plan.hyp))
    options = TrainOptions(data=str(data), imgsz=plan.imgsz, batch_size=plan.batch_size, device=device, workers=2,
                           project=str(out), name=name, exist_ok=True, seed=plan.seed, noautoanchor=True,
                           optimizer=plan.optimizer, hyp=hyp, nbs=plan.nbs, **extra)
    return DistillTrainer(options).run()


def train_or_resume(out: Path, name: str, plan: Plan, data: Path, device: str, **extra) -> dict:
    """train_run, or the interrupted run under out/name resumed from its last.pt (for resumable benchmarks)."""
    last = out / name / "weights" / "last.pt"
    if _resumable(last):
        LOGGER.info(f"Resuming the interrupted run {out / name}")
        return DistillTrainer(TrainOptions(resume=str(last))).run()
    return train_run(out, name, plan, data, device, **extra)


def _finished(weights: Path) -> bool:
    """A checkpoint that loads and was stripped at the end of a run (epoch -1)."""
    if not weights.is_file():
        return False
    try:
        return yb.load_yolov5_checkpoint(weights).get("epoch") == -1
    except UserError:
        return False


def _resumable(last: Path) -> bool:
    try:
        ckpt = yb.load_yolov5_checkpoint(last) if last.is_file() else None
    except UserError:
        return False
    return bool(ckpt) and ckpt.get("optimizer") is not None and ckpt.get("epoch", -1) >= 0


def prepare_data(out: Path, plan: Plan) -> Path:
    """The synthetic dataset under out/data, generated once."""
    folder = out / "data"
    marker = folder / DATA_DONE
    expected = f"{plan.n_train} {plan.n_val} {plan.n_test} {plan.imgsz} {plan.seed} {plan.difficulty} {plan.style}"
    expected += f" {plan.n_unlabeled}" if plan.n_unlabeled else ""  # the folders of earlier plans stay valid
    if marker.is_file() and marker.read_text().strip() == expected:
        LOGGER.info(f"Reusing dataset {folder}")
        return folder / "data.yaml"
    if folder.exists():
        shutil.rmtree(folder)
    yaml_path = generate(folder, n_train=plan.n_train, n_val=plan.n_val, n_test=plan.n_test, imgsz=plan.imgsz,
                         seed=plan.seed, difficulty=plan.difficulty, style=plan.style, n_unlabeled=plan.n_unlabeled)
    marker.write_text(expected + "\n")
    return yaml_path


def prepare_teacher(out: Path, plan: Plan, data: Path, device: str, **extra) -> Path:
    """Train the teacher, or reuse a finished one, or resume an interrupted one (`extra`: TrainOptions fields)."""
    run = out / "teacher"
    best, last = run / "weights" / "best.pt", run / "weights" / "last.pt"
    stamp = run / "plan.txt"
    expected = (f"{plan.teacher_cfg} {plan.teacher_epochs} {plan.imgsz} {plan.n_train} {plan.seed} "
                f"{plan.optimizer} {plan.hyp} {plan.difficulty} {plan.nbs}")
    same_plan = stamp.is_file() and stamp.read_text().strip() == expected
    if same_plan and _finished(best):
        LOGGER.info(f"Reusing cached teacher {best}")
        return best
    if not (same_plan and _resumable(last)):  # another plan or a broken run: start over
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        stamp.write_text(expected + "\n")
    train_or_resume(out, "teacher", plan, data, device, cfg=plan.teacher_cfg, epochs=plan.teacher_epochs, **extra)
    return best


@torch.no_grad()
def cpu_latency_ms(weights: Path, imgsz: int, runs: int = 30) -> float:
    """Median forward time of one image on the CPU (fused, eval, FP32), in milliseconds."""
    model = yb.load_model(weights).fuse().eval()
    x = torch.zeros(1, 3, imgsz, imgsz)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def summary_rows(runs: dict[str, dict], imgsz: int) -> list[dict]:
    """A row per run: size, speed, val mAP (`mAP50`, `mAP50-95`: the split that chose best.pt) and, when the
    data has a test split, test mAP (`test mAP50`, `test mAP50-95`)."""
    rows = []
    for label, result in runs.items():
        model = yb.load_model(result["best"])
        stats = yb.model_stats(model, imgsz)
        row = {"model": label, "params": stats["params"], "gflops": stats["gflops"],
               "mAP50": result["metrics/mAP_0.5"], "mAP50-95": result["metrics/mAP_0.5:0.95"],
               "latency_ms": cpu_latency_ms(Path(result["best"]), imgsz)}
        if "test/mAP_0.5:0.95" in result:
            row.update({"test mAP50": result["test/mAP_0.5"], "test mAP50-95": result["test/mAP_0.5:0.95"]})
        rows.append(row)
    return rows


def gap_closed(teacher: float, alone: float, distilled: float) -> Optional[float]:
    """Share of the teacher's lead over the student alone that distillation wins back (None: no lead)."""
    return (distilled - alone) / (teacher - alone) if teacher - alone > 1e-9 else None


def format_table(rows: list[dict]) -> str:
    """The table; rows in the order teacher, student alone, then distilled students get a gap line each under it,
    on the test split when there is one (val chose each best.pt, so its figures flatter them: reference only)."""
    test = all("test mAP50-95" in r for r in rows)
    head = f"{'model':<40}{'params':>10}{'GFLOPs':>8}{'val mAP50-95':>14}"
    head += f"{'test mAP50':>12}{'test mAP50-95':>15}" if test else f"{'val mAP50':>11}"
    head += f"{'CPU ms/img':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['model']:<40}{r['params'] / 1e6:>9.2f}M{r['gflops']:>8.2f}{r['mAP50-95']:>14.3f}"
        line += f"{r['test mAP50']:>12.3f}{r['test mAP50-95']:>15.3f}" if test else f"{r['mAP50']:>11.3f}"
        lines.append(line + f"{r['latency_ms']:>12.1f}")
    key = "test mAP50-95" if test else "mAP50-95"
    if len(rows) >= 3:
        teacher, alone = rows[0][key], rows[1][key]
        for r in rows[2:]:
            what = "distillation" if len(rows) == 3 else r["model"].split(" ", 2)[-1]  # "distilled, + unlabeled"
            share = gap_closed(teacher, alone, r[key])
            lines.append(f"{what}: {100 * (r[key] - alone):+.1f} points {'test' if test else 'val'} mAP50-95 "
                         f"over the student alone; "
                         + (f"closes {100 * share:.0f}% of the teacher's {100 * (teacher - alone):.1f}-point lead"
                            if share is not None else "the teacher is not ahead of the student alone"))
    return "\n".join(lines)


def plot_map_per_epoch(curves: dict[str, Path], out: Path) -> Path:
    """Val mAP50-95 per epoch of each run, in one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), tight_layout=True)
    for label, csv_path in curves.items():
        rows = read_results(csv_path)
        ax.plot([r["epoch"] for r in rows], [r["metrics/mAP_0.5:0.95"] for r in rows], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    ax.set_title("yolodistill quickstart: val mAP of every run")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run(out: str | Path, *, plan: Optional[Plan] = None, **options) -> dict:
    """The quickstart pipeline; returns the table rows and the paths it wrote. `options`: QuickstartOptions' fields
    (the `yolodistill quickstart` flags); `plan`: sizes other than the packaged ones (`fast` then only shortens
    the benchmark)."""
    options = QuickstartOptions(out=str(out), **options)
    fast, device, noplots = options.fast, options.device, options.noplots
    chosen = plan or Plan.named("fast" if fast else "default")
    overrides = {f.name: getattr(options, f.name) for f in fields(Plan) if hasattr(options, f.name)}
    plan = replace(chosen, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stages: dict[str, float] = {}  # minutes per stage: where the time went, in the summary

    def lap(stage: str) -> None:
        stages[stage] = (time.time() - t0) / 60 - sum(stages.values())

    LOGGER.info(f"quickstart: {plan}")
    data = prepare_data(out, plan)
    lap("data")
    teacher = prepare_teacher(out, plan, data, device, noplots=noplots)
    lap("teacher")
    runs = {f"teacher {Path(plan.teacher_cfg).stem}": {"save_dir": str(out / "teacher"), "best": str(teacher)}}
    runs[f"teacher {Path(plan.teacher_cfg).stem}"].update(val_metrics(teacher, data, plan, device, out))
    common = dict(cfg=plan.student_cfg, epochs=plan.student_epochs, noplots=noplots)
    for name in ("student", "distilled", "unlabeled"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    student_label = Path(plan.student_cfg).stem
    runs[f"student {student_label} alone"] = train_run(out, "student", plan, data, device, **common)
    lap("student alone")
    distilled = f"student {student_label} distilled" + (", labeled" if plan.n_unlabeled else "")
    runs[distilled] = train_run(out, "distilled", plan, data, device, **common, t_weights=str(teacher),
                                **plan.distill_options())
    lap("student distilled")
    if plan.n_unlabeled:  # footage the teacher never saw, beside every labeled batch (soft terms only)
        runs[f"student {student_label} distilled, + unlabeled"] = train_run(
            out, "unlabeled", plan, data, device, **common, t_weights=str(teacher), **plan.distill_options(),
            unlabeled=[str(Path(data).parent / "images" / "unlabeled")])
        lap("student distilled + unlabeled")
    if plan.n_test:
        for result in runs.values():
            result.update(val_metrics(Path(result["best"]), data, plan, device, out, task="test"))
        lap("test split")
    rows = summary_rows(runs, plan.imgsz)
    table = format_table(rows)
    plot = plot_map_per_epoch({k: Path(v["save_dir"]) / "results.csv" for k, v in runs.items()},
                              out / "map_per_epoch.png")
    lap("table and plot")
    # the distilled student to deploy is the one val prefers (test has not chosen anything)
    chosen = max((k for k in runs if " distilled" in k), key=lambda k: runs[k]["metrics/mAP_0.5:0.95"])
    LOGGER.info(f"deploying {chosen}: the distilled student with the best val mAP50-95")
    deploy = deploy_student(out, teacher, Path(runs[chosen]["best"]), fast=fast)
    lap("export and benchmark")
    minutes = (time.time() - t0) / 60
    timing = f"quickstart finished in {minutes:.1f} min (" + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + ")"
    (out / "summary.txt").write_text(f"{table}\n\n{deploy['table']}\n\n{timing}\n")
    LOGGER.info(f"\n{table}\n\n{deploy['table']}\n\nplot: {plot}\nbenchmark plot: {deploy['plot']}\n"
                f"student ONNX: {deploy['onnx']}\ntable: {out / 'summary.txt'}\n{timing}")
    # Rows in the order teacher, student alone, student distilled[, + unlabeled] (benchmarks/quickstart_seeds.py).
    return {"rows": rows, "plot": str(plot), "table": str(out / "summary.txt"), "minutes": minutes, "stages": stages,
            "onnx": deploy["onnx"], "ratios": deploy["ratios"]}


def deploy_student(out: Path, teacher: Path, student: Path, *, fast: bool = False) -> dict:
    """The deployment step: the distilled student to a parity-checked ONNX file, then teacher vs student on
    onnxruntime (CPU), side by side: latency, throughput, memory, params, GFLOPs and their ratios."""
    from .deploy.benchmark import benchmark
    from .deploy.export import export

    onnx = export(student)["onnx"]
    bench_dir = out / "benchmark"
    if bench_dir.exists():
        shutil.rmtree(bench_dir)
    bench = benchmark([teacher, student], backend="onnxruntime", runs=40 if fast else 200, warmup=5 if fast else 20,
                      project=str(out), name=bench_dir.name, exist_ok=True, show=False)
    table = (bench_dir / "benchmark.txt").read_text().strip()
    return {"onnx": onnx, "ratios": bench["ratios"], "table": table, "plot": str(bench_dir / "benchmark.png")}


def val_metrics(weights: Path, data: Path, plan: Plan, device: str, out: Path, task: str = "val") -> dict:
    """mAP50 and mAP50-95 of a checkpoint on the plan's val split (yolov5's metric names) or test split (the same
    names under test/)."""
    from .detection.inference import val

    res = val(str(weights), str(data), imgsz=plan.imgsz, batch_size=plan.batch_size * 2, device=device, workers=2,
              task=task, project=str(out), name=f"{weights.parents[1].name}_{task}", exist_ok=True)
    prefix = "metrics/" if task == "val" else f"{task}/"
    return {f"{prefix}mAP_0.5": res["metrics/mAP_0.5"], f"{prefix}mAP_0.5:0.95": res["metrics/mAP_0.5:0.95"]}
