"""Adapters on disk, in peft's format: ``adapter_config.json`` and ``adapter_model.safetensors``.

The weights file holds, for each adapted layer at module path ``<path>``,
``base_model.model.<path>.lora_A.weight`` (r x in) and ``base_model.model.<path>.lora_B.weight``
(out x r), and for each module to save its own state dict under ``base_model.model.<path>.``;
no key names the adapter. That is what ``peft.PeftModel.save_pretrained`` writes and what
``peft.PeftModel.from_pretrained`` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import _apply, _check_new_name, _lora_modules, _plan, _require_adapter
from .config import LoraConfig
from .layers import LoraLinear, ModulesToSave

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # where peft's PeftModel keeps the model it adapts


def save_adapter(
    model: nn.Module, out_dir: str | os.PathLike, adapter_name: str = "default"
) -> Path:
    """Write adapter ``adapter_name`` of ``model`` to ``out_dir`` in peft's format; returns the
    directory. Only the adapter is written (a few MB for a large model), not the base model."""
    config = _require_adapter(model, adapter_name).configs[adapter_name]
    tensors: dict[str, torch.Tensor] = {}
    for name, module in _lora_modules(model):
        if isinstance(module, LoraLinear) and adapter_name in module.lora_A:
            tensors[f"{PREFIX}{name}.lora_A.weight"] = module.lora_A[adapter_name].weight
            tensors[f"{PREFIX}{name}.lora_B.weight"] = module.lora_B[adapter_name].weight
        elif isinstance(module, ModulesToSave) and adapter_name in module.modules_to_save:
            for key, tensor in module.modules_to_save[adapter_name].state_dict().items():
                tensors[f"{PREFIX}{name}.{key}"] = tensor
    # Copies: safetensors refuses tensors that share memory (a tied weight inside a saved module).
    tensors = {key: tensor.detach().cpu().clone().contiguous() for key, tensor in tensors.items()}
    settings = config.to_peft_dict()
    if settings["base_model_name_or_path"] is None:
        settings["base_model_name_or_path"] = getattr(model, "name_or_path", None) or None
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    save_file(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    return directory


def read_config(path: str | os.PathLike) -> LoraConfig:
    """The ``LoraConfig`` of the adapter saved in directory ``path``. A config file that is not
    JSON, or not a LoRA adapter's settings, raises a ``ValueError`` that names the file."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}: not a saved adapter directory")
    try:
        settings = json.loads(file.read_bytes())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{file} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from error
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{file} is not JSON text ({error.reason} at byte {error.start})"
        ) from error
    if not isinstance(settings, dict):
        raise ValueError(
            f"{file} holds a JSON {type(settings).__name__}, not an object of adapter settings"
        )
    try:
        return LoraConfig.from_peft_dict(settings)
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from error


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter's weights file, or an ``OSError`` naming the file and what is
    wrong with it (empty, truncated, not safetensors) instead of safetensors' header error."""
    try:
        return load_file(file)
    except SafetensorError as error:
        raise OSError(_weights_problem(file, error)) from error


def _weights_problem(file: Path, error: SafetensorError) -> str:
    # The header check is core-attention's, beside every scratchformers model; this package
    # itself needs only torch and safetensors, so without core-attention safetensors' own
    # reason is given.
    try:
        from scratchformers.core_attention.files import safetensors_problem
    except ImportError:
        problem = None
    else:
        problem = safetensors_problem(file)
    return problem or f"{file} is not a readable safetensors file ({error})"


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")


def load_adapter(
    model: nn.Module, path: str | os.PathLike, adapter_name: str = "default"
) -> nn.Module:
    """Load the adapter saved in directory ``path`` (by :func:`save_adapter` or by peft's
    ``PeftModel.save_pretrained``) into ``model`` as ``adapter_name``, make it the active
    adapter, and return the model (changed in place).

    The model needs no adapter yet: the layers are injected as the adapter's config says. As
    peft does, a ``modules_to_save`` entry that names no module of this model is passed over,
    and a ``target_modules`` list may hold names this model lacks as long as some match. A
    weight the file lacks or has in excess, or of a shape the layer does not take, raises and
    leaves the model unchanged; so do an ``adapter_config.json`` that is not JSON (a
    ``ValueError`` naming the file, line and column) and a damaged
    ``adapter_model.safetensors`` (an ``OSError`` naming the file and what is wrong with it).
    """
    config = read_config(path)
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path} (only safetensors adapters load)")
    _check_new_name(model, adapter_name)
    plan = _plan(model, config, strict=False)
    saved = {key.removeprefix(PREFIX): tensor for key, tensor in _read_weights(weights).items()}

    expected: dict[str, tuple[str, tuple[int, ...]]] = {}  # key -> (module, shape)
    for name in plan.targets:
        layer = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (name, (config.r, layer.in_features))
        expected[f"{name}.lora_B.weight"] = (name, (layer.out_features, config.r))
    for name in plan.saved:
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSave):
            module = module.original_module
        for key, tensor in module.state_dict().items():
            expected[f"{name}.{key}"] = (name, tuple(tensor.shape))

    missing = [key for key in expected if key not in saved]
    if missing:
        raise ValueError(
            f"the adapter in {path} lacks weights this model needs for its config: {_shown(missing)}"
        )
    unexpected = [key for key in saved if key not in expected]
    if unexpected:
        raise ValueError(
            f"the adapter in {path} has weights for no module of this {type(model).__name__}: "
            f"{_shown(unexpected)}"
        )
    for key, (name, shape) in expected.items():
        if tuple(saved[key].shape) != shape:
            part = key.removeprefix(f"{name}.")
            raise ValueError(
                f"the adapter does not fit layer {name}: its {part} has shape "
                f"{tuple(saved[key].shape)}, the layer needs {shape} (r={config.r})"
            )

    _apply(model, config, adapter_name, plan)
    with torch.no_grad():
        for name in plan.targets:
            layer = model.get_submodule(name)
            layer.lora_A[adapter_name].weight.copy_(saved[f"{name}.lora_A.weight"])
            layer.lora_B[adapter_name].weight.copy_(saved[f"{name}.lora_B.weight"])
    for name in plan.saved:
        trained = model.get_submodule(name).modules_to_save[adapter_name]
        prefix = f"{name}."
        trained.load_state_dict(
            {key.removeprefix(prefix): t for key, t in saved.items() if key.startswith(prefix)}
        )
    return model
