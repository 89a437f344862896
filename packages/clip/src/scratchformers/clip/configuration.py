"""CLIPConfig and its two towers' configs: transformers' CLIP configurations, field for field,
under our model types, with the checks a CLIP needs before any weight exists.

The towers are built of the vit package's layers, which read ViT's field names; the few that
CLIP names differently are given under ViT's name too (``attention_probs_dropout_prob`` is
CLIP's ``attention_dropout``; CLIP's vision tower has no bias on its patch projection).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig as TransformersCLIPConfig
from transformers import CLIPTextConfig as TransformersCLIPTextConfig
from transformers import CLIPVisionConfig as TransformersCLIPVisionConfig
from transformers.activations import ACT2FN

from scratchformers.core_attention import check_config
from scratchformers.vit.configuration import as_pair

# Named shapes: the towers of OpenAI's released models, as transformers' hub configs give them.
PRESETS: dict[str, dict[str, Any]] = {
    "ViT-B/32": {
        "projection_dim": 512,
        "text_config": {
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
        },
        "vision_config": {
            "image_size": 224,
            "patch_size": 32,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
    },
    "ViT-B/16": {
        "projection_dim": 512,
        "text_config": {
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
        },
        "vision_config": {
            "image_size": 224,
            "patch_size": 16,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
    },
}


class _Tower:
    """What both towers' configs share: checked once built, and CLIP's ``attention_dropout``
    under the name the vit package's layers read."""

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    @property
    def attention_probs_dropout_prob(self) -> float:
        """ViT's name for ``attention_dropout``."""
        return self.attention_dropout

    def check_tower(self) -> None:
        """The checks every tower needs: standard sizes, the activation, the dropout."""
        check_config(self)
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not an activation transformers knows"
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")


@strict
class CLIPTextConfig(_Tower, TransformersCLIPTextConfig):
    """The text tower: transformers' ``CLIPTextConfig`` (``vocab_size``, ``hidden_size``,
    ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``max_position_embeddings``, ``hidden_act`` (``"quick_gelu"`` for OpenAI's weights,
    ``"gelu"`` for LAION's), ``layer_norm_eps``, ``attention_dropout``, ``eos_token_id``, ...).

    ``eos_token_id`` says where a text is read: the text embedding is the final state of the
    first end-of-text token. A legacy config with ``eos_token_id == 2`` (written before
    transformers fixed that field) reads the highest token id instead, which is the
    end-of-text token in OpenAI's vocabulary, as transformers does.
    """

    model_type = "scratchformers-clip-text"

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this tower cannot honour."""
        self.check_tower()
        if self.eos_token_id is None or isinstance(self.eos_token_id, list):
            raise ValueError(
                f"eos_token_id must be one token id (the text embedding is read at the first "
                f"end-of-text token), got {self.eos_token_id!r}"
            )
        if not 0 <= self.eos_token_id < self.vocab_size and self.eos_token_id != 2:
            raise ValueError(
                f"eos_token_id={self.eos_token_id} is not a token of vocab_size={self.vocab_size}"
            )


@strict
class CLIPVisionConfig(_Tower, TransformersCLIPVisionConfig):
    """The vision tower: transformers' ``CLIPVisionConfig`` (``image_size``, ``patch_size``,
    ``num_channels``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``hidden_act``, ``layer_norm_eps``, ``attention_dropout``, ...).
    """

    model_type = "scratchformers-clip-vision"
    # Read by the vit package's patch embedding: CLIP's patch projection has no bias.
    patch_bias = False

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this tower cannot honour."""
        self.check_tower()
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or min(as_pair(value)) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if any(
            p > i for p, i in zip(as_pair(self.patch_size), as_pair(self.image_size), strict=True)
        ):
            raise ValueError(
                f"patch_size={self.patch_size} is larger than image_size={self.image_size}: an "
                "image must hold at least one patch"
            )
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {self.num_channels}")


@strict
class CLIPConfig(TransformersCLIPConfig):
    """The configuration of :class:`~scratchformers.clip.CLIPModel`: transformers'
    ``CLIPConfig``, so a transformers CLIP ``config.json`` reads as is.

    ``text_config`` and ``vision_config`` (dicts or configs) describe the towers,
    ``projection_dim`` the width of the shared embedding space both are projected into, and
    ``logit_scale_init_value`` the starting log-temperature (``ln(1 / 0.07)``, CLIP's).

    ``CLIPConfig.from_preset("ViT-B/32", **changes)`` gives the shape of a released model.
    """

    model_type = "scratchformers-clip"
    sub_configs_defaults = {"text_config": CLIPTextConfig, "vision_config": CLIPVisionConfig}

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> CLIPConfig:
        """The config of a named shape (``"ViT-B/32"``, ``"ViT-B/16"``); ``changes`` override
        top-level fields (``text_config`` / ``vision_config`` dicts update the tower's)."""
        if name not in PRESETS:
            raise ValueError(f"unknown CLIP preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in PRESETS[name].items()
        }
        for key, value in changes.items():
            if key in ("text_config", "vision_config") and isinstance(value, dict):
                fields[key].update(value)
            else:
                fields[key] = value
        return cls(**fields)

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this model cannot honour."""
        if (
            isinstance(self.projection_dim, bool)
            or not self.projection_dim
            or self.projection_dim < 1
        ):
            raise ValueError(f"projection_dim must be at least 1, got {self.projection_dim}")
        self.text_config.check()
        self.vision_config.check()
