"""timm's ``VisionTransformer`` weights <-> our ``ViTForImageClassification``: ``from_timm``
reads them, ``export_to_timm`` writes our classifier as timm's Hub folder.

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

The renames are one list in transformers' vocabulary (``TIMM_CONVERTERS``, as every
conversion here is stated for ``core_attention.interop``), applied forwards by ``from_timm``
and backwards by ``export_to_timm``. The export's ``config.json`` is the one timm's
``save_for_hf`` writes, built without timm (a test dependency only): ``model_args`` carries
the whole shape, so timm's ``local-dir:`` loader, or any ViT entry point given them, builds the
same model. What timm's config cannot say (no patch bias, an activation it does not name, a
LayerNorm epsilon other than its 1e-6) is refused before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.core_model_loading import Chunk, WeightConverter, WeightRenaming

from scratchformers.core_attention.interop import CheckpointConverter

from .configuration import ViTConfig, as_pair
from .modeling import ViTForImageClassification

# timm's defaults for what its weights do not show.
TIMM_DEFAULTS = {"num_attention_heads": 12, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}

# timm names -> ours, in transformers' vocabulary as every conversion of this project is
# (core_attention.interop): renamings applied to each key in turn, a pattern found anywhere in
# it (``^`` anchors one at the start), and the fused qkv cut in three by a converter. One list
# serves both ways: from_timm applies it, export_to_timm applies it in reverse (the
# CheckpointConverters below). The final norm's name depends on where it sits, so each position
# has its own list: the reverse must know which name to write.
_BODY_CONVERSIONS = (
    *(
        WeightConverter(
            rf"attn\.qkv\.{kind}",
            [f"attention.{name}_proj.{kind}" for name in ("q", "k", "v")],
            operations=[Chunk(dim=0)],
        )
        for kind in ("weight", "bias")
    ),
    WeightRenaming(r"^cls_token", "vit.embeddings.cls_token"),
    WeightRenaming(r"^pos_embed", "vit.embeddings.position_embeddings"),
    WeightRenaming(r"^patch_embed\.proj\.", "vit.embeddings.patch_embeddings.projection."),
    WeightRenaming(r"^blocks\.", "vit.layers."),
    WeightRenaming(r"\.norm1\.", ".layernorm_before."),
    WeightRenaming(r"\.norm2\.", ".layernorm_after."),
    WeightRenaming(r"\.attn\.proj\.", ".attention.o_proj."),
    WeightRenaming(r"^head\.", "classifier."),
)
# timm's name for the final norm, by our final_norm_position: ``norm`` normalises every token,
# ``fc_norm`` the pooled vector (timm's mean-pooled models).
TIMM_FINAL_NORM = {"before_pooling": "norm", "after_pooling": "fc_norm"}
# The conversions of a timm ViT, by our final_norm_position. They are only ever applied to
# in-memory state dicts (state_from_transformers / state_to_transformers): no transformers
# class and no config.json model_type is involved, so none is named.
TIMM_CONVERTERS = {
    position: CheckpointConverter(
        transformers_model_type="timm",
        config_class=ViTConfig,
        transformers_classes={},
        weight_conversions=(
            *_BODY_CONVERSIONS,
            WeightRenaming(rf"^{norm}\.", "vit.layernorm."),
        ),
    )
    for position, norm in TIMM_FINAL_NORM.items()
}
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
    converter = TIMM_CONVERTERS[config.final_norm_position]
    ours = converter.state_from_transformers(state)
    # Every timm name is renamed; one that comes out unchanged is a weight we do not know.
    unknown = sorted(key for key in ours if key in state)
    if unknown:
        raise ValueError(f"from_timm does not know the timm weights {unknown[:8]}")
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


# Our activations -> timm's ``act_layer`` names, for those timm builds (its default is exact
# GELU, so "gelu" needs no argument).
TIMM_ACTIVATIONS = {
    "gelu": None,
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
}
# The LayerNorm epsilon timm's ViT builds; its config.json has no way to say another
# (model_args can name a norm layer, not its epsilon).
TIMM_LAYER_NORM_EPS = 1e-6
# The timm entry point the export names. timm's ViT entry points differ only in the default
# shape, which the export's model_args replace entirely; this one has a pretrained config for
# pretrained=True to read the file through.
TIMM_ARCHITECTURE = "vit_base_patch16_224"


def timm_model_args(config: ViTConfig) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments that build a ``VisionTransformer`` computing
    what a :class:`ViTForImageClassification` of ``config`` computes (timm's ``model_args``).

    Raises a ``ValueError`` naming the config field and its value where timm's ViT cannot
    compute it: no bias on the patch projection (``patch_bias=False``), an activation timm does
    not name, or a LayerNorm epsilon other than timm's 1e-6 (transformers' default, 1e-12,
    included: on images with flat patches the two differ by 5e-4 in a trained model's logits).
    """
    if not config.patch_bias:
        raise ValueError(
            "patch_bias=False: timm's VisionTransformer has a bias on its patch projection "
            "whenever it has no norm before the blocks, so it cannot compute this model"
        )
    if config.hidden_act not in TIMM_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={config.hidden_act!r} has no timm act_layer; timm builds "
            f"{sorted(TIMM_ACTIVATIONS)} of ours"
        )
    if not math.isclose(config.layer_norm_eps, TIMM_LAYER_NORM_EPS, rel_tol=1e-9):
        # Not a rounding matter: a patch of one colour has nearly no variance, and there
        # transformers' 1e-12 and timm's 1e-6 move a trained ViT's logits by 5e-4.
        raise ValueError(
            f"layer_norm_eps={config.layer_norm_eps!r}: timm's VisionTransformer normalises "
            f"with eps={TIMM_LAYER_NORM_EPS} and its config.json cannot say another (a model "
            "built with transformers' default, 1e-12, has no timm equivalent)"
        )
    width = config.hidden_size
    mlp_ratio = mlp_ratio_for(width, config.intermediate_size, "intermediate_size")
    after_pooling = config.final_norm_position == "after_pooling"
    args: dict[str, Any] = {
        "num_classes": config.num_labels,
        "img_size": _int_or_pair(config.image_size),
        "patch_size": _int_or_pair(config.patch_size),
        "in_chans": config.num_channels,
        "embed_dim": width,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "class_token": config.use_class_token,
        "global_pool": {pool: name for name, pool in TIMM_POOLING.items()}[config.pooling],
        # timm's default (fc_norm only for mean pooling) is not always ours: say it.
        "fc_norm": after_pooling,
    }
    activation = TIMM_ACTIVATIONS[config.hidden_act]
    if activation is not None:
        args["act_layer"] = activation
    return args


def mlp_ratio_for(width: int, mlp_width: int, field: str = "intermediate_size") -> float:
    """The ``mlp_ratio`` from which timm and open_clip, which build ``int(width * mlp_ratio)``
    MLP units, build ``mlp_width``; a ``ValueError`` naming ``field`` if none would."""
    mlp_ratio = mlp_width / width
    if int(width * mlp_ratio) != mlp_width:
        # The product can land just below the integer (21 * (51 / 21) is 50.999...): half a
        # unit more truncates to it.
        mlp_ratio = (mlp_width + 0.5) / width
    if int(width * mlp_ratio) != mlp_width:  # never seen: the check keeps a wrong MLP out
        raise ValueError(
            f"{field}={mlp_width}: timm and open_clip build int(width * mlp_ratio) MLP units "
            f"and no mlp_ratio gives {mlp_width} at width {width}"
        )
    return mlp_ratio


def _int_or_pair(value: int | list[int] | tuple[int, ...]) -> int | list[int]:
    height, width = as_pair(value)
    return height if height == width else [height, width]


def export_to_timm(
    model: ViTForImageClassification,
    out_dir: str | os.PathLike[str],
    *,
    image_mean: tuple[float, ...] | list[float] = (0.5, 0.5, 0.5),
    image_std: tuple[float, ...] | list[float] = (0.5, 0.5, 0.5),
    interpolation: str = "bilinear",
) -> Path:
    """Write ``model`` as timm saves a ``VisionTransformer`` for the Hub: ``model.safetensors``
    in timm's names and a ``config.json`` (``architecture``, ``num_classes``,
    ``num_features``, ``global_pool``, ``label_names``, ``model_args`` giving the whole shape,
    and ``pretrained_cfg`` with the input size and normalisation). timm then builds the same
    classifier, whose logits match ours (fp32, within 1e-5):

    * ``timm.create_model("local-dir:" + out_dir, pretrained=True)`` (the simplest load);
    * ``timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=...,
      num_classes=...), **model_args)``: without ``num_classes`` in the overlay timm compares
      the file with its own ImageNet config, finds 1000 classes and drops the head;
    * ``timm.create_model(architecture, **model_args).load_state_dict(...)``, strict.

    The weight names are ``from_timm``'s conversions in reverse, so a folder written here reads
    back with ``from_timm`` and ``options_from_timm_config``.

    Args:
        model: the classifier to write (a ``ViTModel`` has no head for timm's).
        out_dir: the folder to write (made if missing; its files of these names are replaced).
        image_mean, image_std: the normalisation the model expects, for ``pretrained_cfg``
            (timm's ``resolve_data_config`` reads it); the default is transformers'
            ``ViTImageProcessor``'s.
        interpolation: the resize filter for ``pretrained_cfg`` (``"bilinear"``,
            ``"bicubic"``, ...).

    Raises:
        TypeError: ``model`` is not a ``ViTForImageClassification``.
        ValueError: timm's ViT cannot compute ``model`` (see :func:`timm_model_args`), before
            anything is written.
    """
    if not isinstance(model, ViTForImageClassification):
        raise TypeError(
            f"export_to_timm writes a ViTForImageClassification (timm's VisionTransformer "
            f"has a head), got {type(model).__name__}"
        )
    config = model.config
    model_args = timm_model_args(config)
    channels = config.num_channels
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        if len(values) != channels:
            raise ValueError(f"{name} has {len(values)} values for {channels} channels")
    converter = TIMM_CONVERTERS[config.final_norm_position]
    state = converter.state_to_transformers(
        {name: tensor.detach() for name, tensor in model.state_dict().items()}
    )
    height, width = as_pair(config.image_size)
    pretrained_cfg = {
        "custom_load": False,
        "input_size": [channels, height, width],
        # The position table is learned for this size; timm resamples only when asked.
        "fixed_input_size": True,
        "interpolation": interpolation,
        # transformers' processors resize to the input size, no crop.
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [float(value) for value in image_mean],
        "std": [float(value) for value in image_std],
        "num_classes": config.num_labels,
        "pool_size": None,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    timm_config: dict[str, Any] = {
        "architecture": TIMM_ARCHITECTURE,
        "num_classes": config.num_labels,
        "num_features": config.hidden_size,
        "global_pool": model_args["global_pool"],
    }
    labels = [config.id2label.get(index) for index in range(config.num_labels)]
    # transformers' placeholder names (LABEL_0, ...) name nothing: timm's config leaves them out.
    placeholders = [f"LABEL_{index}" for index in range(config.num_labels)]
    if all(isinstance(label, str) for label in labels) and labels != placeholders:
        timm_config["label_names"] = labels
    timm_config["model_args"] = model_args
    timm_config["pretrained_cfg"] = pretrained_cfg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.contiguous() for name, tensor in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(timm_config, indent=2) + "\n")
    return out
