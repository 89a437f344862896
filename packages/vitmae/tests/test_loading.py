"""Loading transformers' ViTMAE directories into our classes (each class's save_pretrained; the
hub's file names for the decoder; a hub id from a cache laid out on disk), refusing one that
leaves an encoder weight unfilled, starting a decoder fresh on a bare encoder, and exporting
back: transformers' classes load our exports with no missing or unexpected keys and the same
outputs, and the in-memory conversion inverts itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scratchformers.core_attention.testing import lay_out_hub_cache
from scratchformers.vitmae import ViTMAEForPreTraining, ViTMAEModel, export_to_transformers
from scratchformers.vitmae.convert import CONVERTER


def _keys(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return set(handle.keys())


def _compare(
    model: torch.nn.Module,
    theirs: torch.nn.Module,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
) -> None:
    pixels, chosen = images(), noise()
    with torch.no_grad():
        got = model(pixels, noise=chosen)
        if isinstance(model, ViTMAEModel):
            expected = getattr(theirs, "vit", theirs)(pixels, noise=chosen)
            assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")
        else:
            expected = theirs(pixels, noise=chosen)
            assert_matches(got.logits, expected.logits)
            assert_matches(got.loss, expected.loss, what="loss")
    assert torch.equal(got.mask, expected.mask)


# (their model saved, our class loading it): every load that fills ours.
LOADS = {
    "ViTMAEForPreTraining->ViTMAEForPreTraining": ("pretraining", ViTMAEForPreTraining),
    "ViTMAEModel->ViTMAEModel": ("base", ViTMAEModel),
    "ViTMAEForPreTraining->ViTMAEModel": ("pretraining", ViTMAEModel),
}


@pytest.mark.parametrize("load", sorted(LOADS))
def test_transformers_directories_load_with_their_outputs(
    make_theirs: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    load: str,
) -> None:
    kind, our_class = LOADS[load]
    theirs = make_theirs(kind)
    theirs.save_pretrained(tmp_path)
    # What transformers writes: the hub's ViT names, which its own loader renames.
    assert any("encoder.layer.0.attention.attention.query." in k for k in _keys(tmp_path))
    model, info = our_class.from_pretrained(tmp_path, output_loading_info=True)
    assert type(model) is our_class and not info["missing_keys"], info
    if kind == "base" or our_class is ViTMAEForPreTraining:
        assert not info["unexpected_keys"], info
    _compare(model.eval(), theirs, images, noise, assert_matches)


def test_the_hubs_decoder_names_load_too(
    make_theirs: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    tmp_path: Path,
) -> None:
    """The hub's files (facebook/vit-mae-*) name the decoder's layers ``decoder.
    decoder_layers.<i>.attention.attention.query``; transformers' save_pretrained writes
    ``decoder.decoder_encoder.layer.<i>...``."""
    theirs = make_theirs("pretraining")
    theirs.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert "decoder.decoder_encoder.layer.1.output.dense.weight" in weights
    hub = {k.replace("decoder_encoder.layer.", "decoder_layers."): v for k, v in weights.items()}
    save_file(hub, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = ViTMAEForPreTraining.from_pretrained(tmp_path).eval()
    _compare(model, theirs, images, noise, assert_matches)


def test_a_bare_encoder_starts_a_fresh_decoder(
    make_theirs: Callable, images: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pretraining continued from transformers' ViTMAEModel: the decoder starts from its
    initial values (its positions the sin-cos table), named in a warning."""
    theirs = make_theirs("base")
    theirs.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = ViTMAEForPreTraining.from_pretrained(tmp_path)
    assert "start from their initial values" in caplog.text
    assert "decoder.decoder_embed.weight" in caplog.text and "vit." not in caplog.text
    assert torch.equal(model.vit.layers[1].mlp.fc2.weight, theirs.layers[1].mlp.fc2.weight)
    assert model.decoder.decoder_pos_embed[0, 1:].abs().sum() > 0
    assert torch.isfinite(model(images()).loss)


def test_a_checkpoint_missing_an_encoder_weight_is_refused(
    make_theirs: Callable, tmp_path: Path
) -> None:
    make_theirs("pretraining").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["vit.encoder.layer.1.output.dense.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"vit\.layers\.1\.mlp\.fc2\.weight"):
        ViTMAEForPreTraining.from_pretrained(tmp_path)


def test_config_fields_are_read(make_pair: Callable) -> None:
    pair = make_pair("pretraining", norm_pix_loss=True, mask_ratio=0.5, layer_norm_eps=0.3)
    config = pair.ours.config
    assert config.model_type == "scratchformers-vitmae"
    assert (config.norm_pix_loss, config.mask_ratio, config.layer_norm_eps) == (True, 0.5, 0.3)
    assert pair.ours.decoder.decoder_norm.eps == 0.3


def test_a_hub_id_loads_through_the_same_path(
    make_theirs: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    tmp_path: Path,
) -> None:
    theirs = make_theirs("pretraining")
    theirs.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "cache"
    lay_out_hub_cache(cache, "someone/tiny-vit-mae", {"d" * 40: tmp_path / "saved"}, "d" * 40)
    model = ViTMAEForPreTraining.from_pretrained(
        "someone/tiny-vit-mae", cache_dir=cache, local_files_only=True
    ).eval()
    _compare(model, theirs, images, noise, assert_matches)


def test_converted_models_save_in_our_layout(make_pair: Callable, tmp_path: Path) -> None:
    pair = make_pair("pretraining")
    pair.ours.save_pretrained(tmp_path)
    names = _keys(tmp_path)
    assert "vit.layers.0.attention.q_proj.weight" in names
    assert "decoder.decoder_layers.1.mlp.fc2.weight" in names
    assert not [name for name in names if "encoder.layer" in name], names
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "scratchformers-vitmae"
    reloaded = ViTMAEForPreTraining.from_pretrained(tmp_path)
    for name, tensor in pair.ours.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_transformers_directories_still_load_as_transformers_models(make_pair: Callable) -> None:
    """Importing scratchformers.vitmae does not take over model_type "vit_mae"."""
    pair = make_pair("pretraining")
    loaded = transformers.AutoModelForPreTraining.from_pretrained(pair.directory)
    assert type(loaded) is transformers.ViTMAEForPreTraining


@pytest.mark.parametrize(
    ("kind", "their_class"),
    [("pretraining", transformers.ViTMAEForPreTraining), ("base", transformers.ViTMAEModel)],
    ids=["pretraining", "base"],
)
def test_export_loads_in_transformers_with_the_same_outputs(
    make_pair: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    kind: str,
    their_class: type,
) -> None:
    """transformers -> ours -> transformers: their class loads the export with nothing
    missing or left over, the same config and the very same tensors."""
    pair = make_pair(kind, norm_pix_loss=True)
    out = export_to_transformers(pair.ours, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["model_type"] == "vit_mae"
    back, info = their_class.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert _keys(out) == _keys(pair.directory)
    assert back.config.norm_pix_loss and back.config.decoder_hidden_size == 20
    theirs_state, back_state = pair.theirs.state_dict(), back.state_dict()
    assert theirs_state.keys() == back_state.keys()
    for key, tensor in theirs_state.items():
        assert torch.equal(back_state[key], tensor), key
    _compare(pair.ours, back.eval(), images, noise, assert_matches)


def test_export_of_a_model_of_ours_loads_in_transformers(
    make_config: Callable,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    tmp_path: Path,
) -> None:
    """Its fixed positions included: transformers' fresh models would hold zeros there."""
    model = ViTMAEForPreTraining(make_config(initializer_range=0.2)).eval()
    theirs, info = transformers.ViTMAEForPreTraining.from_pretrained(
        export_to_transformers(model, tmp_path), output_loading_info=True
    )
    assert not any(info.values()), info
    table = model.vit.embeddings.position_embeddings
    assert torch.equal(theirs.vit.embeddings.position_embeddings, table)
    _compare(model, theirs.eval(), images, noise, assert_matches)


def test_a_non_square_image_is_not_exported(make_config: Callable, tmp_path: Path) -> None:
    model = ViTMAEModel(make_config(image_size=[24, 16]))
    with pytest.raises(ValueError, match=r"image_size=\[24, 16\]"):
        export_to_transformers(model, tmp_path)
    assert not list(tmp_path.iterdir())


def test_state_conversion_inverts_itself(make_pair: Callable, make_config: Callable) -> None:
    pair = make_pair("pretraining")
    with safe_open(pair.directory / "model.safetensors", framework="pt") as handle:
        theirs = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    ours = CONVERTER.state_from_transformers(theirs)
    assert "vit.layers.1.attention.q_proj.weight" in ours
    assert "decoder.decoder_layers.1.attention.o_proj.bias" in ours
    assert set(ours) == set(ViTMAEForPreTraining(make_config()).state_dict())
    back = CONVERTER.state_to_transformers(ours)
    assert back.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert torch.equal(back[key], tensor), key
