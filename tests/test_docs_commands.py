"""Every `yolodistill ...` command that README.md and docs/*.md show parses with the command-line parser.

A renamed or dropped flag, or a typo in an example, fails here instead of on a user's machine. Commands are taken
from the ```bash blocks: lines continued with `\\` are joined, a leading `$ ` or `VAR=value` assignments are
stripped, `$VAR` is expanded from an assignment earlier in the same block, and `torchrun ... -m yolodistill ...`
counts as the `yolodistill ...` after `-m`. Nothing runs: only `build_parser().parse_args()`.

The README's two opening blocks install the project and run the tests with pip and `python -m`: what is checked
of them is that `.ci/run` runs the README's test command, step by step.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
# Documented lines that are not whole commands and cannot be parsed; keep this list short.
NOT_COMMANDS: set[str] = set()


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def _lines(block: str) -> list[str]:
    return block.replace("\\\n", " ").splitlines()


def _commands(page: Path) -> list[tuple[str, list[str]]]:
    """(the line as written, its arguments after `yolodistill`) for every yolodistill command of `page`."""
    found = []
    for block in _blocks(page):
        variables: dict[str, str] = {}
        for line in _lines(block):
            text = line.strip()
            if text.startswith("$ "):
                text = text[2:]
            if not text or text.startswith("#") or text in NOT_COMMANDS:
                continue
            words = shlex.split(text, comments=True)
            while words and ASSIGNMENT.match(words[0]):  # VAR=value [command]
                name, _, value = words.pop(0).partition("=")
                variables[name] = value
            if not words:
                continue
            if words[0] == "torchrun" and "-m" in words:  # torchrun's options, then -m yolodistill ...
                words = words[words.index("-m") + 1:]
            if words[0] != "yolodistill":
                continue
            args = []
            for word in words[1:]:
                if word.startswith("$") and word[1:] in variables:
                    args += shlex.split(variables[word[1:]])
                else:
                    args.append(word)
            found.append((text, args))
    return found


def _all_commands() -> list[tuple[str, str, list[str]]]:
    return [(page.relative_to(ROOT).as_posix(), text, args) for page in PAGES for text, args in _commands(page)]


COMMANDS = _all_commands()


def test_the_docs_show_commands():
    pages = {page for page, _, _ in COMMANDS}
    assert "README.md" in pages, "no yolodistill command found in the README's bash blocks"
    assert len(COMMANDS) > 20, COMMANDS


@pytest.mark.parametrize("page, text, args", COMMANDS, ids=[f"{p}:{t[:60]}" for p, t, _ in COMMANDS])
def test_every_documented_command_parses(page, text, args):
    from yolodistill.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{page}: `{text}` does not parse (argparse exited with {e.code}; its message is above)")


def test_the_readme_opens_with_the_quickstart_and_the_test_command_ci_runs():
    blocks = _blocks(ROOT / "README.md")
    assert blocks[0].splitlines()[-1] == ("python -m venv .venv && . .venv/bin/activate && pip install -e . "
                                          "&& yolodistill quickstart")
    test_command = blocks[1].splitlines()[-1]
    assert test_command.endswith(" && python -m pytest -q"), test_command
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for step in test_command.split(" && "):
        assert step in ci, f".ci/run does not run the README's `{step}` (README: `{test_command}`)"
