"""Fine-tuning the encdec recipe on the user's pairs (``--dataset``, ``--eval-dataset``,
``--source-column``/``--target-column``, ``--source-lang``/``--target-lang``) from a real
checkpoint (``--init-from``: a transformers BART or Marian folder with its tokenizer beside it).

Fast: every file format reads the right pairs, the recipe holds pairs out by content, and bad
data or a missing checkpoint stops the run in one line before any work, leaving the output
folder as it was. Slow (the ``distributed`` nox session): a short run from scratch on a file of
pairs, exported to transformers' BART and fine-tuned from there, starts with a held-out loss
far below the fresh start's and, at ``--lr 1e-12``, saves the checkpoint's weights again; the
same from a tiny transformers Marian folder, whose export is a MarianMTModel folder with the
checkpoint's tokenizer beside it.

sentencepiece is not installed here, so the Marian folder carries a fast word-level tokenizer
(saved with ``save_pretrained``) instead of opus-mt's sentencepiece one: the recipe reads
either through ``AutoTokenizer``.
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

from scratchformers.encdec.number_pairs import english, french
from scratchformers.encdec.parallel_data import PairLayout, read_pairs, train_and_held_out_pairs
from scratchformers.training import load_recipe, parse_settings
from scratchformers.training.cli import main
from scratchformers.training.data import DataError

# Every number below a thousand, in English and French words: short pairs a tiny model learns
# within a few hundred steps.
NUMBERS = [{"source": english(n), "target": french(n)} for n in range(1, 1000)]
# A small model, so that the slow runs take seconds.
SHAPE = ["--width", "64", "--depth", "1", "--decoder-depth", "1", "--heads", "2"]
SHAPE += ["--ffn-dim", "128", "--vocab-size", "400", "--batch-size", "32"]


def write_table(path: Path, rows: list[dict]) -> Path:
    """``rows`` written in the format of ``path``'s suffix."""
    table = datasets.Dataset.from_list(rows)
    if path.suffix in (".csv", ".tsv"):
        table.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        table.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_each_file_format_reads_the_right_pairs(tmp_path: Path, suffix: str) -> None:
    # Other column names than the defaults, an extra column, and a comma and quotes in a text.
    rows = [{"id": i, "en": p["source"], "fr": p["target"]} for i, p in enumerate(NUMBERS[:40])]
    rows[3]["en"], rows[3]["fr"] = 'four, "quoted"', "quatre, « cité »"
    file = write_table(tmp_path / f"pairs{suffix}", rows)
    pairs = read_pairs(str(file), "--dataset", PairLayout(source_column="en", target_column="fr"))
    assert pairs == [{"source": row["en"], "target": row["fr"]} for row in rows]


def test_a_translation_dataset_is_read_at_two_languages(tmp_path: Path) -> None:
    # A local folder laid out as a Hub translation dataset: the stand-in for a dataset id.
    folder = tmp_path / "opus-like"
    folder.mkdir()
    rows = [{"translation": {"en": p["source"], "fr": p["target"]}} for p in NUMBERS[:30]]
    write_table(folder / "train.jsonl", rows)
    write_table(folder / "validation.jsonl", rows[:5])
    layout = PairLayout(source_lang="en", target_lang="fr")
    assert read_pairs(str(folder), "--dataset", layout) == NUMBERS[:30]
    assert read_pairs(str(folder), "--eval-dataset", layout, split="validation") == NUMBERS[:5]
    backwards = read_pairs(str(folder), "--dataset", PairLayout(source_lang="fr", target_lang="en"))
    assert backwards[0] == {"source": NUMBERS[0]["target"], "target": NUMBERS[0]["source"]}
    with pytest.raises(DataError, match=r"'translation' column .*languages en, fr.*--source-lang"):
        read_pairs(str(folder), "--dataset", PairLayout())
    with pytest.raises(DataError, match=r"--target-lang 'de' is not in it .*languages: en, fr"):
        read_pairs(str(folder), "--dataset", PairLayout(source_lang="en", target_lang="de"))


def test_pairs_are_held_out_by_content_or_read_from_the_eval_file(tmp_path: Path) -> None:
    file = write_table(tmp_path / "pairs.tsv", NUMBERS[:200])
    options = Namespace(dataset=str(file), eval_dataset=None, eval_fraction=0.1)
    train, held, _ = train_and_held_out_pairs(options, PairLayout())
    assert 0 < len(held) < 40 and len(train) + len(held) == 200
    assert not {p["source"] for p in held} & {p["source"] for p in train}
    # The same pairs in another order and with more of them: every held-out pair stays held out.
    more = write_table(tmp_path / "more.tsv", NUMBERS[:300][::-1])
    _, held_more, _ = train_and_held_out_pairs(
        Namespace(dataset=str(more), eval_dataset=None, eval_fraction=0.1), PairLayout()
    )
    assert all(pair in held_more for pair in held)
    options.eval_dataset = str(write_table(tmp_path / "eval.jsonl", NUMBERS[500:510]))
    train, held, _ = train_and_held_out_pairs(options, PairLayout())
    assert (len(train), held) == (200, NUMBERS[500:510])


def test_the_recipe_tokenizes_the_users_pairs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the tokenizer cache
    file = write_table(tmp_path / "pairs.csv", NUMBERS[:120])
    recipe = load_recipe("encdec")
    flags = ["--dataset", str(file), "--eval-fraction", "0.2", "--vocab-size", "300"]
    settings = parse_settings(recipe, [*flags, "--max-positions", "12"])
    data = recipe.build_data(settings)
    tokenizer = data.processor
    assert len(data.train) + len(data.eval) == 120
    for example in (data.eval[0], data.eval[len(data.eval) - 1]):
        pair = recipe.eval_pairs[example["index"]]
        assert example["labels"][-1] == tokenizer.eos_token_id
        if len(tokenizer(pair["target"])["input_ids"]) <= 12:
            assert tokenizer.decode(example["labels"], skip_special_tokens=True) == pair["target"]
    # Long pairs are cut to the model's positions, keeping their </s>.
    assert max(len(e["input_ids"]) for e in data.train) == 12
    assert all(e["input_ids"][-1] == tokenizer.eos_token_id for e in data.train)
    assert recipe.direction == "source -> target" and recipe.bleu_tokenize == "13a"


def earlier_run(folder: Path) -> dict[str, bytes]:
    """A finished earlier run's files in ``folder``, as they are on disk."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"recipe": "encdec", "summary": {"steps": 9}}))
    (folder / "translations.json").write_text("{}")
    (folder / "metrics.jsonl").write_text('{"step": 0}\n')
    return contents(folder)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def train_quietly(argv: list[str]) -> tuple[int, str, str]:
    """``scratchformers train encdec argv`` in this process: the exit code, stdout, stderr."""
    from accelerate.state import AcceleratorState

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["train", "encdec", *argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return code, out.getvalue(), err.getvalue()


def test_bad_data_or_checkpoint_stops_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    output = tmp_path / "run"
    before = earlier_run(output)
    good = write_table(tmp_path / "good.tsv", NUMBERS[:50])
    renamed = write_table(
        tmp_path / "renamed.tsv", [{"en": p["source"], "fr": p["target"]} for p in NUMBERS[:50]]
    )
    holed = [dict(pair) for pair in NUMBERS[:50]]
    holed[6]["target"] = "  "
    holed = write_table(tmp_path / "holed.jsonl", holed)
    # A header and no rows. (tables.read_table words this, and an empty .jsonl, with datasets'
    # own error: "could not be read ... corresponds to no data", not "holds no rows".)
    empty = tmp_path / "empty.tsv"
    empty.write_text("source\ttarget\n")
    cases = {
        "no column 'source' \\(its columns: en, fr\\); name the right one with --source-column": [
            "--dataset",
            str(renamed),
        ],
        "row 7 has an empty target \\(its source: 'seven'\\)": ["--dataset", str(holed)],
        "--eval-dataset .*empty.tsv (holds no rows|could not be read)": [
            "--dataset",
            str(good),
            "--eval-dataset",
            str(empty),
        ],
        "--eval-fraction 0.001 .* leaves the held-out part empty": [
            "--dataset",
            str(good),
            "--eval-fraction",
            "0.001",
        ],
        "--init-from .*nowhere does not exist": [
            "--dataset",
            str(good),
            "--init-from",
            str(tmp_path / "nowhere"),
        ],
    }
    for message, flags in cases.items():
        code, out, err = train_quietly(["--output-dir", str(output), "--overwrite", *flags])
        assert code == 2, (message, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and re.search(message, lines[0]), (message, err)
        assert "tokenizer" not in out and "first evaluation" not in out, out
        assert contents(output) == before, message


# -- end to end --------------------------------------------------------------------------------

STEPS = 100
FAST = ["--lr", "3e-3", "--warmup-steps", "10"]  # the fresh run learns within its 100 steps


def tiny_marian(folder: Path, texts: list[str]) -> Path:
    """A tiny transformers MarianMTModel (opus-mt's layout: eos 0, pad as the decoder start,
    sinusoidal positions, scaled embeddings, swish) with a word-level fast tokenizer over
    ``texts`` saved beside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({word for text in texts for word in text.split()})
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2} | {w: i + 3 for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 0)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    config = transformers.MarianConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=2,
        eos_token_id=0,
        decoder_start_token_id=2,
        forced_eos_token_id=0,
    )
    torch.manual_seed(3)
    transformers.MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def command(argv: list[str], log: list[str]) -> None:
    """One ``scratchformers`` command in this process, its printed lines added to ``log``."""
    from accelerate.state import AcceleratorState

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        log.append(out.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``fresh``: 100 steps from scratch on a file of pairs; ``bart``: that run exported to
    transformers' BART; ``from-bart``: 2 steps at lr 1e-12 from the export, on the same file;
    ``marian``: a tiny transformers Marian folder with its tokenizer; ``from-marian``: 2 steps
    at lr 1e-12 from it; ``marian-export``: that run exported (a MarianMTModel folder). The
    printed lines of each training run are in ``<name>.log`` beside it."""
    root = tmp_path_factory.mktemp("finetune-encdec")
    folders = {
        name: root / name
        for name in ("fresh", "bart", "from-bart", "marian", "from-marian", "marian-export")
    }
    pairs = write_table(root / "numbers.tsv", NUMBERS)
    data = ["--dataset", str(pairs), "--eval-fraction", "0.1"]
    keep = ["--lr", "1e-12", "--max-steps", "2", "--eval-every", "2", "--batch-size", "32"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
        for name, argv in (
            ("fresh", [*SHAPE, "--max-steps", str(STEPS), "--eval-every", str(STEPS), *FAST]),
            ("from-bart", ["--init-from", str(folders["bart"]), *keep]),
            ("from-marian", ["--init-from", str(folders["marian"]), *keep]),
        ):
            if name == "from-bart":
                command(["export", str(folders["fresh"]), str(folders["bart"])], [])
            if name == "from-marian":
                tiny_marian(folders["marian"], [p[side] for p in NUMBERS for side in p])
            log: list[str] = []
            train = ["train", "encdec", "--output-dir", str(folders[name]), *data, *argv]
            command(train, log)
            (root / f"{name}.log").write_text("".join(log))
        command(["export", str(folders["from-marian"]), str(folders["marian-export"])], [])
    yield folders


def summary(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())["summary"]


def first_evaluation(folder: Path) -> dict:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return next(record for record in records if record["step"] == 0 and "eval_loss" in record)


def assert_same_weights(saved: Path, checkpoint: Path) -> None:
    """The weights in ``saved`` are ``checkpoint``'s, each within 1e-6."""
    from scratchformers.encdec import EncDecForConditionalGeneration

    ours = EncDecForConditionalGeneration.from_pretrained(saved).state_dict()
    theirs = EncDecForConditionalGeneration.from_pretrained(checkpoint).state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert float((ours[name] - tensor).abs().max()) <= 1e-6, name


@pytest.mark.slow
def test_a_pretrained_start_begins_far_below_a_fresh_one(runs: dict[str, Path]) -> None:
    fresh, pretrained = summary(runs["fresh"]), summary(runs["from-bart"])
    # The same held-out pairs (the same file, split by content), from two starting points.
    assert first_evaluation(runs["from-bart"])["step"] == 0
    assert pretrained["first_eval_loss"] < 0.5 * fresh["first_eval_loss"], (pretrained, fresh)
    assert (
        first_evaluation(runs["from-bart"])["chrf"] > first_evaluation(runs["fresh"])["chrf"] + 10
    )
    log = (runs["fresh"].parent / "from-bart.log").read_text()
    assert "a transformers bart folder" in log and "M parameters" in log
    assert "using the tokenizer of" in log and "training the BPE tokenizer" not in log
    assert "held-out pairs (source -> target)" in log
    card = (runs["from-bart"] / "README.md").read_text()
    assert "Fine-tuned" in card and "## Translation (source -> target, held-out pairs)" in card


@pytest.mark.slow
def test_a_bart_start_at_a_tiny_rate_saves_the_checkpoints_weights(runs: dict[str, Path]) -> None:
    assert_same_weights(runs["from-bart"], runs["bart"])
    assert summary(runs["from-bart"])["steps"] == 2


@pytest.mark.slow
def test_a_marian_start_keeps_its_weights_and_tokenizer_and_exports_to_marian(
    runs: dict[str, Path],
) -> None:
    assert_same_weights(runs["from-marian"], runs["marian"])
    log = (runs["fresh"].parent / "from-marian.log").read_text()
    assert "a transformers marian folder" in log
    exported = runs["marian-export"]
    assert json.loads((exported / "config.json").read_text())["model_type"] == "marian"
    theirs = transformers.MarianMTModel.from_pretrained(exported).eval()
    original = transformers.MarianMTModel.from_pretrained(runs["marian"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    checkpoints = transformers.AutoTokenizer.from_pretrained(runs["marian"])
    sources = [pair["source"] for pair in NUMBERS[:4]]
    assert tokenizer(sources)["input_ids"] == checkpoints(sources)["input_ids"]
    inputs = tokenizer(sources, padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = theirs.generate(**inputs, max_new_tokens=5, num_beams=1, do_sample=False)
        expected = original.generate(**inputs, max_new_tokens=5, num_beams=1, do_sample=False)
    assert torch.equal(generated, expected)


@pytest.mark.slow
def test_eval_rescores_a_run_on_the_users_pairs(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # The run's held-out pairs again (the same file, the same split by content), with the
    # tokenizer saved in the folder: the checkpoint is not needed any more.
    capsys.readouterr()
    assert main(["eval", str(runs["from-marian"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = summary(runs["from-marian"])["final_metrics"]
    for name in ("eval_loss", "chrf", "exact_match"):
        assert metrics[name] == pytest.approx(final[name], abs=1e-5), name
