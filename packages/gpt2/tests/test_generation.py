"""generate() against transformers' GPT-2 on the same weights: greedy, beam search and seeded
sampling give the same tokens, for one prompt and for a left-padded batch; the KV cache, the
static cache and batching change nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchformers.core_attention.testing import (
    assert_batch_equals_each_prompt,
    assert_cache_changes_nothing,
    assert_cached_logits_match_full_forward,
    assert_lean_decoding_matches,
    assert_static_cache_matches_dynamic,
)

NEW = 8
PAD = 0
EOS = 1
GREEDY = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD}
LENGTHS = (9, 4, 1, 6)


@pytest.fixture
def pair(make_pair: Callable):
    return make_pair(n_layer=3)


def generate_both(pair, input_ids: torch.Tensor, mask: torch.Tensor | None, **options: object):
    ours = pair.ours.generate(input_ids, attention_mask=mask, **options)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    return ours, theirs


def assert_varied(output: torch.Tensor, prompt_width: int) -> None:
    """Untrained but not degenerate: the generated tokens are not one repeated id."""
    assert output.shape[1] == prompt_width + NEW
    assert len(set(output[:, prompt_width:].flatten().tolist())) > 2


def test_greedy_single_prompt(pair) -> None:
    prompt = torch.randint(2, 101, (1, 7))
    ours, theirs = generate_both(pair, prompt, None, **GREEDY)
    assert torch.equal(ours[:, :7], prompt)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert_varied(ours, 7)


def test_greedy_left_padded_batch(pair, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch(LENGTHS)
    ours, theirs = generate_both(pair, input_ids, mask, **GREEDY)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert_varied(ours, input_ids.shape[1])


def test_greedy_tokens_are_the_argmax_of_a_full_forward(pair, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch(LENGTHS)
    output = pair.ours.generate(input_ids, attention_mask=mask, **GREEDY)
    width = input_ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(len(LENGTHS), NEW, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = pair.ours(output, attention_mask=full_mask, use_cache=False).logits
    logits[..., EOS] = -torch.inf  # min_new_tokens keeps generate() from picking EOS
    assert torch.equal(logits[:, width - 1 : -1].argmax(-1), output[:, width:])


def test_greedy_batch_rows_equal_each_prompt_alone(pair, padded_batch: Callable) -> None:
    input_ids, mask, rows = padded_batch(LENGTHS)
    assert_batch_equals_each_prompt(pair.ours, input_ids, mask, rows, **GREEDY)


def test_cache_changes_nothing(pair, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch(LENGTHS)
    assert_cache_changes_nothing(pair.ours, input_ids, mask, **GREEDY)


def test_cached_logits_equal_a_full_forward(pair, padded_batch: Callable) -> None:
    """Step by step through the cache, with the mask growing, the logits of each new token are
    those of a forward over the whole sequence."""
    input_ids, mask, _ = padded_batch((7, 3))
    extra = torch.randint(2, 101, (2, 4))
    assert_cached_logits_match_full_forward(pair.ours, input_ids, mask, extra)


def test_static_cache_equals_dynamic_and_transformers(pair, padded_batch: Callable) -> None:
    """transformers' loop with a static cache, and the lean loop, against transformers' GPT-2."""
    input_ids, mask, _ = padded_batch(LENGTHS)
    assert_static_cache_matches_dynamic(pair.ours, input_ids, mask, **GREEDY)
    assert_lean_decoding_matches(pair.ours, pair.theirs, input_ids, mask, **GREEDY)


def test_beam_search(pair, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch((7, 3))
    options = {
        **GREEDY,
        "num_beams": 3,
        "num_return_sequences": 2,
        "output_scores": True,
        "return_dict_in_generate": True,
    }
    ours, theirs = generate_both(pair, input_ids, mask, **options)
    assert torch.equal(ours.sequences, theirs.sequences), (ours.sequences, theirs.sequences)
    torch.testing.assert_close(ours.sequences_scores, theirs.sequences_scores, atol=1e-4, rtol=0)
    assert ours.sequences.shape == (4, input_ids.shape[1] + NEW)
    # The two returned beams of each prompt differ.
    assert not torch.equal(ours.sequences[0], ours.sequences[1])


@pytest.mark.parametrize("seed", [0, 7])
def test_seeded_sampling(pair, padded_batch: Callable, seed: int) -> None:
    input_ids, mask, _ = padded_batch(LENGTHS)
    options = {**GREEDY, "do_sample": True, "top_k": 20}
    torch.manual_seed(seed)
    ours = pair.ours.generate(input_ids, attention_mask=mask, **options)
    torch.manual_seed(seed)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours, theirs), (ours, theirs)
    greedy = pair.ours.generate(input_ids, attention_mask=mask, **GREEDY)
    assert not torch.equal(ours, greedy)
    torch.manual_seed(seed + 1)
    other = pair.ours.generate(input_ids, attention_mask=mask, **options)
    assert not torch.equal(ours, other)
