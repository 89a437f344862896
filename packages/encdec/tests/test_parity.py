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
