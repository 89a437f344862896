"""The original BasicFormer smoke script, offline: one batch through all three models.

A left-padded batch of two sentences goes through the masked LM; then the causal LM and the
seq2seq model each generate 20 tokens with and without the KV cache, and the two must agree.
The models are untrained (random weights), so the text is noise; what matters is that every
mode runs and that caching changes nothing.

Run it with ``uv run python packages/basicformer/examples/smoke.py``.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from scratchformers.basicformer import (
    BasicFormerConfig,
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]


def build_tokenizer(texts: list[str], vocab_size: int = 200) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer trained on ``texts``, no hub download needed.

    Special tokens get ids 0-4 in the order pad, bos, eos, unk, mask, matching
    ``BasicFormerConfig``'s defaults (``pad_token_id=0``, ``bos_token_id=1``, ``eos_token_id=2``).
    Padding is on the left, as decoder-only generation needs.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        padding_side="left",
    )


def tiny_config(vocab_size: int) -> BasicFormerConfig:
    """Odd sizes on purpose: hidden 48 with 3 heads sharing one key/value head."""
    return BasicFormerConfig(
        vocab_size=vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        position_embedding_type="rotary",
    )


def main() -> dict[str, torch.Tensor]:
    """Run the smoke test; returns the tensors it printed, for the test that runs this file."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(SENTENCES * 20)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    print("left-padded batch:\n", batch["input_ids"])
    results: dict[str, torch.Tensor] = {}

    masked_lm = BasicFormerForMaskedLM(tiny_config(len(tokenizer))).eval()
    with torch.no_grad():
        logits = masked_lm(**batch).logits
    print("masked LM logits:", tuple(logits.shape))
    results["masked_lm_logits"] = logits

    for name, model_class in (
        ("causal_lm", BasicFormerForCausalLM),
        ("seq2seq", BasicFormerForSeq2SeqLM),
    ):
        model = model_class(tiny_config(len(tokenizer))).eval()
        generated = {
            use_cache: model.generate(
                **batch, max_new_tokens=20, min_new_tokens=20, do_sample=False, use_cache=use_cache
            )
            for use_cache in (True, False)
        }
        same = torch.equal(generated[True], generated[False])
        print(f"{name}: 20 tokens with and without the cache agree: {same}")
        for text in tokenizer.batch_decode(generated[True]):
            print("   ", text[:80])
        results[f"{name}_with_cache"] = generated[True]
        results[f"{name}_without_cache"] = generated[False]
    return results


if __name__ == "__main__":
    main()
