"""The lora training recipe: a pretrained BERT fine-tuned as a review classifier with LoRA, or
in full for comparison.

    scratchformers train lora [--preset tiny] [--base DIR] [--rank 8] [--full] [...]
    accelerate launch -m scratchformers.lora.train [...]

The base model is a bert-mlm run's folder (``--base``; by default ``outputs/bert-mlm-<preset>``,
pretrained first with the bert-mlm recipe when absent), loaded as
``scratchformers.bert_mlm.BertForSequenceClassification`` with three labels, with its tokenizer.
The data are generated product reviews whose label (negative, neutral, positive) follows from
how their clauses compose (:mod:`scratchformers.training.reviews`). LoRA layers
(:func:`scratchformers.lora.inject`) go on the attention projections; the classifier (and the
pooler, when the base checkpoint has none, as a masked LM's has not) trains in full beside them.

At the end the folder holds the model with the adapter merged (``save_pretrained``: it loads
with ``BertForSequenceClassification.from_pretrained`` and ``scratchformers eval``), the adapter
alone in peft's format in ``adapter/``, a confusion matrix, and ``finetune.json``: held-out
accuracy, the majority-class baseline, trainable parameters, and the adapter's size on disk
against the full checkpoint's, beside a run of the other kind with ``--compare-with``. This
module is what ``--help`` imports, so torch and the packages come in inside the hooks.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scratchformers.training.recipe import (
    EvalResults,
    Evaluation,
    ModelFlag,
    Preset,
    Recipe,
    RecipeData,
    example_counts,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from scratchformers.training.settings import TrainingSettings

CONFUSION_MATRIX_FILE = "confusion_matrix.png"
FULL_LR = 1e-3  # where full fine-tuning of the tiny base learns best (LoRA's preset: 3e-3)
# Reviews whose labels only composition decides, shown with the model's answers at the end:
# (first clause, structure, second clause), each clause as Clause's keyword arguments.
SAMPLE_REVIEWS: tuple[tuple[dict[str, str], str, dict[str, str] | None], ...] = (
    ({"aspect": "screen", "adjective": "good"}, "but", {"aspect": "battery", "adjective": "bad"}),
    ({"aspect": "battery", "adjective": "bad"}, "but", {"aspect": "screen", "adjective": "good"}),
    ({"aspect": "camera", "adjective": "good", "negation": "not"}, "single", None),
    ({"aspect": "camera", "adjective": "bad", "negation": "not"}, "single", None),
    (
        {"aspect": "price", "adjective": "great", "intensifier": "very"},
        "and",
        {"aspect": "case", "adjective": "poor"},
    ),
    ({"aspect": "price", "adjective": "great"}, "and", {"aspect": "case", "adjective": "poor"}),
    (
        {"aspect": "sound", "adjective": "great"},
        "although",
        {"aspect": "keyboard", "adjective": "flimsy"},
    ),
)


def comma_list(value: str) -> str:
    """A flag's comma-separated names, checked and written without spaces."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"takes module names separated by commas, got {value!r}")
    return ",".join(names)


class LoraRecipe(Recipe):
    """Fine-tuning of a pretrained BERT on the generated reviews: LoRA by default, every
    parameter with ``--full``."""

    name = "lora"
    description = (
        "Fine-tune a pretrained BERT (a bert-mlm run) as a review classifier with LoRA, or in "
        "full with --full."
    )
    auto_class = "AutoModelForSequenceClassification"
    pipeline_tag = "text-classification"
    item_unit = "reviews"
    trained_from_scratch = False
    init_from_aliases = ("--base",)
    init_from_formats = (
        "the pretrained BERT to fine-tune: a bert-mlm run's folder, with its tokenizer "
        "(default: outputs/bert-mlm-<preset>, pretrained first with the bert-mlm recipe if "
        "absent); --base is the same flag"
    )
    output_files: ClassVar[tuple[str, ...]] = (
        CONFUSION_MATRIX_FILE,
        "finetune.json",
        "adapter",
        "lora_vs_full.png",
    )
    model_flags = {
        "--rank": ModelFlag("r", "rank r of the LoRA matrices A (r x in) and B (out x r)"),
        "--alpha": ModelFlag("lora_alpha", "LoRA alpha: the update is scaled by alpha / r", float),
        "--lora-dropout": ModelFlag("lora_dropout", "dropout on the LoRA path's input", float),
        "--targets": ModelFlag(
            "target_modules",
            "the nn.Linear layers that get LoRA, by name or name suffix, separated by commas",
            comma_list,
        ),
    }
    presets = {
        # 82.5% held-out accuracy at 3e-3 (2e-3: 79.9%; 5e-3: 75.0%, and rank 16 there
        # collapses to one class). Full fine-tuning learns best near 1e-3 (FULL_LR). The
        # small preset is not measured yet.
        "tiny": Preset.scheduled(
            steps=2000,
            batch=32,
            lr=3e-3,
            warmup=50,
            eval_every=250,
            r=8,
            lora_alpha=16.0,
            lora_dropout=0.0,
            target_modules="q_proj,k_proj,v_proj,o_proj",
            train_reviews=16000,
            eval_reviews=1000,
        ),
        "small": Preset.scheduled(
            steps=3000,
            batch=64,
            lr=2e-3,
            warmup=150,
            eval_every=500,
            r=16,
            lora_alpha=32.0,
            lora_dropout=0.05,
            target_modules="q_proj,k_proj,v_proj,o_proj",
            train_reviews=40000,
            eval_reviews=2000,
        ),
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("fine-tuning")
        group.add_argument(
            "--full",
            action="store_true",
            help="fine-tune every parameter instead of a LoRA adapter, for comparison (the "
            "LoRA flags then do not apply)",
        )
        group.add_argument(
            "--compare-with",
            default=None,
            metavar="DIR",
            help="a finished run of the other kind (LoRA or --full) on the same data: "
            "finetune.json and the model card show both side by side",
        )
        data = parser.add_argument_group("data")
        data.add_argument(
            "--num-train-reviews",
            type=int,
            default=None,
            metavar="N",
            help="generated training reviews (default: the preset's)",
        )
        data.add_argument(
            "--num-eval-reviews",
            type=int,
            default=None,
            metavar="N",
            help="generated held-out reviews, none of them a training review (default: the "
            "preset's)",
        )
        # No flag: `scratchformers eval` sets it to the trained folder, whose tokenizer is the
        # base's, so that evaluating needs no base model.
        parser.set_defaults(tokenizer=None)

    # -- data ---------------------------------------------------------------------------------

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        from transformers import DataCollatorWithPadding

        from scratchformers.training.console import status
        from scratchformers.training.data import load_tokenizer
        from scratchformers.training.reviews import SENTIMENTS, reviews_dataset

        options = settings.options
        counts = self.review_counts(settings)
        tokenizer_source = options.tokenizer
        if tokenizer_source is None:  # training: the base model's own tokenizer
            from scratchformers.lora.finetune import prepare_base

            self.compared = self.comparison(settings)  # checked before any work
            self.base = prepare_base(options.init_from, settings.preset)
            tokenizer_source = self.base
        tokenizer = load_tokenizer(
            tokenizer_source, required=("cls_token", "sep_token", "pad_token")
        )
        status(f"writing {counts['train']:,} + {counts['eval']:,} generated reviews")
        train = reviews_dataset(counts["train"], seed=settings.seed)
        held_out = reviews_dataset(
            counts["eval"], seed=f"held-out {settings.seed}", split="held-out"
        )
        self.most_frequent_class = Counter(train["label"]).most_common(1)[0][0]
        self.eval_structures: list[str] = held_out["structure"]

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            return tokenizer(batch["text"], truncation=True)

        columns = ["text", "structure", "score"]
        train = train.map(encode, batched=True, remove_columns=columns, keep_in_memory=True)
        held_out = held_out.map(encode, batched=True, remove_columns=columns, keep_in_memory=True)
        return RecipeData(
            train=train,
            eval=held_out,
            collate=DataCollatorWithPadding(tokenizer, return_tensors="pt"),
            processor=tokenizer,
            description=(
                f"generated product reviews (scratchformers.training.reviews, offline): "
                f"{len(train):,} training and {len(held_out):,} held-out reviews of one or two "
                f"clauses, labelled {', '.join(SENTIMENTS)} by how the clauses compose "
                f"(negation, intensifiers, 'and', 'but', 'although'); the tokenizer of the base "
                f"model ({tokenizer_source}), {len(tokenizer):,} tokens"
            ),
        )

    @staticmethod
    def review_counts(settings: TrainingSettings) -> dict[str, int]:
        """How many training and held-out reviews: the flags', else the preset's."""
        counts = example_counts(
            settings.options,
            {"--num-train-reviews": "train_reviews", "--num-eval-reviews": "eval_reviews"},
        )
        return {"train": counts["train_reviews"], "eval": counts["eval_reviews"]}

    def count_items(self, batch: dict[str, Any]) -> int:
        return batch["input_ids"].shape[0]

    # -- model --------------------------------------------------------------------------------

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> PreTrainedModel:
        from scratchformers import lora
        from scratchformers.bert_mlm import BertForSequenceClassification
        from scratchformers.lora.finetune import prepare_base
        from scratchformers.training.console import status
        from scratchformers.training.reviews import SENTIMENTS

        options = settings.options
        self.settings = settings
        self.full = bool(options.full)
        if not hasattr(self, "base"):  # build_data found it, unless it was given a tokenizer
            self.compared = self.comparison(settings)
            self.base = prepare_base(options.init_from, settings.preset)
        model, loading = BertForSequenceClassification.from_pretrained(
            self.base,
            num_labels=len(SENTIMENTS),
            id2label=dict(enumerate(SENTIMENTS)),
            label2id={name: index for index, name in enumerate(SENTIMENTS)},
            output_loading_info=True,
        )
        if self.full:
            status("full fine-tuning: every parameter trains (the LoRA flags do not apply)")
            if settings.lr > FULL_LR:
                status(
                    f"note: --lr {settings.lr:g} is a LoRA rate; full fine-tuning learns best "
                    f"near --lr {FULL_LR:g} here"
                )
            self.lora_config = None
            return model
        # The classifier is new and trains in full. So does the pooler when the checkpoint has
        # none (a masked LM's has not): it starts fresh, so the adapter must carry it, or the
        # adapter would only work on top of the one random pooler it was trained with.
        fresh_pooler = any(".pooler." in f".{key}" for key in loading["missing_keys"])
        self.lora_config = lora.LoraConfig(
            r=options.r,
            lora_alpha=options.lora_alpha,
            target_modules=options.target_modules.split(","),
            lora_dropout=options.lora_dropout,
            modules_to_save=["classifier", *(["pooler"] if fresh_pooler else [])],
            task_type="SEQ_CLS",
            base_model_name_or_path=str(self.base),
        )
        lora.inject(model, self.lora_config)
        status(lora.summary(model))
        return model

    def comparison(self, settings: TrainingSettings) -> tuple[Path, dict[str, Any]] | None:
        """The ``--compare-with`` folder and its report, checked to be a run of the other kind
        on the same data; None without the flag."""
        from scratchformers.lora.finetune import check_comparable, read_report

        options = settings.options
        if not options.compare_with:
            return None
        folder = Path(options.compare_with)
        other = read_report(folder)
        mode = "full" if options.full else "lora"
        check_comparable(other, folder, mode, self.data_identity(settings))
        return folder, other

    @property
    def mode(self) -> str:
        """``"full"`` for full fine-tuning, else ``"lora"``."""
        return "full" if self.full else "lora"

    def data_identity(self, settings: TrainingSettings) -> dict[str, Any]:
        """What two runs share when they saw the same reviews."""
        counts = self.review_counts(settings)
        return {
            "train_reviews": counts["train"],
            "held_out_reviews": counts["eval"],
            "seed": settings.seed,
        }

    # -- evaluation ---------------------------------------------------------------------------

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        output = model(**batch)
        return {
            "loss": output.loss,
            "predictions": output.logits.argmax(-1),
            "labels": batch["labels"],
        }

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        predictions, labels = results.gathered["predictions"], results.gathered["labels"]
        return {
            "eval_loss": results.means["loss"],
            "accuracy": float((predictions == labels).float().mean()),
            "baseline_accuracy": float((labels == self.most_frequent_class).float().mean()),
        }

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        """The model's answers to reviews that only composition decides, with the right ones."""
        import torch

        from scratchformers.training.reviews import SENTIMENTS, Clause, Review

        reviews = [
            Review(Clause(**first), structure, Clause(**second) if second else None)
            for first, structure, second in SAMPLE_REVIEWS
        ]
        tokenizer = data.processor
        batch = tokenizer([r.text for r in reviews], return_tensors="pt", padding=True)
        with torch.no_grad():
            predicted = model(**batch.to(model.device)).logits.argmax(-1).tolist()
        return [
            f"{review.text} -> {SENTIMENTS[label]} (right: {review.sentiment})"
            for review, label in zip(reviews, predicted, strict=True)
        ]

    # -- the end ------------------------------------------------------------------------------

    def model_to_save(self, model: PreTrainedModel) -> PreTrainedModel:
        """What users load is the plain model with the adapter merged in (a copy: the
        adapter itself is saved from the trained model, in ``finish``)."""
        import copy

        from scratchformers import lora

        return model if self.full else lora.merge_and_unload(copy.deepcopy(model))

    def finish(
        self,
        model: PreTrainedModel,
        data: RecipeData,
        output_dir: Path,
        evaluation: Evaluation,
    ) -> dict[str, Path]:
        """The adapter in ``adapter/``, the confusion matrix, ``finetune.json``, and the
        comparison plot with ``--compare-with``."""
        import json

        from scratchformers import lora
        from scratchformers.lora import finetune
        from scratchformers.training.console import status
        from scratchformers.training.reporting import plot_confusion_matrix
        from scratchformers.training.reviews import SENTIMENTS
        from scratchformers.training.vision import confusion_counts

        predictions = evaluation.results.gathered["predictions"].tolist()
        labels = evaluation.results.gathered["labels"].tolist()
        files: dict[str, Path] = {}
        counts = confusion_counts(labels, predictions, len(SENTIMENTS))
        correct = sum(counts[index][index] for index in range(len(SENTIMENTS)))
        files["confusion matrix"] = output_dir / CONFUSION_MATRIX_FILE
        plot_confusion_matrix(
            counts,
            SENTIMENTS,
            files["confusion matrix"],
            f"{self.name} ({self.mode}): {correct}/{len(labels)} held-out reviews right "
            f"({correct / len(labels):.1%})",
        )
        trainable, total = lora.trainable_parameters(model)
        adapter_bytes = None
        if not self.full:
            adapter = lora.save_adapter(model, output_dir / finetune.ADAPTER_DIR)
            adapter_bytes = finetune.directory_bytes(adapter)
            files["adapter"] = adapter
        run = json.loads((output_dir / "run.json").read_text())["summary"]
        report: dict[str, Any] = {
            "mode": self.mode,
            "base": str(self.base),
            "accuracy": correct / len(labels),
            "baseline_accuracy": sum(label == self.most_frequent_class for label in labels)
            / len(labels),
            "accuracy_by_structure": self._accuracy_by_structure(predictions, labels),
            **self.data_identity(self.settings),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_fraction": trainable / total,
            "adapter_bytes": adapter_bytes,
            "checkpoint_bytes": (output_dir / "model.safetensors").stat().st_size,
            "lora": None,
            "steps": run["total_steps"],
            "lr": self.settings.lr,
            "wall_time_s": run["total_wall_time_s"],
        }
        if self.lora_config is not None:
            config = self.lora_config
            report["lora"] = {
                "r": config.r,
                "lora_alpha": config.lora_alpha,
                "target_modules": config.target_modules,
                "lora_dropout": config.lora_dropout,
                "modules_to_save": config.modules_to_save,
            }
        if self.compared is not None:
            folder, other = self.compared
            report["comparison"] = finetune.side_by_side(report, other, folder)
            files["comparison"] = output_dir / finetune.COMPARISON_PLOT
            finetune.plot_comparison(
                report["comparison"],
                files["comparison"],
                f"{self.name}: LoRA against full fine-tuning",
            )
        files["fine-tuning report"] = finetune.write_report(output_dir, report)
        saved = (
            f"adapter {adapter_bytes:,} bytes against the full checkpoint's "
            f"{report['checkpoint_bytes']:,}"
            if adapter_bytes
            else f"checkpoint {report['checkpoint_bytes']:,} bytes"
        )
        status(
            f"{self.mode}: {report['accuracy']:.1%} held-out accuracy (majority class "
            f"{report['baseline_accuracy']:.1%}); {trainable:,} of {total:,} parameters "
            f"trained ({report['trainable_fraction']:.2%}); {saved}"
        )
        return files

    def card_sections(self, output_dir: Path, evaluation: Evaluation) -> list[str]:
        """The fine-tuning section of the model card, from the report ``finish`` wrote."""
        from scratchformers.lora.finetune import read_report, report_lines

        return report_lines(read_report(output_dir))

    def _accuracy_by_structure(self, predictions: list[int], labels: list[int]) -> dict[str, float]:
        """Held-out accuracy per structure (single, and, but, ...), in held-out order: the
        evaluation keeps the first whole batches of the held-out set."""
        from scratchformers.training.reviews import STRUCTURES

        right: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for structure, predicted, label in zip(
            self.eval_structures, predictions, labels, strict=False
        ):
            seen[structure] += 1
            right[structure] += predicted == label
        return {name: right[name] / seen[name] for name in STRUCTURES if seen[name]}

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``BertForSequenceClassification``, with the same outputs."""
        from scratchformers.bert_mlm import export_to_transformers

        return export_to_transformers(model, out_dir)
