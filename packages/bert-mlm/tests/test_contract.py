"""The contracts of ``scratchformers.core_attention.testing`` for the BERT classes: a bit-exact
save/load round trip, the Auto classes, and errors that name the bad input or config field
(token ids outside the vocabulary, a sequence longer than max_position_embeddings, token types
outside type_vocab_size, a mask of the wrong shape)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from scratchformers.bert_mlm import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)
from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_label_errors,
    assert_save_load_round_trip,
    invalid_config_values,
)

TINY = {
    "vocab_size": 211,
    "hidden_size": 36,
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 52,
    "max_position_embeddings": 40,
}


def _inputs(padded_batch: Callable) -> dict[str, torch.Tensor]:
    input_ids, mask, types = padded_batch()
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(params=[BertForMaskedLM, BertForSequenceClassification], ids=["mlm", "cls"])
def model(request: pytest.FixtureRequest, make_config: Callable) -> torch.nn.Module:
    return request.param(make_config(initializer_range=0.2)).eval()


def test_round_trip_is_bit_exact(
    model: torch.nn.Module, padded_batch: Callable, tmp_path: Path
) -> None:
    assert_save_load_round_trip(model, tmp_path, _inputs(padded_batch))


def test_damaged_checkpoints_name_the_file_tensor_and_field(
    model: torch.nn.Module, make_pair: Callable, tmp_path: Path
) -> None:
    """Ours and transformers' folders alike: empty, truncated and foreign weight files, a
    tensor of another shape and a config.json without vocab_size name their cause."""
    assert_damaged_checkpoints_raise(model, tmp_path / "ours")
    pair = make_pair("mlm" if isinstance(model, BertForMaskedLM) else "cls")
    assert_damaged_checkpoints_raise(pair.ours, tmp_path / "theirs", checkpoint=pair.directory)


def test_auto_classes_load_our_classifier(
    make_config: Callable, padded_batch: Callable, tmp_path: Path
) -> None:
    model = BertForSequenceClassification(make_config(initializer_range=0.2)).eval()
    assert_auto_classes_load(
        model, tmp_path, AutoModelForSequenceClassification, _inputs(padded_batch)
    )


def test_auto_classes_load_our_masked_lm(
    make_config: Callable, padded_batch: Callable, tmp_path: Path
) -> None:
    """As with transformers' BertForMaskedLM, the checkpoint has no pooler: AutoModel gives
    its bare model with ``add_pooling_layer=False``."""
    model = BertForMaskedLM(make_config(initializer_range=0.2)).eval()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is BertConfig
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is BertForMaskedLM
    inputs = _inputs(padded_batch)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
        bare, info = AutoModel.from_pretrained(
            tmp_path, add_pooling_layer=False, output_loading_info=True
        )
        assert type(bare) is BertModel and not info["missing_keys"], info
        expected = model.bert(**inputs).last_hidden_state
        assert torch.equal(bare.eval()(**inputs).last_hidden_state, expected)


def test_bad_inputs_name_the_argument(model: torch.nn.Module, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch()
    assert_input_errors(model, {"input_ids": input_ids, "attention_mask": mask})


def test_bad_masked_lm_labels_name_the_value_or_shape_and_the_limit(
    make_config: Callable, padded_batch: Callable
) -> None:
    model = BertForMaskedLM(make_config()).eval()
    inputs = _inputs(padded_batch)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 1:8:3] = inputs["input_ids"][:, 1:8:3]
    assert_label_errors(model, {**inputs, "labels": labels})


@pytest.mark.parametrize(
    ("num_labels", "problem_type", "labels"),
    [
        (4, None, torch.tensor([0, 3, 1, 2])),
        (4, "single_label_classification", torch.tensor([2, 0, 3, 1])),
        (1, None, torch.tensor([0.5, -2.0, 3.0, 1.0])),  # regression: not range-checked
        (3, "regression", torch.randn(4, 3)),
        (4, None, torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 4)),  # multi-label, inferred
    ],
    ids=["single-label", "single-label-set", "regression", "regression-3", "multi-label"],
)
def test_bad_classification_labels_name_the_value_or_shape_and_the_limit(
    make_config: Callable,
    padded_batch: Callable,
    num_labels: int,
    problem_type: str | None,
    labels: torch.Tensor,
) -> None:
    config = make_config(num_labels=num_labels, problem_type=problem_type)
    model = BertForSequenceClassification(config).eval()
    inputs = {**_inputs(padded_batch), "labels": labels}
    assert_label_errors(model, inputs, limit_name="num_labels")


def test_empty_inputs_name_the_argument(model: torch.nn.Module, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch()
    assert_empty_inputs_raise(model, {"input_ids": input_ids, "attention_mask": mask})


def test_a_sequence_longer_than_the_position_table_names_the_limit(make_config: Callable) -> None:
    model = BertModel(make_config(max_position_embeddings=16)).eval()
    model(torch.randint(2, 211, (2, 16)))  # exactly the limit is fine
    with pytest.raises(ValueError, match=r"max_position_embeddings=16"):
        model(torch.randint(2, 211, (2, 17)))


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_token_types_outside_the_table_name_type_vocab_size(
    make_config: Callable, padded_batch: Callable, bad: int
) -> None:
    model = BertModel(make_config()).eval()  # type_vocab_size=3
    inputs = _inputs(padded_batch)
    inputs["token_type_ids"][1, 2] = bad
    with pytest.raises(ValueError, match=rf"token_type_ids holds {bad}\b.*type_vocab_size=3"):
        model(**inputs)


def test_token_types_of_another_shape_or_dtype_are_refused(
    make_config: Callable, padded_batch: Callable
) -> None:
    model = BertModel(make_config()).eval()
    inputs = _inputs(padded_batch)
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        model(**{**inputs, "token_type_ids": inputs["token_type_ids"][:, :5]})
    with pytest.raises(ValueError, match="token_type_ids must hold integers"):
        model(**{**inputs, "token_type_ids": inputs["token_type_ids"].float()})


INVALID = [
    *(pytest.param(f, v, id=f) for f, v in invalid_config_values(BertConfig()).items()),
    pytest.param("type_vocab_size", (0, -1), id="type_vocab_size"),
    pytest.param("hidden_dropout_prob", (1.0, -0.1), id="hidden_dropout_prob"),
    pytest.param("attention_probs_dropout_prob", (1.5,), id="attention_probs_dropout_prob"),
    pytest.param("classifier_dropout", (1.0,), id="classifier_dropout"),
]


@pytest.mark.parametrize(("field", "values"), INVALID)
def test_impossible_config_values_name_the_field(field: str, values: tuple) -> None:
    assert_config_error(BertConfig, TINY, field, values, builders=[BertModel, BertForMaskedLM])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("position_embedding_type", "relative_key"),
        ("position_embedding_type", "relative_key_query"),
        ("is_decoder", True),
        ("add_cross_attention", True),
    ],
)
def test_unsupported_options_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        BertConfig(**TINY, **{field: value})


def test_absolute_positions_as_old_config_files_state_them(make_config: Callable) -> None:
    config = BertConfig(**TINY, position_embedding_type="absolute")
    assert BertModel(config).embeddings.position_embeddings.num_embeddings == 40
