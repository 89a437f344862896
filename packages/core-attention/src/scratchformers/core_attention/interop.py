"""Loading transformers' checkpoints into mirrored models, and writing them back.

Every mirrored package (gpt2, bert, vit, ...) has the same interop shape:

* ``OurModel.from_pretrained(path)`` takes our own directories *and* directories written by
  the matching transformers class (or a hub id of one), converting the latter on load;
* ``export_to_transformers(model, out_dir)`` writes a directory the transformers class loads.

Both are here, once. A package states only what differs, in a :class:`CheckpointConverter`
(its ``convert.py``): the transformers ``model_type`` and classes it mirrors, our config
class, config fields whose names differ, and the weight renames and layout changes, in
transformers' own vocabulary (``WeightRenaming``, ``WeightConverter`` with ``Transpose``,
``Chunk``, ...); a subclass adds what no field states (a refusal to export, a config that
needs more than renames). Its model classes inherit :class:`ConvertsCheckpoints` before
``PreTrainedModel`` and list their converters in ``checkpoint_converters``; the converter
itself maps configs (``config_from_transformers``) and in-memory state dicts
(``state_from_transformers``, ``state_to_transformers``) and writes exports (``export``).
Why the rest is built the way it is:

* Both kinds of directory load through transformers' own ``from_pretrained``, so that every
  one of its arguments (``dtype``, ``device_map``, ``subfolder``, ``revision``, sharded files,
  ``output_loading_info``, ...) behaves as it does for transformers' classes. For their
  checkpoints, transformers' loader applies the package's conversions while it reads the
  tensors; nothing here opens a weight file. Before it does, ``ConvertsCheckpoints``'s base,
  :class:`~.loading.ChecksCheckpoints`, checks the weight files' headers and turns a weight of
  another shape into an error that names the tensor and the config field (for every model,
  basicformer's too).
* The conversions apply to loads of *their* checkpoints only. transformers looks conversions up
  by ``config.model_type`` and reverts them in ``save_pretrained``: registered under our model
  type they would write every save of ours in their layout, and transpose the (possibly square)
  MLP matrices of our own checkpoints on load. So they are registered under a key of their own,
  ``"<our model_type><-<their model_type>"``, which only the config of a converted load carries,
  and the loaded model forgets them: our saves stay in our layout.
* Whose layout a directory holds is read from its config.json (``model_type``), never guessed
  from tensor names or shapes.
* From their checkpoints only safetensors are read: pickled ``.bin`` weights are refused, never
  unpickled. A converted load that leaves a weight unfilled raises, naming it, where
  transformers would warn and leave random values; only the weights of a task head that the
  converter names as fresh (a classifier on a pretrained body) start from their initial values.
* A converter names our classes by their names, not the classes themselves, so that
  ``convert.py`` need not import ``modeling.py``, which imports the converters for
  ``checkpoint_converters``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightTransform, revert_weight_conversion
from transformers.utils import logging

from .loading import ChecksCheckpoints, download_kwargs

logger = logging.get_logger(__name__)

StateDict = dict[str, torch.Tensor]

# config.json entries that describe the file rather than the model.
_BOOKKEEPING = ("model_type", "architectures", "transformers_version", "_name_or_path")
# from_pretrained() arguments that are config attributes too, but belong to the loader:
# it sets them on the config itself (dtype="auto" follows the weights).
_LOADER_OWNED = ("dtype", "torch_dtype")


@dataclass(frozen=True)
class CheckpointConverter:
    """How one architecture's checkpoints map between transformers and a mirrored package.

    Attributes:
        transformers_model_type: the ``model_type`` in the config.json of their checkpoints;
            a directory whose config.json says so is converted on load.
        config_class: our config class, which a converted load's config is built as.
        transformers_classes: the name of our model class -> their class, for the export (a
            subclass of ours exports as ours does). Empty for a layout we only read.
        weight_conversions: their names and layouts -> ours, as transformers' loader applies
            them: ``WeightRenaming`` and ``WeightConverter`` (with ``Transpose``, ``Chunk``,
            ...), patterns matched anywhere in a key, so that one list serves files with and
            without the base model's prefix. The export applies them in reverse.
        config_renames: their config field -> ours, for fields whose names differ (a
            subclass overrides ``fields_from_transformers`` and ``fields_to_transformers``
            where more than names differ).
        fixed_fields: our config fields that theirs lacks, with the one value their class
            computes: a converted load sets them so, the export leaves them out of their
            config and refuses a model with another value.
        only_our_fields: keep only the fields our config class declares from their config,
            for a layout whose config describes more than our model does (a masked
            autoencoder's decoder, say) or options that only their training reads.
        ignore_unexpected: regular expressions for keys of their checkpoints that are not
            weights (old buffers, say): left out of the loading info ``from_pretrained``
            returns. transformers' load report, logged during the load, still lists them; a
            model class's ``_keys_to_ignore_on_load_unexpected`` silences that too.
        fresh_heads: regular expressions for weights of ours that a task head adds on top of
            what their checkpoint holds (a classifier, or a pooler that their class lacks):
            a converted load leaves them at their initial values, as transformers does when
            fine-tuning starts from a pretrained body, and logs their names. Any other weight
            that a checkpoint leaves unfilled raises.
    """

    transformers_model_type: str
    config_class: type[PreTrainedConfig]
    transformers_classes: Mapping[str, type[PreTrainedModel]]
    weight_conversions: Sequence[WeightTransform]
    config_renames: Mapping[str, str] = field(default_factory=dict)
    fixed_fields: Mapping[str, Any] = field(default_factory=dict)
    only_our_fields: bool = False
    ignore_unexpected: Sequence[str] = ()
    fresh_heads: Sequence[str] = ()

    def mirrors(self, model_class: type[PreTrainedModel]) -> bool:
        """Whether ``model_class`` (or a class it derives from) has a transformers class here."""
        return any(klass.__name__ in self.transformers_classes for klass in model_class.__mro__)

    def transformers_class(self, model_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
        """The transformers class that ``model_class`` mirrors."""
        for klass in model_class.__mro__:
            if klass.__name__ in self.transformers_classes:
                return self.transformers_classes[klass.__name__]
        raise TypeError(f"{model_class.__name__} mirrors no {self.transformers_model_type} class")

    def fields_from_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Their config.json fields -> ours (the hook a subclass overrides)."""
        fields = _renamed(config, self.config_renames)
        if self.only_our_fields:
            ours = {f.name for f in dataclasses.fields(self.config_class)}
            ours |= set(PreTrainedConfig().to_dict())
            fields = {name: value for name, value in fields.items() if name in ours}
        return fields | dict(self.fixed_fields)

    def fields_to_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Our config fields -> theirs (the hook a subclass overrides)."""
        fields = _renamed(config, {ours: theirs for theirs, ours in self.config_renames.items()})
        return {name: value for name, value in fields.items() if name not in self.fixed_fields}

    def config_from_transformers(
        self, config: Mapping[str, Any], **overrides: Any
    ) -> PreTrainedConfig:
        """Our config from their config.json's fields, with ``overrides`` of our fields."""
        return self.config_class.from_dict(self.fields_from_transformers(config), **overrides)

    def state_from_transformers(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        """Their state dict in our names and layouts (in memory)."""
        return _convert_state_dict(state, self.weight_conversions)

    def state_to_transformers(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        """Our state dict in their names and layouts (in memory)."""
        return _convert_state_dict(state, self.weight_conversions, reverse=True)

    def check_export(self, model: PreTrainedModel) -> None:
        """Raise a ``ValueError`` naming the reason if their class cannot compute what
        ``model`` computes. A subclass adds its own reasons to the ``fixed_fields`` check."""
        differing = [
            f"{name}={value!r} (not {getattr(model.config, name)!r})"
            for name, value in self.fixed_fields.items()
            if getattr(model.config, name) != value
        ]
        if differing:
            raise ValueError(
                f"transformers' {self.transformers_model_type} only computes "
                + " and ".join(differing)
            )

    def export(self, model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``model`` as a directory that the transformers class it mirrors loads.

        Their model is built by transformers' loader from our weights, converted back to their
        layout, and must come out complete: a weight the conversion misses, or one left over,
        raises rather than being saved at random.
        """
        their_class = self.transformers_class(type(model))
        self.check_export(model)
        config = their_class.config_class.from_dict(
            self.fields_to_transformers(model.config.to_dict())
        )
        state = self.state_to_transformers(
            {name: tensor.detach() for name, tensor in model.state_dict().items()}
        )
        theirs, info = their_class.from_pretrained(
            None, config=config, state_dict=state, dtype=model.dtype, output_loading_info=True
        )
        if info["missing_keys"] or info["unexpected_keys"]:
            raise ValueError(
                f"export to {their_class.__name__} failed to fill "
                f"{sorted(info['missing_keys'])[:8]}; left over {sorted(info['unexpected_keys'])[:8]}"
            )
        out_dir = Path(out_dir)
        theirs.save_pretrained(out_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out_dir)
        return out_dir


def _renamed(config: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    # A composite config (CLIP's text_config, vision_config) names its parts' classes too:
    # each side builds its parts with its own.
    return {
        renames.get(name, name): _without_bookkeeping(value)
        if isinstance(value, Mapping)
        else value
        for name, value in config.items()
        if name not in _BOOKKEEPING
    }


def _without_bookkeeping(config: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in config.items() if name not in _BOOKKEEPING}


class ConvertsCheckpoints(ChecksCheckpoints):
    """Mixed into a mirrored model class, before ``PreTrainedModel``: its ``from_pretrained``
    loads our checkpoints, and transformers' ones in the layout of any of
    ``checkpoint_converters``, converted on load (:func:`from_pretrained_or_convert`). Both go
    through :class:`~.loading.ChecksCheckpoints`: damaged weight files and weights of other
    shapes raise errors that name the file, the tensor and the config field."""

    checkpoint_converters: ClassVar[Sequence[CheckpointConverter]] = ()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str] | None,
        *model_args: Any,
        **kwargs: Any,
    ) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
        """Load our checkpoints, or transformers' ones in a layout this class has a converter
        for (converted on load; hub ids too). Arguments as in transformers' own."""
        return from_pretrained_or_convert(
            cls,  # type: ignore[arg-type]
            ConvertsCheckpoints,  # type: ignore[arg-type]
            pretrained_model_name_or_path,
            cls.checkpoint_converters,
            *model_args,
            **kwargs,
        )

    @classmethod
    def checkpoint_config_fields(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], kwargs: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The config fields that the checkpoint's config.json gives; for transformers'
        layout, their fields as the converter maps them to ours (renamed, fixed fields
        added), since a converted load builds our config from exactly those."""
        # A converted load always passes the config it built: look past it to config.json.
        without_config = {name: value for name, value in kwargs.items() if name != "config"}
        converter, checkpoint = _converter_for(
            cls,  # type: ignore[arg-type]
            pretrained_model_name_or_path,
            cls.checkpoint_converters,
            without_config,
        )
        if converter is None:
            return super().checkpoint_config_fields(pretrained_model_name_or_path, kwargs)
        return converter.fields_from_transformers(checkpoint)


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that the transformers class it mirrors loads with
    ``from_pretrained``, with no missing or unexpected keys and the same outputs.

    The converter is the first of the class's ``checkpoint_converters`` that mirrors it and
    takes the model (encdec's BART or Marian, by the model's options); if none takes it, the
    error names each one's reason.
    """
    model_class = type(model)
    converters = [
        converter
        for converter in getattr(model_class, "checkpoint_converters", ())
        if converter.mirrors(model_class)
    ]
    if not converters:
        raise TypeError(f"{model_class.__name__} mirrors no transformers class")
    refusals = []
    for converter in converters:
        try:
            converter.check_export(model)
        except ValueError as refusal:
            refusals.append(f"{refusal}")
            continue
        return converter.export(model, out_dir)
    raise ValueError(
        f"export_to_transformers cannot write this {model_class.__name__}: "
        + "; ".join(dict.fromkeys(refusals))
    )


def conversion_key(model_class: type[PreTrainedModel], converter: CheckpointConverter) -> str:
    """The ``model_type`` under which ``converter``'s conversions are registered with
    transformers, and which the config of a converted load of ``model_class`` carries."""
    return f"{model_class.config_class.model_type}<-{converter.transformers_model_type}"


def from_pretrained_or_convert(
    cls: type[PreTrainedModel],
    base_class: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    converters: CheckpointConverter | Sequence[CheckpointConverter],
    *model_args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """The ``from_pretrained`` of a mirrored model class ``cls``.

    ``base_class`` is the class whose ``from_pretrained`` calls this (``super()`` of it is
    :class:`~.loading.ChecksCheckpoints`, which checks the files and calls transformers').
    Our own checkpoints go to that loader untouched; a checkpoint whose config.json has the
    ``model_type`` of one of ``converters`` goes there too, with that converter's
    conversions, our config built from theirs, and keywords naming config fields applied to it
    (unknown keywords still fail, as in transformers).
    """
    load = super(base_class, cls).from_pretrained
    converter, checkpoint = _converter_for(cls, pretrained_model_name_or_path, converters, kwargs)
    if converter is None:
        return load(pretrained_model_name_or_path, *model_args, **kwargs)

    if kwargs.get("use_safetensors") is False:
        raise ValueError("a transformers checkpoint is converted from safetensors only")
    kwargs["use_safetensors"] = True  # refuses pickled .bin weights rather than unpickling them
    config = kwargs.pop("config", None)
    if not isinstance(config, PreTrainedConfig):
        if config is not None:
            checkpoint, _ = cls.config_class.get_config_dict(config, **download_kwargs(kwargs))
        config = _config_from_transformers(converter, checkpoint, kwargs)
    config = copy.deepcopy(config)  # the caller's config object stays as it was given
    config.model_type = conversion_key(cls, converter)
    register_checkpoint_conversion_mapping(
        config.model_type, list(converter.weight_conversions), overwrite=True
    )
    wants_info = kwargs.pop("output_loading_info", False)
    model, info = load(
        pretrained_model_name_or_path,
        *model_args,
        config=config,
        output_loading_info=True,
        **kwargs,
    )
    del model.config.model_type  # the key only routed this load: back to our class's
    # transformers would revert the conversions in save_pretrained (its GGUF loader drops them
    # the same way): our saves stay in our layout.
    model._weight_conversions = None

    if converter.ignore_unexpected:
        ignored = re.compile("|".join(converter.ignore_unexpected))
        info["unexpected_keys"] = {k for k in info["unexpected_keys"] if not ignored.search(k)}
    fresh = _fresh_head_weights(info["missing_keys"], converter.fresh_heads)
    if fresh:
        logger.warning(
            "%s: %d weights are new, not in %s, and start from their initial values "
            "(train them before use): %s",
            cls.__name__,
            len(fresh),
            pretrained_model_name_or_path,
            fresh,
        )
    missing = sorted(set(info["missing_keys"]) - set(fresh))
    if missing:
        raise ValueError(
            f"the checkpoint {pretrained_model_name_or_path} does not fill {len(missing)} weights "
            f"of {cls.__name__}: {missing[:8]}"
        )
    return (model, info) if wants_info else model


def _fresh_head_weights(missing: Sequence[str], fresh_heads: Sequence[str]) -> list[str]:
    if not fresh_heads:
        return []
    pattern = re.compile("|".join(fresh_heads))
    return sorted(key for key in missing if pattern.search(key))


def _converter_for(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    converters: CheckpointConverter | Sequence[CheckpointConverter],
    kwargs: Mapping[str, Any],
) -> tuple[CheckpointConverter | None, dict[str, Any]]:
    """The converter for the checkpoint's layout (``None`` for ours), and its config.json,
    read as transformers reads it (local, cached or from the hub; ``subfolder``,
    ``revision``, ...)."""
    if pretrained_model_name_or_path is None:
        return None, {}
    try:
        checkpoint, _ = cls.config_class.get_config_dict(
            pretrained_model_name_or_path, **download_kwargs(kwargs)
        )
    except OSError:
        if not isinstance(kwargs.get("config"), PreTrainedConfig):
            raise
        return None, {}  # next to a config object transformers needs no config.json: ours
    if isinstance(converters, CheckpointConverter):
        converters = (converters,)
    by_type = {converter.transformers_model_type: converter for converter in converters}
    return by_type.get(checkpoint.get("model_type")), checkpoint


def _config_from_transformers(
    converter: CheckpointConverter, checkpoint: Mapping[str, Any], kwargs: dict[str, Any]
) -> PreTrainedConfig:
    """Our config from their config.json, with the keywords that name config attributes
    popped from ``kwargs`` and applied, as transformers' ``from_pretrained`` applies them to a
    config it reads itself. The other keywords stay for the loader (an unknown one fails there,
    in the model's ``__init__``)."""
    config = converter.config_from_transformers(checkpoint)
    overrides = {
        name: kwargs.pop(name)
        for name in list(kwargs)
        if hasattr(config, name) and name not in _LOADER_OWNED
    }
    return converter.config_from_transformers(checkpoint, **overrides) if overrides else config


def _convert_state_dict(
    state: Mapping[str, torch.Tensor],
    weight_conversions: Sequence[WeightTransform],
    *,
    reverse: bool = False,
) -> StateDict:
    """Apply ``weight_conversions`` (their layout -> ours) to an in-memory state dict, or with
    ``reverse`` undo them (ours -> theirs), with the function transformers' ``save_pretrained``
    writes an original layout with."""
    transforms = copy.deepcopy(list(weight_conversions))
    if not reverse:
        # revert_weight_conversion undoes what it is given: give it the undoing of ours.
        transforms = [transform.reverse_transform() for transform in reversed(transforms)]
    # It reads nothing from the model but these two attributes.
    holder = SimpleNamespace(_weight_conversions=transforms, config=None)
    return revert_weight_conversion(holder, dict(state))
