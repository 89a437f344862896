"""The usage snippets of the package README run as written and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PACKAGE_README = Path(__file__).parents[1] / "README.md"


def test_readme_snippets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write to the working directory
    blocks = re.findall(r"```python\n(.*?)```", PACKAGE_README.read_text(), flags=re.DOTALL)
    snippet = "\n".join(block for block in blocks if "lora." in block)
    assert snippet.count("lora.") > 5, "the README lost its snippets"
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(PACKAGE_README), "exec"), namespace)
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "peft-adapter" / "adapter_config.json").is_file()
    batch = {k: v for k, v in namespace["batch"].items() if k != "labels"}
    model, theirs, ours = namespace["model"], namespace["theirs"], namespace["ours"]
    with torch.no_grad():
        adapted = model(**batch).logits
        assert float((namespace["merged_logits"] - adapted).abs().max()) < 1e-5
        assert float((namespace["base_logits"] - adapted).abs().max()) > 1e-4  # it trained
        assert float((theirs(**batch).logits - adapted).abs().max()) < 1e-5
        assert float((ours.eval()(**batch).logits - adapted).abs().max()) < 1e-5
