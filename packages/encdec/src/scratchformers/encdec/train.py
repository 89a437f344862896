"""Train the encoder-decoder from scratch on numbers in words (English to French or German),
as a module for ``accelerate launch``:

    accelerate launch -m scratchformers.encdec.train [--preset tiny] [...]
    scratchformers train encdec [...]          # the same, on one process

The recipe is :mod:`scratchformers.recipes.encdec`; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.encdec import EncDecRecipe
from scratchformers.training.cli import run_recipe

__all__ = ["EncDecRecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the encdec recipe with ``argv`` (default: the command line); the exit code."""
    return run_recipe("encdec", argv, prog="python -m scratchformers.encdec.train")


if __name__ == "__main__":
    sys.exit(main())
