"""End to end for the lora recipe: pretrain a bert-mlm base with its tiny preset, fine-tune it
with LoRA on the generated reviews in-process, and check that it learned far above the majority
class, that peft loads the saved adapter onto the base and gives the merged model's logits,
that the folder evaluates again with ``scratchformers eval``, runs in
``pipeline("text-classification")`` and exports to transformers' BERT, and that a full
fine-tuning run set beside it reports both side by side.

Marked ``slow``: it runs in the ``distributed`` nox session (part of the default run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

from scratchformers.training.cli import main

pytestmark = pytest.mark.slow

# The bert-mlm tiny preset in full (800 steps), the base the lora preset is meant for. On
# 200-step bases LoRA's 600 steps below ended anywhere from 46.9% to 64.4% (one seed stayed
# near the 1/3 plateau; CI's CPU gave 52.4%), on two 400-step bases 60.8% to 69.6%, on three
# full-preset bases 67.5% to 75.9%: far from this file's threshold of about 53%.
BASE_STEPS = 800
STEPS = 600
REVIEWS = ["--num-train-reviews", "8000", "--num-eval-reviews", "600"]
TEXTS = [
    "the screen is good but the battery is bad",
    "although the camera is not bad, the price was terrible",
    "the case is okay",
]


def run(argv: list[str]) -> None:
    """One ``scratchformers`` command in this process; Accelerate's process-wide state is
    reset afterwards, so the next run starts clean."""
    from accelerate.state import AcceleratorState

    try:
        assert main(argv) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A base from the bert-mlm tiny preset, the lora recipe's tiny preset on it (600 steps,
    8,000 reviews), and a short full fine-tuning on the same data compared with it."""
    root = tmp_path_factory.mktemp("lora")
    folders = {name: root / name for name in ("base", "lora", "full")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
        run(
            [
                "train",
                "bert-mlm",
                "--output-dir",
                str(folders["base"]),
                "--max-steps",
                str(BASE_STEPS),
            ]
        )
    # float32: the folder's eval must give the run's accuracy to 1e-6, and the run evaluates
    # base + adapter while the folder holds the merged weights; under bf16 autocast the two
    # round differently and a near-tie review can flip.
    base = ["--base", str(folders["base"]), *REVIEWS, "--mixed-precision", "no"]
    run(["train", "lora", "--output-dir", str(folders["lora"]), *base, "--max-steps", str(STEPS)])
    full = ["--full", "--max-steps", "100", "--eval-every", "100"]
    compared = ["--compare-with", str(folders["lora"])]
    run(["train", "lora", "--output-dir", str(folders["full"]), *base, *full, *compared])
    yield folders


def report(folder: Path) -> dict:
    return json.loads((folder / "finetune.json").read_text())


def test_lora_learns_far_above_the_majority_class(runs: dict[str, Path]) -> None:
    folder = runs["lora"]
    summary = json.loads((folder / "run.json").read_text())["summary"]
    assert summary["steps"] == STEPS
    figures = report(folder)
    assert figures["mode"] == "lora"
    assert abs(figures["baseline_accuracy"] - 1 / 3) < 0.03, figures
    assert figures["accuracy"] > figures["baseline_accuracy"] + 0.2, figures
    assert figures["accuracy"] == pytest.approx(summary["final_metrics"]["accuracy"], abs=1e-6)
    trainable, total = figures["trainable_parameters"], figures["total_parameters"]
    assert 0 < trainable < total and figures["trainable_fraction"] == trainable / total
    assert figures["trainable_fraction"] < 0.1, figures
    assert trainable == summary["trainable_parameters"]
    adapter_bytes = sum(p.stat().st_size for p in (folder / "adapter").iterdir())
    assert figures["adapter_bytes"] == adapter_bytes
    assert figures["checkpoint_bytes"] == (folder / "model.safetensors").stat().st_size
    assert adapter_bytes < figures["checkpoint_bytes"] / 5, figures
    assert (folder / "confusion_matrix.png").stat().st_size > 0
    card = (folder / "README.md").read_text()
    assert "## Fine-tuning" in card and "import scratchformers.bert_mlm" in card


def batch(folder: Path) -> dict[str, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert not bool(encoded["attention_mask"].all())  # the batch really is padded
    return encoded


def test_peft_loads_the_adapter_and_gives_the_merged_models_logits(
    runs: dict[str, Path],
) -> None:
    import peft

    from scratchformers.bert_mlm import BertForSequenceClassification

    merged = BertForSequenceClassification.from_pretrained(runs["lora"]).eval()
    base = BertForSequenceClassification.from_pretrained(runs["base"], num_labels=3)
    theirs = peft.PeftModel.from_pretrained(base, runs["lora"] / "adapter").eval()
    inputs = batch(runs["lora"])
    with torch.no_grad():
        ours, reference = merged(**inputs).logits, theirs(**inputs).logits
        with theirs.disable_adapter():
            unadapted = theirs(**inputs).logits
    assert float((ours - reference).abs().max()) <= 1e-5
    assert float((ours - unadapted).abs().max()) > 1e-2  # the adapter changes the answers


def test_the_folder_evaluates_classifies_and_exports(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import scratchformers.bert_mlm  # noqa: F401  (registers the model with the Auto classes)

    folder = runs["lora"]
    capsys.readouterr()
    assert main(["eval", str(folder), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(report(folder)["accuracy"], abs=1e-6)

    classify = transformers.pipeline("text-classification", model=str(folder))
    answers = classify(TEXTS)
    assert {answer["label"] for answer in answers} <= {"negative", "neutral", "positive"}

    assert main(["export", str(folder), str(tmp_path / "exported")]) == 0
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "exported")
    ours = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    inputs = batch(folder)
    with torch.no_grad():
        difference = (ours.eval()(**inputs).logits - theirs.eval()(**inputs).logits).abs()
    assert float(difference.max()) <= 1e-4


def test_a_full_fine_tuning_reports_itself_beside_lora(runs: dict[str, Path]) -> None:
    figures = report(runs["full"])
    assert figures["mode"] == "full" and figures["adapter_bytes"] is None
    assert figures["trainable_fraction"] == 1.0
    assert not (runs["full"] / "adapter").exists()
    side_by_side = figures["comparison"]
    assert side_by_side["lora"]["accuracy"] == report(runs["lora"])["accuracy"]
    assert side_by_side["full"]["accuracy"] == figures["accuracy"]
    assert side_by_side["lora"]["folder"] == str(runs["lora"])
    assert (runs["full"] / "lora_vs_full.png").stat().st_size > 0
    card = (runs["full"] / "README.md").read_text()
    assert f"| LoRA ({runs['lora']}) | full fine-tuning (this run) |" in card
