"""BasicFormer configured as a Llama (RMSNorm, gated SiLU MLP, rotary, GQA, no biases) computes
what transformers' ``LlamaForCausalLM`` computes with the same weights, and the two options it
needs (``norm_type``, ``mlp_type``) work in every mode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from scratchformers.basicformer import (
    BasicFormerConfig,
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
)
from scratchformers.basicformer.llama import basicformer_state_from_llama, config_from_llama
from scratchformers.core_attention.testing import assert_matches_reference

LAYERS = 3


def llama_config(**overrides: object) -> LlamaConfig:
    """A tiny Llama with odd sizes: 6 query heads of 8 channels sharing 2 key/value heads, an
    MLP of 88, vocab 101. Wide initialisation, so that greedy decoding varies between tokens."""
    options: dict[str, object] = {
        "hidden_size": 48,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "intermediate_size": 88,
        "num_hidden_layers": LAYERS,
        "vocab_size": 101,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.3,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    options.update(overrides)
    return LlamaConfig(**options)


def llama_pair(**overrides: object) -> tuple[LlamaForCausalLM, BasicFormerForCausalLM]:
    """A seeded ``LlamaForCausalLM`` and our model loaded with its weights, both in eval mode."""
    torch.manual_seed(0)
    theirs = LlamaForCausalLM(llama_config(**overrides)).eval()
    ours = BasicFormerForCausalLM(config_from_llama(theirs.config)).eval()
    ours.load_state_dict(basicformer_state_from_llama(theirs.state_dict()))  # strict
    return theirs, ours


def norms(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith("norm") and m is not None]


def test_config_from_llama() -> None:
    config = config_from_llama(llama_config(rope_theta=500000.0))
    assert config.position_embedding_type == "rotary" and config.rope_theta == 500000.0
    assert (config.norm_type, config.mlp_type, config.norm_position) == ("rmsnorm", "gated", "pre")
    assert (config.hidden_act, config.layer_norm_eps) == ("silu", 1e-6)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (2, 8, 88)
    assert not (config.attention_bias or config.mlp_bias or config.tie_word_embeddings)
    with pytest.raises(ValueError, match="rope_type='linear'"):
        config_from_llama(
            llama_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
        )


def test_llama_shaped_model_has_llamas_modules() -> None:
    theirs, ours = llama_pair()
    assert set(ours.state_dict()) == set(basicformer_state_from_llama(theirs.state_dict()))
    layer = ours.model.decoder.layers[0]
    assert {name for name, _ in layer.mlp.named_children()} == {
        "gate_proj",
        "up_proj",
        "act",
        "down_proj",
    }
    assert len(norms(ours)) == 2 * LAYERS + 1
    assert all(type(norm) is nn.RMSNorm for norm in norms(ours))
    assert not [name for name, _ in ours.named_parameters() if name.endswith("bias")]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_logits_match_llama(padded_batch: Callable, tied: bool) -> None:
    theirs, ours = llama_pair(tie_word_embeddings=tied)
    input_ids, attention_mask, _ = padded_batch((9, 6, 3))
    assert_matches_reference(ours, theirs, input_ids, attention_mask, atol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_generate_matches_llama(padded_batch: Callable, use_cache: bool) -> None:
    theirs, ours = llama_pair()
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    expected = theirs.generate(input_ids, attention_mask=attention_mask, **options)
    actual = ours.generate(input_ids, attention_mask=attention_mask, use_cache=use_cache, **options)
    assert actual.shape == (3, input_ids.shape[1] + 6)
    assert torch.equal(actual, expected)
    assert len(set(actual[:, input_ids.shape[1] :].flatten().tolist())) > 3  # not degenerate


def test_lora_attaches_to_llama_names(padded_batch: Callable) -> None:
    _, base = llama_pair()
    input_ids, attention_mask, _ = padded_batch()
    with torch.no_grad():
        base_logits = base(input_ids, attention_mask=attention_mask).logits

    targets = ["q_proj", "v_proj", "gate_proj"]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)

    wrapped = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    assert len(wrapped) == len(targets) * LAYERS
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == set(targets)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(wrapped)
    with torch.no_grad():  # LoRA starts as the identity (B = 0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits, base_logits, atol=0, rtol=0)

    labels = input_ids.masked_fill(attention_mask == 0, -100)
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    gate_b = [p for name, p in model.named_parameters() if "gate_proj.lora_B" in name]
    assert gate_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_b)


@pytest.mark.parametrize("norm_type", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("mlp_type", ["plain", "gated"])
@pytest.mark.parametrize(
    "model_class", [BasicFormerForMaskedLM, BasicFormerForCausalLM, BasicFormerForSeq2SeqLM]
)
def test_norm_and_mlp_type_in_every_mode(
    make_model: Callable, padded_batch: Callable, model_class: type, norm_type: str, mlp_type: str
) -> None:
    model = make_model(model_class, norm_type=norm_type, mlp_type=mlp_type)
    norm_class = nn.RMSNorm if norm_type == "rmsnorm" else nn.LayerNorm
    found = norms(model)
    assert found and all(type(norm) is norm_class for norm in found)
    assert all(torch.equal(norm.weight, torch.ones_like(norm.weight)) for norm in found)
    mlps = [m for name, m in model.named_modules() if name.endswith(".mlp")]
    assert mlps and all((mlp.gate_proj is not None) == (mlp_type == "gated") for mlp in mlps)

    input_ids, attention_mask, _ = padded_batch()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if model_class is BasicFormerForSeq2SeqLM:
        inputs["decoder_input_ids"] = input_ids[:, :4]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_options_survive_save_and_load(tmp_path: Path, padded_batch: Callable) -> None:
    _, model = llama_pair()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.config, BasicFormerConfig)
    assert (reloaded.config.norm_type, reloaded.config.mlp_type) == ("rmsnorm", "gated")
    input_ids, attention_mask, _ = padded_batch()
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask).logits
        actual = reloaded(input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
