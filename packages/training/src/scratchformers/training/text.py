"""The text recipes: a language model on a corpus (a file, a folder, or a Hugging Face dataset),
with a tokenizer trained on its training split or reused, cut into fixed-length blocks.
:class:`CausalLMRecipe` (byte-level BPE, perplexity, greedy samples) and
:class:`MaskedLMRecipe` (WordPiece, BERT's dynamic masking, masked-token accuracy) leave a
model package only ``build_model`` to write. The image recipes are in
:mod:`scratchformers.training.vision`.

Like :mod:`scratchformers.training.recipe`, this module is what ``--help`` imports: torch,
transformers and the data libraries are imported inside the hooks, where the work starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .console import status
from .recipe import EvalResults, ModelFlag, Recipe, RecipeData, SizedDataset

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .settings import TrainingSettings


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
    dataset_formats: ClassVar[str] = (
        "a .txt file (one document) or a folder of .txt/.md/.rst files (one per file); a "
        ".jsonl/.json/.csv/.tsv/.parquet file or folder (one document per row, its "
        "--text-column); or a Hugging Face dataset id; default: an offline corpus that ships "
        "with Python"
    )
    tokenizer_name: ClassVar[str] = "a tokenizer"  # for the data description
    # The special tokens the blocks and batches need: a --tokenizer without one is refused.
    required_tokens: ClassVar[tuple[str, ...]] = ()
    # Whether blocks are [CLS] ... [SEP] (masked LM) rather than documents ending with </s>.
    masked_blocks: ClassVar[bool] = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        data = parser.add_argument_group("text data")
        data.add_argument(
            "--text-column",
            default="text",
            help="the text column of a table file or Hugging Face dataset (default: text)",
        )
        data.add_argument(
            "--tokenizer",
            default=None,
            help="a saved tokenizer to reuse instead of training one: a folder written by "
            "save_pretrained, such as a trained model's (then --vocab-size does not apply; "
            "default with --init-from: the checkpoint's own)",
        )
        data.add_argument(
            "--streaming",
            action="store_true",
            help="tokenize --dataset as training reads it, for corpora larger than memory; "
            "each process reads its own share, in file order (no shuffle)",
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
        options = settings.options
        # The checkpoint first: a missing or unusable one stops the run before any data is read.
        start = self._checkpoint(settings) if options.init_from else None
        block_size = options.block_size
        if start is not None:
            block_size = self._block_size_for(settings, start["max_positions"])
        # settings.model keeps the preset's block size: it is the run's identity, which a
        # --resume compares; the data description says the size the blocks really have.
        if options.streaming:
            return self._build_streaming_data(settings, start, block_size)
        from .data import load_texts, reads_rows, split_train_eval

        dataset = options.dataset
        source = dataset or "pydoc topics and standard-library docstrings (offline default)"
        status(f"reading the text: {source}")
        texts = load_texts(dataset, options.text_column)
        if options.eval_dataset:
            train_texts = texts
            eval_texts = load_texts(options.eval_dataset, options.text_column, "--eval-dataset")
            held_out_from = options.eval_dataset
        else:
            train_texts, eval_texts = split_train_eval(texts, options.eval_fraction)
            held_out_from = f"{options.eval_fraction:.0%} of the documents"
        column = f", column {options.text_column!r}" if reads_rows(dataset) else ""
        status(
            f"read {len(texts):,} documents ({sum(map(len, texts)):,} characters{column}): "
            f"{len(train_texts):,} to train on, {len(eval_texts):,} held out ({held_out_from})"
        )
        tokenizer, tokenizer_description = self._tokenizer(settings, start, train_texts)
        status(f"cutting the text into blocks of {block_size} tokens")
        train = self.blocks(train_texts, tokenizer, block_size)
        held_out = self.blocks(eval_texts, tokenizer, block_size)
        if "max_eval_blocks" in options:
            held_out = held_out.select(range(min(len(held_out), options.max_eval_blocks)))
        # Saved with the model, so that pipelines and generate() know its context length (set
        # after the corpus is cut into blocks, which reads longer texts than the model does).
        tokenizer.model_max_length = block_size
        train, held_out, collate = self.batching(settings, train, held_out, tokenizer)
        started = f", fine-tuned from {options.init_from}" if start else ""
        return RecipeData(
            train=train,
            eval=held_out,
            collate=collate,
            processor=tokenizer,
            description=(
                f"{source}: {len(train):,} training and {len(held_out):,} held-out blocks of "
                f"{block_size} tokens, {tokenizer_description} with {len(tokenizer):,} "
                f"tokens{started}"
            ),
        )

    def _build_streaming_data(
        self, settings: TrainingSettings, start: dict[str, Any] | None, block_size: int
    ) -> RecipeData:
        """``--streaming``: the training blocks tokenized as the loop reads them (a
        :class:`~scratchformers.training.data.StreamingBlocks`), and the held-out blocks (at
        most ``max_eval_blocks``) read into memory from the first held-out documents."""
        from itertools import islice

        import datasets

        from .data import (
            DataError,
            StreamingBlocks,
            held_out_every,
            is_held_out,
            iter_blocks,
            reads_rows,
            stream_documents,
        )

        options = settings.options
        if not options.dataset:
            raise DataError("--streaming reads --dataset as it trains: name the --dataset")
        if start is None and not options.tokenizer:
            raise DataError(
                "--streaming never holds the corpus, so it trains no tokenizer: give --init-from "
                "(its tokenizer) or --tokenizer"
            )
        status(f"streaming the text: {options.dataset}")
        documents = stream_documents(options.dataset, options.text_column)
        every = None
        if options.eval_dataset:
            eval_documents = stream_documents(
                options.eval_dataset, options.text_column, "--eval-dataset"
            )
            held_out_from = options.eval_dataset
        else:
            every = held_out_every(options.eval_fraction)
            eval_documents = documents.filter(
                lambda _, index: is_held_out(index, every), with_indices=True
            )
            held_out_from = f"every {every}th document of {options.dataset}"
        tokenizer, tokenizer_description = self._tokenizer(settings, start, [])
        limit = options.max_eval_blocks if "max_eval_blocks" in options else None
        eval_texts = (row["text"] for row in eval_documents)
        held_out_blocks = list(
            islice(iter_blocks(eval_texts, tokenizer, block_size, masked=self.masked_blocks), limit)
        )
        if not held_out_blocks:
            raise DataError(
                f"the held-out split ({held_out_from}) is empty or holds fewer tokens than one "
                f"block of {block_size}; give more documents, a larger --eval-fraction, or "
                "--eval-dataset"
            )
        held_out = datasets.Dataset.from_dict({"input_ids": held_out_blocks})
        train = StreamingBlocks(
            documents, tokenizer, block_size, masked=self.masked_blocks, held_out_every=every
        )
        column = f", column {options.text_column!r}" if reads_rows(options.dataset) else ""
        status(
            f"streaming {options.dataset}{column}, tokenized as training reads it; "
            f"{len(held_out):,} held-out blocks ({held_out_from})"
        )
        tokenizer.model_max_length = block_size
        train, held_out, collate = self.batching(settings, train, held_out, tokenizer)
        started = f", fine-tuned from {options.init_from}" if start else ""
        return RecipeData(
            train=train,
            eval=held_out,
            collate=collate,
            processor=tokenizer,
            description=(
                f"{options.dataset} (streamed): blocks of {block_size} tokens, "
                f"{len(held_out):,} held out, {tokenizer_description} with "
                f"{len(tokenizer):,} tokens{started}"
            ),
        )

    def _checkpoint(self, settings: TrainingSettings) -> dict[str, Any]:
        """What ``--init-from`` says before its weights load: its folder, config, context
        length and tokenizer file(s); a one-line error naming the flag when it cannot start
        this run, or when a shape flag is given (the shape is the checkpoint's)."""
        from .pretrained import PretrainedError, checkpoint_config, checkpoint_path

        options = settings.options
        preset = self.presets[settings.preset].model
        shape_flags = [
            flag
            for flag, spec in self.model_flags.items()
            if spec.option not in ("block_size", "vocab_size")
            and settings.model.get(spec.option) != preset.get(spec.option)
        ]
        if shape_flags:
            raise PretrainedError(
                f"{', '.join(shape_flags)} {'does' if len(shape_flags) == 1 else 'do'} not "
                f"apply with --init-from: the model's shape is the checkpoint's "
                f"({options.init_from})"
            )
        path = checkpoint_path(options.init_from, "--init-from")
        config = checkpoint_config(path, "--init-from")
        max_positions = next(
            (
                config[key]
                for key in ("n_positions", "max_position_embeddings", "n_ctx")
                if isinstance(config.get(key), int)
            ),
            None,
        )
        return {"path": path, "config": config, "max_positions": max_positions}

    def _block_size_for(self, settings: TrainingSettings, max_positions: int | None) -> int:
        """The block size of a fine-tuning: the preset's, cut to the checkpoint's context
        length; a --block-size beyond that length is refused, naming both."""
        block_size = settings.options.block_size
        if max_positions is None or block_size <= max_positions:
            return block_size
        if block_size != self.presets[settings.preset].model["block_size"]:
            from .pretrained import PretrainedError

            raise PretrainedError(
                f"--block-size {block_size} exceeds the context length of --init-from "
                f"{settings.options.init_from} ({max_positions} positions); give at most "
                f"--block-size {max_positions}"
            )
        status(
            f"blocks of {max_positions} tokens, the context length of "
            f"{settings.options.init_from} (the preset's {block_size} is longer)"
        )
        return max_positions

    def _tokenizer(
        self, settings: TrainingSettings, start: dict[str, Any] | None, train_texts: list[str]
    ) -> tuple[Any, str]:
        """The tokenizer of the run and its description: ``--tokenizer``'s, else the
        checkpoint's, else one trained on ``train_texts``."""
        from .data import check_tokenizer, load_tokenizer
        from .pretrained import PretrainedError, load_checkpoint_processor

        options = settings.options
        if options.tokenizer:
            tokenizer = load_tokenizer(options.tokenizer, self.required_tokens)
            description = f"the tokenizer of {options.tokenizer}"
        elif start is not None:
            tokenizer = load_checkpoint_processor(start["path"], "AutoTokenizer")
            if tokenizer is None:
                raise PretrainedError(
                    f"--init-from {options.init_from} holds no tokenizer (no tokenizer.json, "
                    "tokenizer_config.json or vocabulary file); give the one it was trained "
                    "with as --tokenizer"
                )
            tokenizer = check_tokenizer(tokenizer, self.required_tokens, options.init_from)
            description = f"the tokenizer of {options.init_from}"
            status(f"using the tokenizer of {options.init_from} ({len(tokenizer):,} tokens)")
        else:
            return self.train_tokenizer(train_texts, options.vocab_size), self.tokenizer_name
        if start is not None:
            vocab_size = start["config"].get("vocab_size")
            if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
                raise PretrainedError(
                    f"the tokenizer ({description}) has {len(tokenizer):,} tokens, more than "
                    f"the {vocab_size:,} embeddings of --init-from {options.init_from}"
                )
        # A trained model's tokenizer says its context length (set after the blocks are cut):
        # the corpus is read in longer texts than that, which would warn of indexing errors.
        tokenizer.model_max_length = int(1e30)
        return tokenizer, description

    def pretrained_model(
        self, model_class: type[PreTrainedModel], settings: TrainingSettings
    ) -> Any:
        """``model_class`` loaded from ``--init-from`` (see
        :func:`~scratchformers.training.pretrained.load_pretrained`, which says its format,
        parameter count and fresh heads): a model package's ``build_model`` returns this when
        the flag is given. The model card then says the model was fine-tuned."""
        from .pretrained import load_pretrained

        pretrained = load_pretrained(model_class, settings.options.init_from, flag="--init-from")
        return pretrained.model

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
        # A fine-tuned checkpoint's context may be short: never generate past its positions.
        config = model.config
        positions = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        room = 30 if positions is None else min(30, positions - batch["input_ids"].shape[1])
        if room < 1:
            return []
        with torch.no_grad():
            generated = model.generate(
                **batch,
                max_new_tokens=room,
                do_sample=False,
                repetition_penalty=1.3,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.batch_decode(generated, skip_special_tokens=True)


# Training blocks a streamed masked-LM run counts for its most-frequent-token baseline.
BASELINE_BLOCKS = 1024


class MaskedLMRecipe(TextRecipe):
    """A masked language model (BERT's pretraining) on a text corpus: WordPiece, blocks of
    ``[CLS] ... [SEP]``, BERT's dynamic masking (``--mask-probability``, 15%), and the metrics
    masked-token accuracy and MLM loss, beside the baseline of always predicting the most
    frequent token. Model packages subclass it and write ``build_model``."""

    auto_class: ClassVar[str] = "AutoModelForMaskedLM"
    pipeline_tag: ClassVar[str | None] = "fill-mask"
    tokenizer_name: ClassVar[str] = "WordPiece"
    masked_blocks: ClassVar[bool] = True
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
        from itertools import islice

        from .data import MaskingCollator, StreamingBlocks

        collator = MaskingCollator(tokenizer, settings.options.mask_probability)
        # The baseline predicts the most frequent (non-special) token of the training blocks.
        special = set(tokenizer.all_special_ids)
        if isinstance(train, StreamingBlocks):
            # A streamed corpus is not read ahead: its first blocks stand for it.
            blocks = [example["input_ids"] for example in islice(train, BASELINE_BLOCKS)]
        else:
            blocks = train["input_ids"]
        counts = Counter(token for block in blocks for token in block if token not in special)
        self.most_frequent_token = counts.most_common(1)[0][0]
        return train, collator.mask_once(held_out, seed=settings.seed), collator

    def count_loss_items(self, batch: dict[str, Any]) -> int:
        # The loss is a mean over the masked tokens, and how many a block holds varies.
        return int((batch["labels"] != -100).sum())

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
