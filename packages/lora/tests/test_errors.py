"""Mistakes fail at once, say what is wrong, and leave the model as it was."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from scratchformers import lora


def stack(width: int = 13) -> nn.Sequential:
    return nn.Sequential(nn.Linear(7, width), nn.ReLU(), nn.Linear(width, 5))


def test_a_target_that_matches_nothing_names_it_and_what_exists(
    case: Callable[[str], Any],
) -> None:
    model = case("gpt2").fresh()
    before = repr(model)
    with pytest.raises(ValueError, match=r"'q_prj' matches no module") as error:
        lora.inject(model, lora.LoraConfig(target_modules=["q_proj", "q_prj"]))
    assert "transformer.h.0.attn.q_proj" in str(error.value)
    assert "c_fc" in str(error.value)
    with pytest.raises(ValueError, match=r"regular expression '.*\\.query' matches no module"):
        lora.inject(model, lora.LoraConfig(target_modules=r".*\.query"))
    assert repr(model) == before and lora.adapter_names(model) == []


def test_targets_must_be_linear() -> None:
    with pytest.raises(ValueError, match=r"matched 1 \(ReLU\), which is not an nn.Linear"):
        lora.inject(stack(), lora.LoraConfig(target_modules=r"\d"))
    attention = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match=r"out_proj of an nn\.MultiheadAttention"):
        lora.inject(attention, lora.LoraConfig(target_modules=["out_proj"]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"r": 0}, "r must be a positive integer, got 0"),
        ({"r": -2}, "r must be a positive integer, got -2"),
        ({"r": 2.5}, "r must be a positive integer"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in"),
        ({"target_modules": None}, "target_modules is required"),
        ({"target_modules": "all-linear"}, "peft's shorthand"),
        ({"modules_to_save": "classifier"}, "modules_to_save must be a list"),
    ],
)
def test_bad_config(settings: dict[str, Any], message: str) -> None:
    options = {"target_modules": ["0"], **settings}
    with pytest.raises(ValueError, match=message):
        lora.LoraConfig(**options)


def test_modules_to_save_that_name_nothing() -> None:
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] names no module"):
        lora.inject(stack(), lora.LoraConfig(target_modules=["0"], modules_to_save=["head"]))
    # One entry that names a module is enough (peft's classifier / score pair).
    model = lora.inject(stack(), lora.LoraConfig(target_modules=["0"], modules_to_save=["2", "x"]))
    assert isinstance(model[2], lora.ModulesToSave)


def test_unknown_and_duplicate_adapter_names(tmp_path: Path) -> None:
    model = lora.inject(stack(), lora.LoraConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match=r"no adapter named 'other'; this model has \['default'\]"):
        lora.save_adapter(model, tmp_path, adapter_name="other")
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        lora.set_adapter(model, "other")
    with pytest.raises(ValueError, match="named 'default' already"):
        lora.inject(model, lora.LoraConfig(target_modules=["2"]))
    with pytest.raises(ValueError, match=r"without '\.'"):
        lora.inject(model, lora.LoraConfig(target_modules=["2"]), adapter_name="a.b")
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        lora.merge(stack())


def test_an_adapter_that_does_not_fit(tmp_path: Path) -> None:
    lora.save_adapter(lora.inject(stack(13), lora.LoraConfig(r=3, target_modules=["0"])), tmp_path)
    other = stack(11)
    with pytest.raises(ValueError, match=r"layer 0: its lora_B.weight has shape \(13, 3\), the layer needs \(11, 3\)"):  # fmt: skip
        lora.load_adapter(other, tmp_path)
    assert not isinstance(other[0], lora.LoraLinear)  # unchanged
    with pytest.raises(ValueError, match="named 'default' already"):
        lora.load_adapter(lora.load_adapter(stack(13), tmp_path), tmp_path)


def test_adapter_files_that_do_not_load(tmp_path: Path) -> None:
    model = lora.inject(stack(), lora.LoraConfig(r=3, target_modules=["0"]))
    lora.save_adapter(model, tmp_path)
    config_file = tmp_path / "adapter_config.json"
    settings = json.loads(config_file.read_text())

    config_file.write_text(json.dumps({**settings, "use_dora": True, "lora_bias": True}))
    with pytest.raises(ValueError, match="does not implement: lora_bias=True, use_dora=True"):
        lora.load_adapter(stack(), tmp_path)
    config_file.write_text(json.dumps({**settings, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        lora.load_adapter(stack(), tmp_path)
    config_file.write_text(json.dumps({**settings, "target_modules": ["0", "2"]}))
    with pytest.raises(ValueError, match=r"lacks weights .*2\.lora_A\.weight"):
        lora.load_adapter(stack(), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        lora.load_adapter(stack(), tmp_path / "nowhere")


def test_an_adapter_config_that_is_not_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    lora.save_adapter(lora.inject(stack(), lora.LoraConfig(r=3, target_modules=["0"])), tmp_path)
    config_file = tmp_path / "adapter_config.json"
    config_file.write_text('{\n  "r": 3,\n  "target_modules": ')
    model = stack()
    with pytest.raises(ValueError) as raised:
        lora.load_adapter(model, tmp_path)
    assert str(raised.value) == (
        f"{config_file} is not valid JSON: Expecting value at line 3 column 21"
    )
    config_file.write_text("[3]")
    with pytest.raises(ValueError, match=re.escape(f"{config_file} holds a JSON list, not")):
        lora.read_config(tmp_path)
    config_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=re.escape(str(config_file))):
        lora.read_config(tmp_path)
    assert lora.adapter_names(model) == [] and not isinstance(model[0], lora.LoraLinear)


DAMAGED_WEIGHTS = {
    "empty": (lambda data: b"", "is empty"),
    "truncated": (lambda data: data[: len(data) // 2], "is truncated: its header says"),
    "not safetensors": (lambda data: b"PK\x03\x04 a zip archive", "is not a safetensors file"),
}


@pytest.mark.parametrize("damage", DAMAGED_WEIGHTS.values(), ids=DAMAGED_WEIGHTS.keys())
def test_a_damaged_weights_file_names_the_file_and_the_fault(
    tmp_path: Path, damage: tuple[Callable[[bytes], bytes], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spoil, fault = damage
    lora.save_adapter(lora.inject(stack(), lora.LoraConfig(r=3, target_modules=["0"])), tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(spoil(weights.read_bytes()))
    model = stack()
    with pytest.raises(OSError, match=f"^{re.escape(f'{weights} {fault}')}"):
        lora.load_adapter(model, tmp_path)
    assert lora.adapter_names(model) == [] and not isinstance(model[0], lora.LoraLinear)
    # Without core-attention (lora needs only torch and safetensors): safetensors' reason.
    monkeypatch.setitem(sys.modules, "scratchformers.core_attention.files", None)
    with pytest.raises(OSError, match=f"^{re.escape(str(weights))} is not a readable safetensors"):
        lora.load_adapter(model, tmp_path)


def test_inject_refuses_a_merged_model() -> None:
    model = lora.inject(stack(), lora.LoraConfig(target_modules=["0"]))
    lora.merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        lora.inject(model, lora.LoraConfig(target_modules=["2"]), adapter_name="b")
    assert lora.adapter_names(model) == ["default"]
    assert torch.isfinite(model(torch.randn(2, 7))).all()
