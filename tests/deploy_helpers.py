"""What the deployment tests share (export, runtime, compression, benchmark, detect, parity): the CLI runner, its
one-line errors, copies of the session's weights, the parity judgement of an exported file, a fresh yolov5n."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from yolodistill import yolo_backend as yb
from yolodistill.cli import main
from yolodistill.deploy.deployable import DETECT
from yolodistill.deploy.onnx_parity import noise_rule
from yolodistill.runtime.tensorrt_engine import tensorrt_status

from .conftest import IMGSZ, one_torch_thread

TRT_OK = tensorrt_status()[0]  # where TensorRT builds engines, `--include engine` succeeds instead of failing


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Torch on one thread in every module that imports this fixture."""
    with one_torch_thread():
        yield


def run(*argv) -> int:
    return main([str(a) for a in argv])


def one_line_error(capsys, command: str, *argv) -> str:
    """Run `command argv`; expect exit 1 and a last stderr line 'yolodistill COMMAND: error: ...', no traceback."""
    capsys.readouterr()
    rc = run(command, *argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"yolodistill {command}: error: "), err
    return lines[0]


def copy_weights(src: Path, dst_dir: Path, name: str = "student.pt") -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dst_dir / name))


def leftovers(folder: Path) -> list[str]:
    """Every .onnx and temp file under `folder` (hidden ones included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".onnx", ".tmp"))


def assert_faithful(got: np.ndarray, model: nn.Module, x: torch.Tensor, task: str = DETECT,
                    precision: str = "fp32") -> None:
    """onnxruntime's output `got` for `x` is within the export's parity rule of `model` (onnx_parity.py: every
    output group within 10x the model's own rounding error in `precision`, measured against float64): the same
    judgement on a fresh input that the export made on its own."""
    groups = noise_rule(model, task, x, got, precision)
    assert all(g.passed for g in groups), groups


def detector_model(weights: Path) -> nn.Module:
    """The plain, unfused FP32 PyTorch model, returning decoded boxes (B, N, 5 + nc) first."""
    return yb.load_model(weights).eval()


def save_yolov5n(path: Path) -> Path:
    """A fresh yolov5n in the checkpoint form yolov5 writes (FP16 model, training options)."""
    from yolodistill.checkpoint import save_checkpoint_atomic

    torch.manual_seed(0)
    model = yb.build_model("yolov5n.yaml", nc=2)
    model.names = {0: "rect", 1: "circle"}
    save_checkpoint_atomic({"model": model.half(), "opt": {"imgsz": IMGSZ}}, path)
    return path
