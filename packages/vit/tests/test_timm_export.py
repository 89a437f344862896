"""``export_to_timm``: our classifier with random weights, written as timm's Hub folder, is
built by timm's own ``VisionTransformer`` three ways (``local-dir:``, the architecture name
with ``pretrained=True`` and the file in ``pretrained_cfg_overlay``, and a strict
``load_state_dict``) and gives our logits within 1e-5, on odd shapes (non-square images and
patches, a width of 21 in 3 heads, an MLP of 51 that 51/21 does not give timm, 3 images).
What timm cannot compute is refused by name before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from scratchformers.vit import (
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
    export_to_timm,
    from_timm,
    options_from_timm_config,
)

ODD = {
    "image_size": [20, 28],
    "patch_size": [4, 7],
    "hidden_size": 21,
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 51,
    "num_labels": 5,
    "layer_norm_eps": 1e-6,
}

# Our options -> the timm model_args they must come out as.
VARIANTS = {
    "class-token": ({}, {"global_pool": "token", "class_token": True, "fc_norm": False}),
    "mean-fc-norm": (
        {"pooling": "mean", "final_norm_position": "after_pooling"},
        {"global_pool": "avg", "fc_norm": True},
    ),
    "cls-fc-norm": (
        {"final_norm_position": "after_pooling"},
        {"global_pool": "token", "fc_norm": True},
    ),
    "mean-norm": ({"pooling": "mean"}, {"global_pool": "avg", "fc_norm": False}),
    "no-class-token-quick-gelu": (
        {
            "use_class_token": False,
            "pooling": "mean",
            "qkv_bias": False,
            "hidden_act": "quick_gelu",
        },
        {"class_token": False, "qkv_bias": False, "act_layer": "quick_gelu"},
    ),
}


@pytest.fixture
def match_tolerance() -> float:
    return 1e-5


@pytest.fixture
def make_ours(randomized: Callable) -> Callable[..., ViTForImageClassification]:
    """``make_ours(**options)``: our classifier of the odd shape, every weight re-drawn."""
    return lambda **options: randomized(ViTForImageClassification(ViTConfig(**ODD, **options)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_timm_builds_the_export_with_our_logits(
    make_ours: Callable,
    images: Callable,
    assert_matches: Callable,
    variant: str,
    tmp_path: Path,
) -> None:
    options, expected_args = VARIANTS[variant]
    ours = make_ours(**options).eval()
    out = export_to_timm(ours, tmp_path / "timm", image_mean=(0.1, 0.2, 0.3))
    config = json.loads((out / "config.json").read_text())
    args = config["model_args"]
    assert {name: args[name] for name in expected_args} == expected_args
    assert (args["img_size"], args["patch_size"], args["embed_dim"], args["depth"]) == (
        [20, 28],
        [4, 7],
        21,
        2,
    )
    assert (args["num_heads"], config["num_classes"], config["num_features"]) == (3, 5, 21)
    assert config["pretrained_cfg"]["input_size"] == [3, 20, 28]
    assert config["pretrained_cfg"]["mean"] == [0.1, 0.2, 0.3]

    weights = out / "model.safetensors"
    from_local_dir = timm.create_model(f"local-dir:{out}", pretrained=True)
    by_name = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights), "num_classes": config["num_classes"]},
        **args,
    )
    strict = timm.create_model(config["architecture"], **args)
    strict.load_state_dict(load_file(weights), strict=True)
    # local-dir: carries the normalisation to timm's data config.
    assert tuple(timm.data.resolve_data_config({}, model=from_local_dir)["mean"]) == (0.1, 0.2, 0.3)

    pixels = images(batch=3, height=20, width=28)
    with torch.no_grad():
        expected = ours(pixels).logits
        for theirs in (from_local_dir, by_name, strict):
            assert_matches(theirs.eval()(pixels), expected, what="timm export logit")


def test_by_name_timm_drops_the_head_unless_the_overlay_gives_num_classes(
    make_ours: Callable, images: Callable, tmp_path: Path
) -> None:
    """What the README warns of: by name, timm compares the file with the architecture's own
    pretrained config (1000 classes), and without ``num_classes`` in the overlay starts the
    head afresh."""
    ours = make_ours().eval()
    out = export_to_timm(ours, tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())
    overlay = {"file": str(out / "model.safetensors")}
    theirs = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        **config["model_args"],
    )
    pixels = images(batch=2, height=20, width=28)
    with torch.no_grad():
        assert float((theirs.eval()(pixels) - ours(pixels).logits).abs().max()) > 1e-2


def test_the_export_reads_back_with_from_timm(
    make_ours: Callable, images: Callable, tmp_path: Path
) -> None:
    names = {index: f"shape {index}" for index in range(5)}
    ours = make_ours(pooling="mean", id2label=names).eval()
    out = export_to_timm(ours, tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == [names[index] for index in range(5)]
    back = from_timm(out, image_size=[20, 28], **options_from_timm_config(config))
    assert back.config.id2label == names
    pixels = images(batch=2, height=20, width=28)
    with torch.no_grad():
        assert torch.equal(back(pixels).logits, ours(pixels).logits)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"patch_bias": False}, "patch_bias=False"),
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
        ({"layer_norm_eps": 1e-12}, "layer_norm_eps=1e-12"),
    ],
    ids=["patch-bias", "activation", "epsilon"],
)
def test_what_timm_cannot_compute_is_refused_before_writing(
    options: dict, named: str, tmp_path: Path
) -> None:
    model = ViTForImageClassification(ViTConfig(**{**ODD, **options}))
    with pytest.raises(ValueError, match=named):
        export_to_timm(model, tmp_path / "timm")
    assert not (tmp_path / "timm").exists()
    with pytest.raises(TypeError, match="ViTForImageClassification"):
        export_to_timm(ViTModel(ViTConfig(**ODD)), tmp_path / "timm")  # type: ignore[arg-type]
    assert not (tmp_path / "timm").exists()
