"""The contracts of ``scratchformers.core_attention.testing`` for the ViT classes (a bit-exact
save/load round trip, the Auto classes, config errors that name the field), the input errors
that images get, and what the options compute: mean pooling, no class token, the final norm
after pooling, a patch projection without bias, labels kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_label_errors,
    assert_save_load_round_trip,
    invalid_config_values,
)
from scratchformers.vit import ViTConfig, ViTForImageClassification, ViTModel

TINY = {
    "image_size": 20,
    "patch_size": 4,
    "hidden_size": 36,
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 52,
}
# timm's mean-pooled layout: no class token, the norm on the pooled vector.
MEAN_POOLED = {
    "use_class_token": False,
    "pooling": "mean",
    "final_norm_position": "after_pooling",
    "patch_bias": False,
}


@pytest.fixture(params=["cls", "mean-pooled"])
def model(request: pytest.FixtureRequest, make_config: Callable) -> torch.nn.Module:
    options = {} if request.param == "cls" else MEAN_POOLED
    return ViTForImageClassification(make_config(initializer_range=0.2, **options)).eval()


def test_round_trip_is_bit_exact(model: torch.nn.Module, images: Callable, tmp_path: Path) -> None:
    assert_save_load_round_trip(model, tmp_path, {"pixel_values": images()})


def test_damaged_checkpoints_name_the_file_tensor_and_field(
    model: torch.nn.Module, make_pair: Callable, tmp_path: Path
) -> None:
    """Ours and transformers' folders alike: empty, truncated and foreign weight files, a
    tensor of another shape and a config.json without intermediate_size name their cause."""
    assert_damaged_checkpoints_raise(model, tmp_path / "ours", "intermediate_size")
    pair = make_pair("cls")
    assert_damaged_checkpoints_raise(
        pair.ours, tmp_path / "theirs", "intermediate_size", checkpoint=pair.directory
    )


def test_auto_classes_load_our_classifier(
    model: torch.nn.Module, images: Callable, tmp_path: Path
) -> None:
    """AutoModel gives the bare model, which the classifier's checkpoint (no pooler, as in
    transformers) fills when built without one."""
    pixels = images()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is ViTConfig
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is ViTForImageClassification
    bare, info = AutoModel.from_pretrained(
        tmp_path, add_pooling_layer=False, output_loading_info=True
    )
    assert type(bare) is ViTModel and not info["missing_keys"], info
    with torch.no_grad():
        assert torch.equal(loaded(pixels).logits, model(pixels).logits)
        expected = model.vit(pixels).pooler_output
        assert torch.equal(bare.eval()(pixels).pooler_output, expected)


def test_auto_classes_load_our_bare_model(
    make_config: Callable, images: Callable, tmp_path: Path
) -> None:
    model = ViTModel(make_config(initializer_range=0.2)).eval()
    assert_auto_classes_load(model, tmp_path, AutoModel, {"pixel_values": images()})


def test_labels_are_kept(make_config: Callable, tmp_path: Path) -> None:
    names = {0: "cat", 1: "dog", 2: "emu", 3: "fox", 4: "gnu"}
    label2id = {name: i for i, name in names.items()}
    model = ViTForImageClassification(make_config(id2label=names, label2id=label2id))
    model.save_pretrained(tmp_path)
    loaded = ViTForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.id2label == names
    assert loaded.config.label2id == label2id
    assert loaded.classifier.out_features == 5


# --- bad inputs -------------------------------------------------------------------------------


def _error(model: torch.nn.Module, pixels: object, **kwargs: object) -> str:
    with pytest.raises(ValueError) as raised, torch.no_grad():
        model(pixels, **kwargs)
    return str(raised.value)


def test_an_image_of_another_size_names_both_sizes(make_config: Callable, images: Callable) -> None:
    model = ViTModel(make_config()).eval()
    message = _error(model, images(height=28))
    assert "28x28" in message and "20x20" in message and "interpolate_pos_encoding" in message
    assert "24x20" in _error(model, images(height=24, width=20))


def test_a_wrong_channel_count_is_named(make_config: Callable, images: Callable) -> None:
    model = ViTModel(make_config()).eval()
    message = _error(model, images()[:, :2])
    assert "2 channels" in message and "num_channels=3" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p[0], r"\(batch, channels, height, width\), got shape \(3, 20, 20\)"),
        (lambda p: p[None], r"got shape \(1, 3, 3, 20, 20\)"),
        (lambda p: (p * 255).to(torch.uint8), r"floats.*torch\.uint8"),
        (lambda p: p[:0], "empty batch"),
        (lambda p: p[..., :3, :], "3x20 pixels holds no whole patch of 4x4"),
        (lambda p: None, "pixel_values is required"),
    ],
    ids=["3-D", "5-D", "uint8", "empty", "smaller than a patch", "none"],
)
def test_bad_pixel_values_are_named(
    make_config: Callable, images: Callable, change: Callable, expected: str
) -> None:
    model = ViTForImageClassification(make_config()).eval()
    pixels = change(images())
    with pytest.raises(ValueError, match=expected), torch.no_grad():
        model(pixels, interpolate_pos_encoding=True)


def test_bool_masked_pos_is_refused(make_config: Callable, images: Callable) -> None:
    model = ViTModel(make_config()).eval()
    masked = torch.zeros(3, 25, dtype=torch.bool)
    assert "bool_masked_pos" in _error(model, images(), bool_masked_pos=masked)


@pytest.mark.parametrize(
    ("options", "labels"),
    [
        ({}, torch.tensor([4, 0, 2])),
        ({"num_labels": 1}, torch.tensor([0.5, -3.0, 9.0])),  # regression: not range-checked
        ({}, torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0]] * 3)),  # multi-label, inferred
    ],
    ids=["single-label", "regression", "multi-label"],
)
def test_bad_labels_name_the_value_or_shape_and_the_limit(
    make_config: Callable, images: Callable, options: dict, labels: torch.Tensor
) -> None:
    model = ViTForImageClassification(make_config(**options)).eval()
    assert_label_errors(
        model, {"pixel_values": images(), "labels": labels}, limit_name="num_labels"
    )


def test_a_soft_attention_mask_is_refused(make_config: Callable, images: Callable) -> None:
    model = ViTModel(make_config()).eval()
    soft = torch.ones(3, 26)
    soft[2, 7] = 0.5
    message = _error(model, images(), attention_mask=soft)
    assert "attention_mask holds 0.5" in message and "0/1" in message
    with torch.no_grad():
        assert model(images(), attention_mask=torch.ones(3, 26)).pooler_output.isfinite().all()


def test_an_attention_mask_of_the_wrong_length_is_named(
    make_config: Callable, images: Callable
) -> None:
    model = ViTModel(make_config()).eval()
    message = _error(model, images(), attention_mask=torch.ones(3, 25))
    assert "attention_mask covers 25 tokens" in message and "26" in message


# --- bad configs ------------------------------------------------------------------------------

INVALID = [
    *(pytest.param(f, v, id=f) for f, v in invalid_config_values(ViTConfig()).items()),
    pytest.param("image_size", (0, -1), id="image_size"),
    pytest.param("patch_size", (0, -3), id="patch_size"),
    pytest.param("num_channels", (0, -1), id="num_channels"),
    pytest.param("pooler_output_size", (-1,), id="pooler_output_size"),
    pytest.param("hidden_dropout_prob", (1.0, -0.1), id="hidden_dropout_prob"),
    pytest.param("attention_probs_dropout_prob", (1.5,), id="attention_probs_dropout_prob"),
    pytest.param("pooling", ("max",), id="pooling"),
    pytest.param("final_norm_position", ("nowhere",), id="final_norm_position"),
    pytest.param("hidden_act", ("swishy",), id="hidden_act"),
]


@pytest.mark.parametrize(("field", "values"), INVALID)
def test_impossible_config_values_name_the_field(field: str, values: tuple) -> None:
    assert_config_error(
        ViTConfig, TINY, field, values, builders=[ViTModel, ViTForImageClassification]
    )


def test_a_patch_larger_than_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="patch_size=32 is larger than image_size=20"):
        ViTConfig(**{**TINY, "patch_size": 32})


def test_class_token_pooling_needs_a_class_token() -> None:
    with pytest.raises(ValueError, match="use_class_token=False"):
        ViTConfig(**TINY, use_class_token=False)


# --- what the options compute -----------------------------------------------------------------


def test_mean_pooling_averages_the_patch_tokens(make_config: Callable, images: Callable) -> None:
    """With a class token, the mean leaves it out (timm's global_pool="avg")."""
    model = ViTModel(make_config(pooling="mean", initializer_range=0.2), add_pooling_layer=False)
    with torch.no_grad():
        output = model.eval()(images())
    expected = output.last_hidden_state[:, 1:].mean(dim=1)
    torch.testing.assert_close(output.pooler_output, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(output.pooler_output, output.last_hidden_state[:, 0], atol=1e-2)


def test_without_a_class_token_the_sequence_is_the_patches(
    make_config: Callable, images: Callable
) -> None:
    model = ViTModel(make_config(**MEAN_POOLED, initializer_range=0.2), add_pooling_layer=False)
    assert model.embeddings.cls_token is None
    assert model.embeddings.position_embeddings.shape == (1, 25, 36)
    assert model.embeddings.patch_embeddings.projection.bias is None
    with torch.no_grad():
        output = model.eval()(images())
    assert output.last_hidden_state.shape == (3, 25, 36)
    # The norm comes after pooling: the pooled vector is the normalised patch mean, and the
    # last hidden state is left as the last layer wrote it.
    expected = model.layernorm(output.last_hidden_state.mean(dim=1))
    torch.testing.assert_close(output.pooler_output, expected, atol=1e-6, rtol=0)
    per_token = output.last_hidden_state.std(dim=-1, unbiased=False)
    assert float((per_token - 1).abs().min()) > 1e-2  # not layer-normalised


def test_interpolated_positions_keep_no_class_slot_without_a_class_token(
    make_config: Callable, images: Callable
) -> None:
    model = ViTForImageClassification(make_config(**MEAN_POOLED)).eval()
    with torch.no_grad():
        output = model(images(height=28, width=16), interpolate_pos_encoding=True)
        hidden = model.vit(images(height=28, width=16), interpolate_pos_encoding=True)
    assert output.logits.shape == (3, 5)
    assert hidden.last_hidden_state.shape == (3, 7 * 4, 36)
