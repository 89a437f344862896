"""Input-major linear weights: a float32 ``generate()`` on a CPU stores them in the other
memory order, with the same values, shapes, results and parameter objects, and a bf16 one
puts them back; the order is kept through training and saving; tied weights and distributed
processes are left alone. While ``generate()`` runs, each self-attention computes its query,
key and value with one product over a stacked copy of the three weights, with the same
results, and the copy is gone afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.dataclasses import strict
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from scratchformers.core_attention import (
    Attention,
    ChecksCheckpoints,
    InputMajorLinears,
    is_input_major,
    lay_out_linears,
    packed_query_key_value,
)


@strict
class ToyConfig(PreTrainedConfig):
    model_type = "toy-input-major"
    vocab_size: int = 11
    hidden_size: int = 6
    tie_word_embeddings: bool = True


class Generates:
    """Stands in for transformers' GenerationMixin: records the layouts generate() saw."""

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.seen = layouts(self)  # type: ignore[arg-type]
        return self(input_ids).argmax(-1)  # type: ignore[operator]


class ToyModel(InputMajorLinears, ChecksCheckpoints, PreTrainedModel, Generates):
    config_class = ToyConfig
    _tied_weights_keys = {"head.weight": "embed.weight"}

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.up = nn.Linear(config.hidden_size, 2 * config.hidden_size + 1)
        self.down = nn.Linear(2 * config.hidden_size + 1, config.hidden_size, bias=False)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        return self.head(hidden + self.down(torch.relu(self.up(hidden))))


def layouts(model: nn.Module) -> dict[str, bool]:
    return {name: is_input_major(p) for name, p in model.named_parameters() if p.dim() == 2}


CONTIGUOUS = {"embed.weight": False, "up.weight": False, "down.weight": False}
INPUT_MAJOR = {"embed.weight": False, "up.weight": True, "down.weight": True}
IDS = torch.tensor([[1, 4, 9], [10, 0, 3]])


def test_generate_lays_out_every_linear_but_the_tied_head_and_changes_nothing_else() -> None:
    model = ToyModel(ToyConfig())
    assert model.head.weight is model.embed.weight  # tied: an embedding's rows stay rows
    assert layouts(model) == CONTIGUOUS  # construction leaves nn.Linear's order
    parameters = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in parameters.items()}
    expected = model(IDS)

    model.generate(IDS)
    assert model.seen == INPUT_MAJOR  # already for the decode itself
    assert model.up.weight.shape == (13, 6)  # the shape (the contract) is nn.Linear's
    assert dict(model.named_parameters()) == parameters  # the same objects, for optimizers
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    torch.testing.assert_close(model(IDS), expected, rtol=1e-6, atol=1e-6)
    assert lay_out_linears(model, input_major=True) == 0  # already input-major: nothing to do


def test_an_untied_head_is_laid_out_too() -> None:
    model = ToyModel(ToyConfig(tie_word_embeddings=False))
    assert lay_out_linears(model, input_major=True) == 3


def test_after_a_decode_in_inference_mode_the_model_trains_and_saves(tmp_path: Path) -> None:
    model = ToyModel(ToyConfig()).to(torch.float64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    with torch.inference_mode():
        model.generate(IDS)
    assert layouts(model) == INPUT_MAJOR
    model.to(torch.float32)
    assert layouts(model) == INPUT_MAJOR  # .to() preserves strides

    model(IDS).logsumexp(-1).sum().backward()  # no "inference tensors" error
    assert is_input_major(model.up.weight.grad)  # no copy to match the parameter
    optimizer.step()
    assert layouts(model) == INPUT_MAJOR

    model.save_pretrained(tmp_path)
    assert torch.equal(load_file(tmp_path / "model.safetensors")["up.weight"], model.up.weight)
    loaded = ToyModel.from_pretrained(tmp_path)
    assert layouts(loaded) == CONTIGUOUS
    torch.testing.assert_close(loaded(IDS), model(IDS))  # rounding differs by kernel


def test_a_process_in_a_distributed_group_keeps_the_contiguous_order(tmp_path: Path) -> None:
    # FSDP refuses parameters that are not contiguous; DDP has made its buckets already.
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = ToyModel(ToyConfig())
        model.generate(IDS)
        assert model.seen == CONTIGUOUS
    finally:
        torch.distributed.destroy_process_group()


def test_a_bf16_decode_finds_the_contiguous_order() -> None:
    model = ToyModel(ToyConfig())
    model.generate(IDS)
    assert model.seen == INPUT_MAJOR
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.generate(IDS)
    assert model.seen == CONTIGUOUS
    model.generate(IDS)
    assert model.seen == INPUT_MAJOR
    model.to(torch.bfloat16)  # keeps the strides; the next decode puts them back
    model.generate(IDS)
    assert model.seen == CONTIGUOUS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_product_is_the_same_in_either_order(dtype: torch.dtype) -> None:
    linear = nn.Linear(24, 40).to(dtype)
    rows = torch.randn(3, 24, dtype=dtype)
    expected = linear(rows)
    lay_out_linears(linear, input_major=True)
    assert is_input_major(linear.weight)
    torch.testing.assert_close(linear(rows), expected)


class AttentionModel(InputMajorLinears, nn.Module, Generates):
    """Self attention with grouped key/value heads, then cross attention over a fixed memory."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 24)
        self.self_attention = Attention(24, 4, 2, is_causal=True, layer_idx=0)
        self.cross_attention = Attention(24, 4, is_cross_attention=True, key_value_size=10)
        self.memory = nn.Parameter(torch.randn(1, 5, 10))
        # Per call: the stacked weight's dtype, or None where the layer ran its three products.
        self.stacked: list[torch.dtype | None] = []
        for layer in (self.self_attention, self.cross_attention):
            layer.register_forward_pre_hook(
                lambda layer, args: self.stacked.append(
                    None if layer.packed_qkv is None else layer.packed_qkv[0].dtype
                )
            )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        hidden = hidden + self.self_attention(hidden)[0]
        memory = self.memory.expand(len(input_ids), -1, -1)
        return hidden + self.cross_attention(hidden, key_value_states=memory)[0]


@pytest.mark.parametrize("input_major", [True, False])
def test_stacked_query_key_value_give_the_same_attention_and_are_dropped_after(
    input_major: bool,
) -> None:
    model = AttentionModel().eval()
    expected = model(IDS)
    with torch.no_grad(), packed_query_key_value(model, input_major=input_major) as stacked:
        assert stacked == 1  # cross attention reads two inputs: nothing to stack
        weight, bias = model.self_attention.packed_qkv
        assert weight.shape == (24 + 12 + 12, 24) and bias.shape == (48,)
        assert is_input_major(weight) == input_major
        torch.testing.assert_close(model(IDS), expected, rtol=1e-6, atol=1e-6)
    assert model.stacked[-2:] == [torch.float32, None]
    assert model.self_attention.packed_qkv is None
    assert not any("packed" in name for name, _ in model.named_parameters())
    assert not any("packed" in name for name in model.state_dict())


def test_generate_stacks_query_key_value_in_its_precision_and_not_under_peft_like_layers() -> None:
    model = AttentionModel().eval()
    model.generate(IDS)
    assert model.stacked == [torch.float32, None]
    assert model.self_attention.packed_qkv is None

    model.stacked.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with packed_query_key_value(model, input_major=False, dtype=torch.bfloat16):
            assert model.self_attention.packed_qkv[0].is_contiguous()  # bf16 reads it so
        # autocast would cast a copy at every step: generate makes it in autocast's dtype once
        model.stacked.clear()
        model.generate(IDS)
    assert model.stacked == [torch.bfloat16, None]

    class Adapted(nn.Linear):  # what peft's LoRA or an int8 layer puts in a projection's place
        pass

    adapted = Adapted(24, 12)
    adapted.load_state_dict(model.self_attention.k_proj.state_dict())
    model.self_attention.k_proj = adapted
    model.stacked.clear()
    model.generate(IDS)
    assert model.stacked == [None, None]
