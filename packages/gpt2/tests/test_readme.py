"""The usage snippets of the READMEs run as written and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PACKAGE_README = Path(__file__).parents[1] / "README.md"
ROOT_README = Path(__file__).parents[3] / "README.md"


def run_python_blocks(readme: Path) -> dict[str, object]:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    snippet = "\n".join(block for block in blocks if "scratchformers.gpt2" in block)
    assert snippet, f"{readme} lost its gpt2 snippet"
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(readme), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("readme", [PACKAGE_README, ROOT_README], ids=["package", "root"])
def test_readme_snippet_loads_generates_and_exports(
    readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints to the working directory
    namespace = run_python_blocks(readme)
    prompt, tokens = namespace["prompt"], namespace["tokens"]
    assert torch.equal(tokens[:, : prompt.shape[1]], prompt) and tokens.shape[1] > prompt.shape[1]
    assert (tmp_path / "gpt2-exported" / "model.safetensors").is_file()
    assert type(namespace["back"]).__module__.startswith("transformers.")


def test_root_readme_lean_generate_gives_the_same_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_python_blocks(ROOT_README)
    assert torch.equal(namespace["fast_tokens"], namespace["tokens"])


def test_package_readme_int8_bfloat16_generate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scratchformers.core_attention import Int8WeightOnlyLinear

    monkeypatch.chdir(tmp_path)
    namespace = run_python_blocks(PACKAGE_README)
    model, prompt, tokens = namespace["int8_model"], namespace["prompt"], namespace["int8_tokens"]
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert torch.equal(tokens[:, : prompt.shape[1]], prompt) and tokens.shape == (1, 11)
