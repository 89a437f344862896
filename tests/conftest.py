"""Shared set-up for the cross-package tests: offline, seeded, fast property tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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
