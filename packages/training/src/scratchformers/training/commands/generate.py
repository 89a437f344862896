"""``scratchformers generate MODEL_DIR PROMPT``: continue a prompt with a trained model,
printing the text as the tokens come.

The options become a ``transformers.GenerationConfig`` over the folder's own
generation_config.json, checked by transformers' ``validate``; ``model.generate`` samples, and
``transformers.TextStreamer`` prints. The generated text is all that goes to stdout; what the
command says about its work goes to stderr. ``--dtype`` and ``--quantize`` (:mod:`.inference`)
choose the precision: bfloat16 by default where training would pick it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import inference
from .modeldir import command, import_model_code, load_pretrained, open_model_folder

# The Auto class of a folder whose recipe is not known (no run.json, or not installed).
DEFAULT_AUTO_CLASS = "AutoModelForCausalLM"


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names the type in its errors
    return parse


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments; options not given come from the folder's
    generation_config.json, then from transformers' defaults."""
    parser.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a trained model's folder"
    )
    parser.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    parser.add_argument(
        "--max-new-tokens",
        metavar="N",
        type=_positive(int),
        default=50,
        help="tokens to generate at most; fewer if the model's context ends first (default: 50)",
    )
    parser.add_argument(
        "--greedy",
        action="store_true",
        help="take the most likely token each time instead of sampling (the default)",
    )
    parser.add_argument(
        "--temperature",
        metavar="T",
        type=_positive(float),
        help="sampling temperature (transformers: 1.0)",
    )
    parser.add_argument(
        "--top-k",
        metavar="K",
        type=_non_negative_int,
        help="sample from the k most likely tokens, 0 for all (transformers: 50)",
    )
    parser.add_argument(
        "--top-p",
        metavar="P",
        type=_probability,
        help="sample from the most likely tokens that make up this probability (nucleus "
        "sampling; transformers: 1.0)",
    )
    parser.add_argument(
        "--repetition-penalty",
        metavar="X",
        type=_positive(float),
        help="divide the scores of tokens already in the text by this; 1.0 is none",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed the sampling, for the same text each time"
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="cpu, cuda, cuda:1, ... (default: the GPU when there is one, else cpu)",
    )
    inference.add_arguments(
        parser,
        dtype_default="bfloat16 where training's automatic mixed precision would use it, on "
        "this device for this model, else float32",
    )


def generation_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """The ``GenerationConfig`` fields the arguments set; the others stay the model's."""
    options: dict[str, Any] = {
        "max_new_tokens": arguments.max_new_tokens,
        "do_sample": not arguments.greedy,
    }
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        if getattr(arguments, name) is not None:
            options[name] = getattr(arguments, name)
    return options


@command
def run(arguments: argparse.Namespace) -> int:
    """Stream the continuation of ``arguments.prompt`` to stdout; the exit code."""
    folder = open_model_folder(arguments.model_dir)
    if not arguments.prompt.strip():
        raise ValueError("the prompt is empty; give the text to continue")
    if not folder.has_tokenizer():
        raise ValueError(
            f"{folder.path} holds no tokenizer (no tokenizer_config.json or tokenizer.json); "
            "generate needs the one the model was trained with"
        )
    print(f"loading the model in {folder.path}", file=sys.stderr, flush=True)

    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig, TextStreamer

    transformers.logging.disable_progress_bar()  # no bar for loading a few weights
    import_model_code(folder)  # a missing package is said before anything else loads
    device = _device(arguments.device)
    inference.requested_dtype(arguments, device)  # a --dtype it cannot run, before any loading
    # Set one by one, as the constructor would warn about what validate() then refuses.
    config = GenerationConfig()
    for name, value in generation_options(arguments).items():
        setattr(config, name, value)
    _validate(config)

    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    recipe = folder.installed_recipe()
    # The recipe knows its Auto class (a causal or a sequence-to-sequence model); without it,
    # the one that generates text.
    if recipe is not None:
        model = recipe.load_model(folder.path, folder.settings())
    else:
        model = load_pretrained(folder.path, DEFAULT_AUTO_CLASS)
    if not model.can_generate():
        raise ValueError(f"the model in {folder.path} ({type(model).__name__}) does not generate")
    inference.prepare_model(model, arguments, device)
    model.eval()

    inputs = tokenizer(arguments.prompt, return_tensors="pt").to(device)
    prompt_tokens = inputs["input_ids"].shape[1]
    if prompt_tokens == 0:
        raise ValueError("the prompt is no tokens at all; give the text to continue")
    context = None if model.config.is_encoder_decoder else _context_length(model.config)
    if context is not None:
        if prompt_tokens >= context:
            raise ValueError(
                f"the prompt is {prompt_tokens} tokens, and the model reads at most {context}; "
                "shorten it"
            )
        if prompt_tokens + config.max_new_tokens > context:
            config.max_new_tokens = context - prompt_tokens
            print(
                f"note: generating {config.max_new_tokens} tokens, all that fit in the model's "
                f"context of {context} after the {prompt_tokens} of the prompt",
                file=sys.stderr,
            )
    if arguments.seed is not None:
        transformers.set_seed(arguments.seed)
    # A decoder-only model's output starts with the prompt, which the streamer prints too; an
    # encoder-decoder model's starts with the decoder's start token, which it skips.
    streamer = TextStreamer(
        tokenizer, skip_prompt=model.config.is_encoder_decoder, skip_special_tokens=True
    )
    with torch.no_grad():
        model.generate(**inputs, generation_config=config, streamer=streamer)
    return 0


def _validate(config: Any) -> None:
    """transformers' own check of the options together (``--greedy`` with ``--temperature``,
    say), its list of problems made one line."""
    try:
        config.validate(strict=True)
    except ValueError as error:
        problems = [line[2:] for line in str(error).splitlines() if line.startswith("- ")]
        if not problems:
            raise
        raise ValueError(
            "the generation options do not fit together (--greedy is do_sample=False): "
            + " ".join(problems)
        ) from error


def _device(name: str | None) -> Any:
    """The torch device to generate on: ``name``, or the accelerator when there is one."""
    import torch

    available = (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    )
    if name is None:
        return available or torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name} is not a device ({error})") from error
    if device.type == "cpu":
        return device
    if available is None or available.type != device.type:
        have = "cpu" + (f" and {available.type}" if available is not None else "")
        raise ValueError(f"--device {name}: this machine has no {device.type} device ({have})")
    if device.index is not None and device.index >= torch.accelerator.device_count():
        count = torch.accelerator.device_count()
        raise ValueError(f"--device {name}: this machine has {count} {device.type} device(s)")
    return device


def _context_length(config: Any) -> int | None:
    """The most positions the model reads, if its config says (GPT-2's ``n_positions`` is
    ``max_position_embeddings`` too, through its attribute map)."""
    return getattr(config, "max_position_embeddings", None)
