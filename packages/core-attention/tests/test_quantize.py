"""Weight-only int8 (``core_attention.quantize``): the layer computes with exactly its
dequantized weight, stays close to the float layer it came from, in every activation dtype and
shape, on both sides of the CPU kernel's block rule; ``quantize_int8`` swaps the right layers
(transformers' ``Conv1D`` too), keeps a tied embedding, and refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from scratchformers.core_attention.quantize import (
    Int8WeightOnlyLinear,
    quantize_int8,
    quantize_per_channel,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (in_features, out_features): multiples of 16 take torch's int8 kernel on the CPU, the others
# (13, 40, 100) the dequantized matmul; a single output, and a wide odd one.
SHAPES = [(48, 37), (13, 5), (40, 16), (64, 1), (100, 33), (256, 257)]
# Leading shapes of the input: none, a batch, a batch of sequences, an empty batch.
LEADING = [(), (3,), (2, 5), (0,)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    difference = actual.detach().double() - expected.detach().double()
    return float(difference.norm() / expected.detach().double().norm())


def float_linear(in_features: int, out_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_int8_linear_is_its_dequantized_weight_and_close_to_the_float_layer(
    shape: tuple[int, int], dtype: torch.dtype
) -> None:
    in_features, out_features = shape
    linear = float_linear(in_features, out_features)
    int8 = Int8WeightOnlyLinear.from_linear(linear).to(dtype)
    for leading in LEADING:
        x = torch.randn(*leading, 4, in_features)[..., 0, :].to(dtype)  # a strided view too
        out = int8(x)
        assert out.shape == (*leading, out_features) and out.dtype == dtype
        if x.numel() == 0:
            continue
        # What the layer claims to compute, in float64 from the int8 weight and its scales.
        weight = int8.weight_int8.double() * int8.scales.double()[:, None]
        exact = x.double() @ weight.T + int8.bias.double()
        # Summing in float32 (or rounding the result to 16 bits) is all that may differ.
        tolerance = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
        assert relative_error(out, exact) < tolerance
        # And the float layer, from the same (rounded) input: int8 rounding of the weight.
        reference = nn.functional.linear(x.double(), linear.weight.double(), linear.bias.double())
        assert relative_error(out, reference) < 0.02


def test_each_weight_is_within_half_a_step_of_its_row() -> None:
    torch.manual_seed(0)
    weight = torch.randn(33, 70) * torch.logspace(-3, 1, 33)[:, None]  # rows of every scale
    weight[5] = 0.0
    quantized, scales = quantize_per_channel(weight)
    assert quantized.dtype == torch.int8 and quantized.abs().max() <= 127
    assert scales[5] == 1.0 and not quantized[5].any()  # a zero row: no division by zero
    assert torch.equal(quantized.abs().amax(dim=1)[scales != 1.0], torch.full((32,), 127))
    error = (weight - quantized.float() * scales[:, None]).abs()
    assert (error <= scales[:, None] / 2 * (1 + 1e-5)).all()


def test_bfloat16_rows_that_the_cpu_kernel_cannot_take_are_right() -> None:
    # torch's CPU kernel reads bf16 in aligned blocks of 16: it crashes or reads past the row
    # for other widths, and for activations that start off a block of their storage.
    linear = float_linear(48, 24)
    int8 = Int8WeightOnlyLinear.from_linear(linear).to(torch.bfloat16)
    flat = torch.randn(3 + 2 * 48, dtype=torch.bfloat16)
    x = flat[3:].view(2, 48)  # contiguous, storage offset 3
    assert x.is_contiguous() and x.storage_offset() == 3
    expected = x.double() @ int8.dequantized_weight(torch.float64).T + int8.bias.double()
    assert relative_error(int8(x), expected) < 1e-2


def test_the_layer_refuses_inputs_it_cannot_take() -> None:
    int8 = Int8WeightOnlyLinear.from_linear(float_linear(16, 4))
    with pytest.raises(ValueError, match=r"last dimension is 15.*in_features=16"):
        int8(torch.randn(2, 15))
    with pytest.raises(TypeError, match="floating-point input"):
        int8(torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(TypeError, match=r"linear must be an nn\.Linear or a transformers Conv1D"):
        Int8WeightOnlyLinear.from_linear(nn.Embedding(4, 16))
    with pytest.raises(ValueError, match="in_features and out_features must be at least 1"):
        Int8WeightOnlyLinear(0, 3)


def test_conv1d_is_quantized_as_the_linear_it_computes() -> None:
    torch.manual_seed(0)
    conv = Conv1D(nf=24, nx=32)  # y = x @ W + b, W of shape (32, 24)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    int8 = Int8WeightOnlyLinear.from_linear(conv)
    assert (int8.in_features, int8.out_features) == (32, 24)
    x = torch.randn(2, 3, 32)
    assert relative_error(int8(x), conv(x)) < 0.02


def test_scales_and_bias_follow_the_model_dtype_and_the_weight_stays_int8() -> None:
    int8 = Int8WeightOnlyLinear.from_linear(float_linear(32, 8))
    weight = int8.weight_int8.clone()
    int8.to(torch.bfloat16)
    assert int8.scales.dtype == int8.bias.dtype == torch.bfloat16
    assert torch.equal(int8.weight_int8, weight)
    assert not int8.bias.requires_grad  # for inference: the kernel has no backward


def tiny_transformers_gpt2() -> transformers.GPT2LMHeadModel:
    """transformers' own GPT-2 (Conv1D projections, a head tied to the embedding)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97, n_embd=32, n_layer=2, n_head=2, n_positions=24, pad_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def test_quantize_int8_swaps_conv1d_and_the_tied_head_and_keeps_the_embedding() -> None:
    model = tiny_transformers_gpt2()
    ids = torch.randint(1, 97, (2, 11))
    embedding = model.transformer.wte.weight.detach().clone()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    with torch.no_grad():
        expected = model(ids).logits
    assert quantize_int8(model) is model

    swapped = [name for name, m in model.named_modules() if isinstance(m, Int8WeightOnlyLinear)]
    assert len(swapped) == 2 * 4 + 1  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per layer; head
    assert "lm_head" in swapped
    assert not any(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules())
    # The embedding keeps its float weight, unchanged; the head has an int8 copy of it.
    assert torch.equal(model.transformer.wte.weight, embedding)
    assert torch.equal(model.lm_head.dequantized_weight(torch.float32).round(), embedding.round())
    assert model.config.weight_quantization["layers"] == 9
    with torch.no_grad():
        logits = model(ids).logits
    assert relative_error(logits, expected) < 0.03
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert greedy.shape == (2, 17)


def test_skip_keeps_layers_in_float_and_names_a_typo() -> None:
    model = quantize_int8(tiny_transformers_gpt2(), skip=("lm_head", "mlp.c_proj"))
    assert type(model.lm_head) is nn.Linear
    assert all(type(block.mlp.c_proj) is Conv1D for block in model.transformer.h)
    assert isinstance(model.transformer.h[0].mlp.c_fc, Int8WeightOnlyLinear)
    assert model.config.weight_quantization["kept_in_float"] == ["lm_head", "mlp.c_proj"]

    with pytest.raises(ValueError, match=r"skip: 'lm_haed' matches no nn.Linear or Conv1D"):
        quantize_int8(tiny_transformers_gpt2(), skip=("lm_haed",))
    with pytest.raises(TypeError, match="skip is a list of module names"):
        quantize_int8(tiny_transformers_gpt2(), skip="lm_head")


def test_quantize_int8_says_when_there_is_nothing_to_quantize() -> None:
    with pytest.raises(ValueError, match="nothing to quantize in the Sequential: it has no nn"):
        quantize_int8(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    model = quantize_int8(tiny_transformers_gpt2())
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel: it is already quantized \(9 Int8"):
        quantize_int8(model)


def test_subclasses_stay_float_and_a_shared_layer_stays_shared() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(16, 16)
    attention = nn.MultiheadAttention(16, 2, batch_first=True)  # out_proj reads its weight
    model = nn.ModuleDict({"first": shared, "again": shared, "attention": attention})
    quantize_int8(model)
    assert isinstance(model["first"], Int8WeightOnlyLinear)
    assert model["first"] is model["again"]
    assert type(attention.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    x = torch.randn(2, 3, 16)
    attention(x, x, x)  # still runs


def test_a_quantized_model_refuses_save_pretrained(tmp_path) -> None:
    model = quantize_int8(tiny_transformers_gpt2())
    with pytest.raises(ValueError, match=r"quantized to int8 for inference.*save the float model"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
