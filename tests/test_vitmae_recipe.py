"""End to end for vitmae: pretrain the recipe briefly in-process on the generated shapes, check
that the held-out reconstruction loss falls and that the linear probe prefers the pretrained
encoder, evaluate the folder again with ``scratchformers eval``, draw reconstructions from the
saved folder with one command, and hand the encoder to the vit classifier and the whole model
to transformers' ViTMAEForPreTraining.

Marked ``slow``: it runs in the ``distributed`` nox session (part of the default run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from scratchformers.training.cli import main

pytestmark = pytest.mark.slow

# The tiny preset's own 2,000 steps: the reconstruction loss falls within a few hundred, but
# the linear probe only pulls clear of random weights towards the end (on 8,000 images:
# 43.1% against 28.9% after 2,000 steps).
STEPS = 2000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The output directory of the vitmae recipe's tiny preset (on 8,000 generated training
    images instead of 20,000, which are slower to draw), run in this process; accelerate's
    process-wide state is reset afterwards so later tests start clean."""
    from accelerate.state import AcceleratorState

    output_dir = tmp_path_factory.mktemp("vitmae") / "run"
    argv = ["train", "vitmae", "--output-dir", str(output_dir)]
    try:
        assert main([*argv, "--num-train-images", "8000"]) == 0
        yield output_dir
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_the_reconstruction_loss_falls_and_the_probe_prefers_pretraining(trained: Path) -> None:
    summary = json.loads((trained / "run.json").read_text())["summary"]
    assert summary["steps"] == STEPS
    assert summary["final_eval_loss"] < 0.7 * summary["first_eval_loss"], summary
    probe = json.loads((trained / "linear_probe.json").read_text())
    assert probe["pretrained"] > probe["random"] + 0.05, probe
    assert probe["pretrained"] > probe["chance"] + 0.1, probe
    assert (trained / "linear_probe.png").stat().st_size > 0
    grids = sorted((trained / "reconstructions").glob("sample_*.png"))
    assert len(grids) == 6
    card = (trained / "README.md").read_text()
    assert "![reconstructions](reconstructions.png)" in card
    assert "![linear probe](linear_probe.png)" in card


def test_eval_hides_the_same_patches_as_the_run(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = json.loads((trained / "run.json").read_text())["summary"]["final_eval_loss"]
    assert metrics["eval_loss"] == pytest.approx(final, rel=1e-5)


def test_one_command_draws_reconstructions_from_the_saved_folder(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchformers.vitmae.reconstruct import main as reconstruct

    assert reconstruct([str(trained), "--num", "3", "--out", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "overview.png",
        "sample_1.png",
        "sample_2.png",
        "sample_3.png",
    ]
    assert Image.open(tmp_path / "sample_1.png").width >= 4 * 96


def test_the_encoder_fine_tunes_and_the_model_exports(trained: Path, tmp_path: Path) -> None:
    from scratchformers.vit import ViTForImageClassification
    from scratchformers.vitmae import ViTMAEForPreTraining, export_to_transformers

    classifier = ViTForImageClassification.from_pretrained(trained, num_labels=6)
    pixels = torch.randn(3, 3, 24, 24)
    assert classifier(pixel_values=pixels).logits.shape == (3, 6)

    ours = transformers.AutoModelForPreTraining.from_pretrained(trained).eval()
    assert type(ours) is ViTMAEForPreTraining
    theirs = transformers.ViTMAEForPreTraining.from_pretrained(
        export_to_transformers(ours, tmp_path / "exported")
    ).eval()
    noise = torch.rand(3, 36)
    with torch.no_grad():
        mine, reference = ours(pixels, noise=noise), theirs(pixels, noise=noise)
    assert float((mine.logits - reference.logits).abs().max()) <= 1e-4
    assert torch.equal(mine.mask, reference.mask)
