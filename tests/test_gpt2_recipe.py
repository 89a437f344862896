"""End to end for GPT-2: train the recipe briefly in-process, export the result to transformers,
and use it there with pipeline("text-generation").

Marked ``slow``: it runs in the ``distributed`` nox session (part of the default run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

pytestmark = pytest.mark.slow

PROMPT = "The return statement"


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    from scratchformers.training import python_docs_corpus

    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(python_docs_corpus()[:150]), encoding="utf-8")
    return path


@pytest.fixture
def trained(small_corpus: Path, tmp_path: Path) -> Iterator[Path]:
    """The output directory of 60 steps of the gpt2 recipe (tiny preset), run in this process;
    accelerate's process-wide state is reset afterwards so later tests start clean."""
    from accelerate.state import AcceleratorState

    from scratchformers.gpt2.train import main

    output_dir = tmp_path / "run"
    try:
        code = main(
            ["--output-dir", str(output_dir), "--max-steps", "60", "--dataset", str(small_corpus)]
        )
        assert code == 0
        yield output_dir
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_trained_gpt2_exports_to_transformers(trained: Path, tmp_path: Path) -> None:
    from scratchformers.gpt2 import GPT2LMHeadModel, export_to_transformers

    summary = json.loads((trained / "run.json").read_text())["summary"]
    assert summary["steps"] == 60
    assert summary["final_eval_loss"] < summary["first_eval_loss"], summary

    ours = GPT2LMHeadModel.from_pretrained(trained).eval()
    assert type(ours) is GPT2LMHeadModel
    out = export_to_transformers(ours, tmp_path / "exported")
    transformers.AutoTokenizer.from_pretrained(trained).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"

    # transformers' own class loads it, and gives our logits on a left-padded batch.
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs) is transformers.GPT2LMHeadModel
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    batch = tokenizer(
        [PROMPT, "A list is a mutable sequence of", "import"], return_tensors="pt", padding=True
    )
    mask = batch["attention_mask"]
    assert not bool(mask.all())  # the batch really is padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        our_logits = ours(**batch).logits
        their_logits = theirs(**batch, position_ids=positions).logits
    real = mask.bool()
    assert float((our_logits[real] - their_logits[real]).abs().max()) <= 1e-4

    # pipeline("text-generation") on the exported directory continues the prompt, with the
    # tokens our model generates greedily.
    generator = transformers.pipeline("text-generation", model=str(out), tokenizer=str(out))
    text = generator(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith(PROMPT)
    assert len(text) > len(PROMPT)
    prompt = tokenizer(PROMPT, return_tensors="pt")
    ours_generated = ours.generate(
        **prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert text == tokenizer.decode(ours_generated[0], skip_special_tokens=True)
