"""What a run tells the person at the terminal while it works.

Kept free of torch and Accelerate, so that the command can speak in its first second, before
the heavy imports; under a multi-process launch only the main process speaks.
"""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """Whether this is the launch's main process, read from the launcher's environment
    (torchrun's ``RANK``, MPI's ``PMI_RANK``), so that it needs no process group."""
    return int(os.environ.get("RANK", os.environ.get("PMI_RANK", "0"))) == 0


def status(message: str) -> None:
    """Print one line of what the run is doing now (on the main process), at once."""
    if is_main_process():
        print(message, file=sys.stdout, flush=True)
