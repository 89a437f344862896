"""The core-attention tests' set-up: the kit's plugin (offline, seeded), fast property tests."""

from __future__ import annotations

from scratchformers.core_attention.testing import PLUGIN, use_hypothesis_profile

# pytester: test_testing.py runs the plugin in a pytest of its own.
pytest_plugins = [PLUGIN, "pytester"]
use_hypothesis_profile("core-attention", max_examples=60)
