"""A toy recipe (a tiny transformers GPT-2 on a small generated corpus) for the loop's tests.

The training package depends on no scratchformers model, so its tests train transformers'
own GPT-2 at a tiny size: what is under test is the loop, not the model.
"""

from __future__ import annotations

import os

# Before transformers and datasets are imported: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import GPT2Config, GPT2LMHeadModel

from scratchformers.training import CausalLMRecipe, Preset, Recipe, RecipeData, TrainingSettings

WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "ran",
    "to",
    "big",
    "small",
    "red",
    "blue",
    "house",
    "tree",
    "river",
]


class ToyRecipe(CausalLMRecipe):
    name = "toy"
    description = "A tiny GPT-2 for testing the loop."
    presets = {
        "tiny": Preset(
            training={
                "max_steps": 12,
                "batch_size": 4,
                "lr": 1e-2,
                "warmup_steps": 2,
                "eval_every": 4,
                "save_every": 4,
                "log_every": 2,
            },
            model={"vocab_size": 300, "block_size": 16, "max_eval_blocks": 8},
        )
    }

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> GPT2LMHeadModel:
        tokenizer = data.processor
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=16,
            n_embd=32,
            n_layer=1,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = GPT2LMHeadModel(config)
        # transformers infers the loss from the class name ("...ForCausalLM"); GPT2LMHeadModel
        # has an older name, so without this it warns on the first loss and falls back to the
        # same causal-LM loss.
        model.loss_type = "ForCausalLM"
        return model

    def samples(self, model: GPT2LMHeadModel, data: RecipeData) -> list[str]:
        return []


def write_corpus(folder: Path) -> Path:
    """Fill a new ``folder`` with small generated text files, the same ones every time."""
    rng = random.Random(0)
    folder.mkdir()
    for index in range(30):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(8)) + "." for _ in range(12)]
        (folder / f"doc{index:02d}.txt").write_text(" ".join(sentences))
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder of small generated text files."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="module")
def module_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same corpus once per test module, for a module fixture that trains a shared run."""
    return write_corpus(tmp_path_factory.mktemp("module") / "corpus")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Tokenizer cache and relative outputs stay inside the test's folder.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yield
    # Accelerate keeps one state per process; each test is a fresh run with its own settings.
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def run_train() -> Callable[[Recipe, list[str]], int]:
    """``run_train(recipe, argv)``: ``scratchformers train`` of ``recipe`` in this process, with
    the CLI's recipe lookup answering ``recipe``; the command's exit code."""
    import scratchformers.training.cli as cli

    def run(recipe: Recipe, argv: list[str]) -> int:
        real = cli.load_recipe
        cli.load_recipe = lambda name: recipe
        try:
            return cli.run_recipe(recipe.name, argv)
        finally:
            cli.load_recipe = real

    return run


@pytest.fixture
def recipe() -> ToyRecipe:
    return ToyRecipe()


@pytest.fixture(scope="module")
def module_recipe() -> ToyRecipe:
    """The toy recipe for module-scoped fixtures (``recipe`` is per test)."""
    return ToyRecipe()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of a finished 12-step toy run, shared by a module's tests (which only read
    it): the model, its tokenizer and run.json, as ``scratchformers train`` leaves them."""
    from scratchformers.training import parse_settings, train

    root = tmp_path_factory.mktemp("toy_run")
    corpus = write_corpus(root / "corpus")
    recipe = ToyRecipe()
    settings = parse_settings(recipe, ["--dataset", str(corpus), "--output-dir", str(root / "run")])
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
            torch.manual_seed(0)
            train(recipe, settings)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    yield root / "run"
