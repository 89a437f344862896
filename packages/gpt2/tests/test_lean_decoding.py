"""Lean decoding: ``generate(..., cache_implementation="static")`` runs
``scratchformers.core_attention.decoding.lean_sample`` (through transformers' ``custom_generate``
hook) and gives exactly the tokens of transformers' own GPT-2 with the same weights: greedy,
seeded sampling, EOS with padding of finished rows, ``min_new_tokens``, ``max_length``, and a
compiled decode step. Requests it does not cover (beam search, dict outputs, a streamer) go
through transformers unchanged.

Every test checks which decoding loop ran (spies on ``lean_sample`` and on
``GenerationMixin._sample``), so a lean path that was silently bypassed fails.
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
from transformers import GenerationMixin, StaticCache
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from scratchformers.core_attention import decoding

VOCAB = 97
PAD = 0
NEW = 7
SIZES = {"vocab_size": VOCAB, "n_embd": 40, "n_head": 5, "n_layer": 3}
LENGTHS = (9, 4, 6)  # rows 1 and 2 are left-padded
GREEDY = {"max_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD, "eos_token_id": None}
STATIC = {"cache_implementation": "static"}
SAMPLING = {**GREEDY, "do_sample": True, "top_k": 5, "temperature": 0.7}


@pytest.fixture
def pair(make_pair: Callable):
    """transformers' GPT-2 and ours with the same random weights: n_embd 40, 5 heads, 3 layers,
    vocab 97."""
    return make_pair(**SIZES)


def left_padded(lengths: tuple[int, ...] = LENGTHS, seed: int = 1):
    """Left-padded prompts (pad 0, ids 2..96) and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        input_ids[i, width - n :] = torch.randint(2, VOCAB, (n,), generator=generator)
        mask[i, width - n :] = 1
    assert bool((mask[:, 0] == 0).any()), "some rows must start with padding"
    return input_ids, mask


@contextmanager
def spy_decoding() -> Iterator[dict[str, int]]:
    """Counts calls of ``lean_sample`` (looked up by generate() in its module at call time),
    of transformers' ``GenerationMixin._sample`` (greedy/sampling loop, also what
    ``lean_sample`` falls back to) and of ``_beam_search``."""
    calls = {"lean": 0, "sample": 0, "beam": 0}

    def counted(name: str, function: Callable) -> Callable:
        @functools.wraps(function)  # keeps the signature generate() inspects
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    with (
        mock.patch.object(decoding, "lean_sample", counted("lean", decoding.lean_sample)),
        mock.patch.object(GenerationMixin, "_sample", counted("sample", GenerationMixin._sample)),
        mock.patch.object(
            GenerationMixin, "_beam_search", counted("beam", GenerationMixin._beam_search)
        ),
    ):
        yield calls


LEAN = {"lean": 1, "sample": 0, "beam": 0}
TRANSFORMERS_SAMPLE = {"lean": 0, "sample": 1, "beam": 0}


def lean_generate(model, input_ids, mask, **options):
    """``model.generate`` with a static cache, asserting that the lean loop (and only it) ran."""
    with spy_decoding() as calls:
        output = model.generate(input_ids, attention_mask=mask, **STATIC, **options)
    assert calls == LEAN, calls
    return output


def assert_varied(output: torch.Tensor, width: int) -> None:
    assert len(set(output[:, width:].flatten().tolist())) > 2, output


def test_greedy_static_equals_transformers_dynamic_and_static(pair) -> None:
    input_ids, mask = left_padded()
    ours_static = lean_generate(pair.ours, input_ids, mask, **GREEDY)
    with spy_decoding() as calls:
        ours_dynamic = pair.ours.generate(input_ids, attention_mask=mask, **GREEDY)
    assert calls == TRANSFORMERS_SAMPLE, calls
    theirs_dynamic = pair.theirs.generate(input_ids, attention_mask=mask, **GREEDY)
    theirs_static = pair.theirs.generate(input_ids, attention_mask=mask, **STATIC, **GREEDY)

    width = input_ids.shape[1]
    assert ours_static.shape == (3, width + NEW)
    assert torch.equal(ours_static[:, :width], input_ids)
    assert torch.equal(ours_static, theirs_dynamic), (ours_static, theirs_dynamic)
    assert torch.equal(ours_static, theirs_static), (ours_static, theirs_static)
    assert torch.equal(ours_static, ours_dynamic), (ours_static, ours_dynamic)
    assert_varied(ours_static, width)
    # On a CPU without a compile_config the step runs eagerly: nothing was compiled.
    assert "_lean_compiled_steps" not in pair.ours.__dict__


def test_unpadded_batch_and_single_prompt(pair) -> None:
    """No padding: generate() drops the all-ones mask and the lean loop numbers positions."""
    input_ids = torch.randint(2, VOCAB, (2, 5))
    for prompt, mask in ((input_ids, torch.ones_like(input_ids)), (input_ids[:1], None)):
        ours = lean_generate(pair.ours, prompt, mask, **GREEDY)
        theirs = pair.theirs.generate(prompt, attention_mask=mask, **GREEDY)
        assert torch.equal(ours, theirs), (ours, theirs)


def test_static_cache_passed_in_takes_the_lean_loop(pair) -> None:
    input_ids, mask = left_padded()
    length = input_ids.shape[1] + NEW

    def cache_for(model) -> StaticCache:
        return StaticCache(config=model.config, max_cache_len=length)

    with spy_decoding() as calls:
        ours = pair.ours.generate(
            input_ids, attention_mask=mask, cache=cache_for(pair.ours), **GREEDY
        )
    assert calls == LEAN, calls
    theirs = pair.theirs.generate(
        input_ids, attention_mask=mask, cache=cache_for(pair.theirs), **GREEDY
    )
    assert torch.equal(ours, theirs), (ours, theirs)


def test_lean_loop_is_taken_only_where_it_applies(pair) -> None:
    """Static greedy and sampling take the lean loop; the default dynamic cache, beams and dict
    outputs do not (and the spies do see transformers' loops when those run)."""
    input_ids, mask = left_padded()
    cases = [
        ({**STATIC, **GREEDY}, LEAN),
        ({**STATIC, **SAMPLING}, LEAN),
        (GREEDY, TRANSFORMERS_SAMPLE),
        (SAMPLING, TRANSFORMERS_SAMPLE),
        ({**STATIC, **GREEDY, "num_beams": 3}, {"lean": 0, "sample": 0, "beam": 1}),
        ({**STATIC, **GREEDY, "return_dict_in_generate": True}, TRANSFORMERS_SAMPLE),
        ({**STATIC, **GREEDY, "use_cache": False}, None),  # either way: not lean tokens
    ]
    for options, expected in cases:
        with spy_decoding() as calls:
            pair.ours.generate(input_ids, attention_mask=mask, **options)
        if expected is None:
            # Without a cache the lean loop may be entered, but must hand over to _sample.
            assert calls["sample"] == 1, (options, calls)
        else:
            assert calls == expected, (options, calls)


@pytest.mark.parametrize("seed", [0, 5])
def test_seeded_sampling_equals_transformers(pair, seed: int) -> None:
    input_ids, mask = left_padded()
    torch.manual_seed(seed)
    ours = lean_generate(pair.ours, input_ids, mask, **SAMPLING)
    torch.manual_seed(seed)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **SAMPLING)
    torch.manual_seed(seed)
    theirs_static = pair.theirs.generate(input_ids, attention_mask=mask, **STATIC, **SAMPLING)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert torch.equal(ours, theirs_static), (ours, theirs_static)
    greedy = lean_generate(pair.ours, input_ids, mask, **GREEDY)
    assert not torch.equal(ours, greedy)  # the sampling really sampled


def test_eos_pads_finished_rows_like_transformers(pair) -> None:
    input_ids, mask = left_padded()
    width = input_ids.shape[1]
    free = lean_generate(pair.ours, input_ids, mask, **GREEDY)
    eos = int(free[0, width + 1])  # the 2nd token row 0 generates
    assert eos != PAD
    options = {**GREEDY, "eos_token_id": eos}
    ours = lean_generate(pair.ours, input_ids, mask, **options)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours, theirs), (ours, theirs)

    # Row 0 stops at its first EOS and is padded after it; another row runs to the end.
    new = ours[0, width:]
    stop = int((new == eos).nonzero()[0])
    assert stop <= 1
    assert torch.equal(new[: stop + 1], free[0, width : width + stop + 1])
    assert bool((new[stop + 1 :] == PAD).all()) and stop + 1 < NEW
    # The other rows went on after row 0 had finished: until their own EOS, or to the end.
    assert ours.shape[1] > width + stop + 2, ours
    for i in (1, 2):
        row, hits = ours[i, width:], (ours[i, width:] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else NEW
        assert torch.equal(row[:end], free[i, width : width + end])
        assert bool((row[end:] == PAD).all())


def test_generation_ends_when_every_row_has_finished(pair) -> None:
    input_ids, mask = left_padded()
    width = input_ids.shape[1]
    free = lean_generate(pair.ours, input_ids, mask, **GREEDY)
    # Each row's 2nd generated token is an EOS: every row finishes by the 2nd step at the latest.
    eos = sorted({int(token) for token in free[:, width + 1]} - {PAD})
    assert len(eos) >= 2
    options = {**GREEDY, "eos_token_id": eos}
    ours = lean_generate(pair.ours, input_ids, mask, **options)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert ours.shape[1] <= width + 2 < width + NEW, ours
    for row in ours[:, width:]:
        hits = [i for i, token in enumerate(row.tolist()) if token in eos]
        assert hits, row
        assert bool((row[hits[0] + 1 :] == PAD).all()), row


def test_min_new_tokens_and_max_length_equal_transformers(pair) -> None:
    input_ids, mask = left_padded()
    width = input_ids.shape[1]
    free = lean_generate(pair.ours, input_ids, mask, **{**GREEDY, "max_new_tokens": 9})
    eos = int(free[:, width:].flatten().mode().values)  # the most frequent prediction
    assert eos != PAD
    min_new = 4
    options = {**GREEDY, "max_new_tokens": 9, "min_new_tokens": min_new, "eos_token_id": eos}
    ours = lean_generate(pair.ours, input_ids, mask, **options)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert eos not in ours[:, width : width + min_new].flatten().tolist()
    assert eos in free[:, width : width + min_new].flatten().tolist()  # the minimum mattered

    for extra in ({}, {"eos_token_id": eos}):
        options = {**GREEDY, "max_new_tokens": None, "max_length": width + 5, **extra}
        ours = lean_generate(pair.ours, input_ids, mask, **options)
        theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
        assert torch.equal(ours, theirs), (extra, ours, theirs)
        assert ours.shape[1] <= width + 5


def test_beam_search_with_static_cache_is_transformers(pair) -> None:
    input_ids, mask = left_padded()
    options = {**STATIC, **GREEDY, "num_beams": 3}
    with spy_decoding() as calls:
        ours = pair.ours.generate(input_ids, attention_mask=mask, **options)
    assert calls == {"lean": 0, "sample": 0, "beam": 1}, calls
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    assert torch.equal(ours, theirs), (ours, theirs)


def test_dict_output_with_scores_is_transformers(pair) -> None:
    input_ids, mask = left_padded()
    options = {**STATIC, **GREEDY, "return_dict_in_generate": True, "output_scores": True}
    with spy_decoding() as calls:
        ours = pair.ours.generate(input_ids, attention_mask=mask, **options)
    assert calls == TRANSFORMERS_SAMPLE, calls
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **options)
    assert isinstance(ours, GenerateDecoderOnlyOutput)
    assert ours.scores is not None and len(ours.scores) == NEW
    assert isinstance(ours.cache, StaticCache)
    assert torch.equal(ours.sequences, theirs.sequences), (ours.sequences, theirs.sequences)
    for mine, reference in zip(ours.scores, theirs.scores, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)


class Collector(BaseStreamer):
    """Keeps every ``put()`` value and counts ``end()`` calls."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.ends = 0

    def put(self, value: torch.Tensor) -> None:
        assert self.ends == 0, "put() after end()"
        self.values.append(value.clone())

    def end(self) -> None:
        self.ends += 1


def test_streamer_receives_prompt_then_each_token(pair) -> None:
    """transformers does not hand a streamer to a custom decoding method, so a streamed request
    runs transformers' loop, and streams every token."""
    input_ids, mask = left_padded((5, 3))
    ours_streamer, their_streamer = Collector(), Collector()
    with spy_decoding() as calls:
        output = pair.ours.generate(
            input_ids, attention_mask=mask, streamer=ours_streamer, **STATIC, **GREEDY
        )
    assert calls == {"lean": 0, "sample": 1, "beam": 0}, calls
    theirs = pair.theirs.generate(
        input_ids, attention_mask=mask, streamer=their_streamer, **STATIC, **GREEDY
    )
    assert torch.equal(output, theirs)
    # transformers' own behaviour, the reference: the prompt, then one (batch,) put per token.
    assert their_streamer.ends == 1 and len(their_streamer.values) == 1 + NEW

    values = ours_streamer.values
    assert len(values) == 1 + NEW, f"{len(values)} put() calls, expected prompt + {NEW} tokens"
    assert torch.equal(values[0], input_ids)
    assert all(value.shape == (2,) for value in values[1:])
    assert torch.equal(torch.cat([values[0], torch.stack(values[1:], dim=1)], dim=1), output)
    assert ours_streamer.ends == 1
    for mine, reference in zip(values, their_streamer.values, strict=True):
        assert torch.equal(mine, reference)


def test_compiled_step_equals_transformers_and_is_reused(pair) -> None:
    """One compile (fullgraph, inductor's C++ wrapper on the CPU), then a second call with new
    prompt contents of the same shapes runs the same compiled step without recompiling."""
    torch._dynamo.reset()
    input_ids, mask = left_padded((7, 4))
    options = {**GREEDY, "compile_config": transformers.CompileConfig(fullgraph=True)}
    graphs = counters["stats"]["unique_graphs"]
    ours = lean_generate(pair.ours, input_ids, mask, **options)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **GREEDY)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # the step was compiled, once
    steps = pair.ours.__dict__["_lean_compiled_steps"]
    assert len(steps) == 1
    ((key, step),) = steps.items()
    assert "cpp_wrapper" in key

    other_ids = torch.where(mask.bool(), torch.randint(2, VOCAB, input_ids.shape), input_ids)
    assert not torch.equal(other_ids, input_ids)
    with torch._dynamo.config.patch(error_on_recompile=True):
        ours = lean_generate(pair.ours, other_ids, mask, **options)
    theirs = pair.theirs.generate(other_ids, attention_mask=mask, **GREEDY)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    assert pair.ours.__dict__["_lean_compiled_steps"] == {key: step}


def test_each_model_compiles_its_own_step(make_pair: Callable) -> None:
    """Dynamo's recompile limit counts per code object; every model gets its own, so a second
    model is compiled too instead of silently running eagerly once the limit is spent."""
    first, second = make_pair(**SIZES, seed=1), make_pair(**SIZES, seed=2)
    input_ids, mask = left_padded((5, 3))
    options = {**GREEDY, "compile_config": transformers.CompileConfig(fullgraph=True)}
    with torch._dynamo.config.patch(recompile_limit=1):
        for pair in (first, second):
            graphs = counters["stats"]["unique_graphs"]
            ours = lean_generate(pair.ours, input_ids, mask, **options)
            assert counters["stats"]["unique_graphs"] == graphs + 1
            assert torch.equal(ours, pair.theirs.generate(input_ids, attention_mask=mask, **GREEDY))


def test_disable_compile_keeps_the_step_eager(pair) -> None:
    input_ids, mask = left_padded()
    options = {
        **GREEDY,
        "compile_config": transformers.CompileConfig(fullgraph=True),
        "disable_compile": True,
    }
    graphs = counters["stats"]["unique_graphs"]
    ours = lean_generate(pair.ours, input_ids, mask, **options)
    theirs = pair.theirs.generate(input_ids, attention_mask=mask, **GREEDY)
    assert torch.equal(ours, theirs)
    assert "_lean_compiled_steps" not in pair.ours.__dict__
    assert counters["stats"]["unique_graphs"] == graphs
