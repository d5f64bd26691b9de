"""The options of `yolodistill export` and `yolodistill benchmark` (yolov5 export.py's spelling where it has one),
declared once (yolodistill.options); no torch here, so building the command-line parser stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..options import option, shared

MIN_OPSET = 17  # LayerNorm and the per-channel Q/DQ forms

EXPORT_DOC = ("Export a detection or classification checkpoint (plain, --qat INT8 or 2:4 sparse; the checkpoint "
              "says which) to ONNX with the TorchScript exporter, check it with the ONNX checker and against "
              "PyTorch through onnxruntime, and optionally build a TensorRT engine. Files go beside the weights. "
              "INT8 is a Q/DQ ONNX, from a --qat student's ranges or, with --int8 --data, from ranges calibrated "
              "on training images; an INT8 detector must have Q/DQ on every conv, residual-add and concatenation "
              "input.")
BENCHMARK_DOC = ("Time the models side by side (interleaved rounds) on one backend and print the table and the "
                 "ratios (speed x, memory x, params x, GFLOPs x) against the first; saves benchmark.csv, ratios.csv, "
                 "benchmark.json and benchmark.png.")


@dataclass
class ExportOptions:
    """`yolodistill export`: a student checkpoint to a parity-checked ONNX file and, optionally, a TensorRT engine."""

    weights: str = option("", "checkpoint: a YOLOv5 detector or a yolodistill classifier", required=True)
    include: list = option(["onnx"], "onnx, engine (engine implies onnx)")
    imgsz: Optional[list] = option(None, "image size h [w] (default: the size the checkpoint was trained at)",
                                   flags=("--img", "--img-size"), type=int, nargs="+")
    batch_size: int = option(1, "batch size traced (and TensorRT's opt batch)", flags=("--batch",))
    dynamic: bool = option(False, "dynamic batch axis")
    half: bool = option(False, "FP16 ONNX (and FP16 TensorRT engine)")
    int8: bool = option(False, "INT8 Q/DQ ONNX and engine: implied for a --qat student (its ranges); otherwise give "
                               "--data to calibrate the ranges on training images (post-training INT8)")
    data: Optional[str] = option(None, "dataset yaml whose training images calibrate --int8 (no augmentation) and "
                                       "whose val images check parity (default: yolov5's sample photos)")
    calib_images: int = option(512, "training images that calibrate --int8 --data")
    simplify: bool = option(False, "simplify the ONNX graph with onnxslim")
    opset: int = option(MIN_OPSET, f"ONNX opset ({MIN_OPSET} or newer)")
    output: Optional[str] = option(None, "ONNX path (default: the weights path with .onnx)")
    tolerance: Optional[list] = option(None, "parity judged element-wise, every |ort - torch| <= ATOL + "
                                             "RTOL*|torch|, instead of against PyTorch's own rounding error (the "
                                             "default rule for FP32/FP16); for a Q/DQ (INT8) model the limit on "
                                             "mean |ort - torch| / mean |torch| (default 0.05)",
                                       type=float, nargs=2, metavar=("ATOL", "RTOL"))
    workspace: float = option(4.0, "TensorRT workspace (GiB)")
    max_batch: Optional[int] = option(None, "TensorRT max batch with --dynamic (default --batch)", type=int)
    trust_checkpoint: bool = shared("trust_checkpoint", False, group="")
    workers: int = shared("workers", 2, group="")


@dataclass
class BenchmarkOptions:
    """`yolodistill benchmark`: teacher vs students, side by side on one backend."""

    weights: list = option([], "teacher.pt first, then one or more students", nargs="+", required=True)
    backend: str = option("onnxruntime", "onnxruntime (CPU), torch (CPU or --device 0), tensorrt (needs TensorRT and "
                                         "CUDA)", choices=["onnxruntime", "torch", "tensorrt"])
    imgsz: Optional[list] = option(None, "image size h [w] (default: each checkpoint's training size)",
                                   flags=("--img", "--img-size"), type=int, nargs="+")
    batch_size: int = option(1, "images per run", flags=("--batch",))
    runs: int = option(200, "timed runs per model")
    warmup: int = option(20, "untimed runs first")
    threads: int = option(0, "CPU threads (0: the runtime's default)")
    device: str = option("cpu", "torch backend: cpu or a cuda device such as 0")
    half: bool = option(False, "FP16 (torch on CUDA, tensorrt)")
    memory: bool = option(True, "skip the per-model memory measurement", primary="--no-memory")
    project: str = shared("project", "runs/benchmark")
    name: str = shared("name", "exp")
    exist_ok: bool = shared("exist_ok", False)
    trust_checkpoint: bool = shared("trust_checkpoint", False)
    plot: bool = option(True, "write benchmark.png", cli=False)
    show: bool = option(True, "print the table", cli=False)
