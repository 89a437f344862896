"""Shared set-up for the ViTMAE tests: offline, seeded, tiny models with odd sizes, and the same
weights in transformers' ViTMAE and in ours.

Every comparison starts from a reference model whose parameters are all re-drawn, biases,
LayerNorms, the class and mask tokens and both position tables included (transformers 5.24
leaves the tables of a fresh ViTMAE at zero), so that a wrongly mapped tensor cannot hide
behind a zero or a one. transformers' models are saved with ``save_pretrained`` and loaded
into our class with ``from_pretrained``: every parity test goes through the real checkpoint
conversion.

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

import scratchformers.vitmae as ours

torch.set_num_threads(2)

IMAGE = 24
PATCH = 4
PATCHES = (IMAGE // PATCH) ** 2  # 36, of which int(36 * 0.4) = 14 are kept
CHANNELS = 3
BATCH = 3
TOLERANCE = 1e-4

# transformers' class -> ours, for each kind of model.
CLASSES = {
    "pretraining": (transformers.ViTMAEForPreTraining, ours.ViTMAEForPreTraining),
    "base": (transformers.ViTMAEModel, ours.ViTMAEModel),
}

# The largest difference against a reference that any test measured, reported at the end.
_LARGEST: dict[str, tuple[float, str]] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, (value, where) in sorted(_LARGEST.items()):
        terminalreporter.write_line(f"largest {what} difference: {value:.3g} ({where})")


@pytest.fixture(autouse=True)
def _seed() -> None:
    """The same random weights and inputs on every run, and for every test on its own."""
    torch.manual_seed(0)


def config_options(**overrides: object) -> dict[str, object]:
    """A tiny ViTMAE: 24x24 images of 3 channels in 4x4 patches (36 of them, 60% hidden), an
    encoder of hidden 36 in 3 heads of 12, 2 layers, MLP 52; a decoder of hidden 20 in 2 heads
    of 10, 2 layers, MLP 28."""
    options: dict[str, object] = {
        "image_size": IMAGE,
        "patch_size": PATCH,
        "num_channels": CHANNELS,
        "hidden_size": 36,
        "num_attention_heads": 3,
        "num_hidden_layers": 2,
        "intermediate_size": 52,
        "decoder_hidden_size": 20,
        "decoder_num_attention_heads": 2,
        "decoder_num_hidden_layers": 2,
        "decoder_intermediate_size": 28,
        "mask_ratio": 0.6,
    }
    options.update(overrides)
    return options


@pytest.fixture
def make_config() -> Callable[..., ours.ViTMAEConfig]:
    """``make_config(**overrides)``: our tiny ViTMAEConfig."""
    return lambda **overrides: ours.ViTMAEConfig(**config_options(**overrides))


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter: norm weights ~ N(1, 0.2), everything else ~ N(0, 0.2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            is_norm_weight = "norm" in name.lower() and name.endswith("weight")
            parameter.copy_(noise + 1.0 if is_norm_weight else noise)
    return model


@pytest.fixture
def randomized() -> Callable[[torch.nn.Module, int], torch.nn.Module]:
    """``randomized(model, seed)``: see :func:`randomize`."""
    return randomize


@dataclass
class Pair:
    """The same weights twice: transformers' model and ours, loaded from ``directory``."""

    theirs: torch.nn.Module
    ours: torch.nn.Module
    directory: Path


@pytest.fixture
def make_theirs() -> Callable[..., torch.nn.Module]:
    """``make_theirs(kind="pretraining", seed=0, attn_implementation=None, **overrides)``: a
    transformers ViTMAE (``kind`` in pretraining / base) with random weights, in eval mode."""

    def make(
        kind: str = "pretraining",
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> torch.nn.Module:
        config = transformers.ViTMAEConfig(**config_options(**overrides))
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        return randomize(CLASSES[kind][0](config), seed).eval()

    return make


@pytest.fixture
def make_pair(
    make_theirs: Callable[..., torch.nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Pair]:
    """``make_pair(kind="pretraining", seed=0, attn_implementation=None, **overrides)``: a
    transformers model saved with ``save_pretrained`` and loaded back into our class."""

    def make(
        kind: str = "pretraining",
        seed: int = 0,
        attn_implementation: str | None = None,
        **overrides: object,
    ) -> Pair:
        theirs = make_theirs(kind, seed, attn_implementation, **overrides)
        directory = tmp_path_factory.mktemp(f"transformers-vitmae-{kind}")
        theirs.save_pretrained(directory)
        our_class = CLASSES[kind][1]
        kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        loaded = our_class.from_pretrained(directory, **kwargs)
        assert type(loaded) is our_class
        return Pair(theirs, loaded.eval(), directory)

    return make


def random_images(
    batch: int = BATCH, height: int = IMAGE, width: int | None = None, seed: int = 1
) -> torch.Tensor:
    """``(batch, 3, height, width)`` pixel values ~ N(0, 1), as a normalising processor
    gives them."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, CHANNELS, height, width or height), generator=generator)


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    """``images(batch=3, height=24, width=height, seed=1)``: see :func:`random_images`."""
    return random_images


@pytest.fixture
def noise() -> Callable[..., torch.Tensor]:
    """``noise(batch=3, patches=36, seed=2)``: uniform noise that fixes which patches are kept."""

    def make(batch: int = BATCH, patches: int = PATCHES, seed: int = 2) -> torch.Tensor:
        return torch.rand((batch, patches), generator=torch.Generator().manual_seed(seed))

    return make


@pytest.fixture
def assert_matches(request: pytest.FixtureRequest) -> Callable[..., float]:
    """``assert_matches(ours, theirs, what="logit")``: max abs difference at most 1e-4 (and
    not between degenerate tensors). Returns it, and keeps the largest of the session for the
    terminal summary."""

    def check(actual: torch.Tensor, expected: torch.Tensor, what: str = "logit") -> float:
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        actual, expected = actual.detach().float(), expected.detach().float()
        assert actual.numel() > 0
        assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
        assert actual.numel() == 1 or float(expected.std()) > 1e-3, f"degenerate {what}s"
        difference = float((actual - expected).abs().max())
        if difference > _LARGEST.get(what, (-1.0, ""))[0]:
            _LARGEST[what] = (difference, request.node.name)
        assert difference <= TOLERANCE, f"max abs {what} difference {difference:.3g}"
        return difference

    return check
