"""The encdec training recipe: an encoder-decoder trained from scratch to translate numbers
written in English words into French (or German) words.

    scratchformers train encdec [--preset tiny] [--target-language de] [...]
    accelerate launch -m scratchformers.encdec.train [...]

The data (:mod:`scratchformers.encdec.number_pairs`) is generated offline: numbers below a
million in words, with whole combinations of hundreds and tens held out, so every held-out
number is unseen and has to be composed. One byte-level BPE vocabulary (the training
package's ``train_byte_level_bpe``) is trained on both sides of the training pairs; the saved
tokenizer ends every text with ``</s>``, so ``tokenizer(texts)`` gives the model what it
trained on. Training is teacher forcing: the decoder reads the target shifted right behind
``<s>`` and predicts it, with label smoothing (``--label-smoothing``, 0.1).

Every evaluation decodes the held-out sources greedily with ``generate()`` and scores the
translations with sacreBLEU (corpus ``bleu`` and ``chrf``) and ``exact_match``, beside the
same scores of copying the source (``copy_bleu``, ``copy_exact_match``: what a model that
learnt nothing but to repeat its input would get). At the end ``translations.json`` (the
final figures and every held-out translation) and ``bleu.png`` (BLEU over the steps against
the copy baseline). This module is what ``--help`` imports, so torch and the model package
come in inside the hooks.
"""

from __future__ import annotations

import argparse
import json
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
    from pathlib import Path

    import torch
    from transformers import PreTrainedModel

    from scratchformers.encdec import EncDecForConditionalGeneration
    from scratchformers.training.settings import TrainingSettings

TRANSLATIONS_FILE = "translations.json"
BLEU_PLOT = "bleu.png"
CARD_EXAMPLES = 8  # held-out translations shown in the model card
LANGUAGE_NAMES = {"fr": "French", "de": "German"}
# sacreBLEU's tokenisation per target: German writes a whole number as one word, so word
# n-grams would score each translation all or nothing; its characters show partial credit.
BLEU_TOKENIZE = {"fr": "13a", "de": "char"}


def fraction(value: str) -> float:
    """A flag's value in [0, 1)."""
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return number


def _model(
    d_model: int,
    layers: int,
    heads: int,
    vocab: int,
    train: int,
    held_out: int,
    positions: int = 64,
) -> dict[str, Any]:
    return {
        "d_model": d_model,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "attention_heads": heads,
        "ffn_dim": 4 * d_model,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "train_pairs": train,
        "eval_pairs": held_out,
    }


class PairBatches:
    """Collate tokenized pairs: ``input_ids`` and ``attention_mask`` padded with the pad
    token, ``labels`` padded with -100 (ignored by the loss), and each example's ``index``
    in its split (so that the evaluation finds its source and reference text)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        def pad(rows: list[list[int]], value: int) -> torch.Tensor:
            longest = max(len(row) for row in rows)
            return torch.tensor([row + [value] * (longest - len(row)) for row in rows])

        sources = [example["input_ids"] for example in examples]
        return {
            "input_ids": pad(sources, self.pad_token_id),
            "attention_mask": pad([[1] * len(row) for row in sources], 0),
            "labels": pad([example["labels"] for example in examples], -100),
            "index": torch.tensor([example["index"] for example in examples]),
        }


class EncDecRecipe(Recipe):
    """An encoder-decoder (BART's layout) translating English number words into French or
    German ones, scored by greedy decoding against copying the source."""

    name = "encdec"
    description = (
        "Train an encoder-decoder from scratch to translate numbers in English words into "
        "French (or German) words, scored with BLEU and exact match."
    )
    auto_class = "AutoModelForSeq2SeqLM"
    pipeline_tag = "translation"
    item_unit: ClassVar[str] = "tokens"
    output_files: ClassVar[tuple[str, ...]] = (TRANSLATIONS_FILE, BLEU_PLOT)
    model_flags = {
        "--width": ModelFlag("d_model", "hidden size of both stacks"),
        "--depth": ModelFlag("encoder_layers", "encoder layers"),
        "--decoder-depth": ModelFlag("decoder_layers", "decoder layers"),
        "--heads": ModelFlag("attention_heads", "attention heads of every attention layer"),
        "--ffn-dim": ModelFlag("ffn_dim", "width of the feed-forward blocks"),
        "--vocab-size": ModelFlag(
            "vocab_size", "tokens in the BPE vocabulary trained on both languages"
        ),
        "--max-positions": ModelFlag(
            "max_position_embeddings", "the longest source and target, in tokens"
        ),
    }
    presets = {
        # Held-out BLEU 99.9, exact match 99.8% in about 2 minutes on 2 CPU cores; most of it is
        # learned between steps 150 and 300.
        "tiny": Preset.scheduled(
            steps=600,
            batch=64,
            lr=2e-3,
            warmup=60,
            eval_every=150,
            **_model(128, 2, 4, 384, 20000, 512),
        ),
        "small": Preset.scheduled(
            steps=6000,
            batch=128,
            lr=1e-3,
            warmup=300,
            eval_every=1000,
            **_model(256, 3, 4, 1024, 100000, 2000),
        ),
        # BART-base's shape (768 wide, 6 + 6 layers, 12 heads).
        "base": Preset.scheduled(
            steps=30000,
            batch=256,
            lr=3e-4,
            warmup=1000,
            eval_every=2000,
            **_model(768, 6, 12, 2048, 500000, 5000),
        ),
    }

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        data = parser.add_argument_group("data")
        data.add_argument(
            "--target-language",
            choices=sorted(LANGUAGE_NAMES),
            default="fr",
            help="the language the English number words are translated into (default: fr)",
        )
        data.add_argument(
            "--num-train-pairs",
            type=int,
            default=None,
            metavar="N",
            help="training pairs (default: the preset's)",
        )
        data.add_argument(
            "--num-eval-pairs",
            type=int,
            default=None,
            metavar="N",
            help="held-out pairs, all numbers never trained on (default: the preset's)",
        )
        data.add_argument(
            "--tokenizer",
            default=None,
            help="a saved tokenizer to reuse instead of training one: a folder written by "
            "save_pretrained, such as a trained model's (then --vocab-size does not apply)",
        )
        parser.add_argument(
            "--label-smoothing",
            type=fraction,
            default=0.1,
            metavar="X",
            help="share of each target's probability spread over the whole vocabulary, in "
            "[0, 1) (default: 0.1, the Transformer paper's)",
        )

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        from tokenizers import processors

        from scratchformers.encdec.number_pairs import HELD_OUT_COMBINATIONS, number_pairs
        from scratchformers.training.console import status
        from scratchformers.training.data import load_tokenizer, train_byte_level_bpe

        options = settings.options
        counts = example_counts(
            options, {"--num-train-pairs": "train_pairs", "--num-eval-pairs": "eval_pairs"}
        )
        target = options.target_language
        language = LANGUAGE_NAMES[target]
        status(
            f"writing {counts['train_pairs']:,} + {counts['eval_pairs']:,} numbers in English "
            f"and {language} words"
        )
        train = number_pairs(counts["train_pairs"], target, settings.seed)
        held_out = number_pairs(counts["eval_pairs"], target, settings.seed, held_out=True)
        if options.tokenizer:
            tokenizer = load_tokenizer(options.tokenizer, ("eos_token", "bos_token"))
            tokenizer_description = f"the tokenizer of {options.tokenizer}"
        else:
            status("training the BPE tokenizer on both languages")
            texts = [pair[side] for pair in train for side in ("source", "target")]
            tokenizer = train_byte_level_bpe(texts, options.vocab_size)
            # Every text ends with </s>: the encoder sees where the source stops, and the
            # decoder learns to stop. Saved in tokenizer.json, so a reloaded tokenizer (and
            # translate()) gives the model the inputs it trained on.
            eos = tokenizer.eos_token
            tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
                single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
            )
            tokenizer_description = "one byte-level BPE vocabulary trained on both languages"
        positions = options.max_position_embeddings
        tokenizer.model_max_length = positions
        splits, longest_target = [], 0
        for name, pairs in (("training", train), ("held-out", held_out)):
            sources = tokenizer([pair["source"] for pair in pairs])["input_ids"]
            targets = tokenizer([pair["target"] for pair in pairs])["input_ids"]
            longest = max(len(row) for row in sources + targets)
            if name == "training":
                longest_target = max(len(row) for row in targets)
            if longest > positions:
                raise ValueError(
                    f"a {name} pair is {longest} tokens long, more than --max-positions "
                    f"{positions}; raise --max-positions (or --vocab-size, for fewer tokens)"
                )
            splits.append(
                [
                    {"input_ids": source, "labels": labels, "index": index}
                    for index, (source, labels) in enumerate(zip(sources, targets, strict=True))
                ]
            )
        # What the hooks need beyond the batches: the texts of the held-out pairs by index,
        # and the settings of the loss and the decoding.
        self.tokenizer = tokenizer
        self.target_language = target
        self.eval_pairs = held_out
        self.label_smoothing = options.label_smoothing
        # Greedy decoding stops at </s>, or a little past the longest training target: an
        # untrained model (the first evaluation) never says </s> and would run to the
        # positions' end, for the same score.
        self.max_length = min(positions, longest_target + 8)
        combinations = ", ".join(f"{h}{t}x" for h, t in sorted(HELD_OUT_COMBINATIONS))
        return RecipeData(
            train=splits[0],
            eval=splits[1],
            collate=PairBatches(tokenizer.pad_token_id),
            processor=tokenizer,
            description=(
                f"generated number words (offline default): {len(train):,} training and "
                f"{len(held_out):,} held-out pairs of numbers below a million in English and "
                f'{language} words, such as "{train[0]["source"]}" -> "{train[0]["target"]}"; '
                "the held-out numbers are those with a three-digit group whose hundreds and "
                f"tens digits training never shows together ({combinations}), so none was "
                f"trained on; {tokenizer_description}, {len(tokenizer):,} tokens"
            ),
        )

    def build_model(
        self, settings: TrainingSettings, data: RecipeData
    ) -> EncDecForConditionalGeneration:
        from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration

        options, tokenizer = settings.options, data.processor
        heads = options.attention_heads
        config = EncDecConfig(
            vocab_size=len(tokenizer),
            d_model=options.d_model,
            encoder_layers=options.encoder_layers,
            decoder_layers=options.decoder_layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=options.ffn_dim,
            decoder_ffn_dim=options.ffn_dim,
            max_position_embeddings=options.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            # The decoder starts from <s> and ends with </s>, which every target carries.
            decoder_start_token_id=tokenizer.bos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
        )
        model = EncDecForConditionalGeneration(config)
        # Saved as generation_config.json: greedy, as long as the positions allow, so that
        # translate(model, tokenizer, texts) on the folder decodes as the evaluation does.
        generation = model.generation_config
        generation.decoder_start_token_id = tokenizer.bos_token_id
        generation.bos_token_id = tokenizer.bos_token_id
        generation.eos_token_id = tokenizer.eos_token_id
        generation.pad_token_id = tokenizer.pad_token_id
        generation.max_length = options.max_position_embeddings
        generation.num_beams, generation.do_sample = 1, False
        return model

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], num_items_in_batch: int
    ) -> torch.Tensor:
        """Teacher forcing: the decoder reads the labels shifted right (the model does that
        from ``labels``); the cross entropy with label smoothing over the real target tokens,
        weighed by their share of the step's."""
        share = self.count_loss_items(batch) / num_items_in_batch
        return self._smoothed_cross_entropy(model, batch) * share

    def count_loss_items(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"] != -100).sum())

    def _smoothed_cross_entropy(
        self, model: torch.nn.Module, batch: dict[str, Any]
    ) -> torch.Tensor:
        """The mean label-smoothed cross entropy over the batch's real target tokens."""
        import torch.nn.functional as F

        labels = batch["labels"]
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).logits
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=-100,
            label_smoothing=self.label_smoothing,
        )

    def count_items(self, batch: dict[str, Any]) -> int:
        # Source and target tokens, padding left out.
        return int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())

    def eval_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            do_sample=False,
            num_beams=1,
            max_length=self.max_length,
        )
        return {
            "loss": self._smoothed_cross_entropy(model, batch),
            "translations": self.tokenizer.batch_decode(generated, skip_special_tokens=True),
            "index": batch["index"],
        }

    def eval_metrics(self, results: EvalResults) -> dict[str, float]:
        import sacrebleu

        translated = self.translations(results)
        references = [str(example["target"]) for example in translated]
        tokenize = BLEU_TOKENIZE[self.target_language]

        def scores(hypotheses: list[str]) -> tuple[float, float, float]:
            bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score
            chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
            exact = sum(h == r for h, r in zip(hypotheses, references, strict=True))
            return bleu, chrf, exact / len(references)

        bleu, chrf, exact = scores([example["translation"] for example in translated])
        copy_bleu, copy_chrf, copy_exact = scores([str(e["source"]) for e in translated])
        return {
            "eval_loss": results.means["loss"],
            "bleu": bleu,
            "chrf": chrf,
            "exact_match": exact,
            "copy_bleu": copy_bleu,
            "copy_chrf": copy_chrf,
            "copy_exact_match": copy_exact,
        }

    def translations(self, results: EvalResults) -> list[dict[str, Any]]:
        """Every held-out pair of an evaluation, in held-out order, with the model's
        ``translation`` and whether it is ``correct``."""
        pairs = [self.eval_pairs[int(i)] for i in results.gathered["index"]]
        texts = [text.strip() for text in results.gathered["translations"]]
        return [
            {**pair, "translation": text, "correct": text == pair["target"]}
            for pair, text in zip(pairs, texts, strict=True)
        ]

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``BartForConditionalGeneration``, which has this recipe's layout."""
        from scratchformers.encdec import export_to_transformers

        return export_to_transformers(model, out_dir)

    def load_model(self, model_dir: Path, settings: TrainingSettings) -> PreTrainedModel:
        from transformers import AutoTokenizer

        # The folder's tokenizer decodes the translations (build_data set up the rest).
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return super().load_model(model_dir, settings)

    def finish(
        self,
        model: PreTrainedModel,
        data: RecipeData,
        output_dir: Path,
        evaluation: Evaluation,
    ) -> dict[str, Path]:
        """``translations.json`` (the final figures and every held-out translation) and the
        BLEU curve against the copy baseline."""
        from scratchformers.training.console import status
        from scratchformers.training.reporting import MetricsLog

        metrics, translations = evaluation.metrics, self.translations(evaluation.results)
        report = {
            **metrics,
            "target_language": self.target_language,
            "bleu_tokenize": BLEU_TOKENIZE[self.target_language],
            "eval_pairs": len(translations),
            "translations": translations,
        }
        (output_dir / TRANSLATIONS_FILE).write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        )
        plot_bleu(
            MetricsLog(output_dir).read(),
            output_dir / BLEU_PLOT,
            f"{self.name}: held-out BLEU, English -> {LANGUAGE_NAMES[self.target_language]}",
        )
        status(
            f"held out: BLEU {metrics['bleu']:.1f} (copying the source: "
            f"{metrics['copy_bleu']:.1f}), exact match {metrics['exact_match']:.1%} "
            f"(copying: {metrics['copy_exact_match']:.1%}), chrF {metrics['chrf']:.1f}"
        )
        return {"BLEU over training": output_dir / BLEU_PLOT}

    def card_sections(self, output_dir: Path, evaluation: Evaluation) -> list[str]:
        """The translation section of the model card: the figures against copying the
        source, a few held-out translations, and how to translate with the folder."""
        metrics, language = evaluation.metrics, LANGUAGE_NAMES[self.target_language]
        translations = self.translations(evaluation.results)
        lines = [
            f"## Translation (English -> {language}, held-out numbers)",
            "",
            f"Greedy decoding of {len(translations):,} held-out numbers, none of "
            "them trained on, against copying the source sentence as its translation "
            f"(sacreBLEU, tokenize `{BLEU_TOKENIZE[self.target_language]}`).",
            "",
            "| | BLEU | chrF | exact match |",
            "| --- | --- | --- | --- |",
            f"| this model | {metrics['bleu']:.1f} | {metrics['chrf']:.1f} | "
            f"{metrics['exact_match']:.1%} |",
            f"| copy the source | {metrics['copy_bleu']:.1f} | {metrics['copy_chrf']:.1f} | "
            f"{metrics['copy_exact_match']:.1%} |",
            "",
            "| source | reference | translation |",
            "| --- | --- | --- |",
        ]
        for example in translations[:CARD_EXAMPLES]:
            mark = "" if example["correct"] else " (wrong)"
            lines.append(
                f"| {example['source']} | {example['target']} | {example['translation']}{mark} |"
            )
        lines += [
            "",
            "```python",
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "from scratchformers.encdec import translate",
            "",
            'model = AutoModelForSeq2SeqLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            'print(translate(model, tokenizer, ["three hundred and forty-two"]))',
            "```",
            "",
        ]
        return lines


def plot_bleu(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Held-out BLEU at each evaluation against the optimizer step, with the copy-the-source
    baseline as a dashed line, and exact match on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations = [record for record in records if "bleu" in record]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    if evaluations:
        steps = [record["step"] for record in evaluations]
        axis.plot(steps, [r["bleu"] for r in evaluations], "o-", color="tab:blue", label="BLEU")
        axis.axhline(
            evaluations[-1]["copy_bleu"],
            color="black",
            linestyle="--",
            linewidth=1,
            label="BLEU of copying the source",
        )
        exact = axis.twinx()
        exact.plot(
            steps,
            [100 * r["exact_match"] for r in evaluations],
            "s:",
            color="tab:green",
            label="exact match (%)",
        )
        exact.set_ylim(0, 100)
        exact.set_ylabel("exact match (%)")
        handles = axis.get_legend_handles_labels()
        more = exact.get_legend_handles_labels()
        axis.legend(handles[0] + more[0], handles[1] + more[1], loc="center right", fontsize=8)
    axis.set_ylim(0, 100)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("held-out BLEU")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
