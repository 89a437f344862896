"""The usage snippets in the READMEs run as written and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PACKAGE_README = Path(__file__).parents[1] / "README.md"
ROOT_README = Path(__file__).parents[3] / "README.md"


def run_python_blocks(readme: Path) -> dict[str, object]:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    snippet = "\n".join(block for block in blocks if "scratchformers.basicformer" in block)
    assert snippet, f"{readme} lost its basicformer snippet"
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(readme), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("readme", [PACKAGE_README, ROOT_README], ids=["package", "root"])
def test_readme_snippet_runs(readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets save a model to the working directory
    namespace = run_python_blocks(readme)

    prompts, tokens = namespace["prompts"], namespace["tokens"]
    # Up to 8 new tokens: generation may stop early at the end-of-sequence token.
    assert tokens.shape[0] == prompts.shape[0]
    assert prompts.shape[1] < tokens.shape[1] <= prompts.shape[1] + 8
    assert torch.equal(tokens[:, : prompts.shape[1]], prompts)
    assert (tmp_path / "my-basicformer" / "model.safetensors").is_file()
    assert type(namespace["reloaded"]) is type(namespace["model"])
    if "translation" in namespace:
        assert namespace["translation"].shape[0] == prompts.shape[0]
