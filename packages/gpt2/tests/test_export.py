"""Writing checkpoints: export_to_transformers gives a directory transformers' GPT-2 loads with
the same outputs, transformers -> ours -> transformers is bit-exact, our own save/load is
bit-exact with the tied embedding stored once, and the weight conversion inverts itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

from scratchformers.gpt2 import GPT2LMHeadModel, GPT2Model, export_to_transformers
from scratchformers.gpt2.convert import CONVERTER


def safetensors_keys(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return set(handle.keys())


@pytest.mark.parametrize("tie", [True, False])
def test_export_of_our_model_loads_in_transformers(
    make_config: Callable,
    tmp_path: Path,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
    tie: bool,
) -> None:
    torch.manual_seed(3)
    model = GPT2LMHeadModel(
        make_config(n_embd=40, n_head=5, n_inner=56, tie_word_embeddings=tie, initializer_range=0.2)
    ).eval()
    with torch.no_grad():  # non-zero biases and non-trivial LayerNorms, so that each one matters
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    out = export_to_transformers(model, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["n_inner"] == 56 and config["n_embd"] == 40 and config["n_head"] == 5
    theirs, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    theirs.eval()
    assert (
        type(transformers.AutoModelForCausalLM.from_pretrained(out)) is transformers.GPT2LMHeadModel
    )
    assert theirs.config.tie_word_embeddings is tie
    assert (theirs.lm_head.weight is theirs.transformer.wte.weight) is tie
    assert ("lm_head.weight" in safetensors_keys(out)) is not tie
    input_ids, mask, _ = padded_batch((13, 4, 9))
    with torch.no_grad():
        got = model(input_ids, attention_mask=mask).logits
        expected = theirs(input_ids, attention_mask=mask, position_ids=their_positions(mask)).logits
    assert_matches(got, expected, mask)


def test_export_of_our_base_model(
    make_config: Callable,
    tmp_path: Path,
    padded_batch: Callable,
    their_positions: Callable,
    assert_matches: Callable,
) -> None:
    model = GPT2Model(make_config(initializer_range=0.2)).eval()
    out = export_to_transformers(model, tmp_path)
    theirs, info = transformers.GPT2Model.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    theirs.eval()
    input_ids, mask, _ = padded_batch()
    with torch.no_grad():
        got = model(input_ids, attention_mask=mask).last_hidden_state
        expected = theirs(
            input_ids, attention_mask=mask, position_ids=their_positions(mask)
        ).last_hidden_state
    assert_matches(got, expected, mask, what="hidden state")


def test_export_keeps_the_dtype(make_pair: Callable, tmp_path: Path) -> None:
    """A model cast to bfloat16 exports bfloat16 weights, and a config.json that says so."""
    model = make_pair(n_embd=40, n_head=5).ours.to(torch.bfloat16)
    out = export_to_transformers(model, tmp_path)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert {p.dtype for p in theirs.parameters()} == {torch.bfloat16}
    assert torch.equal(theirs.transformer.wte.weight, model.transformer.wte.weight)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": False, "n_embd": 40, "n_head": 5, "n_layer": 3}],
    ids=["tied", "untied-odd"],
)
def test_transformers_to_ours_to_transformers_is_bit_exact(
    make_pair: Callable, tmp_path: Path, overrides: dict
) -> None:
    pair = make_pair(activation_function="relu", scale_attn_by_inverse_layer_idx=True, **overrides)
    out = export_to_transformers(pair.ours, tmp_path)
    back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    original, returned = pair.theirs.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for name, tensor in original.items():
        assert torch.equal(returned[name], tensor), name
    for key in (
        "activation_function",
        "scale_attn_by_inverse_layer_idx",
        "tie_word_embeddings",
        "n_embd",
        "n_layer",
        "n_head",
        "n_positions",
        "vocab_size",
        "layer_norm_epsilon",
    ):
        assert getattr(back.config, key) == getattr(pair.theirs.config, key), key
    input_ids = torch.randint(2, 101, (2, 7))
    with torch.no_grad():
        assert torch.equal(back(input_ids).logits, pair.theirs(input_ids).logits)


def test_export_keeps_the_generation_config(make_config: Callable, tmp_path: Path) -> None:
    model = GPT2LMHeadModel(make_config())
    model.generation_config.max_new_tokens = 7
    model.generation_config.pad_token_id = 0
    out = export_to_transformers(model, tmp_path)
    loaded = transformers.GenerationConfig.from_pretrained(out)
    assert loaded.max_new_tokens == 7 and loaded.pad_token_id == 0


@pytest.mark.parametrize("tie", [True, False])
def test_our_round_trip_is_bit_exact_and_stores_tied_weights_once(
    make_config: Callable, tmp_path: Path, tie: bool
) -> None:
    model = GPT2LMHeadModel(make_config(tie_word_embeddings=tie, n_layer=3)).eval()
    model.save_pretrained(tmp_path)
    keys = safetensors_keys(tmp_path)
    assert "transformer.wte.weight" in keys
    assert ("lm_head.weight" in keys) is not tie
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) is tie
    original, returned = model.state_dict(), loaded.state_dict()
    assert original.keys() == returned.keys()
    for name, tensor in original.items():
        assert torch.equal(returned[name], tensor), name
    if not tie:
        assert not torch.equal(loaded.lm_head.weight, loaded.transformer.wte.weight)
    input_ids = torch.randint(2, 101, (3, 5))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)


def test_conversion_maps_every_weight_to_transformers_names(make_pair: Callable) -> None:
    """Converting our state dict gives transformers' exact names, shapes and values, and the
    q/k/v projections are the three column blocks of c_attn (transposed)."""
    pair = make_pair(n_embd=40, n_head=5, n_inner=24)
    theirs = pair.theirs.state_dict()
    converted = CONVERTER.state_to_transformers(pair.ours.state_dict())
    assert converted.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(converted[name], tensor), name
    attn = pair.ours.transformer.h[1].attn
    c_attn = theirs["transformer.h.1.attn.c_attn.weight"]
    assert c_attn.shape == (40, 120)
    for i, projection in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        assert torch.equal(projection.weight.t(), c_attn[:, 40 * i : 40 * (i + 1)])


@given(
    n_embd=st.sampled_from([8, 12, 20]),
    n_inner=st.integers(1, 9),
    n_layer=st.integers(1, 3),
    with_prefix=st.booleans(),
)
def test_state_conversion_round_trips(
    n_embd: int, n_inner: int, n_layer: int, with_prefix: bool
) -> None:
    """For any shapes, ours -> theirs -> ours and theirs -> ours -> theirs are the identity,
    with or without the ``transformer.`` prefix (GPT2Model files have none)."""
    generator = torch.Generator().manual_seed(n_embd * 100 + n_inner * 10 + n_layer)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    prefix = "transformer." if with_prefix else ""
    theirs = {f"{prefix}wte.weight": random(11, n_embd), f"{prefix}wpe.weight": random(5, n_embd)}
    for i in range(n_layer):
        layer = f"{prefix}h.{i}."
        theirs |= {
            f"{layer}ln_1.weight": random(n_embd),
            f"{layer}attn.c_attn.weight": random(n_embd, 3 * n_embd),
            f"{layer}attn.c_attn.bias": random(3 * n_embd),
            f"{layer}attn.c_proj.weight": random(n_embd, n_embd),
            f"{layer}attn.c_proj.bias": random(n_embd),
            f"{layer}mlp.c_fc.weight": random(n_embd, n_inner),
            f"{layer}mlp.c_fc.bias": random(n_inner),
            f"{layer}mlp.c_proj.weight": random(n_inner, n_embd),
            f"{layer}mlp.c_proj.bias": random(n_embd),
        }
    ours = CONVERTER.state_from_transformers(theirs)
    assert all(name.startswith(prefix) and "c_attn" not in name for name in ours)
    assert ours[f"{prefix}h.0.mlp.c_fc.weight"].shape == (n_inner, n_embd)
    assert torch.equal(
        ours[f"{prefix}h.0.attn.v_proj.bias"], theirs[f"{prefix}h.0.attn.c_attn.bias"][2 * n_embd :]
    )
    assert torch.equal(
        ours[f"{prefix}h.0.attn.o_proj.weight"], theirs[f"{prefix}h.0.attn.c_proj.weight"].t()
    )
    back = CONVERTER.state_to_transformers(ours)
    assert back.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(back[name], tensor), name
    again = CONVERTER.state_from_transformers(back)
    assert again.keys() == ours.keys()
    assert all(torch.equal(again[name], tensor) for name, tensor in ours.items())
