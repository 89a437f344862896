"""End to end for vit: train the recipe briefly in-process on the generated shapes, check that
it learned the shapes and not where they sit on the patch grid, evaluate the folder again with
``scratchformers eval``, classify through ``pipeline("image-classification")``, and hand the
model to transformers' ViTForImageClassification and, with ``scratchformers export --format
timm``, to timm.

Marked ``slow``: it runs in the ``distributed`` nox session (part of the default run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from scratchformers.training import SHAPES, ImageBatches, ImageExamples, shapes_dataset
from scratchformers.training.cli import main

pytestmark = pytest.mark.slow

STEPS = 600


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The output directory of 600 steps of the vit recipe (tiny preset, 8,000 generated
    training images), run in this process; accelerate's process-wide state is reset afterwards
    so later tests start clean."""
    from accelerate.state import AcceleratorState

    output_dir = tmp_path_factory.mktemp("vit") / "run"
    argv = ["train", "vit", "--output-dir", str(output_dir), "--max-steps", str(STEPS)]
    try:
        assert main([*argv, "--num-train-images", "8000"]) == 0
        yield output_dir
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def held_out_batch(trained: Path, count: int = 480) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fresh shapes the run never saw, as the recipe feeds them, and the model's patch size."""
    processor = transformers.AutoImageProcessor.from_pretrained(trained)
    config = transformers.AutoConfig.from_pretrained(trained)
    images = ImageExamples(
        shapes_dataset(count, config.image_size, seed="unseen"), config.image_size
    )
    batch = ImageBatches(processor.image_mean, processor.image_std)(
        [images[index] for index in range(len(images))]
    )
    return batch["pixel_values"], batch["labels"], config.patch_size


def accuracy(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(pixel_values=pixels).logits.argmax(-1) == labels).float().mean())


def test_the_shapes_are_learned_far_above_chance(trained: Path) -> None:
    summary = json.loads((trained / "run.json").read_text())["summary"]
    assert summary["steps"] == STEPS
    final = summary["final_metrics"]
    assert abs(final["baseline_accuracy"] - 1 / len(SHAPES)) < 0.05
    assert final["accuracy"] > final["baseline_accuracy"] + 0.2, final
    assert (trained / "confusion_matrix.png").stat().st_size > 0


def test_shapes_moved_by_half_a_patch_are_still_recognised(trained: Path) -> None:
    # Shapes on the patch grid in a few ways only would let a ViT learn those layouts; moved
    # by half a patch (the edge pixels repeated, as the augmentation does) they would fail.
    from scratchformers.vit import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(trained).eval()
    pixels, labels, patch = held_out_batch(trained)
    half = patch // 2
    side = pixels.shape[-1]
    moved = F.pad(pixels, (half, 0, half, 0), mode="replicate")[..., :side, :side]
    as_drawn, shifted = accuracy(model, pixels, labels), accuracy(model, moved, labels)
    assert as_drawn > 1 / len(SHAPES) + 0.2, as_drawn
    assert shifted > as_drawn - 0.1, (as_drawn, shifted)


def test_eval_recomputes_the_runs_accuracy(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    final = json.loads((trained / "run.json").read_text())["summary"]["final_metrics"]
    assert metrics["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
    assert metrics["baseline_accuracy"] == pytest.approx(final["baseline_accuracy"], abs=1e-6)


def test_the_pipeline_and_transformers_agree_with_our_model(trained: Path, tmp_path: Path) -> None:
    from scratchformers.vit import ViTForImageClassification, export_to_transformers

    ours = transformers.AutoModelForImageClassification.from_pretrained(trained).eval()
    assert type(ours) is ViTForImageClassification
    classify = transformers.pipeline("image-classification", model=str(trained))
    unseen = shapes_dataset(36, 24, seed="pipeline")
    answers = classify(list(unseen["image"]), top_k=1)
    right = sum(a[0]["label"] == s for a, s in zip(answers, unseen["shape"], strict=True))
    assert right / len(unseen) > 1 / len(SHAPES) + 0.2, right

    theirs = transformers.ViTForImageClassification.from_pretrained(
        export_to_transformers(ours, tmp_path / "exported")
    ).eval()
    pixels, _, _ = held_out_batch(trained, count=7)
    with torch.no_grad():
        difference = (ours(pixel_values=pixels).logits - theirs(pixel_values=pixels).logits).abs()
    assert float(difference.max()) <= 1e-4
    assert theirs.config.id2label == dict(enumerate(SHAPES))


def test_export_for_timm_gives_timm_our_logits_and_preprocessing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scratchformers export RUN OUT --format timm``: timm alone (its ``local-dir:`` load
    and its own eval transform from the folder's pretrained_cfg) gives the run's logits."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from scratchformers.vit import ViTForImageClassification

    out = tmp_path / "timm"
    capsys.readouterr()
    assert main(["export", str(trained), str(out), "--format", "timm"]) == 0
    printed = capsys.readouterr().out
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in printed
    # timm's two files, and the export's card with the figures it shows.
    written = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= written
    assert all(
        name.endswith(".png")
        for name in written - {"config.json", "model.safetensors", "README.md"}
    )
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card
    assert "scratchformers export --format timm" in card

    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours = ViTForImageClassification.from_pretrained(trained).eval()
    assert json.loads((out / "config.json").read_text())["label_names"] == list(SHAPES)
    processor = transformers.AutoImageProcessor.from_pretrained(trained)
    transform = create_transform(**resolve_data_config({}, model=theirs))
    unseen = list(shapes_dataset(7, 24, seed="timm")["image"])
    pixels = processor(unseen, return_tensors="pt")["pixel_values"]
    timm_pixels = torch.stack([transform(image.convert("RGB")) for image in unseen])
    assert float((timm_pixels - pixels).abs().max()) <= 1e-6
    with torch.no_grad():
        difference = (theirs(timm_pixels) - ours(pixel_values=pixels).logits).abs().max()
    assert float(difference) <= 1e-5, float(difference)
    print(f"timm export of the vit run: largest logit difference {float(difference):.2e}")
