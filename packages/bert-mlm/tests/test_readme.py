"""The usage snippet of the package README runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE_README = Path(__file__).parents[1] / "README.md"


def test_readme_snippet_loads_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet writes checkpoints to the working directory
    blocks = re.findall(r"```python\n(.*?)```", PACKAGE_README.read_text(), flags=re.DOTALL)
    # The sentence-transformers snippets run in tests/test_sentence_transformers.py, where
    # sentence-transformers is installed (this package does not depend on it).
    snippet = "\n".join(
        block
        for block in blocks
        if "scratchformers.bert_mlm" in block and "sentence_transformers" not in block
    )
    assert snippet, "the README lost its bert_mlm snippet"
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(PACKAGE_README), "exec"), namespace)
    assert namespace["logits"].shape == (1, 5, 211)
    assert (tmp_path / "bert-exported" / "model.safetensors").is_file()
    assert type(namespace["back"]).__module__.startswith("transformers.")
