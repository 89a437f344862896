"""A run never loses work: an earlier run is left alone unless the flags say what to do with
it, a bad output folder fails before the data is built, Ctrl-C and SIGTERM stop with a
checkpoint that resumes exactly, and the run records what really ran."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchformers.training import (
    Recipe,
    TrainingInterrupted,
    TrainingSettings,
    parse_settings,
    train,
)
from scratchformers.training import checkpoints as checkpoint_module
from scratchformers.training.loop import describe_processes, process_count_warning
from scratchformers.training.rundir import LOCK_FILE

FAST = ("--max-steps", "4", "--save-every", "2", "--eval-every", "4")


def settings_for(recipe: Recipe, corpus: Path, output_dir: Path, *flags: str) -> TrainingSettings:
    return parse_settings(
        recipe, ["--dataset", str(corpus), "--output-dir", str(output_dir), *flags]
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def data_built(recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the recipe's build_data calls: a refused run must not reach it."""
    calls: list[int] = []
    real = type(recipe).build_data

    def counting(self, settings):
        calls.append(1)
        return real(self, settings)

    monkeypatch.setattr(type(recipe), "build_data", counting)
    return calls


def test_an_earlier_run_is_left_untouched_without_resume_or_overwrite(
    run_train: Callable[..., int],
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    data_built: list[int],
) -> None:
    output_dir = tmp_path / "run"
    train(recipe, settings_for(recipe, corpus, output_dir, *FAST))
    before = snapshot(output_dir)
    data_built.clear()

    with pytest.raises(
        ValueError, match=r"holds an earlier run \(finished, 4 steps\); add --resume"
    ):
        train(recipe, settings_for(recipe, corpus, output_dir, *FAST))
    assert snapshot(output_dir) == before and not data_built

    # The command says it in one line, with exit code 2.
    code = run_train(recipe, ["--dataset", str(corpus), "--output-dir", str(output_dir)])
    assert code == 2 and snapshot(output_dir) == before


def test_overwrite_starts_over_and_removes_only_the_old_runs_logs(
    recipe: Recipe, corpus: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "run"
    train(recipe, settings_for(recipe, corpus, output_dir, "--max-steps", "6", "--save-every", "2"))
    (output_dir / "notes.txt").write_text("mine")
    train(recipe, settings_for(recipe, corpus, output_dir, *FAST, "--overwrite"))
    kept = [p.name for p in checkpoint_module.complete_checkpoints(output_dir)]
    assert kept == ["checkpoint-0000002", "checkpoint-0000004"], "the old step-6 one is gone"
    steps = [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").open()]
    assert max(steps) == 4, "the old run's metrics do not mix with the new run's"
    assert (output_dir / "notes.txt").read_text() == "mine"


def test_resume_and_overwrite_together_or_with_other_data_are_refused(
    recipe: Recipe, corpus: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="give one of them"):
        settings_for(recipe, corpus, output_dir, "--resume", "--overwrite")
    train(recipe, settings_for(recipe, corpus, output_dir, *FAST))
    other = tmp_path / "other.txt"
    other.write_text(" ".join(["the cat sat on the mat."] * 200))
    with pytest.raises(ValueError, match="--resume continues a run trained with --dataset"):
        train(recipe, settings_for(recipe, other, output_dir, *FAST, "--resume"))


def test_an_output_dir_that_cannot_hold_the_run_fails_before_any_data(
    recipe: Recipe, corpus: Path, tmp_path: Path, data_built: list[int]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match=r"--output-dir .*a-file is a file"):
        train(recipe, settings_for(recipe, corpus, a_file))
    with pytest.raises(ValueError, match="which is a file"):
        train(recipe, settings_for(recipe, corpus, a_file / "run"))
    # sysfs refuses new files even to root, as a read-only mount would.
    with pytest.raises(ValueError, match="cannot be written"):
        train(recipe, settings_for(recipe, corpus, Path("/sys/scratchformers-test/run")))
    assert not data_built
    assert a_file.read_text() == "not a folder"


def interrupt_at_forward(
    recipe: Recipe, monkeypatch: pytest.MonkeyPatch, forward: int, *signals: int
) -> None:
    """Deliver ``signals`` to this process during training forward number ``forward``, as a
    terminal's Ctrl-C or a scheduler's SIGTERM would."""
    real = type(recipe).compute_loss
    count = {"forwards": 0}

    def compute_loss(self, model, batch, num_items_in_batch):
        count["forwards"] += model.training
        if model.training and count["forwards"] == forward:
            for number in signals:
                os.kill(os.getpid(), number)
        return real(self, model, batch, num_items_in_batch)

    monkeypatch.setattr(type(recipe), "compute_loss", compute_loss)


@pytest.mark.parametrize(("number", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_at_the_step_and_resumes_exactly(
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    number: int,
    exit_code: int,
) -> None:
    flags = ("--max-steps", "8", "--save-every", "100", "--eval-every", "100")
    train(recipe, settings_for(recipe, corpus, tmp_path / "straight", *flags))
    output_dir = tmp_path / "stopped"
    interrupt_at_forward(recipe, monkeypatch, 3, number)
    with pytest.raises(TrainingInterrupted) as stop:
        train(recipe, settings_for(recipe, corpus, output_dir, *flags))
    assert stop.value.exit_code == exit_code
    assert "at step 3 of 8" in str(stop.value) and "--resume" in str(stop.value)
    assert not (output_dir / LOCK_FILE).exists(), "the stopped run gave its folder's lock up"
    assert checkpoint_module.latest_checkpoint(output_dir).name == "checkpoint-0000003"
    assert signal.getsignal(number) is not None and signal.getsignal(signal.SIGINT) is (
        signal.default_int_handler
    ), "the handlers are restored"

    monkeypatch.undo()
    train(recipe, settings_for(recipe, corpus, output_dir, *flags, "--resume"))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(output_dir / "model.safetensors")
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


def test_a_second_ctrl_c_stops_at_once(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupt_at_forward(recipe, monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    output_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(recipe, settings_for(recipe, corpus, output_dir, "--save-every", "100"))
    assert checkpoint_module.latest_checkpoint(output_dir) is None
    assert not (output_dir / LOCK_FILE).exists()


def test_the_command_exits_with_the_signal_code_and_how_to_continue(
    run_train: Callable[..., int],
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    interrupt_at_forward(recipe, monkeypatch, 2, signal.SIGINT)
    argv = ["--dataset", str(corpus), "--output-dir", str(tmp_path / "run")]
    assert run_train(recipe, argv) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT at step 2" in err and "continue with:" in err and "--resume" in err
    assert "Traceback" not in err


def test_fp16_on_a_cpu_is_downgraded_and_recorded(
    recipe: Recipe, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.accelerator.is_available():
        pytest.skip("fp16 takes effect on this machine's accelerator")
    output_dir = tmp_path / "fp16"
    train(recipe, settings_for(recipe, corpus, output_dir, *FAST, "--mixed-precision", "fp16"))
    assert "fp16 needs a GPU" in capsys.readouterr().out
    run = json.loads((output_dir / "run.json").read_text())
    assert run["mixed_precision"] == "no"
    assert run["summary"]["ran"]["mixed_precision_requested"] == "fp16"
    assert (
        "**Precision**: float32 (--mixed-precision fp16 needs a GPU"
        in (output_dir / "README.md").read_text()
    )


def test_an_fsdp_launch_without_a_gpu_says_it_runs_as_data_parallel(
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if torch.accelerator.is_available():
        pytest.skip("FSDP can run on this machine's accelerator")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for it
    output_dir = tmp_path / "fsdp"
    train(recipe, settings_for(recipe, corpus, output_dir, *FAST))
    assert "the launch asked for FSDP, which needs a GPU" in capsys.readouterr().out
    ran = json.loads((output_dir / "run.json").read_text())["summary"]["ran"]
    assert (ran["distributed_type_requested"], ran["distributed_type"]) == ("FSDP", "NO")


def test_the_launch_configs_mixed_precision_is_the_default(
    recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert parse_settings(recipe, []).mixed_precision == "bf16"
    assert parse_settings(recipe, ["--mixed-precision", "no"]).mixed_precision == "no"
    # The launcher passes "no" when its config says nothing: that is not a choice.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert parse_settings(recipe, []).mixed_precision == "auto"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert parse_settings(recipe, []).mixed_precision == "auto"


def test_a_run_says_each_stage_as_it_starts(
    run_train: Callable[..., int],
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--dataset", str(corpus), "--output-dir", str(tmp_path / "run"), *FAST]
    assert run_train(recipe, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    stages = (
        "toy: preset tiny, 4 steps, into",  # before torch and the loop are imported
        "building the data (toy recipe)",
        "reading the text: ",
        "training a byte-level BPE tokenizer of 300 tokens",
        "cutting the text into blocks of 16 tokens",
        "data: ",
        "model: GPT2LMHeadModel, ",
        "precision: ",
        "processes: 1 process, CPU",
        "first evaluation, on 8 held-out examples",
        "finished 4 steps",
    )
    where = [next(i for i, line in enumerate(lines) if stage in line) for stage in stages]
    assert where == sorted(where) and where[0] == 0, lines
    # A second run on the same text says that it reuses the tokenizer, not that it trains one.
    argv = ["--dataset", str(corpus), "--output-dir", str(tmp_path / "again"), *FAST]
    assert run_train(recipe, argv) == 0
    out = capsys.readouterr().out
    assert "tokenizer of 300 tokens: the one cached in" in out and "training a byte" not in out


def test_the_processes_are_said_in_a_few_words() -> None:
    assert describe_processes(1, "NO", "cpu") == "1 process, CPU"
    assert describe_processes(2, "MULTI_CPU", "cpu") == "2 processes, MULTI_CPU"
    assert describe_processes(8, "FSDP", "cuda") == "8 processes, FSDP on 8 GPUs"
    assert describe_processes(1, "NO", "cuda") == "1 process, 1 GPU"


def test_a_launch_that_asked_for_other_processes_is_named() -> None:
    # torchrun (accelerate launch --multi_gpu) says the world size it started.
    assert process_count_warning(2, {"WORLD_SIZE": "2"}) is None
    said = process_count_warning(1, {"WORLD_SIZE": "4"})
    assert said is not None and "asked for 4 processes (WORLD_SIZE=4), but the run has 1" in said
    # accelerate launch --cpu --num_processes 2 starts one process: what its launcher exports.
    cpu_launch = {
        "ACCELERATE_USE_CPU": "True",
        "ACCELERATE_MIXED_PRECISION": "no",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
    }
    said = process_count_warning(1, cpu_launch)
    assert said is not None and "accelerate launch --cpu starts one process" in said
    assert "accelerate launch --multi_gpu --num_processes N --num_machines 1" in said
    # A --cpu launch of one process sets no MASTER_PORT; a plain run sets nothing.
    one = {key: value for key, value in cpu_launch.items() if not key.startswith("MASTER")}
    assert process_count_warning(1, one) is None and process_count_warning(1, {}) is None


def test_a_cpu_launch_of_several_processes_says_the_run_has_one(
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for variable, value in (
        ("ACCELERATE_USE_CPU", "True"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ):
        monkeypatch.setenv(variable, value)  # what `accelerate launch --cpu --num_processes 2` sets
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    output_dir = tmp_path / "cpu"
    train(recipe, settings_for(recipe, corpus, output_dir, *FAST))
    out = capsys.readouterr().out
    assert "processes: 1 process, CPU\nwarning: accelerate launch --cpu starts one process" in out
    ran = json.loads((output_dir / "run.json").read_text())["summary"]["ran"]
    assert ran["processes"] == "1 process, CPU" and ran["num_processes"] == 1
    assert "--multi_gpu --num_processes N" in ran["processes_warning"]
