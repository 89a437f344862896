"""generate(): the encoder runs once, cross-attention keys and values are projected once, and the
kit's generation contracts hold: the cache, static or not, changes no token, and a padded batch
gives each source's tokens alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers.cache_utils import EncoderDecoderCache

from scratchformers.core_attention.testing import (
    assert_batch_equals_each_prompt,
    assert_cache_changes_nothing,
    assert_static_cache_matches_dynamic,
)
from scratchformers.encdec import EncDecForConditionalGeneration

OPTIONS = {
    "bart-like": {},
    "marian-like": {
        "position_embedding_type": "sinusoidal",
        "layernorm_embedding": False,
        "scale_embedding": True,
        "activation_function": "swish",
    },
    "pre-norm": {"norm_position": "pre", "position_offset": 0},
}


def build(tiny_config: Callable, options: dict) -> EncDecForConditionalGeneration:
    torch.manual_seed(2)
    return EncDecForConditionalGeneration(tiny_config(**options)).eval()


def assert_varied(tokens: torch.Tensor) -> None:
    assert tokens[:, 1:].unique().numel() >= 3 and not (tokens == tokens[0]).all(), tokens


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_the_cache_static_or_not_changes_nothing_and_a_padded_batch_is_each_source_alone(
    tiny_config: Callable, batch: Callable, options: dict, num_beams: int
) -> None:
    model = build(tiny_config, options)
    inputs = batch(model.config.pad_token_id, source_lengths=(9, 3, 6), target_lengths=None)
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    sources = [row[real.bool()] for row, real in zip(input_ids, mask, strict=True)]
    # No min_new_tokens: rows that stop early must be padded after their EOS in the batch.
    settings = {"max_new_tokens": 9, "num_beams": num_beams, "do_sample": False}
    tokens = assert_cache_changes_nothing(model, input_ids, mask, **settings)
    assert_varied(tokens)
    assert_static_cache_matches_dynamic(model, input_ids, mask, **settings)
    assert_batch_equals_each_prompt(model, input_ids, mask, sources, **settings)


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_the_encoder_runs_once_and_cross_keys_are_projected_once(
    tiny_config: Callable, batch: Callable, num_beams: int
) -> None:
    model = build(tiny_config, {})
    inputs = batch(model.config.pad_token_id, target_lengths=None)
    calls = {"encoder": 0, "cross_keys": 0, "decoder": 0, "caches": set()}

    def count(name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name] += 1
            cache = kwargs.get("cache")
            if name == "decoder" and cache is not None:
                assert isinstance(cache, EncoderDecoderCache), type(cache)
                calls["caches"].add(id(cache))

        return hook

    model.model.encoder.register_forward_pre_hook(count("encoder"), with_kwargs=True)
    model.model.decoder.register_forward_pre_hook(count("decoder"), with_kwargs=True)
    for layer in model.model.decoder.layers:
        layer.encoder_attn.k_proj.register_forward_pre_hook(count("cross_keys"), with_kwargs=True)
    tokens = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, num_beams=num_beams)
    steps = tokens.shape[1] - 1
    assert steps == 8 and calls["decoder"] == steps, (steps, calls)
    assert calls["encoder"] == 1, calls
    assert calls["cross_keys"] == model.config.decoder_layers, calls  # at the first step only
    assert len(calls["caches"]) == 1, calls  # one EncoderDecoderCache, carried across steps
