"""``scratchformers.core_attention.testing`` cannot pass vacuously: each checker passes on a
tiny transformers Llama that keeps its contract, and fails, with its own message, on the same
model with that one contract broken (a wrong cache path, ignored padding, perturbed saved
weights, a bypassed or never compiled lean loop, unchecked inputs and configs). The same holds
for the generation contracts on a tiny BART (an encoder-decoder), for the reference pairs, and
for the pytest plugin's ``assert_matches``.

The models passing here are 1-layer Llamas; gpt2's and basicformer's suites run every checker on
their real models.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    StaticCache,
)
from transformers.cache_utils import Cache

from scratchformers.core_attention import (
    ChecksCheckpoints,
    LeanGenerationMixin,
    TokenEmbedding,
    check_config,
    check_token_labels,
    prepare_attention_inputs,
)
from scratchformers.core_attention.testing import (
    PLUGIN,
    PairSpec,
    assert_auto_classes_load,
    assert_batch_equals_each_prompt,
    assert_cache_changes_nothing,
    assert_cached_logits_match_full_forward,
    assert_close_on_real_tokens,
    assert_config_error,
    assert_damaged_checkpoints_raise,
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_label_errors,
    assert_lean_compiled_step,
    assert_lean_decoding_matches,
    assert_lean_routing,
    assert_lean_stopping_matches,
    assert_matches_reference,
    assert_padding_changes_nothing,
    assert_save_load_round_trip,
    assert_static_cache_matches_dynamic,
    build_pair,
    go_offline,
    is_norm_weight,
    left_padded_batch,
    random_images,
    randomize,
    right_padded_batch,
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


class FileCheckingLlama(ChecksCheckpoints, LlamaForCausalLM):
    """transformers' Llama whose `from_pretrained` names the cause of a damaged checkpoint."""


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


class SoftMaskBlind(CheckedInputs):
    """Checks the mask's shape, but reads a soft mask (0.5) as 1 without a word."""

    def forward(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        blind = None if attention_mask is None else attention_mask.bool()
        return super().forward(input_ids, blind, **kwargs)


class CheckedLabels(CheckedInputs):
    """Labels checked by the core's check_token_labels before Llama's loss."""

    def forward(self, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        if labels is not None:
            check_token_labels(labels, input_ids, None, self.config.vocab_size)
        return super().forward(input_ids, labels=labels, **kwargs)


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


def test_damaged_checkpoint_check(tmp_path: Path) -> None:
    assert_damaged_checkpoints_raise(make(FileCheckingLlama)[0], tmp_path / "checked")
    # transformers' own loader answers with safetensors' and its own messages.
    with pytest.raises(AssertionError, match=r"^model.safetensors empty: "):
        assert_damaged_checkpoints_raise(make()[1], tmp_path / "plain")


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
    with pytest.raises(AssertionError, match=r"a mask holding 0\.5: no error"):
        assert_input_errors(make(SoftMaskBlind)[0], inputs)


def test_label_error_checks() -> None:
    input_ids, mask, _ = batch()
    inputs = {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids}
    assert_label_errors(make(CheckedLabels)[0], inputs)
    # Llama's own loss: torch's "Target 32 is out of bounds", which names no argument.
    with pytest.raises(AssertionError, match=r"a label of 32: \w+ instead of a ValueError"):
        assert_label_errors(make()[1], inputs)


@pytest.mark.parametrize(
    ("field", "values"),
    [("num_key_value_heads", (0, -1)), ("hidden_size", (0,)), ("rms_norm_eps", (0.0, -1e-5))],
)
def test_config_error_check(field: str, values: tuple) -> None:
    assert_config_error(CheckedLlamaConfig, TINY, field, values, builders=[check_config])
    with pytest.raises(AssertionError, match=rf"LlamaConfig\({field}=.*: no error"):
        assert_config_error(LlamaConfig, TINY, field, values)


def test_degenerate_values_are_refused_when_asked() -> None:
    spread = torch.linspace(-1.0, 1.0, 12)
    assert assert_close_on_real_tokens(spread, spread + 1e-6, min_std=1e-3) <= 1e-4
    flat = torch.full((12,), 0.5)
    assert_close_on_real_tokens(flat, flat)  # without min_std nothing is asked
    with pytest.raises(AssertionError, match="degenerate logits"):
        assert_close_on_real_tokens(flat, flat, min_std=1e-3)
    assert_close_on_real_tokens(flat[:1], flat[:1], min_std=1e-3)  # a single value: a loss


# --- encoder-decoders -----------------------------------------------------------------------------

SEQ2SEQ = {
    "vocab_size": VOCAB,
    "d_model": 24,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 24,
    "decoder_ffn_dim": 24,
    "max_position_embeddings": 32,
    "init_std": 0.5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    "forced_eos_token_id": None,
}
SEQ2SEQ_GREEDY = {**GREEDY, "pad_token_id": 1}


class ReadsSourcePadding(BartForConditionalGeneration):
    """The source's mask never reaches the decoder: cross-attention reads the padding."""

    def forward(self, *args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)


def seq2seq(model_class: type = BartForConditionalGeneration) -> BartForConditionalGeneration:
    torch.manual_seed(0)
    return model_class(BartConfig(**SEQ2SEQ)).eval()


def right_padded_sources(
    lengths: tuple[int, ...] = (6, 3, 4),
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Sources padded on the right, as a tokenizer pads them for an encoder-decoder."""
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]
    input_ids = torch.full((len(rows), max(lengths)), SEQ2SEQ["pad_token_id"])
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return input_ids, mask, rows


def test_generation_checks_on_an_encoder_decoder() -> None:
    input_ids, mask, rows = right_padded_sources()
    model = seq2seq()
    tokens = assert_cache_changes_nothing(model, input_ids, mask, **SEQ2SEQ_GREEDY)
    assert torch.equal(
        assert_static_cache_matches_dynamic(model, input_ids, mask, **SEQ2SEQ_GREEDY), tokens
    )
    assert torch.equal(
        assert_batch_equals_each_prompt(model, input_ids, mask, rows, **SEQ2SEQ_GREEDY), tokens
    )
    # A decoder prompt per row: each row alone is given its own.
    prompts = torch.randint(3, VOCAB, (len(rows), 3), generator=torch.Generator().manual_seed(2))
    prompts[:, 0] = SEQ2SEQ["decoder_start_token_id"]
    prompted = assert_batch_equals_each_prompt(
        model, input_ids, mask, rows, decoder_input_ids=prompts, **SEQ2SEQ_GREEDY
    )
    assert torch.equal(prompted[:, :3], prompts) and prompted.shape[1] == 3 + 7
    with pytest.raises(AssertionError, match=r"row \d differs alone"):
        assert_batch_equals_each_prompt(
            seq2seq(ReadsSourcePadding), input_ids, mask, rows, **SEQ2SEQ_GREEDY
        )
    with pytest.raises(AssertionError, match="pad some rows"):
        unpadded = [row[:3] for row in rows]
        assert_batch_equals_each_prompt(
            model, torch.stack(unpadded), torch.ones(3, 3), unpadded, **SEQ2SEQ_GREEDY
        )


# --- reference pairs and the plugin ---------------------------------------------------------------


def test_randomize_redraws_every_parameter() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    before = {name: parameter.clone() for name, parameter in model.named_parameters()}
    randomize(model, seed=3, fixed={"lm_head.weight": 0.5})
    norms = 0
    for name, parameter in model.named_parameters():
        assert not torch.equal(parameter, before[name]), f"{name} was not re-drawn"
        if is_norm_weight(name):
            norms += 1
            assert abs(float(parameter.detach().mean()) - 1.0) < 0.2, name
    assert norms == 3  # two in the layer, one at the end
    assert bool((model.lm_head.weight == 0.5).all())
    again = randomize(LlamaForCausalLM(LlamaConfig(**TINY)), seed=3, fixed={"lm_head.weight": 0.5})
    for (name, parameter), other in zip(model.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(parameter, other), f"{name}: the same seed gave other weights"
    assert is_norm_weight("h.0.ln_1.weight") and is_norm_weight("encoder.LayerNorm.weight")
    assert not is_norm_weight("ln_f.bias") and not is_norm_weight("normalizer.dense.weight")


def test_reference_pairs(tmp_path: Path) -> None:
    input_ids, mask, _ = batch()
    config = LlamaConfig(**TINY)
    theirs, ours, directory = build_pair(LlamaForCausalLM, LlamaForCausalLM, config, tmp_path / "a")
    assert directory == tmp_path / "a" and not ours.training
    assert assert_matches_reference(ours, theirs, input_ids, mask) <= 1e-5
    with pytest.raises(AssertionError, match="AutoModelForCausalLM loaded as LlamaForCausalLM"):
        build_pair(LlamaForCausalLM, AutoModelForCausalLM, LlamaConfig(**TINY), tmp_path / "b")

    spec = PairSpec(
        kinds={"lm": (LlamaForCausalLM, LlamaForCausalLM), "body": (LlamaModel, None)},
        config=lambda **overrides: LlamaConfig(**{**TINY, **overrides}),
    )
    assert type(spec.theirs()) is LlamaForCausalLM  # the first kind is the default
    assert type(spec.theirs("body", num_hidden_layers=2).layers[1]) is type(theirs.model.layers[0])
    pair = spec.pair(tmp_path / "c", seed=0, attn_implementation="eager")
    assert pair.ours.config._attn_implementation == "eager"
    assert assert_matches_reference(pair.ours, pair.theirs, input_ids, mask) <= 1e-5
    with pytest.raises(AssertionError, match="has no class of ours"):
        spec.pair(tmp_path / "d", "body")
    with pytest.raises(AssertionError, match="no kind 'head'"):
        spec.theirs("head")


def test_inputs_and_offline() -> None:
    _, left_mask, rows = left_padded_batch((4, 2), VOCAB, first_id=3)
    ids, mask, same_rows = right_padded_batch((4, 2), VOCAB, first_id=3)
    assert all(torch.equal(a, b) for a, b in zip(rows, same_rows, strict=True))
    assert torch.equal(mask, left_mask.flip(-1)) and torch.equal(
        ids[1], torch.tensor([*rows[1], 0, 0])
    )
    images = random_images(2, 8, width=6, seed=4)
    assert images.shape == (2, 3, 8, 6) and torch.equal(images, random_images(2, 8, 6, 4))
    import huggingface_hub.constants

    go_offline()
    assert huggingface_hub.constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"


def test_the_plugin_compares_records_and_reports(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        f"import pytest\n\npytest_plugins = [{PLUGIN!r}]\n\n\n"
        "@pytest.fixture\ndef match_tolerance():\n    return 1e-3\n"
    )
    pytester.makepyfile(
        """
        import torch

        def test_close(assert_matches):
            assert assert_matches(torch.arange(4.0), torch.arange(4.0) + 2e-4, what="probe") > 0

        def test_far(assert_matches):
            assert_matches(torch.arange(4.0), torch.arange(4.0) + 1e-2, what="probe")

        def test_flat(assert_matches):
            assert_matches(torch.ones(4), torch.ones(4), what="flat")

        def test_masked(assert_matches):
            real = torch.tensor([1, 1, 1, 0])
            assert_matches(torch.arange(4.0), torch.tensor([0.0, 1.0, 2.0, 9.0]), real)
            assert float(torch.rand(1)) == float(torch.rand(1, generator=torch.manual_seed(0)))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*max abs probe difference 0.01 > 0.001*",
            "*degenerate flats*",
            "largest logit difference against the reference: 0 (test_masked)",
            "largest probe difference against the reference: 0.0002 (test_close)",
        ]
    )
