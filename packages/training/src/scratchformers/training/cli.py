"""The ``scratchformers`` command.

``scratchformers train <recipe> [flags]`` runs the same thing as
``accelerate launch -m scratchformers.<recipe>.train [flags]``; use the latter to train with
several processes or GPUs.
"""

from __future__ import annotations

import argparse
import sys

from .loop import TrainingError, train
from .recipe import installed_recipes, load_recipe
from .settings import parse_settings


def run_recipe(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` for recipe ``name`` and train; returns the process exit code.

    Bad settings and bad data end with one clear line (exit code 2) instead of a traceback.
    """
    recipe = load_recipe(name)
    try:
        settings = parse_settings(recipe, argv, prog=prog)
        train(recipe, settings)
    except (ValueError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipes = installed_recipes()
    listing = "\n".join(f"  {name}" for name in sorted(recipes)) or "  (none installed)"
    parser = argparse.ArgumentParser(
        prog="scratchformers",
        description="Train scratchformers models with Accelerate, on a CPU, one GPU or many.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  scratchformers train basicformer\n"
        "  scratchformers train basicformer --preset small --output-dir runs/small\n"
        "  accelerate launch --num_processes 2 -m scratchformers.basicformer.train",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser(
        "train",
        help="train a model with one of the installed recipes",
        description=f"Train a model with one of the installed recipes:\n{listing}\n\n"
        "`scratchformers train <recipe> --help` shows the recipe's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_parser.add_argument(
        "recipe",
        choices=sorted(recipes),
        metavar="recipe",
        help="one of: " + ", ".join(sorted(recipes)),
    )
    train_parser.add_argument("flags", nargs=argparse.REMAINDER, help="the recipe's flags")
    arguments = parser.parse_args(argv)
    return run_recipe(
        arguments.recipe, arguments.flags, prog=f"scratchformers train {arguments.recipe}"
    )


if __name__ == "__main__":
    sys.exit(main())
