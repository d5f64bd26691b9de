"""The one exception type that means "the user gave us something we cannot use"."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message on one line and exits non-zero."""
