"""The usage snippet in the package README runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).parents[1] / "README.md"


def test_readme_snippet_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README lost its usage snippet"
    namespace: dict[str, object] = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)

    out, cache, padding = namespace["out"], namespace["cache"], namespace["padding"]
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 48)
    assert torch.isfinite(out).all()
    assert cache.get_seq_length() == padding.shape[1]
