"""The adapter's settings, with peft's field names, and their form in ``adapter_config.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

# What ``adapter_config.json`` holds besides our own fields: peft's LoraConfig fields at the
# values that mean plain LoRA, so that peft reads the file as the adapter we trained.
PLAIN_PEFT_FIELDS: dict[str, Any] = {
    "peft_type": "LORA",
    "bias": "none",
    "fan_in_fan_out": False,
    "init_lora_weights": True,
    "inference_mode": True,
    "use_dora": False,
    "lora_bias": False,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "exclude_modules": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "layer_replication": None,
    "revision": None,
}

# Fields of a peft config that say nothing about the numbers an adapter computes.
_METADATA = {
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "peft_version",
    "auto_mapping",
    "layers_pattern",  # only read together with layers_to_transform
    "ensure_weight_tying",
    "megatron_core",
    "qalora_group_size",
}
# init_lora_weights values after which the saved A and B are the whole adapter.
_PLAIN_INITS = (True, False, "gaussian")


@dataclass
class LoraConfig:
    """Which layers get a low-rank update and how large it is, with peft's field names.

    ``r``: the rank of ``A`` (r x in) and ``B`` (out x r). ``lora_alpha``: the update is
    ``B @ A`` times ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``.
    ``target_modules``: the ``nn.Linear`` layers to adapt, matched against module names as
    peft matches them: a list matches a name equal to an entry or ending in ``.<entry>``; a
    string is a regular expression that must match the whole name. ``lora_dropout``: dropout
    on the input of the LoRA path only. ``modules_to_save``: modules (a classifier head, say)
    trained in full next to the adapter and saved with it; a module matches an entry when its
    name ends with the entry, as in peft. ``task_type`` and ``base_model_name_or_path`` are
    only carried into ``adapter_config.json`` (peft picks its model class by ``task_type``).
    """

    r: int = 8
    lora_alpha: float = 8
    target_modules: list[str] | str | None = None
    lora_dropout: float = 0.0
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig: r must be a positive integer, got {self.r!r}")
        if not isinstance(self.lora_alpha, int | float) or isinstance(self.lora_alpha, bool):
            raise ValueError(f"LoraConfig: lora_alpha must be a number, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.target_modules is None or len(self.target_modules) == 0:
            raise ValueError(
                "LoraConfig: target_modules is required: module names such as "
                "['q_proj', 'v_proj'], or a regular expression matching whole names"
            )
        if self.target_modules == "all-linear":
            raise ValueError(
                "LoraConfig: target_modules='all-linear' is peft's shorthand, not expanded here; "
                "list the layers (for example ['q_proj', 'k_proj', 'v_proj', 'o_proj']) or give "
                "a regular expression"
            )
        if not isinstance(self.target_modules, str):
            self.target_modules = _names(self.target_modules, "target_modules")
        if self.modules_to_save is not None:
            self.modules_to_save = _names(self.modules_to_save, "modules_to_save") or None

    @property
    def scaling(self) -> float:
        """The factor on ``B @ A``: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` (rsLoRA)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft_dict(self) -> dict[str, Any]:
        """The ``adapter_config.json`` contents: peft's fields, plain LoRA everywhere else."""
        ours = {field.name: getattr(self, field.name) for field in fields(self)}
        return {**PLAIN_PEFT_FIELDS, **ours}

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any]) -> LoraConfig:
        """Read an ``adapter_config.json``; refuses a peft feature this package does not
        compute (DoRA, rank patterns, LoRA biases, ...) rather than load it wrongly."""
        if data.get("peft_type") != "LORA":
            raise ValueError(f"not a LoRA adapter: peft_type is {data.get('peft_type')!r}")
        ours = {field.name for field in fields(cls)}
        unsupported = {
            key: value
            for key, value in data.items()
            if key not in ours and key not in _METADATA and not _is_plain(key, value)
        }
        if unsupported:
            settings = ", ".join(f"{key}={value!r}" for key, value in sorted(unsupported.items()))
            raise ValueError(
                f"this adapter uses peft features that scratchformers.lora does not implement: "
                f"{settings}; only plain LoRA on nn.Linear layers loads"
            )
        return cls(**{key: value for key, value in data.items() if key in ours})


def _names(entries: Any, field: str) -> list[str]:
    """A list of distinct names in their given order."""
    if isinstance(entries, str) or not all(isinstance(entry, str) for entry in entries):
        raise ValueError(f"LoraConfig: {field} must be a list of names, got {entries!r}")
    return list(dict.fromkeys(entries))


def _is_plain(key: str, value: Any) -> bool:
    """Whether a peft field holds a value that leaves plain LoRA unchanged."""
    if key == "init_lora_weights":
        return value in _PLAIN_INITS
    if key == "bias":
        return value == "none"
    return value in (None, False, {}, [], "")
