"""torch.compile of the forward gives the eager logits (one compile: it is slow on a CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from scratchformers.gpt2 import GPT2LMHeadModel


def test_compiled_forward_equals_eager(make_config: Callable, padded_batch: Callable) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(make_config(initializer_range=0.2)).eval()
    input_ids, mask, _ = padded_batch((9, 4, 6))
    with torch.no_grad():
        eager = model(input_ids, attention_mask=mask, use_cache=False).logits
        compiled_forward = torch.compile(model.forward, dynamic=False)
        start = time.perf_counter()
        compiled = compiled_forward(input_ids, attention_mask=mask, use_cache=False).logits
        elapsed = time.perf_counter() - start
    print(f"compile and first run: {elapsed:.1f} s")
    real = mask.bool()
    assert float((compiled[real] - eager[real]).abs().max()) <= 1e-4
    assert not torch.allclose(eager[0, -1], eager[1, -1])
