"""Checkpoints that survive being killed: written aside, renamed into place, checked on resume.

A checkpoint is ``<output_dir>/checkpoints/checkpoint-<step>``: what
``accelerator.save_state`` writes plus ``trainer_state.json``. Outside FSDP and DeepSpeed,
for one model, optimizer and scheduler, accelerate 1.15 writes :data:`WEIGHTS_FILE`,
:data:`OPTIMIZER_FILE`, :data:`SCHEDULER_FILE` and one :data:`RNG_FILE` per process (and,
when they are in use, a gradient scaler or sampler state). It is first written to a hidden
``.partial`` folder and renamed when complete, so a run killed mid-save leaves the previous
checkpoint as the newest complete one, and the half-written folder is ignored (and removed on
resume).

Before a resume, :func:`resumable_checkpoint` checks a checkpoint cheaply, without loading a
tensor: a file cut short by a full disk, or deleted or overwritten by hand, makes it fall back
to the older kept checkpoint with a warning that names the file.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from scratchformers.core_attention.files import safetensors_problem

from .rundir import CHECKPOINT_PREFIX as PREFIX
from .rundir import CHECKPOINTS, write_json

STATE_FILE = "trainer_state.json"
# What accelerator.save_state(..., safe_serialization=True) writes (accelerate's
# SAFE_WEIGHTS_NAME, OPTIMIZER_NAME, SCHEDULER_NAME and RNG_STATE_NAME): the weights as
# safetensors, the rest with torch.save, which writes a zip archive.
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "scheduler.bin"
RNG_FILE = "random_states_{process}.pkl"
# What a checkpoint must hold when its trainer state does not list its files (it always does
# when save_checkpoint wrote it): the files of one process outside FSDP.
REQUIRED_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE.format(process=0))
# torch.save archives among the files accelerate writes (optimizer, scheduler, sampler,
# dataloader and RNG states, gradient scaler, custom objects).
TORCH_SAVE_SUFFIXES = (".bin", ".pkl", ".pt")
_STEP_NAME = re.compile(rf"{PREFIX}(\d+)")


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the one-line message names the file and the fault."""


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS


def _checkpoint_folders(output_dir: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder (renamed into place, so once complete), oldest first."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [p for p in _checkpoint_folders(output_dir) if (p / STATE_FILE).is_file()]


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def resumable_checkpoint(
    output_dir: Path, requested: Path | None = None, warn: Callable[[str], None] = print
) -> Path | None:
    """The checkpoint to resume from, checked without loading it.

    Without ``requested``: the newest usable checkpoint of ``output_dir``; each damaged newer
    one is skipped with a ``warn`` that names the damaged file. ``None`` when there is no
    checkpoint at all; a :class:`CheckpointError` naming the files when none is usable.
    With ``requested``: that checkpoint folder (from any output folder) or a
    :class:`CheckpointError` naming what is missing or damaged in it.
    """
    if requested is not None:
        if not requested.is_dir():
            raise CheckpointError(f"checkpoint {requested} does not exist")
        if not _looks_like_a_checkpoint(requested):
            hint = (
                f"; pass one of its {checkpoint_dir(requested).name}/{PREFIX}* folders"
                if checkpoint_dir(requested).is_dir()
                else ""
            )
            raise CheckpointError(
                f"{requested} is not a checkpoint (it has no {STATE_FILE}, "
                f"{OPTIMIZER_FILE} or {SCHEDULER_FILE}){hint}"
            )
        problem = checkpoint_problem(requested)
        if problem:
            raise CheckpointError(f"checkpoint {requested} is damaged: {problem}")
        return requested

    damaged: list[tuple[Path, str]] = []
    for folder in reversed(_checkpoint_folders(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            for newer, newer_problem in damaged:
                warn(f"{newer.name} is damaged ({newer_problem}); resuming from {folder.name}")
            return folder
        damaged.append((folder, problem))
    if not damaged:
        return None
    details = "; ".join(f"{folder.name}: {problem}" for folder, problem in damaged)
    raise CheckpointError(f"no usable checkpoint in {checkpoint_dir(output_dir)} ({details})")


def _looks_like_a_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a file of a training state (a damaged checkpoint still does; a
    model saved with ``save_pretrained``, or a run's output folder, does not)."""
    names = {p.name for p in folder.iterdir()}
    return bool(names & {STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE.format(process=0)})


def checkpoint_problem(folder: Path) -> str | None:
    """What makes ``folder`` unusable for a resume, naming the file; ``None`` when it looks whole.

    Cheap: the trainer state must parse, each file accelerate wrote must be there, a
    safetensors file must be as long as its header says, a torch.save file must be a zip
    archive whose directory reads. Damage inside the data itself shows only on load.
    """
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return f"{state_path} is missing"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{state_path} is not readable JSON"
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        return f"{state_path} has no integer step"
    files = state.get("files")
    if not (isinstance(files, list) and all(isinstance(name, str) for name in files)):
        files = REQUIRED_FILES
    for name in files:
        path = folder / name
        if not path.exists():
            return f"{path} is missing"
        problem = _file_problem(path)
        if problem:
            return problem
    return None


def _file_problem(path: Path) -> str | None:
    if path.is_dir():  # an FSDP sharded state: accelerate's (torch.distributed.checkpoint) part
        return None
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix in TORCH_SAVE_SUFFIXES:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (OSError, ValueError, zipfile.BadZipFile):
            return f"{path} is not a readable torch.save archive"
    return None


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
        # The files accelerate wrote, so that a resume can tell when one has gone missing.
        files = sorted(p.name for p in partial.iterdir())
        write_json(partial / STATE_FILE, {**state, "step": step, "files": files})
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict[str, Any]:
    """Restore the training state saved in ``checkpoint``; returns its trainer state.

    Raises :class:`CheckpointError` naming the checkpoint when accelerate cannot load it.
    """
    try:
        accelerator.load_state(str(checkpoint))
        return json.loads((checkpoint / STATE_FILE).read_text())
    except Exception as error:
        # One line for the command's error message; the traceback stays on the chain.
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise CheckpointError(f"checkpoint {checkpoint} could not be loaded: {reason}") from error
