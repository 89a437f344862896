"""The GPT-2 tests' set-up: tiny models of odd sizes, and the same weights in transformers' GPT-2
and in ours (``make_pair``, kinds ``lm`` and ``base``). The kit's plugin gives the fixtures
built on them; test modules are imported with ``--import-mode=importlib`` and cannot import
each other, so every shared helper is a fixture."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers

import scratchformers.gpt2 as ours
from scratchformers.core_attention.testing import (
    PLUGIN,
    PairSpec,
    left_padded_batch,
    use_hypothesis_profile,
)

pytest_plugins = [PLUGIN]
use_hypothesis_profile("gpt2", max_examples=6)

VOCAB = 101
PAD, EOS = 0, 1
FIRST_ID = 2  # prompt ids are drawn from FIRST_ID..VOCAB-1, never a special token


def config_options(**overrides: object) -> dict[str, object]:
    """A tiny GPT-2: n_embd 48, 3 heads, 2 layers, vocab 101, 40 positions."""
    return {
        "vocab_size": VOCAB,
        "n_embd": 48,
        "n_head": 3,
        "n_layer": 2,
        "n_positions": 40,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        **overrides,
    }


@pytest.fixture
def pair_spec() -> PairSpec:
    return PairSpec(
        kinds={
            "lm": (transformers.GPT2LMHeadModel, ours.GPT2LMHeadModel),
            "base": (transformers.GPT2Model, ours.GPT2Model),
        },
        config=lambda **overrides: transformers.GPT2Config(**config_options(**overrides)),
    )


@pytest.fixture
def match_min_std() -> None:
    """GPT-2's comparisons never checked the spread of the expected values."""
    return None


@pytest.fixture
def make_config() -> Callable[..., ours.GPT2Config]:
    """``make_config(**overrides)``: our tiny GPT2Config."""
    return lambda **overrides: ours.GPT2Config(**config_options(**overrides))


@pytest.fixture
def padded_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
    """``padded_batch(lengths=(11, 6, 3), seed=1)``: left-padded ids (pad 0) and mask, plus
    each row unpadded."""
    return lambda lengths=(11, 6, 3), seed=1: left_padded_batch(
        lengths, VOCAB, first_id=FIRST_ID, pad_token_id=PAD, seed=seed
    )


@pytest.fixture
def their_positions() -> Callable[[torch.Tensor], torch.Tensor]:
    """Position ids for transformers' GPT-2 on a left-padded batch: its forward does not derive
    them from the mask, so each row must be told to start counting at its first real token."""
    return lambda mask: (mask.long().cumsum(-1) - 1).clamp(min=0)
