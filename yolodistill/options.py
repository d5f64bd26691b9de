"""Options declared once: the field of an options dataclass carries its default, help text, flag spellings and
argparse details, and the command-line parsers are generated from the dataclasses (one dataclass a command:
add_command). The options every command shares (--project --name --exist-ok --device --seed --trust-checkpoint,
--workers) are declared once in SHARED, with each command's own default.

Every flag is accepted in both spellings users type, `--t_weights` and `--t-weights` (yolov5 mixes them).
"""

from __future__ import annotations

import argparse
from copy import deepcopy
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Callable, Optional, Sequence

RUN_GROUP = "run folder, device, seed"

# name: (help, argparse details); defaults differ by command and are given where the option is used
SHARED: dict[str, tuple[str, dict]] = {
    "project": ("save to project/name", {}),
    "name": ("save to project/name", {}),
    "exist_ok": ("existing project/name ok, do not increment", {}),
    "device": ("cuda device, i.e. 0 or cpu", {}),
    "seed": ("global training seed", {"type": int}),
    "workers": ("max dataloader workers", {"type": int}),
    "trust_checkpoint": ("load checkpoints with full pickle (runs code in the file): only for files you trust", {}),
}


def flag(parser: argparse._ActionsContainer, name: str, *aliases: str, **kwargs) -> None:
    """Add a flag under both spellings (`--t_weights` and `--t-weights`), like users type them."""
    spellings = [name, *aliases]
    for s in list(spellings):
        if s.startswith("--"):
            for alt in (s.replace("_", "-"), s[:2] + s[2:].replace("-", "_")):
                if alt not in spellings:
                    spellings.append(alt)
    parser.add_argument(*spellings, **kwargs)


def option(default: Any, help: str, *, flags: Sequence[str] = (), primary: Optional[str] = None, group: str = "",
           commands: Optional[Sequence[str]] = None, cli: bool = True, **argparse_kwargs) -> Field:
    """A dataclass field that is also the command-line option `--<field-name>` (or `primary`), with the extra
    spellings `flags`, shown under `group`, on the subcommands `commands` (all when None). The argparse
    details (type, nargs, choices, action, const, metavar) follow from the default unless given: a False
    bool is a switch, a list takes one or more values. `cli=False`: an option of the Python API only."""
    meta = {"help": help, "flags": tuple(flags), "primary": primary, "group": group,
            "commands": None if commands is None else tuple(commands), "cli": cli, "argparse": argparse_kwargs}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def shared(name: str, default: Any, *, group: str = RUN_GROUP) -> Field:
    """A SHARED option with this command's default (shown under `group`)."""
    help_text, kwargs = SHARED[name]
    return option(default, help_text, group=group, **kwargs)


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _add(parser, name: str, default: Any, help_text: str, aliases: Sequence[str], primary: Optional[str],
         kwargs: dict) -> None:
    kwargs = dict(kwargs)
    if "action" not in kwargs and "nargs" not in kwargs:
        if isinstance(default, bool):
            kwargs["action"] = "store_true" if not default else "store_false"
        elif isinstance(default, list):
            kwargs["nargs"] = "+"
        elif isinstance(default, (int, float)) and "type" not in kwargs:
            kwargs["type"] = type(default)
    flag(parser, primary or f"--{name.replace('_', '-')}", *aliases, dest=name, default=default, help=help_text,
         **kwargs)


def add_options(parser: argparse.ArgumentParser, cls: type, *, command: Optional[str] = None,
                defaults: Optional[dict] = None, helps: Optional[dict] = None) -> None:
    """Every command-line field of the dataclass `cls` (those of `command`), in argument groups by their group.
    `defaults`/`helps`: this command's own default or help text for some fields."""
    groups: dict[str, argparse._ActionsContainer] = {}
    for f in fields(cls):
        meta = f.metadata
        if "help" not in meta or not meta["cli"]:
            continue
        if meta["commands"] is not None and command not in meta["commands"]:
            continue
        target = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        default = (defaults or {}).get(f.name, _default(f))
        _add(target, f.name, default, (helps or {}).get(f.name, meta["help"]), meta["flags"], meta["primary"],
             meta["argparse"])


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` from parsed arguments (fields the parser did not have keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def add_command(sub: argparse._SubParsersAction, name: str, cls: type, run: Callable[[Any], Any], *,
                defaults: Optional[dict] = None, helps: Optional[dict] = None,
                **parser_kwargs: Any) -> argparse.ArgumentParser:
    """The subcommand `name`, its flags the command-line fields of `cls` that `name` has (add_options); once
    parsed, run_command() hands `run` the `cls` instance."""
    parser = sub.add_parser(name, **parser_kwargs)
    add_options(parser, cls, command=name, defaults=defaults, helps=helps)
    parser.set_defaults(func=run, options_class=cls)
    return parser


def run_command(args: argparse.Namespace) -> Any:
    """Run the parsed subcommand (add_command) with its options."""
    return args.func(from_args(args.options_class, args))


@dataclass
class RunOptions:
    """The options every training command has (its own defaults by overriding a field with shared())."""

    workers: int = shared("workers", 8)
    device: str = shared("device", "")
    project: str = shared("project", "runs/train")
    name: str = shared("name", "exp")
    exist_ok: bool = shared("exist_ok", False)
    seed: int = shared("seed", 0)
