"""``--gradient-checkpointing``: the loop turns on transformers' checkpointing of the model's
layers, the run trains to the same weights as without it, and run.json records it; a model
that cannot checkpoint is refused, naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchformers.training.loop import enable_gradient_checkpointing

SHAPE = ["--width", "32", "--depth", "2", "--heads", "2", "--block-size", "16"]


def train_gpt2(corpus: Path, output_dir: Path, *flags: str) -> Path:
    """Three steps of a small gpt2 run in this process; Accelerate's state reset afterwards."""
    from accelerate.state import AcceleratorState

    from scratchformers.gpt2.train import main

    argv = ["--dataset", str(corpus), "--output-dir", str(output_dir), *SHAPE]
    argv += ["--vocab-size", "300", "--max-steps", "3", "--batch-size", "4", "--eval-every", "3"]
    try:
        assert main([*argv, *flags]) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return output_dir


def test_checkpointed_training_gives_the_same_weights(tmp_path: Path) -> None:
    from scratchformers.training import python_docs_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(python_docs_corpus()[:40]), encoding="utf-8")
    plain = train_gpt2(corpus, tmp_path / "plain")
    checkpointed = train_gpt2(corpus, tmp_path / "checkpointed", "--gradient-checkpointing")

    assert json.loads((checkpointed / "run.json").read_text())["gradient_checkpointing"] is True
    assert json.loads((plain / "run.json").read_text())["gradient_checkpointing"] is False
    expected = load_file(plain / "model.safetensors")
    trained = load_file(checkpointed / "model.safetensors")
    assert trained.keys() == expected.keys()
    for name, tensor in expected.items():
        # Three AdamW steps moved every weight: equal weights mean equal gradients.
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_checkpointing_is_on_in_the_model_and_refused_where_unsupported() -> None:
    from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    enable_gradient_checkpointing(model)
    assert model.is_activation_checkpointing
    with pytest.raises(ValueError, match=r"--gradient-checkpointing: Linear does not support"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
