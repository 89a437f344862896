"""OpenAI's layout (the original CLIP code's and open_clip's): ``CLIPModel.from_openai`` reads
small open_clip models with random weights and matches ``encode_image``, ``encode_text`` and
the logits; ``export_to_openai`` writes weights open_clip loads back; files are read without
unpickling code."""

from __future__ import annotations

import pickle

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

import scratchformers.clip as ours

# The tiny shape of conftest, in open_clip's terms; heads are not width // 64 at these widths,
# so they are given to from_openai.
HEADS = {"text_config": {"num_attention_heads": 4}, "vision_config": {"num_attention_heads": 3}}


def to_context(input_ids: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower takes exactly context_length tokens: pad with 0 to 16."""
    return torch.nn.functional.pad(input_ids, (0, 16 - input_ids.shape[1]))


def open_clip_model(randomized, quick_gelu: bool = True, seed: int = 0) -> CLIP:
    model = CLIP(
        24,
        vision_cfg=CLIPVisionCfg(
            layers=2, width=48, head_width=16, mlp_ratio=1.25, patch_size=4, image_size=20
        ),
        text_cfg=CLIPTextCfg(
            context_length=16, vocab_size=99, width=40, heads=4, layers=2, mlp_ratio=1.3
        ),
        quick_gelu=quick_gelu,
    )
    return randomized(model, seed).eval()


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["openai-quick-gelu", "laion-gelu"])
def test_matches_open_clip(randomized, texts, images, assert_matches, quick_gelu):
    reference = open_clip_model(randomized, quick_gelu)
    model = ours.CLIPModel.from_openai(
        reference.state_dict(), hidden_act="quick_gelu" if quick_gelu else "gelu", **HEADS
    )
    assert not model.training
    batch, pixel_values = texts(), images()
    with torch.no_grad():
        expected_image = reference.encode_image(pixel_values)
        expected_text = reference.encode_text(to_context(batch["input_ids"]))
        image_features, text_features, scale = reference(
            pixel_values, to_context(batch["input_ids"])
        )
        expected_logits = scale * image_features @ text_features.T
        assert_matches(
            model.get_image_features(pixel_values).pooler_output,
            expected_image,
            what="open_clip image",
        )
        assert_matches(
            model.get_text_features(**batch).pooler_output, expected_text, what="open_clip text"
        )
        # open_clip reads no padding mask (the causal mask keeps the padding out of the
        # end-of-text token's view): ours without one agrees too.
        assert_matches(
            model.get_text_features(batch["input_ids"]).pooler_output,
            expected_text,
            what="open_clip text",
        )
        actual = model(**batch, pixel_values=pixel_values)
    assert_matches(actual.logits_per_image, expected_logits, what="open_clip logits")


def test_the_wrong_activation_gives_other_numbers(randomized, texts):
    # The file cannot tell quick_gelu from gelu: the keyword matters, so a test must show it.
    reference = open_clip_model(randomized, quick_gelu=False)
    model = ours.CLIPModel.from_openai(reference.state_dict(), hidden_act="quick_gelu", **HEADS)
    batch = texts()
    with torch.no_grad():
        difference = model.get_text_features(**batch).pooler_output - reference.encode_text(
            to_context(batch["input_ids"])
        )
    assert float(difference.abs().max()) > 1e-3


def test_shape_is_read_from_the_tensors(randomized):
    config = ours.CLIPModel.from_openai(open_clip_model(randomized).state_dict(), **HEADS).config
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.patch_size, vision.image_size) == (48, 4, 20)
    assert (vision.num_hidden_layers, vision.intermediate_size) == (2, 60)
    assert (text.vocab_size, text.hidden_size, text.max_position_embeddings) == (99, 40, 16)
    assert (text.num_hidden_layers, text.intermediate_size, text.eos_token_id) == (2, 52, 98)
    assert config.projection_dim == 24


def test_heads_that_width_cannot_give_are_asked_for(randomized):
    with pytest.raises(ValueError, match=r"width // 64.*num_attention_heads"):
        ours.CLIPModel.from_openai(open_clip_model(randomized).state_dict())


def test_files_training_checkpoints_and_round_trip(
    randomized, texts, images, tmp_path, assert_matches
):
    reference = open_clip_model(randomized)
    state = reference.state_dict()
    batch, pixel_values = texts(), images()
    with torch.no_grad():
        expected = reference.encode_text(to_context(batch["input_ids"]))

    save_file(
        {k: v.contiguous() for k, v in state.items()}, tmp_path / "open_clip_model.safetensors"
    )
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")  # open_clip's training checkpoint
    for name in ("open_clip_model.safetensors", "epoch_3.pt"):
        model = ours.CLIPModel.from_openai(tmp_path / name, **HEADS)
        with torch.no_grad():
            assert_matches(
                model.get_text_features(**batch).pooler_output, expected, what="open_clip text"
            )

    out = ours.export_to_openai(model, tmp_path / "exported.safetensors")
    back = open_clip_model(randomized, seed=9)
    from safetensors.torch import load_file

    back.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        assert_matches(
            back.encode_image(pixel_values), reference.encode_image(pixel_values), what="round trip"
        )


class _NotATensor:
    pass


def test_pickled_code_is_refused_and_unknown_weights_named(randomized, tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as handle:
        pickle.dump({"visual.proj": _NotATensor()}, handle)
    with pytest.raises(ValueError, match=r"weights_only=True.*torch\.jit\.load"):
        ours.CLIPModel.from_openai(path)
    with pytest.raises(FileNotFoundError, match="no CLIP checkpoint"):
        ours.CLIPModel.from_openai(tmp_path / "missing.safetensors")

    state = open_clip_model(randomized).state_dict()
    state["visual.attn_pool.query"] = torch.zeros(4, 48)
    with pytest.raises(ValueError, match=r"visual\.attn_pool\.query"):
        ours.CLIPModel.from_openai(state, **HEADS)
    with pytest.raises(ValueError, match="not an OpenAI-layout"):
        ours.CLIPModel.from_openai(
            {"text_model.embeddings.token_embedding.weight": torch.zeros(3, 4)}
        )
