"""The usage snippets of the package README run as written and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).parents[1] / "README.md"


def _snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block for block in blocks if "scratchformers.clip" in block]


def test_readme_snippets_classify_load_and_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints to the working directory
    zero_shot, openai = _snippets()
    namespace: dict[str, object] = {}
    exec(compile(zero_shot, str(README), "exec"), namespace)
    probs = namespace["probs"]
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(dim=-1), torch.ones(2))
    assert {p["label"] for p in namespace["predictions"]} == {"cat", "dog", "owl"}
    assert type(namespace["back"]).__module__.startswith("transformers.")

    namespace = {}
    exec(compile(openai, str(README), "exec"), namespace)
    reference, model = namespace["reference"], namespace["openai_clip"]
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.eval().encode_image(pixel_values)
        actual = model.get_image_features(pixel_values).pooler_output
    assert float((actual - expected).abs().max()) <= 1e-4
    assert (tmp_path / "back-to-openai.safetensors").is_file()
    assert (tmp_path / "for-open-clip" / "open_clip_config.json").is_file()
    with torch.no_grad():
        again = namespace["again"].eval().encode_image(pixel_values)
    assert float((again - actual).abs().max()) <= 1e-5


def test_root_readme_snippet_classifies_zero_shot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).parents[3] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", root.read_text(), flags=re.DOTALL)
    (snippet,) = [block for block in blocks if "scratchformers.clip" in block]
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(root), "exec"), namespace)
    probs = namespace["probs"]
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1) <= 1e-5
    assert namespace["model"].config.vision_config.patch_size == 32  # from the preset
