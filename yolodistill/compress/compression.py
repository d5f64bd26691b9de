"""What `--qat` and `--sparsity 2:4` do to a student during (distillation) training, for both trainers.

prepare(): prune to 2:4 (masks fixed from here on), then swap in INT8 fake quantizers and calibrate their
activation ranges on a few training batches (or take the ranges of the checkpoint being resumed). The
teacher is untouched and keeps distilling. after_step() re-applies the masks. plain_copy() gives what a
checkpoint stores: a plain model (no quantizer modules, loadable by yolov5 itself) and the extra entries
`quant` (the INT8 ranges) and `sparsity` ("2:4") that export and validation read back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any, Optional

from torch import nn

from ..errors import UserError
from . import quant as q
from .sparsity import SparsityMasks, parse_pattern, prune_2to4

LOGGER = logging.getLogger("yolodistill")


class Compression:
    """--qat and --sparsity for one student."""

    def __init__(self, qat: bool = False, sparsity: Optional[str] = None):
        try:
            self.sparsity = parse_pattern(sparsity)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.qat = bool(qat)
        self.masks: Optional[SparsityMasks] = None

    @property
    def enabled(self) -> bool:
        return self.qat or self.sparsity is not None

    def prepare(self, model: nn.Module, *, calibration: Optional[Iterable[Any]] = None,
                forward: Optional[Callable[[Any], Any]] = None, quant_state: Optional[dict] = None,
                skip: Iterable[str] = ()) -> None:
        """Prune and/or quantize `model` in place, before its optimizer's EMA copy or any hook exists."""
        if self.sparsity:
            self.masks = prune_2to4(model, skip=skip)
            LOGGER.info(self.masks.describe())
        if not self.qat:
            return
        if quant_state:
            self._resume_quantized(model, quant_state)
            return
        layers = q.quantize_model(model)
        n = q.calibrate(model, calibration or (), forward)
        blocks = len(q.block_quantizers(model))
        LOGGER.info(f"QAT: INT8 fake quantization on {len(layers)} layers (per-channel weights, per-tensor "
                    f"inputs) and {blocks} residual-add/concatenation inputs, ranges calibrated on {n} batches")

    @staticmethod
    def _resume_quantized(model: nn.Module, quant_state: dict) -> None:
        try:
            q.attach_quantizers(model, quant_state)
        except ValueError as e:
            raise UserError(f"cannot resume QAT: {e}") from None
        # A format-1 run resumes only where block rules add nothing (a classifier): a detector would gain
        # quantizers with no range, and the run would save a state of neither scheme.
        if q.is_legacy_state(quant_state) and q.apply_block_rules(model):
            raise UserError(f"cannot resume QAT: the checkpoint's INT8 ranges are of an earlier scheme "
                            f"({quant_state['format']}: conv inputs only, no residual-add or concatenation ranges); "
                            f"start a new --qat run from its weights (--weights instead of --resume)")
        LOGGER.info("QAT: INT8 ranges taken from the checkpoint")

    def after_step(self) -> None:
        if self.masks is not None:
            self.masks.apply()

    def plain_copy(self, model: nn.Module) -> tuple[nn.Module, dict]:
        """A deep copy without quantizer modules, and the checkpoint entries that describe it."""
        copy = deepcopy(model)
        extra = {"sparsity": self.sparsity} if self.sparsity else {}
        if q.is_quantized(copy):
            extra["quant"] = q.strip_quantizers(copy)
        return copy, extra

    def remove(self) -> None:
        if self.masks is not None:
            self.masks.remove()
