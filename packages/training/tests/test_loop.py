"""The loop: it learns, logs, saves, resumes exactly, and stops clearly on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratchformers.training import Recipe, TrainingError, TrainingSettings, parse_settings, train
from scratchformers.training import checkpoints as checkpoint_module


def settings_for(recipe: Recipe, corpus: Path, output_dir: Path, *flags: str) -> TrainingSettings:
    return parse_settings(
        recipe, ["--dataset", str(corpus), "--output-dir", str(output_dir), *flags]
    )


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")


def test_a_run_learns_and_leaves_everything_a_user_needs(
    recipe: Recipe, corpus: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "run"
    result = train(recipe, settings_for(recipe, corpus, output_dir, "--max-steps", "24"))

    assert result.final_metrics["eval_loss"] < 0.7 * result.first_eval_loss
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 0, **{k: records[0][k] for k in ("eval_loss", "perplexity")}}
    assert [r["step"] for r in records if "loss" in r] == list(range(2, 25, 2))
    assert all(r["lr"] >= 0 and r["tokens_per_s"] > 0 for r in records if "loss" in r)
    assert (output_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((output_dir / "tensorboard").rglob("events.out.tfevents.*"))
    card = (output_dir / "README.md").read_text()
    assert "24 optimizer steps" in card and f"{result.first_eval_loss:.3f}" in card

    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert tokenizer.eos_token == "</s>" and len(tokenizer) == model.config.vocab_size
    assert not list(output_dir.glob("*.bin"))
    # Only the newest checkpoints are kept.
    kept = [p.name for p in checkpoint_module.complete_checkpoints(output_dir)]
    assert kept == ["checkpoint-0000020", "checkpoint-0000024"]


def test_weight_decay_skips_norms_and_biases() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchformers.training import parameter_groups

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=8))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    }
    total = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert total == sum(p.numel() for p in model.parameters())  # tied weights counted once


def count_training_batches(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """From now on, count the training forward passes of the models ``recipe`` builds."""
    real_build = type(recipe).build_model
    counter = {"batches": 0}

    def build_counting_model(self, settings, data):
        model = real_build(self, settings, data)
        forward = model.forward

        def counting_forward(*args, **kwargs):
            counter["batches"] += model.training
            return forward(*args, **kwargs)

        model.forward = counting_forward
        return model

    monkeypatch.setattr(type(recipe), "build_model", build_counting_model)
    return counter


class Killed(BaseException):
    """Stands in for the process being killed (not an Exception, so nothing catches it)."""


def test_resume_after_a_stop_reaches_the_uninterrupted_weights(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # grad-accum 2 with 13 batches an epoch: the resume point falls mid-epoch.
    flags = ("--max-steps", "12", "--grad-accum", "2")
    train(recipe, settings_for(recipe, corpus, tmp_path / "straight", *flags))

    real_save = checkpoint_module.save_checkpoint

    def save_then_die(accelerator, output_dir, step, state, keep):
        path = real_save(accelerator, output_dir, step, state, keep)
        if step == 8:
            raise Killed
        return path

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(recipe, settings_for(recipe, corpus, tmp_path / "stopped", *flags))
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    counter = count_training_batches(recipe, monkeypatch)
    result = train(recipe, settings_for(recipe, corpus, tmp_path / "stopped", *flags, "--resume"))
    assert counter["batches"] == (12 - 8) * 2, "the resumed run starts at step 8, not from scratch"

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps), "the resumed run's metrics continue, without duplicates"
    assert result.steps == 12


def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(recipe, settings_for(recipe, corpus, tmp_path / "straight"))
    output_dir = tmp_path / "crashed"
    real_rename = Path.rename

    def die_before_the_rename(self: Path, target: Path):
        if self.name == ".partial-checkpoint-0000008":
            raise Killed
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", die_before_the_rename)
    with pytest.raises(Killed):
        train(recipe, settings_for(recipe, corpus, output_dir))
    monkeypatch.setattr(Path, "rename", real_rename)

    assert checkpoint_module.latest_checkpoint(output_dir).name == "checkpoint-0000004"
    assert (output_dir / "checkpoints" / ".partial-checkpoint-0000008").is_dir()
    counter = count_training_batches(recipe, monkeypatch)
    train(recipe, settings_for(recipe, corpus, output_dir, "--resume"))
    assert counter["batches"] == 12 - 4, "the resumed run starts at step 4"
    assert not (output_dir / "checkpoints" / ".partial-checkpoint-0000008").exists()
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(output_dir)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = type(recipe).build_model
    calls = {"training_forwards": 0}

    def build_model_that_diverges(self, settings, data):
        model = real_build(self, settings, data)
        forward = model.forward

        def diverging_forward(*args, **kwargs):
            output = forward(*args, **kwargs)
            if model.training:
                calls["training_forwards"] += 1
                if calls["training_forwards"] == 6:
                    output.loss = output.loss * float("nan")
            return output

        model.forward = diverging_forward
        return model

    monkeypatch.setattr(type(recipe), "build_model", build_model_that_diverges)
    output_dir = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"nan at step 6.*checkpoint-0000004"):
        train(recipe, settings_for(recipe, corpus, output_dir))
    assert checkpoint_module.latest_checkpoint(output_dir).name == "checkpoint-0000004"


def test_bad_input_fails_before_training(recipe: Recipe, corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        train(recipe, settings_for(recipe, tmp_path / "no-such-folder", tmp_path / "a"))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(ValueError, match="empty"):
        train(recipe, settings_for(recipe, empty, tmp_path / "b"))
    with pytest.raises(ValueError, match="--max-steps must be at least 1"):
        settings_for(recipe, corpus, tmp_path / "c", "--max-steps", "0")
    with pytest.raises(SystemExit):  # argparse rejects an unknown preset with a usage message
        settings_for(recipe, corpus, tmp_path / "d", "--preset", "huge")

    # An output folder holding another model is refused before any work.
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="did not train"):
        train(recipe, settings_for(recipe, corpus, other))
    previous = tmp_path / "previous-run"
    train(recipe, settings_for(recipe, corpus, previous, "--max-steps", "2"))
    run = json.loads((previous / "run.json").read_text())
    run["model"]["block_size"] = 32
    (previous / "run.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="holds a different model"):
        train(recipe, settings_for(recipe, corpus, previous))


def test_presets_and_flags(recipe: Recipe) -> None:
    settings = parse_settings(recipe, [])
    assert settings.max_steps == 12 and settings.batch_size == 4
    assert settings.output_dir == Path("outputs/toy-tiny")
    settings = parse_settings(
        recipe, ["--max-steps", "3", "--lr", "0.5", "--mixed-precision", "bf16"]
    )
    assert (settings.max_steps, settings.lr, settings.mixed_precision) == (3, 0.5, "bf16")
    assert settings.model == recipe.presets["tiny"].model


def test_bf16_mixed_precision_trains(recipe: Recipe, corpus: Path, tmp_path: Path) -> None:
    flags = ("--max-steps", "24", "--mixed-precision", "bf16")
    result = train(recipe, settings_for(recipe, corpus, tmp_path / "bf16", *flags))
    assert result.final_metrics["eval_loss"] < 0.8 * result.first_eval_loss
    # The saved weights stay float32: autocast changes the compute, not the parameters.
    assert all(t.dtype == torch.float32 for t in final_weights(tmp_path / "bf16").values())


def test_model_shape_flags_override_the_preset(recipe: Recipe) -> None:
    from scratchformers.training.settings import build_parser

    settings = parse_settings(recipe, ["--block-size", "8", "--vocab-size", "280"])
    assert (settings.model["block_size"], settings.model["vocab_size"]) == (8, 280)
    assert parse_settings(recipe, []).model == recipe.presets["tiny"].model
    assert recipe.presets["tiny"].model["block_size"] == 16, "the preset itself is unchanged"
    with pytest.raises(ValueError, match="--block-size must be at least 1, got 0"):
        parse_settings(recipe, ["--block-size", "0"])
    assert "(preset tiny: 16)" in build_parser(recipe).format_help()


def test_the_saved_tokenizer_knows_the_context_and_can_be_reused(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scratchformers.training import data

    first = tmp_path / "first"
    train(recipe, settings_for(recipe, corpus, first, "--max-steps", "2", "--block-size", "8"))
    assert AutoTokenizer.from_pretrained(first).model_max_length == 8

    def no_training(*args, **kwargs):
        raise AssertionError("--tokenizer must not train a new tokenizer")

    monkeypatch.setattr(data, "train_byte_level_bpe", no_training)
    second = tmp_path / "second"
    train(
        recipe, settings_for(recipe, corpus, second, "--max-steps", "2", "--tokenizer", str(first))
    )
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    assert AutoTokenizer.from_pretrained(second).model_max_length == 16

    for bad, message in (
        (tmp_path / "missing", "does not exist"),
        (first / "tokenizer.json", "is a file; pass the folder"),
        (first / "checkpoints", "holds no tokenizer"),
    ):
        with pytest.raises(ValueError, match=message):
            train(recipe, settings_for(recipe, corpus, tmp_path / "bad", "--tokenizer", str(bad)))


class ReportsTheFinalEvaluation:
    """Mixed into the toy recipe: a file and a card section of its own, both from the final
    evaluation that the loop hands over (as the real recipes' confusion matrices and tables)."""

    def finish(self, model, data, output_dir, evaluation):
        right = int(evaluation.results.gathered["right"].sum())
        figures = {"next_tokens_right": right, **evaluation.metrics}
        (output_dir / "figures.json").write_text(json.dumps(figures))
        return {}

    def eval_step(self, model, batch):
        output = model(**batch)
        predicted = output.logits[:, :-1].argmax(-1)
        return {"loss": output.loss, "right": (predicted == batch["input_ids"][:, 1:]).sum(-1)}

    def card_sections(self, output_dir, evaluation):
        right = int(evaluation.results.gathered["right"].sum())
        perplexity = evaluation.metrics["perplexity"]
        return ["## Held out", "", f"{right} next tokens right, perplexity {perplexity:.6f}", ""]


def card_figures(output_dir: Path) -> str:
    """The model card from its results to its end: every figure, and none of the timings."""
    card = (output_dir / "README.md").read_text()
    return card[card.index("## Results") : card.index("## Use")]


def test_a_resumed_run_reports_the_uninterrupted_runs_figures(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = type("ReportingRecipe", (ReportsTheFinalEvaluation, type(recipe)), {})()
    flags = ("--save-every", "2")  # evaluations at 4, 8 and 12; checkpoints every 2 steps
    train(recipe, settings_for(recipe, corpus, tmp_path / "straight", *flags))
    real_save = checkpoint_module.save_checkpoint

    def die_after(stop_step: int):
        def save_then_die(accelerator, output_dir, step, state, keep):
            path = real_save(accelerator, output_dir, step, state, keep)
            if step == stop_step:
                raise Killed
            return path

        return save_then_die

    # Stopped at step 6, between two evaluations; and stopped at the last step, after its
    # checkpoint and before the end, so that the resumed segment trains no step at all.
    for name, stop_step in (("between", 6), ("at-the-end", 12)):
        monkeypatch.setattr(checkpoint_module, "save_checkpoint", die_after(stop_step))
        with pytest.raises(Killed):
            train(recipe, settings_for(recipe, corpus, tmp_path / name, *flags))
        monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
        train(recipe, settings_for(recipe, corpus, tmp_path / name, *flags, "--resume"))

    straight = card_figures(tmp_path / "straight")
    assert "## Held out" in straight and "perplexity" in straight
    expected = json.loads((tmp_path / "straight" / "figures.json").read_text())
    for name in ("between", "at-the-end"):
        assert card_figures(tmp_path / name) == straight, name
        assert json.loads((tmp_path / name / "figures.json").read_text()) == expected, name
        summary = json.loads((tmp_path / name / "run.json").read_text())["summary"]
        assert len(summary["segments"]) == 2, name
