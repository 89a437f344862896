"""The BERT tests' set-up: tiny models of odd sizes, and the same weights in transformers' BERT
and in ours (``make_pair``, kinds ``mlm``, ``base``, ``cls``; ``make_theirs`` also builds
``base-no-pooler``, the base model inside their BertForMaskedLM). The kit's plugin gives the
fixtures built on them; test modules are imported with ``--import-mode=importlib`` and cannot
import each other, so every shared helper is a fixture."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
import transformers

import scratchformers.bert_mlm as ours
from scratchformers.core_attention.testing import PLUGIN, PairSpec, right_padded_batch

pytest_plugins = [PLUGIN]

VOCAB = 211
PAD = 0
FIRST_ID = 2  # ids are drawn from FIRST_ID..VOCAB-1, never padding


def config_options(**overrides: object) -> dict[str, object]:
    """A tiny BERT: hidden 36 in 3 heads of 12, 3 layers, MLP 52, vocab 211, 40 positions,
    3 token types, 4 labels."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": 36,
        "num_attention_heads": 3,
        "num_hidden_layers": 3,
        "intermediate_size": 52,
        "max_position_embeddings": 40,
        "type_vocab_size": 3,
        "pad_token_id": PAD,
        "num_labels": 4,
        **overrides,
    }


@pytest.fixture
def pair_spec() -> PairSpec:
    return PairSpec(
        kinds={
            "mlm": (transformers.BertForMaskedLM, ours.BertForMaskedLM),
            "base": (transformers.BertModel, ours.BertModel),
            "cls": (transformers.BertForSequenceClassification, ours.BertForSequenceClassification),
            "base-no-pooler": (partial(transformers.BertModel, add_pooling_layer=False), None),
        },
        config=lambda **overrides: transformers.BertConfig(**config_options(**overrides)),
    )


@pytest.fixture
def make_config() -> Callable[..., ours.BertConfig]:
    """``make_config(**overrides)``: our tiny BertConfig."""
    return lambda **overrides: ours.BertConfig(**config_options(**overrides))


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def right_padded(lengths: tuple[int, ...] = (13, 9, 4, 11), seed: int = 1) -> Batch:
    """Random ids right-padded (pad 0) to the longest row, ``(input_ids, attention_mask,
    token_type_ids)``: each row is segment 0 up to about its middle, then segment 1, and its
    padding segment 0, as a tokenizer writes a sentence pair."""
    input_ids, mask, _ = right_padded_batch(
        lengths, VOCAB, first_id=FIRST_ID, pad_token_id=PAD, seed=seed
    )
    token_types = torch.zeros_like(input_ids)
    for i, n in enumerate(lengths):
        token_types[i, (n + 1) // 2 : n] = 1
    return input_ids, mask, token_types


@pytest.fixture
def padded_batch() -> Callable[..., Batch]:
    """``padded_batch(lengths, seed)``: see :func:`right_padded` (13 tokens, batch 4)."""
    return right_padded
