"""`yolodistill export` and `yolodistill benchmark`: their flags are the fields of deploy/options.py."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..options import add_command
from .options import BENCHMARK_DOC, EXPORT_DOC, BenchmarkOptions, ExportOptions


def add_deploy(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "export", ExportOptions, _run_export, description=EXPORT_DOC,
                help="student checkpoint -> ONNX (parity-checked) and a TensorRT engine")
    add_command(sub, "benchmark", BenchmarkOptions, _run_benchmark, description=BENCHMARK_DOC,
                help="teacher vs student: latency, throughput, memory, params, GFLOPs")


def _run_export(options: ExportOptions) -> None:
    from .export import export

    export(**asdict(options))


def _run_benchmark(options: BenchmarkOptions) -> None:
    from .benchmark import benchmark

    benchmark(**asdict(options))
