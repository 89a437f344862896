"""``from_timm``: timm's own ``VisionTransformer`` with random weights, converted, gives the
same logits (fp32, within 1e-4) for class-token models, mean-pooled ones (``fc_norm``), ones
without a class token and ones whose class token has no position; from the state dict or a
``.safetensors`` file. What the converter cannot build is refused by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from scratchformers.vit import ViTForImageClassification, from_timm

TINY = {
    "img_size": 20,
    "patch_size": 4,
    "embed_dim": 36,
    "depth": 3,
    "num_heads": 3,
    "num_classes": 5,
    "mlp_ratio": 52 / 36,
}

# (timm keyword arguments, what our config must say about them).
VARIANTS = {
    "class-token": ({}, {"pooling": "cls", "final_norm_position": "before_pooling"}),
    "avg-fc-norm": (
        {"global_pool": "avg"},
        {"pooling": "mean", "use_class_token": True, "final_norm_position": "after_pooling"},
    ),
    "no-class-token": (
        {"class_token": False, "global_pool": "avg", "qkv_bias": False},
        {"pooling": "mean", "use_class_token": False, "qkv_bias": False},
    ),
    "no-embed-class": ({"no_embed_class": True}, {"pooling": "cls", "use_class_token": True}),
}


@pytest.fixture
def make_timm(randomized: Callable) -> Callable[..., VisionTransformer]:
    """``make_timm(**options)``: timm's tiny ViT with every weight re-drawn, in eval mode."""
    return lambda **options: randomized(VisionTransformer(**TINY, **options), 0).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_timm(
    make_timm: Callable,
    images: Callable,
    assert_matches: Callable,
    variant: str,
    tmp_path: Path,
) -> None:
    options, expected_config = VARIANTS[variant]
    theirs = make_timm(**options)
    state = theirs.state_dict()
    if variant == "avg-fc-norm":  # also from a file, as timm's hub folders hold one
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
        ours = from_timm(tmp_path / "model.safetensors", num_attention_heads=3)
    else:
        ours = from_timm(state, num_attention_heads=3)
    assert type(ours) is ViTForImageClassification and not ours.training
    for name, value in expected_config.items():
        assert getattr(ours.config, name) == value, name
    assert (ours.config.layer_norm_eps, ours.config.image_size, ours.config.num_labels) == (
        1e-6,
        20,
        5,
    )
    pixels = images()
    with torch.no_grad():
        assert_matches(ours(pixels).logits, theirs(pixels), what="timm logit")


def test_activation_and_labels_from_keywords(
    make_timm: Callable, images: Callable, assert_matches: Callable
) -> None:
    theirs = make_timm(act_layer="quick_gelu")
    names = {i: f"class {i}" for i in range(5)}
    ours = from_timm(
        theirs.state_dict(), num_attention_heads=3, hidden_act="quick_gelu", id2label=names
    )
    assert ours.config.id2label == names
    with torch.no_grad():
        assert_matches(ours(images()).logits, theirs(images()), what="timm logit")


def test_converted_model_saves_and_reloads(
    make_timm: Callable, images: Callable, tmp_path: Path
) -> None:
    ours = from_timm(
        make_timm(global_pool="avg", class_token=False).state_dict(), num_attention_heads=3
    )
    ours.save_pretrained(tmp_path)
    reloaded = ViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images()).logits, ours(images()).logits)


def test_a_wrong_head_count_changes_the_logits(make_timm: Callable, images: Callable) -> None:
    """The head count is not in the weights: it must come from the caller."""
    theirs = make_timm()
    wrong = from_timm(theirs.state_dict(), num_attention_heads=4)
    with torch.no_grad():
        assert float((wrong(images()).logits - theirs(images())).abs().max()) > 1e-3


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"reg_tokens": 2}, "register tokens"),
        ({"init_values": 0.1}, "layer scale"),
        ({"pre_norm": True}, "a norm before the blocks"),
        ({"qk_norm": True}, "query/key norms"),
    ],
    ids=["registers", "layer-scale", "pre-norm", "qk-norm"],
)
def test_what_ours_does_not_build_is_refused(
    make_timm: Callable, options: dict, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        from_timm(make_timm(**options).state_dict(), num_attention_heads=3)


def test_keywords_that_contradict_the_weights_are_refused(make_timm: Callable) -> None:
    state = make_timm().state_dict()
    with pytest.raises(ValueError, match="hidden_size=48 contradicts"):
        from_timm(state, num_attention_heads=3, hidden_size=48)
    with pytest.raises(ValueError, match=r"image_size=24 makes 6x6 patches"):
        from_timm(state, num_attention_heads=3, image_size=24)
    with pytest.raises(ValueError, match=r"no 'head\.weight'"):
        from_timm({k: v for k, v in state.items() if not k.startswith("head.")})
