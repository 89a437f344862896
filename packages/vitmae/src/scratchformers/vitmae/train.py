"""Pretrain a ViT encoder as a masked autoencoder from scratch, as a module for
``accelerate launch``:

    accelerate launch -m scratchformers.vitmae.train [--preset tiny] [...]
    scratchformers train vitmae [...]          # the same, on one process

The recipe is :mod:`scratchformers.recipes.vitmae`; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.vitmae import ViTMAERecipe
from scratchformers.training.cli import run_recipe

__all__ = ["ViTMAERecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("vitmae", argv, prog="python -m scratchformers.vitmae.train")


if __name__ == "__main__":
    sys.exit(main())
