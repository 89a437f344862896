"""Shared set-up for the BERT tests: offline, seeded, tiny models with odd sizes, and the same
weights in transformers' BERT and in ours.

Every comparison starts from a transformers model whose parameters are all re-drawn, biases
and LayerNorms included, so that a wrongly mapped bias cannot hide behind a zero or a one. It
is saved with ``save_pretrained`` and loaded into our class with ``from_pretrained``: every
parity test therefore goes through the real checkpoint conversion.

Test modules are imported with ``--import-mode=importlib`` and cannot import each other, so
every shared helper is a fixture here.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

import scratchformers.bert_mlm as ours

torch.set_num_threads(2)

VOCAB = 211
MAX_POSITIONS = 40
TYPE_VOCAB = 3
PAD = 0
FIRST_ID = 2  # ids are drawn from FIRST_ID..VOCAB-1, never padding
TOLERANCE = 1e-4

# transformers' class -> ours, for each head.
CLASSES = {
    "base": (transformers.BertModel, ours.BertModel),
    "mlm": (transformers.BertForMaskedLM, ours.BertForMaskedLM),
    "cls": (transformers.BertForSequenceClassification, ours.BertForSequenceClassification),
}

# The largest difference against transformers that any test measured, reported at the end.
_LARGEST: dict[str, tuple[float, str]] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, (value, where) in sorted(_LARGEST.items()):
        terminalreporter.write_line(
            f"largest {what} difference vs transformers: {value:.3g} ({where})"
        )


@pytest.fixture(autouse=True)
def _seed() -> None:
    """The same random weights and inputs on every run, and for every test on its own."""
    torch.manual_seed(0)


def config_options(**overrides: object) -> dict[str, object]:
    """A tiny BERT: hidden 36 in 3 heads of 12, 3 layers, MLP 52, vocab 211, 40 positions,
    3 token types, 4 labels."""
    options: dict[str, object] = {
        "vocab_size": VOCAB,
        "hidden_size": 36,
        "num_attention_heads": 3,
        "num_hidden_layers": 3,
        "intermediate_size": 52,
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": TYPE_VOCAB,
        "pad_token_id": PAD,
        "num_labels": 4,
    }
    options.update(overrides)
    return options


@pytest.fixture
def make_config() -> Callable[..., ours.BertConfig]:
    """``make_config(**overrides)``: our tiny BertConfig."""
    return lambda **overrides: ours.BertConfig(**config_options(**overrides))


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter: matrices and biases ~ N(0, 0.2), LayerNorm weights ~ N(1, 0.2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            is_norm_weight = "LayerNorm" in name and name.endswith("weight")
            parameter.copy_(noise + 1.0 if is_norm_weight else noise)
    return model


@dataclass
class Pair:
    """The same weights twice: transformers' model and ours, loaded from ``directory``."""

    theirs: torch.nn.Module
    ours: torch.nn.Module
    directory: Path


@pytest.fixture
def make_theirs() -> Callable[..., torch.nn.Module]:
    """``make_theirs(kind="mlm", seed=0, attn_implementation=None, **config_overrides)``: a
    transformers BERT (``kind`` in base / base-no-pooler / mlm / cls) with random weights, in eval mode."""

    def make(
        kind: str = "mlm",
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> torch.nn.Module:
        config = transformers.BertConfig(**config_options(**overrides))
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        if kind == "base-no-pooler":  # as the base model inside their BertForMaskedLM
            return randomize(transformers.BertModel(config, add_pooling_layer=False), seed).eval()
        return randomize(CLASSES[kind][0](config), seed).eval()

    return make


@pytest.fixture
def make_pair(
    make_theirs: Callable[..., torch.nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Pair]:
    """``make_pair(kind="mlm", seed=0, attn_implementation=None, **config_overrides)``: a
    transformers model saved with ``save_pretrained`` and loaded back into our class."""

    def make(
        kind: str = "mlm",
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> Pair:
        theirs = make_theirs(kind, seed, attn_implementation, **overrides)
        directory = tmp_path_factory.mktemp(f"transformers-bert-{kind}")
        theirs.save_pretrained(directory)
        our_class = CLASSES[kind][1]
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        loaded = our_class.from_pretrained(directory, **kwargs)
        assert type(loaded) is our_class
        return Pair(theirs, loaded.eval(), directory)

    return make


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def right_padded(lengths: tuple[int, ...] = (13, 9, 4, 11), seed: int = 1) -> Batch:
    """Random ids right-padded (pad 0) to the longest row, ``(input_ids, attention_mask,
    token_type_ids)``: each row is segment 0 up to about its middle, then segment 1, and its
    padding segment 0, as a tokenizer writes a sentence pair."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    token_types = torch.zeros_like(input_ids)
    for i, n in enumerate(lengths):
        input_ids[i, :n] = torch.randint(FIRST_ID, VOCAB, (n,), generator=generator)
        mask[i, :n] = 1
        token_types[i, (n + 1) // 2 : n] = 1
    return input_ids, mask, token_types


@pytest.fixture
def padded_batch() -> Callable[..., Batch]:
    """``padded_batch(lengths, seed)``: see :func:`right_padded` (13 tokens, batch 4)."""
    return right_padded


@pytest.fixture
def assert_matches(request: pytest.FixtureRequest) -> Callable[..., float]:
    """``assert_matches(ours, theirs, mask=None, what="logit")``: max abs difference over the
    real (mask == 1) positions is at most 1e-4. Returns the difference, and keeps the largest
    one of the session for the terminal summary."""

    def check(
        actual: torch.Tensor,
        expected: torch.Tensor,
        mask: torch.Tensor | None = None,
        what: str = "logit",
    ) -> float:
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        actual, expected = actual.detach().float(), expected.detach().float()
        if mask is not None:
            real = mask.bool()
            actual, expected = actual[real], expected[real]
        assert actual.numel() > 0
        assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
        assert float(expected.std()) > 1e-3, f"degenerate {what}s"
        difference = float((actual - expected).abs().max())
        if difference > _LARGEST.get(what, (-1.0, ""))[0]:
            _LARGEST[what] = (difference, request.node.name)
        assert difference <= TOLERANCE, f"max abs {what} difference {difference:.3g}"
        return difference

    return check
