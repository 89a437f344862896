"""timm's ``VisionTransformer`` weights -> our ``ViTForImageClassification``.

timm's plain ViT is the same computation as ours (pre-norm blocks, one strided convolution for
the patches, learned positions), in other names and with one fused projection:

* ``patch_embed.proj`` is ``vit.embeddings.patch_embeddings.projection``; ``cls_token`` and
  ``pos_embed`` are ``vit.embeddings.cls_token`` and ``vit.embeddings.position_embeddings``;
* ``blocks.<i>.norm1`` / ``norm2`` are ``vit.layers.<i>.layernorm_before`` / ``layernorm_after``,
  ``blocks.<i>.attn.proj`` is ``attention.o_proj``, ``blocks.<i>.mlp.fc1`` / ``fc2`` keep their
  names;
* ``blocks.<i>.attn.qkv`` holds the query, key and value projections stacked along the output
  rows, in that order: it is cut into the core's ``q_proj``, ``k_proj`` and ``v_proj``;
* the final norm is ``norm`` (every token, before pooling) or, for timm's mean-pooled models,
  ``fc_norm`` (the pooled vector): both are ``vit.layernorm``, and which one a file holds sets
  ``final_norm_position``; ``head`` is ``classifier``.

A timm model built with ``no_embed_class=True`` keeps no position for the class token; ours
holds one, set to zero, which adds the same nothing. What the tensors cannot tell comes from
keyword arguments, with timm's defaults: the head count (12), the LayerNorm epsilon (1e-6,
where transformers' ViT uses 1e-12) and the activation (exact GELU). Parts of timm's ViT that
ours does not build (register tokens, layer scale, a norm before the blocks, query/key norms,
attention pooling, a distillation token) are refused by name rather than dropped.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .configuration import ViTConfig, as_pair
from .modeling import ViTForImageClassification

# timm's defaults for what its weights do not show.
TIMM_DEFAULTS = {"num_attention_heads": 12, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}

# timm names -> ours, each matched against the whole key; the fused qkv is cut apart below.
RENAMES = (
    (r"cls_token", "vit.embeddings.cls_token"),
    (r"pos_embed", "vit.embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"vit.embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"vit.layers.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vit.layers.\1.attention.o_proj.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"vit.layers.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vit.layers.\1.mlp.\2.\3"),
    (r"(?:norm|fc_norm)\.(weight|bias)", r"vit.layernorm.\1"),
    (r"head\.(weight|bias)", r"classifier.\1"),
)
QKV = re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)")
# Fields that hold an int or a (height, width) pair: 4 and [4, 4] say the same.
PAIRS = ("image_size", "patch_size")

# What the leftover keys of a timm model we cannot build mean, for the error.
UNSUPPORTED = {
    "reg_token": "register tokens (reg_tokens > 0)",
    "dist_token": "a distillation token (DeiT)",
    "head_dist": "a distillation head (DeiT)",
    "norm_pre": "a norm before the blocks (pre_norm=True)",
    "ls1": "layer scale (init_values)",
    "ls2": "layer scale (init_values)",
    "q_norm": "query/key norms (qk_norm=True)",
    "k_norm": "query/key norms (qk_norm=True)",
    "attn_pool": "attention pooling (global_pool='map')",
    "patch_embed.norm": "a norm in the patch embedding",
}


def from_timm(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike[str], **config: Any
) -> ViTForImageClassification:
    """Our ``ViTForImageClassification`` holding the weights of a timm ``VisionTransformer``,
    computing its logits (in eval mode, as ``from_pretrained`` returns models).

    Args:
        state_dict_or_path: the model's ``state_dict()``, or a ``.safetensors`` file of it
            (or a folder holding ``model.safetensors``, as timm's hub folders do).
        **config: fields of :class:`~scratchformers.vit.ViTConfig`. What the weights cannot
            tell defaults to timm's: ``num_attention_heads=12``, ``layer_norm_eps=1e-6``,
            ``hidden_act="gelu"``. ``pooling`` defaults to ``"mean"`` for a model without
            class token or with timm's ``fc_norm`` (``global_pool="avg"``), else ``"cls"``;
            pass ``pooling="mean"`` for one built with ``global_pool="avg", fc_norm=False``.
            ``image_size`` is read from the position table of a square grid; give it for a
            non-square one. ``id2label`` names the classes. A value that contradicts the
            weights raises.
    """
    state = _read_state(state_dict_or_path)
    vit_config = ViTConfig(**config_from_timm(state, **config))
    model = ViTForImageClassification(vit_config)
    ours = state_from_timm(state, vit_config)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:  # config_from_timm has refused what would leave either
        raise ValueError(f"timm weights left {sorted(missing)} unfilled; unused {unexpected}")
    return model.eval()


def _read_state(
    source: Mapping[str, torch.Tensor] | str | os.PathLike[str],
) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix != ".safetensors":
        raise ValueError(f"from_timm reads a state dict or a .safetensors file, got {path}")
    return load_file(path)


def config_from_timm(state: Mapping[str, torch.Tensor], **overrides: Any) -> dict[str, Any]:
    """The ViTConfig fields of a timm ViT's state dict, with ``overrides`` (see
    :func:`from_timm`) for what the weights do not tell."""
    _refuse_unsupported(state)
    for name in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight", "head.weight"):
        if name not in state:
            raise ValueError(
                f"not the state dict of a timm VisionTransformer with a classifier: no {name!r}"
            )
    norms = [key for key in ("norm.weight", "fc_norm.weight") if key in state]
    if len(norms) != 1:
        raise ValueError(
            "from_timm needs one final norm, 'norm' or 'fc_norm' (timm's final_norm=True), "
            f"found {norms}"
        )
    hidden_size, num_channels, *patch = state["patch_embed.proj.weight"].shape
    patch_size = as_pair(patch)
    grid, _ = position_layout(state, overrides.get("image_size"), patch_size)
    height, width = grid[0] * patch_size[0], grid[1] * patch_size[1]
    layers = {int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))}
    has_class_token = "cls_token" in state
    after_pooling = norms[0] == "fc_norm.weight"
    weights_say: dict[str, Any] = {
        "hidden_size": hidden_size,
        "num_channels": num_channels,
        "patch_size": patch_size[0] if patch_size[0] == patch_size[1] else list(patch_size),
        "image_size": height if height == width else [height, width],
        "num_hidden_layers": len(layers),
        "intermediate_size": state["blocks.0.mlp.fc1.weight"].shape[0],
        "num_labels": state["head.weight"].shape[0],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "patch_bias": "patch_embed.proj.bias" in state,
        "use_class_token": has_class_token,
        "final_norm_position": "after_pooling" if after_pooling else "before_pooling",
    }
    if "id2label" in overrides:
        overrides.setdefault("num_labels", len(overrides["id2label"]))
    for name, value in weights_say.items():
        given = overrides.get(name, value)
        same = as_pair(given) == as_pair(value) if name in PAIRS else given == value
        if not same:
            raise ValueError(f"{name}={given!r} contradicts the timm weights, which hold {value!r}")
    options = {
        **TIMM_DEFAULTS,
        # timm's mean-pooled models are the ones with fc_norm (or without class token).
        "pooling": "mean" if after_pooling or not has_class_token else "cls",
        **weights_say,
        **overrides,
    }
    if "id2label" in options:
        del options["num_labels"]  # the labels set it
    return options


def position_layout(
    state: Mapping[str, torch.Tensor],
    image_size: int | list[int] | tuple[int, int] | None,
    patch_size: tuple[int, int],
) -> tuple[tuple[int, int], int]:
    """``(grid, class_slots)`` of a timm position table: patches down and across, and 1 if
    the table has a row for the class token, else 0.

    With a class token, timm's table holds that row and the grid (the original layout) or
    the grid alone (``no_embed_class``, DeiT III). The grid comes from ``image_size`` when
    given, else from the table as a square (a square count plus one is never a square, so
    the two layouts cannot be confused).
    """
    rows = state["pos_embed"].shape[1]
    layouts = (1, 0) if "cls_token" in state else (0,)
    if image_size is not None:
        height, width = as_pair(image_size)
        grid = (height // patch_size[0], width // patch_size[1])
        for slots in layouts:
            if rows - slots == grid[0] * grid[1]:
                return grid, slots
        raise ValueError(
            f"image_size={image_size} makes {grid[0]}x{grid[1]} patches of "
            f"{patch_size[0]}x{patch_size[1]}, but the timm position table has {rows} rows"
        )
    for slots in layouts:
        side = math.isqrt(rows - slots)
        if side * side == rows - slots:
            return (side, side), slots
    raise ValueError(
        f"the timm position table has {rows} rows, not a square grid of patches: pass "
        "image_size=(height, width)"
    )


def _refuse_unsupported(state: Mapping[str, torch.Tensor]) -> None:
    found = sorted(
        {what for key in state for part, what in UNSUPPORTED.items() if _mentions(key, part)}
    )
    if found:
        raise ValueError(f"this timm ViT has parts ours does not build: {'; '.join(found)}")


def _mentions(key: str, part: str) -> bool:
    return re.search(rf"(?:^|\.){re.escape(part)}(?:\.|$)", key) is not None


def state_from_timm(
    state: Mapping[str, torch.Tensor], config: ViTConfig
) -> dict[str, torch.Tensor]:
    """A timm ViT state dict in our names; ``config`` from :func:`config_from_timm`."""
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        fused = QKV.fullmatch(key)
        if fused:
            layer, kind = fused.groups()
            for name, part in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                ours[f"vit.layers.{layer}.attention.{name}_proj.{kind}"] = part
            continue
        for pattern, replacement in RENAMES:
            if match := re.fullmatch(pattern, key):
                ours[match.expand(replacement)] = tensor
                break
        else:
            raise ValueError(f"from_timm does not know the timm weight {key!r}")
    _, class_slots = position_layout(state, config.image_size, as_pair(config.patch_size))
    if config.use_class_token and not class_slots:
        # no_embed_class: the class token had no position; a zero row adds none.
        table = ours["vit.embeddings.position_embeddings"]
        ours["vit.embeddings.position_embeddings"] = torch.cat(
            [table.new_zeros(1, 1, table.shape[-1]), table], dim=1
        )
    return ours


# The head count each size of timm's ViT names implies (vit_small_patch16_224: 6), as timm's
# own model definitions build them; model_args' num_heads says otherwise when given.
TIMM_HEADS_BY_SIZE = {
    "tiny": 3,
    "small": 6,
    "medium": 8,
    "base": 12,
    "large": 16,
    "huge": 16,
    "giant": 16,
    "gigantic": 16,
}
TIMM_SIZE = re.compile(r"(?:vit|deit|deit3)_(" + "|".join(TIMM_HEADS_BY_SIZE) + r")_")
# timm's pooling names -> ours.
TIMM_POOLING = {"token": "cls", "avg": "mean"}


def options_from_timm_config(timm_config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`from_timm`'s keyword arguments for what the weights of a timm hub folder do not
    tell, from its ``config.json`` (as timm's ``save_for_hf`` writes it): the head count
    (``model_args``' ``num_heads``, else the one the ``architecture``'s size implies), the
    pooling (``global_pool``: ``"token"`` is ``"cls"``, ``"avg"`` is ``"mean"``) and the class
    names (``label_names``, when they match the head). An architecture whose head count
    cannot be told, or a pooling ours does not build, raises a ``ValueError`` naming it."""
    architecture = str(timm_config.get("architecture", ""))
    model_args = dict(timm_config.get("model_args") or {})
    options: dict[str, Any] = {}
    if "num_heads" in model_args:
        options["num_attention_heads"] = int(model_args["num_heads"])
    elif match := TIMM_SIZE.match(architecture):
        options["num_attention_heads"] = TIMM_HEADS_BY_SIZE[match.group(1)]
    else:
        raise ValueError(
            f"cannot tell the head count of the timm architecture {architecture!r}: its name "
            f"names none of the sizes {sorted(TIMM_HEADS_BY_SIZE)} and its model_args no num_heads"
        )
    global_pool = model_args.get("global_pool", timm_config.get("global_pool"))
    if global_pool:
        if global_pool not in TIMM_POOLING:
            raise ValueError(
                f"the timm {architecture} pools with global_pool={global_pool!r}; this ViT "
                f"builds {sorted(TIMM_POOLING)}"
            )
        options["pooling"] = TIMM_POOLING[global_pool]
    label_names = timm_config.get("label_names")
    num_classes = timm_config.get("num_classes", model_args.get("num_classes"))
    if label_names and len(label_names) == num_classes:
        options["id2label"] = dict(enumerate(label_names))
    return options
