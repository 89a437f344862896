"""What the config accepts and refuses, and the n_positions limit: beyond it, a forward pass
and generate() fail with a ValueError naming the limit instead of an index error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

N_POSITIONS = 40


def test_config_reads_transformers_fields_and_aliases(make_config: Callable) -> None:
    config = make_config(n_embd=40, n_head=5, n_layer=3, n_positions=17)
    assert isinstance(config, transformers.GPT2Config)
    assert config.model_type == "scratchformers-gpt2"
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (40, 5, 3)
    assert config.max_position_embeddings == 17


def test_cross_attention_is_refused() -> None:
    with pytest.raises(ValueError, match=r"add_cross_attention"):
        GPT2Config(add_cross_attention=True)


def test_a_transformers_checkpoint_with_cross_attention_is_refused(
    make_theirs: Callable, tmp_path: Path
) -> None:
    make_theirs(add_cross_attention=True).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"add_cross_attention"):
        GPT2LMHeadModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(("n_embd", "n_head"), [(50, 3), (48, 5), (7, 2)])
def test_width_not_divisible_by_heads_is_refused(n_embd: int, n_head: int) -> None:
    with pytest.raises(ValueError, match=rf"n_embd={n_embd}.*n_head={n_head}"):
        GPT2Config(n_embd=n_embd, n_head=n_head)


def test_a_config_changed_after_creation_is_checked_by_the_model(make_config: Callable) -> None:
    config = make_config()
    config.n_head = 5
    with pytest.raises(ValueError, match=r"n_head=5"):
        GPT2LMHeadModel(config)


@pytest.fixture
def model(make_config: Callable) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(make_config(n_positions=N_POSITIONS)).eval()


def test_exactly_n_positions_tokens_work(model: GPT2LMHeadModel) -> None:
    input_ids = torch.randint(2, 101, (2, N_POSITIONS))
    with torch.no_grad():
        logits = model(input_ids).logits
    assert logits.shape == (2, N_POSITIONS, 101) and torch.isfinite(logits).all()


def test_a_longer_input_names_the_limit(model: GPT2LMHeadModel) -> None:
    input_ids = torch.randint(2, 101, (1, N_POSITIONS + 1))
    with pytest.raises(ValueError, match=rf"max_position_embeddings={N_POSITIONS}"):
        model(input_ids)


def test_left_padding_does_not_count_against_the_limit(model: GPT2LMHeadModel) -> None:
    """Positions count real tokens: 40 real tokens behind 3 pads fit, as they do in generate()."""
    input_ids = torch.randint(2, 101, (2, N_POSITIONS + 3))
    mask = torch.ones_like(input_ids)
    mask[0, :3] = 0
    mask[1, :5] = 0
    with torch.no_grad():
        padded = model(input_ids, attention_mask=mask).logits[0, 3:]
        alone = model(input_ids[:1, 3:]).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_generating_past_the_limit_names_it(model: GPT2LMHeadModel) -> None:
    prompt = torch.randint(2, 101, (1, N_POSITIONS - 3))
    # Up to the limit works...
    output = model.generate(prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape == (1, N_POSITIONS)
    # ...one token beyond it does not.
    with pytest.raises(ValueError, match=rf"max_position_embeddings={N_POSITIONS}"):
        model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)


def test_generating_past_the_limit_without_cache_names_it(model: GPT2LMHeadModel) -> None:
    prompt = torch.randint(2, 101, (1, N_POSITIONS - 2))
    with pytest.raises(ValueError, match=rf"max_position_embeddings={N_POSITIONS}"):
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
