"""The shared contracts: save/load round trip, Auto classes, and errors that name the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_config_error,
    assert_empty_inputs_raise,
    assert_save_load_round_trip,
    invalid_config_values,
)
from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration, EncDecModel


def seq2seq_inputs(batch: Callable, pad: int = 1) -> dict[str, torch.Tensor]:
    inputs = batch(pad, target_lengths=None)
    inputs["decoder_input_ids"] = torch.randint(4, 113, (inputs["input_ids"].shape[0], 6))
    return inputs


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm_position": "pre", "position_embedding_type": "sinusoidal", "scale_embedding": True},
    ],
    ids=["bart-like", "pre-norm-sinusoidal"],
)
def test_save_load_round_trip_and_auto_classes(
    tiny_config: Callable, batch: Callable, tmp_path: Path, options: dict
) -> None:
    model = EncDecForConditionalGeneration(tiny_config(**options)).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # a buffer that must survive the round trip too
    inputs = seq2seq_inputs(batch)
    assert_save_load_round_trip(model, tmp_path / "saved", inputs)
    assert_auto_classes_load(model, tmp_path / "auto", AutoModelForSeq2SeqLM, inputs)


def test_a_source_longer_than_the_position_table_is_refused(tiny_config: Callable) -> None:
    for kind in ("learned", "sinusoidal"):
        model = EncDecForConditionalGeneration(tiny_config(position_embedding_type=kind)).eval()
        limit = model.config.max_position_embeddings
        with pytest.raises(
            ValueError,
            match=rf"input_ids is {limit + 1} tokens long.*max_position_embeddings={limit}",
        ):
            model(torch.full((1, limit + 1), 5), decoder_input_ids=torch.full((1, 2), 5))
        with pytest.raises(ValueError, match=rf"decoder_input_ids is {limit + 3} tokens long"):
            model(torch.full((1, 3), 5), decoder_input_ids=torch.full((1, limit + 3), 5))
    # The limit is the table's: a source of exactly max_position_embeddings tokens is fine.
    assert (
        model(torch.full((1, limit), 5), decoder_input_ids=torch.full((1, 2), 5))
        .logits.isfinite()
        .all()
    )


def test_empty_inputs_raise(tiny_config: Callable, batch: Callable) -> None:
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    inputs = seq2seq_inputs(batch)
    assert_empty_inputs_raise(model, inputs)
    assert_empty_inputs_raise(model, inputs, "decoder_input_ids", empty_batch=False)


def test_labels_and_decoder_input_ids_of_other_shapes_are_refused(tiny_config: Callable) -> None:
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    source = torch.full((2, 5), 7)
    with pytest.raises(
        ValueError, match=r"labels has shape \(2, 4\) but decoder_input_ids has \(2, 6\)"
    ):
        model(source, decoder_input_ids=torch.full((2, 6), 7), labels=torch.full((2, 4), 7))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        EncDecModel(model.config)(source)  # no target at all


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("position_embedding_type", "rotary"),
        ("norm_position", "sandwich"),
        ("decoder_attention_heads", 5),
        ("activation_function", "no-such-act"),
        ("position_offset", -1),
        ("decoder_ffn_dim", 0),
    ],
)
def test_config_errors_name_the_field(tiny_config: Callable, field: str, value: object) -> None:
    valid = tiny_config().to_dict()
    valid = {
        k: valid[k]
        for k in EncDecConfig().to_dict()
        if k in valid and k not in ("model_type", "transformers_version")
    }
    assert_config_error(
        EncDecConfig, valid, field, [value], builders=[EncDecForConditionalGeneration]
    )


def test_standard_sizes_are_checked(tiny_config: Callable) -> None:
    config = tiny_config()
    bad = invalid_config_values(config)
    assert {"d_model", "encoder_attention_heads", "encoder_layers", "vocab_size"} <= bad.keys()
    for field in ("d_model", "encoder_layers"):
        assert_config_error(EncDecConfig, {"vocab_size": 113}, field, bad[field])
