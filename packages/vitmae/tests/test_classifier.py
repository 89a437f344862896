"""After pretraining, the vit package's classifier takes the encoder in one call,
``ViTForImageClassification.from_pretrained(mae_dir, num_labels=...)``, from our MAE
directories and from transformers' ViTMAE ones: the encoder's weights (its fixed positions
included) are the MAE's, the classifier starts fresh and is named in a warning, and with
nothing masked the classifier's encoder computes the MAE encoder's output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchformers.vit import ViTForImageClassification, ViTModel
from scratchformers.vitmae import ViTMAEForPreTraining


@pytest.fixture(params=["ours", "transformers"])
def mae(
    request: pytest.FixtureRequest, make_config: Callable, make_theirs: Callable
) -> torch.nn.Module:
    """A pretrained MAE: ours (its fixed sin-cos positions), or transformers' (random
    weights everywhere)."""
    if request.param == "ours":
        return ViTMAEForPreTraining(make_config(initializer_range=0.2)).eval()
    return make_theirs("pretraining")


def test_the_classifier_takes_the_encoder(
    mae: torch.nn.Module,
    images: Callable,
    noise: Callable,
    assert_matches: Callable,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mae.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = ViTForImageClassification.from_pretrained(tmp_path, num_labels=4).eval()
    assert "(train them before use): ['classifier.bias', 'classifier.weight']" in caplog.text
    assert type(model) is ViTForImageClassification and model.classifier.out_features == 4
    assert "mask_ratio" not in model.config.to_dict()

    state, encoder = model.state_dict(), mae.vit.state_dict()
    assert set(state) == {f"vit.{name}" for name in encoder} | {
        "classifier.weight",
        "classifier.bias",
    }
    for name, tensor in encoder.items():
        assert torch.equal(state[f"vit.{name}"], tensor), name
    assert model.vit.embeddings.position_embeddings.requires_grad  # learned from here on

    pixels = images()
    mae.config.mask_ratio = 0.0
    with torch.no_grad():
        vit = model.vit(pixels).last_hidden_state
        # In image order the MAE encoder's sequence is the ViT's ...
        in_order = mae.vit(pixels, noise=torch.arange(36.0).expand(3, -1))
        assert_matches(in_order.last_hidden_state, vit, what="encoder output")
        # ... and in noise order, ids_restore puts it back.
        shuffled = mae.vit(pixels, noise=noise())
        patches = shuffled.last_hidden_state[:, 1:]
        restored = patches.gather(1, shuffled.ids_restore[..., None].expand(-1, -1, 36))
        assert not torch.allclose(patches, vit[:, 1:], atol=1e-2)
        assert_matches(restored, vit[:, 1:], what="encoder output")
        assert_matches(shuffled.last_hidden_state[:, 0], vit[:, 0], what="encoder output")
        assert model(pixels).logits.shape == (3, 4)


def test_the_bare_vit_starts_its_pooler_fresh(
    mae: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mae.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = ViTModel.from_pretrained(tmp_path)
    assert "['pooler.dense.bias', 'pooler.dense.weight']" in caplog.text
    assert torch.equal(model.layers[1].mlp.fc1.weight, mae.vit.layers[1].mlp.fc1.weight)
