"""Classification distillation: Hinton logit KD, teacher ensembles, feature KD and CLIP-to-CNN.

    from yolodistill.classification import ClassifyOptions, KDTrainer
    result = KDTrainer(ClassifyOptions(data="datasets/digits/full", model="mlp_small", imgsz=8,
                                       t_weights=["teacher.pt"], temperature=4, alpha=0.9)).run()

Public names load lazily, so the CLI's --help does not import torch, timm or open_clip.
"""

from importlib import import_module

_PUBLIC = {
    "ClassifyOptions": "trainer",
    "ClassifyTrainer": "trainer",
    "KDTrainer": "distill",
    "ClipDistillTrainer": "clip_distill",
    "ClassifierTeachers": "teachers",
    "hinton_loss": "losses",
    "kd_kl_loss": "losses",
    "soft_targets": "losses",
    "TeacherStore": "store",
    "write_store": "store",
    "embed_clip": "embed",
    "embed_classifiers": "embed",
    "load_clip": "clip_teacher",
    "LinearHead": "clip_teacher",
    "text_head": "clip_teacher",
    "fit_linear_probe": "clip_teacher",
    "Predictor": "predict",
    "build_classifier": "models",
    "load_classifier": "models",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'yolodistill.classification' has no attribute {name!r}")
