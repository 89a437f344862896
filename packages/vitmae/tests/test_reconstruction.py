"""Looking at and probing a masked autoencoder: the four reconstruction panels, the PNG grids
and the command that draws them from a saved folder, the frozen encoder's features (the
vit encoder's, with every patch visible), and the linear probe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor

import scratchformers.vitmae as ours
from scratchformers.vit import ViTModel
from scratchformers.vitmae.probe import image_features, linear_probe
from scratchformers.vitmae.reconstruct import main as reconstruct_command
from scratchformers.vitmae.reconstruction import PANELS, reconstruct, save_reconstructions

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_the_panels_paste_the_visible_patches_back(
    make_config: Callable[..., ours.ViTMAEConfig],
    images: Callable[..., torch.Tensor],
    noise: Callable[..., torch.Tensor],
    norm_pix_loss: bool,
) -> None:
    model = ours.ViTMAEForPreTraining(make_config(norm_pix_loss=norm_pix_loss)).eval()
    pixels, fixed = images(), noise()
    panels = reconstruct(model, pixels, fixed)
    with torch.no_grad():
        output = model(pixel_values=pixels, noise=fixed)
    hidden = output.mask.bool()
    assert torch.equal(panels["mask"], output.mask)
    patches = {name: model.patchify(panels[name]) for name in PANELS}
    assert torch.equal(patches["original"], model.patchify(pixels))
    assert not patches["masked"][hidden].any(), "hidden patches are blank"
    assert torch.equal(patches["masked"][~hidden], patches["original"][~hidden])
    # Visible patches are the image's own; hidden ones the model's prediction.
    assert torch.equal(patches["visible + reconstruction"][~hidden], patches["original"][~hidden])
    predicted = output.logits
    if norm_pix_loss:  # put each true patch's mean and variance back
        target = model.patchify(pixels)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        predicted = predicted * (var + 1e-6) ** 0.5 + mean
    torch.testing.assert_close(patches["reconstruction"], predicted)
    torch.testing.assert_close(patches["visible + reconstruction"][hidden], predicted[hidden])


def test_grids_are_written_one_per_image_with_an_overview(
    make_config: Callable[..., ours.ViTMAEConfig],
    images: Callable[..., torch.Tensor],
    tmp_path: Path,
) -> None:
    model = ours.ViTMAEForPreTraining(make_config()).eval()
    paths = save_reconstructions(model, images(), MEAN, STD, tmp_path / "grids")
    assert [path.name for path in paths] == ["sample_1.png", "sample_2.png", "sample_3.png"]
    strip = Image.open(paths[0])
    # Four panels of the 24-pixel image at 4x, each at least 96 wide, under a caption line.
    assert strip.width >= 4 * 96 and strip.height > 96
    overview = Image.open(tmp_path / "grids" / "overview.png")
    assert overview.size == (strip.width, 3 * strip.height)
    with pytest.raises(ValueError, match="2 names for 3 images"):
        save_reconstructions(model, images(), MEAN, STD, tmp_path, names=["a", "b"])


def test_the_command_draws_a_saved_folder_on_image_files(
    make_config: Callable[..., ours.ViTMAEConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "mae"
    ours.ViTMAEForPreTraining(make_config()).save_pretrained(folder)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 40, 40)).save(photo)
    assert reconstruct_command([str(folder), str(photo)]) == 2
    assert "has no preprocessor_config.json" in capsys.readouterr().err
    ViTImageProcessor(size={"height": 24, "width": 24}).save_pretrained(folder)
    out = tmp_path / "grids"
    assert reconstruct_command([str(folder), str(photo), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "photo.png") in printed
    assert Image.open(out / "photo.png").width >= 4 * 96
    assert reconstruct_command([str(folder), str(tmp_path / "missing.png")]) == 2
    assert "missing.png is not a file" in capsys.readouterr().err
    # What an earlier call wrote stays unless --overwrite says otherwise.
    before = (out / "photo.png").stat().st_mtime_ns
    assert reconstruct_command([str(folder), str(photo), "--out", str(out)]) == 2
    assert f"{out / 'photo.png'} already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "photo.png").stat().st_mtime_ns == before
    assert reconstruct_command([str(folder), str(photo), "--out", str(out), "--overwrite"]) == 0


def test_features_are_the_vit_encoders_with_every_patch_visible(
    make_config: Callable[..., ours.ViTMAEConfig],
    images: Callable[..., torch.Tensor],
    randomized: Callable[[torch.nn.Module, int], torch.nn.Module],
    tmp_path: Path,
) -> None:
    model = randomized(ours.ViTMAEForPreTraining(make_config()), 3).eval()
    model.save_pretrained(tmp_path)
    pixels = images(batch=5)
    features = image_features(model.vit, pixels, batch_size=2)  # in batches of 2: 2 + 2 + 1
    assert features.shape == (5, 2 * 2 * 36)  # two layers: class token and mean patch each
    assert model.config.mask_ratio == 0.6, "the mask ratio is restored"
    # The same encoder as the vit package's ViTModel, reading every patch in image order.
    vit = ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    with torch.no_grad():
        layers = vit(pixel_values=pixels, output_hidden_states=True).hidden_states[1:]
    expected = torch.cat([torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], -1) for h in layers], -1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_the_linear_probe_reads_what_the_features_hold() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=generator)
    centres = torch.randn(4, 12, generator=generator) * 3
    features = centres[labels] + torch.randn(400, 12, generator=generator)
    # Separable classes: almost all right; labels unrelated to the features: about chance.
    assert linear_probe(features[:300], labels[:300], features[300:], labels[300:]) > 0.95
    shuffled = labels[torch.randperm(400, generator=generator)]
    accuracy = linear_probe(features[:300], shuffled[:300], features[300:], shuffled[300:])
    assert accuracy < 0.45
    with pytest.raises(ValueError, match="300 training features for 299 labels"):
        linear_probe(features[:300], labels[:299], features[300:], labels[300:])
