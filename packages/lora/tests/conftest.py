"""Shared set-up for the LoRA tests: tiny models of odd sizes with every base
weight re-drawn, padded batches, and the same adapter in peft and in ours.

The base weights are re-drawn by the kit's ``randomize`` (norm scales ~ N(1, 0.2), everything
else ~ N(0, 0.2)), so that no wrongly mapped weight hides behind a zero or a one; the kit's
plugin compares outputs with ``assert_matches`` (at most 1e-5 apart, fp32). The four models,
by ``kind``: ``hf-bert`` (transformers' BertForSequenceClassification),
``bert`` (scratchformers.bert_mlm's), ``gpt2`` (scratchformers.gpt2's GPT2LMHeadModel) and
``sequential`` (a plain torch stack of nn.Linear layers). Each comes with the LoRA settings
its tests use, one batch and the function that reads its output.

Test modules are imported with ``--import-mode=importlib`` and cannot import each other, so
every shared helper is a fixture here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import transformers
from torch import nn

import scratchformers.bert_mlm as bert_mlm
import scratchformers.gpt2 as gpt2
from scratchformers.core_attention.testing import PLUGIN, randomize, right_padded_batch

pytest_plugins = [PLUGIN]
transformers.logging.set_verbosity_error()

VOCAB = 97
LENGTHS = (11, 7, 4)  # a right-padded batch of three


def pytest_configure(config: pytest.Config) -> None:
    # peft asks transformers a deprecated question when it wraps a model; not ours to answer.
    config.addinivalue_line(
        "filterwarnings", "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
    )


@pytest.fixture
def match_tolerance() -> float:
    """LoRA against peft in fp32: the same matrices, added up in the same order."""
    return 1e-5


@pytest.fixture
def match_min_std() -> float:
    return 1e-2


def randomize_adapter(model: nn.Module, seed: int = 1, std: float = 0.3) -> nn.Module:
    """Re-draw the LoRA matrices and the copies of the modules to save (ours or peft's: both
    name them ``lora_A`` / ``lora_B`` / ``modules_to_save``), so that the adapter counts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


@dataclass
class Case:
    """A base model, the LoRA settings for it and how to run it on its batch."""

    kind: str
    base: nn.Module
    settings: dict[str, Any]  # LoraConfig fields, the same for ours and for peft's
    inputs: dict[str, torch.Tensor]
    mask: torch.Tensor | None = None  # real positions of a per-token output
    peft_settings: dict[str, Any] = field(default_factory=dict)  # peft-only extras

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.base)

    def output(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            if self.kind == "sequential":
                return model(self.inputs["x"])
            return model(**self.inputs).logits


def padded_ids(lengths: tuple[int, ...] = LENGTHS, seed: int = 2) -> dict[str, torch.Tensor]:
    ids, mask, _ = right_padded_batch(lengths, VOCAB, first_id=1, pad_token_id=0, seed=seed)
    return {"input_ids": ids, "attention_mask": mask}


BERT_SIZES = {
    "vocab_size": VOCAB,
    "hidden_size": 36,
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 52,
    "max_position_embeddings": 24,
    "num_labels": 3,
}


def make_case(kind: str) -> Case:
    if kind == "hf-bert":
        base = transformers.BertForSequenceClassification(transformers.BertConfig(**BERT_SIZES))
        settings = {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["query", "value"],
            # peft's sequence-classification adapters list both heads' names.
            "modules_to_save": ["classifier", "score"],
            "task_type": "SEQ_CLS",
        }
        return Case(kind, randomize(base).eval(), settings, padded_ids())
    if kind == "bert":
        base = bert_mlm.BertForSequenceClassification(bert_mlm.BertConfig(**BERT_SIZES))
        settings = {
            "r": 5,
            "lora_alpha": 7,
            "use_rslora": True,
            "target_modules": ["q_proj", "v_proj", "up_proj"],
            "modules_to_save": ["classifier", "score"],
        }
        return Case(kind, randomize(base).eval(), settings, padded_ids())
    if kind == "gpt2":
        config = gpt2.GPT2Config(
            n_embd=36, n_layer=2, n_head=3, vocab_size=VOCAB, n_positions=24, bos_token_id=1,
            eos_token_id=1, pad_token_id=0,
        )  # fmt: skip
        base = randomize(gpt2.GPT2LMHeadModel(config)).eval()
        settings = {
            "r": 3,
            "lora_alpha": 5,
            "lora_dropout": 0.1,  # eval mode: no effect
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
        }
        inputs = padded_ids()
        return Case(kind, base, settings, inputs, mask=inputs["attention_mask"])
    if kind == "sequential":
        base = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5), nn.Linear(5, 3))
        settings = {"r": 2, "lora_alpha": 3, "target_modules": ["0", "2"], "modules_to_save": ["3"]}
        x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
        return Case(kind, randomize(base).eval(), settings, {"x": x})
    raise ValueError(kind)


KINDS = ["hf-bert", "bert", "gpt2", "sequential"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``kind`` runs once for every model kind."""
    if "kind" in metafunc.fixturenames:
        metafunc.parametrize("kind", KINDS)


@pytest.fixture
def case() -> Callable[[str], Case]:
    """``case(kind)``: a fresh :class:`Case` for ``kind`` in hf-bert / bert / gpt2 / sequential."""
    return make_case


@pytest.fixture
def randomize_adapter_weights() -> Callable[..., nn.Module]:
    """``randomize_adapter_weights(model, seed=1)``: see :func:`randomize_adapter`."""
    return randomize_adapter
