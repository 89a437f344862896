"""Train a Vision Transformer image classifier from scratch, as a module for ``accelerate launch``:

    accelerate launch -m scratchformers.vit.train [--preset tiny] [...]
    scratchformers train vit [...]          # the same, on one process

The recipe is :mod:`scratchformers.recipes.vit`; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.vit import ViTRecipe
from scratchformers.training.cli import run_recipe

__all__ = ["ViTRecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("vit", argv, prog="python -m scratchformers.vit.train")


if __name__ == "__main__":
    sys.exit(main())
