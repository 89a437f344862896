"""Training moves only the adapter: a few optimizer steps change the LoRA matrices and the
copies of the modules to save, gradients reach only them, and the base weights stay as they
were. Then the ways out: the adapter alone, the whole model, the merged plain model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from scratchformers import lora


def train_steps(case: Any, model: torch.nn.Module, labels: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**case.inputs, labels=labels).loss
        loss.backward()
        for name, parameter in model.named_parameters():
            assert (parameter.grad is not None) == parameter.requires_grad, name
        optimizer.step()
    model.eval()


def test_only_the_adapter_trains(case: Callable[[str], Any]) -> None:
    c = case("bert")
    model = lora.inject(c.fresh(), lora.LoraConfig(**{**c.settings, "lora_dropout": 0.1}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(c, model, labels=torch.tensor([0, 2, 1]))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    adapter = {k for k in before if ".lora_" in k or ".modules_to_save." in k}
    assert changed == adapter  # every A, B and classifier copy moved; nothing else
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == adapter
    with lora.adapters_disabled(model):  # the base model computes as before training
        assert torch.equal(c.output(model), c.output(c.base))


def test_gpt2_trains_on_its_lm_loss(case: Callable[[str], Any]) -> None:
    c = case("gpt2")
    model = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    labels = c.inputs["input_ids"].masked_fill(c.mask == 0, -100)
    with torch.no_grad():
        start = model(**c.inputs, labels=labels).loss.item()
    train_steps(c, model, labels, steps=4)
    with torch.no_grad():
        assert model(**c.inputs, labels=labels).loss.item() < start
    assert all(not p.requires_grad for k, p in model.named_parameters() if "lora_" not in k)


def test_save_pretrained_with_adapters_and_merged(
    case: Callable[[str], Any], randomize_adapter_weights: Callable, tmp_path: Path
) -> None:
    c = case("bert")
    model = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    randomize_adapter_weights(model)
    adapted = c.output(model)

    # The whole model, adapters included, under the names the model has in memory.
    model.save_pretrained(tmp_path / "with-adapters")
    keys = set(load_file(tmp_path / "with-adapters" / "model.safetensors"))
    assert "bert.encoder.layer.0.attention.q_proj.weight" in keys  # base names unchanged
    assert "bert.encoder.layer.0.attention.q_proj.lora_A.default.weight" in keys
    assert {
        "classifier.original_module.weight",
        "classifier.modules_to_save.default.weight",
    } <= keys

    # merge_and_unload: the plain class, an ordinary checkpoint, the adapted outputs.
    plain = lora.merge_and_unload(model)
    assert not any(isinstance(m, lora.LoraLinear | lora.ModulesToSave) for m in plain.modules())
    assert lora.adapter_names(plain) == []
    assert float((c.output(plain) - adapted).abs().max()) < 1e-5
    plain.save_pretrained(tmp_path / "merged")
    reloaded = type(c.base).from_pretrained(tmp_path / "merged").eval()
    assert torch.equal(c.output(reloaded), c.output(plain))
