"""Shared set-up for the cross-package tests: offline, seeded, fast property tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest
import torch
from hypothesis import HealthCheck, settings

# The same settings as packages/core-attention/tests: the profile is global when both run together.
settings.register_profile(
    "parity",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("parity")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    # Accelerate keeps one state per process, precision included: a test that ran a command
    # in this process (an eval in bf16, say) must not leave its settings to the next one.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def two_processes(tmp_path: Path) -> Callable[[str], Path]:
    """``two_processes(script)``: run ``script`` as two gloo processes with torchrun, in
    ``tmp_path``, and return that folder. Each process writes its result to a file of its own
    there: two processes' lines on one stdout can interleave mid-line."""

    def run(script: str) -> Path:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        result = subprocess.run(
            [*command, "--nproc-per-node=2", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return tmp_path

    return run


CPU_2_PROCESSES = (
    Path(__file__).parents[1]
    / "packages/training/src/scratchformers/training/accelerate_configs/cpu_2_processes.yaml"
)


class RankOutput(NamedTuple):
    """What one process of a launch printed, from its own files."""

    stdout: str
    stderr: str


class Launched(NamedTuple):
    """An ``accelerate launch`` that has ended: the launcher's exit code and its own output
    (with every rank's lines mixed into it), and each rank's output by rank."""

    returncode: int
    stderr: str
    ranks: dict[int, RankOutput]


@pytest.fixture
def launch_two_processes(tmp_path: Path) -> Callable[..., Launched]:
    """``launch_two_processes("-m", module, *flags, cwd=folder)``: ``accelerate launch`` with
    ``accelerate_configs/cpu_2_processes.yaml`` (two gloo processes on the CPU). Each rank's
    stdout and stderr are teed to files of their own (torchrun's ``--log_dir``), which the
    tests read: two processes' lines on one pipe can interleave."""
    counter = iter(range(1_000))

    def launch(*args: str, cwd: Path | None = None, timeout: int = 600) -> Launched:
        logs = tmp_path / f"launch-logs-{next(counter)}"
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(CPU_2_PROCESSES), "--tee", "3", "--log_dir", str(logs), *args,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env["OMP_NUM_THREADS"] = "1"
        result = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        ranks = {
            int(folder.name): RankOutput(
                (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()
            )
            for folder in logs.glob("*/attempt_*/*")
            if folder.is_dir() and folder.name.isdigit()
        }
        return Launched(result.returncode, result.stderr, ranks)

    return launch
