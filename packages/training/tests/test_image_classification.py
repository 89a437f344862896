"""Image classification: the generated shapes (deterministic, balanced, captioned), folders of
the user's own images, augmentation of the training images only, and a tiny transformers ViT
trained through the real loop on the shapes, far above chance, leaving a confusion matrix and a
folder that ``pipeline("image-classification")`` loads."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification, pipeline

from scratchformers.training import (
    SHAPES,
    DataError,
    ImageBatches,
    ImageClassificationRecipe,
    Preset,
    RecipeData,
    TrainingSettings,
    draw_shape,
    parse_settings,
    shape_caption,
    shapes_dataset,
    to_rgb,
    train,
)
from scratchformers.training.rundir import clear_previous_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ToyImageClassifier(ImageClassificationRecipe):
    name = "toy-vit"
    description = "A tiny transformers ViT for testing the image-classification recipe."
    presets = {
        "tiny": Preset.scheduled(
            steps=600,
            batch=64,
            lr=2e-3,
            warmup=20,
            eval_every=300,
            image_size=24,
            patch_size=6,
            train_images=4800,
            eval_images=192,
            augment=False,  # too short a run for augmentation to pay
        )
    }

    def build_model(
        self, settings: TrainingSettings, data: RecipeData
    ) -> ViTForImageClassification:
        options = settings.model
        config = ViTConfig(
            image_size=options["image_size"],
            patch_size=options["patch_size"],
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            **self.label_config(data),
        )
        return ViTForImageClassification(config)


def build(flags: list[str]) -> RecipeData:
    recipe = ToyImageClassifier()
    return recipe.build_data(parse_settings(recipe, [*flags, "--output-dir", "run"]))


def test_the_shapes_are_deterministic_balanced_and_labelled_by_shape() -> None:
    first, again, other = (shapes_dataset(60, 24, seed=seed) for seed in (3, 3, 4))
    assert first.features["label"].names == list(SHAPES)
    assert Counter(first["label"]) == dict.fromkeys(range(len(SHAPES)), 10)
    assert first["label"] != sorted(first["label"]), "shuffled, not class by class"
    assert [first.features["label"].int2str(label) for label in first["label"]] == first["shape"]
    pixels = [np.array(example["image"]) for example in first]
    assert all(p.shape == (24, 24, 3) for p in pixels)
    assert all(np.array_equal(p, np.array(e["image"])) for p, e in zip(pixels, again, strict=True))
    assert not any(
        np.array_equal(p, np.array(e["image"])) for p, e in zip(pixels, other, strict=True)
    )
    assert {"plain", "gradient", "noise"} == set(first["background"])


def test_each_shape_draws_a_different_figure() -> None:
    """Same colour, size, place and seed: only the shape differs, and so does the figure."""
    masks = {}
    for shape in SHAPES:
        pixels = np.array(draw_shape(shape, "red", "large", "centre", image_size=32, seed=1))
        background = pixels[0, 0].astype(int)
        masks[shape] = np.abs(pixels.astype(int) - background).sum(-1) > 90
        assert 0.08 < masks[shape].mean() < 0.5, (shape, masks[shape].mean())
    for one in SHAPES:
        for two in SHAPES:
            if one < two:
                overlap = (masks[one] & masks[two]).sum() / (masks[one] | masks[two]).sum()
                assert overlap < 0.85, (one, two, overlap)


def test_the_position_says_where_the_shape_is() -> None:
    for position, inside, outside in (
        ("top left", (8, 8), (28, 28)),
        ("bottom right", (24, 24), (3, 3)),
    ):
        pixels = np.array(draw_shape("square", "blue", "small", position, image_size=32)).astype(
            int
        )
        assert np.abs(pixels[inside] - pixels[outside]).sum() > 90, position
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        draw_shape("circle", "pink", "small", "top")


def test_captions_name_every_attribute() -> None:
    example = {"shape": "circle", "colour": "red", "size": "small", "position": "top left"}
    assert shape_caption(example) == "a small red circle at the top left"
    assert shape_caption({**example, "position": "centre"}) == "a small red circle in the centre"
    assert shape_caption({**example, "position": "right"}) == "a small red circle on the right"
    for row in shapes_dataset(24, 16, seed=0):
        caption = shape_caption(row)
        assert caption.startswith(f"a {row['size']} {row['colour']} {row['shape']} ")
        assert caption.endswith(row["position"])


def write_image(path: Path, mode: str, size: tuple[int, int], seed: int = 0) -> None:
    """A noisy image (so that resizing it is not trivial) in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    Image.fromarray(noise, "RGBA").convert(mode).save(path)


def test_a_folder_of_images_loads_with_its_classes_converted_to_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "pets"
    for index in range(6):
        write_image(folder / "cats" / f"{index}.png", "RGB", (30, 20), index)
        write_image(folder / "dogs" / f"{index}.png", "L", (16, 40), index)
    write_image(folder / "dogs" / "see-through.png", "RGBA", (24, 24))
    write_image(folder / "dogs" / "palette.gif", "P", (24, 24))
    (folder / "notes.txt").write_text("not an image")
    data = build(["--dataset", f"imagefolder:{folder}", "--eval-fraction", "0.25"])
    assert data.train.class_names == data.eval.class_names == ["cats", "dogs"]
    assert (len(data.train), len(data.eval)) == (10, 4)
    assert set(data.eval.labels()) == {0, 1}, "stratified by class"
    # The held-out batches are what the saved image processor makes of the same images, so a
    # pipeline sees what the model was evaluated on.
    raw = [to_rgb(data.eval.dataset[i]["image"]) for i in range(len(data.eval))]
    batch = data.collate([data.eval[i] for i in range(len(data.eval))])
    expected = data.processor(raw, return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].shape == (4, 3, 24, 24)
    torch.testing.assert_close(batch["pixel_values"], expected, atol=1e-5, rtol=0)
    assert all(data.train[i]["pixels"].shape == (3, 24, 24) for i in range(len(data.train)))
    see_through = to_rgb(Image.new("RGBA", (2, 2), (0, 0, 255, 0)))
    assert see_through.getpixel((0, 0)) == (255, 255, 255), "transparent is white"
    assert to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_a_folders_own_test_split_is_the_held_out_set(tmp_path: Path) -> None:
    for split, count in (("train", 5), ("test", 2)):
        for kind in ("circles", "squares"):
            for index in range(count):
                write_image(tmp_path / split / kind / f"{index}.png", "RGB", (24, 24), index)
    data = build(["--dataset", str(tmp_path), "--num-eval-images", "3"])
    assert (len(data.train), len(data.eval)) == (10, 3)
    assert data.train.class_names == ["circles", "squares"]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ([], "holds no images"),
        (
            ["cats/a.png", "cats/b.png"],
            "all 2 of its images are in its subfolder 'cats', which is one",
        ),
        (["a.png"], "its only image is directly in it, which is one class"),
    ],
)
def test_a_folder_that_cannot_train_a_classifier_is_refused(
    tmp_path: Path, layout: list[str], message: str
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    for name in layout:
        write_image(folder / name, "RGB", (8, 8))
    with pytest.raises(DataError, match=re.escape(f"--dataset {folder}") + ".*" + message):
        build(["--dataset", str(folder)])


def test_a_file_that_is_no_image_is_named_before_training(tmp_path: Path) -> None:
    for kind in ("cats", "dogs"):
        for index in range(3):
            write_image(tmp_path / kind / f"{index}.png", "RGB", (24, 24), index)
    broken = tmp_path / "dogs" / "broken.png"
    broken.write_bytes(PNG_MAGIC + b"cut off while copying")
    with pytest.raises(DataError, match=f"could not read {re.escape(str(broken))} as an image"):
        build(["--dataset", str(tmp_path), "--eval-fraction", "0.5"])


def write_table(folder: Path, name: str, rows: list[dict]) -> Path:
    """``rows`` as a csv (first row's keys as the header) or a jsonl, by ``name``'s suffix."""
    path = folder / name
    if path.suffix == ".csv":
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(str(row[k]) for k in header) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def labelled_files(folder: Path, count: int, labels: list) -> list[dict]:
    """``count`` images under ``folder``/pics (relative paths), labelled in turn."""
    rows = []
    for index in range(count):
        write_image(folder / "pics" / f"{index}.png", "RGB", (20, 20), index)
        rows.append({"image": f"pics/{index}.png", "label": labels[index % len(labels)]})
    return rows


def test_a_csv_of_relative_paths_and_string_labels_is_split_by_content(tmp_path: Path) -> None:
    rows = labelled_files(tmp_path, 40, ["zebra", "ant"])
    renamed = [{"file": row["image"], "animal": row["label"]} for row in rows]
    table = write_table(tmp_path, "animals.csv", renamed)
    flags = ["--dataset", str(table), "--image-column", "file", "--label-column", "animal"]
    data = build([*flags, "--eval-fraction", "0.25"])
    assert data.train.class_names == data.eval.class_names == ["ant", "zebra"]
    assert len(data.train) + len(data.eval) == 40 and 0 < len(data.eval) < 20
    # The held-out rows hang on each row's content only: the same rows in another order (and
    # with the table moved elsewhere) hold out the same images.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "pics").symlink_to(tmp_path / "pics")
    shuffled = write_table(moved, "animals.csv", renamed[::-1])
    again = build(["--dataset", str(shuffled), *flags[2:], "--eval-fraction", "0.25"])
    held_out = sorted(Path(row["image"]["path"]).name for row in data.eval._files)
    assert sorted(Path(row["image"]["path"]).name for row in again.eval._files) == held_out
    # Each image is its row's: the pixels of the file the row names, with the row's label.
    first = data.train.dataset[0]
    index = int(Path(data.train._files[0]["image"]["path"]).stem)
    assert data.train.class_names[first["label"]] == rows[index]["label"]


def test_a_jsonl_of_integer_labels_names_the_classes_in_numeric_order(tmp_path: Path) -> None:
    rows = labelled_files(tmp_path, 30, [10, 2, 7])
    data = build(["--dataset", str(write_table(tmp_path, "digits.jsonl", rows))])
    assert data.train.class_names == ["2", "7", "10"]


def test_a_dataset_folder_stands_for_a_hub_id(tmp_path: Path) -> None:
    """A folder laid out as a Hub dataset repository (parquet shards of an Image column and a
    ClassLabel) reads as ``datasets.load_dataset`` reads the id; the held-out set may be an
    image folder, its classes matched by name."""
    import datasets

    images = [Image.new("RGB", (12, 12), (index * 8, 0, 0)) for index in range(24)]
    features = datasets.Features(
        {"img": datasets.Image(), "fine": datasets.ClassLabel(names=["cats", "dogs"])}
    )
    table = datasets.Dataset.from_dict(
        {"img": images, "fine": [index % 2 for index in range(24)]}, features=features
    )
    (tmp_path / "repo" / "data").mkdir(parents=True)
    table.to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    for kind in ("dogs", "cats"):
        for index in range(3):
            write_image(tmp_path / "held" / kind / f"{index}.png", "RGB", (24, 24), index)
    columns = ["--image-column", "img", "--label-column", "fine"]
    held = ["--eval-dataset", str(tmp_path / "held")]
    data = build(["--dataset", str(tmp_path / "repo"), *columns, *held])
    assert data.train.class_names == data.eval.class_names == ["cats", "dogs"]
    assert (len(data.train), len(data.eval)) == (24, 6)
    red = [data.train[i]["pixels"][0, 0, 0].item() for i in range(len(data.train))]
    assert red == [index * 8 for index in range(24)], "each image with its own label, in order"
    assert data.train.labels() == [index % 2 for index in range(24)]
    names = [data.eval.class_names[label] for label in data.eval.labels()]
    folders = [Path(row["image"]["path"]).parent.name for row in data.eval._files]
    assert names == folders


def test_images_without_classes_are_taken_when_labels_are_not_needed(tmp_path: Path) -> None:
    """A masked-image recipe reads a folder without class subfolders (and a table without a
    label column) as one class, UNLABELLED; a classifier refuses both, naming the column."""
    from scratchformers.training.images import UNLABELLED
    from scratchformers.training.vision import ImageRecipe

    class Unlabelled(ImageRecipe):
        name = "toy-mae"
        description = "Images without classes, as a masked autoencoder reads them."
        presets = ToyImageClassifier.presets

    for index in range(10):
        write_image(tmp_path / "flat" / f"{index}.png", "RGB", (24, 24), index)
    recipe = Unlabelled()
    settings = parse_settings(recipe, ["--dataset", str(tmp_path / "flat"), "--output-dir", "r"])
    data = recipe.build_data(settings)
    assert data.train.class_names == [UNLABELLED] and not recipe.labelled
    assert (len(data.train), len(data.eval)) == (9, 1)
    rows = [{"image": f"flat/{index}.png"} for index in range(10)]
    table = write_table(tmp_path, "files.jsonl", rows)
    flags = ["--dataset", str(table), "--eval-fraction", "0.5"]
    settings = parse_settings(recipe, [*flags, "--output-dir", "r"])
    assert recipe.build_data(settings).train.class_names == [UNLABELLED]
    with pytest.raises(DataError, match=r"has no column 'label' \(its columns: image\)"):
        build(flags)


def test_bad_image_flags_are_refused_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--image-size 32 is not a multiple of the patch size 6"):
        build(["--image-size", "32"])
    with pytest.raises(
        DataError, match=re.escape(f"--dataset {tmp_path / 'nowhere'} does not exist")
    ):
        build(["--dataset", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="--num-train-images must be at least 1, got 0"):
        build(["--num-train-images", "0"])


def test_augmentation_changes_training_batches_and_never_held_out_ones() -> None:
    # --augment over the preset's augment=False
    data = build(["--num-train-images", "8", "--num-eval-images", "8", "--augment"])
    train = [data.train[i] for i in range(8)]
    held_out = [data.eval[i] for i in range(8)]

    def unchanged(examples: list[dict]) -> torch.Tensor:
        return torch.stack([e["pixels"] for e in examples]).float() / 255 * 2 - 1  # mean, std 0.5

    torch.manual_seed(0)
    first, second = data.collate(train)["pixel_values"], data.collate(train)["pixel_values"]
    torch.manual_seed(0)
    assert torch.equal(data.collate(train)["pixel_values"], first), "seeded by torch's RNG"
    for a, b, original in zip(first, second, unchanged(train), strict=True):
        assert not torch.equal(a, b) and not torch.equal(a, original)
    assert float(first.min()) >= -1 and float(first.max()) <= 1
    for _ in range(2):
        torch.testing.assert_close(
            data.collate(held_out)["pixel_values"], unchanged(held_out), atol=1e-6, rtol=0
        )
    plain = build(["--num-train-images", "8", "--num-eval-images", "8", "--no-augment"])
    examples = [plain.train[i] for i in range(8)]
    torch.testing.assert_close(
        plain.collate(examples)["pixel_values"], unchanged(examples), atol=1e-6, rtol=0
    )


def test_each_augmentation_moves_or_mirrors_the_image_as_it_says() -> None:
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[:, 5, 9] = 255  # one bright pixel, off both axes of symmetry
    batch = [{"pixels": image, "label": 0, "augment": True}] * 200
    torch.manual_seed(0)
    flips = ImageBatches((0.0,) * 3, (1.0,) * 3, max_shift=0, jitter=0)(batch)["pixel_values"]
    mirrored = [bool(out[0, 5, 6] == 1) for out in flips]  # 15 - 9 = 6
    assert all(bool(out[0, 5, 9] == 1) != m for out, m in zip(flips, mirrored, strict=True))
    assert 60 < sum(mirrored) < 140
    torch.manual_seed(0)
    shifts = ImageBatches((0.0,) * 3, (1.0,) * 3, flip=False, jitter=0)(batch)["pixel_values"]
    moves = set()
    for out in shifts:
        (row, column), *others = (out[0] == 1).nonzero().tolist()
        assert not others and float(out.sum()) == 3, "moved, not blurred or cut"
        moves.add((row - 5, column - 9))
    assert moves == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # 2 = 16 / 8


def test_overwrite_removes_the_recipes_own_files(tmp_path: Path) -> None:
    (tmp_path / "confusion_matrix.png").write_bytes(PNG_MAGIC)
    (tmp_path / "config.json").write_text("{}")
    clear_previous_run(tmp_path, ToyImageClassifier.output_files)
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert (tmp_path / "config.json").exists(), "only what a run writes is removed"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A finished run of the toy ViT on the shapes, and what it printed."""
    root = tmp_path_factory.mktemp("image_run")
    recipe = ToyImageClassifier()
    settings = parse_settings(recipe, ["--output-dir", str(root / "run")])
    printed = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
            patch.setenv("HOME", str(root / "home"))
            torch.manual_seed(0)
            train(recipe, settings)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    yield root / "run", printed.getvalue()


def test_the_toy_vit_learns_the_shapes_far_above_chance(image_run: tuple[Path, str]) -> None:
    output_dir, printed = image_run
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").open()]
    evaluations = [r for r in records if "accuracy" in r]
    first, final = evaluations[0], evaluations[-1]
    assert abs(final["baseline_accuracy"] - 1 / len(SHAPES)) < 0.05
    assert final["accuracy"] > final["baseline_accuracy"] + 0.2, final
    assert final["accuracy"] > first["accuracy"] + 0.15
    assert final["eval_loss"] < first["eval_loss"]
    assert any(r.get("images_per_s", 0) > 0 for r in records)
    matrix = output_dir / "confusion_matrix.png"
    assert matrix.read_bytes().startswith(PNG_MAGIC)
    assert f"confusion matrix:    {matrix}" in printed
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card
    assert "![confusion matrix](confusion_matrix.png)" in card
    assert "AutoImageProcessor.from_pretrained" in card


def test_the_trained_folder_works_in_an_image_classification_pipeline(
    image_run: tuple[Path, str],
) -> None:
    output_dir, _ = image_run
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert processor.size == {"height": 24, "width": 24}
    classify = pipeline("image-classification", model=str(output_dir))
    assert classify.model.config.id2label == dict(enumerate(SHAPES))
    shapes = shapes_dataset(60, 24, seed="pipeline")
    answers = classify(list(shapes["image"]), top_k=1)
    right = sum(
        answer[0]["label"] == shape for answer, shape in zip(answers, shapes["shape"], strict=True)
    )
    assert right / len(shapes) > 1 / len(SHAPES) + 0.2, right


def test_saved_preprocessing_reads_the_processor_for_the_exports(tmp_path: Path) -> None:
    """What ``--format timm`` / ``open_clip`` write as the model's normalisation: the saved
    image processor's mean, std and resize filter (PIL's code as timm's and open_clip's word)."""
    from transformers import ViTImageProcessor

    from scratchformers.training.vision import saved_preprocessing

    assert saved_preprocessing(tmp_path) == {}  # no processor: the exports' defaults
    ViTImageProcessor(
        image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], resample=3
    ).save_pretrained(tmp_path)
    assert saved_preprocessing(tmp_path) == {
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "interpolation": "bicubic",
    }
