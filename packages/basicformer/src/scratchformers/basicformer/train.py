"""Train a BasicFormer causal language model, as a module for ``accelerate launch``:

    accelerate launch -m scratchformers.basicformer.train [--preset tiny] [...]
    scratchformers train basicformer [...]          # the same, on one process

Both run the loop of ``scratchformers.training`` (install with the ``[train]`` extra) with the
recipe in :mod:`scratchformers.recipes.basicformer`, on the offline default corpus or on
``--dataset``. ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.basicformer import BasicFormerRecipe
from scratchformers.training.cli import run_recipe

__all__ = ["BasicFormerRecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("basicformer", argv, prog="python -m scratchformers.basicformer.train")


if __name__ == "__main__":
    sys.exit(main())
