"""Shared set-up for the BasicFormer tests: tiny models with odd sizes (the kit's plugin keeps
them offline and seeded).

Test modules are imported with ``--import-mode=importlib`` and cannot import each other, so
every shared helper is a fixture here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from scratchformers.basicformer import BasicFormerConfig
from scratchformers.core_attention.testing import PLUGIN, left_padded_batch, use_hypothesis_profile

pytest_plugins = [PLUGIN]
use_hypothesis_profile("basicformer", max_examples=6)

POSITION_TYPES = ("none", "learned", "sinusoidal", "rotary")
VOCAB = 101
HIDDEN = 48
HEADS = 3
EXAMPLE = Path(__file__).parents[1] / "examples" / "smoke.py"


@pytest.fixture(params=POSITION_TYPES)
def position_type(request: pytest.FixtureRequest) -> str:
    """Each of the four position schemes."""
    return request.param


@pytest.fixture
def make_config() -> Callable[..., BasicFormerConfig]:
    """A tiny config: hidden 48, 3 query heads sharing one key/value head, vocab 101, 2 layers.

    The initialisation is wider than the default (0.02) so that an untrained model's logits
    differ enough between tokens for greedy decoding to produce varied, order-sensitive output.
    """

    def make(**overrides: object) -> BasicFormerConfig:
        options: dict[str, object] = {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": HEADS,
            "num_key_value_heads": 1,
            "max_position_embeddings": 64,
            "initializer_range": 0.3,
        }
        options.update(overrides)
        return BasicFormerConfig(**options)

    return make


@pytest.fixture
def make_model(
    make_config: Callable[..., BasicFormerConfig],
) -> Callable[..., torch.nn.Module]:
    """``make_model(cls, seed=0, **config_overrides)``: a seeded tiny model in eval mode."""

    def make(model_class: type, seed: int = 0, **overrides: object) -> torch.nn.Module:
        torch.manual_seed(seed)
        return model_class(make_config(**overrides)).eval()

    return make


@pytest.fixture
def padded_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
    """``padded_batch(lengths)``: left-padded ids (pad 0) and mask, plus each row unpadded.

    Ids are drawn from 5..100, so they never collide with the special tokens 0-4.
    """

    def make(
        lengths: tuple[int, ...] = (7, 4, 2), seed: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return left_padded_batch(lengths, VOCAB, first_id=5, pad_token_id=0, seed=seed)

    return make


@pytest.fixture(scope="session")
def smoke() -> ModuleType:
    """The example script ``examples/smoke.py``, loaded by path."""
    spec = importlib.util.spec_from_file_location("basicformer_smoke_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer(smoke: ModuleType) -> object:
    """The example's offline BPE tokenizer (pad=0, bos=1, eos=2, unk=3, mask=4, left padding)."""
    return smoke.build_tokenizer(smoke.SENTENCES * 20)
