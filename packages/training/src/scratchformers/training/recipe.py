"""Recipes: the model-specific part of a training run, and where they are found.

The loop in :mod:`scratchformers.training.loop` is the same for every model. A recipe says
what differs: its command-line flags, how to build the data (and the tokenizer or processor),
the model, the optimizer, the loss, the evaluation metrics, the unit of its throughput, and
what to show at the end. Every hook but ``build_data`` and ``build_model`` has a default that
trains a Hugging Face model on its own ``loss``. Each trainable package keeps its recipe in
``scratchformers/recipes/<package>.py`` (``scratchformers/<package>/train.py`` runs it with
``python -m``) and announces it with an entry point in the ``scratchformers.recipes`` group,
so ``scratchformers train --help`` lists what is installed.

A recipe's module is imported to answer ``--help``, so it keeps torch, transformers and the
model package out of its top level: they are imported inside ``build_data`` / ``build_model``,
where the work starts. This module follows the same rule.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .settings import TrainingSettings

ENTRY_POINT_GROUP = "scratchformers.recipes"


@dataclass
class Preset:
    """One named size of a recipe: training defaults (any ``TrainingSettings`` field) and
    model options (whatever the recipe's ``build_model`` reads)."""

    training: dict[str, Any]
    model: dict[str, Any]

    @classmethod
    def scheduled(
        cls, *, steps: int, batch: int, lr: float, warmup: int, eval_every: int, **model: Any
    ) -> Preset:
        """A preset from the usual schedule: ``steps`` optimizer steps of ``batch`` examples,
        peak ``lr`` after ``warmup`` steps, an evaluation every ``eval_every`` steps, a
        checkpoint every two evaluations and five logs per evaluation; ``model`` as given."""
        training = {
            "max_steps": steps,
            "batch_size": batch,
            "lr": lr,
            "warmup_steps": warmup,
            "eval_every": eval_every,
            "save_every": 2 * eval_every,
            "log_every": max(1, eval_every // 5),
        }
        return cls(training=training, model=model)


@dataclass(frozen=True)
class ModelFlag:
    """A command-line flag that sets one model option (a key of ``Preset.model``) over the
    preset's value, e.g. ``"--width": ModelFlag("hidden_size", "hidden size")``."""

    option: str
    help: str
    type: Callable[[str], Any] = int


class SizedDataset(Protocol):
    """A map-style dataset: a ``torch.utils.data.Dataset`` with a length, or a
    ``datasets.Dataset``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass
class RecipeData:
    """What a recipe's ``build_data`` returns."""

    train: SizedDataset
    eval: SizedDataset
    collate: Callable[[list[Any]], dict[str, Any]]
    processor: Any  # the tokenizer or image processor saved with the model, or None
    description: str  # for the model card: what the data was


@dataclass
class EvalResults:
    """What ``Recipe.eval_step`` returned over the whole held-out set, from every process.

    ``means`` holds each scalar output (a batch mean such as ``"loss"``) averaged over the
    batches; within a batch, each process's mean weighs as many as its loss-bearing items
    (``count_loss_items``), so the figure is the one-process figure for any number of
    processes. ``gathered`` holds each per-example output (a tensor whose first
    dimension is the batch, or a list such as decoded strings) gathered across the processes
    with ``accelerator.gather_for_metrics`` and joined over the batches, in held-out order.
    """

    means: dict[str, float]
    gathered: dict[str, torch.Tensor | list[Any]]


@dataclass
class Evaluation:
    """One evaluation: everything ``eval_step`` kept (``results``) and the ``metrics``
    ``eval_metrics`` computed from it. The loop evaluates the final weights once more if the
    last segment of a run ended between evaluations, and hands that evaluation to ``finish``
    and ``card_sections``: a resumed run reports what an uninterrupted one does."""

    results: EvalResults
    metrics: dict[str, float]


# The pipeline task of each Auto class, for the line that says how to use an export.
PIPELINE_TASKS = {
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForImageClassification": "image-classification",
}


@dataclass(frozen=True)
class ExportFormat:
    """One way ``scratchformers export --format NAME`` writes a trained model.

    ``write(model, out_dir)`` fills the new folder ``out_dir`` (the command makes it in a
    hidden place and renames it once ``write`` returns, so a failure leaves nothing).
    ``usage(out)`` gives the lines that tell the user how to load the finished folder ``out``.
    ``copies_processor`` adds the trained folder's tokenizer or image processor beside it,
    saved as transformers' Auto classes load it. Every export gets a model card (README.md,
    :func:`~.reporting.write_export_card`): its loading snippet is ``usage``'s lines (those
    that start with a space are code), and its Hub ``library_name`` is ``library_name``, or
    the format's name when that is the Hub's name for the library ("timm", "onnx").
    """

    write: Callable[[PreTrainedModel, Path], Any]
    usage: Callable[[Path], list[str]]
    help: str
    copies_processor: bool = False
    library_name: str | None = None


class Recipe:
    """Base class of recipes. Subclasses set ``name``, ``description`` and ``presets`` and
    implement ``build_data`` and ``build_model``; the other hooks have working defaults.

    The commands that use a trained folder (``scratchformers generate``, ``eval``, ``export``)
    find its recipe by the ``recipe`` in its run.json, and its code by the ``model_type`` in
    its config.json: ``scratchformers-<package>`` (say ``scratchformers-gpt2``) is imported
    as ``scratchformers.<package>``, which registers the model with transformers' Auto
    classes; a model_type of transformers itself needs no import. ``load_model`` then loads
    the folder with ``auto_class``, and ``export_to_transformers`` writes it for the
    transformers class it mirrors, if any.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    presets: ClassVar[dict[str, Preset]]
    default_preset: ClassVar[str] = "tiny"
    auto_class: ClassVar[str] = "AutoModel"  # how users load the result, for the model card
    # How users load the processor saved beside the model, for the model card.
    processor_auto_class: ClassVar[str] = "AutoTokenizer"
    item_unit: ClassVar[str] = "examples"  # what count_items counts: the throughput's unit
    # Flags for the model's shape (``--width``, ``--depth``, ...), by flag name; each overrides
    # one option of the chosen preset's ``model``.
    model_flags: ClassVar[dict[str, ModelFlag]] = {}
    # The Hugging Face Hub task of the trained model ("text-generation", ...), for the model
    # card's metadata; None leaves the task (and the card's model-index results) out.
    pipeline_tag: ClassVar[str | None] = None
    # The Hub license id of the trained weights when the recipe knows it. The weights inherit
    # the terms of their training data, not the code's license, so none by default.
    license: ClassVar[str | None] = None
    # The files ``finish`` writes into the output folder: ``--overwrite`` removes them with the
    # rest of an earlier run, so that none is left from it if the new run stops early.
    output_files: ClassVar[tuple[str, ...]] = ()
    # Whether the model card says the model was trained from scratch; a recipe that starts
    # from a pretrained model (a fine-tuning) says False, and the card says "Fine-tuned".
    trained_from_scratch: ClassVar[bool] = True
    # What --dataset reads, for its help: the formats of the recipe's task.
    dataset_formats: ClassVar[str] = "a local file or folder, or a Hugging Face dataset id"
    # The share of --dataset held out when there is no --eval-dataset.
    default_eval_fraction: ClassVar[float] = 0.05
    # What --init-from reads, for its help, and other names of the flag (lora's --base).
    init_from_formats: ClassVar[str] = (
        "a folder written by save_pretrained (this project's or the transformers class the "
        "model mirrors) or a Hugging Face Hub id"
    )
    init_from_aliases: ClassVar[tuple[str, ...]] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the recipe's own flags; their values land in ``settings.recipe_options``,
        keyed by their ``dest`` (``--mask-ratio`` -> ``"mask_ratio"``), and in run.json."""

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        """The training and held-out sets, how to batch them, and the processor."""
        raise NotImplementedError

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> PreTrainedModel:
        """The model to train; parameters with ``requires_grad=False`` stay frozen."""
        raise NotImplementedError

    def build_optimizer(
        self, model: torch.nn.Module, settings: TrainingSettings
    ) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters, with weight decay on matrices only."""
        import torch

        return torch.optim.AdamW(
            parameter_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.95)
        )

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int
    ) -> torch.Tensor:
        """This process's share of one micro-batch's loss: the sum of its per-item losses
        divided by ``num_items_in_batch``, the loss-bearing items (see ``count_loss_items``) of
        the whole optimizer step, over every micro-batch of the accumulation and every process.
        Summed over them, these give the mean over the step's items, so that a micro-batch
        with few real tokens weighs as little as it should (transformers' Trainer fixed the
        same bug with the same argument).

        By default the model's own ``loss``, a mean over the items that ``count_loss_items``
        counts, times their count, over the step's. A loss that needs every process's
        examples gathers them with :func:`scratchformers.training.gather_with_gradients`.
        """
        # The ratio is exactly 1.0 for a step of one micro-batch on one process: the loss is
        # then bit for bit the model's own.
        return model(**batch).loss * (self.count_loss_items(batch) / num_items_in_batch)

    def count_loss_items(self, batch: dict[str, Any]) -> int:
        """How many items of this process's share of a micro-batch the loss averages over:
        the examples by default; the real (not -100) ``labels`` for a token-level loss over
        padded or masked batches (:class:`MaskedLMRecipe` and the seq2seq recipe say so)."""
        return len(next(iter(batch.values())))

    def count_items(self, batch: dict[str, Any]) -> int:
        """How many ``item_unit`` this process's share of a batch holds, for the throughput:
        the examples, by default."""
        return len(next(iter(batch.values())))

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """What to keep from one held-out batch: 0-dim tensors (means over this process's
        ``count_loss_items`` items of the batch, averaged into ``EvalResults.means``) and
        per-example tensors or lists (predictions, labels, decoded text, gathered into
        ``EvalResults.gathered``). Per-example tensors must have the same
        shape on every process (pad them). ``model`` is the unwrapped model (``generate`` is
        there); this runs under ``torch.no_grad()``. By default only the recipe's loss, as the
        mean over this batch's items."""
        return {"loss": self.compute_loss(model, batch, self.count_loss_items(batch))}

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        """The metrics of one evaluation, from everything ``eval_step`` kept, and from nothing
        else: a pure function of ``results`` (as transformers' ``compute_metrics``), since it
        also scores evaluations that ran in another segment or command. ``eval_loss`` is
        plotted against the training loss."""
        return {"eval_loss": results.means["loss"]}

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        """A few outputs to print at the end of training (none by default)."""
        return []

    def model_to_save(self, model: PreTrainedModel) -> PreTrainedModel:
        """The model the loop saves in the output folder at the end: the trained one by
        default (a LoRA recipe saves a copy with its adapter merged in)."""
        return model

    def finish(
        self,
        model: PreTrainedModel,
        data: RecipeData,
        output_dir: Path,
        evaluation: Evaluation,
    ) -> dict[str, Path]:
        """Write the recipe's own files about the trained model into ``output_dir`` (a plot,
        say), at the end of training, on the main process, after the model is saved.
        ``evaluation`` is the final evaluation of these weights; ``model`` is unwrapped. Name
        the files in ``output_files``. Returns them by what they show (``{"confusion matrix":
        path}``): the run prints each path beside the loss curve's, and the model card shows
        the PNGs. None by default."""
        return {}

    def card_sections(self, output_dir: Path, evaluation: Evaluation) -> list[str]:
        """Markdown lines for the model card, shown after its results (a table of the
        recipe's own figures, say), from the final ``evaluation`` and what ``finish`` wrote
        in ``output_dir``; called on the main process after ``finish``. None by default."""
        return []

    def load_model(self, model_dir: Path, settings: TrainingSettings) -> PreTrainedModel:
        """The trained model saved in ``model_dir`` by a run with ``settings``, for the
        commands that use it: ``auto_class.from_pretrained`` once the package its
        config.json's model_type names is imported. A recipe whose hooks need state that
        ``build_model`` sets up (a setting its loss reads) sets it up here too."""
        from .commands.modeldir import load_pretrained

        return load_pretrained(model_dir, self.auto_class)

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """Write ``model`` into ``out_dir`` as the transformers class it mirrors (config and
        weights; ``scratchformers export`` adds the processor). By default a recipe's models
        mirror none, and this raises a ``ValueError`` saying so."""
        raise ValueError(
            f"the {self.name} recipe's models mirror no transformers class, so there is "
            "nothing to export them to; load the folder itself with from_pretrained"
        )

    def export_formats(self) -> dict[str, ExportFormat]:
        """What ``scratchformers export --format`` offers for this recipe's models, by format
        name. Every recipe has "transformers" (``export_to_transformers``); a recipe adds the
        others its models can be written as (ViT's "timm", say) by extending this dict."""
        return {
            "transformers": ExportFormat(
                write=self.export_to_transformers,
                usage=self.transformers_usage,
                help="the transformers class the model mirrors, with its processor",
                copies_processor=True,
            )
        }

    def transformers_usage(self, out: Path) -> list[str]:
        """How to load a folder written by ``export_to_transformers``: its Auto class, and
        the pipeline of the recipe's task when transformers has one."""
        config = json.loads((out / "config.json").read_text())
        architecture = config.get("architectures", ["?"])[0]
        lines = [
            f"exported to {out} for transformers' {architecture}; load it with",
            f'  transformers.{self.auto_class}.from_pretrained("{out}")',
        ]
        task = PIPELINE_TASKS.get(self.auto_class)
        if task is not None:
            lines.append(f'  transformers.pipeline("{task}", model="{out}")')
        return lines


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: decay matrices (linear and embedding
    weights), never norms or biases.

    A parameter with fewer than two dimensions is a bias or a norm scale; shrinking those
    toward zero only hurts. Tied parameters appear once; frozen ones (``requires_grad=False``,
    such as a LoRA base model) not at all.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def example_counts(options: argparse.Namespace, flags: dict[str, str]) -> dict[str, int]:
    """How many examples to make, by preset option: ``flags`` maps a flag (``"--num-train-pairs"``,
    read as ``options.num_train_pairs``) to the preset option it overrides (``"train_pairs"``);
    a flag left out (None) keeps the preset's number, and one under 1 is refused, naming it."""
    counts = {}
    for flag, preset_option in flags.items():
        value = getattr(options, flag[2:].replace("-", "_"))
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
        counts[preset_option] = value or getattr(options, preset_option)
    return counts


def installed_recipes() -> dict[str, Callable[[], Recipe]]:
    """Recipe factories by name, from the ``scratchformers.recipes`` entry points."""
    return {entry.name: entry.load for entry in entry_points(group=ENTRY_POINT_GROUP)}


def load_recipe(name: str) -> Recipe:
    """The installed recipe ``name``, or a ``ValueError`` listing the installed ones."""
    recipes = installed_recipes()
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise ValueError(
            f"no recipe named {name!r} is installed (installed: {known}); recipes come with "
            "the model packages' [train] extra, e.g. pip install 'scratchformers-basicformer[train]'"
        )
    recipe = recipes[name]()
    return recipe() if isinstance(recipe, type) else recipe
