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
        "a local text file or folder, or a Hugging Face dataset id (needs network); default: "
        "an offline corpus that ships with Python"
    )
    tokenizer_name: ClassVar[str] = "a tokenizer"  # for the data description
    # The special tokens the blocks and batches need: a --tokenizer without one is refused.
    required_tokens: ClassVar[tuple[str, ...]] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        data = parser.add_argument_group("text data")
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

        options = settings.options
        dataset = options.dataset
        source = dataset or "pydoc topics and standard-library docstrings (offline default)"
        status(f"reading the text: {source}")
        texts = load_texts(dataset, options.text_column)
        train_texts, eval_texts = split_train_eval(texts)
        if options.tokenizer:
            tokenizer = load_tokenizer(options.tokenizer, self.required_tokens)
            # A trained model's tokenizer says its context length (set below): the corpus is
            # read in longer texts than that, which would warn of indexing errors.
            tokenizer.model_max_length = int(1e30)
            tokenizer_description = f"the tokenizer of {options.tokenizer}"
        else:
            tokenizer = self.train_tokenizer(train_texts, options.vocab_size)
            tokenizer_description = self.tokenizer_name
        block_size = options.block_size
        status(f"cutting the text into blocks of {block_size} tokens")
        train = self.blocks(train_texts, tokenizer, block_size)
        held_out = self.blocks(eval_texts, tokenizer, block_size)
        if "max_eval_blocks" in options:
            held_out = held_out.select(range(min(len(held_out), options.max_eval_blocks)))
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

        collator = MaskingCollator(tokenizer, settings.options.mask_probability)
        # The baseline predicts the most frequent (non-special) token of the training blocks.
        special = set(tokenizer.all_special_ids)
        counts = Counter(
            token for block in train["input_ids"] for token in block if token not in special
        )
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
