"""What to distil, as validated dataclasses: the single source the rest of the pipeline reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from .errors import UserError

# The distillation defaults. Why each, with the measurements behind it: docs/training.md#why-the-defaults.
# Output weight 1.0: the output term is on the per-image scale of yolov5's box/obj/cls items (scaled by the same hyp
# gains), so 1.0 weighs the teacher like the labels (why: docs/training.md#output-weight).
DEFAULT_OUTPUT_WEIGHT = 1.0
# Feature term: pkd is scale-free, so one weight fits any pair of models; MSE of raw activations follows the
# teacher's activation scale and hurt (why: docs/training.md#feature-loss-and-weight). Tune both weights by the
# train/distill/* curves in results_all.png.
DEFAULT_FEATURE_WEIGHT = 0.1
DEFAULT_FEATURE_LOSS = "pkd"
# Output loss: mse_ciou (mse's objectness and classes, boxes by CIoU on the task's scale): mse's box part is too
# small a share of its term to teach localization (why: docs/training.md#output-loss).
DEFAULT_OUTPUT_LOSS = "mse_ciou"
# What a run recorded before --output-loss existed used: the only loss there was.
OUTPUT_LOSS_BEFORE_THE_CHOICE = "mse"


@dataclass(frozen=True)
class LayerPair:
    """One student layer distilled from one teacher layer, named as `named_modules()` names them."""

    student: str
    teacher: str

    def __str__(self) -> str:
        return f"{self.student}:{self.teacher}"


@dataclass
class DistillConfig:
    """Which distillation terms are on, their weights, and the feature layer pairs."""

    output: bool = False
    feature: bool = False
    output_weight: float = DEFAULT_OUTPUT_WEIGHT
    feature_weight: float = DEFAULT_FEATURE_WEIGHT
    feature_loss: str = DEFAULT_FEATURE_LOSS
    output_loss: str = DEFAULT_OUTPUT_LOSS  # losses.OUTPUT_LOSSES
    # None means "the layers that feed Detect", resolved once both models are known.
    layers: Optional[tuple[LayerPair, ...]] = None
    feature_loss_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_weight < 0 or self.feature_weight < 0:
            raise UserError(f"distillation weights must be >= 0, got --d_weight {self.output_weight} "
                            f"--f_weight {self.feature_weight}")
        from .losses.registry import OUTPUT_LOSSES

        if self.output_loss not in OUTPUT_LOSSES:
            raise UserError(f"--output-loss must be one of {', '.join(OUTPUT_LOSSES)}, got {self.output_loss!r}")
        if self.layers is not None and not self.feature:
            raise UserError("--d_layers needs --d_feature (feature distillation is off)")
        if self.feature:
            # Checked here, before any data or model is loaded, not first when the distiller builds the loss.
            from .losses.registry import check_feature_loss

            check_feature_loss(self.feature_loss)

    @property
    def enabled(self) -> bool:
        return self.output or self.feature

    def to_dict(self) -> dict:
        """Plain-data form, stored in checkpoints and opt.yaml."""
        d = asdict(self)
        d["layers"] = None if self.layers is None else [str(p) for p in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        d = dict(d)
        d.setdefault("output_loss", OUTPUT_LOSS_BEFORE_THE_CHOICE)  # a checkpoint from before the choice
        layers = d.pop("layers", None)
        return cls(**d, layers=None if layers is None else parse_layer_pairs(layers))


def layer_name(token: str, flag: str = "--d_layers") -> str:
    """`17` -> `model.17` (a YOLOv5 layer index); anything else is taken as a module path."""
    token = token.strip()
    if not token:
        raise UserError(f"empty layer name in {flag}")
    return f"model.{int(token)}" if token.lstrip("-").isdigit() else token


def parse_layer_pairs(specs: Sequence[str], flag: str = "--d_layers") -> tuple[LayerPair, ...]:
    """Parse layer-pair tokens (spaces or commas between them): `S:T` pairs or a single `L` meaning the same
    layer in both models; `flag` names the option in messages."""
    pairs = []
    for spec in specs:
        for token in str(spec).replace(",", " ").split():
            student, sep, teacher = token.partition(":")
            if sep and not (student and teacher):
                raise UserError(f"{flag} entry {token!r} needs student_layer:teacher_layer")
            pairs.append(LayerPair(layer_name(student, flag), layer_name(teacher if sep else student, flag)))
    if not pairs:
        raise UserError(f"{flag} was given but names no layer")
    if len(set(pairs)) != len(pairs):
        raise UserError(f"{flag} repeats a pair: {' '.join(map(str, pairs))}")
    return tuple(pairs)
