"""The lora training recipe: a pretrained BERT fine-tuned as a text classifier with LoRA, or
in full for comparison.

    scratchformers train lora [--preset tiny] [--init-from DIR] [--rank 8] [--full] [...]
    scratchformers train lora --init-from bert-base-uncased --dataset reviews.csv
    accelerate launch -m scratchformers.lora.train [...]

The base model (``--init-from``, or its other name ``--base``) is a bert-mlm run's folder, a
transformers BERT folder or a Hub id (``bert-base-uncased``); by default
``outputs/bert-mlm-<preset>``, pretrained first with the bert-mlm recipe when absent. It is
loaded as ``scratchformers.bert_mlm.BertForSequenceClassification`` with a label per class of
the data, with its own tokenizer: the classifier starts fresh (and so does the pooler, when the
checkpoint has none, as a masked LM's has not) unless the checkpoint's labels are the data's.

The data are generated product reviews by default, whose label (negative, neutral, positive)
follows from how their clauses compose (:mod:`scratchformers.training.reviews`); or the user's
texts (``--dataset``: a ``.csv``/``.jsonl``/``.parquet`` file or a Hub dataset, read by
:mod:`scratchformers.lora.classification_data`, with ``--text-column`` and
``--label-column``; labels as strings or integers, whose names become ``config.id2label``).
LoRA layers (:func:`scratchformers.lora.inject`) go on the attention projections; the
classifier (and a fresh pooler) trains in full beside them.

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
    ExportFormat,
    ModelFlag,
    Preset,
    Recipe,
    RecipeData,
    example_counts,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from scratchformers.lora.classification_data import LabelledTexts
    from scratchformers.training.settings import TrainingSettings

CONFUSION_MATRIX_FILE = "confusion_matrix.png"
SAMPLE_TEXTS = 6  # held-out texts of the user's data shown with the model's answers at the end
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


def _label_order(config: dict[str, Any]) -> list[str] | None:
    """The label names of a checkpoint's config.json in id order, or None when it names none
    of its own (transformers' ``LABEL_<i>`` defaults, or a masked LM's absent ``id2label``)."""
    id2label = config.get("id2label") or {}
    names = [id2label[key] for key in sorted(id2label, key=int)]
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def comma_list(value: str) -> str:
    """A flag's comma-separated names, checked and written without spaces."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"takes module names separated by commas, got {value!r}")
    return ",".join(names)


class LoraRecipe(Recipe):
    """Fine-tuning of a pretrained BERT as a text classifier, on the generated reviews or the
    user's texts: LoRA by default, every parameter with ``--full``."""

    name = "lora"
    description = (
        "Fine-tune a pretrained BERT (a bert-mlm run, or a transformers BERT such as "
        "bert-base-uncased) as a text classifier with LoRA, or in full with --full: on "
        "generated reviews by default, or on your labelled texts (--dataset)."
    )
    dataset_formats = (
        "labelled texts: a .csv, .jsonl or .parquet file, or a Hugging Face dataset id (or a "
        "local folder of such files), with --text-column and --label-column; labels may be "
        "strings or integers (default: generated product reviews, offline)"
    )
    auto_class = "AutoModelForSequenceClassification"
    pipeline_tag = "text-classification"
    item_unit = "reviews"
    trained_from_scratch = False
    init_from_aliases = ("--base",)
    init_from_formats = (
        "the pretrained BERT to fine-tune, with its tokenizer: a bert-mlm run's folder, a "
        "transformers BERT folder or Hub id (bert-base-uncased) (default: "
        "outputs/bert-mlm-<preset>, pretrained first with the bert-mlm recipe if absent); "
        "--base is the same flag"
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
        data = parser.add_argument_group("your texts (with --dataset)")
        data.add_argument(
            "--text-column",
            default="text",
            metavar="NAME",
            help="the column of the texts to classify (default: text)",
        )
        data.add_argument(
            "--label-column",
            default="label",
            metavar="NAME",
            help="the column of their labels, strings or integers; their names become the "
            "model's id2label (default: label)",
        )
        data = parser.add_argument_group("generated reviews (without --dataset)")
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
        """The texts (generated reviews, or ``--dataset``'s, checked before any work), the base
        model (``--init-from``, pretrained first when the default is absent) and its
        tokenizer; every text tokenized, every label an id."""
        import datasets
        from transformers import DataCollatorWithPadding

        from scratchformers.lora.finetune import base_config, prepare_base
        from scratchformers.training.data import DataError, load_tokenizer

        options = settings.options
        self.user_data = options.dataset is not None
        if not self.user_data and options.eval_dataset:
            raise DataError("--eval-dataset needs --dataset: the held-out texts of which data?")
        # The user's rows are read and checked first: a bad file stops the run before a base
        # model is fetched or pretrained.
        texts = self._read_texts(settings)
        self.identity = self.data_identity(settings, texts)
        tokenizer_source = options.tokenizer
        if tokenizer_source is None:  # training: the base model's own tokenizer
            self.compared = self.comparison(settings)  # checked before any work
            self.base = prepare_base(options.init_from, settings.preset)
            self.base_source = str(options.init_from or self.base)
            tokenizer_source = self.base
        # `scratchformers eval` hands over the trained folder as the tokenizer: its config, as
        # the base's when training, says the label order and the positions.
        config = base_config(tokenizer_source)
        texts.ordered_as(_label_order(config))
        self.label_names = list(texts.names)
        tokenizer = load_tokenizer(
            tokenizer_source, required=("cls_token", "sep_token", "pad_token")
        )
        positions = config.get("max_position_embeddings")
        if positions:  # texts longer than the model's positions are cut to fit them
            tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
        train = datasets.Dataset.from_dict(
            {"text": texts.train_texts, "label": texts.label_ids(texts.train_labels)}
        )
        held_out = datasets.Dataset.from_dict(
            {"text": texts.held_out_texts, "label": texts.label_ids(texts.held_out_labels)}
        )
        self.most_frequent_class = Counter(train["label"]).most_common(1)[0][0]
        self.eval_texts: list[str] = texts.held_out_texts

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            return tokenizer(batch["text"], truncation=True)

        train = train.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True)
        held_out = held_out.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True)
        return RecipeData(
            train=train,
            eval=held_out,
            collate=DataCollatorWithPadding(tokenizer, return_tensors="pt"),
            processor=tokenizer,
            description=(
                f"{self._data_description(texts)}; the tokenizer of the base model "
                f"({getattr(self, 'base_source', tokenizer_source)}), {len(tokenizer):,} tokens"
            ),
        )

    def _read_texts(self, settings: TrainingSettings) -> LabelledTexts:
        """``--dataset``'s labelled texts, or by default the generated reviews (whose
        structures the report's accuracy by structure needs)."""
        from scratchformers.lora.classification_data import LabelledTexts, read_labelled_texts
        from scratchformers.training.console import status
        from scratchformers.training.reviews import SENTIMENTS, reviews_dataset

        if self.user_data:
            self.eval_structures: list[str] = []
            return read_labelled_texts(settings.options)
        counts = self.review_counts(settings)
        status(f"writing {counts['train']:,} + {counts['eval']:,} generated reviews")
        train = reviews_dataset(counts["train"], seed=settings.seed)
        held_out = reviews_dataset(
            counts["eval"], seed=f"held-out {settings.seed}", split="held-out"
        )
        self.eval_structures = held_out["structure"]
        return LabelledTexts(
            train_texts=train["text"],
            train_labels=[SENTIMENTS[label] for label in train["label"]],
            held_out_texts=held_out["text"],
            held_out_labels=[SENTIMENTS[label] for label in held_out["label"]],
            names=list(SENTIMENTS),
            origin="generated product reviews (scratchformers.training.reviews, offline)",
        )

    def _data_description(self, texts: LabelledTexts) -> str:
        """What the data was, for the model card."""
        from scratchformers.training.reviews import SENTIMENTS

        if self.user_data:
            return texts.describe()
        return (
            f"generated product reviews (scratchformers.training.reviews, offline): "
            f"{len(texts.train_texts):,} training and {len(texts.held_out_texts):,} held-out "
            f"reviews of one or two clauses, labelled {', '.join(SENTIMENTS)} by how the "
            "clauses compose (negation, intensifiers, 'and', 'but', 'although')"
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
        """The base BERT with a classifier for the data's labels, and LoRA on it unless
        ``--full``. The classifier starts fresh when the labels are not the checkpoint's (the
        run says so); the pooler too when the checkpoint has none, as a masked LM's has not;
        any other weight the checkpoint lacks stops the run, naming it."""
        from scratchformers import lora
        from scratchformers.bert_mlm import BertForSequenceClassification
        from scratchformers.lora.finetune import has_pooler, prepare_base
        from scratchformers.training.console import status
        from scratchformers.training.pretrained import load_pretrained

        options = settings.options
        self.settings = settings
        self.full = bool(options.full)
        if not hasattr(self, "base"):  # build_data found it, unless it was given a tokenizer
            self.compared = self.comparison(settings)
            self.base = prepare_base(options.init_from, settings.preset)
            self.base_source = str(options.init_from or self.base)
        names = self.label_names
        heads = ["classifier"] if has_pooler(self.base) else ["classifier", "bert.pooler"]
        pretrained = load_pretrained(
            BertForSequenceClassification,
            str(self.base),
            flag="--init-from",
            new_heads=heads,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: index for index, name in enumerate(names)},
        )
        model = pretrained.model
        if self.full:
            status("full fine-tuning: every parameter trains (the LoRA flags do not apply)")
            if settings.lr > FULL_LR:
                status(
                    f"note: --lr {settings.lr:g} is a LoRA rate; full fine-tuning learns best "
                    f"near --lr {FULL_LR:g} here"
                )
            self.lora_config = None
            return model
        # The classifier trains in full beside the adapter (a fresh one must; one the
        # checkpoint had for these labels carries on). So does a fresh pooler: the adapter
        # must carry it, or it would only work on top of the one random pooler it trained with.
        fresh_pooler = any(name.startswith("bert.pooler.") for name in pretrained.fresh)
        self.lora_config = lora.LoraConfig(
            r=options.r,
            lora_alpha=options.lora_alpha,
            target_modules=options.target_modules.split(","),
            lora_dropout=options.lora_dropout,
            modules_to_save=["classifier", *(["pooler"] if fresh_pooler else [])],
            task_type="SEQ_CLS",
            base_model_name_or_path=self.base_source,
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
        check_comparable(other, folder, mode, self.identity)
        return folder, other

    @property
    def mode(self) -> str:
        """``"full"`` for full fine-tuning, else ``"lora"``."""
        return "full" if self.full else "lora"

    def data_identity(self, settings: TrainingSettings, texts: LabelledTexts) -> dict[str, Any]:
        """What two runs share when they saw the same texts: the files (None for the
        generated reviews), the training and held-out counts, and the seed."""
        options = settings.options
        return {
            "dataset": options.dataset,
            "eval_dataset": options.eval_dataset,
            "train_reviews": len(texts.train_texts),
            "held_out_reviews": len(texts.held_out_texts),
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
        """The model's answers, with the right ones: to reviews that only composition decides
        (the generated data), or to the first held-out texts (the user's)."""
        import torch

        from scratchformers.training.reviews import Clause, Review

        if self.user_data:
            shown = [
                (text, self.label_names[label])
                for text, label in zip(
                    self.eval_texts[:SAMPLE_TEXTS], data.eval["label"][:SAMPLE_TEXTS], strict=True
                )
            ]
        else:
            reviews = [
                Review(Clause(**first), structure, Clause(**second) if second else None)
                for first, structure, second in SAMPLE_REVIEWS
            ]
            shown = [(review.text, review.sentiment) for review in reviews]
        tokenizer = data.processor
        batch = tokenizer(
            [text for text, _ in shown], return_tensors="pt", padding=True, truncation=True
        )
        with torch.no_grad():
            predicted = model(**batch.to(model.device)).logits.argmax(-1).tolist()
        return [
            f"{text[:100]} -> {self.label_names[label]} (right: {right})"
            for (text, right), label in zip(shown, predicted, strict=True)
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
        from scratchformers.training.vision import confusion_counts

        predictions = evaluation.results.gathered["predictions"].tolist()
        labels = evaluation.results.gathered["labels"].tolist()
        files: dict[str, Path] = {}
        names = self.label_names
        counts = confusion_counts(labels, predictions, len(names))
        correct = sum(counts[index][index] for index in range(len(names)))
        files["confusion matrix"] = output_dir / CONFUSION_MATRIX_FILE
        plot_confusion_matrix(
            counts,
            names,
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
            "base": self.base_source,
            "accuracy": correct / len(labels),
            "baseline_accuracy": sum(label == self.most_frequent_class for label in labels)
            / len(labels),
            "accuracy_by_structure": self._accuracy_by_structure(predictions, labels),
            **self.identity,
            "labels": names,
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

    def export_formats(self) -> dict[str, ExportFormat]:
        """transformers' BERT classifier, and ONNX: ``model.onnx``, ``input_ids``,
        ``attention_mask``, ``token_type_ids`` -> class ``logits`` (the bert-mlm recipe's
        graph, which takes either head)."""
        from scratchformers.recipes.bert_mlm import bert_onnx_format

        return {**super().export_formats(), "onnx": bert_onnx_format()}
