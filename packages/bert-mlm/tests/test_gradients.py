"""Training-side parity: the gradients of the MLM loss equal transformers', weight for weight
(through the checkpoint renames), and gradient checkpointing changes none of them."""

from __future__ import annotations

from collections.abc import Callable

import torch

from scratchformers.bert_mlm.convert import CONVERTER


def _mlm_loss(model: torch.nn.Module, padded_batch: Callable) -> torch.Tensor:
    input_ids, mask, types = padded_batch()
    labels = torch.full_like(input_ids, -100)
    labels[:, 0:9:2] = input_ids[:, 0:9:2]
    labels[mask == 0] = -100
    return model(input_ids, attention_mask=mask, token_type_ids=types, labels=labels).loss


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # remove_duplicate=False: a tied weight is listed under each of its names.
    named = model.named_parameters(remove_duplicate=False)
    return {name: p.grad.clone() for name, p in named if p.grad is not None}


def test_mlm_gradients_equal_transformers(make_pair: Callable, padded_batch: Callable) -> None:
    pair = make_pair("mlm")
    _mlm_loss(pair.ours, padded_batch).backward()
    _mlm_loss(pair.theirs, padded_batch).backward()
    ours = _gradients(pair.ours)
    theirs = CONVERTER.state_from_transformers(_gradients(pair.theirs))
    compared = 0
    for name, gradient in theirs.items():
        assert name in ours, name
        torch.testing.assert_close(ours[name], gradient, atol=1e-5, rtol=1e-4, msg=name)
        compared += 1
    assert (
        compared >= 40
        and float(ours["bert.encoder.layer.0.attention.q_proj.weight"].abs().max()) > 0
    )


def test_gradient_checkpointing_changes_no_gradient(
    make_pair: Callable, padded_batch: Callable
) -> None:
    pair = make_pair("mlm", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = pair.ours.train()
    _mlm_loss(model, padded_batch).backward()
    plain = _gradients(model)
    model.zero_grad()
    model.activation_checkpointing_enable()
    _mlm_loss(model, padded_batch).backward()
    for name, gradient in _gradients(model).items():
        torch.testing.assert_close(gradient, plain[name], atol=1e-6, rtol=1e-5, msg=name)
