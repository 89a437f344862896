"""A trained model's folder, for the commands that use one (generate, eval, export).

What is in the folder is checked before anything heavy is imported, and every problem ends
the command with one line naming the folder and what is wrong with it, never a traceback.

How a folder's code is found: its config.json's ``model_type`` is ``scratchformers-<package>``
for scratchformers models (``scratchformers-gpt2``), and importing ``scratchformers.<package>``
registers them with transformers' Auto classes; any other model_type must be one transformers
knows itself. Its run.json (written by ``scratchformers train``) names the recipe and holds
the settings it was trained with.

Only the standard library is imported at the top: ``scratchformers --help`` imports this.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError
from ..rundir import RUN_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..recipe import Recipe
    from ..settings import TrainingSettings

CONFIG_FILE = "config.json"
OUR_MODEL_TYPES = "scratchformers-"
# What save_pretrained of a tokenizer writes: one of them means the folder holds a tokenizer.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


@dataclass
class ModelFolder:
    """A folder holding a saved model: its config.json, and its run.json if it has one."""

    path: Path
    config: dict[str, Any]
    run: dict[str, Any] | None

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    def has_tokenizer(self) -> bool:
        return any((self.path / name).is_file() for name in TOKENIZER_FILES)

    def require_run(self, why: str) -> dict[str, Any]:
        """The run.json, or a ``ValueError`` saying that ``why`` needs it."""
        if self.run is None:
            raise ValueError(
                f"{self.path} has no {RUN_FILE}: {why} (a folder that scratchformers train wrote)"
            )
        return self.run

    def recipe(self) -> Recipe:
        """The installed recipe this folder was trained with, named in its run.json."""
        from ..recipe import load_recipe

        name = self.require_run("its run.json names the recipe it was trained with").get("recipe")
        if not isinstance(name, str):
            raise ValueError(f"{self.path / RUN_FILE} names no recipe")
        try:
            return load_recipe(name)
        except ValueError as error:  # it says what is installed, and how recipes come
            raise ValueError(
                f"{self.path} was trained with the {name} recipe, but {error}"
            ) from error

    def installed_recipe(self) -> Recipe | None:
        """The folder's recipe if it has a run.json naming an installed one, else None."""
        from ..recipe import installed_recipes

        if self.run is None or self.run.get("recipe") not in installed_recipes():
            return None
        return self.recipe()

    def settings(self) -> TrainingSettings:
        """The settings of the run that trained this model, from its run.json, with the
        folder as it is now (the run may have been moved) as ``output_dir``."""
        from ..settings import TrainingSettings

        run = self.require_run("the settings of its run are in it")
        known = {field.name for field in fields(TrainingSettings)}
        values = {key: value for key, value in run.items() if key in known}
        values.update(output_dir=self.path, resume=False, resume_from=None, overwrite=False)
        try:
            return TrainingSettings(**values)
        except TypeError as error:  # a field missing: not a run.json this package wrote
            raise ValueError(f"{self.path / RUN_FILE} is not a run's settings ({error})") from error


def open_model_folder(path: Path) -> ModelFolder:
    """``path`` as a model folder, or a ``ValueError`` saying why it is not one."""
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; give the folder a model was saved in")
    config = _read_json(path / CONFIG_FILE, f"{path} is not a model folder (no {CONFIG_FILE})")
    if not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path / CONFIG_FILE} has no model_type, so no code loads it")
    run = _read_json(path / RUN_FILE, None) if (path / RUN_FILE).exists() else None
    return ModelFolder(path=path, config=config, run=run)


def _read_json(path: Path, missing: str | None) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(missing or f"{path} is missing")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is unreadable ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds no JSON object")
    return value


def import_model_code(folder: ModelFolder) -> None:
    """Import what registers the folder's model_type with transformers' Auto classes, or
    raise a ``ValueError`` naming the package to install."""
    from transformers import CONFIG_MAPPING

    model_type = folder.model_type
    if model_type.startswith(OUR_MODEL_TYPES):
        package = model_type.removeprefix(OUR_MODEL_TYPES)
        module = f"scratchformers.{package.replace('-', '_')}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # Only the package itself missing is the user's to fix; a missing dependency
            # inside an installed package is a broken install and keeps its traceback.
            if error.name not in (module, "scratchformers"):
                raise
            raise ValueError(
                f"{folder.path} holds a {model_type} model, and no installed scratchformers "
                f"package provides it: pip install scratchformers-{package}"
            ) from error
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{folder.path} holds a {model_type!r} model, which neither transformers nor any "
            "installed scratchformers package provides"
        )


def load_pretrained(path: Path, auto_class: str) -> PreTrainedModel:
    """The model saved in ``path``, loaded with ``transformers.<auto_class>`` once its code is
    imported; a ``ValueError`` if that Auto class does not load it or its weights are missing."""
    import transformers

    folder = open_model_folder(path)
    import_model_code(folder)
    loader = getattr(transformers, auto_class)
    try:
        return loader.from_pretrained(path)
    except OSError as error:  # no weights file, or an unreadable one
        raise ValueError(f"{path} holds no loadable weights: {error}") from error
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        raise ValueError(
            f"{path} holds a {folder.model_type} model, which {auto_class} does not load"
        ) from error


def command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Make a command's ``run`` end bad input with one line, ``error: ...`` on stderr, and
    exit code 2, like ``scratchformers train``; Ctrl-C ends it with 130."""

    @functools.wraps(run)
    def wrapper(arguments: argparse.Namespace) -> int:
        try:
            return run(arguments)
        except (ValueError, TrainingError) as error:
            # transformers' messages may span lines; the contract is one line.
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\nstopped (Ctrl-C)", file=sys.stderr)
            return 128 + 2

    return wrapper
