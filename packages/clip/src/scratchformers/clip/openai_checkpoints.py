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

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .configuration import CLIPConfig
from .modeling import CLIPModel

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


# OpenAI's normalisation (transformers' CLIPImageProcessor's default, open_clip's for OpenAI
# and most LAION weights).
OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# The activations open_clip's CLIP builds: model_cfg's quick_gelu switches both towers.
OPEN_CLIP_ACTIVATIONS = {"quick_gelu": True, "gelu": False}
# The file names open_clip's factory reads in a Hub folder (or a local-dir: one).
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def open_clip_model_config(model: CLIPModel) -> dict[str, Any]:
    """The ``model_cfg`` with which open_clip's ``CLIP`` computes what ``model`` computes:
    ``embed_dim``, ``quick_gelu``, and the towers' ``vision_cfg`` and ``text_cfg`` (widths,
    layers, heads, MLP ratios, norm epsilons; the text is read at its first ``eos_id``,
    ``pool_type="eos"``, or for a legacy config with ``eos_token_id == 2`` at its highest
    token id, open_clip's ``"argmax"``).

    Raises a ``ValueError`` naming the config field and its value where open_clip's ``CLIP``
    cannot compute it: an activation other than ``quick_gelu`` or ``gelu``, or the towers
    with different ones, or images of other than 3 channels.
    """
    from scratchformers.vit.timm_checkpoints import mlp_ratio_for

    config = model.config
    vision, text = config.vision_config, config.text_config
    if vision.hidden_act != text.hidden_act:
        raise ValueError(
            f"vision_config.hidden_act={vision.hidden_act!r} and text_config.hidden_act="
            f"{text.hidden_act!r}: open_clip's CLIP builds one activation for both towers"
        )
    if text.hidden_act not in OPEN_CLIP_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={text.hidden_act!r}: open_clip's CLIP builds "
            f"{sorted(OPEN_CLIP_ACTIVATIONS)}"
        )
    if vision.num_channels != 3:
        raise ValueError(
            f"vision_config.num_channels={vision.num_channels}: open_clip's CLIP reads "
            "3-channel images"
        )
    height, width = (int(side) for side in _as_pair(vision.image_size))
    patch_height, patch_width = (int(side) for side in _as_pair(vision.patch_size))
    vision_cfg = {
        "image_size": height if height == width else [height, width],
        "patch_size": patch_height if patch_height == patch_width else [patch_height, patch_width],
        "width": vision.hidden_size,
        "layers": vision.num_hidden_layers,
        "head_width": vision.hidden_size // vision.num_attention_heads,
        "mlp_ratio": mlp_ratio_for(
            vision.hidden_size, vision.intermediate_size, "vision_config.intermediate_size"
        ),
        "norm_kwargs": {"eps": vision.layer_norm_eps},
    }
    # transformers' rule, which ours keeps: eos_token_id == 2 marks a config written before
    # the field was right, whose texts are read at their highest id (OpenAI's vocabulary).
    legacy = text.eos_token_id == 2
    text_cfg = {
        "context_length": text.max_position_embeddings,
        "vocab_size": text.vocab_size,
        "width": text.hidden_size,
        "heads": text.num_attention_heads,
        "layers": text.num_hidden_layers,
        "mlp_ratio": mlp_ratio_for(
            text.hidden_size, text.intermediate_size, "text_config.intermediate_size"
        ),
        "pool_type": "argmax" if legacy else "eos",
        "eos_id": text.eos_token_id,
        "pad_id": text.pad_token_id if text.pad_token_id is not None else 0,
        "norm_kwargs": {"eps": text.layer_norm_eps},
    }
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": OPEN_CLIP_ACTIVATIONS[text.hidden_act],
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def _as_pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def export_to_open_clip(
    model: CLIPModel,
    out_dir: str | os.PathLike[str],
    *,
    image_mean: tuple[float, ...] | list[float] = OPENAI_IMAGE_MEAN,
    image_std: tuple[float, ...] | list[float] = OPENAI_IMAGE_STD,
    interpolation: str = "bicubic",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write ``model`` as open_clip's Hub folder: ``open_clip_model.safetensors`` (OpenAI's
    layout, :func:`export_to_openai`) and ``open_clip_config.json`` (``model_cfg`` from
    :func:`open_clip_model_config`, ``preprocess_cfg`` with the normalisation), so that
    ``open_clip.create_model("local-dir:" + out_dir)`` builds a ``CLIP`` whose
    ``encode_image`` and ``encode_text`` give our image and text features (fp32, within 1e-5)
    with no other argument, the text pooling included: open_clip's default reads a text at its
    highest token id, which is the end-of-text token only in OpenAI's vocabulary.

    Args:
        model: the model to write.
        out_dir: the folder to write (made if missing; its files of these names are replaced).
        image_mean, image_std: the normalisation the model expects, for ``preprocess_cfg``
            (open_clip's transforms read it); the default is OpenAI's, transformers'
            ``CLIPImageProcessor``'s.
        interpolation: the resize filter for ``preprocess_cfg`` (``"bicubic"``, CLIP's, or
            ``"bilinear"``).
        tokenizer: the model's tokenizer, saved in the folder and named in ``text_cfg``'s
            ``hf_tokenizer_name`` (its ``name_or_path``), so that
            ``open_clip.get_tokenizer("local-dir:" + out_dir)`` tokenizes as the model was
            trained (an ``HFTokenizer`` of the folder's files, padded to the context length);
            without one open_clip would use OpenAI's BPE. For a Hub repo of the folder, set
            ``hf_tokenizer_name`` to the repo's id.

    Raises:
        ValueError: open_clip's ``CLIP`` cannot compute ``model`` (see
            :func:`open_clip_model_config`), before anything is written.
    """
    model_cfg = open_clip_model_config(model)
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        if len(values) != 3:
            raise ValueError(f"{name} has {len(values)} values; open_clip's CLIP reads 3 channels")
    if tokenizer is not None:
        # open_clip's get_tokenizer takes an HFTokenizer when this names one, and for a
        # local-dir: load reads the tokenizer files of the folder itself.
        model_cfg["text_cfg"]["hf_tokenizer_name"] = str(tokenizer.name_or_path or "tokenizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    export_to_openai(model, out / OPEN_CLIP_WEIGHTS)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    open_clip_config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": [float(value) for value in image_mean],
            "std": [float(value) for value in image_std],
            "interpolation": interpolation,
            # CLIP's processors resize the shortest edge, then crop the centre.
            "resize_mode": "shortest",
        },
    }
    (out / OPEN_CLIP_CONFIG).write_text(json.dumps(open_clip_config, indent=2) + "\n")
    return out
