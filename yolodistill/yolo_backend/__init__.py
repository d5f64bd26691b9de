"""The one place that talks to the `yolov5` package (7.0.14): a YOLOv5 upgrade touches only this folder.

Everything here composes yolov5's own parts (models, dataloader, ComputeLoss, ModelEMA,
smart_optimizer, val) and fences off what does not work offline or with current PyTorch:
check_dataset (downloads a font), check_amp (downloads weights), attempt_load (torch.load
with weights_only=True fails on pickled modules) and detect.run (same loader). By section:
_yolov5 (the imports and facts of the package), files (hyp, model and dataset yamls), models,
data (dataloaders), evaluation (val, pseudo-labels), prediction (detect on a frame), schedule (LR and
warmup), plots (yolov5's training plots, offline), quant_modules (YOLOv5's blocks with INT8 quantizers on
residual adds and concatenations).
"""

from ._yolov5 import *  # noqa: F401,F403 -- yolov5's parts, named in _yolov5.__all__
from ._yolov5 import __all__ as _parts
from .data import (autoanchor, check_labels, create_train_loader, create_unlabeled_loader, create_val_loader,
                   listed_images, report_scan, reweight_images)
from .evaluation import pseudo_labels, validate
from .files import (count_images, default_hyp_path, image_files, load_data_yaml, load_hyp, resolve_hyp,
                    resolve_model_cfg)
from .models import (build_model, checkpoint_model, copy_anchors, create_student, detect_head, detect_input_layers,
                     export_metadata, export_model, forward_raw, head_layout, load_detection_checkpoint, load_model,
                     load_yolov5_checkpoint, max_stride, model_stats, num_classes, prepare_for_loss,
                     raw_head_outputs, scaled_loss_gains, strip_checkpoint)
from .plots import enable_plots, plot_labels, plot_results, plot_train_batch, wait_for_plots
from .prediction import detect_boxes, draw_boxes, label_lines, prepare_image
from .quant_modules import float_scopes, quantize_yolov5_blocks, share_tensor_scales  # registers the block rules
from .schedule import lr_lambda, random_rescale, warm_up, warmup_iterations

__all__ = [*_parts, "autoanchor", "build_model", "check_labels", "checkpoint_model", "copy_anchors", "count_images",
           "create_student", "create_train_loader", "create_unlabeled_loader", "create_val_loader",
           "default_hyp_path", "detect_boxes", "detect_head", "detect_input_layers", "draw_boxes", "export_metadata",
           "export_model", "forward_raw", "head_layout", "image_files", "label_lines", "listed_images",
           "load_data_yaml", "load_detection_checkpoint", "load_hyp", "load_model", "load_yolov5_checkpoint",
           "lr_lambda", "max_stride", "model_stats", "num_classes", "prepare_for_loss", "prepare_image",
           "raw_head_outputs", "scaled_loss_gains",
           "report_scan", "resolve_hyp", "resolve_model_cfg", "reweight_images", "validate", "warmup_iterations",
           "warm_up", "random_rescale", "strip_checkpoint", "pseudo_labels", "enable_plots", "plot_labels",
           "plot_results", "plot_train_batch", "wait_for_plots", "float_scopes", "quantize_yolov5_blocks",
           "share_tensor_scales"]
