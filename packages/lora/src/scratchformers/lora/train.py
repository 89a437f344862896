"""Fine-tune a pretrained BERT as a review classifier with LoRA (or in full), as a module for
``accelerate launch``:

    accelerate launch -m scratchformers.lora.train [--preset tiny] [--base DIR] [...]
    scratchformers train lora [...]          # the same, on one process

Needs the ``[train]`` extra. The recipe is :mod:`scratchformers.recipes.lora`; ``--help``
lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.lora import LoraRecipe
from scratchformers.training.cli import run_recipe

__all__ = ["LoraRecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("lora", argv, prog="python -m scratchformers.lora.train")


if __name__ == "__main__":
    sys.exit(main())
