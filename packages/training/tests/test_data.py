"""The shared data helpers: corpora, sources, the held-out split, tokenizer, blocks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from scratchformers.training import (
    DataError,
    causal_lm_blocks,
    collate_blocks,
    load_texts,
    python_docs_corpus,
    split_train_eval,
    train_byte_level_bpe,
)


def test_default_corpus_is_real_english_from_python_itself() -> None:
    texts = python_docs_corpus()
    assert len(texts) > 1000 and sum(map(len, texts)) > 500_000
    assert any(text.startswith('The "return" statement') for text in texts)  # a pydoc topic
    assert texts == python_docs_corpus()  # deterministic order
    assert load_texts(None) == texts


def test_sources_file_folder_and_errors(corpus: Path, tmp_path: Path) -> None:
    files = sorted(corpus.glob("*.txt"))
    assert load_texts(str(corpus)) == [p.read_text() for p in files]
    assert load_texts(str(files[0])) == [files[0].read_text()]
    with pytest.raises(DataError, match="does not exist"):
        load_texts(str(tmp_path / "missing" / "file.txt"))
    (tmp_path / "no-text").mkdir()
    (tmp_path / "no-text" / "data.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match="holds no"):
        load_texts(str(tmp_path / "no-text"))
    # A hub id is tried with the datasets library; offline, that fails with a clear message.
    with pytest.raises(
        DataError,
        match="--dataset someone/no-such-dataset could not be read as a Hugging Face dataset",
    ):
        load_texts("someone/no-such-dataset")


def test_held_out_split_is_disjoint_and_spread() -> None:
    texts = [f"document {i}" for i in range(100)]
    train, held_out = split_train_eval(texts, eval_fraction=0.1)
    assert len(held_out) == 10 and set(train).isdisjoint(held_out)
    assert sorted(train + held_out) == sorted(texts)
    assert held_out[0] == "document 9" and held_out[-1] == "document 99"
    (only_train,), (only_eval,) = split_train_eval(["abcdefghij" * 10])
    assert only_train + only_eval == "abcdefghij" * 10 and len(only_eval) == 5


def test_tokenizer_is_byte_level_cached_and_loads_with_auto(tmp_path: Path) -> None:
    texts = ["The quick brown fox jumps over the lazy dog."] * 50 + ["Ünïcödé and emoji 🙂 too."]
    tokenizer = train_byte_level_bpe(texts, vocab_size=300, cache_dir=tmp_path)
    text = "Never seen: Ωmega 🙂!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # bytes: nothing is unknown
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    (cached,) = tmp_path.iterdir()
    again = train_byte_level_bpe(texts, vocab_size=300, cache_dir=tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab() and len(list(tmp_path.iterdir())) == 1
    reloaded = AutoTokenizer.from_pretrained(cached)
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_a_process_that_loses_the_race_loads_the_winners_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trainings of one tokenizer can differ (tokenizers' trainers are not deterministic),
    so every process of a distributed run must load the one that reached the cache first."""
    from scratchformers.training import data

    texts = ["The quick brown fox jumps over the lazy dog."] * 50
    # A tokenizer unlike the one these texts give, standing in for the other process's.
    other = train_byte_level_bpe(["other words, entirely."] * 50, 300, cache_dir=tmp_path / "o")
    (others_folder,) = (tmp_path / "o").iterdir()
    cache = tmp_path / "cache"
    real_save = data.PreTrainedTokenizerFast.save_pretrained

    def save_after_the_other_process(self, folder, *args, **kwargs):
        # The other process renames its finished tokenizer into place while this one saves.
        shutil.copytree(others_folder, cache / Path(folder).name.split(".partial-")[0])
        return real_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(
        data.PreTrainedTokenizerFast, "save_pretrained", save_after_the_other_process
    )
    loaded = train_byte_level_bpe(texts, vocab_size=300, cache_dir=cache)
    assert loaded.get_vocab() == other.get_vocab()
    assert len(list(cache.iterdir())) == 1  # this process's own folder is gone


def test_blocks_are_full_length_and_end_documents_with_eos(tmp_path: Path) -> None:
    texts = ["one two three four five six seven", "eight nine ten"] * 20
    tokenizer = train_byte_level_bpe(texts, vocab_size=280, cache_dir=tmp_path)
    blocks = causal_lm_blocks(texts, tokenizer, block_size=8)
    stream = [token for text in texts for token in [*tokenizer(text)["input_ids"], 2]]
    assert len(blocks) == len(stream) // 8
    assert [token for block in blocks["input_ids"] for token in block] == stream[: len(blocks) * 8]
    batch = collate_blocks([blocks[0], blocks[1]])
    assert torch.equal(batch["input_ids"], batch["labels"]) and batch["input_ids"].shape == (2, 8)
    with pytest.raises(DataError, match="fewer than one block"):
        causal_lm_blocks(["tiny"], tokenizer, block_size=512)


DOCUMENTS = [f"Document {i}: the cat sat on mat number {i} and ran." for i in range(40)]


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    """The same documents as a .jsonl, .csv and .parquet file (column ``body``) and as a
    local dataset folder of jsonl files with train and validation splits (a Hub id's stand-in:
    ``datasets.load_dataset`` reads it as it reads a Hub repository)."""
    import pandas

    frame = pandas.DataFrame({"id": range(len(DOCUMENTS)), "body": DOCUMENTS})
    paths = {
        "jsonl": tmp_path / "notes.jsonl",
        "csv": tmp_path / "notes.csv",
        "parquet": tmp_path / "notes.parquet",
    }
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    hub = tmp_path / "owner-dataset"
    (hub / "data").mkdir(parents=True)
    frame.iloc[:30].to_json(hub / "data" / "train.jsonl", orient="records", lines=True)
    frame.iloc[30:].to_json(hub / "data" / "validation.jsonl", orient="records", lines=True)
    paths["folder"] = hub
    return paths


def test_table_formats_and_dataset_folders_read_the_text_column(
    tables: dict[str, Path], tmp_path: Path
) -> None:
    for kind in ("jsonl", "csv", "parquet"):
        assert load_texts(str(tables[kind]), "body") == DOCUMENTS, kind
    # A dataset folder: its train split to train on, its validation split for --eval-dataset.
    assert load_texts(str(tables["folder"]), "body") == DOCUMENTS[:30]
    assert load_texts(str(tables["folder"]), "body", "--eval-dataset") == DOCUMENTS[30:]
    text = tmp_path / "notes.txt"
    text.write_text("one file\n\nis one document")
    assert load_texts(str(text)) == ["one file\n\nis one document"]


def test_a_missing_column_or_empty_data_is_named(tables: dict[str, Path], tmp_path: Path) -> None:
    from scratchformers.training.data import stream_documents

    for kind in ("jsonl", "csv", "parquet", "folder"):
        with pytest.raises(DataError, match=r"has no column 'text' \(its columns: id, body\)"):
            load_texts(str(tables[kind]))
    with pytest.raises(DataError, match=r"has no column 'text' \(its columns: id, body\)"):
        stream_documents(str(tables["jsonl"]))
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": "  "}\n')
    with pytest.raises(DataError, match=r"--eval-dataset .*blank\.jsonl is empty"):
        load_texts(str(blank), flag="--eval-dataset")
    with pytest.raises(DataError, match=r"--eval-fraction 0\.05 .* held-out split empty"):
        split_train_eval(DOCUMENTS[:10], 0.05)


def test_streaming_gives_the_in_memory_training_blocks(tables: dict[str, Path]) -> None:
    from scratchformers.training.data import (
        StreamingBlocks,
        held_out_every,
        masked_lm_blocks,
        stream_documents,
        train_wordpiece,
    )

    for masked in (False, True):
        train = train_wordpiece if masked else train_byte_level_bpe
        tokenizer = train(DOCUMENTS, 300, cache_dir=Path(tables["jsonl"]).parent / "cache")
        cut = masked_lm_blocks if masked else causal_lm_blocks
        for kind in ("jsonl", "parquet"):
            texts, _ = split_train_eval(load_texts(str(tables[kind]), "body"), 0.1)
            in_memory = cut(texts, tokenizer, 8)["input_ids"]
            streamed = StreamingBlocks(
                stream_documents(str(tables[kind]), "body"),
                tokenizer,
                8,
                masked=masked,
                held_out_every=held_out_every(0.1),
            )
            assert [block["input_ids"] for block in streamed] == in_memory, (kind, masked)
            # Two processes read distinct documents, together every training document.
            shards = [
                [row["text"] for row in streamed.split_by_node(rank, 2).training_documents]
                for rank in (0, 1)
            ]
            assert set(shards[0]).isdisjoint(shards[1])
            assert sorted(shards[0] + shards[1]) == sorted(texts)
