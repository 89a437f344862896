"""Lean decoding: ``generate(..., cache_implementation="static")`` runs
``scratchformers.core_attention.decoding.lean_sample`` and gives exactly the tokens of
transformers' own GPT-2 with the same weights: greedy, seeded sampling, EOS with padding of
finished rows, ``min_new_tokens``, ``max_length``, and a compiled decode step. Requests it does
not cover (beam search, dict outputs, a streamer) go through transformers unchanged.

The contract is ``scratchformers.core_attention.testing``'s; every check spies on which
decoding loop ran, so a lean path that was silently bypassed fails.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scratchformers.core_attention.testing import (
    assert_lean_compiled_step,
    assert_lean_decoding_matches,
    assert_lean_routing,
    assert_lean_stopping_matches,
    left_padded_batch,
)

VOCAB = 97
SIZES = {"vocab_size": VOCAB, "n_embd": 40, "n_head": 5, "n_layer": 3}
GREEDY = {"max_new_tokens": 7, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
SAMPLING = {**GREEDY, "do_sample": True, "top_k": 5, "temperature": 0.7}
# name: (prompt lengths, mask, options); rows 1 and 2 of (9, 4, 6) are left-padded.
REQUESTS = {
    "greedy-left-padded": ((9, 4, 6), "mask", GREEDY),
    "greedy-unpadded-batch": ((5, 5), "mask", GREEDY),
    "greedy-single-prompt": ((5,), None, GREEDY),
    "greedy-static-cache-passed-in": ((9, 4, 6), "mask", {**GREEDY, "pass_cache": True}),
    "sampling-seed-0": ((9, 4, 6), "mask", {**SAMPLING, "seed": 0}),
    "sampling-seed-5": ((9, 4, 6), "mask", {**SAMPLING, "seed": 5}),
}


@pytest.fixture
def pair(make_pair: Callable):
    """transformers' GPT-2 and ours with the same random weights: n_embd 40, 5 heads, 3 layers,
    vocab 97."""
    return make_pair(**SIZES)


def left_padded(lengths: tuple[int, ...] = (9, 4, 6)):
    input_ids, mask, _ = left_padded_batch(lengths, VOCAB)
    return input_ids, mask


@pytest.mark.parametrize("name", REQUESTS)
def test_lean_tokens_equal_transformers(pair, name: str) -> None:
    lengths, mask, options = REQUESTS[name]
    input_ids, attention_mask = left_padded(lengths)
    attention_mask = attention_mask if mask else None
    assert_lean_decoding_matches(pair.ours, pair.theirs, input_ids, attention_mask, **options)


def test_eos_min_new_tokens_and_max_length_equal_transformers(pair) -> None:
    assert_lean_stopping_matches(pair.ours, pair.theirs, *left_padded())


def test_lean_loop_is_taken_only_where_it_applies(pair) -> None:
    """Beams, dict outputs with scores and a streamer are transformers' and give its output."""
    assert_lean_routing(pair.ours, pair.theirs, *left_padded())


def test_compiled_step_equals_transformers_is_reused_and_per_model(make_pair: Callable) -> None:
    """One compile (fullgraph, inductor's C++ wrapper on the CPU), reused for new prompt
    contents; a second model is compiled too, not silently run eagerly once dynamo's
    recompile limit is spent."""
    first, second = make_pair(**SIZES, seed=1), make_pair(**SIZES, seed=2)
    input_ids, mask = left_padded((7, 4))
    other = (second.ours, second.theirs)
    assert_lean_compiled_step(first.ours, first.theirs, input_ids, mask, other=other)
