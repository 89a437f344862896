"""The clip recipe's ``--init-from``: a pretrained CLIP and its processor, from any checkpoint
the package reads.

* a folder written by ``save_pretrained``: this project's, or transformers' CLIP
  (``openai/clip-vit-base-patch32``'s layout), local or a Hub id;
* an OpenAI / open_clip weights file (``.safetensors``, or a plain state dict ``.pt`` /
  ``.bin``), or a folder (a Hub id) that holds ``open_clip_model.safetensors`` and no
  config.json. Such a file holds no config: the shape is read from the tensors
  (:func:`~scratchformers.clip.openai_checkpoints.config_from_openai`). What they cannot say
  comes from the ``open_clip_config.json`` beside the file when there is one (open_clip's Hub
  folders have it): the activation (its ``quick_gelu``) and the heads. Without it the
  activation is OpenAI's ``quick_gelu`` and the heads ``width // 64``; ``--openai-activation
  gelu`` is what LAION's open_clip weights need.

The processor (tokenizer and image processor, a ``CLIPProcessor``) is the checkpoint's own:
saved in its folder, or beside the weights file, or named with ``--processor``. A checkpoint
without one stops the run: a tokenizer trained here would give the pretrained text tower token
ids it never learnt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from scratchformers.training.console import status
from scratchformers.training.pretrained import (
    Pretrained,
    PretrainedError,
    checkpoint_path,
    load_checkpoint_processor,
    load_pretrained,
)

from .modeling import CLIPModel

# open_clip's weights files in its Hub folders, in the order they are preferred.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
ACTIVATIONS = ("auto", "quick_gelu", "gelu")
# A legacy text config's eos_token_id: the text is read at its highest token id instead.
LEGACY_EOS = 2


@dataclass
class StartingPoint:
    """A pretrained CLIP (``pretrained.model``) and the processor it was trained with."""

    pretrained: Pretrained
    processor: Any  # a CLIPProcessor: .tokenizer and .image_processor


def load_starting_point(
    source: str, *, activation: str = "auto", processor_source: str | None = None
) -> StartingPoint:
    """The checkpoint ``source`` (see the module docstring) and its processor, checked to fit
    each other; a :class:`PretrainedError` names what is missing or wrong."""
    if activation not in ACTIVATIONS:
        raise PretrainedError(f"--openai-activation must be one of {ACTIVATIONS}, got {activation}")
    path = checkpoint_path(source, "--init-from")
    weights_file = _openai_weights(path)
    processor = _processor(source, path, weights_file, processor_source)
    if weights_file is None:
        if activation != "auto":
            status(f"note: --openai-activation is for OpenAI-layout files; {source} has a config")
        pretrained = load_pretrained(CLIPModel, source, flag="--init-from")
    else:
        pretrained = _load_openai(source, weights_file, activation, processor.tokenizer)
    _check_fit(pretrained, processor, source)
    return StartingPoint(pretrained, processor)


def _openai_weights(path: Path) -> Path | None:
    """The OpenAI-layout weights file ``path`` names (itself, or open_clip's file in a folder
    without config.json), or None for a save_pretrained folder."""
    if path.is_file():
        return path
    if (path / "config.json").is_file():
        return None
    return next((path / name for name in OPEN_CLIP_WEIGHTS if (path / name).is_file()), None)


def _processor(
    source: str, path: Path, weights_file: Path | None, processor_source: str | None
) -> Any:
    folder = path if weights_file is None else weights_file.parent
    if processor_source is not None:
        folder = checkpoint_path(processor_source, "--processor")
        if folder.is_file():
            raise PretrainedError(f"--processor {processor_source} is a file; give its folder")
    processor = load_checkpoint_processor(folder, "AutoProcessor")
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    where = f"--processor {processor_source}" if processor_source else f"{folder}"
    if processor is None:
        what = (
            f"--init-from {source} is an OpenAI-layout weights file, which holds no processor, "
            f"and its folder {folder} holds none beside it"
            if weights_file is not None and processor_source is None
            else f"{where} holds no CLIP processor"
        )
        raise PretrainedError(
            f"{what} (no preprocessor_config.json or tokenizer files): save the checkpoint's "
            "CLIPProcessor there, or name one with --processor (openai/clip-vit-base-patch32 "
            "for OpenAI's and most open_clip ViT-B/32 weights)"
        )
    if tokenizer is None or image_processor is None:
        missing = "tokenizer" if tokenizer is None else "image processor"
        raise PretrainedError(
            f"{where} holds a {type(processor).__name__} but no {missing}: a CLIP checkpoint "
            "needs both (a CLIPProcessor), or name one with --processor"
        )
    return processor


def _open_clip_config(weights_file: Path) -> dict[str, Any] | None:
    config_file = weights_file.parent / OPEN_CLIP_CONFIG
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_cfg", {})
    except ValueError as error:
        raise PretrainedError(f"--init-from: {config_file} is not valid JSON ({error})") from error


def _load_openai(source: str, weights_file: Path, activation: str, tokenizer: Any) -> Pretrained:
    model_cfg = _open_clip_config(weights_file)
    text: dict[str, Any] = {
        # The text is read at the tokenizer's end-of-text token; its ids are the tokenizer's.
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision: dict[str, Any] = {}
    if activation != "auto":
        hidden_act, why = activation, "--openai-activation"
    elif model_cfg is not None:
        hidden_act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
        why = f"{OPEN_CLIP_CONFIG}'s quick_gelu"
    else:
        hidden_act, why = "quick_gelu", "OpenAI's; --openai-activation gelu for LAION's weights"
    if model_cfg is not None:
        # open_clip's own defaults: 8 text heads, 64-wide vision heads.
        text["num_attention_heads"] = model_cfg.get("text_cfg", {}).get("heads", 8)
        vision_cfg = model_cfg.get("vision_cfg", {})
        if "width" in vision_cfg:
            vision["num_attention_heads"] = vision_cfg["width"] // vision_cfg.get("head_width", 64)
    try:
        model = CLIPModel.from_openai(
            weights_file, hidden_act=hidden_act, text_config=text, vision_config=vision
        )
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        raise PretrainedError(
            f"--init-from {source} does not load as an OpenAI-layout CLIP: {error}"
        ) from error
    # OpenAI's weights are half precision; the run trains in float32 (autocast does the rest).
    model = model.float().train()
    pretrained = Pretrained(
        model=model,
        source=source,
        path=weights_file,
        format=f"an OpenAI-layout CLIP file, hidden_act {hidden_act} ({why})",
    )
    status(f"starting from {pretrained.describe()}")
    return pretrained


def _check_fit(pretrained: Pretrained, processor: Any, source: str) -> None:
    """The processor's images are the model's size, and its tokenizer ends texts with the
    token the model reads them at."""
    config = pretrained.model.config
    size = config.vision_config.image_size
    probe = processor.image_processor(images=[Image.new("RGB", (size, size))], return_tensors="pt")
    shape = tuple(torch.as_tensor(probe["pixel_values"]).shape[-2:])
    if shape != (size, size):
        raise PretrainedError(
            f"--init-from {source}: its image processor makes {shape[0]}x{shape[1]} images, "
            f"the model takes {size}x{size}; give the processor it was trained with (--processor)"
        )
    eos, tokenizer_eos = config.text_config.eos_token_id, processor.tokenizer.eos_token_id
    if eos != LEGACY_EOS and eos != tokenizer_eos:
        raise PretrainedError(
            f"--init-from {source}: the model reads a text at token {eos} (eos_token_id), its "
            f"tokenizer ends texts with {tokenizer_eos}; give the tokenizer it was trained with "
            "(--processor)"
        )
