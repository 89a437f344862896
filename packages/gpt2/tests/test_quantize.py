"""Our GPT-2 quantized to int8 (``core_attention.quantize_int8``), in float32 and bfloat16:
logits close to the float model's, greedy tokens mostly the same, and ``generate()`` through
every path: the dynamic cache, the lean static-cache loop, and its compiled decode step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers

from scratchformers.core_attention import Int8WeightOnlyLinear, quantize_int8
from scratchformers.core_attention.testing import LEAN, left_padded_batch, spy_decoding

# n_embd 64: every projection is a multiple of 16 wide, so the CPU takes torch's int8 kernel.
SIZES = {"vocab_size": 101, "n_embd": 64, "n_head": 4, "n_layer": 2}
GREEDY = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    difference = actual.double() - expected.double()
    return float(difference.norm() / expected.double().norm())


def same_tokens(first: torch.Tensor, second: torch.Tensor) -> float:
    return float((first == second).float().mean())


@pytest.fixture
def model_and_copy(make_pair: Callable):
    """Our GPT-2 with random weights, and a second model with the same weights to quantize."""
    pair = make_pair(**SIZES)
    twin = type(pair.ours)(pair.ours.config).eval()
    twin.load_state_dict(pair.ours.state_dict())
    return pair.ours, twin


@pytest.fixture
def prompts():
    input_ids, mask, _ = left_padded_batch((9, 5, 7), SIZES["vocab_size"])
    return input_ids, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantized_logits_and_greedy_tokens_stay_close(model_and_copy, prompts, dtype) -> None:
    model, quantized = model_and_copy
    input_ids, mask = prompts
    quantize_int8(quantized).to(dtype)
    assert isinstance(quantized.lm_head, Int8WeightOnlyLinear)
    with torch.no_grad():
        expected = model(input_ids, attention_mask=mask).logits
        logits = quantized(input_ids, attention_mask=mask).logits
        assert logits.dtype == dtype
        # Scored on the real tokens: the padded positions' logits mean nothing.
        real = mask.bool()
        assert relative_error(logits[real], expected[real]) < 0.03
        greedy = model.generate(input_ids, attention_mask=mask, **GREEDY)
        tokens = quantized.generate(input_ids, attention_mask=mask, **GREEDY)
    new = slice(input_ids.shape[1], None)
    assert same_tokens(tokens[:, new], greedy[:, new]) >= 0.75


def test_the_tied_embedding_keeps_its_float_weight(model_and_copy) -> None:
    model, quantized = model_and_copy
    assert quantized.lm_head.weight is quantized.transformer.wte.weight
    quantize_int8(quantized)
    assert torch.equal(quantized.transformer.wte.weight, model.transformer.wte.weight)
    head = quantized.lm_head.dequantized_weight(torch.float32)
    step = quantized.lm_head.scales[:, None]
    assert ((head - model.lm_head.weight).abs() <= step / 2 + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_static_cache_lean_loop_gives_the_dynamic_cache_tokens(
    model_and_copy, prompts, dtype
) -> None:
    _, quantized = model_and_copy
    input_ids, mask = prompts
    quantize_int8(quantized).to(dtype)
    with torch.no_grad():
        dynamic = quantized.generate(input_ids, attention_mask=mask, **GREEDY)
        with spy_decoding() as loops:
            static = quantized.generate(
                input_ids, attention_mask=mask, cache_implementation="static", **GREEDY
            )
    assert loops == LEAN
    assert torch.equal(static, dynamic)


def test_the_compiled_decode_step_runs_the_int8_kernel(model_and_copy, prompts) -> None:
    _, quantized = model_and_copy
    input_ids, mask = prompts
    quantize_int8(quantized).to(torch.bfloat16)
    static = {"cache_implementation": "static", **GREEDY}
    with torch.no_grad():
        eager = quantized.generate(input_ids, attention_mask=mask, **static)
        torch._dynamo.reset()
        compiled = quantized.generate(
            input_ids,
            attention_mask=mask,
            compile_config=transformers.CompileConfig(fullgraph=True),
            **static,
        )
    assert "_lean_compiled_steps" in quantized.__dict__  # the step was compiled, in one graph
    # Inductor may sum in another order, and bfloat16 turns near-ties either way.
    new = slice(input_ids.shape[1], None)
    assert same_tokens(compiled[:, new], eager[:, new]) >= 0.85
