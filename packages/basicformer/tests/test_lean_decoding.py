"""Lean decoding for ``BasicFormerForCausalLM``: ``generate(..., cache_implementation="static")``
runs ``scratchformers.core_attention.decoding.lean_sample`` and gives exactly the tokens of
transformers' ``LlamaForCausalLM`` with the same weights (rotary, grouped-query attention, left
padding), greedy and sampled, with EOS, and compiled; for every position scheme (learned
positions as in GPT-2 included) it gives the tokens of BasicFormer's own dynamic-cache
``generate()``, which is transformers' ``_sample``.

The contract is ``scratchformers.core_attention.testing``'s; every check spies on which
decoding loop ran, so a lean path that was silently bypassed fails.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from scratchformers.basicformer import BasicFormerConfig, BasicFormerForCausalLM
from scratchformers.basicformer.llama import basicformer_state_from_llama, config_from_llama
from scratchformers.core_attention.testing import (
    assert_lean_compiled_step,
    assert_lean_decoding_matches,
    assert_lean_routing,
    assert_lean_stopping_matches,
    left_padded_batch,
)

VOCAB = 97
PAD = 0
GREEDY = {"max_new_tokens": 7, "do_sample": False, "pad_token_id": PAD, "eos_token_id": None}
SAMPLING = {**GREEDY, "do_sample": True, "top_k": 5, "temperature": 0.7}
# name: (prompt lengths, mask, options); rows 1 and 2 of (8, 3, 5) are left-padded.
REQUESTS = {
    "greedy-left-padded": ((8, 3, 5), "mask", GREEDY),
    "greedy-single-prompt": ((6,), None, GREEDY),
    "sampling-seed-0": ((8, 3, 5), "mask", {**SAMPLING, "seed": 0}),
    "sampling-seed-5": ((8, 3, 5), "mask", {**SAMPLING, "seed": 5}),
}


def llama_pair() -> tuple[LlamaForCausalLM, BasicFormerForCausalLM]:
    """A seeded Llama with odd sizes (hidden 40, 5 query heads of 8 sharing 1 key/value head,
    MLP 72, 3 layers, vocab 97) and ours with its weights, both in eval mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=40,
        num_attention_heads=5,
        num_key_value_heads=1,
        intermediate_size=72,
        num_hidden_layers=3,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        initializer_range=0.3,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    theirs = LlamaForCausalLM(config).eval()
    ours = BasicFormerForCausalLM(config_from_llama(theirs.config)).eval()
    ours.load_state_dict(basicformer_state_from_llama(theirs.state_dict()))  # strict
    return theirs, ours


@pytest.fixture
def pair() -> tuple[LlamaForCausalLM, BasicFormerForCausalLM]:
    return llama_pair()


def basicformer(position_type: str) -> BasicFormerForCausalLM:
    """A GPT-2-shaped BasicFormer (LayerNorm, plain GELU MLP, biases) with odd sizes and 5 query
    heads sharing 1 key/value head."""
    torch.manual_seed(0)
    config = BasicFormerConfig(
        vocab_size=VOCAB,
        hidden_size=40,
        num_hidden_layers=3,
        num_attention_heads=5,
        num_key_value_heads=1,
        max_position_embeddings=64,
        position_embedding_type=position_type,
        initializer_range=0.3,
    )
    return BasicFormerForCausalLM(config).eval()


def left_padded(lengths: tuple[int, ...] = (8, 3, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts (pad 0, ids 5..96) and their attention mask."""
    input_ids, mask, _ = left_padded_batch(lengths, VOCAB, first_id=5)
    return input_ids, mask


@pytest.mark.parametrize("name", REQUESTS)
def test_lean_tokens_equal_llama(pair, name: str) -> None:
    theirs, ours = pair
    lengths, mask, options = REQUESTS[name]
    input_ids, attention_mask = left_padded(lengths)
    attention_mask = attention_mask if mask else None
    assert_lean_decoding_matches(ours, theirs, input_ids, attention_mask, **options)


def test_eos_min_new_tokens_and_max_length_equal_llama(pair) -> None:
    theirs, ours = pair
    assert_lean_stopping_matches(ours, theirs, *left_padded())


def test_beam_search_dict_outputs_and_streamer_are_transformers(pair) -> None:
    theirs, ours = pair
    assert_lean_routing(ours, theirs, *left_padded())


@pytest.mark.parametrize("options", [GREEDY, {**SAMPLING, "seed": 3}], ids=["greedy", "sampling"])
def test_position_schemes_static_lean_equals_own_dynamic(position_type: str, options) -> None:
    """Learned positions (GPT-2 shaped), none, sinusoidal and rotary: the lean loop gives the
    tokens of transformers' ``_sample`` on the same model."""
    model = basicformer(position_type)
    assert_lean_decoding_matches(model, model, *left_padded(), **options)


def test_compiled_step_equals_llama_and_is_reused(pair) -> None:
    """One compile (fullgraph; rotary and GQA inside the graph), then a second call with new
    prompt contents of the same shapes runs the same compiled step without recompiling."""
    theirs, ours = pair
    assert_lean_compiled_step(ours, theirs, *left_padded((6, 3)))
