"""Pretrain BERT from scratch as a masked language model, as a module for ``accelerate launch``:

    accelerate launch -m scratchformers.bert_mlm.train [--preset tiny] [...]
    scratchformers train bert-mlm [...]          # the same, on one process

The recipe is :mod:`scratchformers.recipes.bert_mlm`; ``--help`` lists every flag.
"""

from __future__ import annotations

import sys

from scratchformers.recipes.bert_mlm import BertMLMRecipe
from scratchformers.training.cli import run_recipe

__all__ = ["BertMLMRecipe", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_recipe("bert-mlm", argv, prog="python -m scratchformers.bert_mlm.train")


if __name__ == "__main__":
    sys.exit(main())
