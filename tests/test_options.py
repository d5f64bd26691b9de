"""Options declared once: the parsers are generated from the options dataclasses, so a flag's default is the
Python API's default, and the same idea has the same flag in both tasks."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields, is_dataclass

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
    assert (cls.t_weights, cls.d_layers, cls.f_weight, cls.seed) == (["t.pt"], ["auto"], 0.5, 3)
    assert _parse("train", "--teacher", "t.pt").t_weights == "t.pt"
    embed = ("classify", "embed", "--source", "s", "--out", "o")
    assert _parse(*embed, "--t_weights", "a.pt", "b.pt").t_weights == ["a.pt", "b.pt"]


@pytest.mark.parametrize("old, new", [
    (("classify", "distill", "--teacher", "a.pt", "b.pt"), ("classify", "distill", "--t_weights", "a.pt", "b.pt")),
    (("classify", "distill", "--feature-layers", "s:t", "auto"), ("classify", "distill", "--d_layers", "s:t", "auto")),
    (("classify", "distill", "--feature_layers", "s:t"), ("classify", "distill", "--d-layers", "s:t")),
    (("classify", "distill", "--f-weight", "2"), ("classify", "distill", "--f_weight", "2")),
    (("classify", "embed", "--source", "s", "--out", "o", "--teacher", "a.pt"),
     ("classify", "embed", "--source", "s", "--out", "o", "--t_weights", "a.pt")),
])
def test_the_classifier_tasks_earlier_flag_names_still_parse_to_the_same_value(old, new):
    assert vars(_parse(*old)) == vars(_parse(*new))


def test_a_checkpoint_with_the_earlier_field_names_resumes_with_them():
    """ClassifyOptions' teacher/feature_layers became t_weights/d_layers: last.pt files written before keep theirs."""
    options = ClassifyOptions.from_dict({"teacher": ["t.pt"], "feature_layers": ["auto"], "epochs": 3, "gone": 1})
    assert (options.t_weights, options.d_layers, options.epochs) == (["t.pt"], ["auto"], 3)


def _leaf_parsers(parser, path=()):
    """(command path, parser) of every command that runs (the leaves under `data` and `classify` too)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    others = [a for a in parser._actions
              if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
    assert not others, f"{' '.join(path)}: options beside its subcommands: {[a.dest for a in others]}"
    return [leaf for sub in subs for name, p in sub.choices.items() for leaf in _leaf_parsers(p, (*path, name))]


LEAVES = _leaf_parsers(build_parser())
# a command's own default for a field it shares (clip-distill's KL through a CLIP head: T 1)
OWN_DEFAULTS = {(("classify", "clip-distill"), "temperature"): 1.0}


def test_every_command_is_found():
    commands = {" ".join(path) for path, _ in LEAVES}
    assert {"train", "val", "detect", "export", "benchmark", "quickstart", "data synth", "data digits",
            "classify train", "classify distill", "classify clip-distill", "classify embed", "classify filter"} <= commands


@pytest.mark.parametrize("path, parser", LEAVES, ids=[" ".join(path) for path, _ in LEAVES])
def test_every_commands_flags_are_its_options_dataclass(path, parser):
    """One declaration a command: the parser's options are exactly the command-line fields of the dataclass it was
    generated from (those of this command), each with the field's default, and parsing hands its function an
    instance of that dataclass."""
    cls = parser.get_default("options_class")
    assert is_dataclass(cls), f"{' '.join(path)} is not generated from an options dataclass"
    actions = {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    declared = {f.name: f for f in _cli_fields(cls, path[-1])}
    assert set(actions) == set(declared), (set(actions) ^ set(declared))
    for name, f in declared.items():
        default = f.default_factory() if f.default is MISSING else f.default
        assert actions[name].default == OWN_DEFAULTS.get((path, name), default), name
        assert actions[name].help == f.metadata["help"] or (path, name) in OWN_DEFAULTS, name
    assert callable(parser.get_default("func"))


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
