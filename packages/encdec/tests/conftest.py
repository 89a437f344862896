"""Shared set-up for the EncDec tests: offline, seeded, tiny models with odd sizes, and the same
weights in transformers' BART or Marian and in ours.

Every comparison starts from a transformers model (``BartForConditionalGeneration`` or
``MarianMTModel``) whose parameters are all re-drawn, biases, LayerNorms and the output bias
included, so that a wrongly mapped bias cannot hide behind a zero or a one. It is saved with
``save_pretrained`` and loaded into our class with ``from_pretrained``: every parity test goes
through the real checkpoint conversion.

Test modules are imported with ``--import-mode=importlib`` and cannot import each other, so
every shared helper is a fixture here.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

import scratchformers.encdec as ours

torch.set_num_threads(2)

VOCAB = 113
FIRST_ID = 4  # source and target ids are drawn from FIRST_ID..VOCAB-1, never a special token
TOLERANCE = 1e-4

# The odd sizes of every parity test: d_model 36, 3 heads (head_dim 12), 2 + 3 layers.
SIZES = {
    "vocab_size": VOCAB,
    "d_model": 36,
    "encoder_layers": 2,
    "decoder_layers": 3,
    "encoder_attention_heads": 3,
    "decoder_attention_heads": 3,
    "encoder_ffn_dim": 44,
    "decoder_ffn_dim": 52,
    "max_position_embeddings": 40,
    "dropout": 0.0,
    "init_std": 0.2,  # wide, so that greedy decoding varies
}
# Each family's special tokens, as their checkpoints set them.
FAMILIES = {
    "bart": {
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
        "forced_eos_token_id": 2,
    },
    "marian": {
        "pad_token_id": 3,
        "eos_token_id": 0,
        "decoder_start_token_id": 3,
        "forced_eos_token_id": 0,
        "activation_function": "swish",
        "scale_embedding": True,
    },
}
THEIR_CLASSES = {
    "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration),
    "marian": (transformers.MarianConfig, transformers.MarianMTModel),
}

# The largest difference against transformers that any test measured, reported at the end.
_LARGEST: dict[str, tuple[float, str]] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, (value, where) in sorted(_LARGEST.items()):
        terminalreporter.write_line(
            f"largest {what} difference vs transformers: {value:.3g} ({where})"
        )


@pytest.fixture
def record_difference(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    def record(what: str, value: float) -> None:
        if value >= _LARGEST.get(what, (-1.0, ""))[0]:
            _LARGEST[what] = (value, request.node.name)

    return record


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _redraw(model: torch.nn.Module) -> None:
    """Non-zero biases, non-trivial LayerNorms and output bias, so that each one matters."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.2)
        model.final_logits_bias.normal_(0.0, 0.5)


@dataclass
class Reference:
    """A transformers model of one family, and the directory it was saved to."""

    family: str
    model: transformers.PreTrainedModel
    directory: Path

    @property
    def pad(self) -> int:
        return self.model.config.pad_token_id


@pytest.fixture(params=["bart", "marian"])
def reference(request: pytest.FixtureRequest, tmp_path: Path) -> Reference:
    """A tiny transformers BART or Marian with re-drawn weights, saved; both families in turn."""
    return make_reference(request.param, tmp_path / request.param)


def make_reference(family: str, directory: Path) -> Reference:
    config_class, model_class = THEIR_CLASSES[family]
    torch.manual_seed(1)
    model = model_class(config_class(**SIZES, **FAMILIES[family])).eval()
    _redraw(model)
    model.save_pretrained(directory)
    return Reference(family, model, directory)


@pytest.fixture
def make_reference_model() -> Callable[[str, Path], Reference]:
    return make_reference


@pytest.fixture
def batch() -> Callable[..., dict[str, torch.Tensor]]:
    """A right-padded source batch (as a tokenizer pads), with labels of other lengths."""

    def make(
        pad: int,
        source_lengths: tuple[int, ...] = (9, 4, 1),
        target_lengths: tuple[int, ...] | None = (5, 7, 2),
    ) -> dict[str, torch.Tensor]:
        rows = len(source_lengths)
        input_ids = torch.randint(FIRST_ID, VOCAB, (rows, max(source_lengths)))
        attention_mask = torch.zeros_like(input_ids)
        for row, length in enumerate(source_lengths):
            attention_mask[row, :length] = 1
        inputs = {
            "input_ids": input_ids.masked_fill(attention_mask == 0, pad),
            "attention_mask": attention_mask,
        }
        if target_lengths is not None:
            labels = torch.randint(FIRST_ID, VOCAB, (rows, max(target_lengths)))
            for row, length in enumerate(target_lengths):
                labels[row, length:] = -100
            inputs["labels"] = labels
        return inputs

    return make


@pytest.fixture
def tiny_config() -> Callable[..., ours.EncDecConfig]:
    """A from-scratch config of the parity sizes (defaults otherwise: BART's architecture)."""

    def make(**overrides: object) -> ours.EncDecConfig:
        return ours.EncDecConfig(**{**SIZES, **overrides})

    return make


@pytest.fixture
def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over ``VOCAB`` ids: BART's special tokens (<s> 0, <pad> 1,
    </s> 2, <unk> 3), then the words ``w4`` .. ``w112``; every text ends with </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {
        f"w{i}": i for i in range(FIRST_ID, VOCAB)
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 2)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )
