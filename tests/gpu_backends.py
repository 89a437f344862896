"""Device check: every attention backend the models declare gives sdpa's numbers on a GPU.

Not collected by pytest (CI has no GPU). Run it where CUDA is available::

    python tests/gpu_backends.py

For each model (GPT-2, BasicFormer causal with rotary + GQA, encoder, encoder-decoder) it
compares ``flex_attention`` and ``eager`` with ``sdpa`` on a left-padded batch of odd length:
the logits at real tokens (fp32 and bf16), the gradients, and greedy tokens from ``generate()``.
Prints one line per comparison and exits non-zero on the first mismatch.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable

import torch

from scratchformers.basicformer import (
    BasicFormerConfig,
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
)
from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

BACKENDS = ("eager", "flex_attention")
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def left_padded_batch(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    lengths, width = (13, 7, 3), 13
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(5, 97, (length,), generator=generator)
        mask[row, width - length :] = 1
    return ids.to(device), mask.to(device)


def models() -> dict[str, Callable[[], torch.nn.Module]]:
    basic = {"vocab_size": 97, "hidden_size": 48, "num_attention_heads": 3, "num_hidden_layers": 2}
    return {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=40, n_head=5, n_layer=3, vocab_size=97)),
        "basicformer-causal-rotary-gqa": lambda: BasicFormerForCausalLM(
            BasicFormerConfig(**basic, num_key_value_heads=1, position_embedding_type="rotary")
        ),
        "basicformer-encoder": lambda: BasicFormerForMaskedLM(BasicFormerConfig(**basic)),
        "basicformer-seq2seq": lambda: BasicFormerForSeq2SeqLM(
            BasicFormerConfig(**basic, position_embedding_type="sinusoidal")
        ),
    }


def forward(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if model.config.is_encoder_decoder:
        return model(
            ids, attention_mask=mask, decoder_input_ids=ids[:, :5], labels=ids[:, :5].contiguous()
        )
    return model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


def compare(name: str, factory: Callable[[], torch.nn.Module], device: str) -> None:
    torch.manual_seed(0)
    directory = tempfile.mkdtemp()
    factory().save_pretrained(directory)
    ids, mask = left_padded_batch(device)
    # Logits at padding positions are not compared: nothing reads them.
    seq2seq = name.endswith("seq2seq")
    for dtype in (torch.float32, torch.bfloat16):
        loaded = {
            backend: type(factory())
            .from_pretrained(directory, attn_implementation=backend, dtype=dtype)
            .to(device)
            for backend in ("sdpa", *BACKENDS)
        }
        reference = forward(loaded["sdpa"], ids, mask)
        reference.loss.backward()
        for backend in BACKENDS:
            output = forward(loaded[backend], ids, mask)
            output.loss.backward()
            logits = (output.logits - reference.logits).detach().float()
            if not seq2seq:
                logits = logits.masked_fill(~mask.bool()[..., None], 0)
            logit_diff = float(logits.abs().max())
            grads = [
                float((a.grad - b.grad).abs().max())
                for a, b in zip(
                    loaded[backend].parameters(), loaded["sdpa"].parameters(), strict=True
                )
                if a.grad is not None
            ]
            tokens_equal = None
            if loaded[backend].can_generate() and dtype == torch.float32:
                with torch.no_grad():
                    ours = loaded[backend].generate(
                        ids, attention_mask=mask, max_new_tokens=6, do_sample=False
                    )
                    theirs = loaded["sdpa"].generate(
                        ids, attention_mask=mask, max_new_tokens=6, do_sample=False
                    )
                tokens_equal = bool(torch.equal(ours, theirs))
            ok = logit_diff <= TOLERANCE[dtype] and tokens_equal is not False
            print(
                f"{name:32s} {dtype!s:15s} {backend:15s} logits {logit_diff:.2e} "
                f"grads {max(grads):.2e} greedy-equal {tokens_equal} {'ok' if ok else 'MISMATCH'}"
            )
            if not ok:
                sys.exit(1)
            loaded[backend].zero_grad()


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("this check needs a CUDA GPU")
    print(torch.__version__, torch.cuda.get_device_name())
    for name, factory in models().items():
        compare(name, factory, "cuda")
    print("every backend matches sdpa")


if __name__ == "__main__":
    main()
