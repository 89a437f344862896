"""The encdec recipe: its parts (the tokenizer saved with the run, the batches, the label
smoothed loss, the figures against copying the source), and end to end a short run of the tiny
preset that must translate held-out numbers far better than copying them, evaluate again with
``scratchformers eval``, translate through the Auto classes and ``translate``, and export to
transformers' BART with the same logits and tokens.

The end-to-end tests are marked ``slow``: they run in the ``distributed`` nox session (part of
the default run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scratchformers.training import EvalResults, load_recipe, parse_settings
from scratchformers.training.cli import main

FEW = ["--num-train-pairs", "300", "--num-eval-pairs", "16"]


@pytest.fixture
def small_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The recipe and its data on a few pairs (the tokenizer cached under ``tmp_path``)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe = load_recipe("encdec")
    settings = parse_settings(recipe, [*FEW, "--vocab-size", "300", "--batch-size", "8"])
    return recipe, settings, recipe.build_data(settings)


def test_the_tokenizer_ends_every_text_and_reloads_from_the_folder(
    small_data, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    recipe, _, data = small_data
    tokenizer = data.processor
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("trois cent quarante-deux")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "trois cent quarante-deux"
    tokenizer.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert (
        again("dreihundertzweiundvierzig")["input_ids"]
        == tokenizer("dreihundertzweiundvierzig")["input_ids"]
    )
    # Every example is its pair, tokenized the same way.
    example, pair = data.eval[3], recipe.eval_pairs[3]
    assert tokenizer.decode(example["labels"], skip_special_tokens=True) == pair["target"]
    assert tokenizer.decode(example["input_ids"], skip_special_tokens=True) == pair["source"]


def test_batches_pad_and_the_loss_is_label_smoothed(small_data) -> None:
    recipe, settings, data = small_data
    batch = data.collate([data.train[0], data.train[1], data.train[2]])
    lengths = [len(data.train[i]["input_ids"]) for i in range(3)]
    assert batch["attention_mask"].sum(-1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # <pad> is 0
    targets = [len(data.train[i]["labels"]) for i in range(3)]
    assert (batch["labels"] != -100).sum(-1).tolist() == targets
    assert batch["index"].tolist() == [0, 1, 2]

    model = recipe.build_model(settings, data).eval()
    labels = batch["labels"]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
    ).logits
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1)
    plain = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    items = recipe.count_loss_items(batch)
    assert items == sum(targets)
    # The loss over the step's items: with this batch alone, its mean.
    loss = recipe.compute_loss(model, batch, items)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    doubled = recipe.compute_loss(model, batch, 2 * items)
    assert float(doubled) == pytest.approx(float(expected) / 2, rel=1e-5)
    # An untrained model's logits are nearly uniform, so smoothing moves the loss only a little.
    assert float(loss) != pytest.approx(float(plain), rel=1e-6)
    assert recipe.count_items(batch) == sum(lengths) + sum(targets)


def test_the_figures_score_translations_against_copying_the_source(small_data) -> None:
    recipe, _, _ = small_data
    pairs = recipe.eval_pairs
    index = torch.arange(len(pairs))
    right = [pair["target"] for pair in pairs]
    perfect = recipe.eval_metrics(
        EvalResults(means={"loss": 0.5}, gathered={"translations": right, "index": index})
    )
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["exact_match"] == 1.0
    assert perfect["chrf"] == pytest.approx(100.0) and perfect["eval_loss"] == 0.5
    # English and French number words share almost nothing: copying scores near zero.
    assert perfect["copy_bleu"] < 5 and perfect["copy_exact_match"] == 0.0
    half = right[: len(right) // 2] + ["mille"] * (len(right) - len(right) // 2)
    some = recipe.eval_metrics(
        EvalResults(means={"loss": 0.5}, gathered={"translations": half, "index": index})
    )
    assert some["exact_match"] == 0.5
    assert 5 < some["bleu"] < 100
    translations = recipe.translations(
        EvalResults(means={"loss": 0.5}, gathered={"translations": half, "index": index})
    )
    assert [t["correct"] for t in translations] == [True] * 8 + [False] * 8
    assert [t["target"] for t in translations] == right


STEPS = 300
PAIRS = ["--num-train-pairs", "8000", "--num-eval-pairs", "192"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The output directory of 300 steps of the encdec recipe (tiny preset, 8,000 training
    pairs), run in this process; accelerate's process-wide state is reset afterwards."""
    from accelerate.state import AcceleratorState

    root = tmp_path_factory.mktemp("encdec")
    output_dir = root / "run"
    argv = ["train", "encdec", "--output-dir", str(output_dir), "--max-steps", str(STEPS)]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
            assert main([*argv, *PAIRS, "--eval-every", str(STEPS)]) == 0
        yield output_dir
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def report(folder: Path) -> dict:
    return json.loads((folder / "translations.json").read_text())


@pytest.mark.slow
def test_held_out_numbers_are_translated_far_better_than_copying(trained: Path) -> None:
    summary = json.loads((trained / "run.json").read_text())["summary"]
    assert summary["steps"] == STEPS
    final, figures = summary["final_metrics"], report(trained)
    assert final["copy_exact_match"] == 0.0 and final["copy_bleu"] < 5, final
    assert final["bleu"] > final["copy_bleu"] + 50, final
    assert final["exact_match"] > 0.5, final
    for name in ("bleu", "chrf", "exact_match", "copy_bleu"):
        assert figures[name] == pytest.approx(final[name], abs=1e-9)
    translations = figures["translations"]
    assert figures["eval_pairs"] == len(translations) == 192
    right = [t for t in translations if t["correct"]]
    assert len(right) / len(translations) == pytest.approx(final["exact_match"])
    assert (trained / "bleu.png").stat().st_size > 0
    card = (trained / "README.md").read_text()
    assert "## Translation (English -> French, held-out numbers)" in card


@pytest.mark.slow
def test_eval_reproduces_the_runs_bleu(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for name in ("bleu", "exact_match", "eval_loss"):
        assert metrics[name] == pytest.approx(report(trained)[name], abs=1e-5), name


@pytest.mark.slow
def test_translate_through_the_auto_classes_and_export_to_bart(
    trained: Path, tmp_path: Path
) -> None:
    import transformers

    import scratchformers.encdec  # noqa: F401  (registers the model with the Auto classes)
    from scratchformers.encdec import translate

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(trained).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(trained)
    examples = report(trained)["translations"][:6]
    sources = [example["source"] for example in examples]
    together = translate(model, tokenizer, sources)  # one padded batch
    assert together == [translate(model, tokenizer, [source])[0] for source in sources]
    assert together == [example["translation"] for example in examples]

    assert main(["export", str(trained), str(tmp_path / "bart")]) == 0
    theirs = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "bart").eval()
    inputs = tokenizer(sources, padding=True, return_tensors="pt")
    assert not bool(inputs["attention_mask"].all())  # the batch really is padded
    targets = tokenizer([example["target"] for example in examples], padding=True)["input_ids"]
    labels = torch.tensor(targets)
    labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
    with torch.no_grad():
        ours_out = model(**inputs, labels=labels)
        theirs_out = theirs(**inputs, labels=labels)
    assert float((ours_out.logits - theirs_out.logits).abs().max()) <= 1e-4
    assert float((ours_out.loss - theirs_out.loss).abs()) <= 1e-5
    assert translate(theirs, tokenizer, sources) == together
