"""Which precision a run computes in: ``--mixed-precision auto`` and what it picks.

bf16 autocast keeps the weights, the optimizer and the loss in float32 and runs the matmuls in
bfloat16. Where the hardware has bf16 matrix units (a CPU with AMX or AVX512-BF16, a CUDA GPU
with bf16 support) that is the larger part of a step done two to seven times faster; elsewhere
bf16 is emulated and slower than float32. And it only pays when the matmuls are the larger
part of the step: autocast casts every weight on every step, and a narrow model's small
matmuls cost their per-op overhead whatever the precision. ``benchmarks/precision_crossover.py``
measures where it starts to pay: on a 2-core AMD EPYC with AVX512-BF16 a GPT-2 training step
(1,024 tokens) ran at the same speed in both at width 32, 1.08 to 1.13x faster in bf16 at
width 64 and 1.2 to 1.8x from 128 to 768. The threshold is where the gain passes a fifth: below
it the gain is a tenth at most, too little to pay for bf16's rounding (the vit tiny preset, 64
wide, ended 2.7% lower in held-out accuracy in bf16; ``benchmarks/PRECISION.md``).

So ``auto`` picks bf16 when both hold:

1. the device computes bf16 natively (:func:`fast_bf16_reason`), and
2. the model is at least :data:`BF16_MIN_HIDDEN_SIZE` wide: the median input width of its
   linear layers (:func:`hidden_width`; a GPT-2's ``n_embd``).

Otherwise float32. ``no``, ``bf16`` and ``fp16`` force a choice; fp16 autocast needs a GPU,
and on a CPU (where Accelerate would accept it and compute in float32 anyway) the run says so
and records ``no``. bf16 keeps float32's exponent range, so no loss scaling is needed and
held-out figures of the guarded presets stay within 2% of float32's (the README's "Speed").
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's --help goes without it.
    import torch
    from torch import nn

# The narrowest model for which auto picks bf16 (see the module docstring for the measurement).
BF16_MIN_HIDDEN_SIZE = 128

AUTO = "auto"
MIXED_PRECISION = (AUTO, "no", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The mixed precision a run uses (``no``, ``bf16`` or ``fp16``) and why, in words."""

    mixed_precision: str
    reason: str

    def describe(self) -> str:
        name = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
        return f"{name[self.mixed_precision]} ({self.reason})"


def fast_bf16_reason(device: torch.device) -> str | None:
    """Why bf16 matmuls are fast on ``device``, in words ("this CPU has AMX", "NVIDIA H100
    computes bf16"), or None where bf16 would be emulated."""
    import torch

    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return f"{torch.cuda.get_device_name(device)} computes bf16"
        return None
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        for key, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")):
            if capabilities.get(key):
                return f"this CPU has {name}"
        return None
    # Other accelerators (MPS, XPU, ...): bf16 support varies; float32 is the safe default.
    return None


def hidden_width(model: nn.Module) -> int:
    """The model's typical matmul width: the median input width of its linear layers (a
    GPT-2's ``n_embd``: its attention, MLP input and LM head read that many features). 0 for a
    model without linear layers."""
    from torch import nn

    widths = [
        module.in_features if isinstance(module, nn.Linear) else module.weight.shape[0]
        for module in model.modules()
        # transformers' Conv1D (GPT-2 checkpoints' layout) is a linear layer stored transposed.
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    ]
    return int(statistics.median_low(widths)) if widths else 0


def choose_mixed_precision(
    requested: str, model: nn.Module, device: torch.device
) -> PrecisionChoice:
    """The mixed precision a run with ``--mixed-precision requested`` uses for ``model`` on
    ``device``; :data:`MIXED_PRECISION` lists the requests."""
    if requested not in MIXED_PRECISION:
        raise ValueError(f"--mixed-precision must be one of {MIXED_PRECISION}, got {requested!r}")
    if requested == "fp16" and device.type == "cpu":
        return PrecisionChoice(
            "no", "--mixed-precision fp16 needs a GPU: on a CPU it would compute in float32"
        )
    if requested != AUTO:
        return PrecisionChoice(requested, f"--mixed-precision {requested}")
    fast = fast_bf16_reason(device)
    if fast is None:
        return PrecisionChoice("no", f"auto: {device.type} has no native bf16 matmuls")
    width = hidden_width(model)
    if width < BF16_MIN_HIDDEN_SIZE:
        return PrecisionChoice(
            "no",
            f"auto: {fast}, but the model is {width} wide, under the "
            f"{BF16_MIN_HIDDEN_SIZE} where bf16 starts to pay",
        )
    return PrecisionChoice("bf16", f"auto: {fast} and the model is {width} wide")
