"""Is an exported ONNX file faithful to its PyTorch model? The rule, from the arithmetic.

PyTorch and onnxruntime both run the network in float32 (or float16 for --half), each rounding every multiply-add,
in an order set by the library and the CPU's vector width (AVX-512, AVX2, or scalar kernels). Each therefore misses
exact arithmetic by about the unit roundoff times how much the network amplifies a rounding error on the way to
that output: its conditioning, a property of the weights and the input, not of the export. Outputs differ in scale
by 10^3 (a detector's box coordinates in pixels against objectness in [0, 1]) and networks in conditioning by as
much (a freshly initialised yolov5n with one batch's BatchNorm statistics misses exact float64 by 5e-3 px on a
box centre in PyTorch float32), so a fixed element-wise 1e-3 is tight on one output and loose on another, and
refused a sound file on some CPUs for some models (issue 27: 2 of 1764 outputs, 0.13 px).

So the limit is measured on the model and the input themselves, on real photos (yolov5's two sample images, or
the dataset's val images with `--data`):
- exact:  the model in float64 (unit roundoff 2^-53: exact for this purpose);
- noise:  how far PyTorch itself, in the file's precision (float32, or float16 for --half), is from exact;
- error:  how far onnxruntime running the file is from exact;
each per output group (a detector's box centres and sizes in pixels, objectness, class scores; a classifier's
logits), as the group's largest and mean distance. The file is faithful when in every group
    max error <= NOISE_FACTOR * max noise + floor   and   mean error <= NOISE_FACTOR * mean noise + floor.
The max catches a defect in one corner of the output, the mean one that shifts everything a little. The floor is
FLOOR_ULPS ulps of the group's mean |value|, and of 1 for probabilities: onnxruntime's sigmoid errs by ~1e-7
absolute where PyTorch's is nearly exact, which on an objectness of 0.01 is 100x PyTorch's error.
NOISE_FACTOR = 10, from `python benchmarks/parity_noise.py` (record benchmarks/records/parity_noise.json; 3 seeds of
yolov5n at 64 and 160 px and two classifiers, fresh, with BatchNorm statistics of data, or trained, under the four
kernel paths of an AVX-512 CPU: PyTorch's scalar, AVX2 and AVX-512 kernels, oneDNN held to SSE4.1):
- 256 sound files (FP32 and FP16) all pass; where the floor does not decide, error/noise reaches 4.95 (FP32) and
  2.52 (FP16). The element-wise rule before (1e-3 + 1e-3|ref| FP32, 2e-2 + 2e-2|ref| FP16) refused 61 of them.
- 424 broken FP32 files (a SiLU dropped, a nearest Resize made bilinear, the input's channels reversed or its
  height and width swapped, the first conv's weights rounded to bfloat16) all fail, the closest at 78x its noise;
  the rule before let 44 of them through. (A freshly initialised yolov5n is left out: its outputs sit at the
  Detect biases whatever the input, so no defect shows in them, under either rule.)

A Q/DQ (INT8) graph cannot be judged this way: an activation within float error of a rounding boundary rounds the
other way in one runtime, a whole quantization step, and the flip spreads through later layers (measured on a
calibrated yolov5n: identical after the first conv, 3% of elements off by one step after the second, 31% slightly
off by the fifth). Its rule is on the mean: mean |onnxruntime - torch| <= INT8_MEAN_RTOL * mean |torch|; that flip
noise measured 1.4%, against 2.5% for the quantization itself, and dropped quantizers are caught by the Q/DQ node
count instead. `--tolerance ATOL RTOL` replaces either rule by the element-wise |ort - torch| <= ATOL + RTOL*|torch|
(for INT8: the mean limit RTOL).

For a detector the boxes after NMS are compared as well and printed: a figure for the reader, not part of the rule,
because a box whose score sits at the threshold comes and goes with any rounding.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..errors import UserError
from .compare import detector_nms, matched_boxes, normalise, sample_images
from .deployable import CLASSIFY, DETECT, Deployable

NOISE_FACTOR = 10.0
FLOOR_ULPS = 16
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "fp16": 2.0 ** -11}
INT8_MEAN_RTOL = 0.05


class ParityError(UserError):
    """onnxruntime's output of the exported file disagrees with PyTorch's beyond the rule."""


@dataclass
class GroupParity:
    """One output group under the noise rule: maxima over the group's elements."""

    name: str  # "xy (px)", "wh (px)", "objectness", "class", "logits"
    error: float  # max |onnxruntime - exact|
    noise: float  # max |PyTorch in the file's precision - exact|
    limit: float  # NOISE_FACTOR * noise + floor
    mean_error: float  # the same on the mean over the group's elements: a broken file moves them all
    mean_noise: float
    mean_limit: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.limit and self.mean_error <= self.mean_limit

    @property
    def ratio(self) -> float:
        """How far past the rule's factor this group is: max(error / noise, mean error / mean noise)."""
        return max(self.error / max(self.noise, 1e-300), self.mean_error / max(self.mean_noise, 1e-300))


@dataclass
class ParityReport:
    precision: str  # fp32 | fp16 | int8
    max_abs_diff: float  # max |onnxruntime - PyTorch float32|: what a user comparing the two sees
    mean_rel_diff: float  # mean |onnxruntime - PyTorch float32| / mean |PyTorch float32|
    elements: int
    images: int
    where: str  # which images the check ran on
    groups: list[GroupParity] = field(default_factory=list)  # the noise rule (fp32, fp16)
    tolerance: Optional[tuple[float, float]] = None  # the user's --tolerance, which replaces the rule
    outside: int = 0  # elements outside the user's ATOL + RTOL * |ref|
    boxes: Optional[tuple[int, int]] = None  # detectors: (PyTorch's boxes after NMS, of those found in onnxruntime's)

    @property
    def rule(self) -> str:
        if self.precision == "int8":
            return "mean"
        return "elementwise" if self.tolerance else "noise"

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.mean_rel_diff):
            return False
        if self.rule == "mean":
            return self.mean_rel_diff <= (self.tolerance[1] if self.tolerance else INT8_MEAN_RTOL)
        if self.rule == "elementwise":
            return self.outside == 0
        return all(g.passed for g in self.groups)

    def describe(self) -> str:
        """The rule's figures in one clause."""
        if self.rule == "mean":
            limit = self.tolerance[1] if self.tolerance else INT8_MEAN_RTOL
            return f"mean |diff| {self.mean_rel_diff:.2%} of mean |output| (limit {limit:.0%})"
        if self.rule == "elementwise":
            atol, rtol = self.tolerance
            return f"{self.outside}/{self.elements} outside atol {atol:g} + rtol {rtol:g} * |ref| (--tolerance)"
        pairs = ", ".join(f"{g.name} {g.error:.2g} vs {g.noise:.2g}" for g in self.groups)
        return (f"largest distance from float64, onnxruntime vs PyTorch {self.precision} "
                f"(limit {NOISE_FACTOR:g}x): {pairs}")

    def summary(self) -> str:
        boxes = f"; boxes after NMS: {self.boxes[1]}/{self.boxes[0]} of PyTorch's found" if self.boxes else ""
        images = f"{self.images} image{'s' if self.images > 1 else ''}"
        return (f"parity with PyTorch through onnxruntime on {images} ({self.where}): "
                f"max |diff| {self.max_abs_diff:.3g}, {self.describe()}{boxes}")

    def failure(self) -> str:
        """Why the file failed, for the one-line error."""
        if self.rule != "noise" or not np.isfinite(self.mean_rel_diff):
            return f"onnxruntime differs from PyTorch by up to {self.max_abs_diff:.3g}; {self.describe()}"
        worst = max((g for g in self.groups if not g.passed), key=lambda g: g.ratio if np.isfinite(g.error) else np.inf)
        how, error, noise, limit = (("up to", worst.error, worst.noise, worst.limit) if not worst.error <= worst.limit
                                    else ("on average", worst.mean_error, worst.mean_noise, worst.mean_limit))
        return (f"onnxruntime differs from PyTorch by up to {self.max_abs_diff:.3g}; its {worst.name} output is off "
                f"exact (float64) arithmetic {how} {error:.3g} where PyTorch's own {self.precision} rounding "
                f"reaches {noise:.3g} (limit {NOISE_FACTOR:g}x + {FLOOR_ULPS} ulps = {limit:.3g})")


class OutputGroup(NamedTuple):
    name: str
    columns: slice  # of the output's last axis
    probability: bool  # a sigmoid's output in [0, 1], whose kernels err by an absolute amount (see FLOOR_ULPS)


def output_groups(task: str, width: int) -> list[OutputGroup]:
    """Columns of the last output axis that share a unit: a detector's (B, N, 5 + nc) or a classifier's logits."""
    if task == DETECT:
        groups = [OutputGroup("xy (px)", slice(0, 2), False), OutputGroup("wh (px)", slice(2, 4), False),
                  OutputGroup("objectness", slice(4, 5), True)]
        return groups + [OutputGroup("class", slice(5, None), True)] if width > 5 else groups
    return [OutputGroup("logits", slice(None), False)]


def parity_images(dep: Deployable, batch: int, files: Sequence[Path] = ()) -> tuple[torch.Tensor, str]:
    """(batch, 3, H, W) real images the model's input expects (normalised for a classifier), cycled to fill the
    batch: `files` if given, else yolov5's two sample photos. Not the tracing input, so a graph that baked that in
    shows up here."""
    images, where = sample_images(dep.imgsz, files=files)
    if dep.task == CLASSIFY:
        images = normalise(images, dep.metadata["mean"], dep.metadata["std"])
    return torch.from_numpy(np.concatenate([images[i % len(images)] for i in range(batch)])), where


def check_parity(dep: Deployable, session, precision: str, *, batch: int, tolerance=None,
                 files: Sequence[Path] = ()) -> ParityReport:
    """Run the file (an onnxruntime session) and the model on the same real images and judge the difference."""
    x, where = parity_images(dep, batch, files)
    reference = _forward(dep.model, x)
    feed = x.numpy().astype(np.float16 if "float16" in session.get_inputs()[0].type else np.float32)
    got = session.run(None, {session.get_inputs()[0].name: feed})[0].astype(np.float64)
    if got.shape != reference.shape:
        raise ParityError(f"parity check failed: onnxruntime output shape {got.shape}, PyTorch {reference.shape}")
    diff = np.abs(got - reference)
    finite = bool(np.isfinite(got).all())
    report = ParityReport(
        precision=precision, max_abs_diff=float(diff.max()) if finite else float("inf"),
        mean_rel_diff=float(diff.mean() / max(float(np.abs(reference).mean()), 1e-12)) if finite else float("inf"),
        elements=int(diff.size), images=batch, where=where, tolerance=tuple(tolerance) if tolerance else None)
    if report.rule == "elementwise":
        atol, rtol = report.tolerance
        report.outside = int((~(diff <= atol + rtol * np.abs(reference))).sum())  # NaN counts as outside
    elif report.rule == "noise" and finite:
        report.groups = noise_rule(dep.model, dep.task, x, got, precision, reference=reference)
    if dep.task == DETECT and finite:
        want, have = detector_nms(reference), detector_nms(got)
        report.boxes = (sum(map(len, want)), sum(matched_boxes(w, h) for w, h in zip(want, have)))
    return report


def noise_rule(model: torch.nn.Module, task: str, x: torch.Tensor, got: np.ndarray, precision: str, *,
               reference: Optional[np.ndarray] = None) -> list[GroupParity]:
    """Judge another runtime's output `got` for input `x` against `model`'s own rounding in `precision` (fp32 or
    fp16), per output group; `reference` is the model's float32 output if already computed."""
    exact = _forward(deepcopy(model).double(), x.double())
    own = reference if reference is not None else _forward(model, x.float())
    if precision == "fp16":
        try:
            own = _forward(deepcopy(model).half(), x.half())
        except RuntimeError:  # an op without float16 CPU kernels in this torch: rounding error is first-order in
            own = exact + (own - exact) * (UNIT_ROUNDOFF["fp16"] / UNIT_ROUNDOFF["fp32"])  # the unit roundoff
    got = np.asarray(got, np.float64)
    groups = []
    for name, cols, probability in output_groups(task, got.shape[-1]):
        error, noise = np.abs(got[..., cols] - exact[..., cols]), np.abs(own[..., cols] - exact[..., cols])
        scale = 1.0 if probability else float(np.abs(exact[..., cols]).mean())
        floor = FLOOR_ULPS * UNIT_ROUNDOFF[precision] * scale
        top, mean = float(noise.max()), float(noise.mean())
        groups.append(GroupParity(name=name, error=float(error.max()), noise=top, limit=NOISE_FACTOR * top + floor,
                                  mean_error=float(error.mean()), mean_noise=mean,
                                  mean_limit=NOISE_FACTOR * mean + floor))
    return groups


def _forward(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The model's first output as float64 numpy."""
    with torch.no_grad():
        y = model(x)
    return (y[0] if isinstance(y, (tuple, list)) else y).double().numpy()
