"""`python -m yolodistill` (and `torchrun -m yolodistill`) runs the CLI."""

from .cli import entry

entry()
