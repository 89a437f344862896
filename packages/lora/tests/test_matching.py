"""``target_modules`` and ``modules_to_save`` pick the modules peft picks: exact names, name
suffixes after a dot, a regular expression over the whole name, and no LoRA layer inside a
module to save; everything else is frozen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peft
import pytest
from torch import nn

from scratchformers import lora

SELECTIONS = [
    ("gpt2", {"target_modules": ["q_proj", "v_proj"]}),
    ("gpt2", {"target_modules": ["transformer.h.0.attn.q_proj", "attn.o_proj"]}),
    ("gpt2", {"target_modules": r"transformer\.h\.1\.(attn\.[qv]_proj|mlp\.c_fc)"}),
    ("gpt2", {"target_modules": ["c_fc", "q_proj"], "modules_to_save": ["h.1.mlp", "ln_f"]}),
    ("hf-bert", {"target_modules": ["dense"], "modules_to_save": ["classifier", "score"]}),
    ("bert", {"target_modules": r".*\.(q|k|v|o)_proj", "modules_to_save": ["pooler"]}),
]


def chosen(model: nn.Module, prefix: str = "") -> tuple[list[str], list[str]]:
    """The names of the LoRA layers and of the modules to save, ours or peft's."""
    layers, saved = [], []
    for name, module in model.named_modules():
        name = name.removeprefix(prefix)
        if isinstance(module, lora.LoraLinear | peft.tuners.lora.LoraLayer):
            layers.append(name)
        elif isinstance(module, lora.ModulesToSave | peft.utils.other.ModulesToSaveWrapper):
            saved.append(name)
    return sorted(layers), sorted(saved)


@pytest.mark.parametrize(("which", "settings"), SELECTIONS)
def test_selection_equals_peft(
    which: str, settings: dict[str, Any], case: Callable[[str], Any]
) -> None:
    c = case(which)
    ours = lora.inject(c.fresh(), lora.LoraConfig(r=2, **settings))
    theirs = peft.get_peft_model(c.fresh(), peft.LoraConfig(r=2, **settings))
    layers, saved = chosen(ours)
    assert layers  # the selection is not empty
    assert (layers, saved) == chosen(theirs, prefix="base_model.model.")
    assert lora.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    trainable = {name for name, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {
        name
        for name, _ in ours.named_parameters()
        if ".lora_A.default." in name
        or ".lora_B.default." in name
        or ".modules_to_save.default." in name
    }


def test_summary_counts(case: Callable[[str], Any]) -> None:
    c = case("sequential")  # Linear(7, 13), ReLU, Linear(13, 5), Linear(5, 3)
    model = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))  # r=2 on 0 and 2, save 3
    lora_parameters = 2 * (7 + 13) + 2 * (13 + 5)
    base = (7 * 13 + 13) + (13 * 5 + 5) + (5 * 3 + 3)
    assert lora.trainable_parameters(model) == (lora_parameters + 18, base + lora_parameters + 18)
    text = lora.summary(model)
    assert "adapter 'default' (active): r=2, lora_alpha=3, scaling=1.5, 2 LoRA layers" in text
    assert "modules_to_save: ['3']" in text
    assert f"trainable params: {lora_parameters + 18:,}" in text
    assert lora.summary(c.fresh()).startswith("no LoRA adapter")
