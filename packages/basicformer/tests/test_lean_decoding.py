"""Lean decoding for ``BasicFormerForCausalLM``: ``generate(..., cache_implementation="static")``
runs ``scratchformers.core_attention.decoding.lean_sample`` and gives exactly the tokens of
transformers' ``LlamaForCausalLM`` with the same weights (rotary, grouped-query attention, left
padding), greedy and sampled, with EOS, and compiled; for every position scheme (learned
positions as in GPT-2 included) it gives the tokens of BasicFormer's own dynamic-cache
``generate()``, which is transformers' ``_sample``.

Spies on ``lean_sample`` and ``GenerationMixin._sample`` check which loop ran, so a lean path
that was silently bypassed fails.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
import transformers
from torch._dynamo.utils import counters
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM
from transformers.generation.utils import GenerateDecoderOnlyOutput

from scratchformers.basicformer import BasicFormerConfig, BasicFormerForCausalLM
from scratchformers.basicformer.llama import basicformer_state_from_llama, config_from_llama
from scratchformers.core_attention import decoding

VOCAB = 97
PAD = 0
NEW = 7
LENGTHS = (8, 3, 5)  # rows 1 and 2 are left-padded
GREEDY = {"max_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD, "eos_token_id": None}
SAMPLING = {**GREEDY, "do_sample": True, "top_k": 5, "temperature": 0.7}
STATIC = {"cache_implementation": "static"}
LEAN = {"lean": 1, "sample": 0}
TRANSFORMERS_SAMPLE = {"lean": 0, "sample": 1}


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


def left_padded(lengths: tuple[int, ...] = LENGTHS, seed: int = 1):
    """Left-padded prompts (pad 0, ids 5..96) and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        input_ids[i, width - n :] = torch.randint(5, VOCAB, (n,), generator=generator)
        mask[i, width - n :] = 1
    assert bool((mask[:, 0] == 0).any()), "some rows must start with padding"
    return input_ids, mask


@contextmanager
def spy_decoding() -> Iterator[dict[str, int]]:
    """Counts calls of ``lean_sample`` (looked up by generate() in its module at call time) and
    of transformers' ``GenerationMixin._sample`` (also what ``lean_sample`` falls back to)."""
    calls = {"lean": 0, "sample": 0}

    def counted(name: str, function: Callable) -> Callable:
        @functools.wraps(function)  # keeps the signature generate() inspects
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    with (
        mock.patch.object(decoding, "lean_sample", counted("lean", decoding.lean_sample)),
        mock.patch.object(GenerationMixin, "_sample", counted("sample", GenerationMixin._sample)),
    ):
        yield calls


def lean_generate(model, input_ids, mask, **options):
    """``model.generate`` with a static cache, asserting that the lean loop (and only it) ran."""
    with spy_decoding() as calls:
        output = model.generate(input_ids, attention_mask=mask, **STATIC, **options)
    assert calls == LEAN, calls
    return output


def test_greedy_static_equals_llama(pair) -> None:
    theirs, ours = pair
    input_ids, mask = left_padded()
    ours_static = lean_generate(ours, input_ids, mask, **GREEDY)
    theirs_dynamic = theirs.generate(input_ids, attention_mask=mask, **GREEDY)
    theirs_static = theirs.generate(input_ids, attention_mask=mask, **STATIC, **GREEDY)
    with spy_decoding() as calls:
        ours_dynamic = ours.generate(input_ids, attention_mask=mask, **GREEDY)
    assert calls == TRANSFORMERS_SAMPLE, calls

    width = input_ids.shape[1]
    assert ours_static.shape == (3, width + NEW)
    assert torch.equal(ours_static, theirs_dynamic), (ours_static, theirs_dynamic)
    assert torch.equal(ours_static, theirs_static), (ours_static, theirs_static)
    assert torch.equal(ours_static, ours_dynamic), (ours_static, ours_dynamic)
    assert len(set(ours_static[:, width:].flatten().tolist())) > 3  # not degenerate


@pytest.mark.parametrize("seed", [0, 5])
def test_seeded_sampling_static_equals_llama(pair, seed: int) -> None:
    theirs, ours = pair
    input_ids, mask = left_padded()
    torch.manual_seed(seed)
    ours_sampled = lean_generate(ours, input_ids, mask, **SAMPLING)
    torch.manual_seed(seed)
    theirs_sampled = theirs.generate(input_ids, attention_mask=mask, **SAMPLING)
    assert torch.equal(ours_sampled, theirs_sampled), (ours_sampled, theirs_sampled)
    greedy = lean_generate(ours, input_ids, mask, **GREEDY)
    assert not torch.equal(ours_sampled, greedy)  # the sampling really sampled


def test_eos_and_min_new_tokens_equal_llama(pair) -> None:
    theirs, ours = pair
    input_ids, mask = left_padded()
    width = input_ids.shape[1]
    free = lean_generate(ours, input_ids, mask, **GREEDY)

    # Row 0's 2nd token as EOS: row 0 is padded after it, the others go on.
    eos = int(free[0, width + 1])
    assert eos != PAD
    options = {**GREEDY, "eos_token_id": eos}
    ours_eos = lean_generate(ours, input_ids, mask, **options)
    theirs_eos = theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours_eos, theirs_eos), (ours_eos, theirs_eos)
    stop = int((ours_eos[0, width:] == eos).nonzero()[0])
    assert stop <= 1 and bool((ours_eos[0, width + stop + 1 :] == PAD).all())
    assert ours_eos.shape[1] > width + stop + 2

    # Every row's 2nd token is an EOS: generation ends as soon as all rows have finished.
    eos_ids = sorted({int(token) for token in free[:, width + 1]} - {PAD})
    options = {**GREEDY, "eos_token_id": eos_ids}
    ours_all = lean_generate(ours, input_ids, mask, **options)
    theirs_all = theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours_all, theirs_all), (ours_all, theirs_all)
    assert ours_all.shape[1] <= width + 2

    # min_new_tokens holds the EOS back; max_length in place of max_new_tokens.
    options = {**GREEDY, "eos_token_id": eos_ids, "min_new_tokens": 3, "max_new_tokens": None}
    options["max_length"] = width + 6
    ours_min = lean_generate(ours, input_ids, mask, **options)
    theirs_min = theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours_min, theirs_min), (ours_min, theirs_min)
    assert not set(eos_ids) & set(ours_min[:, width : width + 3].flatten().tolist())
    assert ours_min.shape[1] > width + 2


def test_beam_search_and_dict_outputs_are_transformers(pair) -> None:
    theirs, ours = pair
    input_ids, mask = left_padded()
    options = {**STATIC, **GREEDY, "num_beams": 3}
    with spy_decoding() as calls:
        ours_beams = ours.generate(input_ids, attention_mask=mask, **options)
    assert calls == {"lean": 0, "sample": 0}, calls
    theirs_beams = theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours_beams, theirs_beams), (ours_beams, theirs_beams)

    options = {**STATIC, **GREEDY, "return_dict_in_generate": True, "output_scores": True}
    with spy_decoding() as calls:
        ours_dict = ours.generate(input_ids, attention_mask=mask, **options)
    assert calls == TRANSFORMERS_SAMPLE, calls
    theirs_dict = theirs.generate(input_ids, attention_mask=mask, **options)
    assert isinstance(ours_dict, GenerateDecoderOnlyOutput) and len(ours_dict.scores) == NEW
    assert torch.equal(ours_dict.sequences, theirs_dict.sequences)


def test_position_schemes_static_lean_equals_own_dynamic(position_type: str) -> None:
    """Greedy and sampled, the lean loop gives the tokens of transformers' ``_sample`` on the
    same model: learned positions (GPT-2 shaped), none, sinusoidal and rotary."""
    model = basicformer(position_type)
    input_ids, mask = left_padded()
    for options in (GREEDY, SAMPLING):
        torch.manual_seed(3)
        lean = lean_generate(model, input_ids, mask, **options)
        torch.manual_seed(3)
        with spy_decoding() as calls:
            reference = model.generate(input_ids, attention_mask=mask, **options)
        assert calls == TRANSFORMERS_SAMPLE, calls
        assert torch.equal(lean, reference), (options, lean, reference)
        assert len(set(lean[:, input_ids.shape[1] :].flatten().tolist())) > 2


def test_compiled_step_equals_llama_and_is_reused(pair) -> None:
    """One compile (fullgraph; rotary and GQA inside the graph), then a second call with new
    prompt contents of the same shapes runs the same compiled step without recompiling."""
    theirs, ours = pair
    torch._dynamo.reset()
    input_ids, mask = left_padded((6, 3))
    options = {**GREEDY, "compile_config": transformers.CompileConfig(fullgraph=True)}
    graphs = counters["stats"]["unique_graphs"]
    compiled = lean_generate(ours, input_ids, mask, **options)
    expected = theirs.generate(input_ids, attention_mask=mask, **GREEDY)
    assert torch.equal(compiled, expected), (compiled, expected)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    steps = dict(ours.__dict__["_lean_compiled_steps"])
    assert len(steps) == 1

    other_ids = torch.where(mask.bool(), torch.randint(5, VOCAB, input_ids.shape), input_ids)
    assert not torch.equal(other_ids, input_ids)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = lean_generate(ours, other_ids, mask, **options)
    expected = theirs.generate(other_ids, attention_mask=mask, **GREEDY)
    assert torch.equal(compiled, expected), (compiled, expected)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert ours.__dict__["_lean_compiled_steps"] == steps
