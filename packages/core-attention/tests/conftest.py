"""Shared set-up for the core-attention tests: offline, seeded, fast property tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two CPU cores: keep property tests small. Every @given test inherits this profile.
settings.register_profile(
    "core-attention",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("core-attention")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """The same random weights and inputs on every run, and for every test on its own."""
    torch.manual_seed(0)
