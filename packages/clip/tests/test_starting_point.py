"""The clip recipe's ``--init-from``: a transformers CLIP folder or an OpenAI-layout file loads
with its processor; a checkpoint whose processor is missing or does not fit the model is
refused with a line that says what to give."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import scratchformers.clip as ours
from scratchformers.clip.starting_point import load_starting_point
from scratchformers.training.pretrained import PretrainedError

WORDS = ["a", "red", "circle", "blue", "square"]


@pytest.fixture
def checkpoint(tmp_path, pair_spec, make_processor):
    """A random transformers CLIP (the tiny shape) saved with its CLIPProcessor."""
    torch.manual_seed(0)
    model = transformers.CLIPModel(pair_spec.config())
    model.save_pretrained(tmp_path / "clip")
    make_processor(WORDS).save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def test_a_transformers_folder_loads_with_its_processor(checkpoint):
    start = load_starting_point(str(checkpoint))
    assert isinstance(start.pretrained.model, ours.CLIPModel)
    assert start.pretrained.model.training
    assert start.pretrained.format == "a transformers clip folder"
    assert start.processor.tokenizer.convert_ids_to_tokens(2) == "a"


def test_an_openai_file_takes_the_activation_asked_for(checkpoint, tmp_path, make_processor):
    model = ours.CLIPModel.from_pretrained(checkpoint)
    folder = tmp_path / "openai"
    folder.mkdir()
    ours.export_to_openai(model, folder / "model.safetensors")
    with pytest.raises(PretrainedError, match=r"holds no processor.*--processor"):
        load_starting_point(str(folder / "model.safetensors"))
    # The tiny towers' heads are not width // 64: without open_clip_config.json it is refused.
    with pytest.raises(PretrainedError, match="num_attention_heads"):
        load_starting_point(str(folder / "model.safetensors"), processor_source=str(checkpoint))
    config = {
        "model_cfg": {"text_cfg": {"heads": 4}, "vision_cfg": {"width": 48, "head_width": 16}}
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    start = load_starting_point(
        str(folder / "model.safetensors"), activation="gelu", processor_source=str(checkpoint)
    )
    loaded = start.pretrained.model
    assert loaded.config.text_config.hidden_act == "gelu"
    assert "hidden_act gelu (--openai-activation)" in start.pretrained.format
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_a_processor_that_does_not_fit_is_refused(checkpoint, tmp_path, make_processor):
    other = tmp_path / "other"
    processor = make_processor(WORDS)
    processor.image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(other)
    with pytest.raises(PretrainedError, match="makes 32x32 images, the model takes 20x20"):
        load_starting_point(str(checkpoint), processor_source=str(other))
    config = transformers.CLIPConfig.from_pretrained(checkpoint)
    config.text_config.eos_token_id = 5
    config.save_pretrained(checkpoint)
    with pytest.raises(PretrainedError, match="reads a text at token 5"):
        load_starting_point(str(checkpoint))
