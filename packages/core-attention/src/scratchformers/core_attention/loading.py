"""``from_pretrained`` with errors that name their cause: the file, the tensor, the config field.

transformers' own loader answers a damaged weights file with safetensors' "Error while
deserializing header: incomplete metadata", and a weight whose shape the config does not give
with "You set `ignore_mismatched_sizes` to `False`, thus raising an error. For details look at
the above report!", the tensor named only in a logged table. A model class that inherits
:class:`ChecksCheckpoints` before ``PreTrainedModel`` loads through :func:`load_checked`
instead, which keeps transformers' loader and every one of its arguments, and

* checks a local folder's weights before loading (:func:`~.files.check_weight_files`): an
  empty, truncated or foreign ``model.safetensors``, or shard, raises an ``OSError`` naming
  the file and what is wrong with it; a file it could not check first (in the Hub cache) that
  safetensors refuses raises an ``OSError`` naming the checkpoint and safetensors' reason;
* raises a ``ValueError`` for weights whose shapes differ from the model's, naming the file,
  each tensor (the model's name for it), both shapes, the config fields whose values give the
  differing dimension, and the size fields that the checkpoint's config.json lacks, for which
  the class defaults were used. ``ignore_mismatched_sizes=True`` still starts such weights
  fresh, as in transformers.

``ConvertsCheckpoints`` (:mod:`.interop`) builds on it, so every scratchformers model checks the
same way, our own folders and transformers' converted ones alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils.hub import DownloadKwargs

from .files import SAFE_WEIGHTS_INDEX_NAME, check_safetensors, check_weight_files
from .hub import CarriesModelCard, remember_card_source

# How many mismatched weights a message describes in full (the rest are counted).
_SHOWN = 3
_LISTED = 8  # and how many more it names
# Config fields that hold integers but no size (label2id maps names to class indices).
_NOT_SIZES = ("id2label", "label2id", "task_specific_params")


class ChecksCheckpoints(CarriesModelCard):
    """Mixed into a model class, before ``PreTrainedModel``: its ``from_pretrained`` checks the
    weight files first and names the file, tensor, shapes and config fields when they do not
    fit (:func:`load_checked`). Arguments and results are transformers' own. Through
    :class:`~.hub.CarriesModelCard`, a model loaded from one of our folders saves and pushes
    that folder's model card and processor with it."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str] | None,
        *model_args: Any,
        **kwargs: Any,
    ) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
        """transformers' ``from_pretrained``, with the checks of :func:`load_checked`."""
        return load_checked(
            super().from_pretrained,  # type: ignore[misc]
            cls,  # type: ignore[arg-type]
            pretrained_model_name_or_path,
            *model_args,
            **kwargs,
        )

    @classmethod
    def checkpoint_config_fields(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], kwargs: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The config fields that the checkpoint's config.json gives this class's config, or
        ``None`` where the config did not come from it (a config was passed). Read only
        to explain a mismatch; ``ConvertsCheckpoints`` maps transformers' fields to ours."""
        config = kwargs.get("config")
        # The Auto classes pass the config they read from this very checkpoint: that counts.
        if config is not None and getattr(config, "name_or_path", None) != str(
            pretrained_model_name_or_path
        ):
            return None
        config, _ = cls.config_class.get_config_dict(  # type: ignore[attr-defined]
            pretrained_model_name_or_path, **download_kwargs(kwargs)
        )
        return config


def download_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that say where its files are (``subfolder``,
    ``revision``, ``cache_dir``, ...), for reading one of them as transformers would."""
    return {name: kwargs[name] for name in DownloadKwargs.__annotations__ if name in kwargs}


def load_checked(
    load: Callable[..., Any],
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *model_args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``load(pretrained_model_name_or_path, *model_args, **kwargs)`` (transformers'
    ``from_pretrained`` for ``cls``), with the weight files of a local folder checked first and
    errors that name their cause (see the module docstring)."""
    files = _local_weight_files(pretrained_model_name_or_path, kwargs)
    where = (
        "the state_dict given"
        if pretrained_model_name_or_path is None
        else f"the checkpoint {pretrained_model_name_or_path}"
    )
    wants_info = kwargs.pop("output_loading_info", False)
    ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
    try:
        # Mismatched weights are let through, to be named below rather than in a logged table.
        model, info = load(
            pretrained_model_name_or_path,
            *model_args,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    except SafetensorError as error:
        raise OSError(
            f"{where} has a weights file that is not readable safetensors ({error}); if it is a "
            "download in the Hugging Face cache, pass force_download=True to fetch it again"
        ) from error
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda entry: entry[0])
    if mismatched and not ignore_mismatched:
        defaulted = _defaulted_fields(cls, model.config, pretrained_model_name_or_path, kwargs)
        raise ValueError(_mismatch_message(where, cls, model.config, mismatched, files, *defaulted))
    remember_card_source(model, pretrained_model_name_or_path, kwargs)
    return (model, info) if wants_info else model


def _local_weight_files(
    pretrained_model_name_or_path: str | os.PathLike[str] | None, kwargs: Mapping[str, Any]
) -> list[Path]:
    """Check the safetensors weights that the load will read from a local folder (or a local
    file), and return them; ``[]`` for a Hub id, whose files safetensors checks as it reads."""
    if pretrained_model_name_or_path is None or kwargs.get("use_safetensors") is False:
        return []
    if kwargs.get("variant") or kwargs.get("gguf_file"):
        return []  # files of other names: safetensors' own error, named with the checkpoint
    path = Path(pretrained_model_name_or_path)
    if path.is_dir():
        return check_weight_files(path / kwargs.get("subfolder", ""))
    if path.is_file() and path.suffix == ".safetensors":
        check_safetensors(path)
        return [path]
    return []


def _size_fields(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, int]]:
    """Every field of a config's dictionary that can be a size (a positive integer, not a
    token id), with its dotted name (``text_config.vocab_size`` in a composite config)."""
    for name, value in config.items():
        if name in _NOT_SIZES:
            continue
        if isinstance(value, Mapping):
            yield from _size_fields(value, f"{prefix}{name}.")
        elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if name.endswith("_id"):  # token ids
                continue
            yield f"{prefix}{name}", value


def _is_absent(name: str, given: Mapping[str, Any]) -> bool:
    """Whether the dotted field ``name`` is missing from the fields ``given``."""
    *parents, field = name.split(".")
    for parent in parents:
        given = given.get(parent)
        if not isinstance(given, Mapping):
            return True
    return field not in given


def _defaulted_fields(
    cls: type[PreTrainedModel],
    config: PreTrainedConfig,
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    kwargs: Mapping[str, Any],
) -> tuple[str, list[tuple[str, int]]]:
    """The checkpoint's config.json (as a message names it) and the size fields of ``config``
    that it does not set, so the class defaults were used (none where the config did not come
    from a config.json, or a keyword set the field)."""
    if pretrained_model_name_or_path is None:
        return "config.json", []
    folder = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
    config_json = (
        str(folder / "config.json")
        if folder.is_dir()
        else f"the config.json of {pretrained_model_name_or_path}"
    )
    read_fields = getattr(cls, "checkpoint_config_fields", None)
    try:
        given = read_fields(pretrained_model_name_or_path, kwargs) if read_fields else None
    except (OSError, ValueError):  # no readable config.json: nothing to say about it
        given = None
    if given is None:
        return config_json, []
    defaulted = [
        (name, value)
        for name, value in _size_fields(config.to_dict())
        if name not in kwargs and _is_absent(name, given)
    ]
    return config_json, defaulted


def _mismatch_message(
    where: str,
    cls: type[PreTrainedModel],
    config: PreTrainedConfig,
    mismatched: Sequence[tuple[str, Sequence[int], Sequence[int]]],
    files: Sequence[Path],
    config_json: str,
    defaulted: Sequence[tuple[str, int]],
) -> str:
    """One line: each mismatched weight, with both shapes and the config fields whose value
    is each differing dimension; and where a dimension is no field's value (derived from
    several), the size fields that config.json does not set."""
    # config.to_dict() spells fields as config.json does: the names the user wrote (GPT-2's
    # n_embd), not the standard aliases of the attribute_map.
    sizes = list(_size_fields(config.to_dict()))
    parts, unexplained = [], False
    for name, theirs, ours in mismatched[:_SHOWN]:
        theirs, ours = tuple(theirs), tuple(ours)
        reasons = []
        for axis, (checkpoint_size, model_size) in enumerate(zip(theirs, ours, strict=False)):
            if checkpoint_size == model_size:
                continue
            fields = [
                f"{field}={value}"
                + (
                    f" (not in {config_json}: the class default)"
                    if field in dict(defaulted)
                    else ""
                )
                for field, value in sizes
                if value == model_size
            ]
            unexplained |= not fields
            source = " or ".join(fields) if fields else f"the config (no field is {model_size})"
            reasons.append(f"dimension {axis} is {model_size} from {source}")
        if len(theirs) != len(ours):
            reasons.append(f"{len(theirs)} dimensions in the checkpoint, {len(ours)} in the model")
        file = _file_holding(name, files) or where
        parts.append(
            f"{name} has shape {theirs} in {file}, the model's is {ours} ({'; '.join(reasons)})"
        )
    if len(mismatched) > _SHOWN:
        rest = [entry[0] for entry in mismatched[_SHOWN:]]
        listed = ", ".join(rest[:_LISTED]) + (", ..." if len(rest) > _LISTED else "")
        parts.append(f"and {len(rest)} more: {listed}")
    count = "1 weight does" if len(mismatched) == 1 else f"{len(mismatched)} weights do"
    message = (
        f"{where} does not fit this {cls.__name__}: {count} not have the shape its config "
        f"gives: {'; '.join(parts)}"
    )
    if unexplained and defaulted:
        unset = ", ".join(
            f"{field} (the class default {value} was used)" for field, value in defaulted
        )
        message += f". {config_json} does not set {unset}"
    return (
        f"{message}. Make the config match the checkpoint, or pass "
        "ignore_mismatched_sizes=True to start these weights from their initial values"
    )


def _file_holding(name: str, files: Sequence[Path]) -> Path | None:
    """The local weights file that holds the model's weight ``name``: the only one, or the
    shard that the index lists it in (a prefixed or converted key matches by its end, else the
    index is named); ``None`` when there are no local files."""
    if len(files) <= 1:
        return files[0] if files else None
    index = files[0].parent / SAFE_WEIGHTS_INDEX_NAME
    for key, shard in json.loads(index.read_bytes())["weight_map"].items():
        if key == name or key.endswith(f".{name}") or name.endswith(f".{key}"):
            return index.parent / shard
    return index
