"""The models' forward pass: the three modes of BasicFormerModel, losses computed the
transformers way, attentions and hidden states, padding, grouped-query attention, activation
checkpointing, norm placement and activation choice."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqModelOutput

from scratchformers.basicformer import (
    BasicFormerConfig,
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
    BasicFormerModel,
)
from scratchformers.core_attention.testing import (
    assert_empty_inputs_raise,
    assert_input_errors,
    assert_label_errors,
    assert_padding_changes_nothing,
)

TASK_MODELS = (BasicFormerForMaskedLM, BasicFormerForCausalLM, BasicFormerForSeq2SeqLM)
# A padded row and the row alone go through matmuls of different shapes, whose float32 sums
# round differently: up to about 1e-5 on logits near 5 (a real padding leak is of order 1).
ATOL = 5e-5


def task_inputs(
    model_class: type, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Inputs for one forward of a task model; seq2seq gets a fixed, unpadded decoder input."""
    inputs = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
    if model_class is BasicFormerForSeq2SeqLM:
        decoder = torch.tensor([[1, 17, 42, 9, 63]]).expand(input_ids.shape[0], -1)
        inputs["decoder_input_ids"] = decoder
    return inputs


# --- the three modes of BasicFormerModel ------------------------------------------------------


def test_encoder_is_bidirectional(make_model: Callable, position_type: str) -> None:
    model = make_model(BasicFormerModel, position_embedding_type=position_type)
    assert model.encoder is not None and model.decoder is None
    ids = torch.tensor([[11, 27, 35, 48, 59, 60]])
    changed = ids.clone()
    changed[0, -1] = 99
    with torch.no_grad():
        output = model(ids)
        changed_output = model(changed)
    assert isinstance(output, BaseModelOutput)
    assert output.last_hidden_state.shape == (1, 6, 48)
    # Every earlier position sees the last token.
    difference = (output.last_hidden_state - changed_output.last_hidden_state).abs().amax(-1)
    assert bool((difference[0, :-1] > 1e-4).all()), difference


def test_decoder_is_causal(make_model: Callable, position_type: str) -> None:
    model = make_model(BasicFormerModel, is_decoder=True, position_embedding_type=position_type)
    assert model.encoder is None and model.decoder is not None
    ids = torch.tensor([[11, 27, 35, 48, 59, 60]])
    changed = ids.clone()
    changed[0, -1] = 99
    with torch.no_grad():
        output = model(ids, use_cache=False).last_hidden_state
        changed_output = model(changed, use_cache=False).last_hidden_state
    torch.testing.assert_close(output[:, :-1], changed_output[:, :-1], atol=1e-6, rtol=0)
    assert (output[:, -1] - changed_output[:, -1]).abs().max() > 1e-4


def test_decoder_returns_a_cache_that_continues_the_sequence(make_model: Callable) -> None:
    model = make_model(BasicFormerModel, is_decoder=True, position_embedding_type="rotary")
    ids = torch.tensor([[11, 27, 35, 48, 59, 60]])
    with torch.no_grad():
        full = model(ids).last_hidden_state
        first = model(ids[:, :4])
        assert isinstance(first.cache, DynamicCache)
        assert first.cache.get_seq_length() == 4
        rest = model(ids[:, 4:], cache=first.cache).last_hidden_state
    torch.testing.assert_close(rest, full[:, 4:], atol=ATOL, rtol=0)


def test_decoder_with_cross_attention_needs_and_uses_encoder_states(
    make_model: Callable,
) -> None:
    model = make_model(BasicFormerModel, is_decoder=True, add_cross_attention=True)
    assert model.decoder.cross_attention
    ids = torch.tensor([[11, 27, 35, 48], [5, 6, 7, 8]])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(ids)

    encoder_states = torch.randn(2, 5, 48)
    other_states = encoder_states.clone()
    other_states[:, 2] += 1.0
    with torch.no_grad():
        output = model(ids, encoder_hidden_states=encoder_states, use_cache=False)
        other = model(ids, encoder_hidden_states=other_states, use_cache=False)
        # Hiding encoder positions 3 and 4 equals leaving them out.
        hidden = model(
            ids,
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]),
            use_cache=False,
        )
        shorter = model(ids, encoder_hidden_states=encoder_states[:, :3], use_cache=False)
    assert (output.last_hidden_state - other.last_hidden_state).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(
        hidden.last_hidden_state, shorter.last_hidden_state, atol=ATOL, rtol=0
    )
    assert (hidden.last_hidden_state - output.last_hidden_state).abs().max() > 1e-4


def test_encoder_decoder_returns_seq2seq_output(make_model: Callable, padded_batch) -> None:
    model = make_model(BasicFormerModel, is_encoder_decoder=True, position_embedding_type="learned")
    input_ids, attention_mask, _ = padded_batch((6, 3))
    decoder_input_ids = torch.tensor([[1, 20, 30], [1, 40, 50]])
    with torch.no_grad():
        output = model(
            input_ids, attention_mask, decoder_input_ids=decoder_input_ids, use_cache=True
        )
        encoder_alone = model.encoder(input_ids, attention_mask)
        decoder_alone = model.decoder(
            inputs_embeds=model.encoder.embed_tokens(decoder_input_ids),
            encoder_hidden_states=encoder_alone.last_hidden_state,
            encoder_attention_mask=attention_mask,
        )
        from_encoder_outputs = model(
            encoder_outputs=(encoder_alone.last_hidden_state,),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
    assert isinstance(output, Seq2SeqModelOutput)
    assert output.last_hidden_state.shape == (2, 3, 48)
    assert output.encoder_last_hidden_state.shape == (2, 6, 48)
    torch.testing.assert_close(
        output.encoder_last_hidden_state, encoder_alone.last_hidden_state, atol=0, rtol=0
    )
    torch.testing.assert_close(output.last_hidden_state, decoder_alone.last_hidden_state)
    torch.testing.assert_close(from_encoder_outputs.last_hidden_state, output.last_hidden_state)
    assert isinstance(output.cache, EncoderDecoderCache)
    assert output.cache.get_seq_length() == 3
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(input_ids, attention_mask)


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_bad_inputs_name_the_argument(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    input_ids, attention_mask, _ = padded_batch((5, 3))
    assert_input_errors(
        make_model(model_class), task_inputs(model_class, input_ids, attention_mask)
    )


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_empty_inputs_name_the_argument(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    input_ids, attention_mask, _ = padded_batch((5, 3))
    inputs = task_inputs(model_class, input_ids, attention_mask)
    assert_empty_inputs_raise(make_model(model_class), inputs)


@pytest.mark.parametrize("check", [assert_input_errors, assert_empty_inputs_raise])
def test_bad_decoder_inputs_name_the_argument(
    make_model: Callable, padded_batch, check: Callable
) -> None:
    input_ids, attention_mask, _ = padded_batch((5, 3))
    inputs = task_inputs(BasicFormerForSeq2SeqLM, input_ids, attention_mask)
    inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
    model = make_model(BasicFormerForSeq2SeqLM)
    if check is assert_input_errors:
        assert_input_errors(model, inputs, "decoder_input_ids", "decoder_attention_mask")
    else:
        assert_empty_inputs_raise(model, inputs, "decoder_input_ids", empty_batch=False)


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_bad_labels_name_the_value_or_shape_and_the_limit(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    """Causal and masked LM: labels shaped like input_ids; seq2seq: like decoder_input_ids."""
    input_ids, attention_mask, _ = padded_batch((5, 3))
    inputs = task_inputs(model_class, input_ids, attention_mask)
    tokens = inputs.get("decoder_input_ids", input_ids)
    inputs["labels"] = tokens.masked_fill(tokens == 0, -100)
    assert_label_errors(make_model(model_class), inputs)


def test_seq2seq_labels_are_named_before_they_become_decoder_inputs(make_model: Callable) -> None:
    """Without decoder_input_ids the decoder reads the labels shifted right: a bad id must be
    blamed on labels, not on the decoder_input_ids made from them."""
    model = make_model(BasicFormerForSeq2SeqLM)
    with pytest.raises(
        ValueError, match=r"^labels holds 101, outside 0 \.\. 100 \(vocab_size=101\)"
    ):
        model(torch.tensor([[5, 6, 7]]), labels=torch.tensor([[8, 101, 9]]))
    with pytest.raises(
        ValueError, match=r"the shape of decoder_inputs_embeds' \(batch, length\) \(1, 2\)"
    ):
        model(
            torch.tensor([[5, 6, 7]]),
            decoder_inputs_embeds=torch.zeros(1, 2, 48),
            labels=torch.tensor([[8, 9, 10]]),
        )


def test_inputs_embeds_equal_input_ids(make_model: Callable, position_type: str) -> None:
    model = make_model(BasicFormerForCausalLM, position_embedding_type=position_type)
    ids = torch.tensor([[11, 27, 35, 48, 59]])
    with torch.no_grad():
        from_ids = model(input_ids=ids).logits
        embeds = model.get_input_embeddings()(ids)
        from_embeds = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=ids, inputs_embeds=embeds)


# --- losses -----------------------------------------------------------------------------------


def test_causal_lm_loss_is_shifted_cross_entropy(make_model: Callable, padded_batch) -> None:
    model = make_model(BasicFormerForCausalLM)
    input_ids, attention_mask, _ = padded_batch((7, 5))
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[0, 4] = -100
    output = model(input_ids, attention_mask, labels=labels)
    logits = output.logits
    # Position t predicts token t + 1.
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, expected)
    # Hand-rolled: mean of -log p over the kept targets.
    log_probs = logits[:, :-1].log_softmax(-1)
    targets = labels[:, 1:]
    kept = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(output.loss, -(picked[kept]).sum() / kept.sum())
    # The unshifted loss is a different number: the shift really happens.
    unshifted = F.cross_entropy(logits.reshape(-1, 101), labels.reshape(-1), ignore_index=-100)
    assert abs(float(output.loss.detach()) - float(unshifted.detach())) > 1e-3


def test_masked_lm_loss_is_unshifted_cross_entropy(make_model: Callable, padded_batch) -> None:
    model = make_model(BasicFormerForMaskedLM)
    input_ids, attention_mask, _ = padded_batch((7, 5))
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[0, 5], labels[1, 4] = 33, 71, 90
    masked = input_ids.clone()
    masked[labels != -100] = 4
    output = model(masked, attention_mask, labels=labels)
    kept = labels != -100
    expected = F.cross_entropy(output.logits[kept], labels[kept])
    torch.testing.assert_close(output.loss, expected)
    manual = -output.logits.log_softmax(-1)[kept].gather(-1, labels[kept][:, None]).mean()
    torch.testing.assert_close(output.loss, manual)


def test_seq2seq_loss_and_teacher_forcing(make_model: Callable, padded_batch) -> None:
    model = make_model(BasicFormerForSeq2SeqLM, decoder_start_token_id=3)
    input_ids, attention_mask, _ = padded_batch((6, 4))
    labels = torch.tensor([[21, 22, 23, 2, -100], [31, 32, 33, 34, 2]])
    output = model(input_ids, attention_mask, labels=labels)
    kept = labels != -100
    expected = F.cross_entropy(output.logits[kept], labels[kept])
    torch.testing.assert_close(output.loss, expected)

    # The decoder read the labels shifted right behind decoder_start_token_id=3, -100 -> pad.
    shifted = torch.tensor([[3, 21, 22, 23, 2], [3, 31, 32, 33, 34]])
    explicit = model(input_ids, attention_mask, decoder_input_ids=shifted, labels=labels)
    torch.testing.assert_close(output.logits, explicit.logits, atol=0, rtol=0)
    torch.testing.assert_close(output.loss, explicit.loss, atol=0, rtol=0)
    # A different start token gives different logits: the start token is really used.
    other_start = shifted.clone()
    other_start[:, 0] = 1
    other = model(input_ids, attention_mask, decoder_input_ids=other_start).logits
    assert (other - output.logits).abs().max() > 1e-4

    # An ignored label inside the sequence is read back as padding.
    labels_with_hole = torch.tensor([[21, -100, 23, 2, 5]])
    with_hole = model(input_ids[:1], attention_mask[:1], labels=labels_with_hole).logits
    as_pad = model(
        input_ids[:1], attention_mask[:1], decoder_input_ids=torch.tensor([[3, 21, 0, 23, 2]])
    ).logits
    torch.testing.assert_close(with_hole, as_pad, atol=0, rtol=0)


# --- attentions and hidden states -------------------------------------------------------------


def eager(model: torch.nn.Module) -> torch.nn.Module:
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    return model


@pytest.mark.parametrize("model_class", [BasicFormerForMaskedLM, BasicFormerForCausalLM])
def test_attentions_and_hidden_states(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    model = eager(make_model(model_class, position_embedding_type="learned"))
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    with torch.no_grad():
        output = model(input_ids, attention_mask, output_attentions=True, output_hidden_states=True)
    stack = model.model.encoder or model.model.decoder
    hidden_states, attentions = output.hidden_states, output.attentions
    assert len(hidden_states) == 2 + 1
    assert len(attentions) == 2
    assert all(h.shape == (3, 7, 48) for h in hidden_states)
    assert all(a.shape == (3, 3, 7, 7) for a in attentions)

    # The first hidden state is the embedding: token plus position (counted from the first
    # real token); the last is the final-normed output the LM head reads.
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    embedding = stack.embed_tokens(input_ids) + stack.embed_positions.weight[positions]
    torch.testing.assert_close(hidden_states[0], embedding)
    torch.testing.assert_close(model.lm_head(hidden_states[-1]), output.logits)

    real = attention_mask.bool()
    for probabilities in attentions:
        sums = probabilities.sum(-1)  # (batch, heads, queries)
        row_is_real = real[:, None, :].expand_as(sums)
        torch.testing.assert_close(sums[row_is_real], torch.ones_like(sums[row_is_real]))
        # Nobody attends to padding.
        assert probabilities.masked_select(~real[:, None, None, :]).abs().max() == 0
        if model_class is BasicFormerForCausalLM:
            future = torch.ones(7, 7, dtype=torch.bool).triu(1)
            assert probabilities[..., future].abs().max() == 0
        else:
            # Bidirectional: a real query puts weight on keys after it.
            assert probabilities[0, :, 0, 1:].sum() > 0.1


def test_eager_probabilities_match_hand_computed_scores(make_model: Callable) -> None:
    """Layer 0 of a pre-norm encoder without positions: softmax(q k^T / sqrt(d)) over one
    shared key head (grouped-query attention), padding hidden."""
    model = eager(make_model(BasicFormerForMaskedLM, position_embedding_type="none"))
    ids = torch.tensor([[0, 0, 12, 34, 56], [7, 8, 9, 10, 11]])
    mask = (ids != 0).long()
    with torch.no_grad():
        output = model(ids, mask, output_attentions=True, output_hidden_states=True)
        layer = model.model.encoder.layers[0]
        x = layer.self_attn_norm(output.hidden_states[0])
        query = layer.self_attn.q_proj(x).view(2, 5, 3, 16).transpose(1, 2)
        key = layer.self_attn.k_proj(x).view(2, 5, 1, 16).transpose(1, 2)
        scores = query @ key.transpose(-1, -2) / 4.0
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        expected = scores.softmax(-1)
    real = mask.bool()[:, None, :, None].expand_as(expected)
    torch.testing.assert_close(output.attentions[0][real], expected[real])


def test_seq2seq_attentions_and_hidden_states(make_model: Callable, padded_batch) -> None:
    model = eager(make_model(BasicFormerForSeq2SeqLM, position_embedding_type="sinusoidal"))
    input_ids, attention_mask, _ = padded_batch((6, 3))
    decoder_input_ids = torch.tensor([[1, 20, 30, 40], [1, 50, 60, 70]])
    with torch.no_grad():
        output = model(
            input_ids,
            attention_mask,
            decoder_input_ids=decoder_input_ids,
            output_attentions=True,
            output_hidden_states=True,
        )
    assert len(output.encoder_hidden_states) == len(output.decoder_hidden_states) == 3
    assert all(h.shape == (2, 6, 48) for h in output.encoder_hidden_states)
    assert all(h.shape == (2, 4, 48) for h in output.decoder_hidden_states)
    torch.testing.assert_close(output.encoder_hidden_states[-1], output.encoder_last_hidden_state)
    assert len(output.encoder_attentions) == len(output.decoder_attentions) == 2
    assert len(output.cross_attentions) == 2
    assert all(a.shape == (2, 3, 6, 6) for a in output.encoder_attentions)
    assert all(a.shape == (2, 3, 4, 4) for a in output.decoder_attentions)
    assert all(a.shape == (2, 3, 4, 6) for a in output.cross_attentions)
    source_padding = ~attention_mask.bool()[:, None, None, :]
    for cross in output.cross_attentions:
        torch.testing.assert_close(cross.sum(-1), torch.ones(2, 3, 4))
        assert cross.masked_select(source_padding).abs().max() == 0
    for self_attention in output.decoder_attentions:
        torch.testing.assert_close(self_attention.sum(-1), torch.ones(2, 3, 4))
        assert self_attention[..., torch.ones(4, 4, dtype=torch.bool).triu(1)].abs().max() == 0


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_output_attentions_with_sdpa_raises(make_model: Callable, model_class: type) -> None:
    model = make_model(model_class)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[11, 27, 35]])
    with pytest.raises(ValueError, match="eager"):
        model(**task_inputs(model_class, ids), output_attentions=True)
    # Hidden states need no particular backend.
    output = model(**task_inputs(model_class, ids), output_hidden_states=True)
    states = getattr(output, "hidden_states", None) or output.decoder_hidden_states
    assert len(states) == 3


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_eager_and_sdpa_agree(
    make_model: Callable, padded_batch, model_class: type, position_type: str
) -> None:
    model = make_model(model_class, position_embedding_type=position_type)
    input_ids, attention_mask, _ = padded_batch((7, 4, 2))
    inputs = task_inputs(model_class, input_ids, attention_mask)
    with torch.no_grad():
        sdpa = model(**inputs).logits
        eager_logits = eager(model)(**inputs).logits
    real = attention_mask.bool() if model_class is not BasicFormerForSeq2SeqLM else None
    if real is not None:
        sdpa, eager_logits = sdpa[real], eager_logits[real]
    torch.testing.assert_close(eager_logits, sdpa, atol=ATOL, rtol=0)


def test_from_pretrained_style_eager_config(make_config: Callable) -> None:
    config = make_config()
    config._attn_implementation = "eager"
    model = BasicFormerForCausalLM(config).eval()
    output = model(torch.tensor([[11, 27, 35]]), output_attentions=True)
    assert output.attentions[0].shape == (1, 3, 3, 3)


# --- padding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_left_padding_gives_the_logits_of_each_row_alone(
    make_model: Callable, padded_batch, model_class: type, position_type: str
) -> None:
    """Seq2seq: decoder positions are unpadded; the padded source must not matter."""
    model = make_model(model_class, position_embedding_type=position_type)
    input_ids, attention_mask, rows = padded_batch((7, 4, 2))
    extra = task_inputs(model_class, input_ids)
    del extra["input_ids"]
    assert_padding_changes_nothing(model, input_ids, attention_mask, rows, atol=ATOL, **extra)


@given(lengths=st.lists(st.integers(1, 6), min_size=2, max_size=3))
def test_right_padding_masked_lm(make_model: Callable, padded_batch, lengths: list[int]) -> None:
    """An encoder does not care which side the padding is on."""
    model = make_model(BasicFormerForMaskedLM, position_embedding_type="learned")
    left_ids, left_mask, rows = padded_batch(tuple(lengths), seed=sum(lengths))
    width = left_ids.shape[1]
    right_ids = torch.zeros_like(left_ids)
    right_mask = torch.zeros_like(left_mask)
    for i, row in enumerate(rows):
        right_ids[i, : len(row)] = row
        right_mask[i, : len(row)] = 1
    with torch.no_grad():
        left = model(left_ids, left_mask).logits
        right = model(right_ids, right_mask).logits
    for i, row in enumerate(rows):
        torch.testing.assert_close(
            left[i, width - len(row) :], right[i, : len(row)], atol=ATOL, rtol=0
        )


# --- grouped-query attention ------------------------------------------------------------------


@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_one_kv_head_equals_three_identical_kv_heads(
    make_model: Callable, padded_batch, model_class: type
) -> None:
    gqa = make_model(model_class, num_key_value_heads=1, position_embedding_type="rotary")
    mha = make_model(model_class, num_key_value_heads=3, position_embedding_type="rotary")
    state = {}
    for name, tensor in gqa.state_dict().items():
        if ".k_proj." in name or ".v_proj." in name:
            assert tensor.shape[0] == 16
            tensor = tensor.repeat(3, *([1] * (tensor.dim() - 1)))
        state[name] = tensor
    mha.load_state_dict(state)
    input_ids, attention_mask, _ = padded_batch((5, 3))
    inputs = task_inputs(model_class, input_ids, attention_mask)
    with torch.no_grad():
        torch.testing.assert_close(gqa(**inputs).logits, mha(**inputs).logits, atol=ATOL, rtol=0)


# --- training: activation checkpointing, norms, activations -----------------------------------


def training_inputs(model_class: type) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[0, 0, 12, 34, 56, 78], [7, 8, 9, 10, 11, 13]])
    mask = (ids != 0).long()
    if model_class is BasicFormerForSeq2SeqLM:
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([[5, 6, 7, 2]] * 2),
        }
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize(
    "entry_point", ["activation_checkpointing_enable", "gradient_checkpointing_enable"]
)
@pytest.mark.parametrize("model_class", TASK_MODELS)
def test_checkpointing_gives_the_same_loss_and_gradients(
    make_model: Callable, model_class: type, entry_point: str
) -> None:
    plain = make_model(model_class, position_embedding_type="rotary").train()
    checkpointed = make_model(model_class, position_embedding_type="rotary").train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated alias warns
        getattr(checkpointed, entry_point)()
    inputs = training_inputs(model_class)

    calls: list[str] = []

    def count(name: str) -> Callable:
        return lambda *_: calls.append(name)

    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        stack = model.model.decoder or model.model.encoder
        stack.layers[0].self_attn.register_forward_hook(count(name))
        loss = model(**inputs).loss
        loss.backward()

    torch.testing.assert_close(checkpointed(**inputs).loss, plain(**inputs).loss)
    for (name, p), (_, q) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        assert p.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    # The checkpointed layer ran its attention twice: forward, and recomputed in backward.
    assert calls.count("plain") == 2  # the training pass plus the loss comparison
    assert calls.count("checkpointed") == 3


def test_pre_and_post_norm_differ_and_both_train(make_model: Callable) -> None:
    pre = make_model(BasicFormerForCausalLM, norm_position="pre", initializer_range=0.02)
    post = make_model(BasicFormerForCausalLM, norm_position="post", initializer_range=0.02)
    assert pre.model.decoder.final_norm is not None and post.model.decoder.final_norm is None
    missing, unexpected = post.load_state_dict(pre.state_dict(), strict=False)
    assert missing == []
    assert sorted(unexpected) == [
        "model.decoder.final_norm.bias",
        "model.decoder.final_norm.weight",
    ]
    inputs = training_inputs(BasicFormerForCausalLM)
    with torch.no_grad():
        assert (pre(**inputs).logits - post(**inputs).logits).abs().max() > 1e-3

    for model in (pre, post):
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(20):
            optimizer.zero_grad()
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_activation_choice_changes_the_output(make_model: Callable, norm_position: str) -> None:
    gelu = make_model(BasicFormerForMaskedLM, hidden_act="gelu", norm_position=norm_position)
    relu = make_model(BasicFormerForMaskedLM, hidden_act="relu", norm_position=norm_position)
    relu.load_state_dict(gelu.state_dict())
    ids = torch.tensor([[11, 27, 35, 48]])
    with torch.no_grad():
        assert (gelu(ids).logits - relu(ids).logits).abs().max() > 1e-3
        x = torch.randn(2, 5, 48)
        mlp = relu.model.encoder.layers[0].mlp
        torch.testing.assert_close(mlp(x), mlp.down_proj(torch.relu(mlp.up_proj(x))))
        mlp = gelu.model.encoder.layers[0].mlp
        torch.testing.assert_close(mlp(x), mlp.down_proj(F.gelu(mlp.up_proj(x))))


def test_post_norm_normalises_the_output(make_model: Callable) -> None:
    """Post-norm ends each layer with a LayerNorm (weight 1, bias 0 at init): every output
    vector has mean 0 and variance 1."""
    model = make_model(BasicFormerModel, norm_position="post")
    with torch.no_grad():
        output = model(torch.tensor([[11, 27, 35, 48]])).last_hidden_state
    torch.testing.assert_close(output.mean(-1), torch.zeros(1, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(output.var(-1, unbiased=False), torch.ones(1, 4), atol=1e-3, rtol=0)


def test_config_is_checked_by_the_bare_model(make_config: Callable) -> None:
    config: BasicFormerConfig = make_config()
    config.norm_position = "middle"  # bypasses __post_init__
    with pytest.raises(ValueError, match="norm_position"):
        BasicFormerModel(config)
