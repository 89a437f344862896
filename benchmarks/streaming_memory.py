"""Peak memory of ``--streaming`` for 1x and 10x the data: it should stay flat.

    uv run python -m benchmarks.streaming_memory [--megabytes 2]

Writes a ``.jsonl`` corpus of about ``--megabytes`` (1x) and ten times that (10x), made of
the offline corpus's documents repeated, and a tiny transformers GPT-2 checkpoint with its
tokenizer. For each size, in a fresh process each (so each peak is its own, read with
``os.wait4``):

* ``read all``: every training block of the file, read through a DataLoader as the loop reads
  a streamed training set (``StreamingBlocks``, one pass over the whole file);
* ``fine-tune``: ``scratchformers train gpt2 --init-from ... --streaming`` for a few steps,
  the whole run (the held-out blocks are read into memory, at most the preset's 256);
* ``in memory`` (for contrast): the same file read and cut into blocks without streaming.

Prints one table; nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

READ_ALL = """
import sys, torch
from transformers import AutoTokenizer
from scratchformers.training.data import StreamingBlocks, collate_blocks, stream_documents
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
blocks = StreamingBlocks(stream_documents(sys.argv[1], "body"), tokenizer, 32, held_out_every=20)
loader = torch.utils.data.DataLoader(blocks, batch_size=16, collate_fn=collate_blocks)
print(sum(1 for _ in loader), "batches")
"""
IN_MEMORY = """
import sys
from transformers import AutoTokenizer
from scratchformers.training.data import causal_lm_blocks, load_texts, split_train_eval
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
train, _ = split_train_eval(load_texts(sys.argv[1], "body"))
print(len(causal_lm_blocks(train, tokenizer, 32)), "blocks")
"""


def peak_rss_mb(command: list[str], env: dict[str, str]) -> float:
    """The peak resident memory of ``command``'s process (and the largest of its children),
    in MiB; the command must succeed."""
    # The child's output goes to a file: a pipe nobody reads while waiting would fill and stall it.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{command} failed: {log.read()[-2000:]}")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def write_corpus(path: Path, megabytes: float) -> int:
    """A .jsonl file of about ``megabytes``, text in the column ``body``; its row count."""
    from scratchformers.training import python_docs_corpus

    documents = python_docs_corpus()
    rows, size = 0, 0
    with path.open("w", encoding="utf-8") as file:
        while size < megabytes * 2**20:
            line = json.dumps({"body": documents[rows % len(documents)]}) + "\n"
            file.write(line)
            rows, size = rows + 1, size + len(line.encode())
    return rows


def make_checkpoint(folder: Path, corpus: Path) -> None:
    """A tiny transformers GPT-2 (random weights) and a byte-level BPE beside it."""
    import transformers

    from scratchformers.training import train_byte_level_bpe

    texts = [json.loads(line)["body"] for line in corpus.read_text().splitlines()[:500]]
    tokenizer = train_byte_level_bpe(texts, 512, cache_dir=folder.parent / "cache")
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=1.0, help="the 1x corpus size")
    arguments = parser.parse_args()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    scratchformers = str(Path(sys.executable).with_name("scratchformers"))
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        for scale in (1, 10):
            corpus = root / f"corpus-{scale}x.jsonl"
            count = write_corpus(corpus, arguments.megabytes * scale)
            if scale == 1:
                make_checkpoint(root / "checkpoint", corpus)
            checkpoint = str(root / "checkpoint")
            read_all = peak_rss_mb([sys.executable, "-c", READ_ALL, str(corpus), checkpoint], env)
            fine_tune = peak_rss_mb(
                [
                    scratchformers, "train", "gpt2", "--init-from", checkpoint, "--dataset",
                    str(corpus), "--text-column", "body", "--streaming", "--max-steps", "20",
                    "--batch-size", "16", "--output-dir", str(root / f"run-{scale}x"),
                ],
                env,
            )  # fmt: skip
            in_memory = peak_rss_mb([sys.executable, "-c", IN_MEMORY, str(corpus), checkpoint], env)
            size = corpus.stat().st_size / 2**20
            rows.append((f"{scale}x", size, count, read_all, fine_tune, in_memory))
    print("data | MiB | rows | streamed, read all | streamed fine-tune | in memory (contrast)")
    for name, size, count, read_all, fine_tune, in_memory in rows:
        print(
            f"{name} | {size:.1f} | {count:,} | {read_all:.0f} MiB | {fine_tune:.0f} MiB | "
            f"{in_memory:.0f} MiB"
        )


if __name__ == "__main__":
    main()
