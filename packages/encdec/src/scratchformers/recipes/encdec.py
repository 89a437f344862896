"""The encdec training recipe: an encoder-decoder that learns to translate, from scratch on
generated number words by default, or fine-tuned from a BART or Marian (opus-mt) checkpoint on
the user's own pairs.

    scratchformers train encdec [--preset tiny] [--target-language de] [...]
    scratchformers train encdec --init-from Helsinki-NLP/opus-mt-en-fr --dataset pairs.tsv
    accelerate launch -m scratchformers.encdec.train [...]

The default data (:mod:`scratchformers.encdec.number_pairs`) is generated offline: numbers
below a million in English words and French (or German) ones, with whole combinations of
hundreds and tens held out, so every held-out number is unseen and has to be composed. One
byte-level BPE vocabulary (the training package's ``train_byte_level_bpe``) is trained on both
sides of the training pairs; the saved tokenizer ends every text with ``</s>``, so
``tokenizer(texts)`` gives the model what it trained on.

``--dataset`` reads the user's pairs instead (:mod:`scratchformers.encdec.parallel_data`: a
``.tsv``/``.csv``/``.jsonl``/``.parquet`` file of ``--source-column`` and ``--target-column``,
or a Hugging Face translation dataset read at ``--source-lang`` and ``--target-lang``), held
out by ``--eval-dataset`` or by content hash. ``--init-from`` starts from a checkpoint (ours,
or transformers' BART or Marian, converted on load) and uses its own tokenizer: no vocabulary
is trained, since the embeddings already have one.

Training is teacher forcing: the decoder reads the target shifted right behind its start token
and predicts it, with label smoothing (``--label-smoothing``, 0.1). Every evaluation decodes
the held-out sources greedily with ``generate()`` and scores the translations with sacreBLEU
(corpus ``bleu`` and ``chrf``) and ``exact_match``, beside the same scores of copying the
source (``copy_bleu``, ``copy_exact_match``: what a model that learnt nothing but to repeat
its input would get). At the end ``translations.json`` (the final figures and every held-out
translation) and ``bleu.png`` (BLEU over the steps against the copy baseline). This module is
what ``--help`` imports, so torch and the model package come in inside the hooks.

``scratchformers export --format onnx`` writes ``encoder.onnx`` and ``decoder.onnx``
(:func:`onnx_graphs`), for a greedy or beam loop in onnxruntime.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, ClassVar

from scratchformers.training.onnx_export import OnnxGraph, onnx_format, token_example
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
from scratchformers.training.rundir import write_json

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
# The same for the user's pairs, by --target-lang: sacreBLEU's own for Chinese, characters for
# the languages written without spaces between words; its default (13a) for any other.
USER_BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "th": "char", "lo": "char", "my": "char"}


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
        "Train an encoder-decoder to translate: from scratch on generated number words "
        "(English into French or German) by default, or fine-tuned from a BART or opus-mt "
        "checkpoint (--init-from) on your own pairs (--dataset); scored with BLEU, chrF and "
        "exact match."
    )
    dataset_formats = (
        "translation pairs: a .tsv, .csv, .jsonl or .parquet file of --source-column and "
        "--target-column, or a Hugging Face translation dataset id (a 'translation' column "
        "of {language: text}, read with --source-lang and --target-lang), or a local folder "
        "of such files (default: generated number words, offline)"
    )
    init_from_formats = (
        "BART or Marian (opus-mt), as a folder written by save_pretrained (an encdec run's, "
        "transformers' BartForConditionalGeneration or MarianMTModel) or a Hub id such as "
        "Helsinki-NLP/opus-mt-en-fr (whose tokenizer needs sentencepiece)"
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
        data = parser.add_argument_group("generated numbers (without --dataset), the tokenizer")
        data.add_argument(
            "--target-language",
            choices=sorted(LANGUAGE_NAMES),
            default="fr",
            help="the language the generated English number words are translated into "
            "(default: fr; not used with --dataset)",
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
            help="a saved tokenizer to reuse instead of training one (or instead of the "
            "--init-from checkpoint's): a folder written by save_pretrained, such as a trained "
            "model's (then --vocab-size does not apply)",
        )
        pairs = parser.add_argument_group("your pairs (with --dataset)")
        pairs.add_argument(
            "--source-column",
            default="source",
            metavar="NAME",
            help="the column of the texts to translate (default: source)",
        )
        pairs.add_argument(
            "--target-column",
            default="target",
            metavar="NAME",
            help="the column of their translations (default: target)",
        )
        pairs.add_argument(
            "--source-lang",
            default=None,
            metavar="LANG",
            help="read a Hugging Face translation dataset's 'translation' column of "
            "{language: text}: the language to translate from (en, say)",
        )
        pairs.add_argument(
            "--target-lang",
            default=None,
            metavar="LANG",
            help="the language to translate into, with --source-lang (fr, say)",
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
        """The pairs (generated, or ``--dataset``'s), checked before any work; the tokenizer
        (``--tokenizer``'s, else the ``--init-from`` checkpoint's, else a BPE vocabulary
        trained on the training pairs); every pair tokenized, ending with ``</s>``."""
        from scratchformers.encdec.parallel_data import PairLayout
        from scratchformers.training.data import DataError

        options = settings.options
        self.layout = PairLayout.from_options(options)
        # The model's config, for its positions: the --init-from checkpoint's (or, when
        # `scratchformers eval` hands over the trained folder as --tokenizer, that folder's).
        self.checkpoint = None
        if options.dataset is None:
            if options.eval_dataset:
                raise DataError("--eval-dataset needs --dataset: the held-out pairs of which data?")
            if options.source_lang or options.target_lang:
                raise DataError(
                    "--source-lang and --target-lang read --dataset's translation column; give "
                    "--dataset (the generated numbers take --target-language)"
                )
            train, held_out, about = self._generated_pairs(settings)
            self.generated = True
        else:
            from scratchformers.encdec.parallel_data import train_and_held_out_pairs

            train, held_out, origin = train_and_held_out_pairs(options, self.layout)
            self.generated = False
            about = (
                f"{origin}: {len(train):,} training and {len(held_out):,} held-out pairs "
                f"({self.layout.direction}), such as "
                f'"{train[0]["source"][:80]}" -> "{train[0]["target"][:80]}"'
            )
        model_config = self._model_config(options)
        tokenizer, tokenizer_description = self._tokenizer(options, train)
        positions = (
            model_config.get("max_position_embeddings", options.max_position_embeddings)
            if model_config
            else options.max_position_embeddings
        )
        vocabulary = (model_config or {}).get("vocab_size")
        if vocabulary is not None and len(tokenizer) > vocabulary:
            raise DataError(
                f"the tokenizer ({tokenizer_description}) has {len(tokenizer):,} tokens, more "
                f"than the {vocabulary:,} embeddings of the model; give the checkpoint's own "
                "tokenizer"
            )
        tokenizer.model_max_length = positions
        splits, longest_target = [], 0
        for name, pairs in (("training", train), ("held-out", held_out)):
            sources = tokenizer([pair["source"] for pair in pairs])["input_ids"]
            # text_target: Marian's tokenizer reads targets with the target vocabulary's model.
            targets = tokenizer(text_target=[pair["target"] for pair in pairs])["input_ids"]
            if name == "training":
                longest_target = max(len(row) for row in targets)
            sources, targets = self._fit(name, sources, targets, positions)
            splits.append(
                [
                    {"input_ids": source, "labels": labels, "index": index}
                    for index, (source, labels) in enumerate(zip(sources, targets, strict=True))
                ]
            )
        # What the hooks need beyond the batches: the texts of the held-out pairs by index,
        # and the settings of the loss and the decoding.
        self.tokenizer = tokenizer
        self.eval_pairs = held_out
        self.label_smoothing = options.label_smoothing
        if self.generated:
            self.target_language = options.target_language
            self.direction = f"English -> {LANGUAGE_NAMES[options.target_language]}"
            self.bleu_tokenize = BLEU_TOKENIZE[options.target_language]
        else:
            self.target_language = options.target_lang
            self.direction = self.layout.direction
            self.bleu_tokenize = USER_BLEU_TOKENIZE.get(options.target_lang or "", "13a")
        # Greedy decoding stops at </s>, or a little past the longest training target: an
        # untrained model (the first evaluation) never says </s> and would run to the
        # positions' end, for the same score.
        self.max_length = min(positions, longest_target + 8)
        return RecipeData(
            train=splits[0],
            eval=splits[1],
            collate=PairBatches(tokenizer.pad_token_id),
            processor=tokenizer,
            description=f"{about}; {tokenizer_description}, {len(tokenizer):,} tokens",
        )

    def _generated_pairs(
        self, settings: TrainingSettings
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """The offline default: generated number words, and their description."""
        from scratchformers.encdec.number_pairs import HELD_OUT_COMBINATIONS, number_pairs
        from scratchformers.training.console import status

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
        combinations = ", ".join(f"{h}{t}x" for h, t in sorted(HELD_OUT_COMBINATIONS))
        about = (
            f"generated number words (offline default): {len(train):,} training and "
            f"{len(held_out):,} held-out pairs of numbers below a million in English and "
            f'{language} words, such as "{train[0]["source"]}" -> "{train[0]["target"]}"; '
            "the held-out numbers are those with a three-digit group whose hundreds and "
            f"tens digits training never shows together ({combinations}), so none was "
            "trained on"
        )
        return train, held_out, about

    def _model_config(self, options: argparse.Namespace) -> dict[str, Any] | None:
        """The config.json of the model the run starts from (None from scratch): the
        ``--init-from`` checkpoint's, resolved here so that a missing one stops the run before
        any tokenizing; or, when ``scratchformers eval`` hands over the trained folder as
        ``--tokenizer``, that folder's (the checkpoint itself is not needed then)."""
        from pathlib import Path

        from scratchformers.training.pretrained import checkpoint_config, checkpoint_path

        if not options.init_from:
            return None
        if options.tokenizer and (Path(options.tokenizer) / "config.json").is_file():
            return checkpoint_config(Path(options.tokenizer), "--tokenizer")
        self.checkpoint = checkpoint_path(options.init_from, "--init-from")
        return checkpoint_config(self.checkpoint, "--init-from")

    def _tokenizer(
        self, options: argparse.Namespace, train: list[dict[str, Any]]
    ) -> tuple[Any, str]:
        """The tokenizer and how it came: ``--tokenizer``'s; else the ``--init-from``
        checkpoint's (a pretrained model's embeddings have their vocabulary already); else a
        byte-level BPE trained on both sides of the training pairs."""
        from tokenizers import processors

        from scratchformers.training.console import status
        from scratchformers.training.data import load_tokenizer, train_byte_level_bpe
        from scratchformers.training.pretrained import PretrainedError, load_checkpoint_processor

        if options.tokenizer:
            # A new model starts decoding at <s>; a checkpoint has its own start token.
            required = ("eos_token",) if options.init_from else ("eos_token", "bos_token")
            tokenizer = load_tokenizer(options.tokenizer, required)
            return tokenizer, f"the tokenizer of {options.tokenizer}"
        if self.checkpoint is not None:
            try:
                tokenizer = load_checkpoint_processor(self.checkpoint, "AutoTokenizer")
            except PretrainedError as error:
                # opus-mt's tokenizer is a pair of sentencepiece models: say what to install.
                hint = "; pip install sentencepiece" if "entencepiece" in str(error) else ""
                raise PretrainedError(f"--init-from {options.init_from}: {error}{hint}") from error
            if tokenizer is None:
                raise PretrainedError(
                    f"--init-from {options.init_from} holds no tokenizer; give the one its "
                    "vocabulary came from with --tokenizer (a new one would not match the "
                    "checkpoint's embeddings)"
                )
            if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
                raise PretrainedError(
                    f"the tokenizer of --init-from {options.init_from} has no end-of-sequence "
                    "or padding token, which every target and batch needs"
                )
            status(f"using the tokenizer of {options.init_from} ({len(tokenizer):,} tokens)")
            return tokenizer, f"the tokenizer of {options.init_from}"
        status("training the BPE tokenizer on both languages")
        texts = [pair[side] for pair in train for side in ("source", "target")]
        tokenizer = train_byte_level_bpe(texts, options.vocab_size)
        # Every text ends with </s>: the encoder sees where the source stops, and the decoder
        # learns to stop. Saved in tokenizer.json, so a reloaded tokenizer (and translate())
        # gives the model the inputs it trained on.
        eos = tokenizer.eos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
        )
        sides = "both languages" if self.generated else "both sides of the training pairs"
        return tokenizer, f"one byte-level BPE vocabulary trained on {sides}"

    def _fit(
        self, name: str, sources: list[list[int]], targets: list[list[int]], positions: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """The tokenized pairs within the model's ``positions``. A generated pair that does
        not fit is a setting to change (the run stops); the user's long pairs are cut, each
        keeping its last token (``</s>``), and counted in the log."""
        from scratchformers.training.console import status

        longest = max(len(row) for row in sources + targets)
        if longest <= positions:
            return sources, targets
        if self.generated:
            raise ValueError(
                f"a {name} pair is {longest} tokens long, more than --max-positions "
                f"{positions}; raise --max-positions (or --vocab-size, for fewer tokens)"
            )
        cut = sum(
            len(s) > positions or len(t) > positions for s, t in zip(sources, targets, strict=True)
        )
        status(
            f"warning: {cut:,} {name} pairs are longer than the model's {positions} positions "
            "and are cut to fit"
        )

        def fit(row: list[int]) -> list[int]:
            return row if len(row) <= positions else [*row[: positions - 1], row[-1]]

        return [fit(row) for row in sources], [fit(row) for row in targets]

    def build_model(
        self, settings: TrainingSettings, data: RecipeData
    ) -> EncDecForConditionalGeneration:
        """The ``--init-from`` checkpoint (ours, or transformers' BART or Marian, converted
        on load), or a new model of the preset's shape for the tokenizer."""
        from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration

        options, tokenizer = settings.options, data.processor
        if options.init_from:
            from scratchformers.training.pretrained import load_pretrained

            # Every weight is the checkpoint's (a bare BART's missing output bias starts at
            # zero, as transformers does): nothing is a new head, so anything missing stops.
            return load_pretrained(
                EncDecForConditionalGeneration, options.init_from, flag="--init-from"
            ).model
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
        tokenize = self.bleu_tokenize

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

    def export_formats(self) -> dict[str, ExportFormat]:
        """transformers' BART, and ONNX: the encoder and the decoder (see :func:`onnx_graphs`)."""
        return {
            **super().export_formats(),
            "onnx": onnx_format(
                onnx_graphs,
                onnx_info,
                help="encoder.onnx and decoder.onnx (logits), for onnxruntime",
            ),
        }

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
            "direction": self.direction,
            "bleu_tokenize": self.bleu_tokenize,
            "eval_pairs": len(translations),
            "translations": translations,
        }
        write_json(output_dir / TRANSLATIONS_FILE, report, ensure_ascii=False)
        plot_bleu(
            MetricsLog(output_dir).read(),
            output_dir / BLEU_PLOT,
            f"{self.name}: held-out BLEU, {self.direction}",
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
        metrics = evaluation.metrics
        translations = self.translations(evaluation.results)
        unit = "numbers" if self.generated else "pairs"
        # Only the generated numbers are unseen by construction; a user's held-out file may
        # share pairs with the training one.
        unseen = ", none of them trained on," if self.generated else ""
        lines = [
            f"## Translation ({self.direction}, held-out {unit})",
            "",
            f"Greedy decoding of {len(translations):,} held-out {unit}{unseen} against copying "
            "the source sentence as its translation "
            f"(sacreBLEU, tokenize `{self.bleu_tokenize}`).",
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
            f"print(translate(model, tokenizer, [{json.dumps(self._example_source())}]))",
            "```",
            "",
        ]
        return lines

    def _example_source(self) -> str:
        """A source for the card's code: a number in words, or the first held-out pair's."""
        if self.generated:
            return "three hundred and forty-two"
        return self.eval_pairs[0]["source"]


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


def onnx_graphs(model: PreTrainedModel) -> list[OnnxGraph]:
    """The encoder-decoder as two ONNX graphs, without a KV cache (a decoding loop runs the
    encoder once and the decoder on the whole target so far at each step):

    * ``encoder``: ``input_ids``, ``attention_mask`` ``(batch, source)``, padded on the
      right -> ``last_hidden_state`` ``(batch, source, d_model)``;
    * ``decoder``: ``decoder_input_ids`` ``(batch, target)`` (starting with
      ``decoder_start_token_id``), ``encoder_hidden_states`` (the encoder's
      ``last_hidden_state``) and ``encoder_attention_mask`` (its ``attention_mask``) ->
      ``logits`` ``(batch, target, vocab)``.

    Batch, source and target lengths are all dynamic.
    """
    import torch

    config = model.config
    generator = torch.Generator().manual_seed(0)

    def encode(input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        encoder = model.get_encoder()
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return {"last_hidden_state": hidden}

    def source(batch: int, length: int) -> dict[str, Any]:
        return token_example(config.vocab_size, batch, length, pad_token_id=config.pad_token_id)

    def decode(
        decoder_input_ids: Any, encoder_hidden_states: Any, encoder_attention_mask: Any
    ) -> dict[str, Any]:
        outputs = model(
            attention_mask=encoder_attention_mask,
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=(encoder_hidden_states,),
            use_cache=False,
        )
        return {"logits": outputs.logits}

    def target(batch: int, length: int) -> dict[str, Any]:
        # A source three tokens longer than the target: the export must keep them apart.
        encoder_mask = source(batch, length + 3)["attention_mask"]
        states = torch.randn(batch, length + 3, config.d_model, generator=generator)
        ids = token_example(config.vocab_size, batch, length, pad_token_id=None)["input_ids"]
        ids[:, 0] = config.decoder_start_token_id
        return {
            "decoder_input_ids": ids,
            "encoder_hidden_states": states,
            "encoder_attention_mask": encoder_mask,
        }

    longest = config.max_position_embeddings
    return [
        OnnxGraph(
            name="encoder",
            module=model,
            forward=encode,
            example=source,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "source"},
                "attention_mask": {0: "batch", 1: "source"},
            },
            real_positions={"last_hidden_state": "attention_mask"},
            max_length=longest,
            description="the encoder's last hidden state",
        ),
        OnnxGraph(
            name="decoder",
            module=model,
            forward=decode,
            example=target,
            dynamic_axes={
                "decoder_input_ids": {0: "batch", 1: "target"},
                "encoder_hidden_states": {0: "batch", 1: "source"},
                "encoder_attention_mask": {0: "batch", 1: "source"},
            },
            max_length=longest - 3,
            description="next-token logits at every target position (no KV cache)",
        ),
    ]


def onnx_info(model: PreTrainedModel) -> dict[str, Any]:
    """What a decoding loop needs beside the graphs: the special tokens and the longest
    target."""
    config = model.config
    return {
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "max_length": config.max_position_embeddings,
    }
