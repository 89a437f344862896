"""Fine-tuning the image recipes (vit, vitmae) from a real checkpoint on the user's own files.

Checkpoints in every format the recipes read, built tiny here: transformers' ViT (saved with
save_pretrained and a ViTImageProcessor of its own), timm's VisionTransformer (saved as timm
saves for the Hub), transformers' ViTMAEForPreTraining, and the recipes' own short runs
exported to transformers' format. The data: images of a red or a blue square, in a
csv (paths relative to it, string labels), a jsonl and a folder. The checks: a run with a
learning rate of 1e-12 keeps the checkpoint's weights (and its image processor); a pretrained
start's first held-out loss is far below a fresh start's; another image size trains with the
positions resized once; two processes fine-tune to what one does; bad data and a missing
checkpoint stop the run in one line before any work, leaving the output folder as it was.

The runs are ``slow`` (the ``distributed`` nox session); the checks of parity and of errors
need no training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

from scratchformers.training.cli import main

CONFIGS = (
    Path(__file__).parents[1] / "packages/training/src/scratchformers/training/accelerate_configs"
)
SIZE = 16  # pixels: the checkpoints' image size
# A tiny ViT, as flags of the recipes (the fresh starts) and as config fields.
VIT_FLAGS = ["--patch-size", "4", "--width", "32", "--depth", "2", "--heads", "2"]
MAE_FLAGS = [*VIT_FLAGS, "--decoder-width", "16", "--decoder-depth", "1", "--decoder-heads", "2"]
TINY = {
    "image_size": SIZE,
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
# A checkpoint's own normalisation, unlike the recipes' default (0.5): the run must use it.
CHECKPOINT_MEAN, CHECKPOINT_STD = [0.25, 0.5, 0.75], [0.2, 0.3, 0.4]


def blobs(count: int, seed: int, size: int = SIZE) -> list[tuple[Image.Image, str]]:
    """``count`` noisy light-grey images, each with a square of 6 to 10 pixels somewhere, of
    a random ``"red"`` or ``"blue"`` (alternating): a task (and a structure to reconstruct)
    that a tiny ViT learns in a few dozen steps."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        kind = ("red", "blue")[index % 2]
        pixels = np.full((size, size, 3), 235, np.int64)
        low, high = ([150, 0, 0], [256, 90, 90]) if kind == "red" else ([0, 0, 150], [90, 90, 256])
        side = int(rng.integers(6, 11))
        top, left = rng.integers(0, size - side + 1, 2)
        pixels[top : top + side, left : left + side] = rng.integers(low, high)
        pixels += rng.integers(-15, 16, pixels.shape)
        images.append((Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB"), kind))
    return images


def write_images(folder: Path, images: list[tuple[Image.Image, str]], prefix: str) -> list[dict]:
    """The images as PNG files under ``folder``/images; their rows (relative path, label)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (image, label) in enumerate(images):
        name = f"images/{prefix}{index}.png"
        image.save(folder / name)
        rows.append({"path": name, "kind": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.write_text("path,kind\n" + "".join(f"{row['path']},{row['kind']}\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The blobs: a pretraining csv, a fine-tuning csv and a held-out jsonl (disjoint
    images), and a folder of images without classes."""
    root = tmp_path_factory.mktemp("blobs")
    pretrain = write_images(root, blobs(320, seed=1), "pre")
    train = write_images(root, blobs(64, seed=2), "train")
    held_out = write_images(root, blobs(32, seed=3), "eval")
    (root / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in held_out))
    flat = root / "unlabelled"
    flat.mkdir()
    for index, (image, _) in enumerate(blobs(48, seed=4)):
        image.save(flat / f"{index}.png")
    return {
        "pretrain": write_csv(root / "pretrain.csv", pretrain),
        "train": write_csv(root / "train.csv", train),
        "eval": root / "eval.jsonl",
        "unlabelled": flat,
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints: transformers' ViT classifier with its own image processor,
    timm's ViT as timm saves it for the Hub (its shape from model_args, its normalisation in
    pretrained_cfg), transformers' ViTMAEForPreTraining."""
    import timm
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    config = transformers.ViTConfig(**TINY, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(root / "transformers-vit")
    transformers.ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=CHECKPOINT_MEAN, image_std=CHECKPOINT_STD
    ).save_pretrained(root / "transformers-vit")
    # No num_heads: the 6 heads vit_small_patch16_224's name implies (48 wide: 8 per head).
    model_args = {"img_size": SIZE, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_classes": 3}
    timm_model = timm.create_model("vit_small_patch16_224", pretrained=False, **model_args)
    timm_model.pretrained_cfg = {
        **timm_model.pretrained_cfg,
        "mean": tuple(CHECKPOINT_MEAN),
        "std": tuple(CHECKPOINT_STD),
    }
    save_for_hf(timm_model, root / "timm-vit", model_args=model_args, safe_serialization=True)
    mae = transformers.ViTMAEConfig(
        **TINY,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    transformers.ViTMAEForPreTraining(mae).save_pretrained(root / "transformers-vitmae")
    return {
        "transformers-vit": root / "transformers-vit",
        "timm-vit": root / "timm-vit",
        "transformers-vitmae": root / "transformers-vitmae",
    }


def train(recipe: str, output_dir: Path, *flags: str) -> dict:
    """One in-process run of ``recipe``; its run.json summary. accelerate's process-wide
    state is reset afterwards, so that the next run starts clean."""
    from accelerate.state import AcceleratorState

    argv = ["train", recipe, "--output-dir", str(output_dir), "--no-augment", *flags]
    try:
        assert main(argv) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return json.loads((output_dir / "run.json").read_text())["summary"]


def short(steps: int = 2, batch: int = 8) -> list[str]:
    """Flags of a run of ``steps`` steps evaluated at its start and end."""
    return ["--max-steps", str(steps), "--batch-size", str(batch), "--eval-every", str(steps)]


def assert_same_weights(saved: dict, expected: dict, skip: tuple[str, ...] = ()) -> None:
    """Every weight of ``expected`` (not under ``skip``) equal to ``saved``'s within 1e-6."""
    compared = 0
    for name, tensor in expected.items():
        if name.startswith(skip):
            continue
        torch.testing.assert_close(saved[name], tensor, atol=1e-6, rtol=0, msg=name)
        compared += 1
    assert compared > 10


# --- no training ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "architecture",
    [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch32_224",
        "vit_large_patch16_224",
        "vit_huge_patch14_224",
        "vit_medium_patch16_gap_256",
    ],
)
def test_the_head_count_and_pooling_of_a_timm_name_are_timms(architecture: str) -> None:
    import timm

    from scratchformers.vit import options_from_timm_config

    with torch.device("meta"):
        reference = timm.create_model(architecture, pretrained=False)
    options = options_from_timm_config(
        {"architecture": architecture, "global_pool": reference.global_pool}
    )
    assert options["num_attention_heads"] == reference.blocks[0].attn.num_heads
    assert options["pooling"] == {"token": "cls", "avg": "mean"}[reference.global_pool]


def test_a_timm_hub_folder_computes_timms_logits(checkpoints: dict[str, Path]) -> None:
    """The folder's config.json (head count from the name, shape from model_args) and weights
    give timm's own model's logits."""
    import timm

    from scratchformers.vit import from_timm, options_from_timm_config

    folder = checkpoints["timm-vit"]
    config = json.loads((folder / "config.json").read_text())
    reference = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
    reference.load_state_dict(load_file(folder / "model.safetensors"))
    ours = from_timm(folder, **options_from_timm_config(config))
    pixels = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values=pixels).logits, reference.eval()(pixels))


def test_another_image_size_resizes_the_positions_as_transformers_interpolates() -> None:
    """with_image_size gives a plain model of the new size whose outputs are transformers'
    ViT's with interpolate_pos_encoding=True, on the same weights."""
    from scratchformers.vit import ViTForImageClassification, with_image_size

    reference = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY, num_labels=3))
    ours = ViTForImageClassification.from_pretrained(_saved(reference))
    resized = with_image_size(ours, 28).eval()
    assert resized.config.image_size == 28
    assert resized.vit.embeddings.position_embeddings.shape == (1, 1 + 7 * 7, 32)
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = reference.eval()(pixel_values=pixels, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(resized(pixel_values=pixels).logits, expected)


def _saved(model: transformers.PreTrainedModel) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp())
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-column", "picture"], "has no column 'picture' (its columns: path, kind)"),
        (
            ["--label-column", "kind", "--init-from", "nowhere/at/all"],
            "--init-from nowhere/at/all does not exist",
        ),
        (["--label-column", "kind", "--eval-dataset", "EMPTY"], "holds no rows"),
        (["--label-column", "kind", "--dataset", "ONE_CLASS"], "holds one class, 'red'"),
        (["--label-column", "kind", "--dataset", "BROKEN"], "row 2: could not read the image"),
    ],
)
def test_bad_data_or_a_missing_checkpoint_stops_the_run_in_one_line_before_any_work(
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    root = data["train"].parent
    files = {
        "EMPTY": tmp_path / "empty.csv",
        "ONE_CLASS": tmp_path / "one.csv",
        "BROKEN": tmp_path / "broken.csv",
    }
    files["EMPTY"].write_text("path,kind\n")
    files["ONE_CLASS"].write_text("path,kind\n" + f"{root}/images/train0.png,red\n" * 4)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files["BROKEN"].write_text(f"path,kind\n{root}/images/train0.png,red\nbroken.png,blue\n")
    flags = [str(files.get(flag, flag)) for flag in flags]
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "metrics.jsonl").write_text("an earlier run's\n")
    argv = ["train", "vit", "--output-dir", str(output_dir), "--overwrite"]
    assert main([*argv, "--dataset", str(data["train"]), "--image-column", "path", *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1], error
    assert sorted(p.name for p in output_dir.iterdir()) == ["metrics.jsonl"]
    assert (output_dir / "metrics.jsonl").read_text() == "an earlier run's\n"


# --- runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_runs(
    data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """A short vit run on the pretraining blobs, exported to transformers' format; then the
    same fine-tuning (csv, held out: the jsonl) from it with a learning rate of 1e-12, and
    from a fresh start."""
    root = tmp_path_factory.mktemp("vit-runs")
    table = ["--image-column", "path", "--label-column", "kind"]
    pretrain = [*VIT_FLAGS, "--image-size", str(SIZE), "--lr", "3e-3", "--warmup-steps", "3"]
    train(
        "vit",
        root / "pretrained",
        "--dataset",
        str(data["pretrain"]),
        *table,
        *pretrain,
        *short(40, 16),
    )
    assert main(["export", str(root / "pretrained"), str(root / "exported")]) == 0
    finetune = ["--dataset", str(data["train"]), *table, "--eval-dataset", str(data["eval"])]
    train(
        "vit",
        root / "from-pretrained",
        "--init-from",
        str(root / "exported"),
        *finetune,
        "--lr",
        "1e-12",
        *short(),
    )
    train("vit", root / "from-scratch", *finetune, *pretrain, *short())
    yield root


@pytest.mark.slow
def test_vit_fine_tunes_from_its_exported_checkpoint_far_below_a_fresh_start(
    vit_runs: Path,
) -> None:
    pretrained = json.loads((vit_runs / "from-pretrained" / "run.json").read_text())["summary"]
    fresh = json.loads((vit_runs / "from-scratch" / "run.json").read_text())["summary"]
    assert pretrained["first_eval_loss"] < 0.5 * fresh["first_eval_loss"], (pretrained, fresh)
    # The checkpoint's classes (the same names) keep its classifier: every weight is its own.
    reference = transformers.ViTForImageClassification.from_pretrained(vit_runs / "exported")
    saved = transformers.ViTForImageClassification.from_pretrained(
        _exported(vit_runs / "from-pretrained")
    )
    assert_same_weights(saved.state_dict(), reference.state_dict())
    assert saved.config.id2label == reference.config.id2label
    card = (vit_runs / "from-pretrained" / "README.md").read_text()
    assert "Fine-tuned" in card and str(vit_runs / "exported") in card


def _exported(run: Path) -> Path:
    out = run.with_name(run.name + "-exported")
    assert main(["export", str(run), str(out)]) == 0
    assert (out / "preprocessor_config.json").is_file()
    return out


@pytest.mark.slow
def test_vit_from_a_transformers_folder_keeps_its_body_processor_and_resizes_positions(
    checkpoints: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    """At another image size (32, the checkpoint's is 16): the saved model is the checkpoint
    with its positions resized once, its classifier (3 labels, not the data's 2) fresh."""
    from scratchformers.vit import ViTForImageClassification, with_image_size

    folder = checkpoints["transformers-vit"]
    output_dir = tmp_path / "run"
    train(
        "vit",
        output_dir,
        "--init-from",
        str(folder),
        "--dataset",
        str(data["train"]),
        "--image-column",
        "path",
        "--label-column",
        "kind",
        "--image-size",
        "32",
        "--lr",
        "1e-12",
        *short(),
    )
    expected = with_image_size(ViTForImageClassification.from_pretrained(folder), 32)
    saved = ViTForImageClassification.from_pretrained(output_dir)
    assert saved.config.image_size == 32 and saved.config.id2label == {0: "blue", 1: "red"}
    assert_same_weights(saved.state_dict(), expected.state_dict(), skip=("classifier",))
    processor = transformers.AutoImageProcessor.from_pretrained(output_dir)
    assert [list(processor.image_mean), list(processor.image_std)] == [
        CHECKPOINT_MEAN,
        CHECKPOINT_STD,
    ]
    assert processor.size == {"height": 32, "width": 32}


@pytest.mark.slow
def test_vit_from_a_timm_folder_keeps_its_body_and_pretrained_cfg_normalisation(
    checkpoints: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    from scratchformers.vit import from_timm, options_from_timm_config

    folder = checkpoints["timm-vit"]
    output_dir = tmp_path / "run"
    train(
        "vit",
        output_dir,
        "--init-from",
        str(folder),
        "--dataset",
        str(data["train"]),
        "--image-column",
        "path",
        "--label-column",
        "kind",
        "--lr",
        "1e-12",
        *short(),
    )
    config = json.loads((folder / "config.json").read_text())
    expected = from_timm(folder, **options_from_timm_config(config))
    saved = load_file(output_dir / "model.safetensors")
    assert_same_weights(saved, expected.state_dict(), skip=("classifier",))
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == (CHECKPOINT_MEAN, CHECKPOINT_STD)
    assert processor["size"] == {"height": SIZE, "width": SIZE}


@pytest.fixture(scope="module")
def vitmae_runs(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short vitmae run on the pretraining blobs, exported to transformers' format; then
    the same run on the folder without classes from it (learning rate 1e-12) and from a fresh
    start."""
    root = tmp_path_factory.mktemp("vitmae-runs")
    pretrain = [*MAE_FLAGS, "--image-size", str(SIZE), "--lr", "3e-3", "--warmup-steps", "3"]
    train(
        "vitmae",
        root / "pretrained",
        "--dataset",
        str(data["pretrain"]),
        "--image-column",
        "path",
        "--label-column",
        "kind",
        *pretrain,
        *short(40, 16),
    )
    assert main(["export", str(root / "pretrained"), str(root / "exported")]) == 0
    folder = ["--dataset", str(data["unlabelled"]), "--eval-fraction", "0.25"]
    train(
        "vitmae",
        root / "from-pretrained",
        "--init-from",
        str(root / "exported"),
        *folder,
        "--lr",
        "1e-12",
        *short(),
    )
    train("vitmae", root / "from-scratch", *folder, *pretrain, *short())
    yield root


@pytest.mark.slow
def test_vitmae_goes_on_from_a_transformers_checkpoint_far_below_a_fresh_start(
    vitmae_runs: Path,
) -> None:
    from scratchformers.vitmae import ViTMAEForPreTraining

    pretrained = json.loads((vitmae_runs / "from-pretrained" / "run.json").read_text())["summary"]
    fresh = json.loads((vitmae_runs / "from-scratch" / "run.json").read_text())["summary"]
    assert pretrained["first_eval_loss"] < 0.7 * fresh["first_eval_loss"], (pretrained, fresh)
    reference = transformers.ViTMAEForPreTraining.from_pretrained(vitmae_runs / "exported")
    saved = ViTMAEForPreTraining.from_pretrained(vitmae_runs / "from-pretrained")
    expected = ViTMAEForPreTraining.from_pretrained(vitmae_runs / "exported")
    assert_same_weights(saved.state_dict(), expected.state_dict())
    # ... and those are transformers' weights: the same reconstruction for the same noise.
    pixels, noise = torch.randn(2, 3, SIZE, SIZE), torch.rand(2, (SIZE // 4) ** 2)
    with torch.no_grad():
        torch.testing.assert_close(
            saved.eval()(pixel_values=pixels, noise=noise).logits,
            reference.eval()(pixel_values=pixels, noise=noise).logits,
            atol=1e-5,
            rtol=1e-4,
        )
    # No classes in the folder: no linear probe.
    assert not (vitmae_runs / "from-pretrained" / "linear_probe.json").exists()
    assert (vitmae_runs / "from-pretrained" / "reconstructions.png").is_file()


@pytest.mark.slow
def test_vitmae_from_a_random_transformers_checkpoint_keeps_its_weights(
    checkpoints: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    from scratchformers.vitmae import ViTMAEForPreTraining

    folder = checkpoints["transformers-vitmae"]
    train(
        "vitmae",
        tmp_path / "run",
        "--init-from",
        str(folder),
        "--dataset",
        str(data["unlabelled"]),
        "--lr",
        "1e-12",
        *short(),
    )
    saved = ViTMAEForPreTraining.from_pretrained(tmp_path / "run")
    expected = ViTMAEForPreTraining.from_pretrained(folder)
    assert_same_weights(saved.state_dict(), expected.state_dict())


@pytest.mark.slow
def test_two_processes_fine_tune_vit_as_one_does(
    checkpoints: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    """accelerate launch with two CPU processes: each reads its half of every batch (the
    weights then equal a one-process run's with the same global batch), one model is
    written."""
    flags = [
        "--init-from",
        str(checkpoints["transformers-vit"]),
        "--dataset",
        str(data["train"]),
        "--image-column",
        "path",
        "--label-column",
        "kind",
        "--no-augment",
        *short(3, 8),
    ]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_2_processes.yaml"),
        "-m",
        "scratchformers.vit.train",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [*launch, "--output-dir", str(tmp_path / "two"), *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "run.json").read_text())["summary"]
    assert summary["num_processes"] == 2
    assert len(set(summary["weight_fingerprints"])) == 1
    assert len(list((tmp_path / "two").glob("*.safetensors"))) == 1
    train("vit", tmp_path / "one", *flags)
    one, two_weights = (load_file(tmp_path / run / "model.safetensors") for run in ("one", "two"))
    moved = load_file(checkpoints["transformers-vit"] / "model.safetensors")
    assert one.keys() == two_weights.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(two_weights[name], tensor, atol=2e-5, rtol=1e-4, msg=name)
    assert not torch.equal(one["vit.layers.0.mlp.fc1.weight"], _ours(moved)), "it trained"


def _ours(transformers_state: dict) -> torch.Tensor:
    return transformers_state["vit.encoder.layer.0.intermediate.dense.weight"]
