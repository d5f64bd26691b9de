"""The options of `yolodistill data synth` (synth.generate) and `yolodistill data digits`
(classification.digits.write_digits), declared once (yolodistill.options); nothing heavy is imported here (synth
loads cv2), so building the command-line parser stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .options import option

SYNTH_DOC = ("Six look-alike classes (square/rectangle, circle/ring, triangle/arrow), small and large objects, "
             "rotation, texture, occlusion, clutter, blur; how hard is a dial (--difficulty and its knobs). Same "
             "seed and setting, same bytes.")
DIGITS_DOC = ("Real handwritten digits (1,797 images, shipped with scikit-learn): OUT/full/{train,val,test}, "
              "OUT/few/{train,val,test} (a few labels per class; the same val and test images) and OUT/unlabeled. "
              "The 60/20/20 train/val/test split is fixed (val picks best.pt, test scores it); --seed picks the few.")
KNOBS_GROUP = "difficulty knobs (0-1; each overrides --difficulty)"
OUT_HELP = "output folder (must be empty unless --exist-ok)"
EXIST_OK_HELP = "write into a non-empty folder"


@dataclass
class SynthOptions:
    """`yolodistill data synth`: a deterministic YOLO-format detection dataset. The knobs are synth.Difficulty's
    fields; from Python, `difficulty` may also be a synth.Difficulty (the knobs given still override it)."""

    out: str = option("", OUT_HELP, required=True)
    n_train: int = option(800, "training images")
    n_val: int = option(200, "validation images (they pick best.pt)")
    n_test: int = option(200, "test images (they score it; 0: no test split)")
    n_unlabeled: int = option(0, "images without labels in OUT/images/unlabeled, for `train --unlabeled` (0: none)")
    imgsz: int = option(160, "image size (square, pixels)")
    classes: int = option(6, "number of classes (1-6, in the order listed above)")
    seed: int = option(0, "random seed")
    style: str = option("flat", "the look: flat (gradients, saturated fills) or textured (brick/grain/speckle under "
                                "uneven light, pale outlined shapes with shadows): a second domain for fine-tuning")
    difficulty: float = option(1.0, "every knob below at once, 0 (easiest) to 1 (hardest: the original data)")
    clutter: Optional[float] = option(None, "distractors: none at 0, two to six behind and one in front at 1",
                                      group=KNOBS_GROUP, type=float)
    lookalikes: Optional[float] = option(None, "how alike squares/rectangles and circles/rings are", group=KNOBS_GROUP,
                                         type=float)
    blur: Optional[float] = option(None, "share of blurred images (up to 35%%) and blur strength", group=KNOBS_GROUP,
                                   type=float)
    small: Optional[float] = option(None, "smallest object: 11%% of the image side at 0, 4%% at 1", group=KNOBS_GROUP,
                                    type=float)
    occlusion: Optional[float] = option(None, "objects never overlap at 0; up to half hidden at 1", group=KNOBS_GROUP,
                                        type=float)
    noise: Optional[float] = option(None, "background blotches and pixel noise, 30%% to 100%%", group=KNOBS_GROUP,
                                    type=float)
    exist_ok: bool = option(False, EXIST_OK_HELP)
    progress: bool = option(True, "a progress bar", cli=False)


@dataclass
class DigitsOptions:
    """`yolodistill data digits`: scikit-learn's 8x8 digits as ImageFolder folders."""

    out: str = option("", OUT_HELP, required=True)
    few: int = option(10, "labeled images per class in OUT/few/train")
    seed: int = option(0, "which few images are labeled")
    exist_ok: bool = option(False, EXIST_OK_HELP)
