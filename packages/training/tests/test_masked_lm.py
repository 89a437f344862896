"""The masked-language-model recipe: BERT's masking in the right proportions, a held-out set
masked once, a WordPiece tokenizer that fill-mask pipelines load, and accuracy against the
most-frequent-token baseline, through the real loop with transformers' own BERT."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, pipeline

from scratchformers.training import (
    MaskedLMRecipe,
    MaskingCollator,
    Preset,
    RecipeData,
    TrainingSettings,
    masked_lm_blocks,
    parse_settings,
    train,
    train_wordpiece,
)

NOUNS = ["cat", "dog", "bird", "fish", "horse", "mouse"]
PLACES = ["mat", "tree", "river", "house", "road"]


class ToyMaskedLM(MaskedLMRecipe):
    name = "toy-mlm"
    description = "A tiny BERT for testing the masked-LM recipe."
    presets = {
        "tiny": Preset(
            training={
                "max_steps": 400,
                "batch_size": 32,
                "lr": 3e-3,
                "warmup_steps": 5,
                "eval_every": 200,
                "save_every": 400,
                "log_every": 50,
            },
            model={"vocab_size": 120, "block_size": 24, "max_eval_blocks": 32},
        )
    }

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> BertForMaskedLM:
        tokenizer = data.processor
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=96,
            max_position_embeddings=settings.model["block_size"],
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tokenizer.pad_token_id,
        )
        return BertForMaskedLM(config)


@pytest.fixture
def mlm_corpus(tmp_path: Path) -> Path:
    """Sentences with structure a small model can learn from context."""
    rng = random.Random(0)
    folder = tmp_path / "mlm-corpus"
    folder.mkdir()
    for index in range(60):
        sentences = [
            f"the {rng.choice(NOUNS)} sat on the {rng.choice(PLACES)} and the "
            f"{rng.choice(NOUNS)} ran to the {rng.choice(PLACES)}."
            for _ in range(10)
        ]
        (folder / f"doc{index:02d}.txt").write_text(" ".join(sentences))
    return folder


@pytest.fixture
def tokenizer(mlm_corpus: Path):
    texts = [path.read_text() for path in sorted(mlm_corpus.iterdir())]
    return train_wordpiece(texts, 120)


def test_masking_follows_berts_proportions_and_spares_special_tokens(tokenizer) -> None:
    blocks = masked_lm_blocks(["the cat sat on the mat and ran to the tree."] * 400, tokenizer, 18)
    torch.manual_seed(0)
    batch = MaskingCollator(tokenizer)([{"input_ids": ids} for ids in blocks["input_ids"]])
    original = torch.tensor(blocks["input_ids"])
    chosen = batch["labels"] != -100
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (chosen & special).any(), "[CLS], [SEP] are never prediction targets"
    assert torch.equal(batch["labels"][chosen], original[chosen])
    share = chosen.sum() / (~special).sum()
    assert abs(float(share) - 0.15) < 0.01, share  # ~14,000 candidate tokens
    inputs = batch["input_ids"][chosen]
    as_mask = float((inputs == tokenizer.mask_token_id).float().mean())
    kept = float((inputs == original[chosen]).float().mean())
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03, (as_mask, kept)
    assert abs((1 - as_mask - kept) - 0.1) < 0.03  # random tokens (a few equal the original)
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


def test_the_held_out_set_is_masked_once_and_stays_masked(tokenizer) -> None:
    blocks = masked_lm_blocks(["the dog ran to the river."] * 40, tokenizer, 12)
    collator = MaskingCollator(tokenizer)
    held_out = collator.mask_once(blocks, seed=3)
    assert held_out["labels"] == collator.mask_once(blocks, seed=3)["labels"]
    examples = [held_out[i] for i in range(4)]
    first, again = collator(examples), collator(examples)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert torch.equal(first["labels"], torch.tensor(held_out["labels"][:4]))


def test_the_recipe_beats_the_most_frequent_token_and_fills_masks(
    mlm_corpus: Path, tmp_path: Path
) -> None:
    recipe = ToyMaskedLM()
    output_dir = tmp_path / "run"
    settings = parse_settings(
        recipe, ["--dataset", str(mlm_corpus), "--output-dir", str(output_dir)]
    )
    result = train(recipe, settings)
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").open()]
    first = next(r for r in records if "masked_accuracy" in r)
    final = result.final_metrics
    assert 0 < final["baseline_accuracy"] < 0.5
    assert final["masked_accuracy"] > first["masked_accuracy"]
    assert final["masked_accuracy"] > final["baseline_accuracy"] + 0.2, final
    assert final["eval_loss"] < result.first_eval_loss

    fill = pipeline("fill-mask", model=str(output_dir), tokenizer=str(output_dir))
    predictions = fill("the cat sat on the [MASK].")
    assert len(predictions) == 5 and all("[MASK]" not in p["sequence"] for p in predictions)
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card


def test_a_tokenizer_without_a_mask_token_is_refused(mlm_corpus: Path, tmp_path: Path) -> None:
    from scratchformers.training import train_byte_level_bpe

    bpe = train_byte_level_bpe(["the cat sat on the mat"] * 20, 280)
    bpe.save_pretrained(tmp_path / "bpe")
    recipe = ToyMaskedLM()
    settings = parse_settings(
        recipe,
        [
            "--dataset",
            str(mlm_corpus),
            "--output-dir",
            str(tmp_path / "run"),
            "--tokenizer",
            str(tmp_path / "bpe"),
        ],
    )
    with pytest.raises(ValueError, match="has no mask_token, cls_token, sep_token"):
        train(recipe, settings)
