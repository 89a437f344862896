"""The ViT tests' set-up: tiny models of odd sizes, and the same weights in transformers' ViT
and in ours (``make_pair``, kinds ``cls`` and ``base``; ``make_theirs`` also builds
``base-no-pooler``, the base model inside their classifier). The kit's plugin gives the
fixtures built on them; test modules are imported with ``--import-mode=importlib`` and cannot
import each other, so every shared helper is a fixture."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import transformers

import scratchformers.vit as ours
from scratchformers.core_attention.testing import PLUGIN, PairSpec

pytest_plugins = [PLUGIN]


def config_options(**overrides: object) -> dict[str, object]:
    """A tiny ViT: 20x20 images of 3 channels in 4x4 patches (25 of them), hidden 36 in 3
    heads of 12, 3 layers, MLP 52, 5 labels."""
    return {
        "image_size": 20,
        "patch_size": 4,
        "num_channels": 3,
        "hidden_size": 36,
        "num_attention_heads": 3,
        "num_hidden_layers": 3,
        "intermediate_size": 52,
        "num_labels": 5,
        **overrides,
    }


@pytest.fixture
def pair_spec() -> PairSpec:
    return PairSpec(
        kinds={
            "cls": (transformers.ViTForImageClassification, ours.ViTForImageClassification),
            "base": (transformers.ViTModel, ours.ViTModel),
            "base-no-pooler": (partial(transformers.ViTModel, add_pooling_layer=False), None),
        },
        config=lambda **overrides: transformers.ViTConfig(**config_options(**overrides)),
    )


@pytest.fixture
def image_size() -> int:
    return 20


@pytest.fixture
def make_config() -> Callable[..., ours.ViTConfig]:
    """``make_config(**overrides)``: our tiny ViTConfig."""
    return lambda **overrides: ours.ViTConfig(**config_options(**overrides))
