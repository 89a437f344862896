"""``export_to_open_clip``: our CLIP with random weights, written as open_clip's Hub folder, is
built by ``open_clip.create_model("local-dir:...")`` with no other argument and gives our image
and text features within 1e-5, for texts of the clip recipe's caption tokenizer, whose
end-of-text token (3) is not its highest id: open_clip's default pooling (the highest id)
would read another token. What open_clip's CLIP cannot compute is refused before writing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

import scratchformers.clip as ours

CAPTIONS = [
    "a red circle on the left",
    "two blue squares",
    "a small green triangle above a large yellow star",
    "the cat",
]
CONTEXT = 16  # the tiny shape's positions


@pytest.fixture
def match_tolerance() -> float:
    return 1e-5


@pytest.fixture
def caption_tokenizer() -> PreTrainedTokenizerFast:
    """The clip recipe's tokenizer (<pad> 0, <unk> 1, <bos> 2, <eos> 3) of the captions."""
    return ours.train_caption_tokenizer(CAPTIONS, model_max_length=CONTEXT)


@pytest.fixture
def captions(caption_tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """The captions through the caption tokenizer, padded on the right to the longest."""
    tokenizer = caption_tokenizer
    batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    assert tokenizer.eos_token_id == 3 and int(batch["input_ids"].max()) > 3
    return dict(batch)


def test_open_clip_tokenizes_as_the_model_was_trained(
    caption_clip: Callable,
    caption_tokenizer: PreTrainedTokenizerFast,
    captions: dict,
    tmp_path: Path,
) -> None:
    """With the tokenizer given, ``open_clip.get_tokenizer("local-dir:...")`` is an
    HFTokenizer of the folder's files: open_clip alone tokenizes, embeds and pools."""
    model = caption_clip()
    out = ours.export_to_open_clip(model, tmp_path / "open_clip", tokenizer=caption_tokenizer)
    tokenize = open_clip.get_tokenizer(f"local-dir:{out}")
    ids = tokenize(CAPTIONS)
    assert ids.shape == (len(CAPTIONS), CONTEXT)
    assert torch.equal(ids, to_context(captions["input_ids"]))
    theirs = open_clip.create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        difference = theirs.encode_text(ids) - model.get_text_features(**captions).pooler_output
    assert float(difference.abs().max()) <= 1e-5


def to_context(input_ids: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower takes exactly context_length tokens: pad with <pad> (0)."""
    return torch.nn.functional.pad(input_ids, (0, CONTEXT - input_ids.shape[1]))


@pytest.fixture
def caption_clip(make_config: Callable, randomized: Callable) -> Callable[..., ours.CLIPModel]:
    """``caption_clip(text=..., vision=...)``: the tiny CLIP for the caption tokenizer's
    special ids, every weight re-drawn, in eval mode."""

    def make(text: dict | None = None, vision: dict | None = None) -> ours.CLIPModel:
        text = {"eos_token_id": 3, "bos_token_id": 2, "pad_token_id": 0, **(text or {})}
        return randomized(ours.CLIPModel(make_config(text=text, vision=vision))).eval()

    return make


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_open_clip_builds_the_export_with_our_features(
    caption_clip: Callable,
    captions: dict,
    images: Callable,
    assert_matches: Callable,
    activation: str,
    tmp_path: Path,
) -> None:
    # An odd MLP (51 units of a width of 21 in 3 heads: 51 / 21 does not give open_clip 51)
    # and a norm epsilon that is not open_clip's default.
    vision = {"hidden_act": activation, "layer_norm_eps": 1e-6}
    vision |= {"hidden_size": 21, "num_attention_heads": 3, "intermediate_size": 51}
    model = caption_clip(text={"hidden_act": activation}, vision=vision)
    out = ours.export_to_open_clip(model, tmp_path / "open_clip", image_mean=(0.1, 0.2, 0.3))
    assert sorted(path.name for path in out.iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    text_cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert (text_cfg["pool_type"], text_cfg["eos_id"]) == ("eos", 3)

    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert isinstance(theirs, CLIP)
    normalize = preprocess.transforms[-1]
    assert tuple(normalize.mean) == (0.1, 0.2, 0.3)
    pixels = images(batch=3)
    with torch.no_grad():
        assert_matches(
            theirs.eval().encode_image(pixels),
            model.get_image_features(pixel_values=pixels).pooler_output,
            what="open_clip export image",
        )
        assert_matches(
            theirs.encode_text(to_context(captions["input_ids"])),
            model.get_text_features(**captions).pooler_output,
            what="open_clip export text",
        )


def test_plain_open_clip_needs_the_eos_pooling(
    caption_clip: Callable, captions: dict, tmp_path: Path
) -> None:
    """What the README tells users of ``open_clip.model.CLIP`` itself: its default pooling
    reads the highest id, not <eos>; ``pool_type="eos", eos_id=3`` reads ours."""
    model = caption_clip()
    out = ours.export_to_open_clip(model, tmp_path / "open_clip")
    model_cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    state = load_file(out / "open_clip_model.safetensors")
    text_cfg = {**model_cfg["text_cfg"]}
    default_pooling = {k: v for k, v in text_cfg.items() if k not in ("pool_type", "eos_id")}
    plain = CLIP(**{**model_cfg, "text_cfg": default_pooling}).eval()
    plain.load_state_dict(state)
    told = CLIP(**{**model_cfg, "text_cfg": {**default_pooling, "pool_type": "eos", "eos_id": 3}})
    told.eval().load_state_dict(state)
    ids = to_context(captions["input_ids"])
    with torch.no_grad():
        expected = model.get_text_features(**captions).pooler_output
        assert float((plain.encode_text(ids) - expected).abs().max()) > 1e-2
        assert float((told.encode_text(ids) - expected).abs().max()) <= 1e-5


def test_a_legacy_end_token_reads_the_highest_id(caption_clip: Callable) -> None:
    # eos_token_id == 2: transformers' (and our) rule for old configs, open_clip's argmax.
    config = ours.open_clip_model_config(caption_clip(text={"eos_token_id": 2}))
    assert config["text_cfg"]["pool_type"] == "argmax"


@pytest.mark.parametrize(
    ("text", "vision", "named"),
    [
        ({"hidden_act": "relu"}, {"hidden_act": "relu"}, "hidden_act='relu'"),
        ({}, {"hidden_act": "gelu"}, "vision_config.hidden_act='gelu'"),
        ({}, {"num_channels": 1}, "vision_config.num_channels=1"),
    ],
    ids=["activation", "two-activations", "channels"],
)
def test_what_open_clip_cannot_compute_is_refused_before_writing(
    caption_clip: Callable, text: dict, vision: dict, named: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=named):
        ours.export_to_open_clip(caption_clip(text=text, vision=vision), tmp_path / "out")
    assert not (tmp_path / "out").exists()
