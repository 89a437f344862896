"""The encdec recipe's parts: the tokenizer saved with the run, the batches, the label
smoothed loss, and the figures against copying the source. (The end-to-end run of the tiny
preset joins once the preset is tuned: issue 17.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scratchformers.training import EvalResults, load_recipe, parse_settings

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
    loss = recipe.compute_loss(model, batch)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
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
    assert [t["correct"] for t in recipe.last_translations] == [True] * 8 + [False] * 8
