"""Every installed recipe through the `scratchformers` command: help at once (no torch), and
model-shape flags that reach the model."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from scratchformers.training import load_recipe, parse_settings, train_byte_level_bpe

HELP_WITHOUT_TORCH = """
import sys
from scratchformers.training.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    assert exit.code == 0, exit.code
heavy = sorted(name for name in ("torch", "transformers", "accelerate", "datasets")
               if name in sys.modules)
print("heavy:", heavy)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["train", "basicformer", "--help"],
        ["train", "gpt2", "--help"],
        ["train", "bert-mlm", "--help"],
        ["train", "vit", "--help"],
        ["train", "vitmae", "--help"],
        ["train", "clip", "--help"],
    ],
)
def test_help_imports_no_torch(argv: list[str]) -> None:
    """What makes --help answer in a fraction of a second instead of ~10 s."""
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: scratchformers" in result.stdout
    assert "heavy: []" in result.stdout
    if argv[-2:] == ["gpt2", "--help"]:
        assert "--width N" in result.stdout and "--resume [CHECKPOINT]" in result.stdout


@pytest.mark.parametrize(
    ("recipe_name", "flags", "expected"),
    [
        (
            "basicformer",
            [
                "--width",
                "48",
                "--depth",
                "1",
                "--heads",
                "3",
                "--kv-heads",
                "1",
                "--block-size",
                "24",
            ],
            {
                "hidden_size": 48,
                "num_hidden_layers": 1,
                "num_attention_heads": 3,
                "num_key_value_heads": 1,
                "max_position_embeddings": 24,
            },
        ),
        (
            "bert-mlm",
            ["--width", "48", "--depth", "1", "--heads", "3", "--block-size", "24"],
            {
                "hidden_size": 48,
                "num_hidden_layers": 1,
                "num_attention_heads": 3,
                "max_position_embeddings": 24,
            },
        ),
        (
            "gpt2",
            ["--width", "48", "--depth", "1", "--heads", "3", "--block-size", "24"],
            {"n_embd": 48, "n_layer": 1, "n_head": 3, "n_positions": 24},
        ),
    ],
)
def test_model_shape_flags_reach_the_model(
    recipe_name: str, flags: list[str], expected: dict[str, int]
) -> None:
    recipe = load_recipe(recipe_name)
    settings = parse_settings(recipe, flags)
    tokenizer = train_byte_level_bpe(["the cat sat on the mat"] * 20, 300)
    model = recipe.build_model(settings, SimpleNamespace(processor=tokenizer))
    assert {key: getattr(model.config, key) for key in expected} == expected


def test_vit_shape_flags_reach_the_model() -> None:
    recipe = load_recipe("vit")
    flags = ["--width", "48", "--depth", "1", "--heads", "3", "--patch-size", "4"]
    settings = parse_settings(recipe, [*flags, "--image-size", "16", "--pooling", "mean"])
    classes = SimpleNamespace(train=SimpleNamespace(class_names=["circle", "star"]))
    config = recipe.build_model(settings, classes).config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (48, 1, 3)
    assert (config.patch_size, config.image_size, config.pooling) == (4, 16, "mean")
    assert config.id2label == {0: "circle", 1: "star"}


def test_vitmae_shape_flags_reach_the_model() -> None:
    recipe = load_recipe("vitmae")
    flags = ["--width", "48", "--depth", "1", "--heads", "3", "--decoder-width", "32"]
    flags += ["--decoder-depth", "1", "--decoder-heads", "2", "--mask-ratio", "0.5"]
    settings = parse_settings(recipe, [*flags, "--norm-pix-loss", "true", "--image-size", "16"])
    config = recipe.build_model(settings, SimpleNamespace()).config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (48, 1, 3)
    decoder = (config.decoder_hidden_size, config.decoder_num_hidden_layers)
    assert (*decoder, config.decoder_num_attention_heads) == (32, 1, 2)
    assert (config.mask_ratio, config.norm_pix_loss, config.image_size) == (0.5, True, 16)
    with pytest.raises(SystemExit):
        parse_settings(recipe, ["--norm-pix-loss", "maybe"])
    settings = parse_settings(recipe, ["--mask-ratio", "1.5"])
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        recipe.build_model(settings, SimpleNamespace())


def test_clip_shape_flags_reach_the_model() -> None:
    from scratchformers.clip import train_caption_tokenizer

    recipe = load_recipe("clip")
    flags = ["--width", "48", "--depth", "1", "--heads", "3", "--text-width", "32"]
    flags += ["--text-depth", "1", "--text-heads", "2", "--projection-dim", "16"]
    settings = parse_settings(recipe, [*flags, "--image-size", "16", "--patch-size", "8"])
    tokenizer = train_caption_tokenizer(["a small red circle"], model_max_length=12)
    data = SimpleNamespace(processor=SimpleNamespace(tokenizer=tokenizer))
    config = recipe.build_model(settings, data).config
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (48, 1, 3)
    assert (vision.image_size, vision.patch_size) == (16, 8)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (32, 1, 2)
    assert (text.vocab_size, text.max_position_embeddings) == (len(tokenizer), 12)
    assert text.eos_token_id == tokenizer.eos_token_id
    assert config.projection_dim == 16
