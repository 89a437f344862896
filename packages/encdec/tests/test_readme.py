"""The usage snippets of the READMEs run as written and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers

PACKAGE_README = Path(__file__).parents[1] / "README.md"
ROOT_README = Path(__file__).parents[3] / "README.md"


def run_python_blocks(readme: Path) -> dict[str, object]:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    snippet = "\n".join(block for block in blocks if "scratchformers.encdec" in block)
    assert snippet, f"{readme} lost its encdec snippet"
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(readme), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("readme", [PACKAGE_README, ROOT_README], ids=["package", "root"])
def test_readme_snippets_load_generate_and_export(
    readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints to the working directory
    namespace = run_python_blocks(readme)
    source, tokens = namespace["source"], namespace["tokens"]
    assert tokens.shape[0] == source.shape[0] and tokens.shape[1] > 2
    back = namespace["back"]
    assert type(back).__module__.startswith("transformers."), type(back)
    with torch.no_grad():
        mask = (source != back.config.pad_token_id).long()
        theirs = back.generate(source, attention_mask=mask, num_beams=3, max_new_tokens=6)
    assert torch.equal(theirs, tokens)  # the exported model generates the same tokens
    if readme is PACKAGE_README:
        outputs = namespace["outputs"]
        assert isinstance(outputs, list) and len(outputs) == 2
        assert all(isinstance(text, str) for text in outputs)
        assert isinstance(namespace["tokenizer"], transformers.PreTrainedTokenizerFast)
