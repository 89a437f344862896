"""``scratchformers export MODEL_DIR OUT [--format NAME]``: a trained model written for
another tool. The default format, ``transformers``, is the transformers class the model
mirrors (GPT-2's ``GPT2LMHeadModel``, say) with its tokenizer, so that transformers alone
loads it and ``pipeline(...)`` runs it; a recipe offers others (ViT's ``timm``, say).
Every export gets a model card (README.md) made from the run's: it says that it is an export,
in which format and of which run, shows the format's own loading snippet and keeps the run's
Hub metadata (:func:`~scratchformers.training.reporting.write_export_card`).

The recipe says which formats there are and how each is written
(:meth:`~scratchformers.training.Recipe.export_formats`). OUT is written in a hidden folder
beside it and renamed when complete, so a failed export leaves nothing behind; an OUT that
holds anything already is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import uuid
from pathlib import Path

from .modeldir import CONFIG_FILE, command, open_model_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments: the trained folder and the new one."""
    parser.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a trained model's folder"
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="the folder to write, new or empty")
    parser.add_argument(
        "--format",
        default="transformers",
        metavar="NAME",
        help="what to write: transformers (the default: the transformers class the model "
        "mirrors); a recipe may offer others, and an unknown NAME lists them",
    )


def check_target(out: Path) -> None:
    """Raise a ``ValueError`` unless ``out`` is a new or empty folder that can be made."""
    if out.is_dir():
        if (out / CONFIG_FILE).exists():
            raise ValueError(
                f"{out} already holds a model; choose another OUT (nothing was changed)"
            )
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty; choose a new or empty folder as OUT")
    elif out.exists():
        raise ValueError(f"{out} is a file; choose a folder as OUT")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{out} is inside {parent}, which is a file")
            break


@command
def run(arguments: argparse.Namespace) -> int:
    """Export the folder's model into ``arguments.out``; the exit code."""
    folder = open_model_folder(arguments.model_dir)
    folder.require_run("export needs the recipe, which says how its models map to transformers")
    recipe = folder.recipe()
    formats = recipe.export_formats()
    if arguments.format not in formats:
        offered = "; ".join(f"{name} ({spec.help})" for name, spec in formats.items())
        raise ValueError(
            f"--format {arguments.format}: the {recipe.name} recipe's models export as {offered}"
        )
    export_format = formats[arguments.format]
    out: Path = arguments.out
    check_target(out)

    import transformers

    from ..reporting import write_export_card  # with torch: not at the top (--help)

    transformers.logging.disable_progress_bar()
    model = recipe.load_model(folder.path, folder.settings()).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Made like any folder (so with the user's umask), under a name no one else uses.
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        export_format.write(model, staging)
        if export_format.copies_processor:
            _copy_processor(folder.path, staging)
        write_export_card(
            staging,
            source=folder.path,
            format_name=arguments.format,
            library_name=export_format.library_name or arguments.format,
            usage=export_format.usage(staging),
        )
        # rename() replaces an empty folder, and only an empty one: a folder that filled up
        # meanwhile is refused by the system, not overwritten.
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    print(f"exported {folder.path} as {arguments.format}")
    print("\n".join(export_format.usage(out)))
    return 0


def _copy_processor(model_dir: Path, out: Path) -> None:
    """The folder's tokenizer (or other processor) into ``out``, beside the model, as
    transformers' Auto classes save it: pipelines load it from there."""
    from transformers import AutoProcessor

    processor_files = ("tokenizer_config.json", "tokenizer.json", "preprocessor_config.json")
    if not any((model_dir / name).is_file() for name in processor_files):
        return  # a model without one (features in, features out)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(out)
