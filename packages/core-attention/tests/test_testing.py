"""``scratchformers.core_attention.testing`` cannot pass vacuously: each checker passes on a
tiny transformers Llama that keeps its contract, and fails, with its own message, on the same
model with that one contract broken (a wrong cache path, ignored padding, perturbed saved
weights, a bypassed or never compiled lean loop, unchecked inputs and configs).

The models passing here are 1-layer Llamas; gpt2's and basicformer's suites run every checker on
their real models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.cache_utils import Cache

from scratchformers.core_attention import (
    LeanGenerationMixin,
    TokenEmbedding,
    check_config,
    prepare_attention_inputs,
)
from scratchformers.core_attention.testing import (
    assert_auto_classes_load,
    assert_batch_equals_each_prompt,
    assert_cache_changes_nothing,
    assert_cached_logits_match_full_forward,
    assert_config_error,
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_lean_compiled_step,
    assert_lean_decoding_matches,
    assert_lean_routing,
    assert_lean_stopping_matches,
    assert_matches_reference,
    assert_padding_changes_nothing,
    assert_save_load_round_trip,
    assert_static_cache_matches_dynamic,
    left_padded_batch,
)

VOCAB = 32
TINY = {
    "hidden_size": 24,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 24,
    "num_hidden_layers": 1,
    "vocab_size": VOCAB,
    "max_position_embeddings": 32,
    "initializer_range": 0.5,
    "tie_word_embeddings": False,
    "pad_token_id": None,  # padding (id 0) embeds as a random row: ignored padding shows
    "bos_token_id": 1,
    "eos_token_id": 2,
}
GREEDY = {"max_new_tokens": 7, "min_new_tokens": 7, "do_sample": False, "pad_token_id": 0}


class LeanLlama(LeanGenerationMixin, LlamaForCausalLM):
    """transformers' Llama with the lean static-cache decode loop: keeps every contract."""


class WrongWithCache(LeanLlama):
    """Logits shifted by one token id whenever a cache of ``broken`` already holds tokens."""

    broken: type = Cache

    def forward(self, *args: Any, cache: Cache | None = None, **kwargs: Any) -> Any:
        output = super().forward(*args, cache=cache, **kwargs)
        if isinstance(cache, self.broken) and cache.get_seq_length() > 0:
            output.logits = output.logits.roll(1, dims=-1)
        return output


class WrongWithStaticCache(WrongWithCache):
    broken = StaticCache


class PaddingBlind(LeanLlama):
    """Drops the attention mask: padding is attended to like any token."""

    def forward(self, *args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)


class Bypassed(LeanLlama):
    """Never takes the lean loop."""

    def _lean_decoding_applies(self, *args: Any) -> bool:
        return False


class AlwaysLean(LeanLlama):
    """Takes the lean loop for every request, even where it only falls back."""

    def _lean_decoding_applies(self, *args: Any) -> bool:
        return True


class IgnoresEos(LeanLlama):
    """Drops the EOS of static-cache requests."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("cache_implementation") == "static":
            kwargs["eos_token_id"] = None
        return super().generate(*args, **kwargs)


class NeverCompiled(LeanLlama):
    """Runs the lean step eagerly whatever the compile config says."""

    def _lean_step_function(self, generation_config: Any) -> Any:
        return self._lean_decode_step


class PerturbedOnSave(LlamaForCausalLM):
    """Writes one weight off by 1e-3."""

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        original = self.lm_head.weight.detach().clone()
        with torch.no_grad():
            self.lm_head.weight[0, 0] += 1e-3
        super().save_pretrained(*args, **kwargs)
        with torch.no_grad():
            self.lm_head.weight.copy_(original)


class Unregistered(LlamaForCausalLM):
    """A subclass no Auto class knows: AutoModelForCausalLM loads a plain Llama."""


class CheckedInputs(LlamaForCausalLM):
    """Token ids through the core's TokenEmbedding, the mask through prepare_attention_inputs,
    and an empty input refused naming input_ids."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size)

    def forward(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        if input_ids is not None and input_ids.dim() == 2 and input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
        embeds = self.model.embed_tokens(input_ids)
        prepare_attention_inputs(self.config, embeds, attention_mask, None, causal=True)
        return super().forward(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


@strict
class CheckedLlamaConfig(LlamaConfig):
    """LlamaConfig that refuses what cannot work, through the core's check_config."""

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        check_config(self)


def make(model_class: type = LeanLlama, **overrides: Any) -> tuple[Any, LlamaForCausalLM]:
    """``(model, reference)``: ``model_class`` with the weights of a seeded Llama."""
    torch.manual_seed(0)
    reference = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()
    model = model_class(copy.deepcopy(reference.config)).eval()
    model.load_state_dict(reference.state_dict())
    return model, reference


def batch(lengths: tuple[int, ...] = (6, 3, 4)) -> tuple[torch.Tensor, torch.Tensor, list]:
    return left_padded_batch(lengths, VOCAB, first_id=3)


def test_cache_checks() -> None:
    input_ids, mask, _ = batch()
    extra = torch.randint(3, VOCAB, (3, 3))
    model, _ = make()
    assert_cache_changes_nothing(model, input_ids, mask, **GREEDY)
    assert_cached_logits_match_full_forward(model, input_ids, mask, extra)
    broken, _ = make(WrongWithCache)
    with pytest.raises(AssertionError, match="the KV cache changed the tokens"):
        assert_cache_changes_nothing(broken, input_ids, mask, **GREEDY)
    with pytest.raises(AssertionError, match="max abs logit difference"):
        assert_cached_logits_match_full_forward(broken, input_ids, mask, extra)


def test_static_cache_check() -> None:
    input_ids, mask, _ = batch()
    assert_static_cache_matches_dynamic(make()[0], input_ids, mask, **GREEDY)
    with pytest.raises(AssertionError, match="the static cache changed the tokens"):
        assert_static_cache_matches_dynamic(
            make(WrongWithStaticCache)[0], input_ids, mask, **GREEDY
        )


def test_padding_checks() -> None:
    input_ids, mask, rows = batch()
    assert_batch_equals_each_prompt(make()[0], input_ids, mask, rows, **GREEDY)
    with pytest.raises(AssertionError, match=r"row \d differs alone"):
        assert_batch_equals_each_prompt(make(PaddingBlind)[0], input_ids, mask, rows, **GREEDY)
    assert_padding_changes_nothing(make()[0], input_ids, mask, rows)
    with pytest.raises(AssertionError, match="max abs logit difference"):
        assert_padding_changes_nothing(make(PaddingBlind)[0], input_ids, mask, rows)


def test_reference_check() -> None:
    input_ids, mask, _ = batch((5, 1, 3))
    model, reference = make()
    assert assert_matches_reference(model, reference, input_ids, mask) <= 1e-4
    with torch.no_grad():
        reference.model.layers[0].mlp.up_proj.weight[0, 0] += 0.1
    with pytest.raises(AssertionError, match="max abs logit difference"):
        assert_matches_reference(model, reference, input_ids, mask)


def test_lean_decoding_check() -> None:
    input_ids, mask, _ = batch()
    greedy = {**GREEDY, "eos_token_id": None}
    assert_lean_decoding_matches(*make(), input_ids, mask, **greedy)
    with pytest.raises(AssertionError, match=r"ran \{'lean': 0, 'sample': 1"):
        assert_lean_decoding_matches(*make(Bypassed), input_ids, mask, **greedy)
    with pytest.raises(AssertionError, match="lean tokens differ from"):
        assert_lean_decoding_matches(*make(WrongWithStaticCache), input_ids, mask, **greedy)


def test_lean_stopping_check() -> None:
    input_ids, mask, _ = batch()
    assert_lean_stopping_matches(*make(), input_ids, mask)
    with pytest.raises(AssertionError, match="lean tokens differ with"):
        assert_lean_stopping_matches(*make(IgnoresEos), input_ids, mask)


def test_lean_routing_check() -> None:
    input_ids, mask, _ = batch()
    assert_lean_routing(*make(), input_ids, mask)
    with pytest.raises(AssertionError, match=r"ran \{'lean': 1, 'sample': 1"):
        assert_lean_routing(*make(AlwaysLean), input_ids, mask)


def test_lean_compiled_step_check_fails_without_a_compile() -> None:
    """Passing needs a compile (slow on a CPU): gpt2's and basicformer's suites show it."""
    input_ids, mask, _ = batch()
    with pytest.raises(AssertionError, match="the step was not compiled once"):
        assert_lean_compiled_step(*make(NeverCompiled), input_ids, mask)


def test_checkpoint_checks(tmp_path: Path) -> None:
    input_ids, mask, _ = batch()
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    for tie in (True, False):
        assert_save_load_round_trip(make(tie_word_embeddings=tie)[1], tmp_path / f"{tie}", inputs)
    with pytest.raises(AssertionError, match=r"lm_head\.weight changed in the round trip"):
        assert_save_load_round_trip(make(PerturbedOnSave)[0], tmp_path / "perturbed", inputs)
    assert_auto_classes_load(make()[1], tmp_path / "auto", AutoModelForCausalLM, inputs)
    with pytest.raises(AssertionError, match="AutoModelForCausalLM gave LlamaForCausalLM"):
        assert_auto_classes_load(
            make(Unregistered)[0], tmp_path / "sub", AutoModelForCausalLM, inputs
        )


def test_input_error_checks() -> None:
    input_ids, mask, _ = batch()
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    checked, plain = make(CheckedInputs)
    assert_input_errors(checked, inputs)
    assert_empty_inputs_raise(checked, inputs)
    with pytest.raises(AssertionError, match="token id 32: IndexError instead of a ValueError"):
        assert_input_errors(plain, inputs)
    with pytest.raises(AssertionError, match="an empty sequence: "):
        assert_empty_inputs_raise(plain, inputs)


@pytest.mark.parametrize(
    ("field", "values"),
    [("num_key_value_heads", (0, -1)), ("hidden_size", (0,)), ("rms_norm_eps", (0.0, -1e-5))],
)
def test_config_error_check(field: str, values: tuple) -> None:
    assert_config_error(CheckedLlamaConfig, TINY, field, values, builders=[check_config])
    with pytest.raises(AssertionError, match=rf"LlamaConfig\({field}=.*: no error"):
        assert_config_error(LlamaConfig, TINY, field, values)
