"""Attention backends and training: every backend the core supports is reachable through
from_pretrained, eager gives sdpa's logits, the gradients of the classification loss equal
transformers' weight for weight, and gradient checkpointing changes none of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchformers.vit import ViTForImageClassification
from scratchformers.vit.convert import CONVERTER


@pytest.fixture
def our_directory(make_config: Callable, tmp_path: Path) -> Path:
    ViTForImageClassification(make_config(initializer_range=0.2)).save_pretrained(tmp_path)
    return tmp_path


def test_flex_attention_is_accepted_by_from_pretrained(our_directory: Path) -> None:
    loaded = ViTForImageClassification.from_pretrained(
        our_directory, attn_implementation="flex_attention"
    )
    assert loaded.config._attn_implementation == "flex_attention"
    assert {layer.attention.attn_implementation for layer in loaded.vit.layers} == {
        "flex_attention"
    }


def test_eager_gives_the_logits_of_sdpa(our_directory: Path, images: Callable) -> None:
    logits = {}
    for backend in ("sdpa", "eager"):
        model = ViTForImageClassification.from_pretrained(
            our_directory, attn_implementation=backend
        ).eval()
        with torch.no_grad():
            logits[backend] = model(images(), interpolate_pos_encoding=True).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)


def _loss(model: torch.nn.Module, images: Callable) -> torch.Tensor:
    return model(images(), labels=torch.tensor([1, 4, 0])).loss


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradients_equal_transformers(make_pair: Callable, images: Callable) -> None:
    pair = make_pair("cls")
    _loss(pair.ours, images).backward()
    _loss(pair.theirs, images).backward()
    ours = _gradients(pair.ours)
    theirs = CONVERTER.state_from_transformers(_gradients(pair.theirs))
    assert theirs.keys() == ours.keys()
    for name, gradient in theirs.items():
        torch.testing.assert_close(ours[name], gradient, atol=1e-5, rtol=1e-4, msg=name)
    for name in ("vit.embeddings.position_embeddings", "vit.layers.0.attention.q_proj.weight"):
        assert float(ours[name].abs().max()) > 0, name


def test_gradient_checkpointing_changes_no_gradient(make_pair: Callable, images: Callable) -> None:
    pair = make_pair("cls", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = pair.ours.train()
    _loss(model, images).backward()
    plain = _gradients(model)
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.vit.layers[0].gradient_checkpointing
    _loss(model, images).backward()
    checkpointed = _gradients(model)
    assert checkpointed.keys() == plain.keys()
    for name, gradient in checkpointed.items():
        torch.testing.assert_close(gradient, plain[name], atol=1e-6, rtol=1e-5, msg=name)
