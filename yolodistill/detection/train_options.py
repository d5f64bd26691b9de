"""The options of `yolodistill train`: yolov5 train.py's (same names and defaults where they make sense) plus
distillation, compression and torchrun's; kept in opt.yaml and in last.pt for --resume."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Union

from ..config import OUTPUT_LOSS_BEFORE_THE_CHOICE, DistillConfig, parse_layer_pairs
from ..errors import UserError
from ..options import RunOptions, option, shared

NOMINAL_BATCH = 64  # yolov5's nbs: gradients accumulate to this many images per optimizer step


# the --help sections
YOLOV5_GROUP = "yolov5 train.py options (same meaning)"
DISTILLATION_GROUP = "distillation"
FINE_TUNING_GROUP = ("deployment fine-tuning (from a trained student: --weights best.pt, a few epochs, low lr; the "
                     "teacher keeps distilling)")


@dataclass
class TrainOptions(RunOptions):
    """yolov5 train.py's options (same names and defaults where they make sense) plus distillation; each
    field is also the `yolodistill train` flag of the same name (yolodistill.options)."""

    weights: str = option("", "initial student weights (.pt); empty: train from --cfg", group=YOLOV5_GROUP)
    cfg: str = option("", "student model yaml (path, or a packaged name such as yolov5n.yaml)", group=YOLOV5_GROUP)
    data: str = option("", "dataset yaml (YOLOv5 format)", group=YOLOV5_GROUP)
    hyp: str = option("", "hyperparameters yaml (default: yolov5's hyp.scratch-low.yaml)", group=YOLOV5_GROUP)
    epochs: int = option(100, "total training epochs", group=YOLOV5_GROUP)
    batch_size: int = option(16, "batch size (over all processes under torchrun)", group=YOLOV5_GROUP)
    imgsz: int = option(640, "train/val image size (pixels)", flags=("--img", "--img-size"), group=YOLOV5_GROUP)
    rect: bool = option(False, "rectangular training", group=YOLOV5_GROUP)
    resume: Union[bool, str] = option(False, "resume the most recent or the given last.pt", group=YOLOV5_GROUP,
                                      nargs="?", const=True)
    nosave: bool = option(False, "only save the final checkpoint", group=YOLOV5_GROUP)
    noval: bool = option(False, "only validate the final epoch", group=YOLOV5_GROUP)
    noautoanchor: bool = option(False, "disable AutoAnchor", group=YOLOV5_GROUP)
    noplots: bool = option(False, "save no plot files", group=YOLOV5_GROUP)
    cache: Optional[str] = option(None, "cache images in ram or disk", group=YOLOV5_GROUP, nargs="?", const="ram")
    image_weights: bool = option(False, "weighted image selection for training", group=YOLOV5_GROUP)
    multi_scale: bool = option(False, "vary img-size +/- 50%%", group=YOLOV5_GROUP)
    single_cls: bool = option(False, "train multi-class data as single-class", group=YOLOV5_GROUP)
    optimizer: str = option("SGD", "optimizer", group=YOLOV5_GROUP, choices=["SGD", "Adam", "AdamW"])
    quad: bool = option(False, "quad dataloader", group=YOLOV5_GROUP)
    cos_lr: bool = option(False, "cosine LR scheduler", group=YOLOV5_GROUP)
    nbs: int = option(NOMINAL_BATCH, "nominal batch: gradients accumulate to this many images per optimizer "
                                     "step (yolov5: 64)", group=YOLOV5_GROUP)
    label_smoothing: float = option(0.0, "label smoothing epsilon", group=YOLOV5_GROUP)
    patience: int = option(100, "EarlyStopping patience (epochs without improvement)", group=YOLOV5_GROUP)
    freeze: list = option([0], "freeze layers: backbone=10, first3=0 1 2", group=YOLOV5_GROUP, nargs="+", type=int)
    save_period: int = option(-1, "save a checkpoint every x epochs (disabled if < 1)", group=YOLOV5_GROUP)
    sync_bn: bool = option(False, "SyncBatchNorm across ranks (under torchrun)", group=YOLOV5_GROUP)
    trust_checkpoint: bool = shared("trust_checkpoint", False)
    # distillation
    t_weights: str = option("", "teacher checkpoint (.pt), frozen during training", primary="--t_weights",
                            flags=("--teacher",), group=DISTILLATION_GROUP)
    t_cfg: str = option("", "teacher model yaml, if its weights should go into a fresh model", primary="--t_cfg",
                        group=DISTILLATION_GROUP)
    t_classes: list = option([], "the teacher's class for a dataset class of another name (a teacher of more "
                                 "classes: the rest are matched by name), e.g. car=automobile person=0",
                             primary="--t_classes", metavar="STUDENT=TEACHER", group=DISTILLATION_GROUP)
    d_output: bool = option(False, "distil the detection outputs only", primary="--d_output", group=DISTILLATION_GROUP)
    d_feature: bool = option(False, "distil features and outputs", primary="--d_feature", group=DISTILLATION_GROUP)
    d_weight: float = option(DistillConfig.output_weight, "output distillation weight", primary="--d_weight",
                             group=DISTILLATION_GROUP)
    f_weight: float = option(DistillConfig.feature_weight, "feature distillation weight", primary="--f_weight",
                             group=DISTILLATION_GROUP)
    d_layers: Optional[list] = option(None, "student:teacher layer pairs by index (17:17) or module name "
                                            "(model.17:model.17)", primary="--d_layers", group=DISTILLATION_GROUP,
                                      nargs="+", metavar="S:T")
    feature_loss: str = option(DistillConfig.feature_loss, "feature loss name from the registry",
                               group=DISTILLATION_GROUP)
    output_loss: str = option(DistillConfig.output_loss, "output loss: mse_ciou (mse's objectness and classes, "
                                                         "CIoU of boxes), mse (objectness-weighted MSE of the "
                                                         "head's logits) or kl (yolov5's loss forms against the "
                                                         "teacher: binary KL of objectness on every cell, of "
                                                         "classes where the teacher sees an object, CIoU of boxes "
                                                         "there)", group=DISTILLATION_GROUP)
    unlabeled: list = option([], "images without labels (folders, .txt lists or globs; or `unlabeled:` in the "
                                 "dataset yaml): augmented like the labeled ones, they get the distillation terms "
                                 "only", group=DISTILLATION_GROUP)
    unlabeled_ratio: float = option(1.0, "unlabeled images per labeled image in every batch", group=DISTILLATION_GROUP)
    pseudo_labels: float = option(0.0, "with --unlabeled: the teacher's boxes (after NMS) above this confidence "
                                       "become task targets of the unlabeled images (0: off)", group=DISTILLATION_GROUP)
    # deployment fine-tuning (usually from a distilled student, with the teacher still distilling)
    qat: bool = option(False, "INT8 quantization-aware training; `export` then writes Q/DQ nodes",
                       group=FINE_TUNING_GROUP)
    qat_calib_images: int = option(512, "training images calibrating the INT8 ranges", group=FINE_TUNING_GROUP)
    sparsity: str = option("", "2:4 structured sparsity with fixed masks", group=FINE_TUNING_GROUP, choices=["", "2:4"])
    # filled in by the trainer, kept for --resume
    save_dir: str = ""
    hyp_dict: Optional[dict] = None

    def distill_config(self) -> DistillConfig:
        """--d_output: outputs only; --d_feature: features and outputs (the Adlik fork's meaning)."""
        if (self.d_output or self.d_feature) and not self.t_weights:
            raise UserError("--d_output/--d_feature need a teacher: pass --t_weights teacher.pt")
        return DistillConfig(output=self.d_output or self.d_feature, feature=self.d_feature,
                             output_weight=self.d_weight, feature_weight=self.f_weight,
                             feature_loss=self.feature_loss, output_loss=self.output_loss,
                             layers=parse_layer_pairs(self.d_layers) if self.d_layers else None)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        """The options a checkpoint recorded (--resume): a run from before --output-loss existed goes on with
        the loss it was started with, not today's default."""
        known = {f.name for f in fields(cls)}
        return cls(**{"output_loss": OUTPUT_LOSS_BEFORE_THE_CHOICE, **{k: v for k, v in d.items() if k in known}})
