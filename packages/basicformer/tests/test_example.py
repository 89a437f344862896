"""The example script ``examples/smoke.py`` runs and keeps its promises."""

from __future__ import annotations

import runpy
from types import ModuleType

import pytest
import torch

from scratchformers.basicformer import BasicFormerConfig

NEW_TOKENS = 20


@pytest.fixture(scope="module")
def results(smoke: ModuleType) -> dict[str, torch.Tensor]:
    return smoke.main()


@pytest.fixture(scope="module")
def batch(smoke: ModuleType, tokenizer) -> dict[str, torch.Tensor]:
    return tokenizer(smoke.SENTENCES, padding=True, return_tensors="pt")


def test_tokenizer_special_tokens_match_the_config(tokenizer) -> None:
    config = BasicFormerConfig()
    ids = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert ids == [config.pad_token_id, config.bos_token_id, config.eos_token_id] == [0, 1, 2]
    assert tokenizer.unk_token_id == 3 and tokenizer.mask_token_id == 4
    assert tokenizer.padding_side == "left"


def test_batch_is_left_padded(batch: dict[str, torch.Tensor]) -> None:
    mask = batch["attention_mask"]
    lengths = mask.sum(-1)
    assert lengths[0] > lengths[1]  # the first sentence is the longer one
    assert bool((mask[0] == 1).all())
    # The second row: zeros, then ones.
    width = mask.shape[1]
    assert mask[1].tolist() == [0] * (width - int(lengths[1])) + [1] * int(lengths[1])
    assert bool((batch["input_ids"][1, : width - int(lengths[1])] == 0).all())


def test_masked_lm_logits(
    results: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], tokenizer
) -> None:
    logits = results["masked_lm_logits"]
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert bool(torch.isfinite(logits).all())
    assert not torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("name", ["causal_lm", "seq2seq"])
def test_generation_with_and_without_cache_agree(
    results: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], name: str
) -> None:
    with_cache, without = results[f"{name}_with_cache"], results[f"{name}_without_cache"]
    assert torch.equal(with_cache, without)
    width = batch["input_ids"].shape[1]
    if name == "causal_lm":
        assert with_cache.shape == (2, width + NEW_TOKENS)
        assert torch.equal(with_cache[:, :width], batch["input_ids"])
        generated = with_cache[:, width:]
    else:
        assert with_cache.shape == (2, 1 + NEW_TOKENS)
        assert with_cache[:, 0].tolist() == [1, 1]  # decoder_start_token_id = bos
        generated = with_cache[:, 1:]
    # min_new_tokens=20 forbids an early end, so no row is padded out.
    assert bool((generated != 0).all())


def test_main_is_deterministic_and_reports_agreement(
    smoke: ModuleType, results: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(smoke.__file__, run_name="__main__")
    printed = capsys.readouterr().out
    assert "causal_lm: 20 tokens with and without the cache agree: True" in printed
    assert "seq2seq: 20 tokens with and without the cache agree: True" in printed
    again = smoke.main()
    assert again.keys() == results.keys()
    for key, tensor in results.items():
        assert torch.equal(again[key], tensor), key
