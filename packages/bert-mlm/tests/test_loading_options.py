"""Converted loads go through transformers' own from_pretrained: a hub id (offline, from a
Hugging Face cache laid out on disk) with a revision, sharded safetensors and dtype work as for
transformers' classes; pickled weights are refused; our saves stay in our layout; transformers'
own directories still load as transformers models through the Auto classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from scratchformers.bert_mlm import BertForMaskedLM, BertForSequenceClassification
from scratchformers.core_attention.testing import lay_out_hub_cache


def _inputs(padded_batch: Callable) -> dict[str, torch.Tensor]:
    input_ids, mask, types = padded_batch()
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}


def test_hub_id_with_revision(
    make_theirs: Callable, padded_batch: Callable, assert_matches: Callable, tmp_path: Path
) -> None:
    first, second = "a" * 40, "b" * 40
    theirs = {}
    for seed, commit in enumerate((first, second)):
        theirs[commit] = make_theirs("mlm", seed=seed)
        theirs[commit].save_pretrained(tmp_path / commit)
    cache = tmp_path / "cache"
    lay_out_hub_cache(cache, "someone/tiny-bert", {c: tmp_path / c for c in theirs}, first)
    inputs = _inputs(padded_batch)
    for revision, commit in (("main", first), (second, second)):
        ours = BertForMaskedLM.from_pretrained(
            "someone/tiny-bert", cache_dir=cache, revision=revision, local_files_only=True
        ).eval()
        with torch.no_grad():
            assert_matches(ours(**inputs).logits, theirs[commit](**inputs).logits)


def test_sharded_safetensors_and_dtype(
    make_theirs: Callable, padded_batch: Callable, assert_matches: Callable, tmp_path: Path
) -> None:
    theirs = make_theirs("cls")
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    ours = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    inputs = _inputs(padded_batch)
    with torch.no_grad():
        assert_matches(ours(**inputs).logits, theirs(**inputs).logits)
    half = BertForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_pickled_weights_are_refused_never_unpickled(
    make_theirs: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = make_theirs("mlm")
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(OSError, match=r"model\.safetensors"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_converted_models_save_in_our_layout(make_pair: Callable, tmp_path: Path) -> None:
    pair = make_pair("mlm")
    pair.ours.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    assert "bert.encoder.layer.0.attention.q_proj.weight" in names
    assert not [name for name in names if ".self." in name or "predictions" in name], names
    reloaded = BertForMaskedLM.from_pretrained(tmp_path)
    for name, tensor in pair.ours.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_transformers_directories_still_load_as_transformers_models(make_pair: Callable) -> None:
    """Importing scratchformers.bert_mlm does not take over model_type "bert" from transformers."""
    pair = make_pair("mlm")
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(pair.directory)
    assert type(loaded) is transformers.BertForMaskedLM
