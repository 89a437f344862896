"""The contracts of ``scratchformers.core_attention.testing`` for CLIPModel (a bit-exact
save/load round trip, the Auto classes, config and input errors that name the problem), and
CLIP's own: the named ViT-B/32 shape, the fresh initialisation, the loss's pairing rule."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification

from scratchformers.clip import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextTransformer,
    CLIPVisionConfig,
    CLIPVisionTransformer,
)
from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_save_load_round_trip,
    invalid_config_values,
)


@pytest.fixture
def model(make_config, randomized) -> CLIPModel:
    return randomized(CLIPModel(make_config())).eval()


@pytest.fixture
def inputs(texts, images) -> dict[str, torch.Tensor]:
    return {**texts(), "pixel_values": images()}


def test_round_trip_is_bit_exact(model, inputs, tmp_path):
    assert_save_load_round_trip(model, tmp_path, inputs)


def test_damaged_checkpoints_name_the_file_tensor_and_field(model, make_pair, tmp_path):
    """Ours and transformers' folders alike: empty, truncated and foreign weight files, a
    tensor of another shape and a config.json without projection_dim name their cause."""
    assert_damaged_checkpoints_raise(model, tmp_path / "ours", "projection_dim")
    pair = make_pair()
    assert_damaged_checkpoints_raise(
        pair.ours, tmp_path / "theirs", "projection_dim", checkpoint=pair.directory
    )


def test_auto_classes_load_ours(model, inputs, tmp_path):
    assert_auto_classes_load(model, tmp_path, AutoModelForZeroShotImageClassification, inputs)
    assert type(AutoModel.from_pretrained(tmp_path)) is CLIPModel
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config.text_config) is CLIPTextConfig
    assert type(config.vision_config) is CLIPVisionConfig


def test_the_vit_b32_preset_has_openai_s_shape():
    ours = CLIPConfig.from_preset("ViT-B/32")
    theirs = transformers.CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8},
        vision_config={"hidden_size": 768, "patch_size": 32, "num_attention_heads": 12},
        projection_dim=512,
    )
    with torch.device("meta"):
        ours_count = sum(p.numel() for p in CLIPModel(ours).parameters())
        their_count = sum(p.numel() for p in transformers.CLIPModel(theirs).parameters())
    assert ours_count == their_count == 151_277_313
    changed = CLIPConfig.from_preset(
        "ViT-B/32", vision_config={"image_size": 96}, projection_dim=64
    )
    assert (changed.vision_config.image_size, changed.vision_config.patch_size) == (96, 32)
    assert changed.projection_dim == 64
    with pytest.raises(ValueError, match="ViT-B/32"):
        CLIPConfig.from_preset("ViT-Z/99")


def test_a_fresh_model_starts_as_clip_does(make_config):
    model = CLIPModel(make_config())
    assert float(model.logit_scale) == pytest.approx(2.6592)  # ln(1 / 0.07)
    # The projections are scaled by the width they read (40 for the text tower).
    assert float(model.text_projection.weight.std()) == pytest.approx(40**-0.5, rel=0.15)
    assert float(model.vision_model.embeddings.class_embedding.std()) == pytest.approx(
        48**-0.5, rel=0.3
    )
    layer = model.text_model.layers[0]
    assert float(layer.attention.q_proj.weight.std()) == pytest.approx(0.02, rel=0.15)
    assert float(layer.layernorm_before.weight.min()) == 1.0


def test_loss_pairs_the_ith_text_with_the_ith_image(model, inputs):
    with torch.no_grad():
        output = model(**inputs, return_loss=True)
        targets = torch.arange(3)
        expected = (
            torch.nn.functional.cross_entropy(output.logits_per_image, targets)
            + torch.nn.functional.cross_entropy(output.logits_per_text, targets)
        ) / 2
        assert float(output.loss) == pytest.approx(float(expected), abs=1e-6)
        fewer_images = {**inputs, "pixel_values": inputs["pixel_values"][:2]}
        with pytest.raises(ValueError, match=r"2 images.*3 texts"):
            model(**fewer_images, return_loss=True)
        assert model(**fewer_images).logits_per_image.shape == (2, 3)  # no loss: any counts


def test_input_errors_name_the_problem(model, inputs):
    assert_input_errors(model, inputs)
    assert_empty_inputs_raise(model.text_model, {"input_ids": inputs["input_ids"]})
    no_eos = inputs["input_ids"].clone()
    no_eos[1][no_eos[1] == model.config.text_config.eos_token_id] = 5
    with pytest.raises(ValueError, match=r"rows \[1\].*end-of-text.*eos_token_id=98"):
        model(**{**inputs, "input_ids": no_eos})
    with pytest.raises(ValueError, match=r"28x28.*20x20.*interpolate_pos_encoding"):
        model.get_image_features(torch.zeros(1, 3, 28, 28))
    longer = torch.full((1, 17), 5)
    longer[0, -1] = 98
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model.get_text_features(longer)


TEXT = {"vocab_size": 99, "hidden_size": 40, "num_attention_heads": 4, "eos_token_id": 98}
VISION = {"hidden_size": 48, "num_attention_heads": 3, "image_size": 20, "patch_size": 4}
TOWER_CASES = [
    (config_class, builder, valid, field, values)
    for config_class, builder, valid in (
        (CLIPTextConfig, CLIPTextTransformer, TEXT),
        (CLIPVisionConfig, CLIPVisionTransformer, VISION),
    )
    for field, values in {
        **invalid_config_values(config_class(**valid)),
        "attention_dropout": (1.0, -0.1),
        "hidden_act": ("swishy",),
    }.items()
]


@pytest.mark.parametrize(
    ("config_class", "builder", "valid", "field", "values"),
    TOWER_CASES,
    ids=[f"{case[0].__name__}-{case[3]}" for case in TOWER_CASES],
)
def test_tower_config_errors_name_the_field(config_class, builder, valid, field, values):
    assert_config_error(config_class, valid, field, values, builders=[builder])


def test_model_config_errors_name_the_field():
    valid = {"text_config": TEXT, "vision_config": VISION, "projection_dim": 24}
    assert_config_error(CLIPConfig, valid, "projection_dim", (0, -3), builders=[CLIPModel])
    for field, value in (("patch_size", 32), ("image_size", 0)):
        with pytest.raises(ValueError, match=rf"{field}={value}|{field} must"):
            CLIPVisionConfig(**{**VISION, field: value})
    with pytest.raises(ValueError, match=r"eos_token_id=120.*vocab_size=99"):
        CLIPTextConfig(**{**TEXT, "eos_token_id": 120})
