"""Checkpoints: saved without noise, checked before a resume, and a damaged one is skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LambdaLR
from transformers import GPT2Config, GPT2LMHeadModel

from scratchformers.training import checkpoints


def test_a_tied_model_is_saved_and_restored_without_dropping_anything_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    accelerator = Accelerator(cpu=True)
    config = GPT2Config(
        vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer, _scheduler = accelerator.prepare(
        model, optimizer, LambdaLR(optimizer, lambda step: 1.0)
    )
    # The cause, shown once: accelerate's own save finds the tie and warns that it dropped it
    # (this also proves that the warning would be captured below).
    with caplog.at_level(logging.WARNING):
        accelerator.save_state(str(tmp_path / "plain"), safe_serialization=True)
    assert any("Removed shared tensor" in r.getMessage() for r in caplog.records)
    caplog.clear()

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        folder = checkpoints.save_checkpoint(accelerator, tmp_path / "run", 1, {}, keep=1)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    with caplog.at_level(logging.WARNING):
        assert checkpoints.load_checkpoint(accelerator, folder)["step"] == 1
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert model.lm_head.weight is model.transformer.wte.weight, "still tied after the load"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
