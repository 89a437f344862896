"""Fine-tuning CLIP from a real checkpoint on the user's own files (issue 27): ``--init-from``
a transformers CLIP folder or an open_clip weights file, ``--dataset`` / ``--eval-dataset`` as
csv, jsonl or a folder of images with .txt captions; held-out recall and zero-shot accuracy;
bad data and a missing checkpoint stop the run with one line, before any work.

The data are the recipe's generated captioned shapes written out as 16-pixel PNG files. The
end-to-end runs are marked ``slow`` (the ``distributed`` nox session runs them); they train
with one thread, which on a shared two-core machine is more than ten times faster for these
tiny models than two threads fighting over the cores.
"""

from __future__ import annotations

import csv
import json
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

import scratchformers.clip as clip
from scratchformers.clip.captioned_files import (
    NO_CLASS,
    caption_classes,
    captioned_splits,
    read_captioned,
)
from scratchformers.clip.retrieval import recall_at_k, retrieval_recall
from scratchformers.training.cli import main
from scratchformers.training.recipe import EvalResults, load_recipe

IMAGE = 16
# A tiny CLIP, in flags (fresh runs) and config fields (the checkpoints).
TINY = ["--image-size", "16", "--patch-size", "4", "--width", "32", "--depth", "1"]
TINY += ["--heads", "2", "--text-width", "32", "--text-depth", "1", "--text-heads", "2"]
TINY += ["--projection-dim", "32"]
COLOURS = "red,green,blue,yellow,purple,orange"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 240 captioned shapes as PNG files and their pairs in every layout:
    ``pairs.csv`` (image, caption, colour), ``pairs.jsonl`` (the same rows),
    ``train.jsonl`` / ``eval.jsonl`` (the first 200 rows and the rest), and ``captioned/``
    (the first 40 images, each with a same-named .txt caption)."""
    from scratchformers.clip.captioned_shapes import captioned_shapes

    root = tmp_path_factory.mktemp("pairs")
    (root / "images").mkdir()
    (root / "captioned").mkdir()
    shapes = captioned_shapes(240, IMAGE, 0, held_out=False)
    rows = []
    for index, row in enumerate(shapes):
        name = f"images/{index:03d}.png"
        row["image"].save(root / name)
        rows.append({"image": name, "caption": row["caption"], "colour": row["colour"]})
        if index < 40:
            row["image"].save(root / "captioned" / f"{index:03d}.png")
            (root / "captioned" / f"{index:03d}.txt").write_text(row["caption"] + "\n")
    write_csv(root / "pairs.csv", rows)
    for name, part in (("pairs", rows), ("train", rows[:200]), ("eval", rows[200:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
    return root


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def train(argv: list[str]) -> int:
    """``scratchformers train clip`` in this process; Accelerate's state reset afterwards."""
    from accelerate.state import AcceleratorState

    try:
        return main(["train", "clip", *argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def tokenizer_for(pairs: Path) -> transformers.PreTrainedTokenizerFast:
    with (pairs / "pairs.csv").open() as file:
        captions = [row["caption"] for row in csv.DictReader(file)]
    return clip.train_caption_tokenizer(captions, model_max_length=32)


def save_processor(tokenizer: transformers.PreTrainedTokenizerFast, folder: Path) -> None:
    """The checkpoint's CLIPProcessor: CLIP's image processor at 16 pixels."""
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    )
    transformers.CLIPProcessor(
        image_processor=image_processor, tokenizer=tokenizer
    ).save_pretrained(folder)


def assert_same_weights(saved: Path, expected: torch.nn.Module) -> None:
    trained = clip.CLIPModel.from_pretrained(saved).state_dict()
    reference = expected.state_dict()
    assert trained.keys() == reference.keys()
    for name, tensor in reference.items():
        difference = float((trained[name].float() - tensor.float()).abs().max())
        assert difference <= 1e-6, (name, difference)


# Unit tests: recall, zero-shot accuracy, the layouts.


def test_recall_at_k_of_known_similarities() -> None:
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.0, 0.0, 0.0],  # own first
            [0.8, 0.7, 0.1, 0.0, 0.0, 0.0],  # own second
            [0.9, 0.8, 0.1, 0.7, 0.6, 0.5],  # own last of six
            [0.0, 0.0, 0.0, 0.5, 0.5, 0.0],  # tied with another: still first
            [0.9, 0.9, 0.9, 0.9, 0.5, 0.9],  # own sixth
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # own first
        ]
    )
    assert recall_at_k(similarity, (1, 2, 5, 6)) == {1: 3 / 6, 2: 4 / 6, 5: 4 / 6, 6: 1.0}
    # Columns as queries: text 0 ties for first (0.9 three times); text 2 has three above it.
    assert recall_at_k(similarity.T, (1, 2, 3)) == pytest.approx({1: 1 / 6, 2: 3 / 6, 3: 5 / 6})


def test_retrieval_recall_in_both_directions() -> None:
    images = torch.eye(4)
    # Image 0 finds text 1 first, image 1 text 0; text 0 finds image 1 first, text 1 image 0.
    texts = torch.tensor([[0.6, 0.8, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    metrics = retrieval_recall(images, texts, ks=(1, 2))
    assert metrics == {
        "image_to_text_recall_at_1": 0.5,
        "image_to_text_recall_at_2": 1.0,
        "text_to_image_recall_at_1": 0.5,
        "text_to_image_recall_at_2": 1.0,
    }


def test_zero_shot_accuracy_counts_only_images_with_a_class() -> None:
    recipe = load_recipe("clip")
    results = EvalResults(
        means={"loss": 1.5, "zero_shot_classes": 3.0},
        gathered={
            "image_embeds": torch.eye(4),
            "text_embeds": torch.eye(4),
            "zero_shot_predicted": torch.tensor([0, 1, 2, 2]),
            "zero_shot_label": torch.tensor([0, 2, 2, NO_CLASS]),
        },
    )
    metrics = recipe.eval_metrics(results)
    assert metrics["zero_shot_accuracy"] == pytest.approx(2 / 3)
    assert metrics["zero_shot_images"] == 3
    assert metrics["zero_shot_chance"] == pytest.approx(1 / 3)
    assert metrics["image_to_text_recall_at_1"] == metrics["text_to_image_recall_at_5"] == 1.0


def test_a_caption_s_class_is_the_one_name_it_mentions() -> None:
    captions = ["a Red car", "a red and blue ball", "a bluebird", "a blue bird", "a blue  car"]
    # Whole words, any case; two names (even one inside the other) leave the image out.
    assert caption_classes(captions, ["red", "blue", "blue bird"]) == [0, -1, -1, -1, 1]
    assert NO_CLASS == -1
    assert caption_classes(["a blue bird"], ["red", "blue bird"]) == [1]


def test_every_layout_reads_the_same_pairs(pairs: Path) -> None:
    expected = {}
    with (pairs / "pairs.csv").open() as file:
        for row in csv.DictReader(file):
            expected[str(pairs / row["image"])] = row["caption"]

    def read(source: Path) -> dict[str, str]:
        table = read_captioned(str(source))
        return dict(zip([image["path"] for image in table["image"]], table["caption"], strict=True))

    assert read(pairs / "pairs.csv") == expected
    assert read(pairs / "pairs.jsonl") == expected
    folder = read(pairs / "captioned")
    assert len(folder) == 40
    for path, caption in folder.items():
        assert caption.strip() == expected[str(pairs / "images" / Path(path).name)]
    # The held-out split is by content: the same pairs from the csv and the jsonl.
    options = Namespace(image_column="image", caption_column="caption", eval_fraction=0.25)
    by_format = []
    for name in ("pairs.csv", "pairs.jsonl"):
        _, held_out, _ = captioned_splits(
            Namespace(**vars(options), dataset=str(pairs / name), eval_dataset=None)
        )
        by_format.append(sorted(held_out["key"]))
    assert by_format[0] == by_format[1] and 30 < len(by_format[0]) < 90
    train, held_out, _ = captioned_splits(
        Namespace(
            **vars(options),
            dataset=str(pairs / "train.jsonl"),
            eval_dataset=str(pairs / "eval.jsonl"),
        )
    )
    assert (len(train), len(held_out)) == (200, 40)
    assert [image["path"] for image in held_out["image"]] == list(expected)[200:]


# Errors: one line, before any work, the output folder as it was.


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """An output folder holding an earlier run's files, which --overwrite would remove."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"recipe": "clip", "model": {}}))
    (folder / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 1.0}\n')
    (folder / "notes.txt").write_text("keep me\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))}


def bad_run(argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a run that must stop before touching ``folder``."""
    before = snapshot(folder)
    capsys.readouterr()
    assert train([*argv, "--output-dir", str(folder), "--overwrite", *TINY]) == 2
    assert snapshot(folder) == before
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_missing_column_names_the_columns(pairs: Path, earlier_run: Path, capsys) -> None:
    error = bad_run(
        ["--dataset", str(pairs / "pairs.csv"), "--caption-column", "text"], earlier_run, capsys
    )
    assert "no column 'text'" in error and "image, caption, colour" in error, error


def test_unreadable_image_names_file_and_row(pairs: Path, earlier_run: Path, capsys) -> None:
    (pairs / "broken.png").write_text("not an image")
    rows = [{"image": f"images/{i:03d}.png", "caption": f"shape {i}"} for i in range(20)]
    rows[7]["image"] = "broken.png"
    table = write_csv(pairs / "broken.csv", rows)
    error = bad_run(["--dataset", str(table), "--eval-fraction", "0.5"], earlier_run, capsys)
    assert "row 8" in error and "broken.png" in error, error


def test_empty_captions_are_named(pairs: Path, earlier_run: Path, capsys) -> None:
    rows = [{"image": f"images/{i:03d}.png", "caption": ""} for i in range(5)]
    table = write_csv(pairs / "uncaptioned.csv", rows)
    error = bad_run(["--dataset", str(table)], earlier_run, capsys)
    assert "caption column 'caption' is empty in all 5 rows" in error, error


def test_empty_split_is_named(pairs: Path, earlier_run: Path, capsys) -> None:
    error = bad_run(
        ["--dataset", str(pairs / "train.jsonl"), "--eval-fraction", "0.0001"], earlier_run, capsys
    )
    assert "leaves the held-out part empty" in error, error
    (pairs / "nothing.jsonl").write_text("")
    error = bad_run(
        ["--dataset", str(pairs / "train.jsonl"), "--eval-dataset", str(pairs / "nothing.jsonl")],
        earlier_run,
        capsys,
    )
    assert "--eval-dataset" in error and "nothing.jsonl" in error, error


def test_missing_checkpoint_or_processor_is_named(
    pairs: Path, earlier_run: Path, tmp_path: Path, capsys
) -> None:
    data = ["--dataset", str(pairs / "pairs.csv")]
    error = bad_run(["--init-from", str(tmp_path / "no" / "such"), *data], earlier_run, capsys)
    assert "--init-from" in error and "does not exist" in error, error
    lonely = tmp_path / "lonely" / "open_clip_model.safetensors"
    lonely.parent.mkdir()
    lonely.write_bytes(b"")
    error = bad_run(["--init-from", str(lonely), *data], earlier_run, capsys)
    assert "holds no processor" in error and "--processor" in error, error


# End to end.


@pytest.mark.slow
def test_transformers_folder_starts_the_run_with_its_weights(pairs: Path, tmp_path: Path) -> None:
    """lr 1e-12 for two steps from a random transformers CLIP folder (jsonl training and
    held-out files): the saved weights are the checkpoint's, the processor is its own, and the
    export to transformers gives them back."""
    tokenizer = tokenizer_for(pairs)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE,
            "patch_size": 4,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    reference = transformers.CLIPModel(config)
    checkpoint = tmp_path / "checkpoint"
    reference.save_pretrained(checkpoint)
    save_processor(tokenizer, checkpoint)
    out = tmp_path / "run"
    argv = ["--init-from", str(checkpoint), "--dataset", str(pairs / "train.jsonl")]
    argv += ["--eval-dataset", str(pairs / "eval.jsonl"), "--output-dir", str(out)]
    assert train([*argv, "--lr", "1e-12", "--max-steps", "2", "--batch-size", "16"]) == 0
    assert_same_weights(out, clip.CLIPModel.from_pretrained(checkpoint))
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["final_metrics"]["image_to_text_recall_at_5"] >= 0
    assert "Fine-tuned" in (out / "README.md").read_text()
    saved = transformers.AutoProcessor.from_pretrained(out)
    assert type(saved.image_processor).__name__.startswith("CLIPImageProcessor")
    assert saved.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert main(["export", str(out), str(tmp_path / "exported")]) == 0
    exported = transformers.CLIPModel.from_pretrained(tmp_path / "exported")
    for name, tensor in reference.state_dict().items():
        assert float((exported.state_dict()[name] - tensor).abs().max()) <= 1e-6, name
    assert transformers.AutoProcessor.from_pretrained(tmp_path / "exported").tokenizer.get_vocab()


@pytest.mark.slow
def test_open_clip_file_starts_the_run_with_its_weights(
    pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same from open_clip's weights file (its open_clip_config.json beside it says gelu
    and the heads), on a folder of images with .txt captions."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from safetensors.torch import save_file

    tokenizer = tokenizer_for(pairs)
    vision = {"layers": 1, "width": 32, "head_width": 16, "patch_size": 4, "image_size": IMAGE}
    text = {"context_length": 32, "vocab_size": len(tokenizer), "width": 32, "heads": 4}
    text["layers"] = 1
    torch.manual_seed(0)
    model = CLIP(16, vision_cfg=CLIPVisionCfg(**vision), text_cfg=CLIPTextCfg(**text))
    folder = tmp_path / "open_clip"
    folder.mkdir()
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    model_cfg = {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_processor(tokenizer, folder)
    out = tmp_path / "run"
    argv = ["--init-from", str(weights), "--dataset", str(pairs / "captioned")]
    argv += ["--eval-fraction", "0.3", "--output-dir", str(out)]
    assert train([*argv, "--lr", "1e-12", "--max-steps", "2", "--batch-size", "8"]) == 0
    assert "an OpenAI-layout CLIP file, hidden_act gelu" in capsys.readouterr().out
    expected = clip.CLIPModel.from_openai(
        weights,
        hidden_act="gelu",
        text_config={"num_attention_heads": 4, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"num_attention_heads": 2},
    )
    assert_same_weights(out, expected)
    config = clip.CLIPModel.from_pretrained(out).config
    assert config.text_config.hidden_act == config.vision_config.hidden_act == "gelu"
    assert config.text_config.num_attention_heads == 4


@pytest.fixture(scope="module")
def fresh_run(pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP trained from scratch on pairs.csv (300 steps of 16): the fresh start."""
    out = tmp_path_factory.mktemp("fresh") / "run"
    argv = ["--dataset", str(pairs / "pairs.csv"), "--eval-fraction", "0.2", *TINY]
    argv += ["--max-steps", "300", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "20"]
    assert train([*argv, "--eval-every", "300", "--output-dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_pretrained_start_begins_far_below_a_fresh_one(
    fresh_run: Path, pairs: Path, tmp_path: Path
) -> None:
    """The fresh run, exported to transformers' CLIP, starts a fine-tuning on the same data
    (with zero-shot accuracy over the colours, read from a label column): its first held-out
    loss is far below the fresh start's."""
    exported = tmp_path / "exported"
    assert main(["export", str(fresh_run), str(exported)]) == 0
    out = tmp_path / "finetuned"
    argv = ["--init-from", str(exported), "--dataset", str(pairs / "pairs.csv")]
    argv += ["--eval-fraction", "0.2", "--zero-shot-labels", COLOURS, "--label-column", "colour"]
    argv += ["--max-steps", "2", "--batch-size", "16", "--lr", "1e-4", "--output-dir", str(out)]
    assert train(argv) == 0
    fresh = json.loads((fresh_run / "run.json").read_text())["summary"]
    tuned = json.loads((out / "run.json").read_text())["summary"]
    assert tuned["first_eval_loss"] < 0.7 * fresh["first_eval_loss"], (tuned, fresh)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0
    assert first["image_to_text_recall_at_5"] > 2 * 5 / first["zero_shot_images"], first
    assert first["zero_shot_chance"] == pytest.approx(1 / 6)
    assert 0 <= first["zero_shot_accuracy"] <= 1
    zero_shot = json.loads((out / "zero_shot.json").read_text())
    assert zero_shot["classes"] == COLOURS.split(",")
