"""Attention probabilities and hidden states as transformers returns them, and the gradients of
one backward pass equal transformers' for every parameter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchformers.gpt2.convert import CONVERTER


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_embd": 40, "n_head": 5, "scale_attn_by_inverse_layer_idx": True}],
    ids=["base", "odd-inverse-layer-idx"],
)
def test_eager_attentions_equal_transformers(
    make_pair: Callable,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
    overrides: dict,
) -> None:
    pair = make_pair(attn_implementation="eager", n_layer=3, **overrides)
    pair.ours.set_attn_implementation("eager")
    assert pair.theirs.config._attn_implementation == "eager"
    input_ids, mask, _ = padded_batch((13, 6, 2))
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, output_attentions=True).attentions
        expected = pair.theirs(
            input_ids,
            attention_mask=mask,
            position_ids=their_positions(mask),
            output_attentions=True,
        ).attentions
    heads = overrides.get("n_head", 3)
    assert len(got) == len(expected) == 3
    # Rows of real queries; padding keys get no weight from them.
    real = mask.bool()[:, None, :, None].expand(-1, heads, -1, input_ids.shape[1])
    for ours_layer, theirs_layer in zip(got, expected, strict=True):
        assert ours_layer.shape == (3, heads, 13, 13)
        assert_matches(ours_layer, theirs_layer, real, what="attention probability")
        padding_keys = (mask == 0)[:, None, None, :] & real
        assert float(ours_layer[padding_keys].abs().max()) == 0.0
        torch.testing.assert_close(
            ours_layer.sum(-1)[real[..., 0]], torch.ones(int(real[..., 0].sum()))
        )


def test_output_attentions_needs_eager(make_pair: Callable) -> None:
    pair = make_pair()
    with pytest.raises(ValueError, match=r"eager"):
        pair.ours(torch.randint(2, 101, (1, 5)), output_attentions=True)


def test_hidden_states_equal_transformers(
    make_pair: Callable, padded_batch: Callable, their_positions: Callable, assert_matches: Callable
) -> None:
    pair = make_pair(n_layer=3, n_embd=40, n_head=5)
    input_ids, mask, _ = padded_batch((11, 5, 8))
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, output_hidden_states=True)
        expected = pair.theirs(
            input_ids,
            attention_mask=mask,
            position_ids=their_positions(mask),
            output_hidden_states=True,
        )
    assert len(got.hidden_states) == len(expected.hidden_states) == 3 + 1
    for ours_layer, theirs_layer in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_matches(ours_layer, theirs_layer, mask, what="hidden state")
    # The layers differ from each other: no layer is returned twice.
    for a, b in zip(got.hidden_states, got.hidden_states[1:], strict=False):
        assert not torch.allclose(a[mask.bool()], b[mask.bool()])


@pytest.mark.parametrize("tie", [True, False])
def test_gradients_equal_transformers(
    make_pair: Callable, padded_batch: Callable, their_positions: Callable, tie: bool
) -> None:
    pair = make_pair(tie_word_embeddings=tie, n_layer=3, n_embd=40, n_head=5)
    input_ids, mask, _ = padded_batch((12, 7, 12))
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[torch.arange(3), mask.argmax(-1)] = -100  # predicted from padding: undefined
    pair.ours(input_ids, attention_mask=mask, labels=labels).loss.backward()
    pair.theirs(
        input_ids, attention_mask=mask, position_ids=their_positions(mask), labels=labels
    ).loss.backward()

    ours = {name: p.grad for name, p in pair.ours.named_parameters()}
    theirs = {name: p.grad for name, p in pair.theirs.named_parameters()}
    assert all(grad is not None for grad in ours.values())
    converted = CONVERTER.state_to_transformers(ours)
    assert converted.keys() == theirs.keys()
    for name, grad in theirs.items():
        assert float(grad.abs().max()) > 0, name
        torch.testing.assert_close(converted[name], grad, atol=1e-5, rtol=1e-4, msg=name)

    # Spelled out for three of them: the embedding, the final LayerNorm, and q inside c_attn.
    body = pair.ours.transformer
    torch.testing.assert_close(
        body.wte.weight.grad, pair.theirs.transformer.wte.weight.grad, atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        body.ln_f.weight.grad, pair.theirs.transformer.ln_f.weight.grad, atol=1e-5, rtol=1e-4
    )
    c_attn = pair.theirs.transformer.h[1].attn.c_attn.weight.grad
    torch.testing.assert_close(
        body.h[1].attn.q_proj.weight.grad.t(), c_attn[:, :40], atol=1e-5, rtol=1e-4
    )


def test_gradient_checkpointing_gives_the_same_gradients(
    make_pair: Callable, padded_batch: Callable
) -> None:
    pair = make_pair(n_layer=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = pair.ours
    input_ids, mask, _ = padded_batch((10, 10))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids, attention_mask=mask, labels=input_ids, use_cache=False).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    calls = []
    # Hooks of the block itself stay outside the checkpoint: count a module inside it.
    model.transformer.h[0].mlp.c_fc.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    plain = gradients()
    assert len(calls) == 1
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed = gradients()
    assert len(calls) == 3  # the checkpointed block ran again in the backward pass
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
