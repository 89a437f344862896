"""Train GPT-2 from scratch, as a module for ``accelerate launch``:

    accelerate launch -m scratchformers.gpt2.train [--preset tiny] [...]
    scratchformers train gpt2 [...]          # the same, on one process

The recipe is :mod:`scratchformers.recipes.gpt2`; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.gpt2 import GPT2Recipe
from scratchformers.training.cli import run_recipe

__all__ = ["GPT2Recipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("gpt2", argv, prog="python -m scratchformers.gpt2.train")


if __name__ == "__main__":
    sys.exit(main())
