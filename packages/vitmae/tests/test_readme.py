"""The usage snippets of the package README and the root README run as written and do what
they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

PACKAGE_README = Path(__file__).parents[1] / "README.md"
ROOT_README = Path(__file__).parents[3] / "README.md"


def run_python_blocks(readme: Path) -> dict[str, object]:
    """The README's blocks about this package, in order, in one namespace: the package
    README's all name a scratchformers package; the root README's name this one."""
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    wanted = "scratchformers.vit" if readme == PACKAGE_README else "scratchformers.vitmae"
    snippets = [block for block in blocks if wanted in block]
    assert snippets, f"{readme} lost its vitmae snippet"
    namespace: dict[str, object] = {}
    exec(compile("\n".join(snippets), str(readme), "exec"), namespace)
    return namespace


def test_readme_snippets_reconstruct_export_and_classify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints to the working directory
    namespace = run_python_blocks(PACKAGE_README)
    pixels, out = namespace["pixels"], namespace["out"]
    assert out.mask.sum() == 12 and torch.isfinite(namespace["loss"])
    reconstruction, hidden = namespace["reconstruction"], namespace["hidden"]
    assert reconstruction.shape == pixels.shape == (1, 3, 32, 32)
    visible = hidden == 0
    assert torch.equal(reconstruction[visible], pixels[visible])
    assert torch.equal(reconstruction[~visible], namespace["predicted"][~visible])
    assert type(namespace["back"]).__module__.startswith("transformers.")
    assert namespace["logits"].shape == (1, 10)
    assert type(namespace["classifier"]).__module__ == "scratchformers.vit.modeling"


def test_root_readme_snippet_pretrains_a_step_and_classifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_python_blocks(ROOT_README)
    assert torch.isfinite(namespace["loss"]) and namespace["logits"].shape == (2, 5)
