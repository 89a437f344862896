"""Checkpoints: tied embeddings stored once, safetensors only, bit-exact round trips, and the
Auto classes registered on import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
)

from scratchformers.basicformer import (
    BasicFormerConfig,
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
    BasicFormerModel,
)
from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_damaged_checkpoints_raise,
    assert_save_load_round_trip,
)

TASK_MODELS = (BasicFormerForMaskedLM, BasicFormerForCausalLM, BasicFormerForSeq2SeqLM)
EMBEDDING_KEY = {
    BasicFormerForMaskedLM: "model.encoder.embed_tokens.weight",
    BasicFormerForCausalLM: "model.decoder.embed_tokens.weight",
    BasicFormerForSeq2SeqLM: "model.encoder.embed_tokens.weight",
}
AUTO_CLASS = {
    BasicFormerForMaskedLM: AutoModelForMaskedLM,
    BasicFormerForCausalLM: AutoModelForCausalLM,
    BasicFormerForSeq2SeqLM: AutoModelForSeq2SeqLM,
}


def saved_tensors(directory: Path) -> dict[str, torch.Tensor]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def assert_safetensors_only(directory: Path) -> None:
    names = sorted(path.name for path in directory.iterdir())
    assert "model.safetensors" in names and "config.json" in names, names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth"))], names


def forward_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[0, 0, 12, 34, 56], [7, 8, 9, 10, 11]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.tensor([[1, 20, 30], [1, 40, 50]])
    return inputs


def first_output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        output = model(**forward_inputs(model))
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_tied_embeddings_share_storage_and_are_saved_once(
    make_model: Callable, tmp_path: Path, model_class: type
) -> None:
    model = make_model(model_class, tie_word_embeddings=True)
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is embedding
    assert model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    # Training the head trains the embedding.
    with torch.no_grad():
        model.lm_head.weight[7, 3] = 123.0
    assert embedding[7, 3] == 123.0

    model.save_pretrained(tmp_path)
    assert_safetensors_only(tmp_path)
    tensors = saved_tensors(tmp_path)
    assert "lm_head.weight" not in tensors
    assert EMBEDDING_KEY[model_class] in tensors
    vocab_matrices = [key for key, t in tensors.items() if t.shape == (101, 48)]
    assert vocab_matrices == [EMBEDDING_KEY[model_class]]
    assert tensors[EMBEDDING_KEY[model_class]][7, 3] == 123.0

    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(first_output(loaded), first_output(model))


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_untied_embeddings_are_separate_and_both_saved(
    make_model: Callable, tmp_path: Path, model_class: type
) -> None:
    model = make_model(model_class, tie_word_embeddings=False)
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is not embedding
    assert model.lm_head.weight.data_ptr() != embedding.data_ptr()
    assert not torch.equal(model.lm_head.weight, embedding)
    names = {name for name, _ in model.named_parameters()}
    assert {"lm_head.weight", EMBEDDING_KEY[model_class]} <= names

    model.save_pretrained(tmp_path)
    assert_safetensors_only(tmp_path)
    tensors = saved_tensors(tmp_path)
    assert torch.equal(tensors["lm_head.weight"], model.lm_head.weight)
    assert torch.equal(tensors[EMBEDDING_KEY[model_class]], embedding)

    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is not loaded.get_input_embeddings().weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.get_input_embeddings().weight, embedding)


MODES = [
    (BasicFormerForMaskedLM, {}),
    (BasicFormerForCausalLM, {}),
    (BasicFormerForSeq2SeqLM, {}),
    (BasicFormerModel, {}),
    (BasicFormerModel, {"is_decoder": True}),
    (BasicFormerModel, {"is_encoder_decoder": True}),
]
POSITION_TYPES = ("none", "learned", "sinusoidal", "rotary")
# Every mode tied and untied; the position schemes and norm placements take turns.
ROUND_TRIPS = [
    (model_class, mode, tie, POSITION_TYPES[(2 * i + tie) % 4])
    for i, (model_class, mode) in enumerate(MODES)
    for tie in (True, False)
]


@pytest.mark.parametrize(("model_class", "mode", "tie", "position_type"), ROUND_TRIPS)
def test_round_trip_is_bit_exact(
    make_model: Callable,
    tmp_path: Path,
    model_class: type,
    mode: dict[str, bool],
    tie: bool,
    position_type: str,
) -> None:
    model = make_model(
        model_class,
        tie_word_embeddings=tie,
        position_embedding_type=position_type,
        norm_position="post" if tie else "pre",
        **mode,
    )
    assert_save_load_round_trip(model, tmp_path, forward_inputs(model))


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_auto_classes_load_the_right_models(
    make_model: Callable, tmp_path: Path, model_class: type
) -> None:
    """The bare model loads from a task checkpoint too, dropping the head and "model."."""
    model = make_model(model_class, position_embedding_type="rotary")
    assert_auto_classes_load(model, tmp_path, AUTO_CLASS[model_class], forward_inputs(model))
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is BasicFormerConfig
    assert config.is_decoder == (model_class is BasicFormerForCausalLM)
    assert config.is_encoder_decoder == (model_class is BasicFormerForSeq2SeqLM)


def test_from_pretrained_picks_the_attention_backend(make_model: Callable, tmp_path: Path) -> None:
    model = make_model(BasicFormerForCausalLM)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config._attn_implementation == "eager"
    output = loaded(torch.tensor([[11, 27, 35]]), output_attentions=True)
    assert output.attentions[0].shape == (1, 3, 3, 3)
    torch.testing.assert_close(
        output.logits, first_output_of_ids(model, torch.tensor([[11, 27, 35]])), atol=1e-5, rtol=0
    )


def first_output_of_ids(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_resized_tied_embeddings_stay_tied(make_model: Callable, tmp_path: Path) -> None:
    model = make_model(BasicFormerForCausalLM)
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(107)
    assert model.config.vocab_size == 107
    assert model.get_input_embeddings().weight.shape == (107, 48)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight[:101], old)
    model.save_pretrained(tmp_path)
    loaded = BasicFormerForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight.shape == (107, 48)
    ids = torch.tensor([[11, 27, 105]])
    assert torch.equal(first_output_of_ids(loaded, ids), first_output_of_ids(model.eval(), ids))


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_damaged_checkpoints_name_the_file_tensor_and_field(
    make_model: Callable, tmp_path: Path, model_class: type
) -> None:
    """Empty, truncated and foreign weight files, a tensor of another shape and a config.json
    without vocab_size raise errors that name the file, the tensor and the field."""
    assert_damaged_checkpoints_raise(make_model(model_class), tmp_path)
