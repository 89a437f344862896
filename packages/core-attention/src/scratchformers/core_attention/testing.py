"""The contracts every scratchformers model must keep, as plain functions that assert.

Like ``torch.testing`` or ``numpy.testing``: each function takes a model (and, where the contract
is "the same as transformers", a reference model with the same weights) plus inputs, raises an
``AssertionError`` that says what broke, and returns nothing or the largest difference it
measured. Every package's tests call them with their own tiny models, so each contract is
written once and every model, present and future, is held to the same one:

* forward: logits equal a transformers reference class (:func:`assert_matches_reference`);
  left padding changes no row's logits (:func:`assert_padding_changes_nothing`);
* generation: the KV cache changes nothing (:func:`assert_cache_changes_nothing`,
  :func:`assert_cached_logits_match_full_forward`), a left-padded batch gives each prompt's
  tokens alone (:func:`assert_batch_equals_each_prompt`), the static cache gives the dynamic
  cache's tokens (:func:`assert_static_cache_matches_dynamic`);
* lean decoding (models with ``LeanGenerationMixin``): a static-cache ``generate()`` runs the
  lean loop and gives the tokens of transformers' loop (:func:`assert_lean_decoding_matches`,
  :func:`assert_lean_stopping_matches`), other requests go to transformers
  (:func:`assert_lean_routing`), and the compiled step is compiled once per model and reused
  (:func:`assert_lean_compiled_step`);
* checkpoints: a bit-exact, safetensors-only save/load round trip
  (:func:`assert_save_load_round_trip`), the Auto classes (:func:`assert_auto_classes_load`),
  and a hub cache laid out offline for loading by hub id (:func:`lay_out_hub_cache`);
* errors: bad inputs and config values raise a ``ValueError`` naming the argument or field and
  the value (:func:`assert_input_errors`, :func:`assert_empty_inputs_raise`,
  :func:`assert_config_error` with :func:`invalid_config_values`).

Token comparisons use ``torch.equal``. Every check also asserts that what it compares is not
degenerate (varied tokens, padded rows, rows that differ), so it cannot pass vacuously: use tiny
models with odd sizes and a wide initialisation, so that greedy decoding varies.

It imports only core-attention's own dependencies (torch, transformers, safetensors), never
pytest: it runs in any model package's test environment.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, GenerationMixin, StaticCache
from transformers.cache_utils import EncoderDecoderCache
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from . import decoding
from .inputs import EPSILON_FIELDS, SIZE_FIELDS

Inputs = Mapping[str, torch.Tensor]

STATIC = {"cache_implementation": "static"}
LEAN = {"lean": 1, "sample": 0, "beam": 0}
TRANSFORMERS_SAMPLE = {"lean": 0, "sample": 1, "beam": 0}
BEAM_SEARCH = {"lean": 0, "sample": 0, "beam": 1}


# --- inputs and helpers -------------------------------------------------------------------------


def left_padded_batch(
    lengths: Sequence[int],
    vocab_size: int,
    *,
    first_id: int = 2,
    pad_token_id: int = 0,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Random prompts of ``lengths`` left-padded to the longest: ``(input_ids, attention_mask,
    rows)``, ``rows`` unpadded. Ids come from ``first_id .. vocab_size - 1``, never a special
    token."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    rows = [torch.randint(first_id, vocab_size, (n,), generator=generator) for n in lengths]
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask, rows


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


def _new_tokens(model: Any, output: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The generated part: after the prompt, or after the decoder start token."""
    return output[:, 1:] if model.config.is_encoder_decoder else output[:, input_ids.shape[1] :]


def _assert_generated(
    model: Any, output: torch.Tensor, input_ids: torch.Tensor, options: Mapping[str, Any]
) -> None:
    """One row per prompt, the prompt kept, and exactly ``max_new_tokens`` new tokens where
    nothing can stop generation earlier (no EOS, or ``min_new_tokens`` as many)."""
    assert output.shape[0] == input_ids.shape[0], (output.shape, input_ids.shape)
    if not model.config.is_encoder_decoder:
        assert torch.equal(output[:, : input_ids.shape[1]], input_ids), "the prompt was changed"
    new = options.get("max_new_tokens")
    if new and (options.get("eos_token_id", -1) is None or options.get("min_new_tokens", 0) >= new):
        width = 1 if model.config.is_encoder_decoder else input_ids.shape[1]
        assert output.shape[1] == width + new, (output.shape, width, new)


def _assert_varied(new_tokens: torch.Tensor) -> None:
    """Untrained but not degenerate: the generated tokens are more than three repeated ids."""
    distinct = len(set(new_tokens.flatten().tolist()))
    assert distinct > 3, f"only {distinct} distinct generated tokens: {new_tokens}"


def _assert_some_rows_padded(attention_mask: torch.Tensor | None) -> None:
    assert attention_mask is not None and bool((attention_mask[:, 0] == 0).any()), (
        "the contract is about padding: some rows must start with padding"
    )


def _first_output(model: Any, inputs: Inputs) -> torch.Tensor:
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if getattr(output, "logits", None) is not None else output[0]


def _single_row(inputs: Inputs, i: int) -> dict[str, torch.Tensor]:
    return {key: value[i : i + 1] for key, value in inputs.items()}


# --- forward --------------------------------------------------------------------------------------


def assert_close_on_real_tokens(
    actual: torch.Tensor,
    expected: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    atol: float = 1e-4,
    what: str = "logit",
) -> float:
    """Same shape, finite, and at most ``atol`` apart over the positions where
    ``attention_mask`` is 1 (everywhere without a mask): outputs at padding positions are
    undefined. Returns the largest absolute difference."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach().float(), expected.detach().float()
    if attention_mask is not None:
        real = attention_mask.bool()
        actual, expected = actual[real], expected[real]
    assert actual.numel() > 0, "nothing to compare"
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all(), f"non-finite {what}s"
    difference = float((actual - expected).abs().max())
    assert difference <= atol, f"max abs {what} difference {difference:.3g} > {atol:g}"
    return difference


def assert_matches_reference(
    model: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    atol: float = 1e-4,
    positions_from_mask: bool = True,
) -> float:
    """``model``'s logits (and loss, with ``labels``) equal those of ``reference``, a
    transformers class holding the same weights, on the real tokens of the batch.

    Use odd sizes (widths and head counts that are not powers of two, lengths 1 and odd): a
    wrong reshape or split only shows there. transformers' decoders number the positions of a
    left-padded row from its mask only inside ``generate()``, so the reference is given
    position ids counted from the mask (``positions_from_mask``). Returns the largest logit
    difference.
    """
    assert reference is not model, "compare against another model holding the same weights"
    reference_inputs: dict[str, Any] = {"attention_mask": attention_mask, "labels": labels}
    if positions_from_mask and attention_mask is not None:
        reference_inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask, labels=labels)
        theirs = reference(input_ids, **reference_inputs)
    difference = assert_close_on_real_tokens(ours.logits, theirs.logits, attention_mask, atol=atol)
    if labels is not None:
        loss_difference = abs(float(ours.loss) - float(theirs.loss))
        assert loss_difference <= 1e-5, f"loss differs by {loss_difference:.3g}"
    return difference


def assert_padding_changes_nothing(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: Sequence[torch.Tensor],
    *,
    atol: float = 1e-5,
    **inputs: torch.Tensor,
) -> float:
    """Each row of a left-padded batch gets the logits it gets alone, unpadded.

    ``inputs`` are further per-row inputs (``decoder_input_ids`` of an encoder-decoder, whose
    decoder positions are unpadded: its logits are compared whole). Returns the largest
    difference.
    """
    _assert_some_rows_padded(attention_mask)
    batched = _first_output(
        model, {"input_ids": input_ids, "attention_mask": attention_mask, **inputs}
    )
    largest = 0.0
    for i, row in enumerate(rows):
        alone = _first_output(model, {"input_ids": row[None], **_single_row(inputs, i)})[0]
        mine = batched[i] if model.config.is_encoder_decoder else batched[i, -len(row) :]
        largest = max(largest, assert_close_on_real_tokens(mine, alone, atol=atol))
    return largest


# --- generation -----------------------------------------------------------------------------------


def assert_cache_changes_nothing(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **generate_kwargs: Any,
) -> None:
    """``generate()`` gives the same tokens with the KV cache as without it (recomputing the
    whole sequence every step)."""
    with_cache = model.generate(
        input_ids, attention_mask=attention_mask, use_cache=True, **generate_kwargs
    )
    without = model.generate(
        input_ids, attention_mask=attention_mask, use_cache=False, **generate_kwargs
    )
    _assert_generated(model, with_cache, input_ids, generate_kwargs)
    assert torch.equal(with_cache, without), (
        f"the KV cache changed the tokens:\n{with_cache}\n{without}"
    )


def assert_cached_logits_match_full_forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    continuation: torch.Tensor,
    *,
    atol: float = 1e-5,
) -> float:
    """A decoder fed ``continuation`` one token at a time through its cache, the mask growing,
    gives for each new token the logits of one forward over the whole sequence. Returns the
    largest difference."""
    sequence = torch.cat([input_ids, continuation], dim=1)
    full_mask = torch.cat([attention_mask, torch.ones_like(continuation)], dim=1)
    largest = 0.0
    with torch.no_grad():
        full = model(sequence, attention_mask=full_mask, use_cache=False).logits
        step = model(input_ids, attention_mask=attention_mask, use_cache=True)
        for i in range(continuation.shape[1]):
            width = input_ids.shape[1] + i + 1
            step = model(
                continuation[:, i : i + 1],
                attention_mask=full_mask[:, :width],
                cache=step.cache,
                use_cache=True,
            )
            largest = max(
                largest,
                assert_close_on_real_tokens(step.logits[:, -1], full[:, width - 1], atol=atol),
            )
    return largest


def assert_batch_equals_each_prompt(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: Sequence[torch.Tensor],
    **generate_kwargs: Any,
) -> None:
    """Each row of a left-padded batch generates the tokens its prompt generates alone.

    Give ``min_new_tokens`` equal to ``max_new_tokens`` (or no EOS), so that no row stops
    early and is padded in the batch. Not every row may generate the same (not degenerate).
    """
    _assert_some_rows_padded(attention_mask)
    batched = model.generate(input_ids, attention_mask=attention_mask, **generate_kwargs)
    _assert_generated(model, batched, input_ids, generate_kwargs)
    encoder_decoder = model.config.is_encoder_decoder  # compared whole, start token included
    new = batched if encoder_decoder else batched[:, input_ids.shape[1] :]
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **generate_kwargs)[0]
        alone = alone if encoder_decoder else alone[len(row) :]
        assert torch.equal(new[i], alone), f"row {i} differs alone: {new[i]} vs {alone}"
    assert any(not torch.equal(new[0], row) for row in new[1:]), "every row generates the same"


def assert_static_cache_matches_dynamic(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **generate_kwargs: Any,
) -> None:
    """transformers' decoding loop with a ``StaticCache`` (forced by asking for a dict
    output) gives the tokens of the default dynamic cache, and so does a static-cache request
    for the first prompt alone, unpadded (the lean loop, for a model that has it)."""
    dynamic = model.generate(input_ids, attention_mask=attention_mask, **generate_kwargs)
    result = model.generate(
        input_ids,
        attention_mask=attention_mask,
        return_dict_in_generate=True,
        **STATIC,
        **generate_kwargs,
    )
    cache = result.cache
    if model.config.is_encoder_decoder:
        assert isinstance(cache, EncoderDecoderCache), type(cache)
        cache = cache.self_attention_cache
    assert isinstance(cache, StaticCache), type(cache)
    _assert_generated(model, dynamic, input_ids, generate_kwargs)
    assert torch.equal(result.sequences, dynamic), (
        f"the static cache changed the tokens:\n{result.sequences}\n{dynamic}"
    )

    single = (
        input_ids[:1] if attention_mask is None else input_ids[0][attention_mask[0].bool()][None]
    )
    static = model.generate(single, **STATIC, **generate_kwargs)
    dynamic = model.generate(single, **generate_kwargs)
    assert torch.equal(static, dynamic), f"the static cache changed the tokens: {static} {dynamic}"


# --- lean decoding --------------------------------------------------------------------------------


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


# --- checkpoints ----------------------------------------------------------------------------------


def _tied_names(model: Any) -> list[str]:
    """The names of the output embedding's weight when it is the input embedding's, else []."""
    output = model.get_output_embeddings()
    if output is None or output.weight is not model.get_input_embeddings().weight:
        return []
    return [
        name
        for name, parameter in model.named_parameters(remove_duplicate=False)
        if parameter is output.weight
    ]


def assert_save_load_round_trip(model: Any, directory: str | Path, inputs: Inputs) -> None:
    """``save_pretrained`` writes ``config.json`` and ``model.safetensors`` only (no pickles),
    tied embeddings once, and ``from_pretrained`` gives the same class, every tensor bit for
    bit, the same tying, and bit-identical outputs on ``inputs``."""
    directory = Path(directory)
    model.save_pretrained(directory)
    names = sorted(path.name for path in directory.iterdir())
    assert "model.safetensors" in names and "config.json" in names, names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth"))], names
    tied = _tied_names(model)
    if tied:
        with safe_open(directory / "model.safetensors", framework="pt") as handle:
            stored = [name for name in tied if name in handle.keys()]  # noqa: SIM118
        assert len(stored) == 1, f"tied weights {tied} stored as {stored}"

    loaded = type(model).from_pretrained(directory).eval()
    assert type(loaded) is type(model), type(loaded)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys(), state.keys() ^ loaded_state.keys()
    for key, tensor in state.items():
        assert torch.equal(loaded_state[key], tensor), f"{key} changed in the round trip"
    assert bool(_tied_names(loaded)) == bool(tied), "tying changed in the round trip"
    assert torch.equal(_first_output(loaded, inputs), _first_output(model, inputs)), "outputs"


def assert_auto_classes_load(
    model: Any, directory: str | Path, auto_class: type, inputs: Inputs
) -> None:
    """After ``save_pretrained``: ``AutoConfig`` gives the model's config class,
    ``auto_class`` (``AutoModelForCausalLM``, ...) the model's class with the same outputs,
    and ``AutoModel`` the bare model, which a task checkpoint loads into without its head."""
    model.save_pretrained(directory)
    config = AutoConfig.from_pretrained(directory)
    assert type(config) is type(model.config), type(config)
    loaded = auto_class.from_pretrained(directory).eval()
    assert type(loaded) is type(model), f"{auto_class.__name__} gave {type(loaded).__name__}"
    assert torch.equal(_first_output(loaded, inputs), _first_output(model, inputs))

    base = model.base_model
    if base is model:
        return
    bare = AutoModel.from_pretrained(directory).eval()
    assert type(bare) is type(base), f"AutoModel gave {type(bare).__name__}"
    bare_state = bare.state_dict()
    assert bare_state.keys() == base.state_dict().keys()
    for key, tensor in base.state_dict().items():
        assert torch.equal(bare_state[key], tensor), key
    with torch.no_grad():
        expected = base(**inputs).last_hidden_state
        actual = bare(**inputs).last_hidden_state
    assert torch.equal(actual, expected)


def lay_out_hub_cache(
    cache_dir: str | Path, repo_id: str, snapshots: Mapping[str, str | Path], main: str
) -> None:
    """Lay out ``cache_dir`` as huggingface_hub's cache holding the model repo ``repo_id``:
    one snapshot folder per commit (each a copy of a directory of ``snapshots``, by commit
    hash) and the ref ``main`` pointing at the commit ``main``. Loading a hub id offline
    (``local_files_only=True``, ``cache_dir=...``, ``revision=...``) then goes through the
    same code path as a download."""
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    for commit, source in snapshots.items():
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in Path(source).iterdir():
            (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)


# --- errors ---------------------------------------------------------------------------------------


def _assert_value_error(call: Callable[[], object], what: str, *names: str) -> None:
    """``call()`` raises a ``ValueError`` whose message holds each of ``names`` as a word of
    its own (``input_ids`` is not named by ``decoder_input_ids``, nor ``3`` by ``13``)."""
    try:
        call()
    except ValueError as error:
        message = str(error)  # checked below, outside the handler: no chained traceback
    except Exception as error:
        raise AssertionError(
            f"{what}: {type(error).__name__} instead of a ValueError naming {names}: {error}"
        ) from error
    else:
        raise AssertionError(f"{what}: no error")
    missing = [n for n in names if not re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message)]
    assert not missing, f"{what}: the ValueError does not name {missing}: {message!r}"


def assert_input_errors(
    model: Any,
    inputs: Inputs,
    argument: str = "input_ids",
    mask_argument: str = "attention_mask",
) -> None:
    """Inputs the model cannot take raise a ``ValueError`` naming the argument and the values,
    not an index error (or a device-side assert on a GPU) deep inside.

    ``inputs`` is a valid batch (at least one row); one thing at a time is changed in
    ``inputs[argument]``: a token id of ``vocab_size`` (and more, and -1), float ids, 1-D ids;
    and in ``inputs[mask_argument]`` (ones when absent): a key too many, a row too many.
    """
    ids = inputs[argument]
    vocab_size = model.get_input_embeddings().num_embeddings
    batch, length = ids.shape

    def run(**changed: torch.Tensor) -> Callable[[], object]:
        return lambda: model(**{**inputs, **changed})

    with torch.no_grad():
        run()()  # the unchanged inputs are valid
        for bad_id in (vocab_size, vocab_size + 5, -1):
            bad = ids.clone()
            bad[0, -1] = bad_id
            names = (argument, str(bad_id), str(vocab_size))[: 2 if bad_id < 0 else 3]
            _assert_value_error(run(**{argument: bad}), f"token id {bad_id}", *names)
        _assert_value_error(
            run(**{argument: ids.float()}), "float ids", argument, str(torch.float32)
        )
        _assert_value_error(run(**{argument: ids[0]}), "1-D ids", argument, str((length,)))
        mask = inputs.get(mask_argument, torch.ones_like(ids))
        longer = torch.cat([mask, mask[:, :1]], dim=1)
        _assert_value_error(
            run(**{mask_argument: longer}),
            "a mask longer than the ids",
            mask_argument,
            str(length + 1),
            str(length),
        )
        taller = torch.cat([mask, mask[:1]])
        _assert_value_error(
            run(**{mask_argument: taller}),
            "a mask with another batch",
            mask_argument,
            str(tuple(taller.shape)),
            str(batch),
        )


def assert_empty_inputs_raise(
    model: Any, inputs: Inputs, argument: str = "input_ids", *, empty_batch: bool = True
) -> None:
    """An empty ``inputs[argument]`` sequence, and an empty batch, raise a ``ValueError``
    naming the argument and the sizes (instead of empty logits, or a failing reshape).

    For the empty batch every input loses its rows, so the error is the first input's: pass
    ``empty_batch=False`` for a later one, such as an encoder-decoder's ``decoder_input_ids``.
    """
    batch, length = inputs[argument].shape
    no_tokens = {key: value[:, :0] if key == argument else value for key, value in inputs.items()}
    no_rows = {key: value[:0] for key, value in inputs.items()}
    with torch.no_grad():
        _assert_value_error(
            lambda: model(**no_tokens), "an empty sequence", argument, str(batch), "0"
        )
        if empty_batch:
            _assert_value_error(
                lambda: model(**no_rows), "an empty batch", argument, "0", str(length)
            )


def invalid_config_values(
    config: Any, extra_sizes: Sequence[str] = ()
) -> dict[str, tuple[object, ...]]:
    """The values that every standard field ``config`` has must refuse: sizes (and head
    counts) 0 and -1, norm epsilons 0 and -1e-5; ``extra_sizes`` adds a model's own size
    fields. Keys are the names the user writes (GPT-2's ``n_head``, not
    ``num_attention_heads``); use them to parametrize :func:`assert_config_error`."""
    attribute_map = getattr(config, "attribute_map", {})
    bad: dict[str, tuple[object, ...]] = {}
    for name in (*SIZE_FIELDS, *extra_sizes):
        if hasattr(config, name):
            bad[attribute_map.get(name, name)] = (0, -1)
    for name in EPSILON_FIELDS:
        if hasattr(config, name):
            bad[name] = (0.0, -1e-5)
    return bad


def assert_config_error(
    config_class: type,
    valid: Mapping[str, object],
    field: str,
    values: Sequence[object],
    builders: Sequence[Callable[[Any], object]] = (),
) -> None:
    """Each of ``values`` for ``field`` raises a ``ValueError`` naming the field and the value:
    from ``config_class(**valid, field=value)``, and from each of ``builders`` (model classes)
    given a valid config changed to it afterwards, so a model never builds from a config that
    cannot work."""
    for value in values:
        what = f"{config_class.__name__}({field}={value!r})"
        _assert_value_error(
            functools.partial(config_class, **{**valid, field: value}), what, field, str(value)
        )
        for build in builders:
            config = config_class(**valid)
            setattr(config, field, value)
            _assert_value_error(
                functools.partial(build, config), f"{build} from {what}", field, str(value)
            )
