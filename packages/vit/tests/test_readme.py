"""The usage snippets of the package README and the root README run as written and do what
they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE_README = Path(__file__).parents[1] / "README.md"
ROOT_README = Path(__file__).parents[3] / "README.md"


def test_readme_snippets_classify_load_and_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints to the working directory
    blocks = re.findall(r"```python\n(.*?)```", PACKAGE_README.read_text(), flags=re.DOTALL)
    snippets = [block for block in blocks if "scratchformers.vit" in block]
    assert len(snippets) == 2, "the README lost a scratchformers.vit snippet"
    namespace: dict[str, object] = {}
    for snippet in snippets:
        exec(compile(snippet, str(PACKAGE_README), "exec"), namespace)
    assert namespace["logits"].shape == (1, 3)
    assert namespace["label"] in {"cat", "dog", "owl"}
    assert namespace["predictions"][0]["label"] == namespace["label"]
    assert (tmp_path / "vit-exported" / "model.safetensors").is_file()
    assert type(namespace["back"]).__module__.startswith("transformers.")
    assert type(namespace["ours"]).__name__ == "ViTForImageClassification"
    assert (tmp_path / "vit-for-timm" / "config.json").is_file()
    assert type(namespace["again"]).__name__ == "VisionTransformer"


def test_root_readme_snippet_classifies_an_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", ROOT_README.read_text(), flags=re.DOTALL)
    # The vit snippet, not the vitmae one (which needs scratchformers-vitmae).
    snippet = "\n".join(
        block
        for block in blocks
        if "scratchformers.vit" in block and "scratchformers.vitmae" not in block
    )
    assert snippet, "the root README lost its vit snippet"
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(ROOT_README), "exec"), namespace)
    predictions = namespace["predictions"]
    assert {p["label"] for p in predictions} == {"cat", "dog"}
    assert abs(sum(p["score"] for p in predictions) - 1) <= 1e-5
