"""Which device a run runs on, how it is seeded: the same for every task (where it writes: paths.increment_dir)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import UserError


def select_device(device: str) -> torch.device:
    """`--device` as yolov5 spells it ('' for the first GPU or the CPU, 'cpu', '0', 'cuda:1'), one device per
    process: several GPUs are torchrun's job (`torchrun --nproc_per_node N`)."""
    spec = str(device or "").strip().lower().replace("cuda:", "")
    if spec == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if "," in spec:
        raise UserError(f"--device {device}: one device per process; for several GPUs run "
                        f"`torchrun --nproc_per_node N -m yolodistill ...`")
    if not spec.isdigit():
        raise UserError(f"--device {device}: expected cpu or a CUDA device index such as 0")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if int(spec) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", int(spec))


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Python, numpy and torch (CPU and CUDA) generators; `deterministic` also asks torch for deterministic
    kernels, as yolov5's train.py does (its init_seeds: the same draws for the same seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        os.environ["PYTHONHASHSEED"] = str(seed)
