"""`yolodistill benchmark`: teacher vs student (or any models) on one backend, side by side in one process.

Latency is timed in interleaved rounds (teacher block, student block, teacher block, ...) so that a noisy
machine slows both alike and the ratio stays honest. Peak memory is benchmark_memory.py's (a fresh subprocess
per model on a CPU, the driver's count on CUDA).
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch

from ..errors import UserError
from ..paths import increment_dir
from .benchmark_memory import measure_memory_cpu, measure_memory_cuda
from .deployable import Deployable, load_deployable
from .options import BenchmarkOptions

LOGGER = logging.getLogger("yolodistill")
BACKENDS = ("onnxruntime", "torch", "tensorrt")
COLUMNS = ("model", "task", "params_M", "GFLOPs", "latency_ms_median", "latency_ms_p90", "throughput_img_s",
           "peak_memory_MB", "file_MB")
RATIO_COLUMNS = ("speed_x", "throughput_x", "memory_x", "params_x", "GFLOPs_x", "speed_over_GFLOPs_ratio")


@dataclass
class ModelResult:
    model: str
    task: str
    params_M: float
    GFLOPs: float
    latency_ms_median: float = float("nan")
    latency_ms_p90: float = float("nan")
    throughput_img_s: float = float("nan")
    peak_memory_MB: float = float("nan")
    file_MB: float = float("nan")
    times_ms: list = field(default_factory=list, repr=False)


def gflops(dep: Deployable) -> float:
    """GFLOPs of one image, counting 2 per multiply-add of convs and matmuls (yolov5's convention, from thop)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        dep.model(dep.example_input(1))
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------------- runners
def _ort_runner(path: Path, threads: int, batch: int, dep: Deployable) -> Callable[[], object]:
    from ..runtime.onnx_file import ort_session

    session = ort_session(path, threads=threads)
    inp = session.get_inputs()[0]
    x = dep.example_input(batch).numpy().astype(np.float16 if "float16" in inp.type else np.float32)
    return lambda: session.run(None, {inp.name: x})


def _torch_runner(dep: Deployable, batch: int, device: torch.device, half: bool) -> Callable[[], object]:
    model = dep.model.to(device)
    x = dep.example_input(batch).to(device)
    if half:
        model, x = model.half(), x.half()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def run():
        y = model(x)
        sync()
        return y
    return run


def _trt_runner(engine: Path, batch: int, dep: Deployable) -> Callable[[], object]:
    from ..runtime.tensorrt_engine import TensorRTRunner

    runner = TensorRTRunner(engine)
    x = dep.example_input(batch).cuda()

    def run():
        y = runner.run_torch(x)
        torch.cuda.synchronize()
        return y
    return run


def time_side_by_side(runners: Sequence[Callable[[], object]], *, runs: int, warmup: int, rounds: int = 10,
                      progress: bool = True) -> list[list[float]]:
    """Milliseconds per call for each runner: `runs` calls each, in `rounds` interleaved blocks."""
    from tqdm import tqdm

    for run in runners:
        for _ in range(warmup):
            run()
    rounds = max(1, min(rounds, runs))
    blocks = [runs // rounds + (r < runs % rounds) for r in range(rounds)]  # exactly `runs` calls in all
    times: list[list[float]] = [[] for _ in runners]
    bar = tqdm(total=runs * len(runners), desc="timing", unit="run", disable=not progress,
               bar_format="{l_bar}{bar:10}{r_bar}")
    for block in blocks:
        for i, run in enumerate(runners):
            for _ in range(block):
                t0 = time.perf_counter()
                run()
                times[i].append((time.perf_counter() - t0) * 1000)
                bar.update()
    bar.close()
    return times


# ---------------------------------------------------------------------------------------------- the command
def _prepare(label: str, dep: Deployable, backend: str, out: Path, *, batch: int, half: bool, threads: int,
             cuda: bool, torch_device: torch.device) -> tuple["ModelResult", Path, Callable[[], None]]:
    """One model's row (params, GFLOPs, file size, CUDA memory), the file it runs from, and its timed call."""
    r = ModelResult(model=label, task=dep.task, params_M=sum(p.numel() for p in dep.model.parameters()) / 1e6,
                    GFLOPs=gflops(dep))
    artifact = Path(dep.source)
    if backend in ("onnxruntime", "tensorrt"):
        from .onnx_export import export_onnx

        artifact = export_onnx(dep, out / f"{label}.onnx", batch=batch, half=half and backend == "tensorrt").path
    if backend == "tensorrt":
        from .tensorrt import build_engine

        # an INT8 student's ONNX stays float32 (export_onnx): its float layers get FP16 from the builder
        artifact = build_engine(artifact, out / f"{label}.engine", half=half and not dep.quantized, int8=dep.quantized,
                                batch=batch, sparse=dep.sparsity is not None)
    r.file_MB = artifact.stat().st_size / 2**20
    if backend == "onnxruntime":
        run = _ort_runner(artifact, threads, batch, dep)
    elif backend == "tensorrt":
        r.peak_memory_MB, run = measure_memory_cuda(lambda: _trt_runner(artifact, batch, dep))
    elif cuda:
        r.peak_memory_MB, run = measure_memory_cuda(lambda: _torch_runner(dep, batch, torch_device, half))
    else:
        run = _torch_runner(dep, batch, torch_device, False)
    return r, artifact, run


def benchmark(weights: Sequence[Union[str, Path]], **options) -> dict:
    """Compare models (the first is the reference, usually the teacher); `options`: BenchmarkOptions' fields (the
    `yolodistill benchmark` flags, and plot, show). Writes benchmark.csv/.md/.json/.png to project/name."""
    options = BenchmarkOptions(weights=list(weights), **options)
    backend, batch, device, half = options.backend, options.batch_size, options.device, options.half
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: choose from {', '.join(BACKENDS)}")
    if not weights:
        raise UserError("--weights: give at least one checkpoint (teacher first, then students)")
    if options.runs < 1 or batch < 1:
        raise UserError("--runs and --batch must be at least 1")
    cuda = backend == "tensorrt" or (backend == "torch" and device not in ("", "cpu"))
    if cuda and not torch.cuda.is_available():
        raise UserError(f"--backend {backend} {'' if backend == 'tensorrt' else '--device ' + device} needs CUDA, "
                        f"and this machine has none: use --backend onnxruntime or --device cpu")
    out = increment_dir(Path(options.project) / options.name, options.exist_ok)
    out.mkdir(parents=True, exist_ok=True)
    deps = [load_deployable(w, imgsz=options.imgsz, trust=options.trust_checkpoint) for w in weights]
    labels = _labels([Path(w) for w in weights])
    if backend == "torch" and cuda:
        torch_device = torch.device(device if device.startswith("cuda") else f"cuda:{device}")
    else:
        torch_device = torch.device("cpu")
    threads = options.threads
    if threads and not cuda:
        torch.set_num_threads(threads)

    results, runners, artifacts = [], [], []
    for label, dep in zip(labels, deps):
        r, artifact, run = _prepare(label, dep, backend, out, batch=batch, half=half, threads=threads,
                                    cuda=cuda, torch_device=torch_device)
        results.append(r)
        artifacts.append(artifact)
        runners.append(run)
    if options.memory and not cuda:
        peaks = measure_memory_cpu(backend, artifacts, batch=batch, threads=threads, imgsz=options.imgsz)
        for r, peak in zip(results, peaks):
            r.peak_memory_MB = peak

    runs, warmup = options.runs, options.warmup
    LOGGER.info(f"Timing {len(runners)} models on {backend} ({_device_name(backend, torch_device)}), batch {batch}, "
                f"{runs} runs each in interleaved rounds after {warmup} warm-up runs")
    for r, times in zip(results, time_side_by_side(runners, runs=runs, warmup=warmup)):
        r.times_ms = times
        r.latency_ms_median = statistics.median(times)
        r.latency_ms_p90 = float(np.percentile(times, 90))
        r.throughput_img_s = batch * 1000 / float(np.mean(times))
    ratios = [ratio_row(results[0], r) for r in results[1:]]
    meta = {"backend": backend, "device": _device_name(backend, torch_device), "batch": batch, "runs": runs,
            "imgsz": list(deps[0].imgsz), "half": half, "threads": threads or "default",
            "date": time.strftime("%Y-%m-%d %H:%M"), "weights": [str(w) for w in weights]}
    table = format_table(results, ratios, meta)
    if options.show:
        print(table)
    _write(out, results, ratios, meta, table)
    if options.plot:
        plot_benchmark(results, meta, out / "benchmark.png")
    LOGGER.info(f"Results saved to {out}")
    return {"results": [_public(r) for r in results], "ratios": ratios, "meta": meta, "dir": str(out)}


def ratio_row(ref: ModelResult, r: ModelResult) -> dict:
    """How much faster/smaller `r` is than `ref` (> 1: better), and speed-up as a fraction of the GFLOPs ratio."""
    def div(a, b):
        return a / b if b and np.isfinite(a) and np.isfinite(b) else float("nan")
    row = {"model": f"{r.model} vs {ref.model}",
           "speed_x": div(ref.latency_ms_median, r.latency_ms_median),
           "throughput_x": div(r.throughput_img_s, ref.throughput_img_s),
           "memory_x": div(ref.peak_memory_MB, r.peak_memory_MB),
           "params_x": div(ref.params_M, r.params_M),
           "GFLOPs_x": div(ref.GFLOPs, r.GFLOPs)}
    row["speed_over_GFLOPs_ratio"] = div(row["speed_x"], row["GFLOPs_x"])
    return row


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the file stem, or run folder + stem when stems repeat (runs/*/weights/best.pt)."""
    labels = [p.stem for p in paths]
    if len(set(labels)) == len(labels):
        return labels
    runs = [p.resolve().parent.parent if p.resolve().parent.name == "weights" else p.resolve().parent for p in paths]
    labels = [f"{r.name}_{p.stem}" for r, p in zip(runs, paths)]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{i}_{p.stem}" for i, p in enumerate(paths)]


def _device_name(backend: str, device: torch.device) -> str:
    if backend == "tensorrt" or device.type == "cuda":
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _public(r: ModelResult) -> dict:
    d = asdict(r)
    d.pop("times_ms")
    return d


def format_table(results: Sequence[ModelResult], ratios: Sequence[dict], meta: dict) -> str:
    head = (f"{'model':<28}{'task':>9}{'params':>9}{'GFLOPs':>8}{'median ms':>11}{'p90 ms':>9}{'img/s':>9}"
            f"{'peak MB':>9}{'file MB':>9}")
    lines = [f"{meta['backend']} on {meta['device']}, batch {meta['batch']}, "
             f"{meta['imgsz'][0]}x{meta['imgsz'][1]}", head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.model[:27]:<28}{r.task:>9}{r.params_M:>8.2f}M{r.GFLOPs:>8.2f}{r.latency_ms_median:>11.2f}"
                     f"{r.latency_ms_p90:>9.2f}{r.throughput_img_s:>9.1f}{r.peak_memory_MB:>9.1f}{r.file_MB:>9.2f}")
    for q in ratios:
        lines.append(f"{q['model']}: {q['speed_x']:.2f}x faster (GFLOPs {q['GFLOPs_x']:.2f}x fewer: speed-up is "
                     f"{q['speed_over_GFLOPs_ratio']:.0%} of it), {q['throughput_x']:.2f}x throughput, "
                     f"{q['memory_x']:.2f}x less memory, {q['params_x']:.2f}x fewer params")
    return "\n".join(lines)


def _write(out: Path, results, ratios, meta, table: str) -> None:
    with open(out / "benchmark.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in results:
            w.writerow({k: v for k, v in _public(r).items() if k in COLUMNS})
    if ratios:
        with open(out / "ratios.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["model", *RATIO_COLUMNS])
            w.writeheader()
            w.writerows(ratios)
    (out / "benchmark.json").write_text(json.dumps(
        {"meta": meta, "results": [asdict(r) for r in results], "ratios": ratios}, indent=1))
    (out / "benchmark.txt").write_text(table + "\n")


def plot_benchmark(results: Sequence[ModelResult], meta: dict, path: Path) -> Path:
    """Four bar panels (latency with p90 whisker, throughput, peak memory, params and GFLOPs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.model for r in results]
    colors = ["#4c72b0"] + ["#dd8452", "#55a868", "#c44e52", "#8172b2"] * 4
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = [("latency, ms (median, p90 whisker)", [r.latency_ms_median for r in results],
               [[0] * len(results), [r.latency_ms_p90 - r.latency_ms_median for r in results]]),
              ("throughput, images/s", [r.throughput_img_s for r in results], None),
              ("peak memory, MB", [r.peak_memory_MB for r in results], None),
              ("GFLOPs per image", [r.GFLOPs for r in results], None)]
    for ax, (title, values, err) in zip(axes, panels):
        bars = ax.bar(names, values, yerr=err, color=colors[:len(names)], capsize=4)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    fig.suptitle(f"{meta['backend']} on {meta['device']}, batch {meta['batch']}, "
                 f"{meta['imgsz'][0]}x{meta['imgsz'][1]} ({meta['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
