"""OpenAI's CLIP layout <-> ours: the weights of the original CLIP code and of open_clip.

OpenAI released CLIP as one state dict in its own names, and open_clip (which trained LAION's
CLIPs) kept them: ``visual.conv1.weight``, ``visual.class_embedding``,
``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.<i>``,
``visual.ln_post``, ``visual.proj``; ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.<i>``, ``ln_final``, ``text_projection``; ``logit_scale``. Inside a
block: ``ln_1``, ``attn`` (a ``torch.nn.MultiheadAttention``: one ``in_proj_weight`` holding
the query, key and value projections stacked, and ``out_proj``), ``ln_2``, ``mlp.c_fc`` and
``mlp.c_proj``. What differs from ours besides names:

* the stacked ``in_proj_weight`` / ``in_proj_bias`` are split into ``q_proj``, ``k_proj`` and
  ``v_proj``;
* the projections are matrices applied as ``x @ proj``, so they are the transpose of our
  ``nn.Linear`` weights;
* the file holds no config. The shape is read from the tensors as OpenAI's own
  ``build_model`` reads it; what tensors cannot tell is given: heads are ``width // 64``
  (OpenAI's rule, overridable), the activation is ``quick_gelu`` for OpenAI's weights and
  ``gelu`` for LAION's open_clip ones (``hidden_act=``), and a text is read at its highest
  token id, which in OpenAI's vocabulary is the end-of-text token (the last id).

Files are read without unpickling code: ``.safetensors``, or a plain state dict through
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .configuration import CLIPConfig
from .modeling import CLIPModel

# Entries of OpenAI's state dicts that are not weights: OpenAI's TorchScript files carry the
# shape as scalars, open_clip keeps the causal mask as a buffer in old versions.
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
# One block's names, theirs -> ours (the stacked in_proj is split separately).
_BLOCK_RENAMES = {
    "ln_1": "layernorm_before",
    "attn.out_proj": "attention.o_proj",
    "ln_2": "layernorm_after",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# Outside the blocks, theirs -> ours. The projections are transposed as well.
_RENAMES = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embeddings.projection.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layernorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layernorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = ("visual.proj", "text_projection")
_TOWERS = {
    "visual.transformer.resblocks.": "vision_model.layers.",
    "transformer.resblocks.": "text_model.layers.",
}
_BLOCK = re.compile(r"^(visual\.transformer\.resblocks\.|transformer\.resblocks\.)(\d+)\.(.+)$")


def read_openai_state_dict(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI-layout checkpoint: a state dict as is, or a file read safely
    (``.safetensors``, or ``torch.load(..., weights_only=True)`` for a plain state dict).
    A training checkpoint's ``{"state_dict": ...}`` wrapper and DDP's ``module.`` prefix are
    taken off, as open_clip does."""
    if isinstance(path_or_state_dict, Mapping):
        state = dict(path_or_state_dict)
    else:
        path = Path(path_or_state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"no CLIP checkpoint at {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = _torch_load_weights_only(path)
    if isinstance(state.get("state_dict"), Mapping):
        state = dict(state["state_dict"])
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _torch_load_weights_only(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... by format
        raise ValueError(
            f"{path} is not a plain state dict that torch.load(..., weights_only=True) reads "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "OpenAI's original .pt files are TorchScript archives: load one yourself with "
            "torch.jit.load(path, map_location='cpu').state_dict() if you trust it, and pass "
            "that state dict; or use open_clip's .safetensors / .bin files"
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {
        int(m.group(2)) for key in state if (m := _BLOCK.match(key)) and m.group(1) == prefix
    }
    return len(indices)


def config_from_openai(
    state: Mapping[str, torch.Tensor],
    *,
    hidden_act: str = "quick_gelu",
    text_config: Mapping[str, Any] | None = None,
    vision_config: Mapping[str, Any] | None = None,
    **changes: Any,
) -> CLIPConfig:
    """Our config for an OpenAI-layout state dict, read from its tensors' shapes (see the
    module docstring); ``text_config`` / ``vision_config`` override a tower's fields, other
    keywords top-level ones."""
    required = (
        "visual.conv1.weight",
        "visual.positional_embedding",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "visual.proj",
    )
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(
            f"this is not an OpenAI-layout CLIP state dict: it has no {missing} "
            f"(its first keys: {sorted(state)[:6]})"
        )
    conv = state["visual.conv1.weight"]
    vision_width, channels, patch, _ = conv.shape
    patches = state["visual.positional_embedding"].shape[0] - 1
    grid = round(patches**0.5)
    if grid * grid != patches:
        raise ValueError(
            f"visual.positional_embedding has {patches} patch positions, not a square grid: "
            "only square images are read from OpenAI's layout"
        )
    vocab_size, text_width = state["token_embedding.weight"].shape
    vision = {
        "hidden_size": vision_width,
        "num_channels": channels,
        "patch_size": patch,
        "image_size": grid * patch,
        "num_hidden_layers": _count_blocks(state, "visual.transformer.resblocks."),
        "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_attention_heads": vision_width // 64,
        "hidden_act": hidden_act,
    }
    text = {
        "vocab_size": vocab_size,
        "hidden_size": text_width,
        "max_position_embeddings": state["positional_embedding"].shape[0],
        "num_hidden_layers": _count_blocks(state, "transformer.resblocks."),
        "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_attention_heads": text_width // 64,
        "hidden_act": hidden_act,
        # OpenAI's vocabulary ends in <|startoftext|>, <|endoftext|>; texts are padded with 0.
        "eos_token_id": vocab_size - 1,
        "bos_token_id": vocab_size - 2,
        "pad_token_id": 0,
    }
    vision.update(vision_config or {})
    text.update(text_config or {})
    for tower, fields in (("vision_config", vision), ("text_config", text)):
        if fields["num_attention_heads"] < 1:
            raise ValueError(
                f"cannot infer the heads of a {fields['hidden_size']}-wide tower as width // 64 "
                f"(OpenAI's rule); pass {tower}={{'num_attention_heads': ...}}"
            )
    projection_dim = state["text_projection"].shape[1]
    return CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=projection_dim, **changes
    )


def state_from_openai(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenAI-layout state dict in our names and layouts; a key it does not know raises,
    naming it (a variant such as an attention-pooled tower, which this CLIP does not build)."""
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key in _NOT_WEIGHTS:
            continue
        if key in _RENAMES:
            ours[_RENAMES[key]] = tensor.T.contiguous() if key in _TRANSPOSED else tensor
            continue
        match = _BLOCK.match(key)
        name = match and match.group(3)
        if match and name in ("attn.in_proj_weight", "attn.in_proj_bias"):
            layer = f"{_TOWERS[match.group(1)]}{match.group(2)}.attention"
            kind = "weight" if name.endswith("weight") else "bias"
            for projection, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                ours[f"{layer}.{projection}_proj.{kind}"] = part.contiguous()
            continue
        module, _, kind = (name or "").rpartition(".")
        if match and module in _BLOCK_RENAMES:
            layer = f"{_TOWERS[match.group(1)]}{match.group(2)}"
            ours[f"{layer}.{_BLOCK_RENAMES[module]}.{kind}"] = tensor
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} weights of this checkpoint have no place in scratchformers' CLIP "
            f"(an open_clip variant it does not build?): {sorted(unknown)[:8]}"
        )
    return ours


def state_to_openai(model: CLIPModel) -> dict[str, torch.Tensor]:
    """``model``'s weights in OpenAI's names and layouts, as open_clip's ``CLIP`` (or OpenAI's
    code) loads them with ``load_state_dict``."""
    renames = {ours: theirs for theirs, ours in _RENAMES.items()}
    block_renames = {ours: theirs for theirs, ours in _BLOCK_RENAMES.items()}
    towers = {ours: theirs for theirs, ours in _TOWERS.items()}
    layer_key = re.compile(
        r"^(vision_model\.layers\.|text_model\.layers\.)(\d+)\.(.+)\.(weight|bias)$"
    )
    theirs: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if key in renames:
            theirs[renames[key]] = tensor.T.contiguous() if renames[key] in _TRANSPOSED else tensor
            continue
        match = layer_key.match(key)
        if match is None:
            raise ValueError(f"{key} has no place in OpenAI's layout")
        prefix, index, module, kind = match.groups()
        block = f"{towers[prefix]}{index}"
        if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
            stacked.setdefault(f"{block}.attn.in_proj_{kind}", {})[module[-6]] = tensor
        else:
            theirs[f"{block}.{block_renames[module]}.{kind}"] = tensor
    for key, parts in stacked.items():
        theirs[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return theirs


def from_openai(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    hidden_act: str = "quick_gelu",
    text_config: Mapping[str, Any] | None = None,
    vision_config: Mapping[str, Any] | None = None,
    **changes: Any,
) -> CLIPModel:
    """A :class:`CLIPModel` holding OpenAI-layout weights (OpenAI's CLIP, open_clip's); see
    :meth:`CLIPModel.from_openai`."""
    state = read_openai_state_dict(path_or_state_dict)
    config = config_from_openai(
        state,
        hidden_act=hidden_act,
        text_config=text_config,
        vision_config=vision_config,
        **changes,
    )
    weights = state_from_openai(state)
    with torch.device("meta"):
        model = CLIPModel(config)
    dtype = next(iter(weights.values())).dtype
    model = model.to(dtype)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit the CLIP its shapes describe: missing {missing[:8]}, "
            f"left over {unexpected[:8]}"
        )
    return model.eval()


def export_to_openai(model: CLIPModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights in OpenAI's layout to ``path`` (``.safetensors``), which
    open_clip's ``CLIP`` of the same shape loads with ``load_state_dict``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"export_to_openai writes safetensors: give a .safetensors path, got {path}"
        )
    save_file(state_to_openai(model), path)
    return path
