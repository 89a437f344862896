"""Checkpoints: saved without noise, checked before a resume, and a damaged one is skipped."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LambdaLR
from transformers import GPT2Config, GPT2LMHeadModel

from scratchformers.training import CheckpointError, Recipe, checkpoints, parse_settings, train
from scratchformers.training.checkpoints import CheckpointError as ModuleCheckpointError

FLAGS = ("--max-steps", "12", "--save-every", "4", "--keep-checkpoints", "3")


def settings_for(recipe: Recipe, corpus: Path, output_dir: Path, *flags: str):
    return parse_settings(
        recipe, ["--dataset", str(corpus), "--output-dir", str(output_dir), *FLAGS, *flags]
    )


@pytest.fixture(scope="module")
def trained(module_recipe: Recipe, module_corpus: Path) -> Path:
    """One toy run of 12 steps with checkpoints kept at steps 4, 8 and 12, trained once."""
    root = module_corpus.parent
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))  # the tokenizer cache, reused by the resumes
        patch.chdir(root)
        try:
            train(module_recipe, settings_for(module_recipe, module_corpus, root / "run"))
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
    return root / "run"


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, for one case to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def newest(run: Path, name: str = "") -> Path:
    return run / "checkpoints" / "checkpoint-0000012" / name


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def resume_point(run: Path, requested: Path | None = None) -> tuple[Path | None, list[str]]:
    warnings: list[str] = []
    return checkpoints.resumable_checkpoint(run, requested, warn=warnings.append), warnings


def test_a_tied_model_is_saved_and_restored_without_dropping_anything_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    accelerator = Accelerator(cpu=True)
    config = GPT2Config(
        vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer, _scheduler = accelerator.prepare(
        model, optimizer, LambdaLR(optimizer, lambda step: 1.0)
    )
    # The cause, shown once: accelerate's own save finds the tie and warns that it dropped it
    # (this also proves that the warning would be captured below).
    with caplog.at_level(logging.WARNING):
        accelerator.save_state(str(tmp_path / "plain"), safe_serialization=True)
    assert any("Removed shared tensor" in r.getMessage() for r in caplog.records)
    caplog.clear()

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        folder = checkpoints.save_checkpoint(accelerator, tmp_path / "run", 1, {}, keep=1)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    with caplog.at_level(logging.WARNING):
        assert checkpoints.load_checkpoint(accelerator, folder)["step"] == 1
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert model.lm_head.weight is model.transformer.wte.weight, "still tied after the load"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_a_checkpoint_holds_the_files_the_check_knows(trained: Path) -> None:
    assert CheckpointError is ModuleCheckpointError and issubclass(CheckpointError, ValueError)
    kept = checkpoints.complete_checkpoints(trained)
    assert [p.name for p in kept] == [f"checkpoint-{step:07d}" for step in (4, 8, 12)]
    for folder in kept:
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([checkpoints.STATE_FILE, *checkpoints.REQUIRED_FILES])
        state = json.loads((folder / checkpoints.STATE_FILE).read_text())
        assert state["files"] == sorted(checkpoints.REQUIRED_FILES)
        # The weights file holds each tied tensor once, as accelerate's own save would.
        assert "lm_head.weight" not in load_file(folder / checkpoints.WEIGHTS_FILE)
    assert resume_point(trained) == (newest(trained), [])


def test_a_truncated_newest_weights_file_falls_back_and_resumes_to_the_uninterrupted_weights(
    run: Path,
    trained: Path,
    module_corpus: Path,
    recipe: Recipe,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = newest(run, "model.safetensors")
    cut_in_half(weights)
    size = weights.stat().st_size
    monkeypatch.setenv("HOME", str(trained.parent / "home"))
    train(recipe, settings_for(recipe, module_corpus, run, "--resume"))

    output = capsys.readouterr().out
    assert re.search(
        rf"checkpoint-0000012 is damaged \({re.escape(str(weights))} is truncated: its header "
        rf"says the file has \d+ bytes, but it has {size} bytes\); resuming from checkpoint-0000008",
        output,
    ), output
    assert f"resumed from {run / 'checkpoints' / 'checkpoint-0000008'} at step 8" in output
    straight, resumed = (
        load_file(trained / "model.safetensors"),
        load_file(run / "model.safetensors"),
    )
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # The damaged checkpoint was written anew by the resumed run.
    assert checkpoints.checkpoint_problem(newest(run)) is None


def _garble(path: Path) -> None:
    path.write_text('{"step": 12, "first_eval')


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "optimizer deleted": ("optimizer.bin", Path.unlink, "is missing"),
    "optimizer truncated": ("optimizer.bin", cut_in_half, "is not a readable torch.save archive"),
    "scheduler deleted": ("scheduler.bin", Path.unlink, "is missing"),
    "RNG state truncated": ("random_states_0.pkl", cut_in_half, "is not a readable torch.save"),
    "weights header cut": ("model.safetensors", lambda p: p.write_bytes(b"\x10"), "is truncated"),
    "weights header garbled": (
        "model.safetensors",
        lambda p: p.write_bytes(len(b"{oops").to_bytes(8, "little") + b"{oops"),
        "has an unreadable header",
    ),
    "trainer state garbled": ("trainer_state.json", _garble, "is not readable JSON"),
    "trainer state without a step": (
        "trainer_state.json",
        lambda p: p.write_text('{"step": "12"}'),
        "has no integer step",
    ),
    "trainer state deleted": ("trainer_state.json", Path.unlink, "is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one_naming_the_file(
    run: Path, damage: tuple[str, Callable[[Path], None], str]
) -> None:
    name, spoil, problem = damage
    spoil(newest(run, name))
    checkpoint, warnings = resume_point(run)
    assert checkpoint == run / "checkpoints" / "checkpoint-0000008"
    assert len(warnings) == 1
    assert warnings[0].startswith(f"checkpoint-0000012 is damaged ({newest(run, name)} {problem}")
    assert warnings[0].endswith("); resuming from checkpoint-0000008")


def test_each_damaged_checkpoint_is_skipped_and_named(run: Path) -> None:
    (newest(run) / "optimizer.bin").unlink()
    middle = run / "checkpoints" / "checkpoint-0000008"
    cut_in_half(middle / "model.safetensors")
    checkpoint, warnings = resume_point(run)
    assert checkpoint == run / "checkpoints" / "checkpoint-0000004"
    assert [w.split(" is damaged", 1)[0] for w in warnings] == [
        "checkpoint-0000012",
        "checkpoint-0000008",
    ]
    assert str(middle / "model.safetensors") in warnings[1]


def test_when_no_checkpoint_is_usable_the_error_names_the_files(run: Path) -> None:
    for folder in checkpoints.complete_checkpoints(run):
        cut_in_half(folder / "model.safetensors")
    with pytest.raises(CheckpointError) as raised:
        resume_point(run)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"no usable checkpoint in {run}")
    for step in (4, 8, 12):
        folder = run / "checkpoints" / f"checkpoint-{step:07d}"
        assert f"{folder / 'model.safetensors'} is truncated" in message


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path: Path) -> None:
    assert resume_point(tmp_path / "never-trained") == (None, [])
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert resume_point(tmp_path / "empty") == (None, [])


def test_a_requested_checkpoint_is_used_from_any_folder(run: Path, tmp_path: Path) -> None:
    # The newer checkpoints being damaged does not matter: only the requested one is looked at.
    cut_in_half(newest(run, "model.safetensors"))
    requested = run / "checkpoints" / "checkpoint-0000004"
    assert resume_point(tmp_path / "elsewhere", requested) == (requested, [])


def test_resume_from_a_named_checkpoint_starts_there_and_reaches_the_uninterrupted_weights(
    run: Path,
    trained: Path,
    module_corpus: Path,
    recipe: Recipe,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    requested = run / "checkpoints" / "checkpoint-0000004"  # not the newest, which is whole
    monkeypatch.setenv("HOME", str(trained.parent / "home"))
    train(recipe, settings_for(recipe, module_corpus, run, "--resume", str(requested)))
    assert f"resumed from {requested} at step 4" in capsys.readouterr().out
    straight, resumed = (
        load_file(trained / "model.safetensors"),
        load_file(run / "model.safetensors"),
    )
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_a_requested_checkpoint_that_is_not_usable_is_an_error_naming_the_file(
    run: Path, tmp_path: Path
) -> None:
    (newest(run) / "scheduler.bin").unlink()
    with pytest.raises(
        CheckpointError, match=f"damaged: {newest(run, 'scheduler.bin')} is missing"
    ):
        resume_point(tmp_path, newest(run))
    with pytest.raises(CheckpointError, match="does not exist"):
        resume_point(tmp_path, tmp_path / "no-such-checkpoint")
    with pytest.raises(
        CheckpointError, match=r"is not a checkpoint .*pass one of its checkpoints/"
    ):
        resume_point(tmp_path, run)  # the run's folder, not one of its checkpoints
    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        resume_point(tmp_path, tmp_path / "notes")


def test_a_checkpoint_that_passes_the_check_but_does_not_load_is_an_error_naming_it(
    run: Path, trained: Path, module_corpus: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A whole torch.save archive, but not an optimizer state.
    torch.save({"not": "an optimizer"}, newest(run, "optimizer.bin"))
    assert checkpoints.checkpoint_problem(newest(run)) is None
    monkeypatch.setenv("HOME", str(trained.parent / "home"))
    with pytest.raises(CheckpointError) as raised:
        train(recipe, settings_for(recipe, module_corpus, run, "--resume"))
    message = str(raised.value)
    assert message.startswith(f"checkpoint {newest(run)} could not be loaded: ")
    assert "\n" not in message
