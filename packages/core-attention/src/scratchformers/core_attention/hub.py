"""A model keeps the model card and the processor of the folder it was loaded from.

transformers' ``save_pretrained`` writes the config and the weights only, and its
``push_to_hub`` (like ``save_pretrained(..., push_to_hub=True)``) uploads them with the card
it finds in the Hub repository, or a generic one it makes up ("This is the model card of a
🤗 transformers model that has been pushed on the Hub"), and no tokenizer. A folder that
``scratchformers train`` wrote has a card of its own (README.md: what was trained on what,
how, its results as Hub metadata) and the tokenizer or image processor the model was trained
with; a model loaded from it and saved again, or pushed, would lose both.

:class:`CarriesModelCard`, mixed into every scratchformers model class through
:class:`~.loading.ChecksCheckpoints`, keeps them:

* ``from_pretrained`` of a local folder in our own layout (its config.json's ``model_type``
  is the class's) remembers that folder (:func:`remember_card_source`); a transformers
  folder converted on load does not, since its card describes another library's model;
* ``save_pretrained`` then writes the folder's README.md and its processor (tokenizer or
  image processor, through ``AutoProcessor``, as ``scratchformers export`` copies it) beside
  the weights, leaving alone a README.md or processor that the target folder holds already
  (a model changed since, fine-tuned in a loop of one's own, still carries the card that
  describes the folder: :func:`forget_card_source` before saving it, as ``--init-from`` does);
* ``push_to_hub`` uploads them: the card replaces the one transformers made up, keeps the
  tags transformers adds (``tags=``, the model's ``model_tags``), and its loading snippet
  loads the repository id instead of ``path/to/this/folder`` (:func:`hub_card`).

The hook for the upload is transformers' ``_upload_modified_files``, which both upload paths
call with the folder they are about to commit: the one place where the card can be put in
without writing transformers' push again (its repository, revision, pull-request and token
handling stay its own). Tests push through it offline
(``packages/core-attention/tests/test_hub.py``, and a trained run in
``tests/test_commands.py``), so a transformers release that moves it fails there rather than
silently uploading the generic card.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# The folder a card's loading snippet names until it has a real place: a push puts the
# repository id there (scratchformers' cards and exports write this text).
FOLDER_PLACEHOLDER = "path/to/this/folder"
# Only loaders that take a Hub id as well as a folder: a file path under the folder (an
# ONNX session's model.onnx, say) keeps the placeholder, since a Hub id is no path.
_LOADS_FOLDER = re.compile(
    r'(from_pretrained\(|model=|SentenceTransformer\()"' + FOLDER_PLACEHOLDER + '"'
)
# What save_pretrained of a tokenizer, image processor or processor writes: one of them in a
# folder means it holds a processor.
PROCESSOR_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "preprocessor_config.json",
    "processor_config.json",
)


class CarriesModelCard:
    """Mixed into a model class, before ``PreTrainedModel``: ``save_pretrained`` and
    ``push_to_hub`` carry the model card (README.md) and the processor of the local folder the
    model was loaded from (see the module docstring). A model built from a config, or loaded
    from a Hub id or a transformers folder, saves and pushes as transformers' own."""

    # Set on the instance by remember_card_source; the class default says "none".
    _card_source: Path | None = None

    @property
    def card_source(self) -> Path | None:
        """The folder whose card and processor this model carries, or ``None``."""
        return self._card_source

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any):
        """transformers' ``save_pretrained``, then the carried card and processor written
        beside the weights (by the main process only, as transformers saves)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        is_main_process = args[0] if args else kwargs.get("is_main_process", True)
        # transformers logs and returns when save_directory is a file: nothing to add there.
        if self._card_source is not None and is_main_process and Path(save_directory).is_dir():
            write_carried_files(self._card_source, Path(save_directory))
        return result

    def _upload_modified_files(
        self, working_dir: str | os.PathLike[str], repo_id: str, *args: Any, **kwargs: Any
    ):
        # transformers' last step of push_to_hub and save_pretrained(push_to_hub=True): the
        # folder holds what is about to be committed, its README.md the card transformers
        # made. Ours goes in its place, with that card's tags; the processor beside it.
        if self._card_source is not None:
            working = Path(working_dir)
            made = working / CARD_FILE
            tags = ModelCard.load(made).data.tags if made.is_file() else None
            card = hub_card(self._card_source / CARD_FILE, repo_id, tags)
            if card is not None:
                card.save(made)
            write_carried_files(self._card_source, working, card=False)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)  # type: ignore[misc]


def remember_card_source(
    model: Any, pretrained_model_name_or_path: str | os.PathLike[str] | None, kwargs: dict
) -> None:
    """Make ``model`` carry the card and processor of the folder it was just loaded from,
    when that is a local folder in the model's own layout (``subfolder=`` included)."""
    if not isinstance(model, CarriesModelCard) or pretrained_model_name_or_path is None:
        return
    folder = Path(pretrained_model_name_or_path)
    if kwargs.get("subfolder"):
        folder = folder / kwargs["subfolder"]
    if not folder.is_dir():
        return  # a Hub id: its card is on the Hub already
    import json

    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return
    if model_type == type(model).config_class.model_type:
        model._card_source = folder.resolve()


def forget_card_source(model: Any) -> None:
    """Make ``model`` save and push as transformers' own again, carrying no card: for a model
    that becomes another one (fine-tuning starts from it, and writes its own card)."""
    if isinstance(model, CarriesModelCard):
        model._card_source = None


def hub_card(card_path: Path, repo_id: str, tags: list[str] | None = None) -> ModelCard | None:
    """The card at ``card_path`` as it goes to the Hub repository ``repo_id``: where its
    loading snippet hands ``"path/to/this/folder"`` to a loader that takes a Hub id as well
    (``from_pretrained(...)``, ``pipeline(..., model=...)``, ``SentenceTransformer(...)``), it
    hands ``repo_id``; ``tags`` are added to its own. ``None`` when there is no card there."""
    if not card_path.is_file():
        return None
    text = _LOADS_FOLDER.sub(lambda match: f'{match[1]}"{repo_id}"', card_path.read_text("utf-8"))
    card = ModelCard(text)
    for tag in tags or ():
        card.data.tags = card.data.tags or []
        if tag not in card.data.tags:
            card.data.tags.append(tag)
    return card


def write_carried_files(source: Path, target: Path, *, card: bool = True) -> None:
    """Copy ``source``'s README.md (when ``card``) and its processor into ``target``. What
    ``target`` holds of either already is kept: it may be the user's, or the same files."""
    if not source.is_dir():
        logger.warning(
            "%s, where the model was loaded from, is gone: no card or processor was written to %s",
            source,
            target,
        )
        return
    if card and (source / CARD_FILE).is_file():
        destination = target / CARD_FILE
        text = (source / CARD_FILE).read_text(encoding="utf-8")
        if not destination.exists():
            destination.write_text(text, encoding="utf-8")
        elif destination.read_text(encoding="utf-8") != text:
            logger.warning(
                "%s holds a README.md of its own, kept as it is: the model card of %s was not "
                "written over it",
                target,
                source,
            )
    has_processor = any((source / name).is_file() for name in PROCESSOR_FILES)
    if has_processor and not any((target / name).is_file() for name in PROCESSOR_FILES):
        from transformers import AutoProcessor

        # Loaded and saved again rather than copied file by file: AutoProcessor knows which
        # files make each kind of tokenizer and processor.
        AutoProcessor.from_pretrained(source).save_pretrained(target)
