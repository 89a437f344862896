"""What a LoRA layer computes, with numbers: the scaling (plain and rsLoRA), dropout on the LoRA
path only, merge and unmerge, disabling, and several named adapters on one model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchformers import lora


def adapted_linear(**settings: Any) -> tuple[nn.Sequential, lora.LoraLinear]:
    """An odd-sized Linear(11, 7) in a Sequential, adapted, with a random B."""
    model = nn.Sequential(nn.Linear(11, 7))
    lora.inject(model, lora.LoraConfig(target_modules=["0"], **settings))
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    return model, layer


@pytest.mark.parametrize(("r", "alpha", "rslora"), [(3, 5, False), (3, 5, True), (16, 8, True)])
def test_update_and_scaling(r: int, alpha: float, rslora: bool) -> None:
    model, layer = adapted_linear(r=r, lora_alpha=alpha, use_rslora=rslora)
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    assert layer.scaling["default"] == pytest.approx(scaling)
    x = torch.randn(2, 5, 11)  # any leading shape
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = F.linear(x, layer.weight, layer.bias) + scaling * (x @ a.T @ b.T)
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-6)


def test_initialisation_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(11, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(4, 11)
    before = model(x)
    lora.inject(model, lora.LoraConfig(r=4, target_modules=["0", "2"]))
    assert torch.equal(model(x), before)
    for layer, fan_in in ((model[0], 11), (model[2], 7)):
        a = layer.lora_A["default"].weight
        assert a.shape == (4, fan_in) and layer.lora_B["default"].weight.shape[1] == 4
        bound = 1 / math.sqrt(fan_in)  # Kaiming-uniform with a = sqrt(5), as nn.Linear
        assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound
        assert not layer.lora_B["default"].weight.any()


def test_dropout_is_on_the_lora_path_only() -> None:
    model, layer = adapted_linear(r=3, lora_alpha=6, lora_dropout=0.5)
    x = torch.randn(6, 11)
    model.train()
    torch.manual_seed(7)
    actual = model(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, 0.5, training=True)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = F.linear(x, layer.weight, layer.bias) + 2.0 * (dropped @ a.T @ b.T)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)
    model.eval()
    eval_expected = F.linear(x, layer.weight, layer.bias) + 2.0 * (x @ a.T @ b.T)
    torch.testing.assert_close(model(x), eval_expected, atol=1e-6, rtol=1e-6)


def test_merge_and_unmerge_are_exact(
    case: Callable[[str], Any], randomize_adapter_weights: Callable
) -> None:
    c = case("gpt2")
    model = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    randomize_adapter_weights(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = c.output(model)
    lora.merge(model)
    layer = model.transformer.h[0].attn.q_proj
    assert layer.merged == "default"
    delta = layer.weight - weights["transformer.h.0.attn.q_proj.weight"]
    torch.testing.assert_close(delta, layer.delta_weight("default"), atol=1e-6, rtol=0)
    merged = c.output(model)
    mask = c.mask.bool()
    assert float((merged - adapted)[mask].abs().max()) < 1e-5
    with pytest.raises(ValueError, match="merged already"):
        lora.merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        lora.disable_adapters(model)
    lora.unmerge(model)
    for key, value in model.state_dict().items():
        assert float((value - weights[key]).abs().max()) <= 1e-6, key
    torch.testing.assert_close(c.output(model), adapted, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no adapter is merged"):
        lora.unmerge(model)


def test_disable_and_enable(
    case: Callable[[str], Any], randomize_adapter_weights: Callable
) -> None:
    c = case("bert")  # LoRA layers and a classifier saved in full
    model = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    randomize_adapter_weights(model)
    base, adapted = c.output(c.base), c.output(model)
    lora.disable_adapters(model)
    assert torch.equal(c.output(model), base)
    lora.enable_adapters(model)
    assert torch.equal(c.output(model), adapted)
    with lora.adapters_disabled(model):
        assert torch.equal(c.output(model), base)
    assert torch.equal(c.output(model), adapted)


def test_several_adapters_switch(
    case: Callable[[str], Any], randomize_adapter_weights: Callable
) -> None:
    c = case("bert")
    first = lora.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["classifier"])
    second = lora.LoraConfig(r=3, target_modules=["v_proj", "down_proj"])
    alone = {}
    for name, config, seed in (("first", first, 1), ("second", second, 2)):
        single = lora.inject(c.fresh(), config, adapter_name=name)
        randomize_adapter_weights(single, seed=seed)
        alone[name] = (single, c.output(single))

    model = c.fresh()
    assert lora.inject(model, first, adapter_name="first") is model
    lora.inject(model, second, adapter_name="second")
    assert lora.adapter_names(model) == ["first", "second"]
    assert lora.active_adapter(model) == "second"  # inject activates what it adds
    with torch.no_grad():  # the same adapter weights as the single-adapter models
        for name, (single, _) in alone.items():
            ours = dict(model.named_parameters())
            for key, value in single.named_parameters():
                if f".{name}." in key:
                    ours[key].copy_(value)
    for name in ("first", "second", "first"):
        lora.set_adapter(model, name)
        torch.testing.assert_close(c.output(model), alone[name][1], atol=1e-6, rtol=0)
        trainable = [key for key, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(f".{name}." in key for key in trainable)
    lora.merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        lora.set_adapter(model, "second")
    lora.unmerge(model)
    with pytest.raises(ValueError, match=r"no adapter named 'third'.*\['first', 'second'\]"):
        lora.set_adapter(model, "third")
    with pytest.raises(ValueError, match="adapter named 'first' already"):
        lora.inject(model, first, adapter_name="first")


def test_merge_refuses_a_tied_weight(case: Callable[[str], Any]) -> None:
    c = case("gpt2")  # lm_head shares its weight with the token embedding
    model = lora.inject(c.fresh(), lora.LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match=r"lm_head: its weight is shared with transformer\.wte"):
        lora.merge(model)


def test_half_precision_base_keeps_fp32_adapter() -> None:
    model = nn.Sequential(nn.Linear(11, 7)).to(torch.bfloat16)
    lora.inject(model, lora.LoraConfig(r=2, target_modules=["0"]))
    assert model[0].lora_A["default"].weight.dtype == torch.float32
    x = torch.randn(3, 11, dtype=torch.bfloat16)
    assert model(x).dtype == torch.bfloat16
