"""The lean-decoding contracts, for models with ``LeanGenerationMixin``.

A static-cache ``generate()`` runs the lean loop and gives the tokens of transformers' loop
(:func:`assert_lean_decoding_matches`, :func:`assert_lean_stopping_matches`), every other
request goes to transformers (:func:`assert_lean_routing`), and the compiled step is compiled
once per model and reused (:func:`assert_lean_compiled_step`). :func:`spy_decoding` counts
which decoding loops a ``generate()`` call ran.

Kept apart from :mod:`.contracts` because only decoders with the lean loop need it, and it
patches transformers' decoding loops while it counts them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
import transformers
from transformers import GenerationMixin, StaticCache
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .. import decoding
from .contracts import STATIC, _assert_generated, _assert_varied, _new_tokens

LEAN = {"lean": 1, "sample": 0, "beam": 0}
TRANSFORMERS_SAMPLE = {"lean": 0, "sample": 1, "beam": 0}
BEAM_SEARCH = {"lean": 0, "sample": 0, "beam": 1}


@contextmanager
def spy_decoding() -> Iterator[dict[str, int]]:
    """Count the decoding loops that ``generate()`` runs inside the block: ``lean_sample``, and
    transformers' ``GenerationMixin._sample`` (which ``lean_sample`` also falls back to) and
    ``_beam_search``. Yields the live counts ``{"lean": .., "sample": .., "beam": ..}``."""
    calls = {"lean": 0, "sample": 0, "beam": 0}

    def counted(name: str, function: Callable) -> Callable:
        @functools.wraps(function)  # keeps the signature generate() inspects
        def wrapper(*args: Any, **kwargs: Any) -> Any:
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


def _generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    loops: Mapping[str, int] | None = None,
    seed: int | None = None,
    **options: Any,
) -> Any:
    """``model.generate``, seeded first when ``seed`` is given, asserting which loops ran
    (``loops``; for a reference that is not lean-capable only that no lean loop ran)."""
    if seed is not None:
        torch.manual_seed(seed)
    with spy_decoding() as calls:
        output = model.generate(input_ids, attention_mask=attention_mask, **options)
    if loops is not None:
        assert calls == loops, (
            f"{type(model).__name__}.generate({options}) ran {calls}, expected {loops}"
        )
    else:
        assert calls["lean"] == 0, f"the reference ran the lean loop: {calls}"
    return output


def _greedy(max_new_tokens: int, pad_token_id: int) -> dict[str, Any]:
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": pad_token_id,
        "eos_token_id": None,
    }


def assert_lean_decoding_matches(
    model: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    pass_cache: bool = False,
    **generate_kwargs: Any,
) -> None:
    """``model.generate(..., cache_implementation="static")`` runs the lean loop, and only it,
    and gives the tokens of transformers' loop.

    The tokens must equal ``model``'s own dynamic-cache ``generate()`` (which must run
    transformers' ``_sample``) and, when ``reference`` is another model with the same weights
    (transformers' class), the reference's with a dynamic and with a static cache. Pass
    ``reference=model`` where no transformers class exists. ``seed`` seeds every call (for
    ``do_sample=True``; the sample must then differ from greedy decoding). ``pass_cache``
    hands each model a ``StaticCache`` (``generate(cache=...)``) instead of asking for one;
    it needs ``max_new_tokens``.
    """

    def static_for(target: Any) -> dict[str, Any]:
        if not pass_cache:
            return STATIC
        length = input_ids.shape[1] + generate_kwargs["max_new_tokens"]
        return {"cache": StaticCache(config=target.config, max_cache_len=length)}

    options = {"seed": seed, **generate_kwargs}
    lean = _generate(model, input_ids, attention_mask, LEAN, **static_for(model), **options)
    expected = {
        "its own dynamic cache": _generate(
            model, input_ids, attention_mask, TRANSFORMERS_SAMPLE, **options
        )
    }
    if reference is not model:
        expected["the reference"] = _generate(reference, input_ids, attention_mask, **options)
        if not isinstance(reference, decoding.LeanGenerationMixin):
            expected["the reference with a static cache"] = _generate(
                reference, input_ids, attention_mask, **static_for(reference), **options
            )
    for what, tokens in expected.items():
        assert torch.equal(lean, tokens), f"lean tokens differ from {what}:\n{lean}\n{tokens}"
    _assert_generated(model, lean, input_ids, generate_kwargs)
    _assert_varied(_new_tokens(model, lean, input_ids))
    if generate_kwargs.get("do_sample"):
        greedy = {**generate_kwargs, "do_sample": False}
        greedy_tokens = _generate(
            model, input_ids, attention_mask, LEAN, **static_for(model), **greedy
        )
        assert not torch.equal(lean, greedy_tokens), "the sampling did not sample"
    if model.device.type == "cpu" and "compile_config" not in generate_kwargs:
        # On a CPU without a compile_config the step runs eagerly: nothing was compiled.
        assert "_lean_compiled_steps" not in model.__dict__


def assert_lean_stopping_matches(
    model: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    max_new_tokens: int = 7,
    pad_token_id: int = 0,
) -> None:
    """With EOS, ``min_new_tokens`` and ``max_length`` the lean loop gives the reference's
    tokens: a finished row is padded while the others go on, generation ends when every row
    has finished, ``min_new_tokens`` holds an EOS back, ``max_length`` bounds the length.

    The EOS ids are picked from the model's own greedy output (a row's second token), so each
    case really stops a row; the batch needs at least two rows that differ there.
    """
    greedy = _greedy(max_new_tokens, pad_token_id)
    width = input_ids.shape[1]

    def lean(**options: Any) -> torch.Tensor:
        return _generate(model, input_ids, attention_mask, LEAN, **STATIC, **options)

    def both(**options: Any) -> torch.Tensor:
        ours = lean(**options)
        theirs = _generate(reference, input_ids, attention_mask, **options)
        assert torch.equal(ours, theirs), f"lean tokens differ with {options}:\n{ours}\n{theirs}"
        return ours

    free = lean(**greedy)

    # Row 0's 2nd token as EOS: row 0 stops there and is padded; every row is its free tokens
    # up to its own first EOS, then padding.
    eos = int(free[0, width + 1])
    assert eos != pad_token_id
    ours = both(**{**greedy, "eos_token_id": eos})
    stop = int((ours[0, width:] == eos).nonzero()[0])
    assert stop <= 1 and stop + 1 < max_new_tokens, ours
    assert ours.shape[1] > width + stop + 2, f"the other rows did not go on: {ours}"
    for i, row in enumerate(ours[:, width:]):
        hits = (row == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else max_new_tokens
        assert torch.equal(row[:end], free[i, width : width + end]), (i, row, free[i])
        assert bool((row[end:] == pad_token_id).all()), (i, row)

    # Every row's 2nd token is an EOS: generation ends when all rows have finished.
    eos_ids = sorted({int(token) for token in free[:, width + 1]} - {pad_token_id})
    assert len(eos_ids) >= 2, f"the rows' second tokens must differ: {free}"
    ours = both(**{**greedy, "eos_token_id": eos_ids})
    assert ours.shape[1] <= width + 2 < width + max_new_tokens, ours
    for row in ours[:, width:]:
        hits = [i for i, token in enumerate(row.tolist()) if token in eos_ids]
        assert hits and bool((row[hits[0] + 1 :] == pad_token_id).all()), row

    # min_new_tokens holds the most frequent prediction back, where it came early before.
    longer = {**greedy, "max_new_tokens": max_new_tokens + 2}
    free = lean(**longer)
    eos = int(free[:, width:].flatten().mode().values)
    assert eos != pad_token_id
    min_new = 4
    ours = both(**{**longer, "min_new_tokens": min_new, "eos_token_id": eos})
    assert eos not in ours[:, width : width + min_new].flatten().tolist(), ours
    assert eos in free[:, width : width + min_new].flatten().tolist(), "min_new_tokens did nothing"

    # max_length instead of max_new_tokens: alone, with an EOS, and with min_new_tokens.
    for extra in ({}, {"eos_token_id": eos}):
        ours = both(**{**greedy, "max_new_tokens": None, "max_length": width + 5, **extra})
        assert ours.shape[1] <= width + 5, ours
    options = {"max_new_tokens": None, "max_length": width + 6, "min_new_tokens": 3}
    ours = both(**{**greedy, **options, "eos_token_id": eos_ids})
    assert not set(eos_ids) & set(ours[:, width : width + 3].flatten().tolist()), ours
    assert ours.shape[1] > width + 2, ours


class _Collector(BaseStreamer):
    """Keeps every ``put()`` value and counts ``end()`` calls."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.ends = 0

    def put(self, value: torch.Tensor) -> None:
        assert self.ends == 0, "put() after end()"
        self.values.append(value.clone())

    def end(self) -> None:
        self.ends += 1


def assert_lean_routing(
    model: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    max_new_tokens: int = 7,
    pad_token_id: int = 0,
) -> float:
    """The lean loop runs exactly where it applies, and everything else is transformers'.

    Static greedy and sampling run the lean loop; the dynamic cache runs ``_sample``; without a
    cache the lean loop hands over to ``_sample``; beam search, dict outputs with scores and a
    streamer (prompt first, then one ``(batch,)`` put per token) run transformers' loops and
    give ``reference``'s tokens, scores and streamed values. Returns the largest score
    difference.
    """
    greedy = _greedy(max_new_tokens, pad_token_id)
    sampling = {**greedy, "do_sample": True, "top_k": 5, "temperature": 0.7}
    for options, loops in (
        ({**STATIC, **greedy}, LEAN),
        ({**STATIC, **sampling}, LEAN),
        (greedy, TRANSFORMERS_SAMPLE),
        (sampling, TRANSFORMERS_SAMPLE),
    ):
        _generate(model, input_ids, attention_mask, loops, **options)
    with spy_decoding() as calls:  # the lean loop may be entered, but must hand over
        model.generate(
            input_ids, attention_mask=attention_mask, use_cache=False, **STATIC, **greedy
        )
    assert calls["sample"] == 1 and calls["beam"] == 0, calls

    beams = {**STATIC, **greedy, "num_beams": 3}
    ours = _generate(model, input_ids, attention_mask, BEAM_SEARCH, **beams)
    theirs = _generate(reference, input_ids, attention_mask, **beams)
    assert torch.equal(ours, theirs), (ours, theirs)

    scored = {**STATIC, **greedy, "return_dict_in_generate": True, "output_scores": True}
    ours = _generate(model, input_ids, attention_mask, TRANSFORMERS_SAMPLE, **scored)
    theirs = _generate(reference, input_ids, attention_mask, **scored)
    assert isinstance(ours, GenerateDecoderOnlyOutput), type(ours)
    assert ours.scores is not None and len(ours.scores) == max_new_tokens
    assert isinstance(ours.cache, StaticCache), type(ours.cache)
    assert torch.equal(ours.sequences, theirs.sequences), (ours.sequences, theirs.sequences)
    largest = 0.0
    for mine, expected in zip(ours.scores, theirs.scores, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-4, rtol=0)  # equal -inf pass
        largest = max(largest, float((mine - expected).nan_to_num(0.0).abs().max()))

    # transformers does not hand a streamer to a custom decoding method: _sample streams.
    streams = _Collector(), _Collector()
    ours = _generate(
        model,
        input_ids,
        attention_mask,
        TRANSFORMERS_SAMPLE,
        streamer=streams[0],
        **STATIC,
        **greedy,
    )
    theirs = _generate(
        reference, input_ids, attention_mask, streamer=streams[1], **STATIC, **greedy
    )
    assert torch.equal(ours, theirs), (ours, theirs)
    values = streams[0].values
    assert streams[0].ends == 1 and len(values) == 1 + max_new_tokens, (
        streams[0].ends,
        len(values),
    )
    assert torch.equal(values[0], input_ids)
    assert all(value.shape == (input_ids.shape[0],) for value in values[1:])
    assert torch.equal(torch.cat([values[0], torch.stack(values[1:], dim=1)], dim=1), ours)
    assert streams[1].ends == 1 and len(streams[1].values) == len(values)
    for mine, expected in zip(values, streams[1].values, strict=True):
        assert torch.equal(mine, expected), (mine, expected)
    return largest


def _shuffled_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The same prompts' real tokens in another order: new contents, the same shapes."""
    real = (
        torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.bool()
    )
    tokens = input_ids[real]
    other = input_ids.clone()
    other[real] = tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))]
    assert not torch.equal(other, input_ids)
    return other


def _graphs_compiled() -> int:
    """How many graphs dynamo has compiled in this process (imported late: it is heavy)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def assert_lean_compiled_step(
    model: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    other: tuple[Any, Any] | None = None,
    max_new_tokens: int = 7,
    pad_token_id: int = 0,
) -> None:
    """With a ``compile_config`` the lean step is compiled once (fullgraph; on a CPU with
    inductor's C++ wrapper) and gives the reference's tokens; new prompt contents of the same
    shapes reuse it without recompiling; ``disable_compile`` keeps it eager.

    ``other`` is a second ``(model, reference)`` pair of the same architecture: it must be
    compiled too while the recompile limit is 1, since dynamo keeps its limit per code object
    and each model compiles its step under a code object of its own. Resets dynamo.
    """
    greedy = _greedy(max_new_tokens, pad_token_id)
    compiled = {**STATIC, **greedy, "compile_config": transformers.CompileConfig(fullgraph=True)}
    expected = _generate(reference, input_ids, attention_mask, **greedy)

    graphs = _graphs_compiled()
    eager = _generate(model, input_ids, attention_mask, LEAN, disable_compile=True, **compiled)
    assert torch.equal(eager, expected), (eager, expected)
    assert "_lean_compiled_steps" not in model.__dict__
    assert _graphs_compiled() == graphs, "disable_compile compiled"

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):
        graphs = _graphs_compiled()
        tokens = _generate(model, input_ids, attention_mask, LEAN, **compiled)
        assert torch.equal(tokens, expected), (tokens, expected)
        assert _graphs_compiled() == graphs + 1, "the step was not compiled once"
        steps = dict(model.__dict__["_lean_compiled_steps"])
        assert len(steps) == 1, steps
        if model.device.type == "cpu":
            assert "cpp_wrapper" in next(iter(steps)), steps

        other_ids = _shuffled_tokens(input_ids, attention_mask)
        with torch._dynamo.config.patch(error_on_recompile=True):
            tokens = _generate(model, other_ids, attention_mask, LEAN, **compiled)
        expected = _generate(reference, other_ids, attention_mask, **greedy)
        assert torch.equal(tokens, expected), (tokens, expected)
        assert _graphs_compiled() == graphs + 1
        assert model.__dict__["_lean_compiled_steps"] == steps

        if other is not None:
            other_model, other_reference = other
            tokens = _generate(other_model, input_ids, attention_mask, LEAN, **compiled)
            assert _graphs_compiled() == graphs + 2, "the other model ran eagerly"
            expected = _generate(other_reference, input_ids, attention_mask, **greedy)
            assert torch.equal(tokens, expected), (tokens, expected)
