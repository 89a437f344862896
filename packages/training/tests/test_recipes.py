"""Recipes beyond language models: their own loss, metrics from predictions, optimizer, flags,
throughput unit and held-out set, through the real loop.

The toy models are small enough that their numbers can be worked out by hand: a classifier
that starts as the identity map (it predicts the largest feature), and a pair of linear
encoders trained contrastively.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate import PartialState
from safetensors.torch import load_file
from torch.utils.data import Dataset
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from scratchformers.training import (
    EvalResults,
    Preset,
    Recipe,
    RecipeData,
    TrainingSettings,
    gather_with_gradients,
    parse_settings,
    train,
)
from scratchformers.training.settings import build_parser

FEATURES = 3


class ToyConfig(PreTrainedConfig):
    model_type = "scratchformers-toy"

    def __init__(self, features: int = FEATURES, embedding_size: int = 4, **kwargs: Any) -> None:
        self.features = features
        self.embedding_size = embedding_size
        super().__init__(**kwargs)


class ToyClassifier(PreTrainedModel):
    """One linear layer from the features to one logit per class."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.linear = torch.nn.Linear(config.features, config.features)
        self.post_init()

    def forward(self, features: torch.Tensor) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.linear(features))


class Examples(Dataset):
    """A plain torch dataset (no ``select``, no columns): features and a label per example."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


def collate_examples(examples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    features, labels = zip(*examples, strict=True)
    return {"features": torch.stack(features), "labels": torch.stack(labels)}


# The held-out set: twelve examples whose largest feature is 0, 1, 2, 0, 1, 2, ... and whose
# label is that class except for every fourth example: the identity map gets 9 of 12 right.
EVAL_CLASSES = torch.arange(12) % FEATURES
EVAL_LABELS = torch.where(torch.arange(12) % 4 == 3, (EVAL_CLASSES + 1) % FEATURES, EVAL_CLASSES)
EVAL_FEATURES = 2.0 * F.one_hot(EVAL_CLASSES, FEATURES).float() + 0.1 * torch.arange(12)[:, None]

TRAINING = {
    "max_steps": 4,
    "batch_size": 4,
    "lr": 1e-2,
    "warmup_steps": 0,
    "schedule": "constant",
    "eval_every": 2,
    "save_every": 4,
    "log_every": 2,
}


class ClassifierRecipe(Recipe):
    """Image classification in miniature: its own loss (label smoothing from its own flag),
    accuracy from the gathered predictions, throughput in images."""

    name = "toy-classifier"
    description = "A toy classifier."
    presets = {"tiny": Preset(training=TRAINING, model={})}
    item_unit = "images"

    def __init__(self) -> None:
        self.results: list[EvalResults] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--label-smoothing", type=float, default=0.0, help="for the loss")

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        train_classes = torch.arange(32) % FEATURES
        return RecipeData(
            train=Examples(F.one_hot(train_classes, FEATURES).float(), train_classes),
            eval=Examples(EVAL_FEATURES, EVAL_LABELS),
            collate=collate_examples,
            processor=None,
            description="toy features",
        )

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> ToyClassifier:
        self.label_smoothing = settings.options.label_smoothing  # for compute_loss
        model = ToyClassifier(ToyConfig())
        with torch.no_grad():
            model.linear.weight.copy_(torch.eye(FEATURES))
            model.linear.bias.zero_()
        return model

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int
    ) -> torch.Tensor:
        logits = model(features=batch["features"]).logits
        loss = F.cross_entropy(
            logits, batch["labels"], label_smoothing=self.label_smoothing, reduction="sum"
        )
        return loss / num_items_in_batch

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        logits = model(features=batch["features"]).logits
        return {
            "loss": F.cross_entropy(logits, batch["labels"], label_smoothing=self.label_smoothing),
            "predictions": logits.argmax(-1),
            "labels": batch["labels"],
        }

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        self.results.append(results)
        correct = results.gathered["predictions"] == results.gathered["labels"]
        return {"eval_loss": results.means["loss"], "accuracy": float(correct.float().mean())}


def records(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_accuracy_comes_from_the_gathered_predictions_of_a_plain_torch_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = ClassifierRecipe()
    output_dir = tmp_path / "run"
    settings = parse_settings(recipe, ["--output-dir", str(output_dir), "--label-smoothing", "0.1"])
    result = train(recipe, settings)

    # Step 0 is the untrained identity map: it predicts the largest feature.
    first = recipe.results[0]
    assert first.gathered["predictions"].tolist() == EVAL_CLASSES.tolist()
    assert first.gathered["labels"].tolist() == EVAL_LABELS.tolist()  # every example, in order
    expected_loss = F.cross_entropy(EVAL_FEATURES, EVAL_LABELS, label_smoothing=0.1)
    logged = records(output_dir)
    assert logged[0] == {
        "step": 0,
        "eval_loss": pytest.approx(float(expected_loss), rel=1e-6),
        "accuracy": 0.75,
    }
    # Training on labels that always follow the largest feature does not unlearn that.
    training_records = [r for r in logged if "loss" in r]
    assert [r["step"] for r in training_records] == [2, 4]
    assert training_records[1]["loss"] < training_records[0]["loss"]
    assert result.final_metrics["accuracy"] == 0.75

    # The throughput names the recipe's unit, in the metrics and on the progress bar.
    assert all(r["images_per_s"] > 0 and "tokens_per_s" not in r for r in training_records)
    assert "images/s=" in capsys.readouterr().err

    run = json.loads((output_dir / "run.json").read_text())
    assert run["recipe_options"] == {"label_smoothing": 0.1, **SHARED_DATA_OPTIONS}
    assert run["summary"]["final_metrics"]["accuracy"] == 0.75
    assert (output_dir / "model.safetensors").is_file()  # saved without a processor


def test_recipe_flags_are_in_help_and_settings_and_text_flags_only_for_text(
    recipe: Recipe,
) -> None:
    classifier_help = build_parser(ClassifierRecipe()).format_help()
    assert "--label-smoothing" in classifier_help and "--text-column" not in classifier_help
    language_model_help = build_parser(recipe).format_help()
    assert "--text-column" in language_model_help
    # Every recipe starts from a checkpoint and reads the user's files with the same flags.
    for help_text in (classifier_help, language_model_help):
        for flag in ("--init-from", "--dataset", "--eval-dataset", "--eval-fraction"):
            assert flag in help_text

    assert parse_settings(ClassifierRecipe(), []).recipe_options == {
        "label_smoothing": 0.0,
        **SHARED_DATA_OPTIONS,
    }
    settings = parse_settings(recipe, ["--dataset", "corpus.txt", "--init-from", "gpt2"])
    assert settings.recipe_options == {
        **SHARED_DATA_OPTIONS,
        "dataset": "corpus.txt",
        "init_from": "gpt2",
        "text_column": "text",
        "tokenizer": None,
        "streaming": False,
    }
    with pytest.raises(SystemExit):  # a language model's flag is unknown to the classifier
        parse_settings(ClassifierRecipe(), ["--text-column", "body"])


SHARED_DATA_OPTIONS = {
    "init_from": None,
    "dataset": None,
    "eval_dataset": None,
    "eval_fraction": 0.05,
}


class FrozenBiasRecipe(ClassifierRecipe):
    """The classifier with its bias frozen, as a LoRA recipe freezes its base model."""

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> ToyClassifier:
        model = super().build_model(settings, data)
        with torch.no_grad():
            model.linear.bias.fill_(0.5)
        model.linear.bias.requires_grad_(False)
        return model


def test_only_trainable_parameters_are_trained(tmp_path: Path) -> None:
    recipe = FrozenBiasRecipe()
    train(recipe, parse_settings(recipe, ["--output-dir", str(tmp_path / "frozen")]))
    weights = load_file(tmp_path / "frozen" / "model.safetensors")
    assert torch.equal(weights["linear.bias"], torch.full((FEATURES,), 0.5))
    assert not torch.equal(weights["linear.weight"], torch.eye(FEATURES))
    summary = json.loads((tmp_path / "frozen" / "run.json").read_text())["summary"]
    assert (summary["parameters"], summary["trainable_parameters"]) == (12, 9)


class StillRecipe(ClassifierRecipe):
    """The classifier with a recipe-chosen optimizer that does not move the weights."""

    def build_optimizer(
        self, model: torch.nn.Module, settings: TrainingSettings
    ) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.0)


def test_the_recipe_chooses_the_optimizer(tmp_path: Path) -> None:
    recipe = StillRecipe()
    train(recipe, parse_settings(recipe, ["--output-dir", str(tmp_path / "still")]))
    weights = load_file(tmp_path / "still" / "model.safetensors")
    assert torch.equal(weights["linear.weight"], torch.eye(FEATURES))  # AdamW would move them


class ToyDualEncoder(PreTrainedModel):
    """CLIP in miniature: an image encoder and a text encoder into one embedding space."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.image = torch.nn.Linear(config.features, config.embedding_size)
        self.text = torch.nn.Linear(config.features, config.embedding_size)
        self.post_init()

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1)


class Pairs(Dataset):
    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, FEATURES, generator=generator)
        self.texts = self.images.flip(-1) + 0.05 * torch.randn(count, FEATURES, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"images": self.images[index], "texts": self.texts[index]}


def contrastive_loss(
    images: torch.Tensor, texts: torch.Tensor, all_images: torch.Tensor, all_texts: torch.Tensor
) -> torch.Tensor:
    """This process's pairs (rows) against every process's (columns), both ways."""
    targets = PartialState().process_index * len(images) + torch.arange(len(images))
    scale = 10.0
    return (
        F.cross_entropy(scale * images @ all_texts.T, targets)
        + F.cross_entropy(scale * texts @ all_images.T, targets)
    ) / 2


class ContrastiveRecipe(Recipe):
    """A loss over every process's pairs, retrieval accuracy over the whole held-out set."""

    name = "toy-contrastive"
    description = "A toy dual encoder."
    presets = {
        "tiny": Preset(
            training={**TRAINING, "max_steps": 30, "eval_every": 30, "lr": 5e-2}, model={}
        )
    }
    item_unit = "pairs"

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        return RecipeData(
            train=Pairs(64, seed=1),
            eval=Pairs(16, seed=2),
            collate=torch.utils.data.default_collate,
            processor=None,
            description="toy pairs",
        )

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> ToyDualEncoder:
        return ToyDualEncoder(ToyConfig())

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int
    ) -> torch.Tensor:
        images, texts = model(**batch)
        loss = contrastive_loss(
            images, texts, gather_with_gradients(images), gather_with_gradients(texts)
        )
        return loss * len(images) / num_items_in_batch

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        images, texts = model(**batch)
        return {"images": images, "texts": texts}

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        images, texts = results.gathered["images"], results.gathered["texts"]
        loss = contrastive_loss(images, texts, images, texts)
        found = (images @ texts.T).argmax(-1) == torch.arange(len(images))
        return {"eval_loss": float(loss), "retrieval_accuracy": float(found.float().mean())}


def test_a_contrastive_recipe_learns_with_its_own_loss_and_metric(tmp_path: Path) -> None:
    recipe = ContrastiveRecipe()
    output_dir = tmp_path / "pairs"
    result = train(recipe, parse_settings(recipe, ["--output-dir", str(output_dir)]))
    first, last = records(output_dir)[0], result.final_metrics
    assert last["eval_loss"] < 0.5 * first["eval_loss"]
    assert first["retrieval_accuracy"] < 0.5 and last["retrieval_accuracy"] >= 0.9
    assert all(r["pairs_per_s"] > 0 for r in records(output_dir) if "loss" in r)


def test_gather_with_gradients_is_the_identity_on_one_process() -> None:
    embeddings = torch.randn(4, 3, requires_grad=True)
    gathered = gather_with_gradients(embeddings)
    assert gathered is embeddings
    (2 * gathered).sum().backward()
    assert torch.equal(embeddings.grad, torch.full((4, 3), 2.0))
