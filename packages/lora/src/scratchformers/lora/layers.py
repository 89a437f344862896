"""The two modules an adapter puts into a model: a LoRA linear layer, and the wrapper that keeps
a fully trained copy of a module (``modules_to_save``) next to the original."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class LoraLinear(nn.Linear):
    """An ``nn.Linear`` plus named low-rank updates: ``y = x W^T + b + s * B(A(dropout(x)))``.

    It takes over the frozen ``weight`` and ``bias`` of the layer it replaces (the same
    Parameters, so weight tying and the state-dict names ``<layer>.weight`` / ``<layer>.bias``
    stay as they were) and adds, per adapter name, ``lora_A[name]`` (in -> r, Kaiming-uniform)
    and ``lora_B[name]`` (r -> out, zeros: a fresh adapter changes nothing), a dropout and the
    scaling ``s``. One adapter is active at a time; ``merged`` names the adapter folded into
    ``weight``, whose LoRA path is then skipped.
    """

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)  # no nn.Linear.__init__: the weights are the base layer's
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.adapters_enabled = True
        self.merged: str | None = None

    def add_adapter(self, name: str, r: int, scaling: float, dropout: float) -> None:
        # A half-precision base keeps its adapter in fp32, as peft does by default.
        dtype = self.weight.dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        options = {"bias": False, "device": self.weight.device, "dtype": dtype}
        self.lora_A[name] = nn.Linear(self.in_features, r, **options)
        self.lora_B[name] = nn.Linear(r, self.out_features, **options)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = scaling

    def delta_weight(self, name: str) -> torch.Tensor:
        """The update ``s * B @ A`` of adapter ``name``, shaped like ``weight``, in fp32."""
        a = self.lora_A[name].weight.float()
        b = self.lora_B[name].weight.float()
        return (b @ a) * self.scaling[name]

    def merge(self) -> None:
        """Fold the active adapter into ``weight``."""
        with torch.no_grad():
            self.weight.add_(self.delta_weight(self.active_adapter).to(self.weight.dtype))
        self.merged = self.active_adapter

    def unmerge(self) -> None:
        """Take the merged adapter out of ``weight`` again."""
        with torch.no_grad():
            self.weight.sub_(self.delta_weight(self.merged).to(self.weight.dtype))
        self.merged = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        name = self.active_adapter
        if self.merged is not None or not self.adapters_enabled or name not in self.lora_A:
            return result
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        hidden = lora_A(self.lora_dropout[name](x.to(lora_A.weight.dtype)))
        if hidden.dtype != result.dtype:  # an fp32 adapter on a half-precision base
            return result + (lora_B(hidden) * self.scaling[name]).to(result.dtype)
        # One product that scales and adds, rather than B's product, a scaling and a sum over
        # the whole output: 1-2% off a small GPT-2's training step, the same values.
        update = torch.addmm(
            result.reshape(-1, self.out_features),
            hidden.reshape(-1, hidden.shape[-1]),
            lora_B.weight.t(),
            alpha=self.scaling[name],
        )
        return update.view(result.shape)

    def extra_repr(self) -> str:
        ranks = {name: module.out_features for name, module in self.lora_A.items()}
        return f"{super().extra_repr()}, adapters(rank)={ranks}, active={self.active_adapter!r}"


class ModulesToSave(nn.Module):
    """A module trained in full by an adapter: ``original_module`` (frozen) and, per adapter
    name, a trainable copy in ``modules_to_save[name]``. The forward runs the active adapter's
    copy, or the original when adapters are disabled or the active adapter has no copy.
    Attributes it does not have itself (``weight``, ``out_features``, ...) are read from the
    module it runs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.adapters_enabled = True

    def add_adapter(self, name: str) -> None:
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def current(self) -> nn.Module:
        """The module that runs now."""
        if self.adapters_enabled and self.active_adapter in self.modules_to_save:
            return self.modules_to_save[self.active_adapter]
        return self.original_module

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):  # not set up yet
                raise
            return getattr(self.current(), name)
