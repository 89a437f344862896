"""The contracts of ``scratchformers.core_attention.testing`` for the ViTMAE classes (a bit-exact
save/load round trip, the Auto classes, config errors that name the field), the input errors,
and what is MAE's own: fixed sin-cos positions filled in a fresh model (transformers' layout)
that training leaves alone, the masking's numbers, the decoder following the backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_save_load_round_trip,
    invalid_config_values,
)
from scratchformers.vitmae import (
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTMAEModel,
    patchify,
    random_masking,
    unpatchify,
)
from scratchformers.vitmae.configuration import DECODER_SIZE_FIELDS

TINY = {
    "image_size": 24,
    "patch_size": 4,
    "hidden_size": 36,
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 52,
    "decoder_hidden_size": 20,
    "decoder_num_attention_heads": 2,
    "decoder_num_hidden_layers": 1,
    "decoder_intermediate_size": 28,
}


@pytest.fixture
def model(make_config: Callable) -> ViTMAEForPreTraining:
    return ViTMAEForPreTraining(make_config(initializer_range=0.2)).eval()


def test_round_trip_is_bit_exact(
    model: ViTMAEForPreTraining, images: Callable, noise: Callable, tmp_path: Path
) -> None:
    assert_save_load_round_trip(model, tmp_path, {"pixel_values": images(), "noise": noise()})


def test_damaged_checkpoints_name_the_file_tensor_and_field(
    model: ViTMAEForPreTraining, make_pair: Callable, tmp_path: Path
) -> None:
    """Ours and transformers' folders alike: empty, truncated and foreign weight files, a
    tensor of another shape and a config.json without intermediate_size name their cause."""
    assert_damaged_checkpoints_raise(model, tmp_path / "ours", "intermediate_size")
    pair = make_pair("pretraining")
    assert_damaged_checkpoints_raise(
        pair.ours, tmp_path / "theirs", "intermediate_size", checkpoint=pair.directory
    )


def test_auto_classes_load_ours(
    model: ViTMAEForPreTraining, images: Callable, noise: Callable, tmp_path: Path
) -> None:
    """AutoModelForPreTraining gives the pretraining model, AutoModel its encoder."""
    inputs = {"pixel_values": images(), "noise": noise()}
    assert_auto_classes_load(model, tmp_path, AutoModelForPreTraining, inputs)
    assert type(AutoConfig.from_pretrained(tmp_path)) is ViTMAEConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is ViTMAEModel


def test_return_dict_false_gives_tuples(
    model: ViTMAEForPreTraining, images: Callable, noise: Callable
) -> None:
    pixels, chosen = images(), noise()
    with torch.no_grad():
        as_tuple = model(pixels, noise=chosen, return_dict=False)
        as_output = model(pixels, noise=chosen)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 4
    for value, name in zip(as_tuple, ("loss", "logits", "mask", "ids_restore"), strict=True):
        assert torch.equal(value, getattr(as_output, name)), name


# --- MAE's own ----------------------------------------------------------------------------------


def _transformers_table(grid: int, width: int) -> torch.Tensor:
    """transformers' sin-cos table with the halves swapped, as its ViTMAE init lays it out."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, width, cls_token=True)
    return torch.cat([table[..., width // 2 :], table[..., : width // 2]], dim=-1)[None]


def test_fresh_models_hold_the_fixed_sin_cos_positions_training_leaves_alone(
    model: ViTMAEForPreTraining, images: Callable
) -> None:
    encoder_table = model.vit.embeddings.position_embeddings
    decoder_table = model.decoder.decoder_pos_embed
    assert torch.equal(encoder_table, _transformers_table(6, 36))
    assert torch.equal(decoder_table, _transformers_table(6, 20))
    assert not encoder_table[0, 0].any() and encoder_table[0, 1:].abs().min() < 1
    trained = [name for name, _ in model.named_parameters()]
    assert not [name for name in trained if "position_embeddings" in name or "pos_embed" in name]
    assert {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"} <= set(
        model.state_dict()
    )
    before = (encoder_table.clone(), decoder_table.clone())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    model.train()(images()).loss.backward()
    optimizer.step()
    assert torch.equal(encoder_table, before[0]) and torch.equal(decoder_table, before[1])


def test_masking_keeps_the_lowest_noise_in_its_order() -> None:
    patches = torch.arange(2 * 5 * 1.0).reshape(2, 5, 1)
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7], [0.0, 0.4, 0.2, 0.8, 0.6]])
    kept, mask, ids_restore = random_masking(patches, 0.6, noise)  # int(5 * 0.4) = 2 kept
    assert kept[..., 0].tolist() == [[1.0, 3.0], [5.0, 7.0]]
    assert mask.tolist() == [[1, 0, 1, 0, 1], [0, 1, 0, 1, 1]]
    assert ids_restore.tolist() == [[2, 0, 4, 1, 3], [0, 2, 1, 4, 3]]
    kept, mask, _ = random_masking(patches, 0.0, noise)
    assert kept.shape == (2, 5, 1) and not mask.any()


def test_nothing_masked_keeps_every_patch_and_the_loss_is_nan(
    make_config: Callable, images: Callable
) -> None:
    """As transformers: the loss averages over the hidden patches, and there are none."""
    model = ViTMAEForPreTraining(make_config(mask_ratio=0.0)).eval()
    with torch.no_grad():
        output = model(images())
    assert not output.mask.any() and torch.isnan(output.loss)
    assert output.logits.shape == (3, 36, 48)


def test_a_backend_set_after_building_reaches_the_decoder(model: ViTMAEForPreTraining) -> None:
    decoder_attention = model.decoder.decoder_layers[0].attention
    assert decoder_attention.attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    assert decoder_attention.attn_implementation == "eager"
    assert decoder_attention.hidden_size == 20 and decoder_attention.num_attention_heads == 2


# --- bad inputs -------------------------------------------------------------------------------


def _error(model: torch.nn.Module, pixels: object, **kwargs: object) -> str:
    with pytest.raises(ValueError) as raised, torch.no_grad():
        model(pixels, **kwargs)
    return str(raised.value)


@pytest.mark.parametrize("shape", [(3, 35), (2, 36), (3, 36, 1)])
def test_noise_of_the_wrong_shape_is_named(
    model: ViTMAEForPreTraining, images: Callable, shape: tuple[int, ...]
) -> None:
    message = _error(model, images(), noise=torch.rand(shape))
    assert "noise must be (batch, num_patches) = (3, 36)" in message and str(shape) in message


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_a_mask_ratio_changed_to_one_that_cannot_work_is_named(
    model: ViTMAEForPreTraining, images: Callable, ratio: float
) -> None:
    model.config.mask_ratio = ratio
    assert f"mask_ratio must be in [0, 1), got {ratio}" in _error(model, images())


def test_an_image_of_another_size_names_both_sizes(
    model: ViTMAEForPreTraining, images: Callable
) -> None:
    message = _error(model, images(height=28))
    assert "28x28" in message and "24x24" in message and "interpolate_pos_encoding" in message


def test_a_wrong_channel_count_is_named(model: ViTMAEForPreTraining, images: Callable) -> None:
    message = _error(model, images()[:, :2])
    assert "2 channels" in message and "num_channels=3" in message
    with pytest.raises(ValueError, match="2 channels"):
        model.patchify(images()[:, :2])


def test_an_interpolated_image_that_is_not_whole_patches_is_named(
    model: ViTMAEForPreTraining, images: Callable
) -> None:
    message = _error(model, images(height=26), interpolate_pos_encoding=True)
    assert "26x26 pixels is not a whole number of 4x4 patches" in message


def test_patches_that_do_not_tile_the_image_are_named() -> None:
    with pytest.raises(ValueError, match=r"do not tile a 24x24 image"):
        unpatchify(torch.zeros(1, 35, 48), 4, 24)
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        patchify(torch.zeros(3, 24, 24), 4)


# --- bad configs ------------------------------------------------------------------------------

INVALID = [
    *(
        pytest.param(f, v, id=f)
        for f, v in invalid_config_values(ViTMAEConfig(), DECODER_SIZE_FIELDS).items()
    ),
    pytest.param("image_size", (0, -1), id="image_size"),
    pytest.param("patch_size", (0, -4), id="patch_size"),
    pytest.param("num_channels", (0,), id="num_channels"),
    pytest.param("hidden_dropout_prob", (1.0, -0.1), id="hidden_dropout_prob"),
    pytest.param("attention_probs_dropout_prob", (1.5,), id="attention_probs_dropout_prob"),
    pytest.param("hidden_act", ("swishy",), id="hidden_act"),
    pytest.param("mask_ratio", (1.0, -0.25, 1.5), id="mask_ratio"),
    pytest.param("decoder_num_attention_heads", (3,), id="decoder heads not dividing"),
]


@pytest.mark.parametrize(("field", "values"), INVALID)
def test_impossible_config_values_name_the_field(field: str, values: tuple) -> None:
    assert_config_error(
        ViTMAEConfig, TINY, field, values, builders=[ViTMAEModel, ViTMAEForPreTraining]
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"decoder_num_attention_heads": 3}, "decoder_hidden_size=20 is not divisible by"),
        ({"hidden_size": 42}, "hidden_size=42 is not a multiple of 4"),
        ({"decoder_hidden_size": 22}, "decoder_hidden_size=22 is not a multiple of 4"),
        ({"image_size": 26}, "image_size=26 is not a whole number of patches of patch_size=4"),
        ({"patch_size": [4, 2]}, r"patch_size must be one int"),
    ],
    ids=["decoder heads", "width", "decoder width", "whole patches", "square patches"],
)
def test_what_the_model_cannot_build_is_explained(changes: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        ViTMAEConfig(**{**TINY, "decoder_num_attention_heads": 2, **changes})
