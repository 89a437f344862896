"""``scratchformers push FOLDER REPO_ID``: a trained run's folder, or an export, uploaded to a
Hugging Face Hub model repository, with its model card and its processor.

The repository is made private unless ``--public`` says otherwise (an existing one keeps its
visibility), and everything goes in one commit, so a failed push leaves the repository as it
was. What a run keeps for itself stays home (:func:`files_to_push`): its checkpoints (with
their optimizer, scheduler and random states), its TensorBoard logs, its lock file, hidden
files (partial checkpoints and exports, files half-written by ``write_json``) and pickled
files. The card goes up as the Hub shows it: its loading snippet loads the repository instead
of ``path/to/this/folder`` (:func:`scratchformers.core_attention.hub_card`).

A folder is refused, before anything is uploaded and with the reason, when it is not a model
folder (no weights), has no card, or holds a run's lock file (a run may be writing it).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ..rundir import CHECKPOINTS, LOCK_FILE
from .modeldir import command

CARD_FILE = "README.md"
# A model folder holds one of these: transformers' and timm's weights, an ONNX graph.
WEIGHT_SUFFIXES = (".safetensors", ".onnx")
# A run's own folders, by top-level name, and why they stay home.
RUN_FOLDERS = {
    CHECKPOINTS: "training checkpoints (weights, optimizer, scheduler and random states)",
    "tensorboard": "TensorBoard logs (metrics.jsonl holds the same figures)",
}
# Files saved with torch.save (pickle): a checkpoint's optimizer.bin, scheduler.bin and
# random_states_*.pkl; loading a pickle runs code, and a model folder's weights are
# safetensors.
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


@dataclass
class PushPlan:
    """What a push uploads from ``folder`` (paths relative to it, in order) and what it leaves
    out, with why (folders and files relative to it, by reason)."""

    folder: Path
    files: list[Path]
    left_out: dict[str, str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments: the folder, the repository and how to commit."""
    parser.add_argument(
        "folder", type=Path, metavar="FOLDER", help="a trained run's folder, or an export"
    )
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="the Hub model repository: NAME or OWNER/NAME"
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="make a new repository public (default: private; an existing one keeps its "
        "visibility)",
    )
    parser.add_argument(
        "--revision", metavar="BRANCH", help="the branch to commit to, made if missing"
    )
    parser.add_argument("--commit-message", metavar="TEXT", help="the commit's message")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be uploaded and the card, and upload nothing",
    )


def files_to_push(folder: Path) -> PushPlan:
    """The files of ``folder`` that belong on the Hub, and what stays home.

    Left out: the run's ``checkpoints/`` and ``tensorboard/`` folders, anything hidden
    (a name starting with "."; the run's lock file, partial checkpoints and exports,
    half-written JSON files) and pickled files (``.bin``, ``.pkl``, ``.pt``, ``.pth``), at any
    depth. Everything else goes: the weights, config.json, generation_config.json, the
    processor's files, the card and the figures it shows, run.json and metrics.jsonl, and a
    format's own files (an ONNX graph, a subfolder).
    """
    files: list[Path] = []
    left_out: dict[str, str] = {}
    for root, folders, names in os.walk(folder):
        here = Path(root).relative_to(folder)
        for name in sorted(folders):
            relative = here / name
            if name.startswith("."):
                why = "hidden: a partial checkpoint or export, or private"
            else:
                why = RUN_FOLDERS.get(name) if here == Path() else None
            if why is not None:
                left_out[f"{relative.as_posix()}/"] = why
                folders.remove(name)  # and nothing below it
        folders.sort()
        for name in sorted(names):
            relative = here / name
            if name == LOCK_FILE:
                left_out[relative.as_posix()] = "the run's lock file"
            elif name.startswith("."):
                left_out[relative.as_posix()] = "hidden: half-written or private"
            elif relative.suffix in PICKLE_SUFFIXES:
                left_out[relative.as_posix()] = "pickled (torch.save) file"
            else:
                files.append(relative)
    return PushPlan(folder=folder, files=files, left_out=left_out)


def check_folder(folder: Path) -> None:
    """Raise a ``ValueError`` naming the problem unless ``folder`` is a model folder with a
    card that no run is writing."""
    if not folder.exists():
        raise ValueError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; give a trained run's folder or an export")
    if not any(path.suffix in WEIGHT_SUFFIXES for path in folder.iterdir()):
        raise ValueError(
            f"{folder} is not a model folder: it holds no weights (no "
            f"{' or '.join('*' + suffix for suffix in WEIGHT_SUFFIXES)} file)"
        )
    if (folder / LOCK_FILE).exists():
        raise ValueError(
            f"{folder} holds a run's lock file ({folder / LOCK_FILE}): a run may be writing "
            "it; push it when the run has ended (if no run is, delete that file)"
        )
    if not (folder / CARD_FILE).is_file():
        raise ValueError(
            f"{folder} has no model card ({CARD_FILE}); scratchformers train writes one at "
            "the end of a run and scratchformers export one with each export: push a finished "
            "run or an export, or write the card"
        )


def _size(folder: Path, files: list[Path]) -> str:
    total = sum((folder / name).stat().st_size for name in files)
    return f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total / 1e3:.1f} kB"


@command
def run(arguments: argparse.Namespace) -> int:
    """Upload ``arguments.folder`` to ``arguments.repo_id``; the exit code."""
    folder: Path = arguments.folder
    check_folder(folder)
    plan = files_to_push(folder)

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
    )

    from scratchformers.core_attention import hub_card

    try:
        card = hub_card(folder / CARD_FILE, arguments.repo_id)
    except ValueError as error:  # YAML metadata that does not parse
        raise ValueError(f"{folder / CARD_FILE} is not a readable model card: {error}") from error
    assert card is not None  # check_folder found the file

    visibility = "public" if arguments.public else "private"
    print(f"{len(plan.files)} files ({_size(folder, plan.files)}) of {folder}:")
    for name in plan.files:
        print(f"  {name.as_posix()}")
    if plan.left_out:
        print("left out:")
        for name, why in plan.left_out.items():
            print(f"  {name}  ({why})")
    if arguments.dry_run:
        print(f"\n--dry-run: nothing uploaded; {CARD_FILE} as it would go to the Hub:\n")
        print(str(card))
        return 0

    api = HfApi()
    try:
        repo = api.create_repo(arguments.repo_id, private=not arguments.public, exist_ok=True)
        if arguments.revision:
            api.create_branch(repo.repo_id, branch=arguments.revision, exist_ok=True)
        operations = [
            CommitOperationAdd(
                path_in_repo=name.as_posix(),
                path_or_fileobj=str(card).encode()
                if name.as_posix() == CARD_FILE
                else str(folder / name),
            )
            for name in plan.files
        ]
        commit = api.create_commit(
            repo.repo_id,
            operations,
            commit_message=arguments.commit_message
            or f"Upload {folder.name} (scratchformers push)",
            revision=arguments.revision,
        )
    except (
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
    ) as error:
        raise ValueError(
            f"pushing {folder} to {arguments.repo_id} failed: {error} (log in with `hf auth "
            "login` or set HF_TOKEN; a repository of another owner needs write access)"
        ) from error
    print(f"pushed to {repo} ({visibility} if new): {getattr(commit, 'commit_url', commit)}")
    return 0
