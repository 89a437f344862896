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
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .console import status

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
        cls, steps: int, batch: int, lr: float, warmup: int, every: int, **model: Any
    ) -> Preset:
        """A preset from the usual schedule: ``steps`` optimizer steps of ``batch`` examples,
        peak ``lr`` after ``warmup`` steps, an evaluation every ``every`` steps, a checkpoint
        every two evaluations and five logs per evaluation; ``model`` as given."""
        training = {
            "max_steps": steps,
            "batch_size": batch,
            "lr": lr,
            "warmup_steps": warmup,
            "eval_every": every,
            "save_every": 2 * every,
            "log_every": max(1, every // 5),
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
    batches and processes. ``gathered`` holds each per-example output (a tensor whose first
    dimension is the batch, or a list such as decoded strings) gathered across the processes
    with ``accelerator.gather_for_metrics`` and joined over the batches, in held-out order.
    """

    means: dict[str, float]
    gathered: dict[str, torch.Tensor | list[Any]]


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

    def compute_loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The scalar loss of one batch (this process's share of it); the model's own by
        default. A loss that needs every process's examples gathers them with
        :func:`scratchformers.training.gather_with_gradients`."""
        return model(**batch).loss

    def count_items(self, batch: dict[str, Any]) -> int:
        """How many ``item_unit`` this process's share of a batch holds, for the throughput:
        the examples, by default."""
        return len(next(iter(batch.values())))

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """What to keep from one held-out batch: 0-dim tensors (batch means, averaged into
        ``EvalResults.means``) and per-example tensors or lists (predictions, labels, decoded
        text, gathered into ``EvalResults.gathered``). Per-example tensors must have the same
        shape on every process (pad them). Runs under ``torch.no_grad()``. By default only
        the loss of ``compute_loss``."""
        return {"loss": self.compute_loss(model, batch)}

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        """The metrics of one evaluation, from everything ``eval_step`` kept; ``eval_loss``
        is plotted against the training loss."""
        return {"eval_loss": results.means["loss"]}

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        """A few outputs to print at the end of training (none by default)."""
        return []

    def finish(self, model: PreTrainedModel, data: RecipeData, output_dir: Path) -> dict[str, Path]:
        """Write the recipe's own files about the trained model into ``output_dir`` (a plot,
        say), at the end of training, on the main process, after the final evaluation; name
        them in ``output_files``. Returns them by what they show (``{"confusion matrix":
        path}``): the run prints each path beside the loss curve's, and the model card shows
        the PNGs. None by default."""
        return {}

    def card_sections(self, output_dir: Path) -> list[str]:
        """Markdown lines for the model card, shown after its results (a table of the
        recipe's own figures, say); called on the main process after ``finish``. None by
        default."""
        return []

    def load_model(self, model_dir: Path, settings: TrainingSettings) -> PreTrainedModel:
        """The trained model saved in ``model_dir`` by a run with ``settings``, for the
        commands that use it: ``auto_class.from_pretrained`` once the package its
        config.json's model_type names is imported. A recipe whose hooks need state that
        ``build_model`` sets up (a setting its loss reads) sets it up here too."""
        from .modeldir import load_pretrained

        return load_pretrained(model_dir, self.auto_class)

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """Write ``model`` into ``out_dir`` as the transformers class it mirrors (config and
        weights; ``scratchformers export`` adds the processor). By default a recipe's models
        mirror none, and this raises a ``ValueError`` saying so."""
        raise ValueError(
            f"the {self.name} recipe's models mirror no transformers class, so there is "
            "nothing to export them to; load the folder itself with from_pretrained"
        )


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


class TextRecipe(Recipe):
    """A language model on a text corpus (``--dataset``, ``--text-column``, ``--tokenizer``): a
    tokenizer trained on the training split (or a saved one), fixed-length blocks, throughput
    in tokens. :class:`CausalLMRecipe` and :class:`MaskedLMRecipe` say which tokenizer, which
    blocks and how to batch them."""

    item_unit: ClassVar[str] = "tokens"
    model_flags: ClassVar[dict[str, ModelFlag]] = {
        "--block-size": ModelFlag(
            "block_size", "tokens per training block, which is the model's context length"
        ),
        "--vocab-size": ModelFlag(
            "vocab_size", "tokens in the vocabulary of the tokenizer trained on the data"
        ),
    }
    tokenizer_name: ClassVar[str] = "a tokenizer"  # for the data description
    # The special tokens the blocks and batches need: a --tokenizer without one is refused.
    required_tokens: ClassVar[tuple[str, ...]] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        data = parser.add_argument_group("data")
        data.add_argument(
            "--dataset",
            default=None,
            help="a local text file or folder, or a Hugging Face dataset id (needs network); "
            "default: an offline corpus that ships with Python",
        )
        data.add_argument(
            "--text-column",
            default="text",
            help="the text column of a Hugging Face dataset (default: text)",
        )
        data.add_argument(
            "--tokenizer",
            default=None,
            help="a saved tokenizer to reuse instead of training one: a folder written by "
            "save_pretrained, such as a trained model's (then --vocab-size does not apply)",
        )

    def train_tokenizer(self, texts: list[str], vocab_size: int) -> Any:
        """A tokenizer trained on the training texts."""
        raise NotImplementedError

    def blocks(self, texts: list[str], tokenizer: Any, block_size: int) -> SizedDataset:
        """The texts as examples of ``block_size`` tokens."""
        raise NotImplementedError

    def batching(
        self,
        settings: TrainingSettings,
        train: SizedDataset,
        held_out: SizedDataset,
        tokenizer: Any,
    ) -> tuple[SizedDataset, SizedDataset, Callable[[list[Any]], dict[str, Any]]]:
        """The training and held-out sets as the loop will batch them, and the collate."""
        raise NotImplementedError

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        from .data import load_texts, load_tokenizer, split_train_eval

        options, recipe_options = settings.model, settings.recipe_options
        dataset = recipe_options["dataset"]
        source = dataset or "pydoc topics and standard-library docstrings (offline default)"
        status(f"reading the text: {source}")
        texts = load_texts(dataset, recipe_options["text_column"])
        train_texts, eval_texts = split_train_eval(texts)
        if recipe_options.get("tokenizer"):
            tokenizer = load_tokenizer(recipe_options["tokenizer"], self.required_tokens)
            # A trained model's tokenizer says its context length (set below): the corpus is
            # read in longer texts than that, which would warn of indexing errors.
            tokenizer.model_max_length = int(1e30)
            tokenizer_description = f"the tokenizer of {recipe_options['tokenizer']}"
        else:
            tokenizer = self.train_tokenizer(train_texts, options["vocab_size"])
            tokenizer_description = self.tokenizer_name
        block_size = options["block_size"]
        status(f"cutting the text into blocks of {block_size} tokens")
        train = self.blocks(train_texts, tokenizer, block_size)
        held_out = self.blocks(eval_texts, tokenizer, block_size)
        if "max_eval_blocks" in options:
            held_out = held_out.select(range(min(len(held_out), options["max_eval_blocks"])))
        # Saved with the model, so that pipelines and generate() know its context length (set
        # after the corpus is cut into blocks, which reads longer texts than the model does).
        tokenizer.model_max_length = block_size
        train, held_out, collate = self.batching(settings, train, held_out, tokenizer)
        return RecipeData(
            train=train,
            eval=held_out,
            collate=collate,
            processor=tokenizer,
            description=(
                f"{source}: {len(train):,} training and {len(held_out):,} held-out blocks of "
                f"{block_size} tokens, {tokenizer_description} with {len(tokenizer):,} tokens"
            ),
        )

    def count_items(self, batch: dict[str, Any]) -> int:
        return batch["input_ids"].numel()


class CausalLMRecipe(TextRecipe):
    """A causal language model on a text corpus: byte-level BPE, blocks that end each document
    with ``</s>``, and the eval metric perplexity. Model packages subclass it and write
    ``build_model``."""

    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    pipeline_tag: ClassVar[str | None] = "text-generation"
    tokenizer_name: ClassVar[str] = "byte-level BPE"
    required_tokens: ClassVar[tuple[str, ...]] = ("eos_token",)

    sample_prompts: ClassVar[tuple[str, ...]] = (
        "The return statement",
        "A list is",
        "This module provides",
    )

    def train_tokenizer(self, texts: list[str], vocab_size: int) -> Any:
        from .data import train_byte_level_bpe

        return train_byte_level_bpe(texts, vocab_size)

    def blocks(self, texts: list[str], tokenizer: Any, block_size: int) -> SizedDataset:
        from .data import causal_lm_blocks

        return causal_lm_blocks(texts, tokenizer, block_size)

    def batching(
        self,
        settings: TrainingSettings,
        train: SizedDataset,
        held_out: SizedDataset,
        tokenizer: Any,
    ) -> tuple[SizedDataset, SizedDataset, Callable[[list[Any]], dict[str, Any]]]:
        from .data import collate_blocks

        return train, held_out, collate_blocks

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        eval_loss = results.means["loss"]
        return {"eval_loss": eval_loss, "perplexity": math.exp(min(eval_loss, 50.0))}

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        import torch

        tokenizer = data.processor
        tokenizer.padding_side = "left"
        batch = tokenizer(list(self.sample_prompts), return_tensors="pt", padding=True)
        batch = batch.to(model.device)
        with torch.no_grad():
            generated = model.generate(
                **batch,
                max_new_tokens=30,
                do_sample=False,
                repetition_penalty=1.3,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.batch_decode(generated, skip_special_tokens=True)


class MaskedLMRecipe(TextRecipe):
    """A masked language model (BERT's pretraining) on a text corpus: WordPiece, blocks of
    ``[CLS] ... [SEP]``, BERT's dynamic masking (``--mask-probability``, 15%), and the metrics
    masked-token accuracy and MLM loss, beside the baseline of always predicting the most
    frequent token. Model packages subclass it and write ``build_model``."""

    auto_class: ClassVar[str] = "AutoModelForMaskedLM"
    pipeline_tag: ClassVar[str | None] = "fill-mask"
    tokenizer_name: ClassVar[str] = "WordPiece"
    required_tokens: ClassVar[tuple[str, ...]] = (
        "mask_token",
        "cls_token",
        "sep_token",
        "pad_token",
    )

    sample_prompts: ClassVar[tuple[str, ...]] = (
        "The return [MASK] leaves the function.",
        "A list is a mutable [MASK].",
        "This module provides [MASK] for working with files.",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--mask-probability",
            type=float,
            default=0.15,
            help="share of the tokens chosen as prediction targets (default: 0.15, BERT's)",
        )

    def train_tokenizer(self, texts: list[str], vocab_size: int) -> Any:
        from .data import train_wordpiece

        return train_wordpiece(texts, vocab_size)

    def blocks(self, texts: list[str], tokenizer: Any, block_size: int) -> SizedDataset:
        from .data import masked_lm_blocks

        return masked_lm_blocks(texts, tokenizer, block_size)

    def batching(
        self,
        settings: TrainingSettings,
        train: SizedDataset,
        held_out: SizedDataset,
        tokenizer: Any,
    ) -> tuple[SizedDataset, SizedDataset, Callable[[list[Any]], dict[str, Any]]]:
        from collections import Counter

        from .data import MaskingCollator

        collator = MaskingCollator(tokenizer, settings.recipe_options["mask_probability"])
        # The baseline predicts the most frequent (non-special) token of the training blocks.
        special = set(tokenizer.all_special_ids)
        counts = Counter(
            token for block in train["input_ids"] for token in block if token not in special
        )
        self.most_frequent_token = counts.most_common(1)[0][0]
        return train, collator.mask_once(held_out, seed=settings.seed), collator

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        output = model(**batch)
        labels = batch["labels"]
        targets = labels != -100
        predictions = output.logits.argmax(-1)
        return {
            "loss": output.loss,
            # Per example, so that the accuracy is over every masked token of the held-out
            # set, however the tokens fall into batches and processes.
            "targets": targets.sum(-1),
            "correct": ((predictions == labels) & targets).sum(-1),
            "baseline_correct": ((labels == self.most_frequent_token) & targets).sum(-1),
        }

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        targets = float(results.gathered["targets"].sum())
        return {
            "eval_loss": results.means["loss"],
            "masked_accuracy": float(results.gathered["correct"].sum()) / targets,
            "baseline_accuracy": float(results.gathered["baseline_correct"].sum()) / targets,
        }

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        """Each prompt with its ``[MASK]`` filled by the model's top token."""
        import torch

        tokenizer = data.processor
        filled = []
        for prompt in self.sample_prompts:
            prompt = prompt.replace("[MASK]", tokenizer.mask_token)
            batch = tokenizer(prompt, return_tensors="pt").to(model.device)
            with torch.no_grad():
                logits = model(**batch).logits[0]
            ids = batch["input_ids"][0].clone()
            masked = ids == tokenizer.mask_token_id
            ids[masked] = logits[masked].argmax(-1)
            filled.append(tokenizer.decode(ids, skip_special_tokens=True))
        return filled


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
