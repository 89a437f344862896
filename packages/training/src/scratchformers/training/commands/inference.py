"""``--dtype`` and ``--quantize``, shared by the commands that run a trained model (``generate``,
``eval``): the two flags, and what they do to a loaded model.

* ``--dtype {float32,bfloat16,float16}``: the dtype the model's weights and activations are in.
  Without it, ``generate`` takes bfloat16 where training's ``--mixed-precision auto`` would
  (:func:`default_inference_dtype`), and ``eval`` keeps the run's own precision, so that its
  numbers are the run's. float16 is refused on a CPU: it has no fast float16 matmul, so it
  would be slower than float32 and less exact.
* ``--quantize int8``: weight-only int8 (``scratchformers.core_attention.quantize_int8``), from
  the float weights as saved, before the cast.

What was chosen, and why, goes to stderr. Only the standard library is imported at the top:
``scratchformers --help`` builds these arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("int8",)


def add_arguments(parser: argparse.ArgumentParser, *, dtype_default: str) -> None:
    """Add ``--dtype`` and ``--quantize`` to a command's ``parser``; ``dtype_default`` says in
    its help what the command does without ``--dtype``."""
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help=f"the dtype to run the model in (default: {dtype_default}); float16 needs a GPU",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="int8: store the linear layers' weights in int8 with a scale per output channel "
        "(weight-only; computes in --dtype)",
    )


def default_inference_dtype(model: torch.nn.Module) -> tuple[torch.dtype, str]:
    """The dtype to run ``model`` in on the device it is on, and why: bfloat16 where training's
    automatic mixed precision would pick it (bfloat16 is fast there, and the model's layers are
    wide enough for it to pay), float32 elsewhere."""
    import torch

    from ..precision import BF16_MIN_HIDDEN_SIZE, fast_bf16_reason, hidden_width

    device = _device_of(model)
    reason = fast_bf16_reason(device)
    if reason is None:
        return torch.float32, f"bfloat16 is not fast on this {device.type}"
    width = hidden_width(model)
    if width < BF16_MIN_HIDDEN_SIZE:
        why = f"the model's layers are {width} wide; bfloat16 pays from {BF16_MIN_HIDDEN_SIZE}"
        return torch.float32, why
    return torch.bfloat16, f"{reason}; the model's layers are {width} wide"


def requested_dtype(arguments: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """The dtype ``--dtype`` asks for, None without one; a ``ValueError`` if ``device`` cannot
    run it well. Cheap: the commands check it before loading anything."""
    import torch

    if arguments.dtype is None:
        return None
    dtype = getattr(torch, arguments.dtype)
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError(
            "--dtype float16 needs a GPU: a CPU has no fast float16 matmul, so it would be "
            "slower than float32 and less exact; use --dtype bfloat16 or float32"
        )
    return dtype


def prepare_model(
    model: torch.nn.Module,
    arguments: argparse.Namespace,
    device: torch.device,
    *,
    default: bool = True,
) -> torch.dtype | None:
    """Put ``model`` on ``device``, quantize it if ``arguments.quantize`` says, and cast it to
    ``arguments.dtype``, or, without one, to :func:`default_inference_dtype` when ``default``
    (else its dtype is left as loaded). Says what it did on stderr; returns the dtype it cast
    to, or None. A ``ValueError`` names the flag that cannot be honoured."""
    import torch

    requested = requested_dtype(arguments, device)
    model.to(device)
    if requested is not None:
        dtype, why = requested, "--dtype"
    elif default:
        dtype, why = default_inference_dtype(model)  # before quantizing: it reads nn.Linear
        other = "float32" if dtype == torch.bfloat16 else "bfloat16"
        why += f"; --dtype {other} to change it"
    else:
        dtype, why = None, ""

    if arguments.quantize == "int8":
        layers = _quantize_int8(model)
        print(f"quantized {layers} linear layers to int8 (weight-only)", file=sys.stderr)
    if dtype is not None:
        model.to(dtype)
        print(f"running the model in {_name(dtype)} ({why})", file=sys.stderr)
    return dtype


def cast_floating(batch: Any, dtype: torch.dtype) -> Any:
    """``batch`` (a tensor, or a mapping, list or tuple of them) with its floating-point
    tensors in ``dtype``: inputs for a model whose weights are in ``dtype`` (pixel values,
    float labels), now that no autocast converts them. Integer tensors (ids, masks) stay."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, Mapping):
        return {key: cast_floating(value, dtype) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return [cast_floating(value, dtype) for value in batch]
    return batch


def _quantize_int8(model: torch.nn.Module) -> int:
    """Quantize ``model`` in place; how many layers became int8."""
    from scratchformers.core_attention.quantize import Int8WeightOnlyLinear, quantize_int8

    quantize_int8(model)
    return len({id(m) for m in model.modules() if isinstance(m, Int8WeightOnlyLinear)})


def _device_of(model: torch.nn.Module) -> torch.device:
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
