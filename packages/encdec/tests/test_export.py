"""export_to_transformers writes a directory of the family the model came from (BART for a
model trained here), which transformers loads with no missing or unexpected keys and the same
outputs; a model that no transformers class can hold is refused by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from scratchformers.core_attention.testing import assert_close_on_real_tokens
from scratchformers.encdec import (
    EncDecForConditionalGeneration,
    EncDecModel,
    export_to_transformers,
)

TOLERANCE = 1e-4


def load_theirs(directory: Path, model_class: type) -> transformers.PreTrainedModel:
    theirs, info = model_class.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info
    return theirs.eval()


def test_a_converted_model_exports_to_its_own_family_bit_for_bit(
    reference, batch: Callable, tmp_path: Path
) -> None:
    model = EncDecForConditionalGeneration.from_pretrained(reference.directory).eval()
    out = export_to_transformers(model, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["model_type"] == reference.family
    theirs = load_theirs(out, type(reference.model))
    original = reference.model.state_dict()
    for key, tensor in theirs.state_dict().items():
        assert torch.equal(tensor, original[key]), key  # final_logits_bias included
    inputs = batch(reference.pad)
    assert torch.equal(
        model.generate(**inputs, max_new_tokens=6, num_beams=3),
        theirs.generate(**inputs, max_new_tokens=6, num_beams=3),
    )


def test_a_model_trained_here_exports_to_bart(
    tiny_config: Callable, batch: Callable, tmp_path: Path
) -> None:
    torch.manual_seed(4)
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.2)
        model.final_logits_bias.normal_()
    out = export_to_transformers(model, tmp_path / "bart")
    theirs = load_theirs(out, transformers.AutoModelForSeq2SeqLM)
    assert type(theirs) is transformers.BartForConditionalGeneration
    inputs = batch(model.config.pad_token_id)
    with torch.no_grad():
        assert_close_on_real_tokens(
            model(**inputs).logits,
            theirs(**inputs).logits,
            inputs["labels"] != -100,
            atol=TOLERANCE,
        )
    bare = export_to_transformers(model.model, tmp_path / "bare")
    assert type(load_theirs(bare, transformers.AutoModel)) is transformers.BartModel


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"norm_position": "pre"}, "norm_position"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ],
)
def test_a_model_no_transformers_class_holds_is_refused(
    tiny_config: Callable, tmp_path: Path, options: dict, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        export_to_transformers(EncDecModel(tiny_config(**options)), tmp_path)
    assert not any(tmp_path.iterdir())
