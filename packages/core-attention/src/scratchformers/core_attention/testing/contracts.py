"""The contracts of the forward pass, generation, checkpoints and errors, as plain functions
that assert: see the package's docstring. Generation contracts take encoder-decoders too (a
right-padded source, per-row decoder inputs, rows that stop early)."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, StaticCache
from transformers.cache_utils import EncoderDecoderCache

from ..inputs import EPSILON_FIELDS, SIZE_FIELDS

Inputs = Mapping[str, torch.Tensor]

STATIC = {"cache_implementation": "static"}


# --- inputs and helpers -------------------------------------------------------------------------


def _padded_batch(
    lengths: Sequence[int],
    vocab_size: int,
    first_id: int,
    pad_token_id: int,
    seed: int,
    left: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    rows = [torch.randint(first_id, vocab_size, (n,), generator=generator) for n in lengths]
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        real = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[i, real] = row
        attention_mask[i, real] = 1
    return input_ids, attention_mask, rows


def left_padded_batch(
    lengths: Sequence[int],
    vocab_size: int,
    *,
    first_id: int = 2,
    pad_token_id: int = 0,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Random prompts of ``lengths`` left-padded to the longest (as a decoder's batch is):
    ``(input_ids, attention_mask, rows)``, ``rows`` unpadded. Ids come from
    ``first_id .. vocab_size - 1``, never a special token."""
    return _padded_batch(lengths, vocab_size, first_id, pad_token_id, seed, left=True)


def right_padded_batch(
    lengths: Sequence[int],
    vocab_size: int,
    *,
    first_id: int = 2,
    pad_token_id: int = 0,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """:func:`left_padded_batch`, padded on the right instead (as tokenizers pad an encoder's
    batch); the same ``seed`` draws the same rows."""
    return _padded_batch(lengths, vocab_size, first_id, pad_token_id, seed, left=False)


def _new_tokens(model: Any, output: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The generated part: after the prompt, or after the decoder start token."""
    return output[:, 1:] if model.config.is_encoder_decoder else output[:, input_ids.shape[1] :]


def _assert_generated(
    model: Any, output: torch.Tensor, input_ids: torch.Tensor, options: Mapping[str, Any]
) -> None:
    """One row per prompt, the prompt kept, and exactly ``max_new_tokens`` new tokens where
    nothing can stop generation earlier (no EOS, or ``min_new_tokens`` as many).

    An encoder-decoder's output starts with its decoder prompt: ``decoder_input_ids`` where
    given, else the decoder start token.
    """
    assert output.shape[0] == input_ids.shape[0], (output.shape, input_ids.shape)
    prompt = input_ids
    if model.config.is_encoder_decoder:
        prompt = options.get("decoder_input_ids")
    if prompt is not None:
        assert torch.equal(output[:, : prompt.shape[1]], prompt), "the prompt was changed"
    new = options.get("max_new_tokens")
    if new and (options.get("eos_token_id", -1) is None or options.get("min_new_tokens", 0) >= new):
        width = 1 if prompt is None else prompt.shape[1]
        assert output.shape[1] == width + new, (output.shape, width, new)


def _assert_varied(new_tokens: torch.Tensor) -> None:
    """Untrained but not degenerate: the generated tokens are more than three repeated ids."""
    distinct = len(set(new_tokens.flatten().tolist()))
    assert distinct > 3, f"only {distinct} distinct generated tokens: {new_tokens}"


def _assert_some_rows_padded(model: Any, attention_mask: torch.Tensor | None) -> None:
    """A decoder's batch is left-padded; an encoder-decoder's source may be padded on either
    side (tokenizers pad it on the right), since the encoder reads it whole."""
    assert attention_mask is not None, "the contract is about padding: give an attention mask"
    if model.config.is_encoder_decoder:
        assert bool((attention_mask == 0).any()), "the contract is about padding: pad some rows"
    else:
        assert bool((attention_mask[:, 0] == 0).any()), (
            "the contract is about padding: some rows must start with padding"
        )


def _row_options(options: Mapping[str, Any], i: int) -> dict[str, Any]:
    """``generate()`` options for row ``i`` alone: an encoder-decoder's decoder inputs
    (``decoder_input_ids``, ``decoder_attention_mask``) hold one row per prompt."""
    return {
        key: value[i : i + 1] if key.startswith("decoder_") else value
        for key, value in options.items()
    }


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
    min_std: float | None = None,
) -> float:
    """Same shape, finite, and at most ``atol`` apart over the positions where
    ``attention_mask`` is 1 (everywhere without a mask): outputs at padding positions are
    undefined. With ``min_std``, the expected values (more than one) must spread more than
    that: two tensors of near-constant values match whether the model is right or not.
    Returns the largest absolute difference."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach().float(), expected.detach().float()
    if attention_mask is not None:
        real = attention_mask.bool()
        actual, expected = actual[real], expected[real]
    assert actual.numel() > 0, "nothing to compare"
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all(), f"non-finite {what}s"
    if min_std is not None and expected.numel() > 1:
        spread = float(expected.std())
        assert spread > min_std, f"degenerate {what}s: they spread {spread:.3g} <= {min_std:g}"
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
    _assert_some_rows_padded(model, attention_mask)
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
) -> torch.Tensor:
    """``generate()`` gives the same tokens with the KV cache as without it (recomputing the
    whole sequence every step). Returns the tokens."""
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
    return with_cache


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
) -> torch.Tensor:
    """Each row of a padded batch generates the tokens its prompt generates alone, and a row
    that stops before the others (at an EOS) is padded after it in the batch.

    A decoder's batch is left-padded, an encoder-decoder's source padded on either side;
    ``rows`` are the prompts unpadded. An encoder-decoder's decoder inputs in
    ``generate_kwargs`` (``decoder_input_ids``, ...) hold one row per prompt. Not every row may
    generate the same (not degenerate). Returns the batch's tokens.
    """
    _assert_some_rows_padded(model, attention_mask)
    batched = model.generate(input_ids, attention_mask=attention_mask, **generate_kwargs)
    _assert_generated(model, batched, input_ids, generate_kwargs)
    encoder_decoder = model.config.is_encoder_decoder  # compared whole, start token included
    new = batched if encoder_decoder else batched[:, input_ids.shape[1] :]
    pad = generate_kwargs.get("pad_token_id", model.generation_config.pad_token_id)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **_row_options(generate_kwargs, i))[0]
        alone = alone if encoder_decoder else alone[len(row) :]
        mine, after = new[i, : len(alone)], new[i, len(alone) :]
        assert torch.equal(mine, alone), f"row {i} differs alone: {new[i]} vs {alone}"
        assert after.numel() == 0 or (pad is not None and bool((after == pad).all())), (
            f"row {i} goes on after it ends alone: {new[i]} vs {alone}"
        )
    assert any(not torch.equal(new[0], row) for row in new[1:]), "every row generates the same"
    return batched


def assert_static_cache_matches_dynamic(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """transformers' decoding loop with a ``StaticCache`` (forced by asking for a dict
    output) gives the tokens of the default dynamic cache, and so does a static-cache request
    for the first prompt alone, unpadded (the lean loop, for a model that has it).

    An encoder-decoder's decoder inputs in ``generate_kwargs`` hold one row per prompt.
    Returns the batch's tokens.
    """
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
    first = _row_options(generate_kwargs, 0)
    static = model.generate(single, **STATIC, **first)
    alone = model.generate(single, **first)
    assert torch.equal(static, alone), f"the static cache changed the tokens: {static} {alone}"
    return dynamic


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


def _copy(source: Path, directory: Path, name: str) -> Path:
    """A copy of the checkpoint folder ``source``, as ``directory / name``."""
    copy = directory / name
    shutil.copytree(source, copy)
    return copy


def _save_like(tensors: Mapping[str, torch.Tensor], file: Path, source: Path) -> None:
    """Write ``tensors`` to ``file`` with the metadata of the safetensors file ``source``
    (transformers refuses a file without ``format: pt``)."""
    with safe_open(source, framework="pt") as handle:
        metadata = handle.metadata()
    save_file(dict(tensors), file, metadata=metadata)


def _shard(folder: Path) -> Path:
    """Split ``folder``'s ``model.safetensors`` into two shards with an index, as a sharded
    ``save_pretrained`` writes them; returns the second shard."""
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2]}
    halves["model-00002-of-00002.safetensors"] = names[len(names) // 2 :]
    for shard, keys in halves.items():
        _save_like({key: tensors[key] for key in keys}, folder / shard, weights)
    weight_map = {key: shard for shard, keys in halves.items() for key in keys}
    total = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    weights.unlink()
    return folder / "model-00002-of-00002.safetensors"


def _raised(load: Callable[[], object], expected: type[Exception], what: str) -> str:
    """The message of the ``expected`` error that ``load()`` raises."""
    try:
        load()
    except expected as error:
        return str(error)
    except Exception as error:
        raise AssertionError(
            f"{what}: {type(error).__name__} instead of an {expected.__name__}: {error}"
        ) from error
    raise AssertionError(f"{what}: loaded without an error")


def _assert_names(message: str, what: str, *names: str) -> None:
    missing = [name for name in names if name not in message]
    assert not missing, f"{what}: the error does not name {missing}: {message!r}"


def assert_damaged_checkpoints_raise(
    model: Any,
    directory: str | Path,
    size_field: str = "vocab_size",
    *,
    checkpoint: str | Path | None = None,
) -> None:
    """Damaged copies of a checkpoint raise, on ``type(model).from_pretrained``, an error that
    names the cause, instead of safetensors' "incomplete metadata" or transformers'
    "ignore_mismatched_sizes" report:

    * ``model.safetensors`` empty, cut in half, or not safetensors at all, and one shard of a
      sharded checkpoint cut in half: an ``OSError`` naming the file's full path and the fault
      ("empty", "truncated", "not a safetensors file");
    * the first tensor whose first dimension is ``size_field``'s value (in the checkpoint's
      config.json) made one row shorter: a ``ValueError`` naming the file, the tensor (a name
      of the model's, with that shape), both shapes and ``size_field=value``;
    * ``size_field`` removed from config.json, so that the class default is used and the
      weights do not fit: a ``ValueError`` naming ``size_field=default``, "class default"
      and the config.json.

    ``checkpoint`` is a folder that another writer wrote for ``type(model)`` to load (the
    transformers class it mirrors, ``export_to_transformers``); by default the model's own
    ``save_pretrained`` writes one. ``size_field`` is a top-level config field, spelled alike
    in that folder's config.json and in ``model.config``, whose value is not the class
    default. The copies are made under ``directory``.
    """
    directory = Path(directory)
    load = type(model).from_pretrained
    if checkpoint is None:
        checkpoint = directory / "saved"
        model.save_pretrained(checkpoint)
    checkpoint = Path(checkpoint)

    damages: dict[str, tuple[Callable[[bytes], bytes], str]] = {
        "empty": (lambda data: b"", "is empty"),
        "cut in half": (lambda data: data[: len(data) // 2], "is truncated"),
        "not safetensors": (lambda data: b"<html>not a model</html>\n" * 8, "not a safetensors"),
    }
    for name, (damage, fault) in damages.items():
        weights = _copy(checkpoint, directory, name.replace(" ", "-")) / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        message = _raised(
            functools.partial(load, weights.parent), OSError, f"model.safetensors {name}"
        )
        _assert_names(message, f"model.safetensors {name}", str(weights), fault)
    shard = _shard(_copy(checkpoint, directory, "sharded"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    message = _raised(functools.partial(load, shard.parent), OSError, "a shard cut in half")
    _assert_names(message, "a shard cut in half", str(shard), "is truncated")

    value = json.loads((checkpoint / "config.json").read_text())[size_field]
    default = getattr(type(model.config)(), size_field)
    assert default != value, f"{size_field}={value} is the class default: choose another value"

    weights = _copy(checkpoint, directory, "reshaped") / "model.safetensors"
    tensors = load_file(weights)
    key = next((k for k in sorted(tensors) if tensors[k].shape[:1] == (value,)), None)
    assert key is not None, f"no tensor in {weights} has {size_field}={value} rows"
    stored = tuple(tensors[key].shape)
    tensors[key] = tensors[key][:-1].clone()
    _save_like(tensors, weights, checkpoint / "model.safetensors")
    shorter = (value - 1, *stored[1:])
    message = _raised(functools.partial(load, weights.parent), ValueError, f"{key} one row shorter")
    # The model may name the tensor otherwise (a converted layout), transposed too.
    shapes = {stored, stored[::-1]}
    ours = [k for k, t in model.state_dict().items() if tuple(t.shape) in shapes and k in message]
    assert ours, f"{key} one row shorter: the error names no weight of shape {stored}: {message!r}"
    assert str(shorter) in message or str(shorter[::-1]) in message, (shorter, message)
    _assert_names(message, f"{key} one row shorter", str(weights), f"{size_field}={value}")

    folder = _copy(checkpoint, directory, f"no-{size_field}")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    del config[size_field]
    config_file.write_text(json.dumps(config))
    message = _raised(
        functools.partial(load, folder), ValueError, f"config.json without {size_field}"
    )
    _assert_names(
        message,
        f"config.json without {size_field}",
        f"{size_field}={default}",
        "class default",
        str(config_file),
    )


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
    and in ``inputs[mask_argument]`` (ones when absent): a key too many, a row too many, a
    soft 0.5 and a 2 (masks are 0/1). The same 0/1 mask as bool and as float gives the same
    outputs as the given one.
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
        for bad_value, dtype in ((0.5, torch.float32), (2, torch.long)):
            bad = mask.to(dtype, copy=True)  # never the caller's mask
            bad[0, -1] = bad_value
            what = f"a mask holding {bad_value}"
            _assert_value_error(run(**{mask_argument: bad}), what, mask_argument, str(bad_value))
        expected = _first_output(model, {**inputs, mask_argument: mask})
        for dtype in (torch.bool, torch.float32):
            same = _first_output(model, {**inputs, mask_argument: mask.to(dtype)})
            assert torch.equal(same, expected), f"a {dtype} 0/1 mask changed the outputs"


def _with_last(tensor: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``tensor`` whose last element is ``value``."""
    changed = tensor.flatten().clone()
    changed[-1] = value
    return changed.view(tensor.shape)


def assert_label_errors(
    model: Any, inputs: Inputs, *, limit_name: str = "vocab_size", argument: str = "labels"
) -> None:
    """Labels the loss cannot use raise a ``ValueError`` naming ``argument``, the value or the
    shape and the limit, not torch's "Target 97 is out of bounds" (a device-side assert on a
    GPU) or "Expected input batch_size (14) to match target batch_size (10)".

    ``inputs`` is a valid batch with its labels: integer ids (token ids ``(batch, length)``,
    or class ids ``(batch,)``), below ``model.config.<limit_name>`` (``vocab_size``,
    ``num_labels``), or float targets (regression, multi-label). The valid labels give a
    finite loss, with one of them -100 (ignored) too. Then one thing at a time is changed:
    integer labels get an id of the limit (and more), -1, float dtype; float targets get values
    far outside ``[0, 1]``, which must be taken (they are not ids). Both get labels one
    position (or one row) short: a seq2seq model's ``inputs`` need ``decoder_input_ids`` for
    that, since without them the labels set the decoder's length.
    """
    labels = inputs[argument]

    def run(changed: torch.Tensor) -> Callable[[], Any]:
        return lambda: model(**{**inputs, argument: changed})

    with torch.no_grad():
        assert torch.isfinite(run(labels)().loss), "valid labels give a non-finite loss"
        if labels.is_floating_point():
            far = labels * 50 - 20
            assert torch.isfinite(run(far)().loss), "float targets outside [0, 1] are refused"
        else:
            ignored = _with_last(labels, -100)
            assert torch.isfinite(run(ignored)().loss), "a label of -100 is not ignored"
            limit = getattr(model.config, limit_name)
            for bad_id in (limit, limit + 5, -1):
                bad = _with_last(labels, bad_id)
                what = f"a label of {bad_id}"
                _assert_value_error(run(bad), what, argument, str(bad_id), limit_name)
            # Named by dtype or, where float labels mean multi-label targets, by shape.
            _assert_value_error(run(labels.float()), "float labels", argument)
        short = labels[..., :-1] if labels.dim() > 1 else labels[:-1]
        _assert_value_error(
            run(short),
            "labels of another shape",
            argument,
            str(tuple(short.shape)),
            str(tuple(labels.shape)),
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
