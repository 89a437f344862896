"""Peak memory of one training step, measured in a fresh process for each side of a row.

A fresh process matters on the CPU: freed memory stays in the process (the allocator keeps it),
so after a first step the resident-set peak no longer moves. Run by the benchmark as
``python -m benchmarks.memory <row> <size> <side> <batch> <length> <device> <precision>``;
prints megabytes. With precision ``bf16`` the step's forward runs under bf16 autocast, as the
timed training step does.

The weights are copied into the process's own memory before the step. A side loaded with
``from_pretrained`` (ours, in most rows: converted from the folder transformers' class saved)
holds its weights in the safetensors file's memory map, paged in as the step first reads them;
the step's resident-set peak then counted the weights themselves on that side only (25 MB of
encdec's 206, which read as 0.86 of transformers' memory until this copy).
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys

import torch

from .measure import PRECISIONS, peak_memory_mb, training_step
from .rows import ROWS, SIZES


def measure_in_subprocess(
    row: str,
    size: str,
    side: str,
    batch: int,
    length: int,
    device: str,
    repeats: int = 5,
    precision: str = "fp32",
) -> float | None:
    """Median over ``repeats`` fresh processes: the resident-set peak moves by several MB from
    run to run on a CPU."""
    runs = [
        _measure_once(row, size, side, batch, length, device, precision) for _ in range(repeats)
    ]
    if any(run is None for run in runs):
        return None
    return statistics.median(runs)


def _measure_once(
    row: str, size: str, side: str, batch: int, length: int, device: str, precision: str
) -> float | None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        row,
        size,
        side,
        str(batch),
        str(length),
        device,
        precision,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    row_name, size, side, batch, length, device_name, precision = sys.argv[1:]
    device = torch.device(device_name)
    row = ROWS[row_name](SIZES[size])
    model = (row.ours if side == "ours" else row.theirs).to(device).train()
    with torch.no_grad():  # out of any memory map: see the module docstring
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.data = tensor.data.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = row.training_inputs(row.inputs(int(batch), int(length), device))
    dtype = PRECISIONS[precision]
    step = lambda: training_step(model, optimizer, inputs, dtype)  # noqa: E731
    print(json.dumps(peak_memory_mb(step, device)))


if __name__ == "__main__":
    main()
