"""scratchformers.lora: low-rank adaptation (LoRA) written from scratch for any torch model built
of ``nn.Linear`` layers, saved and loaded in peft's format.

Needs only torch and safetensors.
"""

from .adapters import (
    active_adapter,
    adapter_names,
    adapters_disabled,
    disable_adapters,
    enable_adapters,
    inject,
    merge,
    merge_and_unload,
    set_adapter,
    summary,
    trainable_parameters,
    unmerge,
)
from .checkpoint import load_adapter, read_config, save_adapter
from .config import LoraConfig
from .layers import LoraLinear, ModulesToSave

__all__ = [
    "LoraConfig",
    "LoraLinear",
    "ModulesToSave",
    "active_adapter",
    "adapter_names",
    "adapters_disabled",
    "disable_adapters",
    "enable_adapters",
    "inject",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "read_config",
    "save_adapter",
    "set_adapter",
    "summary",
    "trainable_parameters",
    "unmerge",
]
