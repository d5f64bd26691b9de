"""Peak memory for `yolodistill benchmark`, per model. On the CPU each model is measured in a fresh subprocess
(the peak resident set of a process is all one can read, and a shared process would mix the two models): the
growth of the process's peak RSS from just before the model is loaded (ONNX session created; for torch, the FP32
weights plus what inference adds) to after the timed runs. On CUDA it is the device memory the model holds, read
from the driver.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .deployable import load_deployable

LOGGER = logging.getLogger("yolodistill")


def _status_mb(key: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:  # no /proc: not Linux
        return None
    return None


def _memory_baseline() -> float:
    """Current RSS after resetting the peak-RSS mark (Linux: write 5 to clear_refs), so the peak read later
    is this model's, not an import's transient; elsewhere the lifetime peak (an underestimate at worst)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_mb("VmRSS")
        if rss is not None:
            return rss
    except OSError:  # no /proc, or clear_refs not writable: fall back to the lifetime peak
        return _peak_rss_mb()
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _memory_worker(args: argparse.Namespace) -> dict:
    """Runs in a fresh process: peak memory one model needs on the CPU (see the module docstring)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.backend == "onnxruntime":
        import onnx
        import onnxruntime  # noqa: F401  (imported before the baseline: its libraries are not the model's)
        from ..runtime.onnx_file import ort_session

        graph_input = onnx.load(args.file).graph.input[0]
        fp16 = graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:]
        x = np.random.default_rng(0).random([args.batch, *dims]).astype(np.float16 if fp16 else np.float32)
        base = _memory_baseline()
        session = ort_session(args.file, threads=args.threads)
        for _ in range(args.runs):
            session.run(None, {graph_input.name: x})
        return {"peak_memory_MB": _peak_rss_mb() - base}
    dep = load_deployable(args.file, imgsz=args.imgsz)
    model, x = dep.model, dep.example_input(args.batch)
    weights_mb = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**20
    base = _memory_baseline()
    with torch.no_grad():
        for _ in range(args.runs):
            model(x)
    return {"peak_memory_MB": weights_mb + _peak_rss_mb() - base}


def measure_memory_cpu(backend: str, files: Sequence[Path], *, batch: int, threads: int, imgsz,
                       runs: int = 3) -> list[float]:
    """Peak memory (MB) of each model, each in its own fresh process; the processes run at the same time (a
    process's peak RSS is its own, and the imports that dominate their run time overlap)."""
    procs = []
    for file in files:
        cmd = [sys.executable, "-m", "yolodistill.deploy.benchmark_memory", "--memory-worker", "--backend", backend,
               "--file", str(file), "--batch", str(batch), "--threads", str(threads), "--runs", str(runs)]
        if imgsz:
            cmd += ["--imgsz", *[str(s) for s in imgsz]]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    peaks = []
    for file, proc in zip(files, procs):
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            LOGGER.warning(f"WARNING: memory of {file.name} not measured: {stderr.strip().splitlines()[-1:]}")
            peaks.append(float("nan"))
        else:
            peaks.append(float(json.loads(stdout.strip().splitlines()[-1])["peak_memory_MB"]))
    return peaks


def measure_memory_cuda(make_runner: Callable[[], Callable[[], object]]) -> tuple[float, Callable[[], object]]:
    """Device memory taken by loading and running a model, from the driver's free-memory count."""
    torch.cuda.synchronize()
    free0 = torch.cuda.mem_get_info()[0]
    run = make_runner()
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    return (free0 - torch.cuda.mem_get_info()[0]) / 2**20, run


def _worker_main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--memory-worker", action="store_true", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--imgsz", type=int, nargs="*", default=None)
    args = p.parse_args(argv)
    print(json.dumps(_memory_worker(args)))


if __name__ == "__main__":
    _worker_main()
