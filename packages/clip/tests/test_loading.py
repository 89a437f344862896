"""Loading transformers' CLIP checkpoints: a hub id through the same path as a directory,
converted models that save in our layout, transformers' directories that still load as
transformers' models, and a checkpoint missing a weight refused by name."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scratchformers.clip import CLIPModel
from scratchformers.core_attention.testing import lay_out_hub_cache


def test_a_hub_id_loads_through_the_same_path(make_theirs, texts, images, tmp_path, assert_matches):
    theirs = make_theirs()
    theirs.save_pretrained(tmp_path / "saved")
    lay_out_hub_cache(
        tmp_path / "cache", "someone/tiny-clip", {"e" * 40: tmp_path / "saved"}, "e" * 40
    )
    model = CLIPModel.from_pretrained(
        "someone/tiny-clip", cache_dir=tmp_path / "cache", local_files_only=True
    )
    inputs = {**texts(), "pixel_values": images()}
    with torch.no_grad():
        assert_matches(
            model.eval()(**inputs).logits_per_image,
            theirs(**inputs).logits_per_image,
            what="hub logits",
        )


def test_converted_models_save_in_our_layout(make_pair, tmp_path):
    _, model, directory = make_pair()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    assert "text_model.layers.0.attention.q_proj.weight" in names
    assert "vision_model.embeddings.patch_embeddings.projection.weight" in names
    assert not [name for name in names if ".encoder." in name or "self_attn" in name]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "scratchformers-clip"
    assert config["text_config"]["model_type"] == "scratchformers-clip-text"
    # ... and transformers' directory is still transformers' model for transformers.
    assert type(transformers.AutoModel.from_pretrained(directory)) is transformers.CLIPModel


def test_a_checkpoint_missing_a_weight_is_refused(make_theirs, tmp_path):
    make_theirs().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["text_model.final_layer_norm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"text_model\.final_layer_norm\.weight"):
        CLIPModel.from_pretrained(tmp_path)


def test_attn_implementation_reaches_both_towers(make_pair):
    _, model, _ = make_pair(attn_implementation="eager")
    for tower in (model.text_model, model.vision_model):
        assert tower.layers[0].attention.attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert model.vision_model.layers[0].attention.attn_implementation == "sdpa"
