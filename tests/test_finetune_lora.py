"""Fine-tuning the lora recipe on the user's labelled texts (``--dataset``, ``--eval-dataset``,
``--text-column``, ``--label-column``) from a transformers BERT (``--init-from``).

Fast: csv, jsonl, parquet and a local folder (the stand-in for a Hub dataset id) read the
right rows, with string, integer and ``ClassLabel`` labels whose names become the label set;
bad data or a missing checkpoint stops the run in one line before any work, leaving the output
folder as it was. Slow (the ``distributed`` nox session): a short full fine-tuning of a tiny
transformers ``BertForMaskedLM`` exported to transformers' ``BertForSequenceClassification``
and fine-tuned again from there (LoRA, ``--lr 1e-12``) starts with a held-out loss far below
the first run's fresh classifier and saves the checkpoint's weights again (merged); the same
at ``--full`` from a transformers ``BertModel``, whose pooler is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import torch
import transformers

from scratchformers.bert_mlm import BertForSequenceClassification
from scratchformers.lora.classification_data import read_labelled_texts
from scratchformers.lora.finetune import has_pooler
from scratchformers.training import train_wordpiece
from scratchformers.training.cli import main
from scratchformers.training.data import DataError
from scratchformers.training.reviews import ASPECTS, NEGATIVE, NEUTRAL, POSITIVE, VERBS

# Clauses whose adjective decides the label: a tiny BERT learns them within a hundred steps.
SENTIMENT = {**dict.fromkeys(POSITIVE, "positive"), **dict.fromkeys(NEGATIVE, "negative")}
SENTIMENT |= dict.fromkeys(NEUTRAL, "neutral")
ROWS = [
    {"review": f"the {aspect} {verb} {adjective}", "sentiment": label}
    for aspect in ASPECTS
    for verb in VERBS
    for adjective, label in SENTIMENT.items()
]


def write_table(path: Path, rows: list[dict], features: datasets.Features | None = None) -> Path:
    """``rows`` written in the format of ``path``'s suffix."""
    table = datasets.Dataset.from_list(rows, features=features)
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        table.to_parquet(path)
    return path


def options(dataset: Path, **changes: object) -> Namespace:
    values = {"eval_dataset": None, "eval_fraction": 0.2, "text_column": "review"}
    return Namespace(**{"dataset": str(dataset), "label_column": "sentiment", **values, **changes})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_each_file_format_reads_the_right_rows(tmp_path: Path, suffix: str) -> None:
    rows = ROWS[:60]
    texts = read_labelled_texts(options(write_table(tmp_path / f"data{suffix}", rows)))
    assert texts.names == ["negative", "neutral", "positive"]
    read = dict(
        zip(
            texts.train_texts + texts.held_out_texts,
            texts.train_labels + texts.held_out_labels,
            strict=True,
        )
    )
    assert read == {row["review"]: row["sentiment"] for row in rows}
    assert 0 < len(texts.held_out_texts) < 30
    assert texts.label_ids(["positive", "negative"]) == [2, 0]


def test_integer_labels_and_an_eval_file(tmp_path: Path) -> None:
    stars = {"negative": 1, "neutral": 5, "positive": 10}
    numbered = [{"review": row["review"], "stars": stars[row["sentiment"]]} for row in ROWS]
    train = write_table(tmp_path / "train.jsonl", numbered[:80])
    held = write_table(tmp_path / "held.csv", numbered[80:90])
    texts = read_labelled_texts(options(train, eval_dataset=str(held), label_column="stars"))
    # Integers in numerical order (not 1, 10, 5), named by their digits: config.id2label's.
    assert texts.names == ["1", "5", "10"] and len(texts.train_texts) == 80
    assert texts.held_out_texts == [row["review"] for row in numbered[80:90]]
    assert texts.held_out_labels == [str(row["stars"]) for row in numbered[80:90]]
    # A checkpoint that names the same labels in another order keeps its order (and its head).
    assert texts.ordered_as(["10", "5", "1"]).label_ids(["1", "10"]) == [2, 0]


def test_a_local_dataset_folder_reads_like_a_hub_id(tmp_path: Path) -> None:
    folder = tmp_path / "my-reviews"
    folder.mkdir()
    # A ClassLabel column (a Hub dataset's labels): its own names, in its own order.
    features = datasets.Features(
        {
            "review": datasets.Value("string"),
            "sentiment": datasets.ClassLabel(names=["positive", "negative", "neutral"]),
        }
    )
    write_table(folder / "train.parquet", ROWS[:50], features)
    write_table(folder / "validation.parquet", ROWS[50:60], features)
    texts = read_labelled_texts(options(folder, eval_dataset=str(folder)))
    assert texts.names == ["positive", "negative", "neutral"]
    assert texts.train_texts == [row["review"] for row in ROWS[:50]]
    assert texts.held_out_labels == [row["sentiment"] for row in ROWS[50:60]]


def test_rows_without_a_label_or_of_one_class_are_refused(tmp_path: Path) -> None:
    missing = [dict(row) for row in ROWS[:20]]
    missing[4]["sentiment"] = None
    with pytest.raises(DataError, match=r"row 5 has no 'sentiment' \(its text: 'the battery"):
        read_labelled_texts(options(write_table(tmp_path / "missing.jsonl", missing)))
    floats = [{"review": row["review"], "sentiment": 0.5} for row in ROWS[:20]]
    with pytest.raises(DataError, match=r"row 1 is float 0.5; labels must be strings or integers"):
        read_labelled_texts(options(write_table(tmp_path / "floats.jsonl", floats)))


def earlier_run(folder: Path) -> dict[str, bytes]:
    """A finished earlier run's files in ``folder``, as they are on disk."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"recipe": "lora", "summary": {"steps": 9}}))
    (folder / "finetune.json").write_text("{}")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    return contents(folder)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def train_quietly(argv: list[str]) -> tuple[int, str, str]:
    """``scratchformers train lora argv`` in this process: the exit code, stdout, stderr."""
    from accelerate.state import AcceleratorState

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["train", "lora", *argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return code, out.getvalue(), err.getvalue()


def test_bad_data_or_checkpoint_stops_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No base in outputs/ here: a run that got as far as the default base would pretrain one.
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "run"
    before = earlier_run(output)
    good = write_table(tmp_path / "good.csv", ROWS[:60])
    one_class = write_table(tmp_path / "one.csv", [r for r in ROWS if r["sentiment"] == "neutral"])
    empty = tmp_path / "empty.csv"
    empty.write_text("review,sentiment\n")
    columns = ["--text-column", "review", "--label-column", "sentiment"]
    cases = {
        "no column 'text' \\(its columns: review, sentiment\\); name the right one with "
        "--text-column": ["--dataset", str(good)],
        "--label-column 'sentiment' of --dataset .*one.csv holds one class \\('neutral'\\)": [
            "--dataset",
            str(one_class),
            *columns,
        ],
        "--eval-dataset .*empty.csv (holds no rows|could not be read)": [
            "--dataset",
            str(good),
            "--eval-dataset",
            str(empty),
            *columns,
        ],
        "--eval-fraction 0.001 .* leaves the held-out part empty": [
            "--dataset",
            str(good),
            "--eval-fraction",
            "0.001",
            *columns,
        ],
        "--init-from .*nowhere does not exist": [
            "--dataset",
            str(good),
            *columns,
            "--init-from",
            str(tmp_path / "nowhere"),
        ],
    }
    for message, flags in cases.items():
        code, out, err = train_quietly(["--output-dir", str(output), "--overwrite", *flags])
        assert code == 2, (message, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and re.search(message, lines[0]), (message, err)
        assert "pretraining" not in out and "first evaluation" not in out, out
        assert contents(output) == before, message
    assert not (tmp_path / "outputs").exists()


def test_a_damaged_base_weights_file_is_left_for_the_load_to_name(tmp_path: Path) -> None:
    """The pooler check reads the weights' headers: a damaged file counts as having a pooler,
    so that the load that follows raises its error naming the file and the fault."""
    transformers.BertModel(
        transformers.BertConfig(
            vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert has_pooler(tmp_path)
    with pytest.raises(OSError, match=rf"^{re.escape(str(weights))} is truncated"):
        BertForSequenceClassification.from_pretrained(tmp_path)


# -- end to end --------------------------------------------------------------------------------

STEPS = 100


def tiny_bert(folder: Path, model_class: type, tokenizer: object) -> Path:
    """A tiny transformers BERT of ``model_class`` for ``tokenizer``, saved with it."""
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(5)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def command(argv: list[str], log: Path | None = None) -> None:
    """One ``scratchformers`` command in this process, its printed lines kept in ``log``."""
    from accelerate.state import AcceleratorState

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        if log is not None:
            log.write_text(out.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``mlm``: a tiny transformers BertForMaskedLM with a WordPiece tokenizer; ``fresh``: 100
    steps of full fine-tuning from it on a csv of labelled clauses; ``classifier``: that run
    exported to transformers' BertForSequenceClassification; ``from-classifier``: 2 LoRA steps
    at lr 1e-12 from the export, on the same csv; ``bare``: a tiny transformers BertModel (with
    its pooler); ``from-bare``: 2 full steps at lr 1e-12 from it on a jsonl of integer labels.
    The printed lines of each training run are in ``<name>.log`` beside it."""
    root = tmp_path_factory.mktemp("finetune-lora")
    folders = {
        name: root / name
        for name in ("mlm", "fresh", "classifier", "from-classifier", "bare", "from-bare")
    }
    texts = write_table(root / "clauses.csv", ROWS)
    stars = [{"text": row["review"], "label": len(row["sentiment"]) % 2} for row in ROWS]
    numbered = write_table(root / "stars.jsonl", stars)
    data = ["--dataset", str(texts), "--text-column", "review", "--label-column", "sentiment"]
    keep = ["--lr", "1e-12", "--max-steps", "2", "--eval-every", "2", "--batch-size", "32"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
        tokenizer = train_wordpiece([row["review"] for row in ROWS], 200)
        tiny_bert(folders["mlm"], transformers.BertForMaskedLM, tokenizer)
        tiny_bert(folders["bare"], transformers.BertModel, tokenizer)

        def train(name: str, argv: list[str]) -> None:
            output = ["--output-dir", str(folders[name])]
            command(["train", "lora", *output, *argv], log=root / f"{name}.log")

        schedule = ["--max-steps", str(STEPS), "--eval-every", str(STEPS), "--warmup-steps", "10"]
        train("fresh", ["--init-from", str(folders["mlm"]), "--full", *data, *schedule])
        command(["export", str(folders["fresh"]), str(folders["classifier"])])
        train("from-classifier", ["--init-from", str(folders["classifier"]), *data, *keep])
        train(
            "from-bare",
            ["--init-from", str(folders["bare"]), "--full", "--dataset", str(numbered), *keep],
        )
    yield folders


def summary(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())["summary"]


def assert_same_weights(saved: Path, checkpoint: Path, skip: tuple[str, ...] = ()) -> None:
    """Every weight in ``saved`` (a transformers BertForSequenceClassification once exported)
    is ``checkpoint``'s, within 1e-6, but those starting with ``skip``."""
    saved_model = transformers.AutoModelForSequenceClassification.from_pretrained(saved)
    theirs = transformers.AutoModel.from_pretrained(checkpoint).state_dict()
    ours = saved_model.state_dict()
    if not any(name.startswith("bert.") for name in theirs):  # a bare BertModel's names
        theirs = {f"bert.{name}": tensor for name, tensor in theirs.items()}
    compared = 0
    for name, tensor in theirs.items():
        if name.startswith(skip) or name not in ours:
            continue
        assert float((ours[name] - tensor).abs().max()) <= 1e-6, name
        compared += 1
    assert compared >= 20, compared


@pytest.mark.slow
def test_a_pretrained_classifier_starts_far_below_a_fresh_one(runs: dict[str, Path]) -> None:
    fresh, pretrained = summary(runs["fresh"]), summary(runs["from-classifier"])
    assert pretrained["first_eval_loss"] < 0.5 * fresh["first_eval_loss"], (pretrained, fresh)
    log = (runs["fresh"].parent / "from-classifier.log").read_text()
    assert "a transformers bert folder" in log and "starting fresh" not in log, log
    assert "labels (training rows): negative (" in log and "held-out texts" in log
    first_log = (runs["fresh"].parent / "fresh.log").read_text()
    assert "new, starting fresh: bert.pooler.dense, classifier" in first_log


@pytest.mark.slow
def test_a_lora_start_at_a_tiny_rate_saves_the_checkpoints_weights(runs: dict[str, Path]) -> None:
    from scratchformers.bert_mlm import BertForSequenceClassification

    folder = runs["from-classifier"]
    # The saved folder is the merged model: with lr 1e-12 the merge adds ~nothing.
    ours = BertForSequenceClassification.from_pretrained(folder).state_dict()
    theirs = BertForSequenceClassification.from_pretrained(runs["classifier"]).state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert float((ours[name] - tensor).abs().max()) <= 1e-6, name
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert (folder / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_a_bare_bert_keeps_its_pooler_and_exports(runs: dict[str, Path], tmp_path: Path) -> None:
    folder = runs["from-bare"]
    log = (runs["fresh"].parent / "from-bare.log").read_text()
    assert (
        "new, starting fresh: classifier" in log
        and "pooler" not in log.split("fresh:")[1].split("\n")[0]
    )
    assert main(["export", str(folder), str(tmp_path / "exported")]) == 0
    assert_same_weights(tmp_path / "exported", runs["bare"], skip=("classifier.",))
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["model_type"] == "bert" and exported["id2label"] == {"0": "0", "1": "1"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    checkpoints = transformers.AutoTokenizer.from_pretrained(runs["bare"])
    assert tokenizer(ROWS[0]["review"])["input_ids"] == checkpoints(ROWS[0]["review"])["input_ids"]


@pytest.mark.slow
def test_eval_rescores_a_run_on_the_users_texts(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["eval", str(runs["from-classifier"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = summary(runs["from-classifier"])["final_metrics"]
    for name in ("eval_loss", "accuracy", "baseline_accuracy"):
        assert metrics[name] == pytest.approx(final[name], abs=1e-5), name
