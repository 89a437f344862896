"""Loading transformers' BERT directories into our classes (each class's save_pretrained, with
and without a pooler, tied and untied), starting only a task head fresh (fine-tuning), refusing
a checkpoint that leaves any other weight unfilled, and
exporting back: transformers' classes load our exports with no missing or unexpected keys and
the same outputs, and the in-memory conversion inverts itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from scratchformers.bert_mlm import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    export_to_transformers,
)
from scratchformers.bert_mlm.convert import CONVERTER


def _inputs(padded_batch: Callable) -> dict[str, torch.Tensor]:
    input_ids, mask, types = padded_batch()
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}


# (their class saved, our class loading it, keyword arguments): every load that fills our model.
LOADS = {
    "BertModel->BertModel": ("base", BertModel, {}),
    "BertModel(no pooler)->BertModel(no pooler)": (
        "base-no-pooler",
        BertModel,
        {"add_pooling_layer": False},
    ),
    "BertForMaskedLM->BertForMaskedLM": ("mlm", BertForMaskedLM, {}),
    "BertForMaskedLM(untied)->BertForMaskedLM": ("mlm-untied", BertForMaskedLM, {}),
    "BertForMaskedLM->BertModel(no pooler)": ("mlm", BertModel, {"add_pooling_layer": False}),
    "BertForSequenceClassification->BertForSequenceClassification": (
        "cls",
        BertForSequenceClassification,
        {},
    ),
    "BertForSequenceClassification->BertModel": ("cls", BertModel, {}),
}


def _their_model(make_theirs: Callable, kind: str) -> torch.nn.Module:
    if kind == "mlm-untied":
        return make_theirs("mlm", tie_word_embeddings=False)
    return make_theirs(kind)


@pytest.mark.parametrize("load", sorted(LOADS))
def test_transformers_directories_load_with_their_outputs(
    make_theirs: Callable,
    padded_batch: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    load: str,
) -> None:
    kind, our_class, kwargs = LOADS[load]
    theirs = _their_model(make_theirs, kind)
    theirs.save_pretrained(tmp_path)
    model, info = our_class.from_pretrained(tmp_path, output_loading_info=True, **kwargs)
    assert type(model) is our_class and not info["missing_keys"], info
    if type(theirs).__name__ == our_class.__name__:
        assert not info["unexpected_keys"], info
    model.eval()
    inputs = _inputs(padded_batch)
    with torch.no_grad():
        got, expected = model(**inputs), theirs(**inputs)
    if our_class is BertModel:
        their_base = getattr(theirs, "bert", theirs)
        with torch.no_grad():
            expected = their_base(**inputs)
        assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")
        if model.pooler is not None:
            assert_matches(got.pooler_output, expected.pooler_output, what="pooled output")
    else:
        assert_matches(got.logits, expected.logits, what="logit")


def test_fine_tuning_starts_from_a_masked_lm_checkpoint(
    make_theirs: Callable, padded_batch: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers' BertForMaskedLM has no pooler and no classifier: our classifier loads its
    body and starts those two fresh, naming them, as transformers does for fine-tuning."""
    theirs = make_theirs("mlm")
    theirs.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3).eval()
    assert "classifier.weight" in caplog.text and "pooler.dense.weight" in caplog.text
    assert model.config.num_labels == 3
    inputs = _inputs(padded_batch)
    with torch.no_grad():
        body = model.bert(**inputs).last_hidden_state
        expected = theirs.bert(**inputs).last_hidden_state
        assert model(**inputs).logits.shape == (len(body), 3)
    assert float((body - expected).abs().max()) <= 1e-4
    assert BertModel.from_pretrained(tmp_path).pooler is not None


def test_a_checkpoint_missing_a_body_weight_is_refused(
    make_theirs: Callable, tmp_path: Path
) -> None:
    """Only the task head may start fresh: a checkpoint without one of the encoder's weights
    raises, naming it, where transformers would initialise it at random and warn."""
    from safetensors.torch import load_file, save_file

    make_theirs("mlm").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    name = next(k for k in weights if "layer.1.output.dense.weight" in k)
    del weights[name]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"layers?\.1\.mlp\.down_proj\.weight"):
        BertForMaskedLM.from_pretrained(tmp_path)


def test_config_fields_are_read(make_pair: Callable) -> None:
    pair = make_pair("cls", hidden_act="relu", layer_norm_eps=0.3, num_labels=3)
    config = pair.ours.config
    assert config.model_type == "scratchformers-bert-mlm"
    assert (config.hidden_act, config.layer_norm_eps, config.num_labels) == ("relu", 0.3, 3)
    assert (config.hidden_size, config.num_hidden_layers, config.type_vocab_size) == (36, 3, 3)


def _keys(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return set(handle.keys())


@pytest.mark.parametrize(
    ("kind", "their_class", "overrides"),
    [
        ("mlm", transformers.BertForMaskedLM, {}),
        ("mlm", transformers.BertForMaskedLM, {"tie_word_embeddings": False}),
        ("cls", transformers.BertForSequenceClassification, {"problem_type": "regression"}),
        ("base", transformers.BertModel, {}),
    ],
    ids=["mlm", "mlm-untied", "cls", "base"],
)
def test_export_loads_in_transformers_with_the_same_outputs(
    make_pair: Callable,
    padded_batch: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    kind: str,
    their_class: type,
    overrides: dict,
) -> None:
    """transformers -> ours -> transformers: their class loads the export with nothing
    missing or left over, the same config and the very same tensors."""
    pair = make_pair(kind, **overrides)
    out = export_to_transformers(pair.ours, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    back, info = their_class.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert type(transformers.AutoModel.from_pretrained(out)) is transformers.BertModel
    assert _keys(out) == _keys(pair.directory)
    theirs_state, back_state = pair.theirs.state_dict(), back.state_dict()
    assert theirs_state.keys() == back_state.keys()
    for key, tensor in theirs_state.items():
        assert torch.equal(back_state[key], tensor), key
    for name in overrides:
        assert getattr(back.config, name) == getattr(pair.theirs.config, name), name
    inputs = _inputs(padded_batch)
    with torch.no_grad():
        assert_matches(back.eval()(**inputs)[0], pair.ours(**inputs)[0], what="exported output")


def test_export_of_a_model_of_ours_loads_in_transformers(
    make_config: Callable, padded_batch: Callable, assert_matches: Callable, tmp_path: Path
) -> None:
    model = BertForSequenceClassification(make_config(initializer_range=0.2)).eval()
    out = export_to_transformers(model, tmp_path)
    theirs, info = transformers.BertForSequenceClassification.from_pretrained(
        out, output_loading_info=True
    )
    assert not any(info.values()), info
    inputs = _inputs(padded_batch)
    with torch.no_grad():
        assert_matches(model(**inputs).logits, theirs.eval()(**inputs).logits)


def test_a_bare_model_without_pooler_is_not_exported(make_config: Callable, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="add_pooling_layer"):
        export_to_transformers(BertModel(make_config(), add_pooling_layer=False), tmp_path)


def test_state_conversion_inverts_itself(make_theirs: Callable, make_config: Callable) -> None:
    theirs = {k: v for k, v in make_theirs("mlm", tie_word_embeddings=False).state_dict().items()}
    ours = CONVERTER.state_from_transformers(theirs)
    assert "bert.encoder.layer.2.attention.q_proj.weight" in ours
    assert "bert.encoder.layer.2.mlp.down_proj.bias" in ours
    assert "bert.encoder.layer.0.attention_norm.weight" in ours
    assert {"cls.decoder.weight", "cls.decoder.bias", "cls.bias", "cls.LayerNorm.weight"} <= set(
        ours
    )
    assert set(ours) == set(BertForMaskedLM(make_config()).state_dict())
    back = CONVERTER.state_to_transformers(ours)
    assert back.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert torch.equal(back[key], tensor), key
