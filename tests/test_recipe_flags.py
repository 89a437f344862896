"""Every installed recipe through the `scratchformers` command: help at once (no torch), and
model-shape flags that reach the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scratchformers.training import (
    TrainingError,
    load_recipe,
    parse_settings,
    train_byte_level_bpe,
    train_wordpiece,
)

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
        ["train", "lora", "--help"],
        ["train", "encdec", "--help"],
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


def test_encdec_shape_flags_reach_the_model() -> None:
    recipe = load_recipe("encdec")
    flags = ["--width", "48", "--depth", "1", "--decoder-depth", "2", "--heads", "3"]
    settings = parse_settings(recipe, [*flags, "--ffn-dim", "40", "--max-positions", "24"])
    tokenizer = train_byte_level_bpe(["three hundred and forty-two", "trois cent"] * 20, 300)
    model = recipe.build_model(settings, SimpleNamespace(processor=tokenizer))
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (48, 1, 2)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (3, 3)
    assert (config.encoder_ffn_dim, config.decoder_ffn_dim) == (40, 40)
    assert (config.max_position_embeddings, config.vocab_size) == (24, len(tokenizer))
    # The decoder starts from <s>; generate() stops at </s> and at the positions' end.
    assert config.decoder_start_token_id == tokenizer.bos_token_id
    assert model.generation_config.max_length == 24
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert parse_settings(recipe, []).recipe_options["label_smoothing"] == 0.1
    for bad in ("1", "-0.1", "x"):
        with pytest.raises(SystemExit):
            parse_settings(recipe, ["--label-smoothing", bad])
    with pytest.raises(SystemExit):
        parse_settings(recipe, ["--target-language", "es"])


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a bert-mlm run leaves it (a tiny untrained BertForMaskedLM and a WordPiece
    tokenizer), for the lora recipe to fine-tune."""
    from scratchformers.bert_mlm import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("bert_base")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))  # the tokenizer cache
        tokenizer = train_wordpiece(["the battery is not good but the screen is great"] * 20, 300)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForMaskedLM(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return root / "base"


def lora_model(base: Path, flags: list[str]):
    """The lora recipe's model for ``flags``, on a few reviews."""
    recipe = load_recipe("lora")
    few = ["--num-train-reviews", "30", "--num-eval-reviews", "9"]
    settings = parse_settings(recipe, ["--base", str(base), *few, *flags])
    return recipe.build_model(settings, recipe.build_data(settings))


def test_lora_flags_reach_the_adapter(bert_base: Path) -> None:
    from scratchformers.lora import LoraLinear, ModulesToSave, trainable_parameters

    flags = ["--rank", "4", "--alpha", "12", "--lora-dropout", "0.1", "--targets", "q_proj, v_proj"]
    model = lora_model(bert_base, flags)
    adapted = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    assert sorted(adapted) == [
        f"bert.encoder.layer.{i}.attention.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")
    ]
    layer = adapted["bert.encoder.layer.0.attention.q_proj"]
    assert layer.lora_A["default"].weight.shape == (4, 48)
    assert layer.scaling["default"] == 3.0 and layer.lora_dropout["default"].p == 0.1
    # The base checkpoint (a masked LM) has no pooler: it trains beside the classifier.
    saved = {name for name, m in model.named_modules() if isinstance(m, ModulesToSave)}
    assert saved == {"classifier", "bert.pooler"}
    trainable, _ = trainable_parameters(model)
    assert trainable == 2 * 2 * 4 * (48 + 48) + (48 * 48 + 48) + (48 * 3 + 3), trainable
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}

    default = lora_model(bert_base, [])
    assert sum(isinstance(m, LoraLinear) for m in default.modules()) == 8  # q, k, v, o x 2

    full = lora_model(bert_base, ["--full"])
    assert not any(isinstance(m, LoraLinear | ModulesToSave) for m in full.modules())
    assert all(p.requires_grad for p in full.parameters())


def test_lora_refuses_a_base_or_a_comparison_that_cannot_work(
    bert_base: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"--init-from .*nowhere does not exist"):
        lora_model(tmp_path / "nowhere", [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"--init-from \(--base\) .*empty holds no model \(no config.json\)"
    ):
        lora_model(tmp_path / "empty", [])
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match=r"has not finished .* --resume"):
        lora_model(tmp_path / "unfinished", [])
    with pytest.raises(SystemExit):
        parse_settings(load_recipe("lora"), ["--targets", " , "])

    with pytest.raises(ValueError, match=r"holds no finetune\.json"):
        lora_model(bert_base, ["--compare-with", str(tmp_path / "empty")])
    other = tmp_path / "other"
    other.mkdir()
    report = {"mode": "lora", "train_reviews": 30, "held_out_reviews": 9, "seed": 0}
    (other / "finetune.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"is a lora run too; .* \(--full\)"):
        lora_model(bert_base, ["--compare-with", str(other)])
    (other / "finetune.json").write_text(json.dumps(report | {"mode": "full", "seed": 3}))
    with pytest.raises(ValueError, match=r"other data \(seed 3 \(here 0\)\)"):
        lora_model(bert_base, ["--compare-with", str(other)])


def test_lora_pretrains_its_default_base_first_as_a_process_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scratchformers.lora import finetune

    calls = []

    def fail(command: list[str], env: dict[str, str], check: bool) -> SimpleNamespace:
        calls.append((command, env))
        return SimpleNamespace(returncode=3)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")  # as under accelerate launch: not for the base's process
    monkeypatch.setattr(finetune.subprocess, "run", fail)
    recipe = load_recipe("lora")
    settings = parse_settings(recipe, ["--num-train-reviews", "30", "--num-eval-reviews", "9"])
    with pytest.raises(
        TrainingError, match=r"pretraining the base model into outputs/bert-mlm-tiny"
    ):
        recipe.build_data(settings)
    [(command, env)] = calls
    assert command[1:] == [
        "-m",
        "scratchformers.bert_mlm.train",
        "--preset",
        "tiny",
        "--output-dir",
        "outputs/bert-mlm-tiny",
    ]
    assert "RANK" not in env
