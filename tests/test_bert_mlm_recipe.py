"""End to end for bert-mlm: pretrain the recipe briefly in-process, fill masks with the result
through ``pipeline("fill-mask")``, hand it to transformers' BertForMaskedLM, and evaluate it
with ``scratchformers eval`` on one process and on two.

Marked ``slow``: it runs in the ``distributed`` nox session (part of the default run).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import transformers

if TYPE_CHECKING:
    from conftest import Launched

pytestmark = pytest.mark.slow

SENTENCE = "A list is a mutable [MASK] of items."


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The output directory of 300 steps of the bert-mlm recipe (tiny preset, the shared
    offline corpus), run in this process; accelerate's process-wide state is reset afterwards
    so the tests start clean (a command they run builds its own)."""
    from accelerate.state import AcceleratorState

    from scratchformers.bert_mlm.train import main

    output_dir = tmp_path_factory.mktemp("bert") / "run"
    try:
        assert main(["--output-dir", str(output_dir), "--max-steps", "300"]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    yield output_dir


def test_pretraining_beats_the_most_frequent_token(trained: Path) -> None:
    summary = json.loads((trained / "run.json").read_text())["summary"]
    assert summary["steps"] == 300
    final = summary["final_metrics"]
    assert final["eval_loss"] < summary["first_eval_loss"], summary
    assert final["masked_accuracy"] > final["baseline_accuracy"] + 0.03, final


def test_fill_mask_pipeline_runs_on_our_model(trained: Path) -> None:
    from scratchformers.bert_mlm import BertForMaskedLM

    model = transformers.AutoModelForMaskedLM.from_pretrained(trained)
    assert type(model) is BertForMaskedLM
    tokenizer = transformers.AutoTokenizer.from_pretrained(trained)
    fill = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer)
    predictions = fill(SENTENCE, top_k=4)
    assert len(predictions) == 4
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert all("[MASK]" not in p["sequence"] for p in predictions)


def test_the_trained_model_fills_masks_the_same_in_transformers(
    trained: Path, tmp_path: Path
) -> None:
    from scratchformers.bert_mlm import BertForMaskedLM, export_to_transformers

    ours = BertForMaskedLM.from_pretrained(trained).eval()
    exported = export_to_transformers(ours, tmp_path / "exported")
    transformers.AutoTokenizer.from_pretrained(trained).save_pretrained(exported)
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(exported).eval()
    assert type(theirs) is transformers.BertForMaskedLM

    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    batch = tokenizer([SENTENCE, "The [MASK] returns a value."], return_tensors="pt", padding=True)
    assert not bool(batch["attention_mask"].all())  # the batch really is padded
    with torch.no_grad():
        difference = (ours(**batch).logits - theirs(**batch).logits).abs()
    real = batch["attention_mask"].bool()
    assert float(difference[real].max()) <= 1e-4

    ours_fill = transformers.pipeline("fill-mask", model=ours, tokenizer=tokenizer)
    theirs_fill = transformers.pipeline("fill-mask", model=theirs, tokenizer=tokenizer)
    assert [p["token"] for p in ours_fill(SENTENCE)] == [p["token"] for p in theirs_fill(SENTENCE)]


def test_eval_on_two_processes_gives_the_one_process_figures(
    trained: Path,
    capsys: pytest.CaptureFixture[str],
    launch_two_processes: Callable[..., Launched],
) -> None:
    """``scratchformers eval`` under ``accelerate launch`` with two CPU processes gives the
    figures of one process, on a held-out set that does not split into whole batches of both
    processes. Each process's loss is its mean over its half of a batch, whose masked tokens
    are not half of the batch's: the halves weigh as many tokens as they hold. In float32
    (``--dtype``): the run's bf16 autocast rounds a half-batch's matmuls otherwise."""
    from scratchformers.training.cli import main

    card = (trained / "README.md").read_text()
    held_out = int(re.search(r"([\d,]+) held-out blocks", card).group(1).replace(",", ""))
    batch = next(size for size in (6, 10, 14, 22) if held_out % (2 * size) and held_out >= 2 * size)
    flags = ["eval", str(trained), "--json", "--batch-size", str(batch), "--dtype", "float32"]
    assert main(flags) == 0
    one = json.loads(capsys.readouterr().out)

    launched = launch_two_processes("-m", "scratchformers.training.cli", *flags)
    assert launched.returncode == 0, launched.stderr[-3000:]
    # The metrics are gathered on every process and printed by the main one alone.
    two = json.loads(launched.ranks[0].stdout.strip().splitlines()[-1])
    assert "eval_loss" not in launched.ranks[1].stdout
    assert two.keys() == one.keys() == {"eval_loss", "masked_accuracy", "baseline_accuracy"}
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5, abs=0)
    for name in ("masked_accuracy", "baseline_accuracy"):
        assert two[name] == pytest.approx(one[name], abs=1e-9), name
