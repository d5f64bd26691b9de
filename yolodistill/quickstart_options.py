"""The options of `yolodistill quickstart`, declared once (yolodistill.options); no torch here, so building the
command-line parser stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .options import option

QUICKSTART_DOC = ("Generate the synthetic dataset (with images no model has seen, unlabeled), train a yolov5s teacher "
                  "(cached), a yolov5n student alone, one distilled from the teacher and one distilled on the "
                  "unlabeled images too, score each on the test split, print params, GFLOPs, mAP and CPU latency, "
                  "plot val mAP per epoch, and export and benchmark the distilled student val prefers. About 25 "
                  "minutes on 2 CPU cores; --fast is a smoke run of under 3 minutes.")


@dataclass
class QuickstartOptions:
    """`yolodistill quickstart`. The fields that are also quickstart.Plan's (teacher_epochs, student_epochs, seed)
    override the plan where given."""

    out: str = option("runs/quickstart", "folder for data, runs, table and plot")
    fast: bool = option(False, "tiny sizes: checks the pipeline, not the accuracy")
    device: str = option("cpu", "cpu or a cuda device such as 0")
    teacher_epochs: Optional[int] = option(None, "override the plan's teacher epochs", type=int)
    student_epochs: Optional[int] = option(None, "override the plan's student epochs", type=int)
    seed: Optional[int] = option(None, "dataset and training seed", type=int)
    noplots: bool = option(False, "no yolov5 plots in the training runs (as train --noplots)")
