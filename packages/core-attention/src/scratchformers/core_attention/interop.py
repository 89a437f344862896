"""Loading transformers' checkpoints into mirrored models, and writing them back.

Every mirrored package (gpt2, bert-mlm, vit, ...) has the same interop shape:

* ``OurModel.from_pretrained(path)`` takes our own directories *and* directories written by
  the matching transformers class (or a hub id of one), converting the latter on load;
* ``export_to_transformers(model, out_dir)`` writes a directory the transformers class loads.

What differs per architecture is small: the transformers ``model_type`` it mirrors, how its
config maps to ours, and how parameter names and layouts map. A package states those in a
:class:`CheckpointConverter`; this module does the rest. Only safetensors are read: a
checkpoint that has nothing but pickled ``.bin`` weights is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from transformers import GenerationConfig, PreTrainedConfig, PreTrainedModel

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CheckpointConverter:
    """How one architecture maps between transformers' checkpoints and ours.

    Attributes:
        transformers_model_type: the ``model_type`` in the config.json of their checkpoints.
        transformers_model_class: their model class (used by the export).
        config_from_transformers: their config dict -> our config object.
        config_to_transformers: our config -> their config object.
        state_from_transformers: their state dict -> ours (names and layouts).
        state_to_transformers: ours -> theirs.
    """

    transformers_model_type: str
    transformers_model_class: type[PreTrainedModel]
    config_from_transformers: Callable[[dict[str, Any]], PreTrainedConfig]
    config_to_transformers: Callable[[PreTrainedConfig], PreTrainedConfig]
    state_from_transformers: Callable[[StateDict], StateDict]
    state_to_transformers: Callable[[StateDict], StateDict]


def checkpoint_dir(name_or_path: str | os.PathLike[str], **hub_kwargs: Any) -> Path:
    """A local checkpoint directory: ``name_or_path`` itself, or a hub repo fetched (config,
    safetensors weights and tokenizer files only) into the Hugging Face cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name_or_path} is not a checkpoint directory")
    allowed = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"]
    return Path(snapshot_download(str(name_or_path), allow_patterns=allowed, **hub_kwargs))


def read_config(directory: Path) -> dict[str, Any]:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json, so it is not a model checkpoint")
    return json.loads(config_file.read_text())


def read_safetensors(directory: Path) -> StateDict:
    """All weights of a checkpoint directory, from one file or from a sharded index."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: StateDict = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    if list(directory.glob("*.bin")):
        raise ValueError(
            f"{directory} holds only pickled .bin weights; scratchformers reads safetensors only "
            "(convert them with transformers: load the model there and save_pretrained it again)"
        )
    raise FileNotFoundError(f"{directory} has no model.safetensors")


def is_transformers_checkpoint(directory: Path, converter: CheckpointConverter) -> bool:
    return read_config(directory).get("model_type") == converter.transformers_model_type


# from_pretrained() arguments that only steer transformers' own loader; nothing to do here.
_LOADER_ONLY = {
    "low_cpu_mem_usage",
    "trust_remote_code",
    "local_files_only",
    "force_download",
    "use_safetensors",
    "_from_auto",
    "_from_pipeline",
}


def load_transformers_checkpoint(
    model_class: type[PreTrainedModel],
    directory: Path,
    converter: CheckpointConverter,
    dtype: torch.dtype | str | None = "auto",
    attn_implementation: str | None = None,
    device_map: str | torch.device | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """Build ``model_class`` from a transformers checkpoint directory, converting on load.

    As transformers' own ``from_pretrained`` does: the weights keep the dtype they were saved
    in (``dtype="auto"``, or pass one), ``attn_implementation`` picks the backend,
    ``device_map`` may name one device, other keywords set config fields, and the checkpoint's
    ``generation_config.json`` comes along. Every parameter of our model must be filled: a
    missing or unexpected weight after the conversion raises, naming the weights, rather than
    leaving random values behind.
    """
    config = converter.config_from_transformers(read_config(directory))
    for name, value in config_overrides.items():
        if name in _LOADER_ONLY:
            continue
        if not hasattr(config, name):
            raise TypeError(f"from_pretrained() got an unexpected argument {name!r}")
        setattr(config, name, value)
    state = converter.state_from_transformers(read_safetensors(directory))
    if dtype in (None, "auto"):
        floating = [t.dtype for t in state.values() if t.is_floating_point()]
        dtype = floating[0] if floating else torch.float32
    model = model_class(config).to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {key for key in missing if _is_tied(model, key)}
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint in {directory} does not fit {model_class.__name__}: "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    if attn_implementation:
        model.set_attn_implementation(attn_implementation)
    if isinstance(device_map, str | torch.device) and device_map != "auto":
        model = model.to(device_map)
    return model.eval()


def from_pretrained_or_convert(
    cls: type[PreTrainedModel],
    base_class: type[PreTrainedModel],
    name_or_path: str | os.PathLike[str],
    converter: CheckpointConverter,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel:
    """The ``from_pretrained`` of a mirrored model class ``cls``.

    Our own directories (and hub ids of them) go to transformers' loader as usual
    (``base_class`` is the class whose ``from_pretrained`` is overridden); a directory of the
    transformers architecture it mirrors is converted with ``converter``.
    """
    hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token") if k in kwargs}
    directory = checkpoint_dir(name_or_path, **hub_kwargs)
    if not is_transformers_checkpoint(directory, converter):
        return super(base_class, cls).from_pretrained(directory, *args, **hub_kwargs, **kwargs)
    if args:
        raise TypeError("a transformers checkpoint is converted from keyword arguments only")
    return load_transformers_checkpoint(cls, directory, converter, **kwargs)


def _is_tied(model: PreTrainedModel, key: str) -> bool:
    # A tied output matrix is the input embedding itself, so the checkpoint holds it once.
    return key in model.get_expanded_tied_weights_keys(all_submodels=True)


def export_checkpoint(
    model: PreTrainedModel, out_dir: str | os.PathLike[str], converter: CheckpointConverter
) -> Path:
    """Write ``model`` as a directory that ``converter.transformers_model_class`` loads."""
    config = converter.config_to_transformers(model.config)
    theirs = converter.transformers_model_class(config)
    state = converter.state_to_transformers(
        {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    )
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    missing = [key for key in missing if not _is_tied(theirs, key)]
    if missing or unexpected:
        raise ValueError(f"export failed to fill {missing[:8]}; left over {unexpected[:8]}")
    out_dir = Path(out_dir)
    theirs.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    return out_dir
