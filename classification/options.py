"""The options of every `yolodistill classify` command, declared once (yolodistill.options): ClassifyOptions for
the three that train (train, distill, clip-distill), one dataclass for each tool (embed, text-embed, probe, val,
predict, demo, filter). No torch here, so building the command-line parser stays instant.

The flags that mean what `yolodistill train`'s mean are spelled as there (--t_weights, --d_layers, --f_weight); the
classifier task's earlier spellings (--teacher, --feature-layers, --f-weight) still parse (docs/classification.md
has the whole mapping)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Union

from yolodistill.options import RunOptions, option, shared

TRAINING = ("train", "distill", "clip-distill")  # the `classify` subcommands that train
# the --help sections
TRAINING_GROUP = "training"
DISTILLATION_GROUP = "distillation"
CLIP_GROUP = "CLIP-to-CNN"
FINE_TUNING_GROUP = "deployment fine-tuning (from a trained student, a few epochs, low --lr0)"
# fields renamed to detection's spelling (before -> now): ClassifyOptions.from_dict reads older checkpoints
RENAMED = {"teacher": "t_weights", "feature_layers": "d_layers"}


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
    t_weights: list = option([], "teacher checkpoint(s) from `classify train`; several = ensemble",
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
    d_layers: list = option([], "'auto' (deepest feature map of each) or student_layer:teacher_layer pairs",
                            primary="--d_layers", flags=("--feature-layers",), group=DISTILLATION_GROUP,
                            commands=("distill",), metavar="S:T")
    feature_loss: str = option("mse", "feature loss from the registry: mse, cwd, pkd, or a plugin",
                               group=DISTILLATION_GROUP, commands=("distill",))
    f_weight: float = option(1.0, "weight of the feature term", primary="--f_weight", group=DISTILLATION_GROUP,
                             commands=("distill",))
    # deployment fine-tuning of a trained student (--weights), the teacher still distilling
    weights: str = option("", "start from this classifier checkpoint (its model replaces --model)",
                          group=FINE_TUNING_GROUP, commands=TRAINING)
    qat: bool = option(False, "INT8 quantization-aware training; `export` then writes Q/DQ nodes",
                       group=FINE_TUNING_GROUP, commands=TRAINING)
    qat_calib_images: int = option(512, "training images calibrating the INT8 ranges", group=FINE_TUNING_GROUP,
                                   commands=TRAINING)
    sparsity: str = option("", "2:4 structured sparsity with fixed masks", group=FINE_TUNING_GROUP, commands=TRAINING,
                           choices=["", "2:4"])

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifyOptions":
        """The options a checkpoint recorded (--resume), under today's names: a run recorded before the fields took
        detection's spelling goes on with its teachers and layers."""
        known = {f.name for f in fields(cls)}
        renamed = {RENAMED.get(k, k): v for k, v in d.items()}
        return cls(**{k: v for k, v in renamed.items() if k in known})


# ---- the tools: a teacher run once into a store, the heads of a CLIP teacher, a trained student at work
CLIP_HELP = "OpenCLIP model name, e.g. ViT-B-32"
CLIP_WEIGHTS_HELP = "local OpenCLIP weights file (open_clip_model.safetensors)"
CLIP_CONFIG_HELP = "OpenCLIP model-config JSON for a custom model"
RANDOM_INIT_HELP = "random OpenCLIP weights: smoke tests only"
EMBED_TEACHER_GROUP = "teacher: an OpenCLIP model, or classifier checkpoint(s)"
HEAD_OUT_HELP = "head file to write (.pt)"


@dataclass
class EmbedOptions:
    """`classify embed`: a teacher (OpenCLIP, or classifier checkpoints) run once over a folder into a store."""

    source: str = option("", "image folder (all images under it, recursively)", required=True)
    out: str = option("", "store folder to write", required=True)
    clip: Optional[str] = option(None, CLIP_HELP, group=EMBED_TEACHER_GROUP)
    pretrained: str = option("", CLIP_WEIGHTS_HELP, group=EMBED_TEACHER_GROUP)
    clip_config: Optional[str] = option(None, CLIP_CONFIG_HELP, group=EMBED_TEACHER_GROUP)
    random_init: bool = option(False, RANDOM_INIT_HELP, group=EMBED_TEACHER_GROUP)
    t_weights: list = option([], "classifier checkpoint(s): their logits are stored", primary="--t_weights",
                             flags=("--teacher",), group=EMBED_TEACHER_GROUP)
    batch_size: int = option(64, "batch size")
    workers: int = shared("workers", 4)
    device: str = shared("device", "")
    dtype: str = option("float32", "storage type (float16 halves disk)", choices=["float32", "float16"])
    exist_ok: bool = option(False, "replace an existing store")


@dataclass
class TextEmbedOptions:
    """`classify text-embed`: a prompts file (one class a line) -> a zero-shot text head of a CLIP teacher."""

    clip: str = option("", CLIP_HELP, required=True)
    pretrained: str = option("", CLIP_WEIGHTS_HELP)
    clip_config: Optional[str] = option(None, CLIP_CONFIG_HELP)
    random_init: bool = option(False, RANDOM_INIT_HELP)
    prompts: str = option("", "one class description per line ('name: a photo of a ...' or text)", required=True)
    classes_from: str = option("", "labeled folder whose class folders the prompts must match")
    out: str = option("", HEAD_OUT_HELP, required=True)
    device: str = shared("device", "")


@dataclass
class ProbeOptions:
    """`classify probe`: a linear-probe head on the stored embeddings of labeled images."""

    store: str = option("", "embedding store covering the labeled images", required=True)
    data: str = option("", "labeled folder <class>/<image> (inside the store's source folder)", required=True)
    out: str = option("", HEAD_OUT_HELP, required=True)
    weight_decay: float = option(1e-3, "L2 penalty of the logistic regression")


@dataclass
class ClassifyValOptions:
    """`classify val`: top-1, top-5 and loss of a checkpoint on a split."""

    weights: str = option("", "classifier checkpoint (best.pt)", required=True)
    data: str = option("", "dataset folder (ImageFolder layout: DATA/<split>/<class>/<image>)", required=True)
    split: str = option("test", "subfolder to score: test, val or train")
    batch_size: int = option(256, "images per forward pass")
    device: str = shared("device", "cpu")
    workers: int = shared("workers", 0)


@dataclass
class PredictionOptions:
    """What predict and demo share: a trained student, the head it answers through, how many classes to show."""

    weights: str = option("", "student checkpoint (best.pt)", required=True)
    head: str = option("", "another head for a CLIP-distilled student (same teacher)")
    topk: int = option(5, "classes to show")
    device: str = shared("device", "cpu")


@dataclass
class PredictOptions(PredictionOptions):
    """`classify predict`: top-k classes of image files or folders."""

    source: list = option([], "image files and/or folders", nargs="+", required=True)
    save_csv: str = option("", "also write the predictions to this CSV file")


@dataclass
class DemoOptions(PredictionOptions):
    """`classify demo`: live top-k on camera frames."""

    topk: int = option(3, "classes to show")
    camera: str = option("0", "camera index, or a video file")
    show: bool = option(True, "print instead of opening a window", primary="--no-show")
    max_frames: int = option(0, "stop after this many frames (0: until q)")


@dataclass
class FilterOptions:
    """`classify filter`: the images of an unlabeled pool that match the prompts."""

    store: str = option("", "embedding store of the pool (`classify embed --clip --source POOL`)", required=True)
    head: str = option("", "head from `classify text-embed` (or `probe`), same teacher", required=True)
    out: str = option("", "folder for the picks, one subfolder per class, and picks.csv", required=True)
    min_prob: float = option(0.5, "keep an image if its best class has this probability")
    per_class: int = option(0, "keep at most this many per class (0: no limit)")
    mode: str = option("copy", "copy, symlink, or only list", choices=["copy", "link", "list"])
    exist_ok: bool = option(False, "write into a non-empty folder")
