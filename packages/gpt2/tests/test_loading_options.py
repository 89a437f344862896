"""from_pretrained options on a converted transformers checkpoint behave as in transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchformers.gpt2 import GPT2LMHeadModel


@pytest.fixture
def transformers_dir(make_theirs: Callable[..., torch.nn.Module], tmp_path: Path) -> Path:
    make_theirs().save_pretrained(tmp_path / "theirs")
    return tmp_path / "theirs"


def test_config_fields_can_be_overridden(transformers_dir: Path) -> None:
    model = GPT2LMHeadModel.from_pretrained(transformers_dir, output_hidden_states=True)
    assert model.config.output_hidden_states is True
    output = model(torch.tensor([[3, 4, 5]]))
    assert len(output.hidden_states) == model.config.n_layer + 1


def test_loader_flags_are_accepted_and_unknown_arguments_refused(transformers_dir: Path) -> None:
    reference = GPT2LMHeadModel.from_pretrained(transformers_dir)
    flagged = GPT2LMHeadModel.from_pretrained(
        transformers_dir, low_cpu_mem_usage=True, local_files_only=True, device_map="cpu"
    )
    ids = torch.tensor([[7, 8, 9, 10]])
    assert torch.equal(flagged(ids).logits, reference(ids).logits)
    with pytest.raises(TypeError, match="unexpected argument 'no_such_option'"):
        GPT2LMHeadModel.from_pretrained(transformers_dir, no_such_option=1)


def test_a_dtype_is_applied(transformers_dir: Path) -> None:
    model = GPT2LMHeadModel.from_pretrained(transformers_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
