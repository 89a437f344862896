"""Loading transformers' ViT directories into our classes (each class's save_pretrained, with
and without the pooler; files in the hub's names and in transformers' in-memory names; a hub
id from a cache laid out on disk), refusing one that leaves a weight unfilled, and exporting
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
from scratchformers.vit import ViTForImageClassification, ViTModel, export_to_transformers
from scratchformers.vit.convert import CONVERTER

# (their model saved, our class loading it, keyword arguments): every load that fills ours.
LOADS = {
    "ViTModel->ViTModel": ("base", ViTModel, {}),
    "ViTModel(no pooler)->ViTModel(no pooler)": (
        "base-no-pooler",
        ViTModel,
        {"add_pooling_layer": False},
    ),
    "ViTForImageClassification->ViTForImageClassification": (
        "cls",
        ViTForImageClassification,
        {},
    ),
    "ViTForImageClassification->ViTModel(no pooler)": (
        "cls",
        ViTModel,
        {"add_pooling_layer": False},
    ),
}


def _compare(
    model: torch.nn.Module, theirs: torch.nn.Module, pixels: torch.Tensor, assert_matches: Callable
) -> None:
    with torch.no_grad():
        if isinstance(model, ViTModel):
            got, expected = model(pixels), getattr(theirs, "vit", theirs)(pixels)
            assert_matches(got.last_hidden_state, expected.last_hidden_state, what="hidden state")
            if model.pooler is not None:
                assert_matches(got.pooler_output, expected.pooler_output, what="pooler output")
        else:
            assert_matches(model(pixels).logits, theirs(pixels).logits)


@pytest.mark.parametrize("load", sorted(LOADS))
def test_transformers_directories_load_with_their_outputs(
    make_theirs: Callable,
    images: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    load: str,
) -> None:
    kind, our_class, kwargs = LOADS[load]
    theirs = make_theirs(kind)
    theirs.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        # What transformers writes: the hub's names, which its own loader renames.
        assert any("encoder.layer.0.attention.attention.query." in k for k in handle.keys())  # noqa: SIM118
    model, info = our_class.from_pretrained(tmp_path, output_loading_info=True, **kwargs)
    assert type(model) is our_class and not info["missing_keys"], info
    if kind != "cls" or our_class is ViTForImageClassification:
        assert not info["unexpected_keys"], info
    _compare(model.eval(), theirs, images(), assert_matches)


def test_a_file_in_transformers_in_memory_names_loads_too(
    make_theirs: Callable, images: Callable, assert_matches: Callable, tmp_path: Path
) -> None:
    """Files written from the in-memory state dict (``layers.<i>.attention.q_proj``) rather
    than by save_pretrained."""
    theirs = make_theirs("cls")
    theirs.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    assert "vit.layers.0.attention.q_proj.weight" in state
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = ViTForImageClassification.from_pretrained(tmp_path).eval()
    _compare(model, theirs, images(), assert_matches)


def test_fine_tuning_starts_from_a_bare_checkpoint(
    make_theirs: Callable, images: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers' ViTModel has no classifier (ViT's usual pretrained checkpoints are bare):
    our classifier loads its body and starts the classifier fresh, naming it, as transformers
    does for fine-tuning; a bare model of ours from a classifier's checkpoint starts its
    pooler fresh."""
    theirs = make_theirs("base")
    theirs.save_pretrained(tmp_path / "base")
    with caplog.at_level("WARNING"):
        model = ViTForImageClassification.from_pretrained(tmp_path / "base", num_labels=7)
    assert (
        "initial values (train them before use): ['classifier.bias', 'classifier.weight']"
        in caplog.text
    )
    pixels = images()
    with torch.no_grad():
        body = model.eval().vit(pixels).last_hidden_state
        assert model(pixels).logits.shape == (3, 7) and len(model.config.id2label) == 7
    torch.testing.assert_close(body, theirs(pixels).last_hidden_state, atol=1e-4, rtol=0)

    make_theirs("cls").save_pretrained(tmp_path / "cls")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert ViTModel.from_pretrained(tmp_path / "cls").pooler is not None
    assert "pooler.dense.weight" in caplog.text


def test_the_encoder_of_a_transformers_vitmae_checkpoint_fine_tunes(
    randomized: Callable,
    images: Callable,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After masked-autoencoder pretraining: the classifier reads the encoder of transformers'
    ViTMAEForPreTraining (its fixed positions included), starts the classifier fresh, names
    it, and leaves the decoder and the MAE's config fields out. With nothing masked, in image
    order, the MAE encoder computes what our ViT computes."""
    config = transformers.ViTMAEConfig(
        image_size=20,
        patch_size=4,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=52,
        decoder_hidden_size=20,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=28,
        mask_ratio=0.0,
    )
    mae = randomized(transformers.ViTMAEForPreTraining(config), 3).eval()
    mae.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = ViTForImageClassification.from_pretrained(tmp_path, num_labels=4).eval()
    assert "(train them before use): ['classifier.bias', 'classifier.weight']" in caplog.text
    assert "decoder" not in caplog.text
    assert "decoder_hidden_size" not in model.config.to_dict()
    assert model.config.model_type == "scratchformers-vit" and model.config.num_labels == 4
    state = model.state_dict()
    for name, tensor in mae.vit.state_dict().items():
        assert torch.equal(state[f"vit.{name}"], tensor), name
    pixels = images()
    in_order = torch.arange(25.0).expand(3, -1)
    with torch.no_grad():
        expected = mae.vit(pixels, noise=in_order).last_hidden_state
        torch.testing.assert_close(model.vit(pixels).last_hidden_state, expected, atol=1e-4, rtol=0)
    assert ViTModel.from_pretrained(tmp_path).pooler is not None  # started fresh


def test_a_checkpoint_missing_a_body_weight_is_refused(
    make_theirs: Callable, tmp_path: Path
) -> None:
    """Only a task head may start fresh: a checkpoint without one of the encoder's weights
    raises, naming it, where transformers would initialise it at random and warn."""
    make_theirs("cls").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["vit.encoder.layer.1.output.dense.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"vit\.layers\.1\.mlp\.fc2\.weight"):
        ViTForImageClassification.from_pretrained(tmp_path)


def test_config_fields_and_labels_are_read(make_pair: Callable) -> None:
    names = {0: "ant", 1: "bee", 2: "cow"}
    label2id = {name: i for i, name in names.items()}
    pair = make_pair(
        "cls",
        hidden_act="quick_gelu",
        layer_norm_eps=0.3,
        qkv_bias=False,
        num_labels=3,
        id2label=names,
        label2id=label2id,
    )
    config = pair.ours.config
    assert config.model_type == "scratchformers-vit"
    assert (config.hidden_act, config.layer_norm_eps, config.qkv_bias) == ("quick_gelu", 0.3, False)
    assert (config.id2label, config.label2id, config.num_labels) == (names, label2id, 3)
    assert pair.ours.vit.layers[0].attention.q_proj.bias is None
    assert (config.pooling, config.use_class_token) == ("cls", True)


def test_a_hub_id_loads_through_the_same_path(
    make_theirs: Callable, images: Callable, assert_matches: Callable, tmp_path: Path
) -> None:
    theirs = make_theirs("cls")
    theirs.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "cache"
    lay_out_hub_cache(cache, "someone/tiny-vit", {"c" * 40: tmp_path / "saved"}, "c" * 40)
    model = ViTForImageClassification.from_pretrained(
        "someone/tiny-vit", cache_dir=cache, local_files_only=True
    ).eval()
    _compare(model, theirs, images(), assert_matches)


def test_converted_models_save_in_our_layout(make_pair: Callable, tmp_path: Path) -> None:
    pair = make_pair("cls")
    pair.ours.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    assert "vit.layers.0.attention.q_proj.weight" in names
    assert not [name for name in names if ".encoder." in name], names
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "scratchformers-vit"
    reloaded = ViTForImageClassification.from_pretrained(tmp_path)
    for name, tensor in pair.ours.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_transformers_directories_still_load_as_transformers_models(make_pair: Callable) -> None:
    """Importing scratchformers.vit does not take over model_type "vit" from transformers."""
    pair = make_pair("cls")
    loaded = transformers.AutoModelForImageClassification.from_pretrained(pair.directory)
    assert type(loaded) is transformers.ViTForImageClassification


def _keys(directory: Path) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as handle:
        return set(handle.keys())


@pytest.mark.parametrize(
    ("kind", "their_class", "overrides"),
    [
        ("cls", transformers.ViTForImageClassification, {"problem_type": "regression"}),
        ("base", transformers.ViTModel, {"pooler_act": "relu", "pooler_output_size": 20}),
    ],
    ids=["cls", "base"],
)
def test_export_loads_in_transformers_with_the_same_outputs(
    make_pair: Callable,
    images: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    kind: str,
    their_class: type,
    overrides: dict,
) -> None:
    """transformers -> ours -> transformers: their class loads the export with nothing
    missing or left over, the same config and the very same tensors."""
    pair = make_pair(kind, **overrides)
    out = export_to_transformers(pair.ours, tmp_path / "exported")
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "vit" and "pooling" not in written
    back, info = their_class.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert _keys(out) == _keys(pair.directory)
    theirs_state, back_state = pair.theirs.state_dict(), back.state_dict()
    assert theirs_state.keys() == back_state.keys()
    for key, tensor in theirs_state.items():
        assert torch.equal(back_state[key], tensor), key
    for name, value in overrides.items():
        assert getattr(back.config, name) == value, name
    pixels = images()
    with torch.no_grad():
        got, expected = back.eval()(pixels), pair.ours(pixels)
    what = "pooler_output" if kind == "base" else "logits"
    assert_matches(getattr(got, what), getattr(expected, what), what="exported output")


def test_export_of_a_model_of_ours_loads_in_transformers(
    make_config: Callable, images: Callable, assert_matches: Callable, tmp_path: Path
) -> None:
    model = ViTForImageClassification(make_config(initializer_range=0.2)).eval()
    theirs, info = transformers.ViTForImageClassification.from_pretrained(
        export_to_transformers(model, tmp_path), output_loading_info=True
    )
    assert not any(info.values()), info
    pixels = images()
    with torch.no_grad():
        assert_matches(model(pixels).logits, theirs.eval()(pixels).logits)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"pooling": "mean"}, "pooling"),
        ({"use_class_token": False, "pooling": "mean"}, "use_class_token"),
        ({"final_norm_position": "after_pooling"}, "final_norm_position"),
        ({"patch_bias": False}, "patch_bias"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_what_transformers_cannot_compute_is_not_exported(
    make_config: Callable, tmp_path: Path, options: dict, field: str
) -> None:
    model = ViTForImageClassification(make_config(**options))
    with pytest.raises(ValueError, match=field):
        export_to_transformers(model, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_bare_model_without_pooler_is_not_exported(make_config: Callable, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="add_pooling_layer"):
        export_to_transformers(ViTModel(make_config(), add_pooling_layer=False), tmp_path)


def test_state_conversion_inverts_itself(make_pair: Callable, make_config: Callable) -> None:
    pair = make_pair("cls")
    with safe_open(pair.directory / "model.safetensors", framework="pt") as handle:
        theirs = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    ours = CONVERTER.state_from_transformers(theirs)
    assert "vit.layers.2.attention.q_proj.weight" in ours
    assert "vit.layers.2.attention.o_proj.bias" in ours
    assert "vit.layers.0.mlp.fc2.weight" in ours
    assert set(ours) == set(ViTForImageClassification(make_config()).state_dict())
    back = CONVERTER.state_to_transformers(ours)
    assert back.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert torch.equal(back[key], tensor), key
