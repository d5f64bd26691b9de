"""The one exception type that means "the user gave us something we cannot use", and how its messages quote
another exception on one line."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message on one line and exits non-zero."""


def one_line(e: BaseException | str, limit: int = 200, *, first_sentence: bool = False) -> str:
    """An exception's message for a one-line error: its first line (with `first_sentence`, that line's first
    sentence), at most `limit` characters. torch's and open_clip's messages run to paragraphs."""
    text = (str(e).strip().splitlines() or [""])[0]
    if first_sentence:
        text = text.split(". ")[0]
    text = text or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
