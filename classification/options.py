"""The options of `yolodistill classify train|distill|clip-distill`, declared once (yolodistill.options); no
torch here, so building the command-line parser stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from yolodistill.options import RunOptions, option, shared

TRAINING = ("train", "distill", "clip-distill")  # the `classify` subcommands that train
# the --help sections
TRAINING_GROUP = "training"
DISTILLATION_GROUP = "distillation"
CLIP_GROUP = "CLIP-to-CNN"
FINE_TUNING_GROUP = "deployment fine-tuning (from a trained student, a few epochs, low --lr0)"


@dataclass
class ClassifyOptions(RunOptions):
    """Options of `yolodistill classify train|distill|clip-distill`: each field is also the flag of the same name
    on the subcommands it lists (yolodistill.options)."""

    data: str = option("", "dataset folder with train/ and val/ (or test/); required", commands=("train", "distill"))
    # CLIP-to-CNN
    store: str = option("", "embedding store from `classify embed --clip`; required", group=CLIP_GROUP,
                        commands=("clip-distill",))
    head: str = option("", "head from `classify text-embed` or `classify probe` (same teacher); required",
                       group=CLIP_GROUP, commands=("clip-distill",))
    source: list = option([], "training image folder(s) under the store's source (default: the store's source "
                              "folder)", group=CLIP_GROUP, commands=("clip-distill",))
    val: str = option("", "labeled folder <class>/<image> to report accuracy through the head", group=CLIP_GROUP,
                      commands=("clip-distill",))
    loss: str = option("cosine", "embedding loss, or KL on class probabilities through the head", group=CLIP_GROUP,
                       commands=("clip-distill",), choices=["cosine", "mse", "kl"])
    # training
    model: str = option("resnet18", "timm model name, or built-in: mlp_small, mlp, mlp_large, cnn_small, cnn, "
                                    "cnn_large", group=TRAINING_GROUP, commands=TRAINING)
    pretrained: str = option("", "local timm weights file (nothing is downloaded)", group=TRAINING_GROUP,
                             commands=TRAINING)
    imgsz: int = option(224, "train/val image size (pixels)", flags=("--img", "--img-size"), group=TRAINING_GROUP,
                        commands=TRAINING)
    epochs: int = option(10, "training epochs", group=TRAINING_GROUP, commands=TRAINING)
    batch_size: int = option(64, "batch size (over all processes under torchrun)", group=TRAINING_GROUP,
                             commands=TRAINING)
    optimizer: str = option("AdamW", "optimizer", group=TRAINING_GROUP, commands=TRAINING,
                            choices=["SGD", "Adam", "AdamW"])
    lr0: float = option(1e-3, "initial learning rate (cosine decay to 1%%)", group=TRAINING_GROUP, commands=TRAINING)
    weight_decay: float = option(5e-5, "weight decay", group=TRAINING_GROUP, commands=TRAINING)
    label_smoothing: float = option(0.0, "label smoothing epsilon (cross-entropy)", group=TRAINING_GROUP,
                                    commands=TRAINING)
    augment: bool = option(True, "no random resized crop or flip", primary="--no-augment", group=TRAINING_GROUP,
                           commands=TRAINING)
    fliplr: float = option(0.5, "horizontal flip probability (0 for digits, text)", group=TRAINING_GROUP,
                           commands=TRAINING)
    resume: Union[bool, str] = option(False, "continue an interrupted run from its last.pt or run folder (default: "
                                             "the newest under --project); every other option comes from the "
                                             "checkpoint", group=TRAINING_GROUP, commands=TRAINING, nargs="?",
                                      const=True)
    workers: int = shared("workers", 4)
    project: str = shared("project", "runs/classify")
    # Hinton KD
    teacher: list = option([], "teacher checkpoint(s) from `classify train`; several = ensemble",
                           primary="--t_weights", flags=("--teacher",), group=DISTILLATION_GROUP,
                           commands=("distill",))
    teacher_store: str = option("", "cached teacher logits from `classify embed --teacher`", group=DISTILLATION_GROUP,
                                commands=("distill",))
    temperature: float = option(4.0, "softmax temperature T", flags=("-T",), group=DISTILLATION_GROUP,
                                commands=("distill", "clip-distill"))
    alpha: float = option(0.9, "weight of the KD term; 1 - alpha weighs cross-entropy", group=DISTILLATION_GROUP,
                          commands=("distill",))
    unlabeled: list = option([], "images without labels (folders, .txt lists or globs): KD term only",
                             group=DISTILLATION_GROUP, commands=("distill",))
    unlabeled_ratio: float = option(0.0, "unlabeled images per labeled image in every batch; 0: one dataset, each "
                                         "unlabeled image once an epoch", group=DISTILLATION_GROUP,
                                    commands=("distill",))
    feature_layers: list = option([], "'auto' (deepest feature map of each) or student_layer:teacher_layer pairs",
                                  flags=("--d_layers",), group=DISTILLATION_GROUP, commands=("distill",),
                                  metavar="S:T")
    feature_loss: str = option("mse", "feature loss from the registry: mse, cwd, pkd, or a plugin",
                               group=DISTILLATION_GROUP, commands=("distill",))
    f_weight: float = option(1.0, "weight of the feature term", group=DISTILLATION_GROUP, commands=("distill",))
    # deployment fine-tuning of a trained student (--weights), the teacher still distilling
    weights: str = option("", "start from this classifier checkpoint (its model replaces --model)",
                          group=FINE_TUNING_GROUP, commands=TRAINING)
    qat: bool = option(False, "INT8 quantization-aware training; `export` then writes Q/DQ nodes",
                       group=FINE_TUNING_GROUP, commands=TRAINING)
    qat_calib_images: int = option(512, "training images calibrating the INT8 ranges", group=FINE_TUNING_GROUP,
                                   commands=TRAINING)
    sparsity: str = option("", "2:4 structured sparsity with fixed masks", group=FINE_TUNING_GROUP, commands=TRAINING,
                           choices=["", "2:4"])
