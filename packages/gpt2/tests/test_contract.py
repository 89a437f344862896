"""The contracts of ``scratchformers.core_attention.testing`` that every model keeps, for
GPT2LMHeadModel: transformers' logits on odd shapes, padding that changes nothing, a bit-exact
save/load round trip, the Auto classes, and errors that name the bad input or config field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_label_errors,
    assert_matches_reference,
    assert_padding_changes_nothing,
    assert_save_load_round_trip,
    invalid_config_values,
)
from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

TINY = {"vocab_size": 101, "n_embd": 40, "n_head": 5, "n_layer": 2, "n_positions": 40}


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_logits_and_loss_equal_transformers_on_odd_shapes(
    make_pair: Callable, padded_batch: Callable, tie: bool
) -> None:
    """Width 40 in 5 heads of 8, 3 layers, prompts of 13, 7 and 1 tokens, left-padded."""
    pair = make_pair(n_embd=40, n_head=5, n_layer=3, tie_word_embeddings=tie)
    input_ids, mask, _ = padded_batch((13, 7, 1))
    # Padding and each row's first real token (predicted from padding) are not scored.
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[torch.arange(3), mask.argmax(-1)] = -100
    assert_matches_reference(pair.ours, pair.theirs, input_ids, mask, labels=labels)


def test_left_padding_gives_the_logits_of_each_row_alone(
    make_pair: Callable, padded_batch: Callable
) -> None:
    input_ids, mask, rows = padded_batch((11, 6, 3))
    assert_padding_changes_nothing(make_pair().ours, input_ids, mask, rows)


@pytest.fixture
def model(make_config: Callable) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(make_config(n_embd=40, n_head=5, initializer_range=0.2)).eval()


def test_round_trip_is_bit_exact(
    model: GPT2LMHeadModel, padded_batch: Callable, tmp_path: Path
) -> None:
    input_ids, mask, _ = padded_batch()
    assert_save_load_round_trip(model, tmp_path, {"input_ids": input_ids, "attention_mask": mask})


def test_damaged_checkpoints_name_the_file_tensor_and_field(
    model: GPT2LMHeadModel, make_pair: Callable, tmp_path: Path
) -> None:
    """Ours and transformers' folders alike: empty, truncated and foreign weight files, a
    tensor of another shape and a config.json without vocab_size name their cause."""
    assert_damaged_checkpoints_raise(model, tmp_path / "ours")
    pair = make_pair()
    assert_damaged_checkpoints_raise(pair.ours, tmp_path / "theirs", checkpoint=pair.directory)


def test_auto_classes_load_our_models(
    model: GPT2LMHeadModel, padded_batch: Callable, tmp_path: Path
) -> None:
    input_ids, mask, _ = padded_batch()
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    assert_auto_classes_load(model, tmp_path, AutoModelForCausalLM, inputs)


def test_bad_inputs_name_the_argument(model: GPT2LMHeadModel, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch()
    assert_input_errors(model, {"input_ids": input_ids, "attention_mask": mask})


def test_bad_labels_name_the_value_or_shape_and_the_limit(
    model: GPT2LMHeadModel, padded_batch: Callable
) -> None:
    input_ids, mask, _ = padded_batch()
    labels = input_ids.masked_fill(mask == 0, -100)
    assert_label_errors(model, {"input_ids": input_ids, "attention_mask": mask, "labels": labels})


def test_a_compiled_forward_with_labels_keeps_one_graph(
    model: GPT2LMHeadModel, padded_batch: Callable
) -> None:
    """The input and label checks run in the graph (shapes, dtypes) or not at all (values):
    none breaks it, and the loss is the eager one."""
    input_ids, mask, _ = padded_batch()
    labels = input_ids.masked_fill(mask == 0, -100)
    inputs = {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "use_cache": False}
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).loss, model(**inputs).loss)


def test_empty_inputs_name_the_argument(model: GPT2LMHeadModel, padded_batch: Callable) -> None:
    input_ids, mask, _ = padded_batch()
    assert_empty_inputs_raise(model, {"input_ids": input_ids, "attention_mask": mask})


INVALID = [
    *(pytest.param(f, v, id=f) for f, v in invalid_config_values(GPT2Config()).items()),
    pytest.param("n_inner", (0, -1), id="n_inner"),
]


@pytest.mark.parametrize(("field", "values"), INVALID)
def test_impossible_config_values_name_the_field(field: str, values: tuple) -> None:
    assert_config_error(GPT2Config, TINY, field, values, builders=[GPT2LMHeadModel])
