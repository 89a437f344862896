"""Putting adapters into a model and working them: inject, switch, disable, merge, count.

Every function takes the model itself (any ``torch.nn.Module``) and changes it in place; the
model keeps its class, so a transformers model still saves, generates and runs pipelines. The
model's adapters are recorded on it: their configs, the active one, and whether adapters run.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from .config import LoraConfig
from .layers import LoraLinear, ModulesToSave


@dataclass
class _State:
    """What a model with adapters records about them (as ``model._lora_state``)."""

    configs: dict[str, LoraConfig]
    active: str
    enabled: bool = True


@dataclass
class _Plan:
    """Where one adapter goes: the linear layers it adapts and the modules it trains in full."""

    targets: list[str]
    saved: list[str]


def _state(model: nn.Module) -> _State | None:
    return model.__dict__.get("_lora_state")


def _require_state(model: nn.Module) -> _State:
    state = _state(model)
    if state is None:
        raise ValueError(f"this {type(model).__name__} has no LoRA adapter: call inject first")
    return state


def _require_adapter(model: nn.Module, name: str) -> _State:
    state = _require_state(model)
    if name not in state.configs:
        raise ValueError(f"no adapter named {name!r}; this model has {sorted(state.configs)}")
    return state


def _lora_modules(model: nn.Module) -> Iterator[tuple[str, LoraLinear | ModulesToSave]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear | ModulesToSave):
            yield name, module


def _is_merged(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) and m.merged is not None for _, m in _lora_modules(model))


def _candidate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by name, leaving out the root and the inside of LoRA's own modules
    (the A and B layers, the original and the copies of a module to save)."""
    internal = [f"{name}." for name, _ in _lora_modules(model)]
    return {
        name: module
        for name, module in model.named_modules()
        if name and not any(name.startswith(prefix) for prefix in internal)
    }


def _matches_target(target_modules: list[str] | str, name: str) -> bool:
    """peft's rule: a string is a regular expression for the whole name; a list entry is the
    whole name or its last dotted part(s)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == entry or name.endswith(f".{entry}") for entry in target_modules)


def _inside_saved(modules_to_save: list[str], name: str) -> bool:
    """Whether ``name`` is, or lies inside, a module named in ``modules_to_save`` (peft never
    puts a LoRA layer there)."""
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in modules_to_save)


def _some_names(modules: dict[str, nn.Module]) -> str:
    linear = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    leaves = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in linear))
    shown = ", ".join(linear[:4]) + (", ..." if len(linear) > 4 else "")
    return f"its nn.Linear layers are {shown or 'none'} (last parts: {', '.join(leaves[:12])})"


def _plan(model: nn.Module, config: LoraConfig, strict: bool) -> _Plan:
    """Resolve ``config`` against ``model`` without changing it; raises on what cannot work."""
    modules = _candidate_modules(model)
    to_save = config.modules_to_save or []
    saved: list[str] = []
    for name, module in modules.items():
        if not any(name.endswith(entry) for entry in to_save):
            continue
        if any(name.startswith(f"{outer}.") for outer in saved):
            continue  # inside a module already saved in full
        if any(isinstance(inner, LoraLinear) for inner in module.modules()):
            raise ValueError(
                f"modules_to_save names {name}, which holds LoRA layers of another adapter"
            )
        saved.append(name)
    targets = [
        name
        for name in modules
        if _matches_target(config.target_modules, name)
        and not _inside_saved(to_save, name)
        and not any(name == outer or name.startswith(f"{outer}.") for outer in saved)
    ]
    if isinstance(config.target_modules, str):
        unmatched = [] if targets else [config.target_modules]
    else:
        unmatched = [
            entry
            for entry in config.target_modules
            if not any(_matches_target([entry], name) for name in targets)
        ]
    if unmatched and (strict or not targets):
        kind = "regular expression" if isinstance(config.target_modules, str) else "entry"
        raise ValueError(
            f"target_modules {kind} {', '.join(repr(e) for e in unmatched)} matches no module "
            f"of this {type(model).__name__}; {_some_names(modules)}"
        )
    for name in targets:
        module = modules[name]
        if not isinstance(module, nn.Linear) or type(module).forward not in (
            nn.Linear.forward,
            LoraLinear.forward,
        ):
            raise ValueError(
                f"target_modules matched {name} ({type(module).__name__}), which is not an "
                f"nn.Linear; LoRA here adapts nn.Linear layers only: narrow target_modules"
            )
        parent = modules.get(name.rpartition(".")[0]) if "." in name else model
        if isinstance(parent, nn.MultiheadAttention):
            raise ValueError(
                f"{name} is the out_proj of an nn.MultiheadAttention, which reads its weight "
                f"directly, so a LoRA there would change nothing"
            )

    if strict and to_save and not saved:
        raise ValueError(
            f"modules_to_save {to_save} names no module of this {type(model).__name__}; "
            f"its top-level modules are {[n for n in modules if '.' not in n]}"
        )
    return _Plan(targets, saved)


def _check_new_name(model: nn.Module, adapter_name: str) -> None:
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"an adapter name is a non-empty string without '.', got {adapter_name!r}")
    state = _state(model)
    if state is not None and adapter_name in state.configs:
        raise ValueError(
            f"this model has an adapter named {adapter_name!r} already "
            f"(adapters: {sorted(state.configs)}); choose another name"
        )
    if _is_merged(model):
        raise ValueError("this model has a merged adapter: call unmerge(model) first")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def _apply(model: nn.Module, config: LoraConfig, adapter_name: str, plan: _Plan) -> None:
    for name in plan.targets:
        layer = model.get_submodule(name)
        if not isinstance(layer, LoraLinear):
            training = layer.training
            layer = LoraLinear(layer).train(training)
            _replace(model, name, layer)
        layer.add_adapter(adapter_name, config.r, config.scaling, config.lora_dropout)
        layer.train(layer.training)  # the new dropout follows the layer's mode
    for name in plan.saved:
        wrapper = model.get_submodule(name)
        if not isinstance(wrapper, ModulesToSave):
            wrapper = ModulesToSave(wrapper).train(wrapper.training)
            _replace(model, name, wrapper)
        wrapper.add_adapter(adapter_name)
    state = _state(model)
    if state is None:
        state = model.__dict__["_lora_state"] = _State({}, adapter_name)
    state.configs[adapter_name] = config
    model.requires_grad_(False)
    set_adapter(model, adapter_name)
    (enable_adapters if state.enabled else disable_adapters)(model)


def inject(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Add adapter ``adapter_name`` to ``model`` in place, make it the active one, and return
    the model.

    The ``nn.Linear`` layers that ``config.target_modules`` matches become ``LoraLinear``s
    (a fresh adapter changes no output); ``config.modules_to_save`` get a trainable copy. Every
    other parameter is frozen. Raises, changing nothing, when a ``target_modules`` entry
    matches no module, when a match is not an ``nn.Linear``, when no ``modules_to_save`` entry
    names a module, or when the name is taken.
    """
    _check_new_name(model, adapter_name)
    _apply(model, config, adapter_name, _plan(model, config, strict=True))
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make ``adapter_name`` the adapter that runs, and the one that trains: its parameters
    require gradients, those of the other adapters do not."""
    state = _require_adapter(model, adapter_name)
    if _is_merged(model):
        raise ValueError("this model has a merged adapter: call unmerge(model) first")
    for _, module in _lora_modules(model):
        module.active_adapter = adapter_name
        if isinstance(module, LoraLinear):
            owned = [*module.lora_A.items(), *module.lora_B.items()]
        else:
            owned = list(module.modules_to_save.items())
        for name, adapter in owned:
            adapter.requires_grad_(name == adapter_name)
    state.active = adapter_name
    return model


def _set_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    state = _require_state(model)
    if not enabled and _is_merged(model):
        raise ValueError("this model has a merged adapter: call unmerge(model) first")
    for _, module in _lora_modules(model):
        module.adapters_enabled = enabled
    state.enabled = enabled
    return model


def disable_adapters(model: nn.Module) -> nn.Module:
    """Run the base model: no LoRA update, the original of every module to save."""
    return _set_enabled(model, False)


def enable_adapters(model: nn.Module) -> nn.Module:
    """Run the active adapter again after :func:`disable_adapters`."""
    return _set_enabled(model, True)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with adapters_disabled(model): ...`` runs the base model, then restores the state."""
    was_enabled = _require_state(model).enabled
    disable_adapters(model)
    try:
        yield model
    finally:
        if was_enabled:
            enable_adapters(model)


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights (``W += s * B @ A``); the forward then
    skips the LoRA path and costs what the base model costs. :func:`unmerge` takes it out."""
    state = _require_state(model)
    if _is_merged(model):
        raise ValueError("an adapter is merged already: call unmerge(model) first")
    if not state.enabled:
        raise ValueError("adapters are disabled: call enable_adapters(model) before merging")
    layers = [
        (name, module)
        for name, module in _lora_modules(model)
        if isinstance(module, LoraLinear) and state.active in module.lora_A
    ]
    owners: dict[int, list[str]] = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners[id(parameter)].append(name)
    for name, layer in layers:
        sharing = [other for other in owners[id(layer.weight)] if other != f"{name}.weight"]
        if sharing:
            raise ValueError(
                f"cannot merge into {name}: its weight is shared with {', '.join(sharing)} "
                f"(tied weights), which merging would change as well"
            )
    for _, layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take the merged adapter out of the base weights again (``W -= s * B @ A``)."""
    _require_state(model)
    if not _is_merged(model):
        raise ValueError("no adapter is merged into this model")
    for _, module in _lora_modules(model):
        if isinstance(module, LoraLinear) and module.merged is not None:
            module.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """The plain model computing what it computes now: the active adapter merged (unless
    adapters are disabled), every ``LoraLinear`` back to an ``nn.Linear`` and every module to
    save replaced by the copy that runs. All adapters are dropped. In place; returns the model
    (whose ``save_pretrained`` then writes an ordinary checkpoint)."""
    state = _require_state(model)
    if state.enabled and not _is_merged(model):
        merge(model)
    for name, module in list(_lora_modules(model)):
        if isinstance(module, LoraLinear):
            plain = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            _replace(model, name, plain.train(module.training))
        else:
            _replace(model, name, module.current())
    del model.__dict__["_lora_state"]
    return model


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the model's adapters, in the order they were added."""
    state = _state(model)
    return [] if state is None else list(state.configs)


def active_adapter(model: nn.Module) -> str | None:
    """The adapter that runs (and trains), or None for a model without adapters."""
    state = _state(model)
    return None if state is None else state.active


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, each shared parameter counted once (as peft's
    ``get_nb_trainable_parameters``: the total includes the adapters and the copies of the
    modules to save)."""
    parameters = list(model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return trainable, sum(p.numel() for p in parameters)


def summary(model: nn.Module) -> str:
    """A printable account of the model's adapters and its trainable parameters."""
    state = _state(model)
    lines = []
    if state is None:
        lines.append("no LoRA adapter")
    else:
        modules = list(_lora_modules(model))
        for name, config in state.configs.items():
            layers = sum(1 for _, m in modules if isinstance(m, LoraLinear) and name in m.lora_A)
            saved = [
                n for n, m in modules if isinstance(m, ModulesToSave) and name in m.modules_to_save
            ]
            flags = []
            if name == state.active:
                flags.append("active")
                if _is_merged(model):
                    flags.append("merged")
                if not state.enabled:
                    flags.append("disabled")
            lines.append(
                f"adapter {name!r}{' (' + ', '.join(flags) + ')' if flags else ''}: "
                f"r={config.r}, lora_alpha={config.lora_alpha}, scaling={config.scaling:.4g}, "
                f"{layers} LoRA layers, modules_to_save: {saved or 'none'}"
            )
    trainable, total = trainable_parameters(model)
    share = 100 * trainable / total if total else 0.0
    lines.append(
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {share:.4f}"
    )
    return "\n".join(lines)
