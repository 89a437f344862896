"""``compile_options``: the ``torch.compile`` arguments of the lean decode step, from
transformers' ``CompileConfig``. On a CPU the default mode (CUDA graphs, which a CPU lacks) is
replaced by inductor's C++ wrapper; whatever the user chose explicitly is kept."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig

from scratchformers.core_attention import compile_options

CPU = torch.device("cpu")


def test_cpu_default_uses_the_cpp_wrapper() -> None:
    config = CompileConfig()
    options = compile_options(config, CPU)
    assert options == {
        "fullgraph": False,
        "dynamic": False,
        "backend": "inductor",
        "mode": None,
        "options": {"cpp_wrapper": True},
    }
    # The config itself is left as it was.
    assert config.mode == "reduce-overhead" and config.options is None


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cpu_default_modes_are_replaced(mode: str) -> None:
    options = compile_options(CompileConfig(mode=mode, fullgraph=True), CPU)
    assert options["mode"] is None and options["options"] == {"cpp_wrapper": True}
    assert options["fullgraph"] is True


def test_explicit_options_are_kept() -> None:
    options = compile_options(CompileConfig(options={"max_autotune": True}), CPU)
    assert options["options"] == {"max_autotune": True}
    assert options["mode"] == "reduce-overhead"


def test_explicit_non_default_mode_is_kept() -> None:
    options = compile_options(CompileConfig(mode="max-autotune-no-cudagraphs"), CPU)
    assert options["mode"] == "max-autotune-no-cudagraphs"
    assert options["options"] is None


def test_cuda_keeps_reduce_overhead() -> None:
    # Only device.type is read: no GPU is needed.
    options = compile_options(CompileConfig(), torch.device("cuda"))
    assert options["mode"] == "reduce-overhead"
    assert options["options"] is None
    assert options["backend"] == "inductor"


@pytest.mark.parametrize("device", [CPU, torch.device("cuda")], ids=["cpu", "cuda"])
def test_shapes_are_static_unless_asked(device: torch.device) -> None:
    assert compile_options(CompileConfig(), device)["dynamic"] is False
    assert compile_options(CompileConfig(dynamic=True), device)["dynamic"] is True


def test_options_are_accepted_by_torch_compile() -> None:
    """Every key is a ``torch.compile`` keyword (nothing is compiled until a call)."""
    compiled = torch.compile(lambda x: x + 1, **compile_options(CompileConfig(), CPU))
    assert callable(compiled)
