"""from_pretrained reads directories written by transformers' BartModel,
BartForConditionalGeneration, MarianModel and MarianMTModel (and a hub id, offline), with the
outputs of the class that wrote them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from scratchformers.core_attention.testing import assert_close_on_real_tokens, lay_out_hub_cache
from scratchformers.encdec import EncDecConfig, EncDecForConditionalGeneration, EncDecModel

TOLERANCE = 1e-4


def test_a_bare_model_directory_loads_into_both_classes(
    reference, batch: Callable, tmp_path: Path
) -> None:
    bare = reference.model.model  # BartModel / MarianModel, with the re-drawn weights
    bare.save_pretrained(tmp_path / "bare")
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["architectures"][0] in (
        "BartModel",
        "MarianModel",
    )
    inputs = batch(reference.pad, target_lengths=None)
    inputs["decoder_input_ids"] = torch.randint(4, 113, (3, 6))
    ours = EncDecModel.from_pretrained(tmp_path / "bare").eval()
    assert isinstance(ours.config, EncDecConfig)
    with torch.no_grad():
        expected = bare(**inputs).last_hidden_state
        assert_close_on_real_tokens(ours(**inputs).last_hidden_state, expected, atol=TOLERANCE)
        # The head is the tied embedding; a bare model has no output bias, so it starts at zero.
        head = EncDecForConditionalGeneration.from_pretrained(tmp_path / "bare").eval()
        assert not head.final_logits_bias.any()
        assert head.lm_head.weight is head.model.encoder.embed_tokens.weight
        logits = expected @ bare.shared.weight.T
        assert_close_on_real_tokens(head(**inputs).logits, logits, atol=TOLERANCE)


def test_the_family_fixes_our_architecture_options(reference) -> None:
    config = EncDecForConditionalGeneration.from_pretrained(reference.directory).config
    if reference.family == "bart":
        assert (config.position_embedding_type, config.position_offset) == ("learned", 2)
        assert config.layernorm_embedding and not config.scale_embedding
    else:
        assert config.position_embedding_type == "sinusoidal" and not config.layernorm_embedding
        assert config.scale_embedding and config.activation_function == "swish"
        assert config.decoder_start_token_id == config.pad_token_id == 3
    assert config.norm_position == "post" and config.model_type == "scratchformers-encdec"


def test_an_old_marian_save_with_tied_copies_and_sinusoid_tables_loads(
    make_reference_model: Callable, batch: Callable, tmp_path: Path
) -> None:
    # Hub opus-mt files hold shared, encoder and decoder embed_tokens and the sinusoid tables.
    reference = make_reference_model("marian", tmp_path / "new")
    state = {k: v.detach().clone().contiguous() for k, v in reference.model.state_dict().items()}
    assert {
        "model.decoder.embed_tokens.weight",
        "model.encoder.embed_positions.weight",
    } <= state.keys()
    old = tmp_path / "old"
    old.mkdir()
    save_file(state, old / "model.safetensors", metadata={"format": "pt"})
    (old / "config.json").write_text((reference.directory / "config.json").read_text())
    model, info = EncDecForConditionalGeneration.from_pretrained(old, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs = batch(reference.pad)
    with torch.no_grad():
        assert_close_on_real_tokens(
            model.eval()(**inputs).logits, reference.model(**inputs).logits, atol=TOLERANCE
        )


def test_a_hub_id_loads_offline_through_the_same_path(
    make_reference_model: Callable, batch: Callable, tmp_path: Path
) -> None:
    reference = make_reference_model("marian", tmp_path / "opus")
    cache = tmp_path / "hub"
    lay_out_hub_cache(
        cache, "Helsinki-NLP/opus-mt-xx-yy", {"a" * 40: reference.directory}, "a" * 40
    )
    model = EncDecForConditionalGeneration.from_pretrained(
        "Helsinki-NLP/opus-mt-xx-yy", cache_dir=cache, local_files_only=True
    ).eval()
    inputs = batch(reference.pad)
    with torch.no_grad():
        assert_close_on_real_tokens(
            model(**inputs).logits, reference.model(**inputs).logits, atol=TOLERANCE
        )
    assert torch.equal(
        model.generate(**inputs, max_new_tokens=6),
        reference.model.generate(**inputs, max_new_tokens=6),
    )


SMALL = {
    "vocab_size": 50,
    "d_model": 12,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 8,
    "decoder_ffn_dim": 8,
    "pad_token_id": 3,
    "decoder_start_token_id": 3,
}


@pytest.mark.parametrize(
    ("family", "options", "named"),
    [
        (
            "marian",
            {"decoder_vocab_size": 40, "share_encoder_decoder_embeddings": False},
            "share_encoder_decoder_embeddings=False",
        ),
        ("bart", {"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ],
)
def test_checkpoints_with_separate_embeddings_are_refused(
    tmp_path: Path, family: str, options: dict, named: str
) -> None:
    config_class, model_class = {
        "marian": (transformers.MarianConfig, transformers.MarianMTModel),
        "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration),
    }[family]
    model_class(config_class(**SMALL, **options)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=named):
        EncDecForConditionalGeneration.from_pretrained(tmp_path)
