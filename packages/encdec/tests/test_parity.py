"""Same weights, same numbers: logits, loss and generated tokens equal transformers' BART and
Marian (each loaded from a directory their class wrote) on padded batches of odd sizes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchformers.core_attention.testing import assert_close_on_real_tokens
from scratchformers.encdec import EncDecForConditionalGeneration

TOLERANCE = 1e-4


def test_logits_and_loss_match_transformers(
    reference, batch: Callable, record_difference: Callable
) -> None:
    model = EncDecForConditionalGeneration.from_pretrained(reference.directory).eval()
    inputs = batch(reference.pad)
    real = inputs["labels"] != -100
    assert not real.all() and not inputs["attention_mask"].bool().all(), "pad both sides"
    with torch.no_grad():
        got = model(**inputs)
        expected = reference.model(**inputs)
    difference = assert_close_on_real_tokens(got.logits, expected.logits, real, atol=TOLERANCE)
    loss_difference = abs(float(got.loss) - float(expected.loss))
    record_difference(f"{reference.family} logit", difference)
    record_difference(f"{reference.family} loss", loss_difference)
    assert loss_difference <= TOLERANCE, loss_difference
    # The output bias was re-drawn: a model that dropped it would be far off.
    assert float(reference.model.final_logits_bias.abs().max()) > 0.5


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_generate_gives_transformers_tokens(reference, batch: Callable, num_beams: int) -> None:
    model = EncDecForConditionalGeneration.from_pretrained(reference.directory).eval()
    inputs = batch(reference.pad, source_lengths=(9, 5, 3, 7), target_lengths=None)
    options = {"max_new_tokens": 10, "num_beams": num_beams, "do_sample": False}
    got = model.generate(**inputs, **options)
    expected = reference.model.generate(**inputs, **options)
    assert torch.equal(got, expected), (got, expected)
    # Not vacuous: several tokens, and the rows differ (the output follows the source).
    assert got[:, 1:].unique().numel() >= 3 and not (got == got[0]).all(), got


def test_gradients_and_recorded_outputs_match_transformers(reference, batch: Callable) -> None:
    """A training step's gradients, and output_attentions / output_hidden_states with self
    and cross attention kept apart, equal transformers' (eager attention on both sides)."""
    model = EncDecForConditionalGeneration.from_pretrained(
        reference.directory, attn_implementation="eager"
    )
    theirs = type(reference.model).from_pretrained(reference.directory, attn_implementation="eager")
    inputs = batch(reference.pad)
    extra = {"output_attentions": True, "output_hidden_states": True}
    got, expected = model(**inputs, **extra), theirs(**inputs, **extra)
    got.loss.backward()
    expected.loss.backward()
    pairs = {
        "token embedding": (model.model.encoder.embed_tokens, theirs.model.shared),
        "decoder fc1": (model.model.decoder.layers[0].fc1, theirs.model.decoder.layers[0].fc1),
        "cross attention out": (
            model.model.decoder.layers[2].encoder_attn.o_proj,
            theirs.model.decoder.layers[2].encoder_attn.out_proj,
        ),
    }
    for what, (ours, their) in pairs.items():
        assert_close_on_real_tokens(ours.weight.grad, their.weight.grad, atol=TOLERANCE, what=what)
    for name in (
        "encoder_attentions",
        "decoder_attentions",
        "cross_attentions",
        "encoder_hidden_states",
        "decoder_hidden_states",
    ):
        ours_all, theirs_all = getattr(got, name), getattr(expected, name)
        assert len(ours_all) == len(theirs_all) > 1, name
        for ours_one, theirs_one in zip(ours_all, theirs_all, strict=True):
            assert_close_on_real_tokens(ours_one, theirs_one, atol=TOLERANCE, what=name)
    # Cross attention is (batch, heads, target, source): not the self attention's square.
    assert got.cross_attentions[0].shape[-2:] == (
        inputs["labels"].shape[1],
        inputs["input_ids"].shape[1],
    )
