"""Our adapters and peft's are the same adapters: each side loads the other's directory and
gives the same outputs (fp32, 1e-5) before and after merging, on transformers' BERT, our BERT,
our GPT-2 and a plain torch stack, with padded batches for the text models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
from safetensors.torch import load_file

from scratchformers import lora


def peft_model(case: Any) -> peft.PeftModel:
    config = peft.LoraConfig(**case.settings)
    return peft.get_peft_model(case.fresh(), config).eval()


def test_peft_loads_our_adapter(
    kind: str,
    case: Callable[[str], Any],
    assert_matches: Callable[..., float],
    randomize_adapter_weights: Callable,
    tmp_path: Path,
) -> None:
    c = case(kind)
    ours = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    randomize_adapter_weights(ours)
    expected = c.output(ours)
    assert float((expected - c.output(c.base)).abs().max()) > 0.1  # the adapter counts
    lora.save_adapter(ours, tmp_path)

    theirs = peft.PeftModel.from_pretrained(c.fresh(), tmp_path).eval()
    assert_matches(c.output(theirs), expected, c.mask, what="output (peft loads ours)")

    lora.merge(ours)
    merged_theirs = theirs.merge_and_unload()
    assert_matches(c.output(ours), expected, c.mask, what="merged output")
    assert_matches(c.output(merged_theirs), c.output(ours), c.mask, what="merged output")


def test_we_load_peft_adapter(
    kind: str,
    case: Callable[[str], Any],
    assert_matches: Callable[..., float],
    randomize_adapter_weights: Callable,
    tmp_path: Path,
) -> None:
    c = case(kind)
    theirs = peft_model(c)
    randomize_adapter_weights(theirs)
    expected = c.output(theirs)
    theirs.save_pretrained(tmp_path / "peft")

    model = c.fresh()
    assert lora.load_adapter(model, tmp_path / "peft") is model  # in place, on a bare model
    assert_matches(c.output(model), expected, c.mask, what="output (ours loads peft's)")
    trainable, total = lora.trainable_parameters(model)
    assert (trainable, total) == theirs.get_nb_trainable_parameters()

    # Written back, the same file: peft's keys, the same tensors, and a config peft reads.
    lora.save_adapter(model, tmp_path / "ours")
    peft_file = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    our_file = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(our_file) == sorted(peft_file)
    assert all(torch.equal(our_file[key], peft_file[key]) for key in peft_file)
    read_back = peft.LoraConfig.from_pretrained(tmp_path / "ours")
    for name, value in c.settings.items():
        expected_value = set(value) if isinstance(value, list) else value
        got = getattr(read_back, name)
        assert (set(got) if isinstance(got, list | set) else got) == expected_value, name

    merged_theirs = theirs.merge_and_unload()
    lora.merge(model)
    assert_matches(c.output(model), c.output(merged_theirs), c.mask, what="merged output")


def test_saved_config_is_peft_lora_config(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    lora.inject(model, lora.LoraConfig(r=2, target_modules=r"\d", modules_to_save=["1"]))
    lora.save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["target_modules"] == r"\d"
    assert saved["modules_to_save"] == ["1"] and saved["bias"] == "none"
    assert sorted(load_file(tmp_path / "adapter_model.safetensors")) == [
        "base_model.model.0.lora_A.weight",
        "base_model.model.0.lora_B.weight",
        "base_model.model.1.bias",
        "base_model.model.1.weight",
    ]


def test_fresh_adapter_is_peft_initialisation(case: Callable[[str], Any]) -> None:
    """With the same seed, a fresh adapter draws exactly peft's A (Kaiming-uniform) and B (0)."""
    c = case("gpt2")
    torch.manual_seed(5)
    ours = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    torch.manual_seed(5)
    theirs = peft_model(c)
    our_weights = {k: v for k, v in ours.state_dict().items() if "lora_" in k}
    their_weights = {
        k.removeprefix("base_model.model."): v
        for k, v in theirs.state_dict().items()
        if "lora_" in k
    }
    assert sorted(our_weights) == sorted(their_weights)
    assert all(torch.equal(our_weights[k], their_weights[k]) for k in our_weights)
    assert torch.equal(c.output(ours), c.output(c.base))


def test_under_bf16_autocast_our_adapter_gives_peft_output(
    case: Callable[[str], Any], randomize_adapter_weights: Callable, tmp_path: Path
) -> None:
    """Where the adapter computes in the base's dtype (here bf16 autocast, as mixed-precision
    training runs it), its update is added inside B's product, one addmm scaled by alpha;
    peft adds it after. The outputs agree to bf16's rounding, and the adapter still counts."""
    c = case("gpt2")
    ours = lora.inject(c.fresh(), lora.LoraConfig(**c.settings))
    randomize_adapter_weights(ours)
    lora.save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(c.fresh(), tmp_path).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual, base = (c.output(m).float() for m in (theirs, ours, c.base))
    mask = c.mask.bool()
    assert float((expected - base)[mask].abs().max()) > 0.1  # the adapter counts
    scale = float(expected[mask].abs().max())
    assert float((actual - expected)[mask].abs().max()) <= 2e-2 * scale
