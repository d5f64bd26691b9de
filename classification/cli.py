"""`yolodistill classify ...`: classifier training, Hinton KD, CLIP-to-CNN distillation and their tools."""

from __future__ import annotations

import argparse
import logging

from yolodistill.options import add_command
from .options import (ClassifyOptions, ClassifyValOptions, DemoOptions, EmbedOptions, FilterOptions, PredictOptions,
                      ProbeOptions, TextEmbedOptions)

LOGGER = logging.getLogger("yolodistill")

KD_DOC = """\
Hinton KD: loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).
Several --t_weights checkpoints form an ensemble (softened probabilities averaged). Images of
--unlabeled folders get only the KD term. --teacher-store reads logits cached by `classify embed
--t_weights`, so no teacher runs during training.
"""
VAL_DOC = ("Scores a best.pt on DATA/<split>. val/ chose best.pt during training, so its val figure is the best of "
           "many noisy readings; test/, which chose nothing, says how good the model is.")


def _load_clip(options: EmbedOptions | TextEmbedOptions):
    """The OpenCLIP teacher of `classify embed --clip` or `classify text-embed`."""
    from yolodistill.errors import UserError
    from .clip_teacher import load_clip
    from yolodistill.training import select_device

    if not options.pretrained and not options.random_init:
        raise UserError("--pretrained /path/to/open_clip_model.safetensors is required (weights come from local "
                        "files only; --random-init gives random weights for smoke tests)")
    return load_clip(options.clip, options.pretrained or None, config=options.clip_config,
                     device=str(select_device(options.device)))


def _checked(options: ClassifyOptions, *required: str) -> ClassifyOptions:
    """The run's options; with --resume only the checkpoint's count, so the flags a new run needs are optional."""
    from yolodistill.errors import UserError

    if options.resume:
        return ClassifyOptions(resume=options.resume, project=options.project)
    missing = [f"--{r.replace('_', '-')}" for r in required if not getattr(options, r)]
    if missing:
        raise UserError(f"the following arguments are required: {', '.join(missing)} "
                        f"(or --resume to continue a run)")
    return options


def add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classification: train, distil (KD, ensembles, CLIP-to-CNN), predict",
                       description="Classifier distillation. Data: ImageFolder layout, DATA/train/<class>/<image> "
                                   "and DATA/val/<class>/<image>. Unreadable or truncated images are skipped with "
                                   "a count.")
    cs = p.add_subparsers(dest="classify_command", metavar="CLASSIFY_COMMAND", required=True)
    _add_training(cs)
    _add_tools(cs)


def _add_training(cs: argparse._SubParsersAction) -> None:
    """train, distill, clip-distill: their flags are ClassifyOptions' fields (those of each command)."""
    add_command(cs, "train", ClassifyOptions, _run_train, help="train a teacher or a baseline student from labels")
    add_command(cs, "distill", ClassifyOptions, _run_distill, description=KD_DOC,
                help="Hinton KD from one teacher or an ensemble, plus feature KD",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_command(cs, "clip-distill", ClassifyOptions, _run_clip_distill, defaults={"temperature": 1.0},
                helps={"temperature": "temperature of --loss kl"},
                help="train a timm CNN to reproduce OpenCLIP embeddings (no labels needed)")


def _add_tools(cs: argparse._SubParsersAction) -> None:
    """embed (a teacher run once into a store), text-embed and probe (the heads of a CLIP teacher), val, predict and
    demo (a trained student on files or a camera), filter (a CLIP teacher picks images)."""
    add_command(cs, "embed", EmbedOptions, _run_embed,
                help="run a teacher once over a folder into a memory-mapped store")
    add_command(cs, "text-embed", TextEmbedOptions, _run_text_embed,
                help="prompts file (one class a line) -> zero-shot text head")
    add_command(cs, "probe", ProbeOptions, _run_probe,
                help="linear-probe head on the stored embeddings of labeled images")
    add_command(cs, "val", ClassifyValOptions, _run_val, description=VAL_DOC,
                help="top-1, top-5 and loss of a checkpoint on a split (default test/)")
    add_command(cs, "predict", PredictOptions, _run_predict, help="top-k classes of image files or folders")
    add_command(cs, "demo", DemoOptions, _run_demo, help="live top-k on camera frames (OpenCV); q quits")
    add_command(cs, "filter", FilterOptions, _run_filter,
                help="pick the images of an unlabeled pool that match the prompts")


def _run_train(options: ClassifyOptions) -> None:
    from .trainer import ClassifyTrainer

    ClassifyTrainer(_checked(options, "data")).run()


def _run_distill(options: ClassifyOptions) -> None:
    from .distill import KDTrainer

    KDTrainer(_checked(options, "data")).run()


def _run_clip_distill(options: ClassifyOptions) -> None:
    from .clip_distill import ClipDistillTrainer

    ClipDistillTrainer(_checked(options, "store", "head")).run()


def _run_embed(options: EmbedOptions) -> None:
    from yolodistill.errors import UserError
    from .embed import embed_classifiers, embed_clip
    from yolodistill.training import select_device

    if bool(options.clip) == bool(options.t_weights):
        raise UserError("give the teacher as --clip MODEL --pretrained FILE, or as --t_weights CKPT [CKPT ...]")
    kw = dict(batch_size=options.batch_size, workers=options.workers, dtype=options.dtype, exist_ok=options.exist_ok)
    if options.clip:
        embed_clip(options.source, options.out, _load_clip(options), **kw)
    else:
        from .teachers import ClassifierTeachers

        teachers = ClassifierTeachers(options.t_weights, select_device(options.device))
        embed_classifiers(options.source, options.out, teachers, **kw)


def _run_text_embed(options: TextEmbedOptions) -> None:
    from .clip_teacher import read_prompts, save_head, text_head
    from .data import LabeledFolder

    classes = LabeledFolder.scan(options.classes_from, check=False).classes if options.classes_from else None
    names, prompts = read_prompts(options.prompts, classes)
    teacher = _load_clip(options)
    save_head(text_head(teacher, prompts, names), options.out, teacher=teacher.identity)
    LOGGER.info(f"zero-shot head for {len(names)} classes -> {options.out}")


def _run_probe(options: ProbeOptions) -> None:
    from .clip_teacher import fit_linear_probe, save_head
    from .data import LabeledFolder
    from .store import TeacherStore

    import torch

    store = TeacherStore.open(options.store, kind="embedding")
    folder = LabeledFolder.scan(options.data, check=False)
    prefix = store.prefix_of(folder.root)
    embeddings = store.lookup([prefix + k for k in folder.keys])
    labels = torch.tensor(folder.labels)
    head = fit_linear_probe(embeddings, labels, list(folder.classes), weight_decay=options.weight_decay)
    with torch.no_grad():
        acc = (head(embeddings).argmax(1) == labels).float().mean().item()
    save_head(head, options.out, teacher=store.teacher)
    LOGGER.info(f"linear probe on {len(labels)} images, {len(folder.classes)} classes (train accuracy {acc:.3f}) "
                f"-> {options.out}")


def _run_val(options: ClassifyValOptions) -> dict:
    from .trainer import score_checkpoint

    metrics = score_checkpoint(options.weights, options.data, split=options.split, batch_size=options.batch_size,
                               workers=options.workers, device=options.device)
    LOGGER.info(f"{options.weights} on {options.data}/{options.split}: top-1 "
                f"{metrics['metrics/accuracy_top1']:.4f}, top-5 {metrics['metrics/accuracy_top5']:.4f}, loss "
                f"{metrics['val/loss']:.4f}")
    return metrics


def _run_predict(options: PredictOptions) -> None:
    from .predict import predict

    predict(options.weights, options.source, k=options.topk, head=options.head or None, device=options.device,
            save_csv=options.save_csv or None)


def _run_demo(options: DemoOptions) -> None:
    from .predict import demo

    demo(options.weights, options.camera, k=options.topk, head=options.head or None, device=options.device,
         show=options.show, max_frames=options.max_frames)


def _run_filter(options: FilterOptions) -> None:
    from .filter import filter_pool

    filter_pool(options.store, options.head, options.out, min_prob=options.min_prob,
                per_class=options.per_class or None, mode=options.mode, exist_ok=options.exist_ok)
