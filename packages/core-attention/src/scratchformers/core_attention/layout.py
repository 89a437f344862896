"""Linear weights kept input-major in memory, for fast decoding on a CPU.

``nn.Linear`` holds its weight as an ``(out_features, in_features)`` tensor and computes
``x @ W.T``. The tensor's *shape* is part of the model's contract (state dicts, converters,
peft, quantization all read it), but its *memory order* is not: the same values can be stored
column by column, as the transpose of a contiguous ``(in_features, out_features)`` tensor.
Then ``W.T`` is contiguous, and the product is the one GPT-2's original ``Conv1D`` computes.

Why bother: decoding one token multiplies a single row by every weight matrix, and on x86
CPUs MKL's one-row product reads an input-major matrix faster than an output-major one. At
GPT-2 (124M) shape, the 48 block matrices took 23.4 ms input-major against 29.5 ms
output-major (one interleaved run here), and a greedy decode went from 23.0 to 25.7 tokens/s:
transformers' GPT-2, whose ``Conv1D`` weights are input-major, had the lead only for that
reason. Batched products (training, prefill) gain nothing measurable, and the gradient of
an input-major weight comes out input-major too, so training after a decode keeps the order
without a copy.

Why not always: FSDP refuses parameters that are not contiguous ("FSDP does not support
non-contiguous parameters yet"), and the gain is MKL's, measured on a CPU only. So :class:`InputMajorLinears` lays
the weights out when ``generate()`` first runs on a CPU in a process that is not part of a
distributed group: the work that gains, where nothing can object. It changes each
parameter's ``.data`` in place, so an optimizer or anything else holding the parameters
keeps them. The order then survives ``model.to(...)`` (it preserves strides) and in-place
updates (optimizer steps, peft merges); ``save_pretrained`` writes the same values either
way (safetensors stores values, not strides).

A weight shared with an embedding (a tied LM head) stays as it is: an embedding looks up
rows, which must stay contiguous.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def store_linears_input_major(model: nn.Module) -> int:
    """Store the weight of every ``nn.Linear`` in ``model`` input-major (see the module
    docstring), in place, values and shape unchanged, except weights shared with an
    ``nn.Embedding``. Returns how many weights were laid out anew (those already input-major
    are skipped)."""
    embedded = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    changed = 0
    # Under inference_mode(False) the new storage is an ordinary tensor even when generate()
    # runs inside torch.inference_mode(): the parameters must stay trainable afterwards.
    with torch.no_grad(), torch.inference_mode(False):
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight
            if id(weight) in embedded or weight.device.type == "meta" or is_input_major(weight):
                continue
            weight.data = weight.data.t().contiguous().t()
            changed += 1
    return changed


def is_input_major(weight: torch.Tensor) -> bool:
    """Whether a 2-D ``weight`` is stored as the transpose of a contiguous tensor."""
    return weight.dim() == 2 and weight.t().is_contiguous() and not weight.is_contiguous()


class InputMajorLinears:
    """Mixed into a generative model class, before its generation mixin: ``generate()`` on a
    CPU, outside a distributed group, first lays out the linear weights input-major (see the
    module docstring)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The class's ``generate()``, on input-major weights where that is faster."""
        model: nn.Module = self  # type: ignore[assignment]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed and all(p.device.type == "cpu" for p in model.parameters()):
            store_linears_input_major(model)
        return super().generate(*args, **kwargs)  # type: ignore[misc]
