"""transformers' GPT-2 checkpoints <-> ours.

Two differences in the weights, both layouts rather than numbers:

* transformers' GPT-2 uses ``Conv1D`` layers, ``y = x @ W + b`` with ``W`` of shape
  ``(in, out)``; ``nn.Linear`` stores ``(out, in)``. Every projection is transposed.
* q, k and v are one fused ``c_attn`` there (``W`` of shape ``(n_embd, 3 * n_embd)``, columns
  in the order q, k, v), and ``c_proj`` is the output projection; the shared attention core has
  ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``.

Everything else (embeddings, LayerNorms) keeps its name and layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config as TransformersGPT2Config
from transformers import GPT2LMHeadModel as TransformersGPT2LMHeadModel
from transformers import GPT2Model as TransformersGPT2Model
from transformers import PreTrainedModel

from scratchformers.core_attention.interop import (
    CheckpointConverter,
    StateDict,
    export_checkpoint,
    from_pretrained_or_convert,
)

from .configuration import GPT2Config

_NOT_CONFIG = ("model_type", "architectures", "transformers_version", "_name_or_path")
_LAYER = re.compile(r"^(transformer\.h\.\d+\.)(attn|mlp)\.(c_attn|c_proj|c_fc)\.(weight|bias)$")


def config_from_transformers(config: dict[str, Any]) -> GPT2Config:
    return GPT2Config.from_dict({k: v for k, v in config.items() if k not in _NOT_CONFIG})


def config_to_transformers(config: GPT2Config) -> TransformersGPT2Config:
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_CONFIG}
    return TransformersGPT2Config.from_dict(fields)


def state_from_transformers(theirs: StateDict) -> StateDict:
    """Their names and Conv1D layouts -> ours. Accepts GPT2Model and GPT2LMHeadModel files."""
    ours: StateDict = {}
    for name, tensor in theirs.items():
        if not name.startswith(("transformer.", "lm_head.")):
            name = f"transformer.{name}"
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not weights
        match = _LAYER.match(name)
        if match is None:
            ours[name] = tensor
            continue
        prefix, block, layer, kind = match.groups()
        if layer == "c_attn":
            for projection, part in zip(("q", "k", "v"), tensor.chunk(3, dim=-1), strict=True):
                ours[f"{prefix}attn.{projection}_proj.{kind}"] = _linear(part, kind)
        elif block == "attn":
            ours[f"{prefix}attn.o_proj.{kind}"] = _linear(tensor, kind)
        else:
            ours[name] = _linear(tensor, kind)
    return ours


def state_to_transformers(ours: StateDict) -> StateDict:
    """Ours -> their names and Conv1D layouts (the inverse of :func:`state_from_transformers`)."""
    theirs: StateDict = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in ours.items():
        projection = re.match(r"^(.*\.attn\.)([qkvo])_proj\.(weight|bias)$", name)
        if projection is None:
            kind = name.rsplit(".", 1)[-1]
            is_mlp = re.search(r"\.mlp\.(c_fc|c_proj)\.", name) is not None
            theirs[name] = _conv1d(tensor, kind) if is_mlp else tensor
            continue
        prefix, which, kind = projection.groups()
        if which == "o":
            theirs[f"{prefix}c_proj.{kind}"] = _conv1d(tensor, kind)
        else:
            fused.setdefault(f"{prefix}c_attn.{kind}", {})[which] = _conv1d(tensor, kind)
    for name, parts in fused.items():
        theirs[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=-1)
    return theirs


def _linear(conv1d_tensor: torch.Tensor, kind: str) -> torch.Tensor:
    return conv1d_tensor.t().contiguous() if kind == "weight" else conv1d_tensor.contiguous()


def _conv1d(linear_tensor: torch.Tensor, kind: str) -> torch.Tensor:
    return linear_tensor.t().contiguous() if kind == "weight" else linear_tensor.contiguous()


def _converter(with_head: bool) -> CheckpointConverter:
    """The converter for our ``GPT2LMHeadModel`` (``with_head``) or our bare ``GPT2Model``."""

    def from_transformers(theirs: StateDict) -> StateDict:
        ours = state_from_transformers(theirs)
        if with_head:
            return ours
        return {
            name.removeprefix("transformer."): tensor
            for name, tensor in ours.items()
            if not name.startswith("lm_head.")
        }

    return CheckpointConverter(
        transformers_model_type="gpt2",
        transformers_model_class=TransformersGPT2LMHeadModel
        if with_head
        else TransformersGPT2Model,
        config_from_transformers=config_from_transformers,
        config_to_transformers=config_to_transformers,
        state_from_transformers=from_transformers,
        state_to_transformers=state_to_transformers,
    )


def load_pretrained(
    cls: type[PreTrainedModel], name_or_path: str | os.PathLike[str], *args: Any, **kwargs: Any
) -> PreTrainedModel:
    """``from_pretrained`` for our GPT-2 classes: transformers' checkpoints are converted."""
    from .modeling import GPT2LMHeadModel, GPT2PreTrainedModel

    converter = _converter(with_head=issubclass(cls, GPT2LMHeadModel))
    return from_pretrained_or_convert(
        cls, GPT2PreTrainedModel, name_or_path, converter, *args, **kwargs
    )


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that transformers' ``GPT2LMHeadModel`` (or ``GPT2Model``,
    for a model without a head) loads with ``from_pretrained``, giving the same outputs."""
    from .modeling import GPT2LMHeadModel

    return export_checkpoint(
        model, out_dir, _converter(with_head=isinstance(model, GPT2LMHeadModel))
    )
