"""Same weights as transformers' CLIPModel, same numbers: embeddings, logits, loss, hidden
states, attentions and gradients, on right-padded texts of unequal length, in both directions
of the checkpoint conversion."""

from __future__ import annotations

import pytest
import torch
import transformers

import scratchformers.clip as ours


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_forward_matches_transformers(
    make_pair, texts, images, assert_matches, attn_implementation
):
    theirs, model, _ = make_pair(attn_implementation=attn_implementation)
    inputs = {**texts(), "pixel_values": images()}
    with torch.no_grad():
        expected = theirs(**inputs, return_loss=True)
        actual = model(**inputs, return_loss=True)
    for name in ("text_embeds", "image_embeds", "logits_per_image", "logits_per_text"):
        assert_matches(actual[name], expected[name], what=name)
    assert abs(float(actual.loss) - float(expected.loss)) <= 1e-4
    # Each text's final states agree on its real tokens (padding is read by neither).
    mask = inputs["attention_mask"].bool()
    assert_matches(
        actual.text_model_output.last_hidden_state[mask],
        expected.text_model_output.last_hidden_state[mask],
        what="text hidden state",
    )
    assert_matches(
        actual.vision_model_output.last_hidden_state,
        expected.vision_model_output.last_hidden_state,
        what="image hidden state",
    )


def test_features_hidden_states_and_attentions_match(make_pair, texts, images, assert_matches):
    theirs, model, _ = make_pair(attn_implementation="eager")
    batch = texts()
    with torch.no_grad():
        expected = theirs.get_text_features(
            **batch, output_hidden_states=True, output_attentions=True
        )
        actual = model.get_text_features(**batch, output_hidden_states=True, output_attentions=True)
        assert_matches(actual.pooler_output, expected.pooler_output, what="text features")
        assert len(actual.hidden_states) == len(expected.hidden_states) == 3
        mask = batch["attention_mask"].bool()
        for ours_state, their_state in zip(
            actual.hidden_states, expected.hidden_states, strict=True
        ):
            assert_matches(ours_state[mask], their_state[mask], what="text hidden state")
        for ours_probs, their_probs in zip(actual.attentions, expected.attentions, strict=True):
            assert_matches(ours_probs, their_probs, what="attention")
            # causal: no token attends to a later one
            assert float(ours_probs.triu(diagonal=1).abs().max()) == 0.0

        pixel_values = images()
        expected = theirs.get_image_features(pixel_values, output_hidden_states=True)
        actual = model.get_image_features(pixel_values, output_hidden_states=True)
        assert_matches(actual.pooler_output, expected.pooler_output, what="image features")
        for ours_state, their_state in zip(
            actual.hidden_states, expected.hidden_states, strict=True
        ):
            assert_matches(ours_state, their_state, what="image hidden state")


def test_gradients_match(make_pair, texts, images, assert_matches):
    theirs, model, _ = make_pair()
    inputs = {**texts(), "pixel_values": images()}
    theirs(**inputs, return_loss=True).loss.backward()
    model(**inputs, return_loss=True).loss.backward()
    their_grads = {name: p.grad for name, p in theirs.named_parameters() if p.grad is not None}
    ours_named = dict(model.named_parameters())
    converted = ours.convert.CONVERTER.state_from_transformers(their_grads)
    assert converted.keys() == ours_named.keys()
    # Compared one by one without a spread check: the key biases' gradients are zero on both
    # sides (a softmax ignores a shift common to all keys), and the temperature is one number.
    largest = max(
        float((ours_named[name].grad - grad).abs().max()) for name, grad in converted.items()
    )
    assert largest <= 1e-4, largest
    assert_matches(
        model.text_model.embeddings.token_embedding.weight.grad,
        converted["text_model.embeddings.token_embedding.weight"],
        what="gradient",
    )


def test_interpolated_positions_match(make_pair, images, assert_matches):
    theirs, model, _ = make_pair()
    pixel_values = images(height=28)
    with torch.no_grad():
        expected = theirs.get_image_features(pixel_values, interpolate_pos_encoding=True)
        actual = model.get_image_features(pixel_values, interpolate_pos_encoding=True)
    assert_matches(actual.pooler_output, expected.pooler_output, what="interpolated image features")


def test_export_loads_in_transformers_with_the_same_outputs(
    make_pair, texts, images, tmp_path, assert_matches
):
    _, model, _ = make_pair(seed=3)
    ours.export_to_transformers(model, tmp_path)
    theirs, info = transformers.CLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert transformers.AutoConfig.from_pretrained(tmp_path).model_type == "clip"
    inputs = {**texts(), "pixel_values": images()}
    with torch.no_grad():
        expected = model(**inputs)
        actual = theirs.eval()(**inputs)
    assert_matches(actual.logits_per_image, expected.logits_per_image, what="exported logits")


def test_legacy_eos_token_id_reads_the_highest_token(make_pair, texts, assert_matches):
    # Configs written before transformers fixed eos_token_id say 2: the text is read at its
    # highest token id instead (the end-of-text token in OpenAI's vocabulary).
    theirs, model, _ = make_pair(text={"eos_token_id": 2})
    batch = texts()
    with torch.no_grad():
        expected = theirs.get_text_features(**batch).pooler_output
        actual = model.get_text_features(**batch).pooler_output
    assert_matches(actual, expected, what="text features")
