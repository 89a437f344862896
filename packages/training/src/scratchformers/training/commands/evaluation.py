"""``scratchformers eval MODEL_DIR``: the recipe's held-out metrics of a trained model.

The run's settings come back from its run.json, the recipe rebuilds the data with the
tokenizer saved in the folder (the held-out split is deterministic, so this is the run's
held-out set), and the loop's own :func:`~scratchformers.training.loop.evaluate` scores the
saved model: the numbers are the ones the run logged at its end.

``--dtype`` runs the model in that dtype instead, without the run's autocast, its float inputs
cast to match; ``--quantize int8`` quantizes its linear layers first (:mod:`.inference`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import inference
from .modeldir import command, import_model_code, open_model_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments: the folder, and what may differ from the run."""
    parser.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a trained model's folder"
    )
    parser.add_argument(
        "--dataset",
        metavar="DATA",
        help="evaluate on the held-out part of this data instead of the run's: a text file or "
        "folder, or a Hugging Face dataset id",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="held-out batch size (default: the run's); the held-out set is cut to whole "
        "batches, so another size may leave out a few examples at its end",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the metrics as one JSON object, and only that"
    )
    inference.add_arguments(
        parser,
        dtype_default="the run's: float32 weights under its --mixed-precision autocast, so "
        "that the numbers are the ones it logged; with --dtype, that dtype and no autocast",
    )


@command
def run(arguments: argparse.Namespace) -> int:
    """Evaluate the folder's model and print its metrics; the exit code."""
    folder = open_model_folder(arguments.model_dir)
    folder.require_run("eval needs the recipe and the data the model was trained with")
    recipe = folder.recipe()
    settings = folder.settings()
    options = settings.recipe_options
    if arguments.dataset is not None:
        if "dataset" not in options:
            raise ValueError(f"--dataset: the {recipe.name} recipe reads no dataset option")
        options["dataset"] = arguments.dataset
    if arguments.batch_size is not None:
        if arguments.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {arguments.batch_size}")
        settings.batch_size = arguments.batch_size
    if "tokenizer" in options:
        # The folder's own tokenizer, not a new one trained on the data (CausalLMRecipe's
        # --tokenizer): the same token ids the model was trained on, whatever the data.
        if not folder.has_tokenizer():
            raise ValueError(
                f"{folder.path} holds no tokenizer (no tokenizer_config.json or tokenizer.json); "
                "eval needs the one the model was trained with"
            )
        options["tokenizer"] = str(folder.path)

    # With --json, stdout holds the metrics only: what the recipe says while it works goes
    # to stderr.
    with contextlib.redirect_stdout(sys.stderr) if arguments.json else contextlib.nullcontext():
        import torch
        import transformers
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import set_seed

        from ..data import DataError
        from ..loop import evaluate, held_out_loader

        transformers.logging.disable_progress_bar()
        import_model_code(folder)  # a missing package is said before the data is built
        has_accelerator = torch.accelerator.is_available()
        # The run's autocast, so that the numbers are its numbers; fp16 has none on a CPU. With
        # --dtype the model's own dtype rules: autocast on top would compute in another one.
        precision = settings.mixed_precision
        if (precision == "fp16" and not has_accelerator) or arguments.dtype is not None:
            precision = "no"
        accelerator = Accelerator(
            cpu=not has_accelerator,
            mixed_precision=precision,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        inference.requested_dtype(arguments, accelerator.device)  # before the data is built
        set_seed(settings.seed)  # as the loop does before build_data
        try:
            data = recipe.build_data(settings)
        except DataError as error:
            if "dataset" not in options:
                raise
            raise ValueError(
                f"{error} (the data the model in {folder.path} was trained on: give it with "
                "--dataset if it moved)"
            ) from error
        model = recipe.load_model(folder.path, settings)
        dtype = inference.prepare_model(model, arguments, accelerator.device, default=False)
        if dtype is None and arguments.quantize is not None:
            autocast = "no autocast" if precision == "no" else f"the run's {precision} autocast"
            print(f"running the model in float32 with {autocast}, as the run did", file=sys.stderr)
        loader = held_out_loader(data, settings.batch_size, accelerator.num_processes)
        examples = len(loader.dataset)
        model, loader = accelerator.prepare(model, loader)
        batches = loader if dtype is None else _cast_batches(loader, dtype)
        metrics = evaluate(recipe, model, batches, accelerator).metrics

    if not accelerator.is_main_process:
        return 0
    if arguments.json:
        print(json.dumps(metrics))
        return 0
    data_name = "the run's data" if arguments.dataset is None else arguments.dataset
    print(f"{folder.path}: {examples:,} held-out examples of {data_name} ({recipe.name} recipe)")
    width = max(len(name) for name in metrics)
    for name, value in metrics.items():
        print(f"  {name:<{width}}  {value:.4f}")
    return 0


def _cast_batches(loader: Iterable[Any], dtype: Any) -> Iterator[Any]:
    """The loader's batches with their float tensors in the model's ``dtype``."""
    for batch in loader:
        yield inference.cast_floating(batch, dtype)
