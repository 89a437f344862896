"""Train CLIP from scratch on captioned shapes, as a module for
``accelerate launch``:

    accelerate launch -m scratchformers.clip.train [--preset tiny] [...]
    scratchformers train clip [...]          # the same, on one process

The recipe is :mod:`scratchformers.recipes.clip`; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.clip import CLIPRecipe
from scratchformers.training.cli import run_recipe

__all__ = ["CLIPRecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("clip", argv, prog="python -m scratchformers.clip.train")


if __name__ == "__main__":
    sys.exit(main())
