"""The EncDec tests' set-up: tiny models of odd sizes, and the same weights in transformers' BART
or Marian and in ours.

Every comparison starts from a transformers model (``BartForConditionalGeneration`` or
``MarianMTModel``) whose biases, LayerNorms and output bias are re-drawn, so that a wrongly
mapped one cannot hide behind a zero or a one; the kit's ``build_pair`` saves it with
``save_pretrained`` and loads it into our class, through the real checkpoint conversion. The
kit's plugin gives the shared fixtures; test modules are imported with
``--import-mode=importlib`` and cannot import each other, so every shared helper is a fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

import scratchformers.encdec as ours
from scratchformers.core_attention.testing import PLUGIN, Pair, build_pair

pytest_plugins = [PLUGIN]

VOCAB = 113
FIRST_ID = 4  # source and target ids are drawn from FIRST_ID..VOCAB-1, never a special token

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


def redraw(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every bias and LayerNorm (the 1-D parameters) and a wide output bias, so that
    each one matters. The matrices keep their initialisation (``init_std`` 0.2): Marian's
    sinusoidal position table is a parameter that must stay sinusoidal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
        model.final_logits_bias.normal_(0.0, 0.5, generator=generator)
    return model


@dataclass
class Reference:
    """A transformers model of one family and ours, with the same weights saved in
    ``directory``."""

    family: str
    pair: Pair

    model = property(lambda self: self.pair.theirs)  # transformers' model
    directory = property(lambda self: self.pair.directory)
    pad = property(lambda self: self.model.config.pad_token_id)


def make_reference(family: str, directory: Path) -> Reference:
    config_class, model_class = THEIR_CLASSES[family]
    torch.manual_seed(1)  # the matrices' initialisation
    config = config_class(**SIZES, **FAMILIES[family])
    pair = build_pair(
        model_class, ours.EncDecForConditionalGeneration, config, directory, randomize=redraw
    )
    return Reference(family, pair)


@pytest.fixture(params=["bart", "marian"])
def reference(request: pytest.FixtureRequest, tmp_path: Path) -> Reference:
    """A tiny transformers BART or Marian with re-drawn weights, saved; both families in turn."""
    return make_reference(request.param, tmp_path / request.param)


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
        positions = torch.arange(input_ids.shape[1])
        attention_mask = (positions < torch.tensor(source_lengths)[:, None]).long()
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
    return lambda **overrides: ours.EncDecConfig(**{**SIZES, **overrides})


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
