"""Checkpoints that survive being killed: written aside, then renamed into place.

A checkpoint is ``<output_dir>/checkpoints/checkpoint-<step>``: what
``accelerator.save_state`` writes (model as safetensors, optimizer, scheduler, dataloader
and RNG states) plus ``trainer_state.json``. It is first written to a hidden ``.partial``
folder and renamed when complete, so a run killed mid-save leaves the previous checkpoint as
the newest complete one, and the half-written folder is ignored (and removed on resume).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def remove_partial_checkpoints(output_dir: Path) -> None:
    """Delete folders left by a save that never finished."""
    folder = checkpoint_dir(output_dir)
    if folder.is_dir():
        for partial in folder.glob(".partial-*"):
            shutil.rmtree(partial, ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Save the full training state at ``step`` atomically, then keep only the newest ``keep``."""
    final = checkpoint_dir(output_dir) / f"{PREFIX}{step:07d}"
    partial = final.with_name(f".partial-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict[str, Any]:
    """Restore the training state saved in ``checkpoint``; returns its trainer state."""
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / STATE_FILE).read_text())
