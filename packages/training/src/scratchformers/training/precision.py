"""When bfloat16 pays: the rule that ``--mixed-precision auto`` and the inference commands share.

A minimal stand-in with the names and signatures that :mod:`.commands.inference` relies on;
the training loop's own version of this module takes its place.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Below this width a layer's matmuls are too small for bfloat16's halved bytes to outweigh the
# conversions around them.
BF16_MIN_HIDDEN_SIZE = 64


def fast_bf16_reason(device: torch.device) -> str | None:
    """What makes bfloat16 matmuls fast on ``device`` (``"AMX"``, ``"AVX512-BF16"``, a GPU
    with bf16), or None where they are not."""
    import torch

    if device.type == "cuda":
        return "a GPU with bfloat16" if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        if capabilities.get("amx_bf16"):
            return "AMX"
        if capabilities.get("avx512_bf16"):
            return "AVX512-BF16"
    return None


def hidden_width(model: torch.nn.Module) -> int:
    """The typical input width of ``model``'s ``nn.Linear`` layers (their median
    ``in_features``); 0 for a model without any."""
    import torch

    widths = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return int(statistics.median(widths)) if widths else 0
