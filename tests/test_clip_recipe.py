"""End to end for clip: train the recipe briefly in-process on the captioned shapes, check that
zero-shot accuracy on the held-out colour and shape pairs (never seen together in training)
is far above chance, evaluate the folder again with ``scratchformers eval``, classify with
transformers' zero-shot pipeline straight from the folder, and export to transformers' CLIP
and (``scratchformers export --format open_clip``) to open_clip.

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

STEPS = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short run of the tiny preset (300 steps of 64 pairs, 5,000 training images) in this
    process; accelerate's process-wide state is reset afterwards so later tests start clean."""
    from accelerate.state import AcceleratorState

    output_dir = tmp_path_factory.mktemp("clip") / "run"
    argv = ["train", "clip", "--output-dir", str(output_dir), "--max-steps", str(STEPS)]
    argv += ["--batch-size", "64", "--eval-every", "150", "--num-train-images", "5000"]
    try:
        assert main([*argv, "--num-eval-images", "512"]) == 0
        yield output_dir
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_zero_shot_on_unseen_pairs_beats_chance(trained: Path) -> None:
    summary = json.loads((trained / "run.json").read_text())["summary"]
    assert summary["steps"] == STEPS
    assert summary["final_eval_loss"] < 0.7 * summary["first_eval_loss"], summary
    zero_shot = json.loads((trained / "zero_shot.json").read_text())
    assert zero_shot["chance"] == pytest.approx(1 / 36)
    assert zero_shot["zero_shot_accuracy"] > 4 * zero_shot["chance"], zero_shot
    assert zero_shot["colour_accuracy"] > 0.5, zero_shot
    assert len(zero_shot["held_out_pairs"]) == 6
    assert (trained / "similarity.png").stat().st_size > 0
    assert "![similarity matrix](similarity.png)" in (trained / "README.md").read_text()


def test_eval_recomputes_the_run_s_figures(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["eval", str(trained), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    zero_shot = json.loads((trained / "zero_shot.json").read_text())
    assert metrics["zero_shot_accuracy"] == pytest.approx(zero_shot["zero_shot_accuracy"])


def test_the_pipeline_runs_from_the_folder_and_the_export_matches(
    trained: Path, tmp_path: Path
) -> None:
    import scratchformers.clip
    from scratchformers.training.shapes import draw_shape

    classify = transformers.pipeline("zero-shot-image-classification", model=str(trained))
    image = draw_shape("circle", "red", "large", "centre", image_size=24)
    labels = ["red circle", "blue square", "green star"]
    results = classify(
        image, candidate_labels=labels, hypothesis_template="a large {} in the centre"
    )
    assert {r["label"] for r in results} == set(labels)
    assert abs(sum(r["score"] for r in results) - 1) < 1e-5

    ours = transformers.AutoModel.from_pretrained(trained).eval()
    assert type(ours) is scratchformers.clip.CLIPModel
    theirs = transformers.CLIPModel.from_pretrained(
        scratchformers.clip.export_to_transformers(ours, tmp_path / "exported")
    ).eval()
    processor = transformers.AutoProcessor.from_pretrained(trained)
    inputs = processor(
        text=labels, images=[image, Image.new("RGB", (24, 24))], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        difference = ours(**inputs).logits_per_image - theirs(**inputs).logits_per_image
    assert float(difference.abs().max()) <= 1e-4


def test_export_for_open_clip_gives_open_clip_our_features(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scratchformers export RUN OUT --format open_clip``: open_clip alone (its
    ``local-dir:`` model, transforms and tokenizer) gives the run's image and text features,
    though the caption tokenizer's <eos> is not its highest id."""
    import open_clip

    from scratchformers.clip import CLIPModel
    from scratchformers.training.shapes import draw_shape

    out = tmp_path / "open_clip"
    capsys.readouterr()
    assert main(["export", str(trained), str(out), "--format", "open_clip"]) == 0
    assert f'open_clip.create_model_and_transforms("local-dir:{out}")' in capsys.readouterr().out

    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenize = open_clip.get_tokenizer(f"local-dir:{out}")
    ours = CLIPModel.from_pretrained(trained).eval()
    processor = transformers.AutoProcessor.from_pretrained(trained)
    captions = ["a large red circle in the centre", "a small blue square at the top"]
    images = [
        draw_shape("circle", "red", "large", "centre", image_size=24),
        Image.new("RGB", (24, 24)),
    ]
    inputs = processor(text=captions, images=images, return_tensors="pt", padding=True)
    assert processor.tokenizer.eos_token_id < int(inputs["input_ids"].max())
    pixels = torch.stack([preprocess(image) for image in images])
    assert float((pixels - inputs["pixel_values"]).abs().max()) <= 1e-6
    with torch.no_grad():
        image_difference = (
            theirs.eval().encode_image(pixels)
            - ours.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        )
        text_difference = (
            theirs.encode_text(tokenize(captions))
            - ours.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).pooler_output
        )
    assert float(image_difference.abs().max()) <= 1e-5
    assert float(text_difference.abs().max()) <= 1e-5
    print(
        f"open_clip export of the clip run: image {float(image_difference.abs().max()):.2e}, "
        f"text {float(text_difference.abs().max()):.2e}"
    )
