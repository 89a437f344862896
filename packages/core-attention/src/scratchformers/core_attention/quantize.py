"""Weight-only int8 quantization for inference, on PyTorch's own int8 kernel.

Decoding one token at a small batch reads every weight once and does little arithmetic with it,
so its speed is bound by how many bytes of weights there are. Storing each linear layer's
weight as int8 with one float scale per output channel quarters those bytes against float32
(halves them against bfloat16), while the activations stay in floating point: ``y = (x @ q.T) *
scale + bias``. ``torch._weight_int8pack_mm`` computes that product without materialising a
float weight; no kernel is written here.

* :class:`Int8WeightOnlyLinear` is the layer, built from an ``nn.Linear`` or transformers'
  ``Conv1D`` by :meth:`Int8WeightOnlyLinear.from_linear`.
* :func:`quantize_int8` swaps every such layer of a model for one, in place.

It is for inference: the int8 kernel has no backward, and a quantized model refuses
``save_pretrained`` (its state dict holds int8 buffers that ``from_pretrained`` would not know
how to load). Quantize a loaded float model each time instead; it takes a moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# The activation dtypes the kernel takes (the scales must be in the same dtype on the CPU).
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The devices with a kernel; elsewhere the weight is dequantized for each call.
_KERNEL_DEVICES = ("cpu", "cuda", "mps")
# The CPU kernel reads the activations and the weight in blocks of 16 (AVX-512) or 8 (AVX2,
# NEON) elements with aligned loads, and reads past the row or crashes when a row is not a
# whole number of blocks (torch 2.15). So on the CPU it runs only for in_features divisible by
# 16 on activations that start on a 16-element boundary of their storage.
_CPU_BLOCK = 16
_INT8_MAX = 127  # symmetric: -128 is never used, so q and -q both fit


class Int8WeightOnlyLinear(nn.Module):
    """A linear layer whose weight is int8 with a float scale per output channel.

    ``forward(x)`` is ``x @ (weight_int8 * scales[:, None]).T + bias`` for ``x`` of any
    leading shape and any floating dtype; the result has ``x``'s dtype. The weight is
    quantized symmetrically per output row (``scale = max|w| / 127``, ``q = round(w / scale)``),
    so the error of each weight is at most half its row's scale. The bias stays in floating
    point. The scales and the bias follow ``model.to(dtype)``; the int8 weight does not change.
    """

    in_features: int
    out_features: int
    weight_int8: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be at least 1, got {in_features} and "
                f"{out_features}"
            )
        if not dtype.is_floating_point:
            raise ValueError(f"dtype is the scales' and the bias's, a float dtype; got {dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear | Conv1D) -> Int8WeightOnlyLinear:
        """The int8 version of ``linear`` (an ``nn.Linear``, or transformers' ``Conv1D``,
        whose weight is stored transposed), on its device; ``linear`` is left unchanged."""
        if isinstance(linear, Conv1D):
            weight = linear.weight.detach().t()  # Conv1D computes x @ W with W (in, out)
        elif isinstance(linear, nn.Linear):
            weight = linear.weight.detach()
        else:
            raise TypeError(
                f"linear must be an nn.Linear or a transformers Conv1D, got {type(linear).__name__}"
            )
        if not weight.is_floating_point():
            raise TypeError(f"linear's weight must be floating point, got {weight.dtype}")
        if weight.device.type == "meta":
            raise ValueError("linear's weight is on the meta device: load the weights first")
        out_features, in_features = weight.shape
        layer = cls(
            in_features,
            out_features,
            bias=linear.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        quantized, scales = quantize_per_channel(weight)
        layer.weight_int8.copy_(quantized)
        layer.scales.copy_(scales)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight the layer computes with, ``(out_features, in_features)``."""
        dtype = dtype or self.scales.dtype
        return self.weight_int8.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` for ``x`` of shape ``(..., in_features)``, in ``x``'s dtype."""
        if not x.is_floating_point():
            raise TypeError(f"Int8WeightOnlyLinear takes floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"the input's last dimension is {x.shape[-1]}, and this layer takes "
                f"in_features={self.in_features}"
            )
        rows = x.reshape(-1, self.in_features)  # the kernel takes 2-D activations
        if self._kernel_takes(rows):
            rows = rows.contiguous()
            if _misaligned(rows):
                rows = rows.clone()
            # The CPU kernel wants the scales in the activations' dtype; the others convert.
            out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scales.to(x.dtype))
        else:
            out = rows @ self.dequantized_weight(x.dtype).t()
        out = out.reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def _kernel_takes(self, rows: torch.Tensor) -> bool:
        if rows.dtype not in _KERNEL_DTYPES or rows.device.type not in _KERNEL_DEVICES:
            return False
        return rows.device.type != "cpu" or self.in_features % _CPU_BLOCK == 0

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


def _misaligned(rows: torch.Tensor) -> bool:
    """Whether contiguous CPU activations start off a block boundary of their storage (a view
    cut from a flat buffer), where the kernel's aligned loads would crash. Compiled code is
    left alone: dynamo cannot read a storage offset, and inductor hands the kernel buffers it
    allocated itself, or whole rows of them."""
    if rows.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return rows.storage_offset() % _CPU_BLOCK != 0


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``(q, scales)`` with ``weight ≈ q * scales[:, None]``.

    ``weight`` is ``(out_features, in_features)``; the arithmetic is in float32 whatever its
    dtype, and ``scales`` come back in ``weight``'s dtype. A row of zeros gets scale 1 (any
    scale reproduces it), so nothing divides by zero.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got {weight.dim()}-D")
    full = weight.detach().to(torch.float32)
    scales = full.abs().amax(dim=1) / _INT8_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    # Round with the scales as they will be stored, so that q * scale is the nearest value.
    stored = scales.to(weight.dtype)
    quantized = torch.round(full / stored.to(torch.float32)[:, None])
    quantized = quantized.clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return quantized, stored


def quantize_int8(model: nn.Module, *, skip: Iterable[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` and transformers ``Conv1D`` of ``model`` by an
    :class:`Int8WeightOnlyLinear`, in place, and return ``model``. For inference.

    * ``skip``: module names to keep in floating point, each matched against the full name
      (``"lm_head"``, ``"transformer.h.0.mlp.c_fc"``) or its last parts (``"c_proj"`` keeps
      every ``c_proj``). A name that matches no layer is an error, as it is surely a typo.
    * Only layers of exactly those classes are replaced: a subclass (a ``LoraLinear``, the
      ``out_proj`` of an ``nn.MultiheadAttention``, which reads its weight directly) keeps its
      float weight. Merge LoRA adapters before quantizing to quantize them too.
    * A language-model head tied to the token embedding is quantized as well: at GPT-2's shape
      it is the largest matrix, read in full for every generated token. It gets its own int8
      copy; the embedding keeps its float weight (an embedding lookup reads one row per token,
      so quantizing it would save memory, not time). The two stop sharing memory: the model
      holds the float matrix plus an int8 copy, 1.25 times the tied matrix in float32. A layer
      object that appears twice in the model is replaced by one int8 layer in both places.

    ``model.config.weight_quantization`` (for a transformers model) records what was done, and
    ``save_pretrained`` is refused afterwards: save the float model, and quantize after
    loading. Casting works in either order: ``model.to(torch.bfloat16)`` before or after
    quantizing gives bfloat16 scales and bias; the int8 weights are the same.

    Raises a ``ValueError`` naming the model when it has no layer to quantize (already
    quantized, or no linear layers at all).
    """
    if isinstance(skip, str):
        raise TypeError(f"skip is a list of module names, not one string: give ({skip!r},)")
    skip = tuple(skip)
    found = {name: module for name, module in model.named_modules(remove_duplicate=False)}
    targets = [
        name
        for name, module in found.items()
        if name and type(module) in (nn.Linear, Conv1D) and not _skipped(name, skip)
    ]
    unmatched = [
        entry
        for entry in skip
        if not any(
            _skipped(name, (entry,)) and type(module) in (nn.Linear, Conv1D)
            for name, module in found.items()
        )
    ]
    if unmatched:
        raise ValueError(
            f"skip: {', '.join(map(repr, unmatched))} matches no nn.Linear or Conv1D layer of "
            f"the {type(model).__name__}"
        )
    if not targets:
        already = sum(isinstance(module, Int8WeightOnlyLinear) for module in found.values())
        why = (
            f"it is already quantized ({already} Int8WeightOnlyLinear layers)"
            if already
            else "it has no nn.Linear or Conv1D layers"
        )
        kept = f", and skip keeps {', '.join(skip)}" if skip else ""
        raise ValueError(
            f"quantize_int8: nothing to quantize in the {type(model).__name__}: {why}{kept}"
        )

    replacements: dict[int, Int8WeightOnlyLinear] = {}
    for name in targets:
        module = found[name]
        if id(module) not in replacements:
            replacements[id(module)] = Int8WeightOnlyLinear.from_linear(module)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacements[id(module)])

    config = getattr(model, "config", None)
    if config is not None:
        config.weight_quantization = {
            "method": "int8 weight-only, symmetric per output channel",
            "layers": len(replacements),
            "kept_in_float": list(skip),
        }
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained = _refuse_save(type(model).__name__)
    return model


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == entry or name.endswith("." + entry) for entry in skip)


def _refuse_save(class_name: str) -> Any:
    def save_pretrained(*args: Any, **kwargs: Any) -> None:
        raise ValueError(
            f"this {class_name} was quantized to int8 for inference (quantize_int8), and its "
            "int8 weights would not load back with from_pretrained; save the float model, and "
            "quantize after loading it"
        )

    return save_pretrained
