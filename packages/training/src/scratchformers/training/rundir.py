"""The output folder of a run: checked before any work, and never emptied unless asked.

A folder that holds an earlier run is left exactly as it is unless the command says what to
do with it: ``--resume`` continues that run, ``--overwrite`` starts over (deleting the old
checkpoints and metrics, which would otherwise mix with the new run's). A folder that cannot
take the run (a file, a folder that cannot be written, another model's folder) is refused
before the data is built, so that no time is lost on a run that could not be saved.

This module imports neither torch nor Accelerate: the command runs these checks first.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import TrainingSettings

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
# What a run writes that a new run in the same folder would mix with: --overwrite removes it.
RUN_ARTIFACTS = (CHECKPOINTS, "tensorboard", "metrics.jsonl", "loss_curve.png")


def run_identity(settings: TrainingSettings) -> dict[str, Any]:
    """What makes two runs the same model: a resume must match it, a new run may not mix."""
    return {"recipe": settings.recipe, "model": settings.model}


def check_output_dir(settings: TrainingSettings) -> None:
    """Raise a ``ValueError`` (one line, naming the folder and the flag to use) when the run
    cannot write into ``settings.output_dir`` or would lose what is there."""
    output_dir = settings.output_dir
    _check_writable(output_dir)
    run_file = output_dir / RUN_FILE
    if not run_file.is_file():
        if (output_dir / "config.json").is_file() or (output_dir / CHECKPOINTS).is_dir():
            raise ValueError(
                f"--output-dir {output_dir} holds a model that scratchformers did not train; "
                "choose another --output-dir"
            )
        return
    try:
        previous = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{run_file} is unreadable ({error}); choose another --output-dir, or --overwrite "
            "to start over there"
        ) from error
    if settings.overwrite:
        return
    same_model = {"recipe": previous.get("recipe"), "model": previous.get("model")}
    if same_model != run_identity(settings):
        raise ValueError(
            f"--output-dir {output_dir} holds a different model (recipe "
            f"{previous.get('recipe')!r}, preset {previous.get('preset')!r}, other model "
            "options); choose another --output-dir, or --overwrite to replace it"
        )
    if not settings.resume:
        raise ValueError(
            f"--output-dir {output_dir} holds an earlier run ({_progress(previous, output_dir)});"
            " add --resume to continue it, or --overwrite to start over"
        )
    changed = {
        key: value
        for key, value in settings.recipe_options.items()
        if key in previous.get("recipe_options", {}) and previous["recipe_options"][key] != value
    }
    if changed:
        flags = ", ".join(
            f"--{key.replace('_', '-')} {previous['recipe_options'][key]!r} (now {value!r})"
            for key, value in changed.items()
        )
        raise ValueError(f"--resume continues a run trained with {flags}; give the same values")


def _check_writable(output_dir: Path) -> None:
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():
            break
    if not folder.is_dir():
        what = "is a file" if folder == output_dir else f"is inside {folder}, which is a file"
        raise ValueError(f"--output-dir {output_dir} {what}; choose a folder")
    # Writing a file is the only test that holds for root, read-only mounts and ACLs alike.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(
            f"--output-dir {output_dir} cannot be written ({folder}: {error.strerror})"
        ) from error


def _progress(previous: dict[str, Any], output_dir: Path) -> str:
    """How far the earlier run got, for the message that asks what to do with it."""
    summary = previous.get("summary")
    if summary:
        return f"finished, {summary.get('steps')} steps"
    steps = sorted(
        int(path.name.removeprefix(CHECKPOINT_PREFIX))
        for path in (output_dir / CHECKPOINTS).glob(f"{CHECKPOINT_PREFIX}*")
        if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    )
    return f"checkpoint at step {steps[-1]}" if steps else "no checkpoint yet"


def clear_previous_run(output_dir: Path, recipe_files: tuple[str, ...] = ()) -> None:
    """For ``--overwrite``: remove the earlier run's checkpoints, logs and plot, and the
    ``recipe_files`` its recipe wrote (``Recipe.output_files``)."""
    for name in (*RUN_ARTIFACTS, *recipe_files):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
