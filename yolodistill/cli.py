"""The `yolodistill` command: train / val / detect with yolov5 train.py's flag names, and `classify ...`. Every
command's flags are the fields of its options dataclass (yolodistill.options): this module builds the parsers from
them and dispatches.

User mistakes (UserError) end with one line on stderr and exit code 1; argparse's own usage errors
exit with 2. Heavy imports (torch, yolov5) happen only once a subcommand runs, so --help is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from typing import Callable, Optional, Sequence

from .data_options import DIGITS_DOC, SYNTH_DOC, DigitsOptions, SynthOptions
from .detection.inference_options import DetectOptions, ValOptions
from .detection.train_options import TrainOptions
from .options import add_command, run_command
from .quickstart_options import QUICKSTART_DOC, QuickstartOptions

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
    add_command(sub, "train", TrainOptions, _run_train,
                help="train a YOLOv5 student, optionally distilled from a teacher",
                description="Train a YOLOv5 student with yolov5's recipe, plus output and feature distillation from a "
                            "frozen teacher.",
                epilog=DEFAULTS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)


def _run_train(options: TrainOptions) -> None:
    from .detection.trainer import DistillTrainer

    if options.resume:  # like train.py: a resumed run takes every option from its checkpoint
        options = TrainOptions(resume=options.resume, project=options.project,
                               trust_checkpoint=options.trust_checkpoint)
    DistillTrainer(options).run()


def _add_inference(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "val", ValOptions, _run_val,
                help="validate a checkpoint's, ONNX file's or engine's mAP on a dataset (yolov5 val)")
    add_command(sub, "detect", DetectOptions, _run_detect,
                help="detect objects in images, videos, cameras and streams (yolov5 detect)",
                description="yolov5's detect.py for a .pt checkpoint, an .onnx file or a TensorRT .engine. Ctrl-C "
                            "ends a camera or stream run, keeping its video playable.")


def _run_val(options: ValOptions) -> None:
    from .detection.inference import val

    options.verbose = True  # the mAP of every class, as yolov5's val.py prints it
    val(**asdict(options))


def _run_detect(options: DetectOptions) -> None:
    from .detection.inference import detect

    detect(**asdict(options))


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "quickstart", QuickstartOptions, _run_quickstart, description=QUICKSTART_DOC,
                help="the whole story on generated data: teacher, student alone, distilled")


def _run_quickstart(options: QuickstartOptions) -> None:
    from .quickstart import run

    run(**asdict(options))


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: `data synth` (detection, generated), `data digits` (classification)")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    add_command(data_sub, "synth", SynthOptions, _run_synth, description=SYNTH_DOC,
                help="generate a deterministic YOLO-format detection dataset")
    add_command(data_sub, "digits", DigitsOptions, _run_digits, description=DIGITS_DOC,
                help="scikit-learn's 8x8 digits as ImageFolder folders (classification)")


def _run_synth(options: SynthOptions) -> None:
    from .synth import generate

    path = generate(**asdict(options))
    logging.getLogger("yolodistill").info(f"dataset written: {path}")
    if options.n_unlabeled:
        logging.getLogger("yolodistill").info(f"unlabeled images: {path.parent / 'images' / 'unlabeled'} "
                                              f"(train --unlabeled takes the folder)")


def _run_digits(options: DigitsOptions) -> None:
    from .classification.digits import write_digits

    out = write_digits(**asdict(options))
    logging.getLogger("yolodistill").info(f"digits written: {out}/full, {out}/few, {out}/unlabeled")


def _add_classify(sub: argparse._SubParsersAction) -> None:
    from .classification.cli import add_classify

    add_classify(sub)


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    from .deploy.cli import add_deploy

    add_deploy(sub)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_quickstart, _add_train, _add_inference, _add_data, _add_classify, _add_deploy)


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
        run_command(args)
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
