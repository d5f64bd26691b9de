"""The options of `yolodistill train`: yolov5 train.py's (same names and defaults where they make sense) plus
distillation, compression and torchrun's; kept in opt.yaml and in last.pt for --resume."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Union

from .config import DistillConfig, parse_layer_pairs
from .errors import UserError

NOMINAL_BATCH = 64  # yolov5's nbs: gradients accumulate to this many images per optimizer step


@dataclass
class TrainOptions:
    """yolov5 train.py's options (same names and defaults where they make sense) plus distillation."""

    data: str = ""
    weights: str = ""
    cfg: str = ""
    hyp: str = ""
    epochs: int = 100
    batch_size: int = 16
    nbs: int = NOMINAL_BATCH  # gradients accumulate to this many images per optimizer step (yolov5's nbs)
    imgsz: int = 640
    rect: bool = False
    resume: Union[bool, str] = False
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    cache: Optional[str] = None
    image_weights: bool = False
    device: str = ""
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = "SGD"
    workers: int = 8
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    quad: bool = False
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    freeze: list = field(default_factory=lambda: [0])
    save_period: int = -1
    seed: int = 0
    # distillation
    t_weights: str = ""
    t_cfg: str = ""
    d_output: bool = False
    d_feature: bool = False
    d_weight: float = DistillConfig.output_weight
    f_weight: float = DistillConfig.feature_weight
    d_layers: Optional[list] = None
    feature_loss: str = DistillConfig.feature_loss
    trust_checkpoint: bool = False
    # deployment fine-tuning (usually from a distilled student, with the teacher still distilling)
    qat: bool = False  # INT8 fake quantization; the checkpoint gets a `quant` entry, export gives Q/DQ nodes
    qat_calib_images: int = 512  # training images that calibrate the activation ranges
    sparsity: str = ""  # "2:4": fixed magnitude masks, re-applied after every optimizer step
    # torchrun (DistributedDataParallel): BatchNorm statistics over all ranks' batches
    sync_bn: bool = False
    # filled in by the trainer, kept for --resume
    save_dir: str = ""
    hyp_dict: Optional[dict] = None

    def distill_config(self) -> DistillConfig:
        """--d_output: outputs only; --d_feature: features and outputs (the Adlik fork's meaning)."""
        if (self.d_output or self.d_feature) and not self.t_weights:
            raise UserError("--d_output/--d_feature need a teacher: pass --t_weights teacher.pt")
        return DistillConfig(output=self.d_output or self.d_feature, feature=self.d_feature,
                             output_weight=self.d_weight, feature_weight=self.f_weight,
                             feature_loss=self.feature_loss,
                             layers=parse_layer_pairs(self.d_layers) if self.d_layers else None)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
