"""Shared set-up for the GPT-2 tests: offline, seeded, tiny models with odd sizes, and the same
weights in transformers' GPT-2 and in ours.

Every comparison starts from a transformers model (``transformers.GPT2LMHeadModel`` or
``GPT2Model``) whose parameters are all re-drawn, biases and LayerNorms included, so that a
wrongly mapped bias or a transposed matrix cannot hide behind a zero or a one. It is saved with
``save_pretrained`` and loaded into our class with ``from_pretrained``: every parity test
therefore goes through the real checkpoint conversion.

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
from hypothesis import HealthCheck, settings

import scratchformers.gpt2 as ours
from scratchformers.core_attention.testing import left_padded_batch

# Two CPU cores: keep property tests small. Every @given test inherits this profile.
settings.register_profile(
    "gpt2",
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("gpt2")
torch.set_num_threads(2)

VOCAB = 101
N_POSITIONS = 40
PAD = 0
EOS = 1
FIRST_ID = 2  # prompt ids are drawn from FIRST_ID..VOCAB-1, never a special token
TOLERANCE = 1e-4

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
    """A tiny GPT-2: n_embd 48, 3 heads, 2 layers, vocab 101, 40 positions."""
    options: dict[str, object] = {
        "vocab_size": VOCAB,
        "n_embd": 48,
        "n_head": 3,
        "n_layer": 2,
        "n_positions": N_POSITIONS,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
    }
    options.update(overrides)
    return options


@pytest.fixture
def make_config() -> Callable[..., ours.GPT2Config]:
    """``make_config(**overrides)``: our tiny GPT2Config."""
    return lambda **overrides: ours.GPT2Config(**config_options(**overrides))


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter: matrices and biases ~ N(0, 0.2), LayerNorm weights ~ N(1, 0.2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            is_norm_weight = ".ln_" in f".{name}" and name.endswith("weight")
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
    """``make_theirs(head=True, seed=0, attn_implementation=None, **config_overrides)``: a
    transformers GPT-2 with random weights, in eval mode."""

    def make(
        head: bool = True,
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> torch.nn.Module:
        config = transformers.GPT2Config(**config_options(**overrides))
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        model_class = transformers.GPT2LMHeadModel if head else transformers.GPT2Model
        return randomize(model_class(config), seed).eval()

    return make


@pytest.fixture
def make_pair(
    make_theirs: Callable[..., torch.nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Pair]:
    """``make_pair(head=True, seed=0, attn_implementation=None, **config_overrides)``: a
    transformers model saved with ``save_pretrained`` and loaded back into our class."""

    def make(
        head: bool = True,
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> Pair:
        theirs = make_theirs(head, seed, attn_implementation, **overrides)
        directory = tmp_path_factory.mktemp("transformers-gpt2")
        theirs.save_pretrained(directory)
        our_class = ours.GPT2LMHeadModel if head else ours.GPT2Model
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        loaded = our_class.from_pretrained(directory, **kwargs)
        assert type(loaded) is our_class
        return Pair(theirs, loaded.eval(), directory)

    return make


@pytest.fixture
def padded_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
    """``padded_batch(lengths, seed)``: left-padded ids (pad 0) and mask, plus each row unpadded."""

    def make(
        lengths: tuple[int, ...] = (11, 6, 3), seed: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return left_padded_batch(lengths, VOCAB, first_id=FIRST_ID, pad_token_id=PAD, seed=seed)

    return make


@pytest.fixture
def their_positions() -> Callable[[torch.Tensor], torch.Tensor]:
    """Position ids for transformers' GPT-2 on a left-padded batch: its forward does not derive
    them from the mask, so each row must be told to start counting at its first real token."""
    return lambda mask: (mask.long().cumsum(-1) - 1).clamp(min=0)


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
        difference = float((actual - expected).abs().max())
        if difference > _LARGEST.get(what, (-1.0, ""))[0]:
            _LARGEST[what] = (difference, request.node.name)
        assert difference <= TOLERANCE, f"max abs {what} difference {difference:.3g}"
        return difference

    return check
