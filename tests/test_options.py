"""Options declared once: the parsers are generated from the options dataclasses, so a flag's default is the
Python API's default, and the same idea has the same flag in both tasks."""

from __future__ import annotations

from dataclasses import fields

import pytest

from yolodistill.classification.trainer import ClassifyOptions
from yolodistill.cli import build_parser
from yolodistill.detection.train_options import TrainOptions


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def _cli_fields(cls, command=None):
    return [f for f in fields(cls) if f.metadata.get("cli") and
            (f.metadata["commands"] is None or command in f.metadata["commands"])]


def test_train_flags_are_the_options_with_their_defaults():
    args, opts = _parse("train"), TrainOptions()
    cli = _cli_fields(TrainOptions)
    assert len(cli) >= 40
    for f in cli:
        assert getattr(args, f.name) == getattr(opts, f.name), f.name
    # what the trainer fills in is not a flag
    assert not hasattr(args, "save_dir") and not hasattr(args, "hyp_dict")


@pytest.mark.parametrize("command", ["train", "distill", "clip-distill"])
def test_classify_flags_are_the_options_with_their_defaults(command):
    args, opts = _parse("classify", command), ClassifyOptions()
    own = {"temperature": 1.0} if command == "clip-distill" else {}  # KL through a CLIP head: T 1 by default
    for f in _cli_fields(ClassifyOptions, command):
        assert getattr(args, f.name) == own.get(f.name, getattr(opts, f.name)), f.name
    kd_only = {f.name for f in fields(ClassifyOptions) if f.metadata.get("commands") == ("distill",)}
    assert kd_only and (command == "distill") == all(hasattr(args, n) for n in kd_only)


def test_the_same_idea_has_the_same_flag_in_both_tasks():
    det = _parse("train", "--t_weights", "t.pt", "--d_layers", "17:17", "--f_weight", "0.5", "--seed", "3")
    cls = _parse("classify", "distill", "--t_weights", "t.pt", "--d_layers", "auto", "--f_weight", "0.5",
                 "--seed", "3")
    assert (det.t_weights, det.d_layers, det.f_weight, det.seed) == ("t.pt", ["17:17"], 0.5, 3)
    assert (cls.teacher, cls.feature_layers, cls.f_weight, cls.seed) == (["t.pt"], ["auto"], 0.5, 3)
    # the older spellings stay
    old = _parse("classify", "distill", "--teacher", "a.pt", "b.pt", "--feature-layers", "s:t", "--f-weight", "2")
    assert (old.teacher, old.feature_layers, old.f_weight) == (["a.pt", "b.pt"], ["s:t"], 2.0)
    assert _parse("train", "--teacher", "t.pt").t_weights == "t.pt"


def _subparser(parser, *path):
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [("train",), ("val",), ("detect",), ("export",), ("benchmark",),
                                  ("classify", "train"), ("classify", "distill"), ("classify", "clip-distill"),
                                  ("classify", "embed")])
def test_shared_options_are_declared_once(path):
    """--project, --device, ... read the same everywhere: one help text, both spellings."""
    from yolodistill.options import SHARED

    actions = {a.dest: a for a in _subparser(build_parser(), *path)._actions}
    shared = [name for name in SHARED if name in actions]
    assert shared
    for name in shared:
        dashed = f"--{name.replace('_', '-')}"
        if (path, name) in ((("benchmark",), "device"), (("classify", "embed"), "exist_ok")):
            continue  # another meaning: the torch backend's device; replacing a store
        assert actions[name].help == SHARED[name][0], (path, name)
        assert {dashed, dashed.replace("-", "_").replace("__", "--")} <= set(actions[name].option_strings)
