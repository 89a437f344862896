"""The errors a run stops with: one line for the person at the terminal, never a traceback.

Light on purpose (no torch): the command catches them before it imports the loop.
"""

from __future__ import annotations

import signal


class TrainingError(RuntimeError):
    """Training had to stop; the message says why, at which step, and what was kept."""


class TrainingInterrupted(TrainingError):
    """The run was asked to stop (Ctrl-C, or SIGTERM from a scheduler) and saved a checkpoint
    first; the message says where and how to continue. ``exit_code`` is the shell's
    convention for a process ended by that signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + int(signal_number)
