"""The quality guard of ``--mixed-precision auto``: held-out figures against float32's.

    uv run python -m benchmarks.precision_quality                  # every run below
    uv run python -m benchmarks.precision_quality --runs gpt2-tiny vit-tiny

Trains each run twice with ``scratchformers train`` (the real command, its default data),
once with ``--mixed-precision no`` and once with the default ``auto``, and compares the final
held-out figures from each run's ``run.json``: each must stay within 2% of float32's. The runs
are the basicformer, gpt2, bert-mlm and vit tiny presets and a medium GPT-2 (width 512, depth
6, 256-token blocks), where bf16 pays most. Training throughput (from the runs' wall time) is
reported too; it is only a speed measurement on a quiet machine. Writes
``benchmarks/PRECISION.md`` and ``precision.json`` beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# name -> the `scratchformers train` arguments after the recipe's name.
RUNS: dict[str, list[str]] = {
    "basicformer-tiny": ["basicformer", "--preset", "tiny"],
    "gpt2-tiny": ["gpt2", "--preset", "tiny"],
    "bert-mlm-tiny": ["bert-mlm", "--preset", "tiny"],
    "vit-tiny": ["vit", "--preset", "tiny"],
    "gpt2-medium-512x6": [
        "gpt2",
        "--preset",
        "tiny",
        "--width",
        "512",
        "--depth",
        "6",
        "--heads",
        "8",
        "--block-size",
        "256",
        "--batch-size",
        "8",
        "--max-steps",
        "300",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "30",
        "--eval-every",
        "100",
    ],
}
PRECISIONS = ("no", "auto")
TOLERANCE = 0.02


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--output", type=Path, default=HERE / "PRECISION.md")
    return parser.parse_args()


def train(arguments: list[str], precision: str, output_dir: Path) -> dict[str, object]:
    """One run; its run.json."""
    command = [
        sys.executable,
        "-m",
        "scratchformers.training.cli",
        "train",
        *arguments,
        "--mixed-precision",
        precision,
        "--output-dir",
        str(output_dir),
        "--save-every",
        "100000",
    ]
    print("$", " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((output_dir / "run.json").read_text())


def compare(runs: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    """One line per held-out metric: float32's value, auto's, and their relative difference."""
    fp32, auto = (runs[p]["summary"]["final_metrics"] for p in PRECISIONS)
    lines = []
    for metric, value in fp32.items():
        other = auto[metric]
        lines.append(
            {
                "metric": metric,
                "fp32": value,
                "auto": other,
                "relative difference": abs(other - value) / abs(value) if value else 0.0,
            }
        )
    return lines


def main() -> None:
    args = parse_arguments()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.runs:
            runs = {
                precision: train(RUNS[name], precision, Path(scratch) / f"{name}-{precision}")
                for precision in PRECISIONS
            }
            ran = runs["auto"]["summary"]["ran"]
            speed = {
                p: run["summary"]["total_wall_time_s"]
                if "total_wall_time_s" in run["summary"]
                else run["summary"]["wall_time_s"]
                for p, run in runs.items()
            }
            result = {
                "run": name,
                "command": "scratchformers train " + " ".join(RUNS[name]),
                "auto picked": ran["mixed_precision"],
                "why": ran["mixed_precision_reason"],
                "wall time s": speed,
                "metrics": compare(runs),
            }
            results.append(result)
            print(json.dumps(result, indent=1), flush=True)
    args.output.with_name("precision.json").write_text(json.dumps(results, indent=1) + "\n")
    args.output.write_text(report(results))
    print(f"wrote {args.output}")


def report(results: list[dict[str, object]]) -> str:
    lines = [
        "# `--mixed-precision auto` against float32: the quality guard",
        "",
        f"Produced by `uv run python -m benchmarks.precision_quality` on "
        f"{datetime.date.today().isoformat()}. Each run trained twice with its default data "
        "and seed, `--mixed-precision no` and the default `auto`; the final held-out figures "
        f"of each, and their relative difference (the guard: at most {TOLERANCE:.0%}).",
        "",
        "| run | auto picked | metric | float32 | auto | difference | wall time float32 / auto |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        names = {"no": "float32", "bf16": "bf16"}
        picked = names.get(result["auto picked"], result["auto picked"])
        times = result["wall time s"]
        for line in result["metrics"]:
            mark = "" if line["relative difference"] <= TOLERANCE else " **over**"
            lines.append(
                f"| {result['run']} | {picked} | {line['metric']} | {line['fp32']:.4f} | "
                f"{line['auto']:.4f} | {line['relative difference']:.2%}{mark} | "
                f"{times['no']:.0f} s / {times['auto']:.0f} s |"
            )
    lines += ["", "Why auto picked what it did:", ""]
    lines += [f"- {r['run']}: {r['why']}" for r in results]
    lines += ["", "Commands:", ""]
    lines += [f"- {r['run']}: `{r['command']}`" for r in results]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
