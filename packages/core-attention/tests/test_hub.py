"""``CarriesModelCard``, which every model class gets through ``ChecksCheckpoints``: a model
loaded from one of our folders saves and pushes that folder's card and processor; one built
from a config, converted from transformers' layout, or told to forget, does not.

The Hub is offline here: ``HfApi``'s network calls are replaced by recorders, and everything
before them (transformers' ``push_to_hub``, the card it looks for in the repository, its
commit operations) is the real code."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.dataclasses import strict
from huggingface_hub.hf_api import RepoUrl
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention import (
    CheckpointConverter,
    ConvertsCheckpoints,
    forget_card_source,
)

CARD = """---
license: mit
library_name: transformers
tags:
- scratchformers
---

# toy

```python
model = AutoModel.from_pretrained("path/to/this/folder")
```
"""


@strict
class ToyConfig(PreTrainedConfig):
    model_type = "toy-carried"
    width: int = 4


@strict
class TheirToyConfig(PreTrainedConfig):
    model_type = "toy-carried-theirs"
    width: int = 4


class TheirToy(PreTrainedModel):
    config_class = TheirToyConfig

    def __init__(self, config: TheirToyConfig) -> None:
        super().__init__(config)
        self.kernel = nn.Parameter(torch.randn(config.width, config.width))
        self.post_init()


class Toy(ConvertsCheckpoints, PreTrainedModel):
    config_class = ToyConfig
    checkpoint_converters = (
        CheckpointConverter(
            transformers_model_type="toy-carried-theirs",
            config_class=ToyConfig,
            transformers_classes={"Toy": TheirToy},
            weight_conversions=[WeightRenaming("kernel", "up.weight")],
        ),
    )

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.up = nn.Linear(config.width, config.width, bias=False)
        self.post_init()


def tokenizer() -> PreTrainedTokenizerFast:
    words = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """One of our folders as a run leaves it: weights, a tokenizer, a card."""
    folder = tmp_path / "run"
    Toy(ToyConfig()).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, bytes]]:
    """Each commit that reached HfApi, as its files' bytes by their path in the repository."""
    recorded: list[dict[str, bytes]] = []

    def create_repo(self: HfApi, repo_id: str, **options: object) -> RepoUrl:
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self: HfApi, repo_id: str, operations: list, **options: object) -> object:
        recorded.append(
            {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        )
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0",
            commit_message="",
            commit_description="",
            oid="0",
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return recorded


def test_save_pretrained_writes_the_loaded_folders_card_and_tokenizer(
    run_folder: Path, tmp_path: Path
) -> None:
    model = Toy.from_pretrained(run_folder)
    assert model.card_source == run_folder.resolve()
    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "README.md").read_text() == CARD
    saved = AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert saved("a b")["input_ids"] == [1, 2]
    # Saving where it came from changes nothing there.
    before = {path.name: path.read_bytes() for path in run_folder.iterdir()}
    model.save_pretrained(run_folder)
    assert (run_folder / "README.md").read_bytes() == before["README.md"]


def test_what_the_target_holds_already_is_kept(
    run_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "README.md").write_text("# my own notes\n")
    with caplog.at_level(logging.WARNING, logger="scratchformers.core_attention.hub"):
        Toy.from_pretrained(run_folder).save_pretrained(target)
    assert (target / "README.md").read_text() == "# my own notes\n"
    assert f"{target} holds a README.md of its own, kept as it is" in caplog.text


def test_models_of_no_folder_of_ours_carry_nothing(run_folder: Path, tmp_path: Path) -> None:
    fresh = Toy(ToyConfig())
    assert fresh.card_source is None
    fresh.save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "README.md").exists()

    # transformers' layout, converted on load: its card would describe their model.
    theirs = tmp_path / "theirs"
    TheirToy(TheirToyConfig()).save_pretrained(theirs)
    (theirs / "README.md").write_text(CARD)
    tokenizer().save_pretrained(theirs)
    converted = Toy.from_pretrained(theirs)
    assert converted.card_source is None
    converted.save_pretrained(tmp_path / "converted")
    assert sorted(path.name for path in (tmp_path / "converted").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]

    loaded = Toy.from_pretrained(run_folder)
    forget_card_source(loaded)  # fine-tuning starts from it: the new run writes its own
    assert loaded.card_source is None


def test_push_to_hub_uploads_the_card_and_tokenizer(
    run_folder: Path, tmp_path: Path, commits: list[dict[str, bytes]]
) -> None:
    model = Toy.from_pretrained(run_folder)
    model.push_to_hub("me/toy", tags=["mine"])
    (files,) = commits
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert files["tokenizer.json"] == (run_folder / "tokenizer.json").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "mit" and card.data.tags == ["scratchformers", "mine"]
    assert 'AutoModel.from_pretrained("me/toy")' in card.text  # the repository, not a path

    # save_pretrained(..., push_to_hub=True), transformers' other way up, carries them too.
    model.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="me/toy")
    files = commits[-1]
    assert "tokenizer.json" in files
    assert 'AutoModel.from_pretrained("me/toy")' in files["README.md"].decode()

    # A model that carries no card is pushed as transformers pushes it.
    Toy(ToyConfig()).push_to_hub("me/fresh")
    assert "tokenizer.json" not in commits[-1]
    assert "This is the model card of a 🤗 transformers model" in commits[-1]["README.md"].decode()
