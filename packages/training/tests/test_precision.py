"""``--mixed-precision auto`` (the default) picks bf16 autocast where the device computes it
natively and the model is wide enough for it to pay, says so, and records it; ``--compile``
trains the same model through torch.compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from scratchformers.training import Recipe, parse_settings, precision, train
from scratchformers.training.precision import (
    BF16_MIN_HIDDEN_SIZE,
    choose_mixed_precision,
    fast_bf16_reason,
    hidden_width,
)

CPU = torch.device("cpu")
SHORT = ("--max-steps", "3", "--eval-every", "3", "--save-every", "3")


def gpt2(width: int) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=97, n_positions=16, n_embd=width, n_layer=2, n_head=2)
    )


def test_the_hidden_width_is_the_typical_input_width_of_the_linear_layers() -> None:
    assert hidden_width(gpt2(48)) == 48
    assert hidden_width(gpt2(96)) == 96
    # transformers' Conv1D keeps its weight as (in, out).
    assert hidden_width(nn.Sequential(Conv1D(300, 72), Conv1D(72, 300), Conv1D(300, 72))) == 72
    assert hidden_width(nn.Sequential(nn.ReLU())) == 0


def test_auto_picks_bf16_only_where_it_is_fast_and_the_model_is_wide_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wide, narrow = gpt2(BF16_MIN_HIDDEN_SIZE), gpt2(BF16_MIN_HIDDEN_SIZE // 2)
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda device: "this CPU has AMX")
    choice = choose_mixed_precision("auto", wide, CPU)
    assert choice.mixed_precision == "bf16"
    assert "AMX" in choice.reason and f"{BF16_MIN_HIDDEN_SIZE} wide" in choice.reason
    choice = choose_mixed_precision("auto", narrow, CPU)
    assert choice.mixed_precision == "no" and "under the" in choice.reason
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda device: None)
    choice = choose_mixed_precision("auto", wide, CPU)
    assert choice.mixed_precision == "no" and "no native bf16" in choice.reason
    # An explicit choice is kept, whatever the machine; fp16 has no autocast on a CPU.
    assert choose_mixed_precision("bf16", narrow, CPU).mixed_precision == "bf16"
    assert choose_mixed_precision("no", wide, CPU).mixed_precision == "no"
    assert choose_mixed_precision("fp16", wide, CPU).mixed_precision == "no"
    with pytest.raises(ValueError, match="--mixed-precision must be one of"):
        choose_mixed_precision("fp8", wide, CPU)


def test_fast_bf16_follows_the_cpus_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = {"amx_bf16": False, "avx512_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert fast_bf16_reason(CPU) is None
    flags["avx512_bf16"] = True
    assert fast_bf16_reason(CPU) == "this CPU has AVX512-BF16"
    flags["amx_bf16"] = True
    assert fast_bf16_reason(CPU) == "this CPU has AMX"


def test_a_run_says_and_records_what_auto_picked(
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The toy model is 32 wide: make it wide enough, on a machine said to compute bf16.
    monkeypatch.setattr(precision, "BF16_MIN_HIDDEN_SIZE", 32)
    monkeypatch.setattr(precision, "fast_bf16_reason", lambda device: "this CPU has AMX")
    autocast_seen: list[bool] = []
    real_forward = nn.Linear.forward

    def recording_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return real_forward(self, x)

    monkeypatch.setattr(nn.Linear, "forward", recording_forward)
    output_dir = tmp_path / "auto"
    settings = parse_settings(
        recipe, ["--dataset", str(corpus), "--output-dir", str(output_dir), *SHORT]
    )
    assert settings.mixed_precision == "auto"
    train(recipe, settings)
    assert "precision: bf16 autocast (auto: this CPU has AMX and the model is 32 wide)" in (
        capsys.readouterr().out
    )
    assert autocast_seen and all(autocast_seen)  # every matmul of the run ran under autocast
    run = json.loads((output_dir / "run.json").read_text())
    assert run["mixed_precision"] == "bf16"
    ran = run["summary"]["ran"]
    assert ran["mixed_precision_requested"] == "auto" and "AMX" in ran["mixed_precision_reason"]
    card = (output_dir / "README.md").read_text()
    assert "**Precision**: bf16 autocast (auto: this CPU has AMX" in card


def test_a_compiled_run_trains_the_same_model(recipe: Recipe, corpus: Path, tmp_path: Path) -> None:
    runs, graphs = {}, {}
    for name, flags in (("eager", ()), ("compiled", ("--compile",))):
        output_dir = tmp_path / name
        argv = ["--dataset", str(corpus), "--output-dir", str(output_dir), "--mixed-precision"]
        # One run per process, as the command runs: Accelerate keeps its state (the compile
        # setting with it) for the process.
        AcceleratorState._reset_state(reset_partial_state=True)
        torch._dynamo.reset()
        train(recipe, parse_settings(recipe, [*argv, "no", *SHORT, *flags]))
        graphs[name] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        runs[name] = json.loads((output_dir / "run.json").read_text())
    assert graphs == {"eager": 0, "compiled": graphs["compiled"]} and graphs["compiled"] > 0
    assert runs["compiled"]["compile"] is True and runs["compiled"]["summary"]["ran"]["compile"]
    eager, compiled = (runs[n]["summary"]["final_eval_loss"] for n in ("eager", "compiled"))
    assert compiled == pytest.approx(eager, rel=1e-4)
    card = (tmp_path / "compiled" / "README.md").read_text()
    assert "compiled with torch.compile" in card
    # The saved model is the plain model, loadable without torch.compile.
    saved = GPT2LMHeadModel.from_pretrained(tmp_path / "compiled")
    assert not any(name.startswith("_orig_mod") for name in saved.state_dict())
