"""The benchmark runner works end to end and counts FLOPs right. No timing is asserted: speed
is reported in benchmarks/RESULTS.md, never tested."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not a package

from benchmarks.rows import ROWS, SIZES  # noqa: E402


@pytest.mark.parametrize("name", sorted(ROWS))
def test_forward_flops_count_every_matmul_of_the_model(name: str) -> None:
    """2 FLOPs per weight of every linear layer for each position it is applied at, plus QK^T
    and PV of every attention, for any row: counted on the reference model's own forward.

    Attention is counted at transformers' call of ``scaled_dot_product_attention`` (its
    default backend), from the shapes it is given: 2 * queries * keys * head_dim per head for
    each product, so that a sequence whose length depends on the inputs (a masked
    autoencoder's kept patches) counts as long as it really was.
    """
    row = ROWS[name](SIZES["tiny"])
    batch, length = 3, 17
    # transformers' GPT-2 projections are Conv1D modules, its head and Llama's are Linear; a
    # ViT's patch projection is a Conv2d, applied once per patch.
    kinds = ("Linear", "Conv1D", "Conv2d")
    weights_times_positions = 0
    attention = 0

    def count(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        nonlocal weights_times_positions
        channels = output.shape[1] if isinstance(module, torch.nn.Conv2d) else output.shape[-1]
        weights_times_positions += module.weight.numel() * (output.numel() // channels)

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: object, **kwargs: object
    ) -> torch.Tensor:
        nonlocal attention
        *batch_and_heads, queries, head_dim = query.shape
        keys, value_dim = key.shape[-2], value.shape[-1]
        attention += 2 * math.prod(batch_and_heads) * queries * keys * (head_dim + value_dim)
        return sdpa(query, key, value, *args, **kwargs)

    # peft's LoRA layers are named Linear too, and wrap the base Linear that does the work.
    reference = row.forward_model("theirs")
    counted = [
        m for m in reference.modules() if type(m).__name__ in kinds and not hasattr(m, "base_layer")
    ]
    hooks = [m.register_forward_hook(count) for m in counted]
    try:
        with (
            torch.no_grad(),
            mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa),
        ):
            reference(**row.inputs(batch, length, torch.device("cpu")))
    finally:
        for hook in hooks:
            hook.remove()
    assert weights_times_positions > 0 and attention > 0
    assert row.forward_flops(batch, length) == 2 * weights_times_positions + attention


RUNNER_ROWS = ("vit", "clip", "encdec", "gpt2")  # the first is measured again, alone


def _run(output: Path, *rows: str) -> str:
    command = [sys.executable, "-m", "benchmarks", "--size", "tiny", "--no-compile"]
    command += ["--repeats", "1", "--output", str(output), "--rows", *rows]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    return output.read_text()


@pytest.mark.parametrize("name", sorted(ROWS))
def test_both_sides_of_a_row_compute_the_same_function(name: str) -> None:
    """A ratio means something only if ours and theirs give the same outputs on the timed
    inputs: the same weights (and for lora the same adapter, merged and not)."""
    row = ROWS[name](SIZES["tiny"])
    inputs = row.inputs(3, 17, torch.device("cpu"))
    with torch.no_grad():
        for ours, theirs in (
            (row.ours, row.theirs),
            (row.forward_model("ours"), row.forward_model("theirs")),
        ):
            expected = row.compared_output(theirs(**inputs))
            assert float((row.compared_output(ours(**inputs)) - expected).abs().max()) <= 1e-4
            assert float(expected.std()) > 1e-3
        for method, keys in row.encoders().values():  # the towers timed alone
            arguments = {key: inputs[key] for key in keys}
            expected = getattr(row.theirs, method)(**arguments).pooler_output
            actual = getattr(row.ours, method)(**arguments).pooler_output
            assert float((actual - expected).abs().max()) <= 1e-4
            assert float(expected.std()) > 1e-3


def test_runner_writes_results_and_plots_and_keeps_earlier_rows(tmp_path: Path) -> None:
    """Some rows are measured first; a second run of one more row joins the report and keeps
    the others' numbers, naming the run they came from. The rows are one of each kind the
    runner treats differently (a decoder that generates, an encoder-decoder with beam search,
    two towers timed alone, an image classifier): every row at once takes ten minutes on 2
    cores, and each row's own function is checked above."""
    output = tmp_path / "RESULTS.md"
    again, *others = RUNNER_ROWS
    first_report = _run(output, *others)
    assert f"| {again} |" not in first_report
    report = _run(output, again)

    for name in RUNNER_ROWS:
        rows = [line for line in report.splitlines() if line.startswith(f"| {name} |")]
        workloads = " ".join(rows)
        for workload in ("forward", "training step", "peak memory"):
            assert workload in workloads, f"{name}: no {workload!r} row in the report"
        generative = ROWS[name](SIZES["tiny"]).generative
        for workload in ("generate batch 1", "generate batch 8", "best against best"):
            assert (workload in workloads) == generative, f"{name}: {workload!r}"
        ratios = [float(r) for r in re.findall(r"\*\*([0-9.]+)\*\*", workloads)]
        assert ratios and all(r > 0 for r in ratios), rows
        if name != again:  # kept as measured by the first run
            assert all(line in first_report for line in rows), name
    assert f"rows kept from an earlier run: {', '.join(sorted(others))} |" in report
    assert "MFU" in report and "matmul peak" in report
    for plot in ("ratios.png", "cost_growth.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
