"""generate() through transformers' GenerationMixin: the KV cache changes nothing, padding
changes nothing, greedy tokens are the argmax of a full forward, beam scores are the sequences'
log-probabilities, sampling follows the seed, the encoder and the cross-attention projections
run once per call, and the static cache matches the dynamic one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchformers.basicformer import BasicFormerForCausalLM, BasicFormerForSeq2SeqLM
from scratchformers.core_attention.testing import (
    assert_batch_equals_each_prompt,
    assert_cache_changes_nothing,
    assert_static_cache_matches_dynamic,
)

NEW = 8
GREEDY = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False}
GENERATIVE = (BasicFormerForCausalLM, BasicFormerForSeq2SeqLM)


def new_tokens(model: torch.nn.Module, output: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """The generated part: after the prompt (causal) or after the decoder start token (seq2seq)."""
    start = 1 if model.config.is_encoder_decoder else prompt_width
    return output[:, start:]


@pytest.mark.parametrize("model_class", GENERATIVE)
def test_cache_changes_nothing(
    make_model: Callable, padded_batch, model_class: type, position_type: str
) -> None:
    model = make_model(model_class, position_embedding_type=position_type)
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    assert_cache_changes_nothing(model, input_ids, attention_mask, **GREEDY)


def test_causal_greedy_tokens_are_the_argmax_of_a_full_forward(
    make_model: Callable, padded_batch, position_type: str
) -> None:
    model = make_model(BasicFormerForCausalLM, position_embedding_type=position_type)
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    output = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    assert torch.equal(output[:, :7], input_ids)
    full_mask = torch.cat([attention_mask, torch.ones(3, NEW, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(output, attention_mask=full_mask, use_cache=False).logits
    predicted = logits[:, 6:-1].argmax(-1)
    assert torch.equal(predicted, output[:, 7:])
    # Untrained but not degenerate: the rows generate different tokens.
    assert not torch.equal(output[0, 7:], output[1, 7:])


def test_seq2seq_greedy_tokens_are_the_argmax_of_a_full_forward(
    make_model: Callable, padded_batch, position_type: str
) -> None:
    model = make_model(BasicFormerForSeq2SeqLM, position_embedding_type=position_type)
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    output = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    assert bool((output[:, 0] == model.config.decoder_start_token_id).all())
    with torch.no_grad():
        logits = model(
            input_ids, attention_mask, decoder_input_ids=output[:, :-1], use_cache=False
        ).logits
    assert torch.equal(logits.argmax(-1), output[:, 1:])


def test_decoder_start_token_is_used(make_model: Callable) -> None:
    model = make_model(BasicFormerForSeq2SeqLM, decoder_start_token_id=3)
    output = model.generate(torch.tensor([[11, 27, 35]]), **GREEDY)
    assert output[0, 0] == 3


@pytest.mark.parametrize("model_class", GENERATIVE)
def test_left_padded_batch_equals_each_prompt_alone(
    make_model: Callable, padded_batch, model_class: type, position_type: str
) -> None:
    """Causal: left-padded prompts; seq2seq: left-padded sources."""
    model = make_model(model_class, position_embedding_type=position_type)
    input_ids, attention_mask, rows = padded_batch((7, 4, 2))
    assert_batch_equals_each_prompt(model, input_ids, attention_mask, rows, **GREEDY)


@pytest.mark.parametrize("model_class", GENERATIVE)
def test_generate_twice_gives_the_same_output(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    model = make_model(model_class, position_embedding_type="rotary")
    input_ids, attention_mask, _ = padded_batch((5, 3))
    first = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    second = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    assert torch.equal(first, second)


def sequence_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sequences: torch.Tensor,
) -> torch.Tensor:
    """Sum of log p(token) over the generated tokens of each sequence, by one full forward."""
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            logits = model(
                input_ids, attention_mask, decoder_input_ids=sequences[:, :-1], use_cache=False
            ).logits
            targets = sequences[:, 1:]
        else:
            width = input_ids.shape[1]
            mask = torch.cat([attention_mask, torch.ones_like(sequences[:, width:])], dim=1)
            logits = model(sequences, attention_mask=mask, use_cache=False).logits[
                :, width - 1 : -1
            ]
            targets = sequences[:, width:]
    return logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].sum(-1)


@pytest.mark.parametrize("model_class", GENERATIVE)
def test_beam_search(make_model: Callable, padded_batch, model_class: type) -> None:
    model = make_model(model_class, position_embedding_type="learned")
    input_ids, attention_mask, _ = padded_batch((6, 3))
    beams = {
        "max_new_tokens": 5,
        "min_new_tokens": 5,
        "num_beams": 3,
        "num_return_sequences": 3,
        "length_penalty": 0.0,
        "do_sample": False,
        "return_dict_in_generate": True,
        "output_scores": True,
    }
    output = model.generate(input_ids, attention_mask=attention_mask, **beams)
    again = model.generate(input_ids, attention_mask=attention_mask, **beams)
    assert torch.equal(output.sequences, again.sequences)
    assert output.sequences.shape[0] == 2 * 3

    # With length_penalty=0 a beam's score is the plain sum of its tokens' log-probabilities,
    # and the beams come best first.
    expanded_ids = input_ids.repeat_interleave(3, dim=0)
    expanded_mask = attention_mask.repeat_interleave(3, dim=0)
    log_probs = sequence_log_probs(model, expanded_ids, expanded_mask, output.sequences)
    torch.testing.assert_close(output.sequences_scores, log_probs, atol=1e-4, rtol=1e-4)
    scores = output.sequences_scores.view(2, 3)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert len({tuple(s.tolist()) for s in output.sequences[:3]}) == 3

    # The best beam is at least as likely as the greedy sequence.
    greedy = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=5, min_new_tokens=5
    )
    greedy_log_probs = sequence_log_probs(model, input_ids, attention_mask, greedy)
    assert bool((scores[:, 0] >= greedy_log_probs - 1e-4).all())

    # One beam is greedy decoding.
    one_beam = model.generate(
        input_ids, attention_mask=attention_mask, num_beams=1, max_new_tokens=5, min_new_tokens=5
    )
    assert torch.equal(one_beam, greedy)


@pytest.mark.parametrize("model_class", GENERATIVE)
def test_seeded_sampling_is_reproducible(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    model = make_model(model_class, position_embedding_type="rotary")
    input_ids, attention_mask, _ = padded_batch((6, 3))
    sampling = {"do_sample": True, "max_new_tokens": NEW, "min_new_tokens": NEW, "top_k": 0}

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return model.generate(input_ids, attention_mask=attention_mask, **sampling)

    first, again, other = sample(3), sample(3), sample(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    greedy = model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    assert not torch.equal(first, greedy)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_encoder_and_cross_projections_run_once_per_generate(
    make_model: Callable, padded_batch, num_beams: int
) -> None:
    model = make_model(BasicFormerForSeq2SeqLM)
    input_ids, attention_mask, _ = padded_batch((6, 3))
    calls: dict[str, int] = {}

    def count(name: str) -> Callable:
        def hook(*_: object) -> None:
            calls[name] = calls.get(name, 0) + 1

        return hook

    model.model.encoder.register_forward_hook(count("encoder"))
    for i, layer in enumerate(model.model.decoder.layers):
        layer.cross_attn.k_proj.register_forward_hook(count(f"k{i}"))
        layer.cross_attn.v_proj.register_forward_hook(count(f"v{i}"))
        layer.self_attn.k_proj.register_forward_hook(count(f"self{i}"))
    for call in (1, 2):
        model.generate(input_ids, attention_mask=attention_mask, num_beams=num_beams, **GREEDY)
        assert calls["encoder"] == call
        for i in range(2):
            assert calls[f"k{i}"] == calls[f"v{i}"] == call
            # Self attention, by contrast, runs at every one of the NEW steps.
            assert calls[f"self{i}"] == call * NEW


@pytest.mark.parametrize("model_class", GENERATIVE)
def test_static_cache_matches_dynamic_cache(
    make_model: Callable, padded_batch, model_class: type, position_type: str
) -> None:
    model = make_model(model_class, position_embedding_type=position_type)
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    assert_static_cache_matches_dynamic(model, input_ids, attention_mask, **GREEDY)


def test_learned_positions_refuse_to_run_past_the_table(make_model: Callable) -> None:
    model = make_model(
        BasicFormerForCausalLM, position_embedding_type="learned", max_position_embeddings=10
    )
    prompt = torch.tensor([[11, 27, 35, 48, 59, 60]])
    # The last token is only predicted, never read: 11 tokens need positions 0..9.
    output = model.generate(prompt, max_new_tokens=5, min_new_tokens=5)
    assert output.shape == (1, 11)
    with pytest.raises(ValueError, match="max_position_embeddings=10"):
        model.generate(prompt, max_new_tokens=6, min_new_tokens=6)
