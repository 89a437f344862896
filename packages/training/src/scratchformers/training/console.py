"""What a run tells the person at the terminal while it works.

Kept free of torch and Accelerate, so that the command can speak in its first second, before
the heavy imports; under a multi-process launch only the main process speaks.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def is_main_process() -> bool:
    """Whether this is the launch's main process, read from the launcher's environment
    (torchrun's ``RANK``, MPI's ``PMI_RANK``), so that it needs no process group."""
    return int(os.environ.get("RANK", os.environ.get("PMI_RANK", "0"))) == 0


def status(message: str) -> None:
    """Print one line of what the run is doing now (on the main process), at once."""
    if is_main_process():
        print(message, file=sys.stdout, flush=True)


def command_line() -> str:
    """This process's command as the person typed it: ``scratchformers train gpt2 ...`` for
    the console script, ``python -m scratchformers.gpt2.train ...`` for a module. A worker of
    ``accelerate launch`` (torchrun) only sees its own ``python -u -m ...``: the launcher's
    options are not visible to it, so they are left as a placeholder."""
    argv = list(sys.orig_argv)
    if argv and Path(argv[0]).name.startswith("python"):
        argv = ["python", *[arg for arg in argv[1:2] if arg != "-u"], *argv[2:]]
    if len(argv) > 1 and Path(argv[1]).name == "scratchformers":
        argv = ["scratchformers", *argv[2:]]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and argv[:2] == ["python", "-m"]:
        return "accelerate launch [the same launch options] " + shlex.join(argv[1:])
    return shlex.join(argv)


def resume_command() -> str:
    """The command that continues this run: :func:`command_line` with ``--resume``."""
    command = command_line()
    words = [word for word in command.split(" ") if word != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return " ".join(words)
