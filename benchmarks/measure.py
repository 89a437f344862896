"""Timing, FLOP counting and memory, the same way for both sides of a row.

Every measurement alternates ours and theirs within one loop (ours, theirs, ours, theirs, ...)
so that a noisy neighbour on a shared machine slows both alike; the median of the repeats is
reported.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

# The precisions a benchmark runs in: the autocast dtype of each (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` to ``precision`` on ``device``, or nothing for fp32.

    The weights stay float32 and autocast runs the matmuls in bf16, as mixed-precision training
    does: the same weights on both sides of a row, whatever the precision.
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    workloads: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    seconds: float = 0.0,
    most: int = 200,
) -> dict[str, float]:
    """Median seconds of each workload, timed in alternation, ``repeats`` times; or, with
    ``seconds``, as many times as lets the slowest workload run about that long in all (judged
    by the last warm-up round), at least ``repeats`` and at most ``most`` times.

    Why time rather than count: on a shared machine a neighbour's burst slows whichever side is
    running, and a median over more repeats lets fewer of them tip it. Identical work (the
    small gpt2 training step against a copy of itself) read 0.93-1.05 with medians of 15 steps
    and 0.98-1.02 with medians of 60 (ten rounds each, one run); a short workload gets many
    cheap repeats, a long one stays at ``repeats``.
    """
    slowest = 0.0
    for _ in range(warmup):
        slowest = max(_timed(run, device) for run in workloads.values())
    if seconds > 0 and slowest > 0:
        repeats = max(repeats, min(most, math.ceil(seconds / slowest)))
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, run in workloads.items():
            times[name].append(_timed(run, device))
    return {name: statistics.median(values) for name, values in times.items()}


def _timed(run: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``run`` takes, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def matmul_peak_flops(
    device: torch.device,
    size: int = 2048,
    repeats: int = 10,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Matmul FLOP/s of this machine in ``dtype``, measured now: the ceiling for MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = interleaved_medians({"matmul": lambda: a @ b}, repeats, device, warmup=3)["matmul"]
    return 2 * size**3 / seconds


def causal_lm_flops(
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    batch: int,
    length: int,
    n_inner: int | None = None,
    kv_width: int | None = None,
    gated_mlp: bool = False,
) -> float:
    """Matmul FLOPs of one causal-LM forward: projections, MLP, attention scores and the head.

    Per token and layer (a multiply-add is 2 FLOPs): 2 * 2 * d^2 for q and o, 2 * 2 * d * kv for
    k and v (kv = kv heads * head_dim; d without grouped-query attention), 2 * m * d * n_inner
    for the MLP's m matrices (2, or 3 when gated); attention adds 2 * 2 * T * d for QK^T and PV
    over T keys (counted in full, as the kernels compute it); the LM head 2 * d * V per token.
    With GPT-2's shapes the layer term is the familiar 24 * d^2.
    """
    tokens = batch * length
    n_inner = n_inner or 4 * n_embd
    kv_width = kv_width or n_embd
    mlp_matrices = 3 if gated_mlp else 2
    projections = 4 * n_embd**2 + 4 * n_embd * kv_width + 2 * mlp_matrices * n_embd * n_inner
    per_layer = projections * tokens + 4 * length * n_embd * tokens
    return n_layer * per_layer + 2 * n_embd * vocab_size * tokens


def masked_lm_flops(n_layer: int, n_embd: int, vocab_size: int, batch: int, length: int) -> float:
    """Matmul FLOPs of one BERT masked-LM forward: the encoder layers as in
    :func:`causal_lm_flops` (full attention is counted in full there too), plus the MLM head's
    transform (2 * d^2 per token) before its decoder over the vocabulary."""
    tokens = batch * length
    return causal_lm_flops(n_layer, n_embd, vocab_size, batch, length) + 2 * n_embd**2 * tokens


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, object],
    autocast_dtype: torch.dtype | None = None,
) -> None:
    """One forward, backward and optimizer step. With ``autocast_dtype``, the forward and its
    loss run under autocast and the backward outside it, as mixed-precision training does
    (Accelerate's autocast wraps the forward alone)."""
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def forward(model: nn.Module, inputs: dict[str, object]) -> None:
    model(**inputs)


@torch.no_grad()
def forward_method(method: Callable[..., object], inputs: dict[str, object]) -> None:
    """One call of a model's method (a tower's ``get_image_features``, say) on ``inputs``."""
    method(**inputs)


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int, **options: object) -> None:
    model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        **options,
    )
