"""The test environment: offline, and a hypothesis profile sized for two CPU cores.

Neither needs pytest; :mod:`.plugin` goes offline when it is loaded, and a conftest with
property tests calls :func:`use_hypothesis_profile`.
"""

from __future__ import annotations

import os
import sys

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def go_offline() -> None:
    """No test reaches the Hugging Face hub: set the offline variables, and the flags that
    huggingface_hub and datasets already read from them where they are imported.

    The flags are read once, at import, and a conftest imports transformers (and so
    huggingface_hub) before pytest loads the plugin: setting the variables alone would come
    too late for them, though not for subprocesses and later imports.
    """
    os.environ.update(OFFLINE)
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def use_hypothesis_profile(name: str, max_examples: int) -> None:
    """Register and load the hypothesis profile ``name`` for every ``@given`` test: at most
    ``max_examples`` examples, derandomized (the same examples every run), no deadline.

    hypothesis is imported here, not at the top: only packages with property tests declare it.
    """
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        name,
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=True,
    )
    settings.load_profile(name)
