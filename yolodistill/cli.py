"""The `yolodistill` command: train / val / detect with yolov5 train.py's flag names, and `classify ...`.

User mistakes (UserError) end with one line on stderr and exit code 1; argparse's own usage errors
exit with 2. Heavy imports (torch, yolov5) happen only once a subcommand runs, so --help is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from .options import add_options, add_shared, flag, from_args

DEFAULTS_DOC = """\
distillation defaults, and why (the measurements: docs/training.md#why-the-defaults):
  --d_weight 1.0   the output term is on the same per-image scale as yolov5's box/obj/cls losses
                   (it is scaled by the same hyp gains), so 1.0 weighs the teacher like the labels
  --f_weight 0.1   with the scale-free pkd loss; MSE of raw activations runs larger than the
                   task terms and hurt; watch train/distill/feature in results_all.png
  --d_layers       default: the layers feeding Detect in each model (P3/P4/P5: model.17 model.20
                   model.23 for the standard yolov5 yamls), paired level by level
  --feature-loss   pkd (Pearson correlation, scale-free) by default; mse (FitNets) and cwd
                   (channel-wise distillation) are built in; plugins add more through the
                   'yolodistill.feature_losses' entry points
  --output-loss    mse_ciou by default: mse's objectness and classes, boxes by CIoU; mse alone
                   (the Adlik fork's objectness-weighted MSE of the head's logits) teaches next to
                   nothing about where boxes are; kl is yolov5's own loss forms against the
                   teacher (KL of objectness on every cell and of classes, CIoU of boxes)
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .detection.train_options import TrainOptions

    p = sub.add_parser("train", help="train a YOLOv5 student, optionally distilled from a teacher",
                       description="Train a YOLOv5 student with yolov5's recipe, plus output and feature "
                                   "distillation from a frozen teacher.",
                       epilog=DEFAULTS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, TrainOptions)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from .detection.train_options import TrainOptions
    from .detection.trainer import DistillTrainer

    if args.resume:  # like train.py: a resumed run takes every option from its checkpoint
        options = TrainOptions(resume=args.resume, project=args.project, trust_checkpoint=args.trust_checkpoint)
    else:
        options = from_args(TrainOptions, args)
    DistillTrainer(options).run()


def _add_inference(p: argparse.ArgumentParser, *, inputs: tuple[str, str], conf: float, iou: float) -> None:
    """What val and detect share (yolov5's val.py and detect.py spelling and defaults)."""
    flag(p, "--weights", required=True,
         help="checkpoint (.pt), exported ONNX file (.onnx) or TensorRT engine (.engine, where TensorRT is)")
    flag(p, inputs[0], required=True, help=inputs[1])
    flag(p, "--conf-thres", type=float, default=conf, help="confidence threshold")
    flag(p, "--iou-thres", type=float, default=iou, help="NMS IoU threshold")


def _add_val(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("val", help="validate a checkpoint's, ONNX file's or engine's mAP on a dataset (yolov5 val)")
    _add_inference(p, inputs=("--data", "dataset yaml"), conf=0.001, iou=0.6)
    flag(p, "--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    flag(p, "--batch-size", type=int, default=32, help="batch size")
    flag(p, "--task", default="val", choices=["train", "val", "test"], help="dataset split")
    flag(p, "--single-cls", action="store_true", help="treat as single-class dataset")
    add_shared(p, workers=8, device="", project="runs/val", name="exp", exist_ok=False, trust_checkpoint=False)
    p.set_defaults(func=_run_val)


def _run_val(args: argparse.Namespace) -> None:
    from .detection.inference import val

    val(args.weights, args.data, imgsz=args.imgsz, batch_size=args.batch_size, device=args.device, task=args.task,
        conf_thres=args.conf_thres, iou_thres=args.iou_thres, workers=args.workers, project=args.project,
        name=args.name, exist_ok=args.exist_ok, verbose=True, single_cls=args.single_cls,
        trust=args.trust_checkpoint)


SOURCE_HELP = ("image or video file, folder, glob, .txt list (one source a line), camera index (0) or "
               "rtsp:// rtmp:// http:// stream URL")


def _add_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects in images, videos, cameras and streams (yolov5 detect)",
                       description="yolov5's detect.py for a .pt checkpoint, an .onnx file or a TensorRT .engine. "
                                   "Ctrl-C ends a camera or stream run, keeping its video playable.")
    _add_inference(p, inputs=("--source", SOURCE_HELP), conf=0.25, iou=0.45)
    flag(p, "--data", default=None, help="dataset yaml: class names for an .engine without its .onnx beside it")
    flag(p, "--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    flag(p, "--max-det", type=int, default=1000, help="maximum detections per image")
    flag(p, "--view-img", action="store_true", help="show results (q or Esc in the window stops)")
    flag(p, "--save-txt", action="store_true", help="save results to *.txt (YOLO format: class x y w h)")
    flag(p, "--save-conf", action="store_true", help="save confidences in --save-txt labels")
    flag(p, "--nosave", action="store_true", help="do not save images/videos")
    flag(p, "--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    flag(p, "--agnostic-nms", action="store_true", help="class-agnostic NMS")
    flag(p, "--line-thickness", type=int, default=3, help="bounding box thickness (pixels)")
    flag(p, "--hide-labels", action="store_true", help="hide labels")
    flag(p, "--hide-conf", action="store_true", help="hide confidences")
    flag(p, "--vid-stride", type=int, default=1, help="video frame-rate stride")
    add_shared(p, device="", project="runs/detect", name="exp", exist_ok=False, trust_checkpoint=False)
    p.set_defaults(func=_run_detect)


def _run_detect(args: argparse.Namespace) -> None:
    from .detection.inference import detect

    detect(args.weights, args.source, imgsz=args.imgsz, device=args.device, conf_thres=args.conf_thres,
           iou_thres=args.iou_thres, max_det=args.max_det, classes=args.classes, agnostic_nms=args.agnostic_nms,
           data=args.data, view_img=args.view_img, save_txt=args.save_txt, save_conf=args.save_conf,
           nosave=args.nosave, vid_stride=args.vid_stride, line_thickness=args.line_thickness,
           hide_labels=args.hide_labels, hide_conf=args.hide_conf, project=args.project, name=args.name,
           exist_ok=args.exist_ok, trust=args.trust_checkpoint)


QUICKSTART_DOC = ("Generate the synthetic dataset (with images no model has seen, unlabeled), train a yolov5s teacher "
                  "(cached), a yolov5n student alone, one distilled from the teacher and one distilled on the "
                  "unlabeled images too, score each on the test split, print params, GFLOPs, mAP and CPU latency, "
                  "plot val mAP per epoch, and export and benchmark the distilled student val prefers. About 25 "
                  "minutes on 2 CPU cores; --fast is a smoke run of under 3 minutes.")


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the whole story on generated data: teacher, student alone, distilled",
                       description=QUICKSTART_DOC)
    flag(p, "--out", default="runs/quickstart", help="folder for data, runs, table and plot")
    flag(p, "--fast", action="store_true", help="tiny sizes: checks the pipeline, not the accuracy")
    flag(p, "--device", default="cpu", help="cpu or a cuda device such as 0")
    flag(p, "--teacher-epochs", type=int, default=None, help="override the plan's teacher epochs")
    flag(p, "--student-epochs", type=int, default=None, help="override the plan's student epochs")
    flag(p, "--seed", type=int, default=None, help="dataset and training seed")
    flag(p, "--noplots", action="store_true", help="no yolov5 plots in the training runs (as train --noplots)")
    p.set_defaults(func=_run_quickstart)


def _run_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import run

    run(args.out, fast=args.fast, device=args.device, teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs, seed=args.seed, noplots=args.noplots)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: `data synth` (detection, generated), `data digits` (classification)")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = data_sub.add_parser("synth", help="generate a deterministic YOLO-format detection dataset",
                            description="Six look-alike classes (square/rectangle, circle/ring, triangle/arrow), "
                                        "small and large objects, rotation, texture, occlusion, clutter, blur; "
                                        "how hard is a dial (--difficulty and its knobs). Same seed and "
                                        "setting, same bytes.")
    flag(s, "--out", required=True, help="output folder (must be empty unless --exist-ok)")
    flag(s, "--n-train", type=int, default=800, help="training images")
    flag(s, "--n-val", type=int, default=200, help="validation images (they pick best.pt)")
    flag(s, "--n-test", type=int, default=200, help="test images (they score it; 0: no test split)")
    flag(s, "--n-unlabeled", type=int, default=0,
         help="images without labels in OUT/images/unlabeled, for `train --unlabeled` (0: none)")
    flag(s, "--imgsz", type=int, default=160, help="image size (square, pixels)")
    flag(s, "--classes", type=int, default=6, help="number of classes (1-6, in the order listed above)")
    flag(s, "--seed", type=int, default=0, help="random seed")
    flag(s, "--style", default="flat",  # checked by synth.generate: importing synth here would load cv2
          help="the look: flat (gradients, saturated fills) or textured (brick/grain/speckle under uneven "
               "light, pale outlined shapes with shadows): a second domain for fine-tuning")
    flag(s, "--difficulty", type=float, default=1.0,
          help="every knob below at once, 0 (easiest) to 1 (hardest: the original data)")
    k = s.add_argument_group("difficulty knobs (0-1; each overrides --difficulty)")
    flag(k, "--clutter", type=float, help="distractors: none at 0, two to six behind and one in front at 1")
    flag(k, "--lookalikes", type=float, help="how alike squares/rectangles and circles/rings are")
    flag(k, "--blur", type=float, help="share of blurred images (up to 35%%) and blur strength")
    flag(k, "--small", type=float, help="smallest object: 11%% of the image side at 0, 4%% at 1")
    flag(k, "--occlusion", type=float, help="objects never overlap at 0; up to half hidden at 1")
    flag(k, "--noise", type=float, help="background blotches and pixel noise, 30%% to 100%%")
    flag(s, "--exist-ok", action="store_true", help="write into a non-empty folder")
    s.set_defaults(func=_run_synth)
    g = data_sub.add_parser("digits", help="scikit-learn's 8x8 digits as ImageFolder folders (classification)",
                            description="Real handwritten digits (1,797 images, shipped with scikit-learn): "
                                        "OUT/full/{train,val,test}, OUT/few/{train,val,test} (a few labels per "
                                        "class; the same val and test images) and OUT/unlabeled. The 60/20/20 "
                                        "train/val/test split is fixed (val picks best.pt, test scores it); --seed "
                                        "picks the few.")
    flag(g, "--out", required=True, help="output folder (must be empty unless --exist-ok)")
    flag(g, "--few", type=int, default=10, help="labeled images per class in OUT/few/train")
    flag(g, "--seed", type=int, default=0, help="which few images are labeled")
    flag(g, "--exist-ok", action="store_true", help="write into a non-empty folder")
    g.set_defaults(func=_run_digits)


def _run_synth(args: argparse.Namespace) -> None:
    from .synth import Difficulty, generate

    difficulty = Difficulty.level(args.difficulty, clutter=args.clutter, lookalikes=args.lookalikes, blur=args.blur,
                                  small=args.small, occlusion=args.occlusion, noise=args.noise)
    path = generate(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, imgsz=args.imgsz,
                    classes=args.classes, seed=args.seed, difficulty=difficulty, style=args.style,
                    n_unlabeled=args.n_unlabeled, exist_ok=args.exist_ok)
    logging.getLogger("yolodistill").info(f"dataset written: {path}")
    if args.n_unlabeled:
        logging.getLogger("yolodistill").info(f"unlabeled images: {path.parent / 'images' / 'unlabeled'} "
                                              f"(train --unlabeled takes the folder)")


def _add_classify(sub: argparse._SubParsersAction) -> None:
    from .classification.cli import add_classify

    add_classify(sub)


def _run_digits(args: argparse.Namespace) -> None:
    from .classification.digits import write_digits

    out = write_digits(args.out, few=args.few, seed=args.seed, exist_ok=args.exist_ok)
    logging.getLogger("yolodistill").info(f"digits written: {out}/full, {out}/few, {out}/unlabeled")


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    from .deploy.cli import add_benchmark, add_export

    add_export(sub)
    add_benchmark(sub)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_quickstart, _add_train, _add_val, _add_detect, _add_data, _add_classify, _add_deploy)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="yolodistill", description="Knowledge distillation for YOLOv5.")
    parser.add_argument("--version", action="version", version=f"yolodistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse, run, and turn user mistakes into one line and a non-zero exit."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    from .errors import UserError

    try:
        args.func(args)
    except UserError as e:
        print(f"yolodistill {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = ("files written so far are kept" if args.command in ("detect", "val", "export", "benchmark") else
                "checkpoints written so far are intact; continue a training run with --resume")
        print(f"yolodistill {args.command}: interrupted ({kept})", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """The `yolodistill` program (console script, `python -m yolodistill`, `torchrun -m yolodistill`).

    Separate from main() so that main() stays callable from Python: a torchrun rank ends here through
    distributed.exit_rank, which skips the interpreter's teardown."""
    code = main()
    from .distributed import exit_rank

    exit_rank(code)


if __name__ == "__main__":
    entry()
