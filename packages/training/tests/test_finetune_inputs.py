"""The shared pieces of fine-tuning on the user's files: reading their tables (``--dataset``,
``--eval-dataset``, ``--eval-fraction``) and starting from their checkpoint (``--init-from``)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import datasets
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from scratchformers.training.data import DataError
from scratchformers.training.pretrained import (
    PretrainedError,
    checkpoint_path,
    load_checkpoint_processor,
    load_pretrained,
)
from scratchformers.training.tables import (
    held_out_by_content,
    read_table,
    require_columns,
    train_and_held_out,
)

ROWS = [
    {"text": f"review number {i} says {'good' if i % 3 else 'bad'}", "label": i % 3}
    for i in range(61)
]


def write_table(path: Path, rows: list[dict]) -> Path:
    """``rows`` written in the format of ``path``'s suffix."""
    table = datasets.Dataset.from_list(rows)
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        table.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        table.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_table_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    table = read_table(str(write_table(tmp_path / f"data{suffix}", ROWS)))
    assert table.column_names == ["text", "label"]
    assert [dict(row) for row in table] == ROWS


def test_a_local_folder_of_files_reads_like_a_dataset_id(tmp_path: Path) -> None:
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    write_table(folder / "train.csv", ROWS)
    table = read_table(str(folder))
    assert len(table) == len(ROWS)


def test_bad_tables_are_named_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--dataset .*missing\.csv does not exist"):
        read_table(str(tmp_path / "missing.csv"))
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"cannot read a \.xlsx file as a table; use one of"):
        read_table(str(odd))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl holds no rows"):
        read_table(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DataError, match=r"header\.csv holds no rows"):
        read_table(str(header_only))
    table = read_table(str(write_table(tmp_path / "data.csv", ROWS)))
    with pytest.raises(
        DataError, match=r"has no column 'review' \(its columns: text, label\); .*--text-column"
    ):
        require_columns(table, {"--text-column": "review"}, "data.csv")


def test_the_held_out_rows_depend_on_their_content_only(tmp_path: Path) -> None:
    table = datasets.Dataset.from_list(ROWS)
    train, held = held_out_by_content(table, 0.2, ["text"], "data")
    assert 0 < len(held) < len(ROWS) and len(train) + len(held) == len(ROWS)
    # Reversed and with more rows, every old row stays on its side.
    more = datasets.Dataset.from_list(
        ROWS[::-1] + [{"text": f"new {i}", "label": 0} for i in range(40)]
    )
    _, held_more = held_out_by_content(more, 0.2, ["text"], "data")
    assert set(held["text"]) <= set(held_more["text"])
    assert not set(held_more["text"]) & set(train["text"])
    with pytest.raises(DataError, match=r"--eval-fraction 0.001 .* leaves the held-out part empty"):
        held_out_by_content(table, 0.001, ["text"], "data")


def test_eval_dataset_is_read_and_checked_like_the_training_file(tmp_path: Path) -> None:
    train_file = write_table(tmp_path / "train.csv", ROWS)
    eval_file = write_table(tmp_path / "eval.jsonl", [{"sentence": "x", "label": 1}])
    options = Namespace(dataset=str(train_file), eval_dataset=None, eval_fraction=0.25)
    train, held, _ = train_and_held_out(options, {"--text-column": "text"})
    assert len(train) + len(held) == len(ROWS)
    options.eval_dataset = str(eval_file)
    with pytest.raises(DataError, match=r"--eval-dataset .*eval.jsonl has no column 'text'"):
        train_and_held_out(options, {"--text-column": "text"})


def tiny_bert(**fields: object) -> BertConfig:
    return BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=20,
        **fields,
    )


def test_a_new_label_set_starts_the_head_fresh_and_the_body_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert(num_labels=2)).save_pretrained(tmp_path / "two")
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "two")
    labels = {0: "bad", 1: "ok", 2: "good"}
    loaded = load_pretrained(
        BertForSequenceClassification,
        str(tmp_path / "two"),
        new_heads=("classifier",),
        id2label=labels,
    )
    assert loaded.fresh == ["classifier.bias", "classifier.weight"]
    assert "a transformers bert folder" in loaded.describe()
    assert loaded.model.config.id2label == labels
    body = loaded.model.bert.state_dict()
    for name, tensor in saved.bert.state_dict().items():
        torch.testing.assert_close(body[name], tensor, rtol=0, atol=0)
    # The same number of labels under other names: the head is reset too, not reused.
    renamed = load_pretrained(
        BertForSequenceClassification,
        str(tmp_path / "two"),
        new_heads=("classifier",),
        id2label={0: "cat", 1: "dog"},
    )
    assert renamed.fresh == ["classifier.bias", "classifier.weight"]
    assert not torch.equal(renamed.model.classifier.weight, saved.classifier.weight)
    same = load_pretrained(
        BertForSequenceClassification,
        str(tmp_path / "two"),
        new_heads=("classifier",),
        id2label=dict(saved.config.id2label),
    )
    assert same.fresh == []
    torch.testing.assert_close(same.model.classifier.weight, saved.classifier.weight)


def test_a_checkpoint_missing_body_weights_stops_the_run_naming_them(tmp_path: Path) -> None:
    BertForMaskedLM(tiny_bert()).save_pretrained(tmp_path / "mlm")
    # A masked LM has no pooler: unless the recipe names it as a new head, that is missing.
    with pytest.raises(PretrainedError, match=r"does not hold 2 weights .*bert\.pooler"):
        load_pretrained(
            BertForSequenceClassification, str(tmp_path / "mlm"), new_heads=("classifier",)
        )
    loaded = load_pretrained(
        BertForSequenceClassification,
        str(tmp_path / "mlm"),
        new_heads=("classifier", "bert.pooler"),
    )
    assert {name.rsplit(".", 2)[0] for name in loaded.fresh} == {"classifier", "bert.pooler"}


def test_a_missing_checkpoint_or_an_unreachable_hub_id_is_named(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match=r"--init-from .*nothing does not exist"):
        checkpoint_path(str(tmp_path / "nothing"))
    # Offline (HF_HUB_OFFLINE=1 in the tests), an id not in the cache cannot be fetched.
    with pytest.raises(PretrainedError, match="Hugging Face Hub could not give it"):
        checkpoint_path("someone/not-a-model-here")
    (tmp_path / "weights").mkdir()
    with pytest.raises(PretrainedError, match=r"holds no config\.json"):
        load_pretrained(BertForMaskedLM, str(tmp_path / "weights"))


def test_the_checkpoint_s_own_tokenizer_is_found(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "model"
    assert load_checkpoint_processor(folder) is None
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    assert load_checkpoint_processor(folder).convert_tokens_to_ids("hello") == 1
