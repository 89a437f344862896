"""Parity with transformers' own ViT classes holding the same weights, fp32, within 1e-4: the
last hidden state and the pooled output, the classifier's logits and the loss of each problem
type, images of another size with interpolate_pos_encoding, hidden states and eager attention
probabilities, and an attention mask (20x20 images in 4x4 patches, hidden 36, 3 heads, 3
layers, 5 labels, batch 3)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def test_bare_model_hidden_state_and_pooler_output(
    make_pair: Callable, images: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("base")
    pixels = images()
    with torch.no_grad():
        got, expected = pair.ours(pixels), pair.theirs(pixels)
    assert got.last_hidden_state.shape == (3, 26, 36)  # the class token and 25 patches
    assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")
    assert_matches(got.pooler_output, expected.pooler_output, what="pooler output")


def test_classifier_logits(make_pair: Callable, images: Callable, assert_matches: Callable) -> None:
    pair = make_pair("cls")
    pixels = images()
    with torch.no_grad():
        assert_matches(pair.ours(pixels).logits, pair.theirs(pixels).logits)


@pytest.mark.parametrize(("height", "width"), [(28, 28), (28, 24), (12, 16)])
def test_other_image_sizes_with_interpolated_positions(
    make_pair: Callable,
    images: Callable,
    assert_matches: Callable,
    height: int,
    width: int,
) -> None:
    """Larger, non-square and smaller images on the 20x20 config: the resized position grid
    gives transformers' numbers."""
    pair = make_pair("base")
    pixels = images(height=height, width=width)
    with torch.no_grad():
        got = pair.ours(pixels, interpolate_pos_encoding=True)
        expected = pair.theirs(pixels, interpolate_pos_encoding=True)
    assert got.last_hidden_state.shape[1] == 1 + (height // 4) * (width // 4)
    assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")
    assert_matches(got.pooler_output, expected.pooler_output, what="pooler output")


def test_interpolation_at_the_configured_size_changes_nothing(
    make_pair: Callable, images: Callable
) -> None:
    pair = make_pair("cls")
    pixels = images()
    with torch.no_grad():
        plain = pair.ours(pixels).logits
        interpolated = pair.ours(pixels, interpolate_pos_encoding=True).logits
    assert torch.equal(plain, interpolated)


def _labels(problem_type: str, batch: int, num_labels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    if problem_type == "regression":
        return torch.randn((batch, num_labels), generator=generator).squeeze(-1)
    if problem_type == "single_label_classification":
        return torch.randint(0, num_labels, (batch,), generator=generator)
    return torch.randint(0, 2, (batch, num_labels), generator=generator).float()


@pytest.mark.parametrize(
    ("problem_type", "num_labels"),
    [
        ("regression", 1),
        ("single_label_classification", 5),
        ("multi_label_classification", 5),
    ],
)
def test_losses_as_transformers_infers_and_computes_them(
    make_pair: Callable,
    images: Callable,
    assert_matches: Callable,
    problem_type: str,
    num_labels: int,
) -> None:
    """problem_type left unset: inferred from num_labels and the labels' dtype, as there."""
    pair = make_pair("cls", num_labels=num_labels)
    pixels = images()
    labels = _labels(problem_type, len(pixels), num_labels)
    with torch.no_grad():
        got = pair.ours(pixels, labels=labels)
        expected = pair.theirs(pixels, labels=labels)
    assert pair.ours.config.problem_type == pair.theirs.config.problem_type == problem_type
    assert_matches(got.logits, expected.logits)
    assert float(got.loss) > 0
    assert abs(float(got.loss) - float(expected.loss)) <= 1e-5, (got.loss, expected.loss)


def test_hidden_states_and_eager_attentions(
    make_pair: Callable, images: Callable, assert_matches: Callable
) -> None:
    pair = make_pair("cls", attn_implementation="eager")
    pixels = images()
    with torch.no_grad():
        got = pair.ours(pixels, output_attentions=True, output_hidden_states=True)
        expected = pair.theirs(pixels, output_attentions=True, output_hidden_states=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4  # embeddings + 3 layers
    for mine, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_matches(mine, theirs, what="hidden state")
    assert len(got.attentions) == len(expected.attentions) == 3
    for mine, theirs in zip(got.attentions, expected.attentions, strict=True):
        assert mine.shape == (3, 3, 26, 26)
        assert_matches(mine, theirs, what="attention probability")
    assert_matches(got.logits, expected.logits)


def test_an_attention_mask_hides_the_same_tokens(
    make_pair: Callable, images: Callable, assert_matches: Callable
) -> None:
    """transformers' ViT takes a (batch, tokens) mask over the class token and patches."""
    pair = make_pair("base")
    pixels = images()
    mask = torch.ones(3, 26, dtype=torch.long)
    mask[0, 5:9] = 0
    mask[2, -7:] = 0
    with torch.no_grad():
        got = pair.ours(pixels, attention_mask=mask)
        expected = pair.theirs(pixels, attention_mask=mask)
        unmasked = pair.ours(pixels).pooler_output
    assert_matches(got.pooler_output, expected.pooler_output, what="pooler output")
    changed = (got.pooler_output - unmasked).abs().amax(dim=-1)
    assert changed[0] > 1e-3 and changed[2] > 1e-3 and changed[1] <= 1e-6, changed


def test_attentions_from_sdpa_ask_for_eager(make_pair: Callable, images: Callable) -> None:
    pair = make_pair("base")
    with pytest.raises(ValueError, match="eager"):
        pair.ours(images(), output_attentions=True)


def test_return_dict_false_gives_tuples(make_pair: Callable, images: Callable) -> None:
    pair = make_pair("cls")
    pixels, labels = images(), torch.tensor([0, 4, 2])
    with torch.no_grad():
        as_tuple = pair.ours(pixels, labels=labels, return_dict=False)
        as_output = pair.ours(pixels, labels=labels)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_output.loss) and torch.equal(as_tuple[1], as_output.logits)
