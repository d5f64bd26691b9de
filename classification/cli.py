"""`yolodistill classify ...`: classifier training, Hinton KD, CLIP-to-CNN distillation and their tools."""

from __future__ import annotations

import argparse
import logging

from yolodistill.options import add_options, add_shared, flag, from_args

LOGGER = logging.getLogger("yolodistill")

KD_DOC = """\
Hinton KD: loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).
Several --teacher checkpoints form an ensemble (softened probabilities averaged). Images of
--unlabeled folders get only the KD term. --teacher-store reads logits cached by `classify embed
--teacher`, so no teacher runs during training.
"""


def _clip_flags(g, *, required: bool = True) -> None:
    flag(g, "--clip", required=required, default=None, help="OpenCLIP model name, e.g. ViT-B-32")
    flag(g, "--pretrained", default="", help="local OpenCLIP weights file (open_clip_model.safetensors)")
    flag(g, "--clip-config", default=None, help="OpenCLIP model-config JSON for a custom model")
    flag(g, "--random-init", action="store_true", help="random OpenCLIP weights: smoke tests only")


def _load_clip(args):
    from yolodistill.errors import UserError
    from .clip_teacher import load_clip
    from yolodistill.training import select_device

    if not args.pretrained and not args.random_init:
        raise UserError("--pretrained /path/to/open_clip_model.safetensors is required (weights come from local "
                        "files only; --random-init gives random weights for smoke tests)")
    return load_clip(args.clip, args.pretrained or None, config=args.clip_config,
                     device=str(select_device(args.device)))


def _options(args: argparse.Namespace, *required: str):
    """The run's options; with --resume only the checkpoint's count, so the flags a new run needs are optional."""
    from yolodistill.errors import UserError
    from .options import ClassifyOptions

    if args.resume:
        return ClassifyOptions(resume=args.resume, project=args.project)
    missing = [f"--{r.replace('_', '-')}" for r in required if not getattr(args, r)]
    if missing:
        raise UserError(f"the following arguments are required: {', '.join(missing)} "
                        f"(or --resume to continue a run)")
    return from_args(ClassifyOptions, args)


def add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classification: train, distil (KD, ensembles, CLIP-to-CNN), predict",
                       description="Classifier distillation. Data: ImageFolder layout, DATA/train/<class>/<image> "
                                   "and DATA/val/<class>/<image>. Unreadable or truncated images are skipped with "
                                   "a count.")
    cs = p.add_subparsers(dest="classify_command", metavar="CLASSIFY_COMMAND", required=True)
    _add_training(cs)
    _add_teacher_tools(cs)
    _add_student_tools(cs)


def _add_training(cs: argparse._SubParsersAction) -> None:
    """train, distill, clip-distill: their flags are ClassifyOptions' fields."""
    from .options import ClassifyOptions

    t = cs.add_parser("train", help="train a teacher or a baseline student from labels")
    add_options(t, ClassifyOptions, command="train")
    t.set_defaults(func=_run_train)

    d = cs.add_parser("distill", help="Hinton KD from one teacher or an ensemble, plus feature KD",
                      description=KD_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(d, ClassifyOptions, command="distill")
    d.set_defaults(func=_run_distill)

    c = cs.add_parser("clip-distill", help="train a timm CNN to reproduce OpenCLIP embeddings (no labels needed)")
    add_options(c, ClassifyOptions, command="clip-distill", defaults={"temperature": 1.0},
                helps={"temperature": "temperature of --loss kl"})
    c.set_defaults(func=_run_clip_distill)


def _add_teacher_tools(cs: argparse._SubParsersAction) -> None:
    """embed (a teacher run once into a store), text-embed and probe (the heads of a CLIP teacher)."""
    e = cs.add_parser("embed", help="run a teacher once over a folder into a memory-mapped store")
    flag(e, "--source", required=True, help="image folder (all images under it, recursively)")
    flag(e, "--out", required=True, help="store folder to write")
    g = e.add_argument_group("teacher: an OpenCLIP model, or classifier checkpoint(s)")
    _clip_flags(g, required=False)
    flag(g, "--teacher", nargs="+", default=[], help="classifier checkpoint(s): their logits are stored")
    flag(e, "--batch-size", type=int, default=64, help="batch size")
    add_shared(e, workers=4, device="")
    flag(e, "--dtype", choices=["float32", "float16"], default="float32", help="storage type (float16 halves disk)")
    flag(e, "--exist-ok", action="store_true", help="replace an existing store")
    e.set_defaults(func=_run_embed)

    te = cs.add_parser("text-embed", help="prompts file (one class a line) -> zero-shot text head")
    _clip_flags(te)
    flag(te, "--prompts", required=True, help="one class description per line ('name: a photo of a ...' or text)")
    flag(te, "--classes-from", default="", help="labeled folder whose class folders the prompts must match")
    flag(te, "--out", required=True, help="head file to write (.pt)")
    add_shared(te, device="")
    te.set_defaults(func=_run_text_embed)

    pr = cs.add_parser("probe", help="linear-probe head on the stored embeddings of labeled images")
    flag(pr, "--store", required=True, help="embedding store covering the labeled images")
    flag(pr, "--data", required=True, help="labeled folder <class>/<image> (inside the store's source folder)")
    flag(pr, "--out", required=True, help="head file to write (.pt)")
    flag(pr, "--weight-decay", type=float, default=1e-3, help="L2 penalty of the logistic regression")
    pr.set_defaults(func=_run_probe)


def _add_prediction(p: argparse.ArgumentParser, *, topk: int) -> None:
    """What predict and demo share."""
    flag(p, "--weights", required=True, help="student checkpoint (best.pt)")
    flag(p, "--head", default="", help="another head for a CLIP-distilled student (same teacher)")
    flag(p, "--topk", type=int, default=topk, help="classes to show")
    add_shared(p, device="cpu")


def _add_student_tools(cs: argparse._SubParsersAction) -> None:
    """predict and demo (a trained student on files or a camera), filter (a CLIP teacher picks images)."""
    v = cs.add_parser("val", help="top-1, top-5 and loss of a checkpoint on a split (default test/)",
                      description="Scores a best.pt on DATA/<split>. val/ chose best.pt during training, so "
                                  "its val figure is the best of many noisy readings; test/, which chose "
                                  "nothing, says how good the model is.")
    flag(v, "--weights", required=True, help="classifier checkpoint (best.pt)")
    flag(v, "--data", required=True, help="dataset folder (ImageFolder layout: DATA/<split>/<class>/<image>)")
    flag(v, "--split", default="test", help="subfolder to score: test, val or train")
    flag(v, "--batch-size", type=int, default=256, help="images per forward pass")
    add_shared(v, device="cpu", workers=0)
    v.set_defaults(func=_run_val)

    pd = cs.add_parser("predict", help="top-k classes of image files or folders")
    _add_prediction(pd, topk=5)
    flag(pd, "--source", nargs="+", required=True, help="image files and/or folders")
    flag(pd, "--save-csv", default="", help="also write the predictions to this CSV file")
    pd.set_defaults(func=_run_predict)

    dm = cs.add_parser("demo", help="live top-k on camera frames (OpenCV); q quits")
    _add_prediction(dm, topk=3)
    flag(dm, "--camera", default="0", help="camera index, or a video file")
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
    from yolodistill.training import select_device

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


def _run_val(args):
    from .trainer import score_checkpoint

    metrics = score_checkpoint(args.weights, args.data, split=args.split, batch_size=args.batch_size,
                               workers=args.workers, device=args.device)
    LOGGER.info(f"{args.weights} on {args.data}/{args.split}: top-1 {metrics['metrics/accuracy_top1']:.4f}, "
                f"top-5 {metrics['metrics/accuracy_top5']:.4f}, loss {metrics['val/loss']:.4f}")
    return metrics


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
