"""End to end: the README's main job, and training with two processes through accelerate launch.

Marked ``slow``: they run in the ``distributed`` nox session (part of the default run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load_file

if TYPE_CHECKING:
    from conftest import Launched

pytestmark = pytest.mark.slow

CONFIGS = (
    Path(__file__).parents[1] / "packages/training/src/scratchformers/training/accelerate_configs"
)
SCRATCHFORMERS = str(Path(sys.executable).with_name("scratchformers"))


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_main_job_learns(tmp_path: Path) -> None:
    """`scratchformers train basicformer` as the README runs it, on the tiny default preset."""
    result = run([SCRATCHFORMERS, "train", "basicformer"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output_dir = tmp_path / "outputs" / "basicformer-tiny"
    summary = json.loads((output_dir / "run.json").read_text())["summary"]
    assert summary["final_eval_loss"] < 0.7 * summary["first_eval_loss"]
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "loss_curve.png",
        "metrics.jsonl",
        "README.md",
    ):
        assert (output_dir / name).is_file(), name
    assert str(output_dir.relative_to(tmp_path) / "loss_curve.png") in result.stdout


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scratchformers.training import python_docs_corpus

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(python_docs_corpus()[:60]))
    return path


def train_command(corpus: Path, output_dir: Path, *flags: str) -> list[str]:
    return [
        "-m",
        "scratchformers.basicformer.train",
        "--dataset",
        str(corpus),
        "--output-dir",
        str(output_dir),
        "--max-steps",
        "6",
        "--eval-every",
        "3",
        "--save-every",
        "3",
        "--log-every",
        "1",
        "--batch-size",
        "8",
        *flags,
    ]


def test_two_processes_match_one(small_corpus: Path, tmp_path: Path) -> None:
    """Both ranks end identical, and equal a one-process run with the same global batch."""
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_2_processes.yaml"),
    ]
    # float32: bf16 autocast (auto's pick for this 128-wide model on a bf16 CPU) rounds each
    # process's half-batch matmuls differently from the whole batch's, well above the 1e-4
    # this test holds the two runs to.
    fp32 = ("--mixed-precision", "no")
    two = run([*launch, *train_command(small_corpus, tmp_path / "two", *fp32)], cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run([sys.executable, *train_command(small_corpus, tmp_path / "one", *fp32)], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]

    two_summary = json.loads((tmp_path / "two" / "run.json").read_text())["summary"]
    assert two_summary["num_processes"] == 2
    fingerprints = two_summary["weight_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]

    one_weights, two_weights = (
        load_file(tmp_path / "one" / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    assert one_weights.keys() == two_weights.keys()
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, atol=2e-5, rtol=1e-4, msg=name)
    one_summary = json.loads((tmp_path / "one" / "run.json").read_text())["summary"]
    assert two_summary["final_eval_loss"] == pytest.approx(one_summary["final_eval_loss"], rel=1e-4)


def test_a_batch_that_does_not_split_across_processes_fails_fast(
    small_corpus: Path, tmp_path: Path, launch_two_processes: Callable[..., Launched]
) -> None:
    launched = launch_two_processes(
        *train_command(small_corpus, tmp_path / "odd", "--batch-size", "7"), cwd=tmp_path
    )
    assert launched.returncode != 0
    assert sorted(launched.ranks) == [0, 1], launched.stderr[-3000:]
    # Each process stops with it, on its own stderr; the launcher may stop the second one
    # before it says it, once the first has failed.
    said = [
        rank
        for rank, output in launched.ranks.items()
        if "error: --batch-size 7 does not divide across 2 processes" in output.stderr
    ]
    assert said, launched.stderr[-3000:]
    assert not (tmp_path / "odd" / "checkpoints").exists()


# Long enough that a signal lands mid-run, with a checkpoint every 3 steps.
STOP_FLAGS = ("--max-steps", "60", "--save-every", "3", "--eval-every", "30")


@pytest.fixture(scope="module")
def straight_weights(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of the run below, uninterrupted."""
    output_dir = tmp_path_factory.mktemp("straight") / "run"
    straight = run(
        [sys.executable, *train_command(small_corpus, output_dir, *STOP_FLAGS)],
        cwd=output_dir.parent,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    return load_file(output_dir / "model.safetensors")


def start_and_signal(
    small_corpus: Path, output_dir: Path, number: int
) -> subprocess.CompletedProcess[str]:
    """Start a real training process, send it ``number`` once its first checkpoint exists,
    and wait for it to end."""
    command = [sys.executable, *train_command(small_corpus, output_dir, *STOP_FLAGS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=output_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = output_dir / "checkpoints" / "checkpoint-0000003" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(number)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def assert_resumes_to(straight: dict, small_corpus: Path, output_dir: Path) -> None:
    resumed = run(
        [sys.executable, *train_command(small_corpus, output_dir, *STOP_FLAGS, "--resume")],
        cwd=output_dir.parent,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    actual = load_file(output_dir / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_a_killed_run_resumes_to_the_uninterrupted_weights(
    small_corpus: Path, straight_weights: dict, tmp_path: Path
) -> None:
    """SIGKILL a real training process after its first checkpoint, resume it, compare."""
    output_dir = tmp_path / "killed"
    killed = start_and_signal(small_corpus, output_dir, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (output_dir / "model.safetensors").exists()
    assert_resumes_to(straight_weights, small_corpus, output_dir)


def test_ctrl_c_saves_says_how_to_continue_and_resumes_exactly(
    small_corpus: Path, straight_weights: dict, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) to a real training process: a checkpoint at the next step, one line
    on how to continue, exit code 130 and no traceback; resuming gives the uninterrupted
    weights."""
    output_dir = tmp_path / "interrupted"
    stopped = start_and_signal(small_corpus, output_dir, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert "stopped by SIGINT at step" in stopped.stderr
    assert "continue with: python -m scratchformers.basicformer.train" in stopped.stderr
    assert "--resume" in stopped.stderr
    assert not (output_dir / "model.safetensors").exists()
    assert_resumes_to(straight_weights, small_corpus, output_dir)
