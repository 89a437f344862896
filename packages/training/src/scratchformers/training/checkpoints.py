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
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

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


def tied_aliases(model: torch.nn.Module) -> list[str]:
    """The names under which a parameter or buffer of ``model`` appears again (a tie such as
    GPT-2's ``lm_head.weight``, the same tensor as ``transformer.wte.weight``), first one kept."""
    seen: set[int] = set()
    aliases = []
    named = chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    for name, tensor in named:
        if id(tensor) in seen:
            aliases.append(name)
        seen.add(id(tensor))
    return aliases


def _save_weights_without_aliases(accelerator: Accelerator) -> Callable[..., None]:
    """A ``save_state`` pre-hook that writes each tied tensor once, under its first name.

    safetensors cannot store one tensor under two names, so accelerate drops the second name
    itself and warns on every save that the file may not reload. It does: the load
    (safetensors' ``load_model``) fills the alias through the tie the rebuilt model has, so
    dropping the names the model itself ties, here, is the same file without the warning.
    Under FSDP (and DeepSpeed) accelerate saves the model its own way: left to it.
    """

    def hook(models: list[torch.nn.Module], weights: list[dict[str, Any]], _: str) -> None:
        if accelerator.distributed_type == DistributedType.FSDP or len(weights) != len(models):
            return
        for model, state_dict in zip(models, weights, strict=True):
            for alias in tied_aliases(model):
                state_dict.pop(alias, None)

    return hook


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Save the full training state at ``step`` atomically, then keep only the newest ``keep``."""
    final = checkpoint_dir(output_dir) / f"{PREFIX}{step:07d}"
    partial = final.with_name(f".partial-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(_save_weights_without_aliases(accelerator))
    try:
        accelerator.save_state(str(partial), safe_serialization=True)
    finally:
        hook.remove()
    # Every process writes its own RNG state: all of them must be done before the rename.
    accelerator.wait_for_everyone()
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
