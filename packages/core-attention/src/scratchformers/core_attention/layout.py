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
reason. Batched products (training, prefill) were not timed on a quiet machine in this
order; what is certain is that the gradient of an input-major weight comes out input-major
too, so training after a decode keeps the order without a copy.

Why not always: the bf16 kernels prefer the other order (the same GPT-2 decode under bf16
autocast: 48.0 tokens/s contiguous, 42.8 input-major, best of 5), FSDP refuses parameters
that are not contiguous ("FSDP does not support non-contiguous parameters yet"), and the
gain is MKL's, measured on a CPU only. So :class:`InputMajorLinears` chooses when
``generate()`` starts, on a CPU in a process that is not part of a distributed group:
input-major for float32 products, contiguous for lower-precision ones (bf16 weights, or bf16
autocast). Anywhere else the weights stay as they are. It changes each parameter's ``.data``
in place, so an optimizer or anything else holding the parameters keeps them, and only when
the order must change. The order survives ``model.to(...)`` (it preserves strides) and
in-place updates (optimizer steps, peft merges); ``save_pretrained`` writes the same values
either way (safetensors stores values, not strides).

A weight shared with an embedding (a tied LM head) stays as it is: an embedding looks up
rows, which must stay contiguous. safetensors' own ``save_file`` refuses a tensor that is not
contiguous: after a float32 decode, save with ``save_pretrained`` or accelerate (which copy),
or call ``lay_out_linears(model, input_major=False)`` first.

The query, key and value products, three per layer on separate weights, are one product
while ``generate()`` runs: :func:`packed_query_key_value` stacks each self-attention's three
weights (and biases) into one tensor, in the same memory order, and the layer reads that
(transformers' GPT-2 has one ``c_attn`` for the three). At GPT-2 (124M) shape the 12 layers'
three 768 x 768 products took 6.0 ms a token against 4.5 for one 768 x 2304, and a float32
greedy decode went from 41.8 to 39.9 ms a token, stacking included. The stack is a copy, made
when ``generate()`` starts (about 20 ms at that shape) and dropped when it returns, rather than
the parameters themselves rearranged as views of one tensor: parameters that share storage are
taken for tied weights by the savers (accelerate's ``save`` dropped the key and value weights
from its file), and a copy cannot go stale, since nothing changes the weights while
``generate()`` runs. Forward hooks on ``q_proj``, ``k_proj`` and ``v_proj`` do not fire for
the stacked product; a projection that is not a plain ``nn.Linear`` (a peft LoRA layer, an
int8 layer) keeps its layer's three products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .attention import Attention


def lay_out_linears(model: nn.Module, *, input_major: bool) -> int:
    """Store the weight of every ``nn.Linear`` in ``model`` input-major (``input_major=True``)
    or in nn.Linear's own contiguous order (``False``), in place, values and shape unchanged;
    weights shared with an ``nn.Embedding`` stay contiguous. Returns how many weights were
    laid out anew (those already in the order asked for are skipped)."""
    embedded = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    changed = 0
    # Under inference_mode(False) the new storage is an ordinary tensor even when generate()
    # runs inside torch.inference_mode(): the parameters must stay trainable afterwards.
    with torch.no_grad(), torch.inference_mode(False):
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight
            if id(weight) in embedded or weight.device.type == "meta":
                continue
            if input_major and not is_input_major(weight):
                weight.data = weight.data.t().contiguous().t()
            elif not input_major and not weight.is_contiguous():
                weight.data = weight.data.contiguous()
            else:
                continue
            changed += 1
    return changed


def is_input_major(weight: torch.Tensor) -> bool:
    """Whether a 2-D ``weight`` is stored as the transpose of a contiguous tensor."""
    return weight.dim() == 2 and weight.t().is_contiguous() and not weight.is_contiguous()


def decodes_faster_input_major(model: nn.Module) -> bool | None:
    """The order a ``generate()`` starting now should find the linear weights in: input-major
    for float32 (and float64) products on a CPU, contiguous for 16-bit ones (the bf16 kernels read
    an input-major matrix slower), and ``None`` (leave them) off the CPU or in a distributed
    process (see the module docstring)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return None
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    if not weights or any(weight.device.type != "cpu" for weight in weights):
        return None
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
    compute_dtype = autocast or weights[0].dtype
    return compute_dtype.itemsize >= 4  # float32 (or float64), not bf16 or float16


@contextlib.contextmanager
def packed_query_key_value(
    model: nn.Module, *, input_major: bool, dtype: torch.dtype | None = None
) -> Iterator[int]:
    """Within the block, every self-attention of ``model`` whose query, key and value
    projections are plain ``nn.Linear`` layers computes them as one product over a stacked copy
    of their weights (input-major when ``input_major``, else contiguous) and biases, cast to
    ``dtype`` if given; the copies are dropped when the block ends. Yields how many layers were
    stacked.

    Under autocast, pass its dtype: autocast keeps its casts of parameters for the whole
    autocast region, but would cast a copy, which is no parameter, again at every step.
    """
    stacked = []
    with torch.no_grad(), torch.inference_mode(False):
        for module in model.modules():
            projections = (
                (module.q_proj, module.k_proj, module.v_proj)
                if isinstance(module, Attention) and not module.is_cross_attention
                else ()
            )
            if not _stackable(projections):
                continue
            weights = [p.weight for p in projections]
            biases = [p.bias for p in projections]
            if input_major:  # stacked as the transpose of a contiguous (in, q + k + v) tensor
                weight = torch.cat([w.t() for w in weights], dim=1).t()
            else:
                weight = torch.cat(weights)
            bias = None if biases[0] is None else torch.cat(biases).to(dtype)
            module.packed_qkv = (weight.to(dtype), bias)
            stacked.append(module)
    try:
        yield len(stacked)
    finally:
        for module in stacked:
            module.packed_qkv = None


def _stackable(projections: tuple[nn.Module, ...]) -> bool:
    """Plain ``nn.Linear`` layers (not a LoRA or int8 layer in their place) holding plain
    tensors (not a quantized tensor subclass) of one dtype and device, all with a bias or none."""
    if not projections or any(type(p) is not nn.Linear for p in projections):
        return False
    weights = [p.weight for p in projections]
    if any(type(w.data) is not torch.Tensor or w.device.type == "meta" for w in weights):
        return False
    if len({(w.dtype, w.device) for w in weights}) > 1:
        return False
    return len({p.bias is None for p in projections}) == 1


class InputMajorLinears:
    """Mixed into a generative model class, before its generation mixin: ``generate()`` on a
    CPU, outside a distributed group, first lays out the linear weights in the order its
    products read fastest, and computes each layer's query, key and value with one product
    (see the module docstring)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The class's ``generate()``, on the weight order that decodes fastest."""
        input_major = decodes_faster_input_major(self)  # type: ignore[arg-type]
        if input_major is None:
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        lay_out_linears(self, input_major=input_major)  # type: ignore[arg-type]
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        with packed_query_key_value(self, input_major=input_major, dtype=autocast):  # type: ignore[arg-type]
            return super().generate(*args, **kwargs)  # type: ignore[misc]
