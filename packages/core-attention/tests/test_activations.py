"""activation(): transformers' activations by name, fused where the formula allows."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN, NewGELUActivation

from scratchformers.core_attention import activation


def test_gelu_new_is_fused_and_computes_gpt2s_formula() -> None:
    fused = activation("gelu_new")
    assert not isinstance(fused, NewGELUActivation)
    x = torch.cat([torch.randn(1000) * 3, torch.tensor([-30.0, -5.0, 0.0, 5.0, 30.0])])
    torch.testing.assert_close(fused(x), NewGELUActivation()(x), rtol=1e-6, atol=1e-6)


def test_fused_gelu_keeps_less_for_the_backward_pass() -> None:
    def saved_bytes(module: torch.nn.Module) -> int:
        sizes: list[int] = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        x = torch.randn(64, 256, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sum(sizes)

    assert saved_bytes(activation("gelu_new")) < saved_bytes(NewGELUActivation())


@pytest.mark.parametrize("name", ["relu", "silu", "gelu"])
def test_other_names_are_transformers_own(name: str) -> None:
    assert type(activation(name)) is type(ACT2FN[name])


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        activation("swishy")
