"""A tokenizer for captions, trained offline in a fraction of a second.

CLIP reads a text at its end-of-text token, so the tokenizer must add one to every text and
keep it when it truncates: ``<bos> words <eos>``, padded on the right with ``<pad>``. Short
captions from a closed vocabulary ("a small red circle at the top left") need no subwords: one
token per lower-cased word or punctuation mark, and ``<unk>`` for a word never seen.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def train_caption_tokenizer(
    texts: Iterable[str], max_vocab_size: int = 30_000, model_max_length: int = 77
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``texts`` (at most ``max_vocab_size`` tokens, the special
    ones first: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3), wrapping each text as
    ``<bos> ... <eos>``; texts longer than ``model_max_length`` tokens are cut with their
    ``<eos>`` kept."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab_size, special_tokens=list(SPECIAL_TOKENS)
    )
    tokenizer.train_from_iterator(texts, trainer)
    bos, eos = tokenizer.token_to_id("<bos>"), tokenizer.token_to_id("<eos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        # CLIP takes no token types.
        model_input_names=["input_ids", "attention_mask"],
    )
