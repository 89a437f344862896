"""The ViTMAE tests' set-up: tiny models of odd sizes, and the same weights in transformers'
ViTMAE and in ours (``make_pair``, kinds ``pretraining`` and ``base``). The kit's plugin gives
the fixtures built on them; its randomize rule re-draws the class and mask tokens and both
position tables too, which transformers 5.24 leaves at zero in a fresh ViTMAE. Test modules are
imported with ``--import-mode=importlib`` and cannot import each other, so every shared helper
is a fixture."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers

import scratchformers.vitmae as ours
from scratchformers.core_attention.testing import PLUGIN, PairSpec

pytest_plugins = [PLUGIN]

IMAGE = 24
PATCHES = (IMAGE // 4) ** 2  # 36, of which int(36 * 0.4) = 14 are kept


def config_options(**overrides: object) -> dict[str, object]:
    """A tiny ViTMAE: 24x24 images of 3 channels in 4x4 patches (36 of them, 60% hidden), an
    encoder of hidden 36 in 3 heads of 12, 2 layers, MLP 52; a decoder of hidden 20 in 2 heads
    of 10, 2 layers, MLP 28."""
    return {
        "image_size": IMAGE,
        "patch_size": 4,
        "num_channels": 3,
        "hidden_size": 36,
        "num_attention_heads": 3,
        "num_hidden_layers": 2,
        "intermediate_size": 52,
        "decoder_hidden_size": 20,
        "decoder_num_attention_heads": 2,
        "decoder_num_hidden_layers": 2,
        "decoder_intermediate_size": 28,
        "mask_ratio": 0.6,
        **overrides,
    }


@pytest.fixture
def pair_spec() -> PairSpec:
    return PairSpec(
        kinds={
            "pretraining": (transformers.ViTMAEForPreTraining, ours.ViTMAEForPreTraining),
            "base": (transformers.ViTMAEModel, ours.ViTMAEModel),
        },
        config=lambda **overrides: transformers.ViTMAEConfig(**config_options(**overrides)),
    )


@pytest.fixture
def image_size() -> int:
    return IMAGE


@pytest.fixture
def make_config() -> Callable[..., ours.ViTMAEConfig]:
    """``make_config(**overrides)``: our tiny ViTMAEConfig."""
    return lambda **overrides: ours.ViTMAEConfig(**config_options(**overrides))


@pytest.fixture
def noise() -> Callable[..., torch.Tensor]:
    """``noise(batch=3, patches=36, seed=2)``: uniform noise that fixes which patches are kept."""
    return lambda batch=3, patches=PATCHES, seed=2: torch.rand(
        (batch, patches), generator=torch.Generator().manual_seed(seed)
    )
