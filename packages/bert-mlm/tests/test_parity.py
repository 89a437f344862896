"""Parity with transformers' own BERT classes holding the same weights, fp32, within 1e-4:
the last hidden state and the pooled output, the MLM logits and loss, the classification
logits and the loss of each problem type, hidden states and eager attention probabilities, on
right-padded batches with token type ids (hidden 36, 3 heads, 3 layers, 13 tokens, batch 4)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def test_bare_model_hidden_states_and_pooled_output(
    make_pair: Callable, padded_batch: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("base")
    input_ids, mask, types = padded_batch()
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, token_type_ids=types)
        expected = pair.theirs(input_ids, attention_mask=mask, token_type_ids=types)
    # Right padding: padded positions still attend to the real tokens, so they are defined too.
    assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")
    assert_matches(got.pooler_output, expected.pooler_output, what="pooled output")


def test_token_type_ids_default_to_zeros_and_matter(
    make_pair: Callable, padded_batch: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("base")
    input_ids, mask, types = padded_batch()
    with torch.no_grad():
        default = pair.ours(input_ids, attention_mask=mask).last_hidden_state
        zeros = pair.ours(input_ids, attention_mask=mask, token_type_ids=0 * types)
        typed = pair.ours(input_ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        theirs = pair.theirs(input_ids, attention_mask=mask).last_hidden_state
    assert torch.equal(default, zeros.last_hidden_state)
    assert float((default - typed).abs().max()) > 1e-2
    assert_matches(default, theirs, what="hidden state")


def test_masked_lm_logits_and_loss(
    make_pair: Callable, padded_batch: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("mlm")
    input_ids, mask, types = padded_batch()
    labels = torch.full_like(input_ids, -100)
    labels[:, 1:8:3] = input_ids[:, 1:8:3]  # a few masked positions per row, padding ignored
    labels[mask == 0] = -100
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, token_type_ids=types, labels=labels)
        expected = pair.theirs(input_ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert_matches(got.logits, expected.logits, what="MLM logit")
    assert abs(float(got.loss) - float(expected.loss)) <= 1e-5
    assert pair.ours.cls.decoder.weight is pair.ours.bert.embeddings.word_embeddings.weight


def test_untied_masked_lm(
    make_pair: Callable, padded_batch: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("mlm", tie_word_embeddings=False)
    assert pair.ours.cls.decoder.weight is not pair.ours.bert.embeddings.word_embeddings.weight
    input_ids, mask, types = padded_batch()
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, token_type_ids=types).logits
        expected = pair.theirs(input_ids, attention_mask=mask, token_type_ids=types).logits
    assert_matches(got, expected, what="MLM logit")


def _labels(problem_type: str, batch: int, num_labels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    if problem_type == "regression":
        return torch.randn((batch, num_labels), generator=generator).squeeze(-1)
    if problem_type == "single_label_classification":
        return torch.randint(0, num_labels, (batch,), generator=generator)
    return torch.randint(0, 2, (batch, num_labels), generator=generator).float()


# (problem_type, num_labels, left unset in the config so that it is inferred). Float labels
# with num_labels > 1 infer multi-label, so regression with 3 outputs is only run when set.
CLASSIFICATION_CASES = [
    pytest.param(problem_type, num_labels, inferred, id=f"{problem_type}-{num_labels}-{how}")
    for problem_type, num_labels in [
        ("regression", 1),
        ("regression", 3),
        ("single_label_classification", 4),
        ("multi_label_classification", 4),
    ]
    for inferred, how in [(False, "set"), (True, "inferred")]
    if not (inferred and problem_type == "regression" and num_labels > 1)
]


@pytest.mark.parametrize(("problem_type", "num_labels", "inferred"), CLASSIFICATION_CASES)
def test_sequence_classification_logits_and_losses(
    make_pair: Callable,
    padded_batch: Callable,
    assert_matches: Callable,
    problem_type: str,
    num_labels: int,
    inferred: bool,
) -> None:
    """Each problem type, set in the config or inferred from num_labels and the labels' dtype
    (multi-label is inferred from float labels with num_labels > 1)."""
    pair = make_pair("cls", num_labels=num_labels, problem_type=None if inferred else problem_type)
    input_ids, mask, types = padded_batch()
    labels = _labels(problem_type, len(input_ids), num_labels)
    with torch.no_grad():
        got = pair.ours(input_ids, attention_mask=mask, token_type_ids=types, labels=labels)
        expected = pair.theirs(input_ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert pair.ours.config.problem_type == pair.theirs.config.problem_type == problem_type
    assert_matches(got.logits, expected.logits, what="classification logit")
    assert float(got.loss) > 0
    assert abs(float(got.loss) - float(expected.loss)) <= 1e-5, (got.loss, expected.loss)


def test_hidden_states_and_eager_attentions(
    make_pair: Callable, padded_batch: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("mlm", attn_implementation="eager")
    input_ids, mask, types = padded_batch()
    inputs = {"attention_mask": mask, "token_type_ids": types}
    with torch.no_grad():
        got = pair.ours(input_ids, **inputs, output_attentions=True, output_hidden_states=True)
        expected = pair.theirs(
            input_ids, **inputs, output_attentions=True, output_hidden_states=True
        )
    assert len(got.hidden_states) == len(expected.hidden_states) == 4  # embeddings + 3 layers
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_matches(ours, theirs, what="hidden state")
    assert len(got.attentions) == len(expected.attentions) == 3
    for ours, theirs in zip(got.attentions, expected.attentions, strict=True):
        assert_matches(ours, theirs, what="attention probability")
        assert float(ours[mask[:, None, None, :].expand_as(ours) == 0].abs().max()) == 0.0
    assert_matches(got.logits, expected.logits, what="MLM logit")


def test_attentions_from_sdpa_ask_for_eager(make_pair: Callable, padded_batch: Callable) -> None:
    pair = make_pair("base")
    input_ids, mask, _ = padded_batch()
    with pytest.raises(ValueError, match="eager"):
        pair.ours(input_ids, attention_mask=mask, output_attentions=True)


def test_return_dict_false_gives_tuples(make_pair: Callable, padded_batch: Callable) -> None:
    pair = make_pair("cls")
    input_ids, mask, types = padded_batch()
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        as_tuple = pair.ours(
            input_ids, attention_mask=mask, token_type_ids=types, labels=labels, return_dict=False
        )
        as_output = pair.ours(input_ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_output.loss) and torch.equal(as_tuple[1], as_output.logits)


def test_right_padding_changes_no_real_token(make_pair: Callable, padded_batch: Callable) -> None:
    """Each row of the padded batch gets, on its tokens, what it gets alone and unpadded."""
    pair = make_pair("mlm")
    input_ids, mask, types = padded_batch()
    with torch.no_grad():
        batched = pair.ours(input_ids, attention_mask=mask, token_type_ids=types).logits
        for i, n in enumerate(mask.sum(-1).tolist()):
            alone = pair.ours(input_ids[i : i + 1, :n], token_type_ids=types[i : i + 1, :n])
            assert float((alone.logits[0] - batched[i, :n]).abs().max()) <= 1e-5
