"""The ``scratchformers`` command.

``scratchformers train <recipe> [flags]`` runs the same thing as
``accelerate launch -m scratchformers.<recipe>.train [flags]``; use the latter to train with
several processes or GPUs. The other commands work on a trained model's folder.

Only the standard library and the recipes' light declarations are imported until a command
runs, so ``--help`` answers at once and a run says what it does from its first second; torch,
transformers and Accelerate come in when the work starts.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .console import is_main_process, status
from .errors import TrainingError, TrainingInterrupted
from .recipe import installed_recipes, load_recipe
from .rundir import RunLock, check_output_dir
from .settings import parse_settings

# The commands besides `train`: name -> (module of this package, one-line help). Each module
# has add_arguments(parser), light like this one, and run(arguments) -> exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "continue a prompt with a trained model, printing as it goes"),
    "eval": ("evaluation", "a trained model's held-out metrics, as its recipe computes them"),
    "export": ("export", "write a trained model as the transformers class it mirrors"),
    "push": ("push", "upload a trained model's folder or an export to the Hugging Face Hub"),
}


def run_recipe(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` for recipe ``name`` and train; returns the process exit code.

    Bad settings and bad data end with one clear line (exit code 2) instead of a traceback; a
    run stopped by Ctrl-C or SIGTERM saves a checkpoint, says how to continue, and exits with
    130 or 143; a second Ctrl-C stops at once (130). The output folder's lock is taken before
    its checks and given up on every way out (:class:`~.rundir.RunLock`).
    """
    try:
        recipe = load_recipe(name)
        settings = parse_settings(recipe, argv, prog=prog)
        with RunLock(settings.output_dir):
            check_output_dir(settings)
            status(
                f"{prog or 'scratchformers train ' + name}: preset {settings.preset}, "
                f"{settings.max_steps} steps, into {settings.output_dir}; loading PyTorch"
            )
            from .loop import train

            train(recipe, settings)
    except TrainingInterrupted as stop:
        if is_main_process():  # every process stops at the same step, with the same message
            print(str(stop), file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("stopped at once (a second Ctrl-C); nothing more was saved", file=sys.stderr)
        return 128 + 2
    except (ValueError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``train`` plus the commands in :data:`COMMANDS`."""
    recipes = installed_recipes()
    listing = "\n".join(f"  {name}" for name in sorted(recipes)) or "  (none installed)"
    parser = argparse.ArgumentParser(
        prog="scratchformers",
        description="Train scratchformers models with Accelerate, on a CPU, one GPU or many, "
        "and use what they become.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  scratchformers train basicformer\n"
        "  scratchformers train basicformer --preset small --output-dir runs/small\n"
        "  accelerate launch --num_processes 2 -m scratchformers.basicformer.train",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
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
    for name, (module, summary) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        importlib.import_module(f".commands.{module}", __package__).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = build_parser().parse_args(argv)
    if arguments.command == "train":
        return run_recipe(
            arguments.recipe, arguments.flags, prog=f"scratchformers train {arguments.recipe}"
        )
    module = importlib.import_module(f".commands.{COMMANDS[arguments.command][0]}", __package__)
    return module.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
