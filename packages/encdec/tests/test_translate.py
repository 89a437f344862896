"""translate(): texts in, texts out, each text translated as if alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from scratchformers.encdec import EncDecForConditionalGeneration, translate


def test_translate_pads_generates_and_decodes_each_text_as_alone(
    tiny_config: Callable, word_tokenizer
) -> None:
    torch.manual_seed(5)
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    texts = ["w5 w9 w17 w40 w41 w77 w8", "w6 w7", "w99 w100 w101 w102"]  # padded to the longest
    options = {"num_beams": 3, "max_new_tokens": 7}
    outputs = translate(model, word_tokenizer, texts, **options)
    assert len(outputs) == 3 and len(set(outputs)) == 3, outputs
    for text, output in zip(texts, outputs, strict=True):
        ids = word_tokenizer([text], return_tensors="pt")["input_ids"]
        alone = model.generate(ids, **options)
        assert output == word_tokenizer.decode(alone[0], skip_special_tokens=True)
        assert output and "<pad>" not in output and "</s>" not in output


def test_translate_refuses_no_texts_and_a_bare_string(
    tiny_config: Callable, word_tokenizer
) -> None:
    model = EncDecForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(ValueError, match="texts is empty"):
        translate(model, word_tokenizer, [])
    with pytest.raises(TypeError, match=r"\[text\]"):
        translate(model, word_tokenizer, "w5 w6")
