"""`yolodistill classify ...`: classifier training, Hinton KD, CLIP-to-CNN distillation and their tools."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

LOGGER = logging.getLogger("yolodistill")

KD_DOC = """\
Hinton KD: loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).
Several --teacher checkpoints form an ensemble (softened probabilities averaged). Images of
--unlabeled folders get only the KD term. --teacher-store reads logits cached by `classify embed
--teacher`, so no teacher runs during training.
"""


def _common_training(p: argparse.ArgumentParser, flag, *, model_default: str) -> None:
    t = p.add_argument_group("training")
    flag(t, "--model", default=model_default, help="timm model name, or built-in: mlp_small, mlp, mlp_large, "
                                                   "cnn_small, cnn, cnn_large")
    flag(t, "--pretrained", default="", help="local timm weights file (nothing is downloaded)")
    flag(t, "--imgsz", "--img", "--img-size", type=int, default=224, help="train/val image size (pixels)")
    flag(t, "--epochs", type=int, default=10, help="training epochs")
    flag(t, "--batch-size", type=int, default=64, help="batch size")
    flag(t, "--optimizer", choices=["SGD", "Adam", "AdamW"], default="AdamW", help="optimizer")
    flag(t, "--lr0", type=float, default=1e-3, help="initial learning rate (cosine decay to 1%%)")
    flag(t, "--weight-decay", type=float, default=5e-5, help="weight decay")
    flag(t, "--label-smoothing", type=float, default=0.0, help="label smoothing epsilon (cross-entropy)")
    flag(t, "--no-augment", dest="augment", action="store_false", help="no random resized crop or flip")
    flag(t, "--fliplr", type=float, default=0.5, help="horizontal flip probability (0 for digits, text)")
    flag(t, "--workers", type=int, default=4, help="dataloader workers")
    flag(t, "--device", default="", help="cuda device, i.e. 0, or cpu")
    flag(t, "--project", default="runs/classify", help="save to project/name")
    flag(t, "--name", default="exp", help="save to project/name")
    flag(t, "--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    flag(t, "--seed", type=int, default=0, help="random seed")
    flag(t, "--resume", nargs="?", const=True, default=False, help="continue an interrupted run from its last.pt "
         "or run folder (default: the newest under --project); every other option comes from the checkpoint")
    c = p.add_argument_group("deployment fine-tuning (from a trained student, a few epochs, low --lr0)")
    flag(c, "--weights", default="", help="start from this classifier checkpoint (its model replaces --model)")
    flag(c, "--qat", action="store_true", help="INT8 quantization-aware training; `export` then writes Q/DQ nodes")
    flag(c, "--qat-calib-images", type=int, default=512, help="training images calibrating the INT8 ranges")
    flag(c, "--sparsity", default="", choices=["", "2:4"], help="2:4 structured sparsity with fixed masks")


def _clip_flags(g, flag, *, required: bool = True) -> None:
    flag(g, "--clip", required=required, default=None, help="OpenCLIP model name, e.g. ViT-B-32")
    flag(g, "--pretrained", default="", help="local OpenCLIP weights file (open_clip_model.safetensors)")
    flag(g, "--clip-config", default=None, help="OpenCLIP model-config JSON for a custom model")
    flag(g, "--random-init", action="store_true", help="random OpenCLIP weights: smoke tests only")


def _load_clip(args):
    from yolodistill.errors import UserError
    from .clip_teacher import load_clip
    from yolodistill.engine import select_device

    if not args.pretrained and not args.random_init:
        raise UserError("--pretrained /path/to/open_clip_model.safetensors is required (weights come from local "
                        "files only; --random-init gives random weights for smoke tests)")
    return load_clip(args.clip, args.pretrained or None, config=args.clip_config,
                     device=str(select_device(args.device)))


def _options(args: argparse.Namespace, *required: str):
    """The run's options; with --resume only the checkpoint's count, so the flags a new run needs are optional."""
    from yolodistill.errors import UserError
    from .trainer import ClassifyOptions

    if args.resume:
        return ClassifyOptions(resume=args.resume, project=args.project)
    missing = [f"--{r.replace('_', '-')}" for r in required if not getattr(args, r)]
    if missing:
        raise UserError(f"the following arguments are required: {', '.join(missing)} "
                        f"(or --resume to continue a run)")
    names = {f.name for f in fields(ClassifyOptions)}
    return ClassifyOptions(**{k: v for k, v in vars(args).items() if k in names})


def add_classify(sub: argparse._SubParsersAction, flag) -> None:
    p = sub.add_parser("classify", help="classification: train, distil (KD, ensembles, CLIP-to-CNN), predict",
                       description="Classifier distillation. Data: ImageFolder layout, DATA/train/<class>/<image> "
                                   "and DATA/val/<class>/<image>. Unreadable or truncated images are skipped with "
                                   "a count.")
    cs = p.add_subparsers(dest="classify_command", metavar="CLASSIFY_COMMAND", required=True)

    t = cs.add_parser("train", help="train a teacher or a baseline student from labels")
    flag(t, "--data", default="", help="dataset folder with train/ and val/ (or test/); required")
    _common_training(t, flag, model_default="resnet18")
    t.set_defaults(func=_run_train)

    d = cs.add_parser("distill", help="Hinton KD from one teacher or an ensemble, plus feature KD",
                      description=KD_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(d, "--data", default="", help="dataset folder with train/ and val/ (or test/); required")
    _common_training(d, flag, model_default="resnet18")
    k = d.add_argument_group("distillation")
    flag(k, "--teacher", nargs="+", default=[], help="teacher checkpoint(s) from `classify train`; several = ensemble")
    flag(k, "--teacher-store", default="", help="cached teacher logits from `classify embed --teacher`")
    flag(k, "--temperature", "-T", type=float, default=4.0, help="softmax temperature T")
    flag(k, "--alpha", type=float, default=0.9, help="weight of the KD term; 1 - alpha weighs cross-entropy")
    flag(k, "--unlabeled", nargs="+", default=[], help="folders of unlabeled images (KD term only)")
    flag(k, "--feature-layers", default="", help="'auto' (deepest feature map of each) or s_layer:t_layer[,...]")
    flag(k, "--feature-loss", default="mse", help="feature loss from the registry: mse, cwd, pkd, or a plugin")
    flag(k, "--f-weight", type=float, default=1.0, help="weight of the feature term")
    d.set_defaults(func=_run_distill)

    e = cs.add_parser("embed", help="run a teacher once over a folder into a memory-mapped store")
    flag(e, "--source", required=True, help="image folder (all images under it, recursively)")
    flag(e, "--out", required=True, help="store folder to write")
    g = e.add_argument_group("teacher: an OpenCLIP model, or classifier checkpoint(s)")
    _clip_flags(g, flag, required=False)
    flag(g, "--teacher", nargs="+", default=[], help="classifier checkpoint(s): their logits are stored")
    flag(e, "--batch-size", type=int, default=64, help="batch size")
    flag(e, "--workers", type=int, default=4, help="dataloader workers")
    flag(e, "--device", default="", help="cuda device, i.e. 0, or cpu")
    flag(e, "--dtype", choices=["float32", "float16"], default="float32", help="storage type (float16 halves disk)")
    flag(e, "--exist-ok", action="store_true", help="replace an existing store")
    e.set_defaults(func=_run_embed)

    te = cs.add_parser("text-embed", help="prompts file (one class a line) -> zero-shot text head")
    _clip_flags(te, flag)
    flag(te, "--prompts", required=True, help="one class description per line ('name: a photo of a ...' or text)")
    flag(te, "--classes-from", default="", help="labeled folder whose class folders the prompts must match")
    flag(te, "--out", required=True, help="head file to write (.pt)")
    flag(te, "--device", default="", help="cuda device, i.e. 0, or cpu")
    te.set_defaults(func=_run_text_embed)

    pr = cs.add_parser("probe", help="linear-probe head on the stored embeddings of labeled images")
    flag(pr, "--store", required=True, help="embedding store covering the labeled images")
    flag(pr, "--data", required=True, help="labeled folder <class>/<image> (inside the store's source folder)")
    flag(pr, "--out", required=True, help="head file to write (.pt)")
    flag(pr, "--weight-decay", type=float, default=1e-3, help="L2 penalty of the logistic regression")
    pr.set_defaults(func=_run_probe)

    c = cs.add_parser("clip-distill", help="train a timm CNN to reproduce OpenCLIP embeddings (no labels needed)")
    flag(c, "--store", default="", help="embedding store from `classify embed --clip`; required")
    flag(c, "--head", default="", help="head from `classify text-embed` or `classify probe` (same teacher); "
                                        "required")
    flag(c, "--source", nargs="+", default=[], help="training image folder(s) under the store's source "
                                                    "(default: the store's source folder)")
    flag(c, "--val", default="", help="labeled folder <class>/<image> to report accuracy through the head")
    flag(c, "--loss", choices=["cosine", "mse", "kl"], default="cosine", help="embedding loss, or KL on class "
                                                                               "probabilities through the head")
    flag(c, "--temperature", "-T", type=float, default=1.0, help="temperature of --loss kl")
    _common_training(c, flag, model_default="resnet18")
    c.set_defaults(func=_run_clip_distill)

    pd = cs.add_parser("predict", help="top-k classes of image files or folders")
    flag(pd, "--weights", required=True, help="student checkpoint (best.pt)")
    flag(pd, "--source", nargs="+", required=True, help="image files and/or folders")
    flag(pd, "--head", default="", help="another head for a CLIP-distilled student (same teacher)")
    flag(pd, "--topk", type=int, default=5, help="classes to show")
    flag(pd, "--device", default="cpu", help="cpu or a cuda device such as 0")
    flag(pd, "--save-csv", default="", help="also write the predictions to this CSV file")
    pd.set_defaults(func=_run_predict)

    dm = cs.add_parser("demo", help="live top-k on camera frames (OpenCV); q quits")
    flag(dm, "--weights", required=True, help="student checkpoint (best.pt)")
    flag(dm, "--camera", default="0", help="camera index, or a video file")
    flag(dm, "--head", default="", help="another head for a CLIP-distilled student (same teacher)")
    flag(dm, "--topk", type=int, default=3, help="classes to show")
    flag(dm, "--device", default="cpu", help="cpu or a cuda device such as 0")
    flag(dm, "--no-show", dest="show", action="store_false", help="print instead of opening a window")
    flag(dm, "--max-frames", type=int, default=0, help="stop after this many frames (0: until q)")
    dm.set_defaults(func=_run_demo)

    f = cs.add_parser("filter", help="pick the images of an unlabeled pool that match the prompts")
    flag(f, "--store", required=True, help="embedding store of the pool (`classify embed --clip --source POOL`)")
    flag(f, "--head", required=True, help="head from `classify text-embed` (or `probe`), same teacher")
    flag(f, "--out", required=True, help="folder for the picks, one subfolder per class, and picks.csv")
    flag(f, "--min-prob", type=float, default=0.5, help="keep an image if its best class has this probability")
    flag(f, "--per-class", type=int, default=0, help="keep at most this many per class (0: no limit)")
    flag(f, "--mode", choices=["copy", "link", "list"], default="copy", help="copy, symlink, or only list")
    flag(f, "--exist-ok", action="store_true", help="write into a non-empty folder")
    f.set_defaults(func=_run_filter)


def _run_train(args):
    from .trainer import ClassifyTrainer

    ClassifyTrainer(_options(args, "data")).run()


def _run_distill(args):
    from .distill import KDTrainer

    KDTrainer(_options(args, "data")).run()


def _run_clip_distill(args):
    from .clip_distill import ClipDistillTrainer

    ClipDistillTrainer(_options(args, "store", "head")).run()


def _run_embed(args):
    from yolodistill.errors import UserError
    from .embed import embed_classifiers, embed_clip
    from yolodistill.engine import select_device

    if bool(args.clip) == bool(args.teacher):
        raise UserError("give the teacher as --clip MODEL --pretrained FILE, or as --teacher CKPT [CKPT ...]")
    kw = dict(batch_size=args.batch_size, workers=args.workers, dtype=args.dtype, exist_ok=args.exist_ok)
    if args.clip:
        embed_clip(args.source, args.out, _load_clip(args), **kw)
    else:
        from .teachers import ClassifierTeachers

        embed_classifiers(args.source, args.out, ClassifierTeachers(args.teacher, select_device(args.device)), **kw)


def _run_text_embed(args):
    from .clip_teacher import read_prompts, save_head, text_head
    from .data import LabeledFolder

    classes = LabeledFolder.scan(args.classes_from, check=False).classes if args.classes_from else None
    names, prompts = read_prompts(args.prompts, classes)
    teacher = _load_clip(args)
    save_head(text_head(teacher, prompts, names), args.out, teacher=teacher.identity)
    LOGGER.info(f"zero-shot head for {len(names)} classes -> {args.out}")


def _run_probe(args):
    from .clip_teacher import fit_linear_probe, save_head
    from .data import LabeledFolder
    from .store import TeacherStore

    import torch

    store = TeacherStore.open(args.store, kind="embedding")
    folder = LabeledFolder.scan(args.data, check=False)
    prefix = store.prefix_of(folder.root)
    embeddings = store.lookup([prefix + k for k in folder.keys])
    labels = torch.tensor(folder.labels)
    head = fit_linear_probe(embeddings, labels, list(folder.classes), weight_decay=args.weight_decay)
    with torch.no_grad():
        acc = (head(embeddings).argmax(1) == labels).float().mean().item()
    save_head(head, args.out, teacher=store.teacher)
    LOGGER.info(f"linear probe on {len(labels)} images, {len(folder.classes)} classes (train accuracy {acc:.3f}) "
                f"-> {args.out}")


def _run_predict(args):
    from .predict import predict

    predict(args.weights, args.source, k=args.topk, head=args.head or None, device=args.device,
            save_csv=args.save_csv or None)


def _run_demo(args):
    from .predict import demo

    demo(args.weights, args.camera, k=args.topk, head=args.head or None, device=args.device, show=args.show,
         max_frames=args.max_frames)


def _run_filter(args):
    from .filter import filter_pool

    filter_pool(args.store, args.head, args.out, min_prob=args.min_prob, per_class=args.per_class or None,
                mode=args.mode, exist_ok=args.exist_ok)
