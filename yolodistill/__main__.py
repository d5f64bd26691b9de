"""`python -m yolodistill` (and `torchrun -m yolodistill`) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
