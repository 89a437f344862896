"""The shared contracts: save/load round trip, Auto classes, and errors that name the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

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


def test_damaged_checkpoints_name_the_file_tensor_and_field(
    tiny_config: Callable, tmp_path: Path
) -> None:
    """Empty, truncated and foreign weight files, a tensor of another shape and a config.json
    without encoder_ffn_dim name their cause."""
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    assert_damaged_checkpoints_raise(model, tmp_path, "encoder_ffn_dim")


def test_damaged_transformers_checkpoints_name_their_cause(reference: Any, tmp_path: Path) -> None:
    """The same for BART's and Marian's folders, converted on load. (Not vocab_size: without
    it, Marian's decoder_vocab_size differs, which the conversion refuses first.)"""
    assert_damaged_checkpoints_raise(
        reference.pair.ours, tmp_path / "damaged", "encoder_ffn_dim", checkpoint=reference.directory
    )


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


def test_bad_inputs_name_the_argument(tiny_config: Callable, batch: Callable) -> None:
    """Source and target ids and masks alike; a soft source mask is refused by the encoder, and
    by the decoder's cross attention when the encoder's outputs are given."""
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    inputs = seq2seq_inputs(batch)
    assert_input_errors(model, inputs)
    assert_input_errors(model, inputs, "decoder_input_ids", "decoder_attention_mask")
    with torch.no_grad():
        encoded = model.get_encoder()(inputs["input_ids"], inputs["attention_mask"])
        soft = inputs["attention_mask"] * 0.5
        with pytest.raises(ValueError, match=r"^attention_mask holds 0\.5, but masks are 0/1"):
            model(
                attention_mask=soft,
                encoder_outputs=encoded,
                decoder_input_ids=inputs["decoder_input_ids"],
            )


def test_bad_labels_name_the_value_or_shape_and_the_limit(
    tiny_config: Callable, batch: Callable
) -> None:
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    inputs = batch(model.config.pad_token_id)
    inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(inputs["labels"])
    assert_label_errors(model, inputs)
    # Without decoder_input_ids a bad id is named as the user passed it: labels.
    del inputs["decoder_input_ids"]
    inputs["labels"][0, 1] = 113
    with pytest.raises(ValueError, match=r"^labels holds 113, outside 0 \.\. 112"):
        model(**inputs)


def test_labels_and_decoder_input_ids_of_other_shapes_are_refused(tiny_config: Callable) -> None:
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    source = torch.full((2, 5), 7)
    with pytest.raises(
        ValueError,
        match=r"labels must have the shape of decoder_input_ids \(2, 6\), got \(2, 4\)",
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
def test_config_errors_name_the_field(field: str, value: object) -> None:
    valid = {
        "vocab_size": 113,
        "d_model": 36,
        "encoder_attention_heads": 3,
        "decoder_attention_heads": 3,
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


def test_resizing_the_vocabulary_resizes_the_output_bias(tiny_config: Callable) -> None:
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    old_bias = model.final_logits_bias.clone()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120 and model.final_logits_bias.shape == (1, 120)
    assert torch.equal(model.final_logits_bias[:, :113], old_bias)
    assert not model.final_logits_bias[:, 113:].any()
    assert model.lm_head.weight is model.model.encoder.embed_tokens.weight
    logits = model(torch.full((1, 3), 119), decoder_input_ids=torch.full((1, 2), 119)).logits
    assert logits.shape == (1, 2, 120)
    model.resize_token_embeddings(100)
    assert torch.equal(model.final_logits_bias, old_bias[:, :100])


def test_gradient_checkpointing_gives_the_same_gradients(
    tiny_config: Callable, batch: Callable
) -> None:
    model = EncDecForConditionalGeneration(tiny_config(norm_position="pre")).train()
    inputs = batch(model.config.pad_token_id)
    model(**inputs).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.model.decoder.layers[0].gradient_checkpointing
    model(**inputs).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], atol=1e-6, rtol=1e-5)
    assert float(expected["model.encoder.layers.0.fc1.weight"].abs().max()) > 0
