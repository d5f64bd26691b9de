"""`yolodistill export` and `yolodistill benchmark` (flags in yolov5 export.py's spelling where it has one)."""

from __future__ import annotations

import argparse
import logging

from ..options import add_shared, flag


EXPORT_DOC = ("Export a detection or classification checkpoint (plain, --qat INT8 or 2:4 sparse; the checkpoint "
              "says which) to ONNX with the TorchScript exporter, check it with the ONNX checker and against "
              "PyTorch through onnxruntime, and optionally build a TensorRT engine. Files go beside the weights. "
              "INT8 is a Q/DQ ONNX, from a --qat student's ranges or, with --int8 --data, from ranges calibrated "
              "on training images; an INT8 detector must have Q/DQ on every conv, residual-add and concatenation "
              "input.")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="student checkpoint -> ONNX (parity-checked) and a TensorRT engine",
                       description=EXPORT_DOC)
    flag(p, "--weights", required=True, help="checkpoint: a YOLOv5 detector or a yolodistill classifier")
    flag(p, "--include", nargs="+", default=["onnx"], help="onnx, engine (engine implies onnx)")
    flag(p, "--imgsz", "--img", "--img-size", type=int, nargs="+", default=None,
         help="image size h [w] (default: the size the checkpoint was trained at)")
    flag(p, "--batch-size", "--batch", type=int, default=1, help="batch size traced (and TensorRT's opt batch)")
    flag(p, "--dynamic", action="store_true", help="dynamic batch axis")
    flag(p, "--half", action="store_true", help="FP16 ONNX (and FP16 TensorRT engine)")
    flag(p, "--int8", action="store_true",
         help="INT8 Q/DQ ONNX and engine: implied for a --qat student (its ranges); otherwise give --data to "
              "calibrate the ranges on training images (post-training INT8)")
    flag(p, "--data", default=None, help="dataset yaml whose training images calibrate --int8 (no augmentation) "
                                         "and whose val images check parity (default: yolov5's sample photos)")
    flag(p, "--calib-images", type=int, default=512, help="training images that calibrate --int8 --data")
    flag(p, "--simplify", action="store_true", help="simplify the ONNX graph with onnxslim")
    flag(p, "--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    flag(p, "--output", default=None, help="ONNX path (default: the weights path with .onnx)")
    flag(p, "--tolerance", type=float, nargs=2, metavar=("ATOL", "RTOL"), default=None,
         help="parity judged element-wise, every |ort - torch| <= ATOL + RTOL*|torch|, instead of against PyTorch's "
              "own rounding error (the default rule for FP32/FP16); for a Q/DQ (INT8) model the limit on "
              "mean |ort - torch| / mean |torch| (default 0.05)")
    flag(p, "--workspace", type=float, default=4.0, help="TensorRT workspace (GiB)")
    flag(p, "--max-batch", type=int, default=None, help="TensorRT max batch with --dynamic (default --batch)")
    add_shared(p, trust_checkpoint=False, workers=2)
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from .export import export

    include = list(dict.fromkeys(["onnx", *args.include]))
    export(args.weights, include=include, imgsz=args.imgsz, batch=args.batch_size, dynamic=args.dynamic,
           half=args.half, int8=args.int8, simplify=args.simplify, opset=args.opset, output=args.output,
           tolerance=args.tolerance, workspace=args.workspace, max_batch=args.max_batch, trust=args.trust_checkpoint,
           data=args.data, calib_images=args.calib_images, workers=args.workers)


def add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="teacher vs student: latency, throughput, memory, params, GFLOPs",
                       description="Time the models side by side (interleaved rounds) on one backend and print "
                                   "the table and the ratios (speed x, memory x, params x, GFLOPs x) against the "
                                   "first; saves benchmark.csv, ratios.csv, benchmark.json and benchmark.png.")
    flag(p, "--weights", nargs="+", required=True, help="teacher.pt first, then one or more students")
    flag(p, "--backend", choices=["onnxruntime", "torch", "tensorrt"], default="onnxruntime",
         help="onnxruntime (CPU), torch (CPU or --device 0), tensorrt (needs TensorRT and CUDA)")
    flag(p, "--imgsz", "--img", "--img-size", type=int, nargs="+", default=None,
         help="image size h [w] (default: each checkpoint's training size)")
    flag(p, "--batch-size", "--batch", type=int, default=1, help="images per run")
    flag(p, "--runs", type=int, default=200, help="timed runs per model")
    flag(p, "--warmup", type=int, default=20, help="untimed runs first")
    flag(p, "--threads", type=int, default=0, help="CPU threads (0: the runtime's default)")
    flag(p, "--device", default="cpu", help="torch backend: cpu or a cuda device such as 0")
    flag(p, "--half", action="store_true", help="FP16 (torch on CUDA, tensorrt)")
    flag(p, "--no-memory", dest="memory", action="store_false", help="skip the per-model memory measurement")
    add_shared(p, project="runs/benchmark", name="exp", exist_ok=False, trust_checkpoint=False)
    p.set_defaults(func=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..training import increment_dir
    from .benchmark import benchmark

    out = increment_dir(Path(args.project) / args.name, args.exist_ok)
    benchmark(args.weights, backend=args.backend, imgsz=args.imgsz, batch=args.batch_size, runs=args.runs,
              warmup=args.warmup, threads=args.threads, device=args.device, half=args.half, out=out,
              memory=args.memory, trust=args.trust_checkpoint)
    logging.getLogger("yolodistill").debug(out)
