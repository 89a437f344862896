"""Every attention backend the core supports is reachable through from_pretrained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from scratchformers.basicformer import BasicFormerForCausalLM, BasicFormerForSeq2SeqLM


@pytest.mark.parametrize("model_class", [BasicFormerForCausalLM, BasicFormerForSeq2SeqLM])
def test_flex_attention_is_accepted_by_from_pretrained(
    make_model: Callable, model_class: type, tmp_path: Path
) -> None:
    make_model(model_class).save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path, attn_implementation="flex_attention")
    assert loaded.config._attn_implementation == "flex_attention"
    # Every layer's attention asks the config at each call, so it is flex that runs.
    attentions = [m for m in loaded.modules() if hasattr(m, "attn_implementation")]
    assert attentions and {m.attn_implementation for m in attentions} == {"flex_attention"}


def test_a_backend_whose_kernels_are_missing_fails_with_transformers_message(
    make_model: Callable, tmp_path: Path
) -> None:
    make_model(BasicFormerForCausalLM).save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="FlashAttention2"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_attentions_from_sdpa_fail_loudly_and_eager_records_self_and_cross_apart(
    make_model: Callable,
) -> None:
    model = make_model(BasicFormerForSeq2SeqLM)
    source, target = torch.tensor([[11, 27, 35, 40]]), torch.tensor([[1, 12, 13]])
    with pytest.raises(ValueError, match="output_attentions needs the eager backend"):
        model(source, decoder_input_ids=target, output_attentions=True)
    model.set_attn_implementation("eager")
    output = model(source, decoder_input_ids=target, output_attentions=True)
    layers = model.config.num_hidden_layers
    assert [a.shape for a in output.encoder_attentions] == [(1, 3, 4, 4)] * layers
    assert [a.shape for a in output.decoder_attentions] == [(1, 3, 3, 3)] * layers
    assert [a.shape for a in output.cross_attentions] == [(1, 3, 3, 4)] * layers
    # Causal self attention: nothing above the diagonal; cross attention sees every source token.
    assert torch.all(output.decoder_attentions[0][..., 0, 1:] == 0)
    assert torch.all(output.cross_attentions[0] > 0)


def test_return_dict_false_gives_transformers_tuples(make_model: Callable) -> None:
    model = make_model(BasicFormerForCausalLM)
    ids = torch.tensor([[11, 27, 35]])
    as_dict = model(ids, labels=ids, output_hidden_states=True)
    as_tuple = model(ids, labels=ids, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert len(as_dict.hidden_states) == model.config.num_hidden_layers + 1
