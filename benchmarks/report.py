"""The reports: RESULTS.md and its two plots (the ratio bars and the cost-growth curves), where
the reports and their companion files go, and the index of reports at the top of RESULTS.md.

Several reports share the ``benchmarks/`` folder (one per shape and precision, and the decode
benchmark's ``DECODE.md``), so each report's numbers and plots are named after it:
``RESULTS.md`` keeps ``results.json``, ``ratios.png`` and ``cost_growth.png``;
``RESULTS-bf16.md`` gets ``results-bf16.json``, ``ratios-bf16.png`` and ``cost_growth-bf16.png``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .__main__ import Results

MAIN_REPORT = "RESULTS.md"
# Every benchmark's report matches one of these; the index in RESULTS.md lists them.
REPORT_PATTERNS = ("RESULTS*.md", "DECODE*.md")
# The index sits between these (invisible once rendered), so that a later run can rewrite it.
INDEX_START = "<!-- reports: rewritten by every benchmark run -->"
INDEX_END = "<!-- /reports -->"
SIZE_TITLES = {
    "tiny": "tiny shape",
    "small": "small shape",
    "gpt2": "GPT-2 (124M) shape",
    "gpt2-medium": "GPT-2 medium (355M) shape",
}
PRECISION_TITLES = {"fp32": "fp32", "bf16": "bf16 autocast"}


def results_json(report: Path) -> Path:
    """Where a report's numbers are kept, beside it: ``RESULTS.md`` -> ``results.json``,
    ``RESULTS-gpt2-bf16.md`` -> ``results-gpt2-bf16.json``, ``DECODE.md`` -> ``decode.json``."""
    return report.with_name(f"{report.stem.lower()}.json")


def plot_paths(report: Path) -> dict[str, Path]:
    """The plots of a report, beside it and named after it (RESULTS.md's keep their old names,
    ``ratios.png`` and ``cost_growth.png``; ``RESULTS-bf16.md``'s are ``ratios-bf16.png``...)."""
    tag = report.stem.lower().removeprefix("results")
    if tag and not tag.startswith("-"):
        tag = f"-{tag}"
    return {
        "ratios": report.with_name(f"ratios{tag}.png"),
        "growth": report.with_name(f"cost_growth{tag}.png"),
    }


def output_problem(report: Path, companions: Iterable[Path]) -> str | None:
    """Why ``report`` or a file written beside it (``companions``) could not be written, in
    words, or ``None`` when all can: checked before measuring, so that a run is not lost at
    the end for want of a place to write it. A missing folder is fine where it can be made."""
    for path in (report, *companions):
        if path.is_dir():
            return f"{path} is a directory; give a file in it, such as {path / MAIN_REPORT}"
    if report.suffix != ".md":
        return f"{report} is not a Markdown file; give a path ending in .md"
    for path in (report, *companions):
        if path.exists() and not os.access(path, os.W_OK):
            return f"{path} exists and cannot be written"
    existing = report.parent
    while not existing.exists():  # stops at the root or at ".", which exist
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {report.parent} cannot be a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == report.parent:
            return f"{existing} is a folder that cannot be written"
        return f"{report.parent} cannot be made: {existing} cannot be written"
    return None


def report_title(settings: dict[str, object]) -> str:
    """The first line of a report, which the index of reports shows: shape and precision."""
    size = str(settings["size"])
    precision = str(settings.get("precision", "fp32"))
    return (
        "# Benchmarks: scratchformers against transformers, same weights "
        f"({SIZE_TITLES.get(size, f'{size} shape')}, {PRECISION_TITLES[precision]})"
    )


def refresh_index(folder: Path) -> None:
    """Write the list of the reports in ``folder`` at the top of its RESULTS.md (when there is
    one), linked by their titles, replacing the list an earlier run wrote there: the main
    report then leads to every other (bf16, GPT-2 shape, decode) however they were run."""
    main = folder / MAIN_REPORT
    if not main.is_file():
        return
    others = [
        path
        for pattern in REPORT_PATTERNS  # RESULTS-* before DECODE*
        for path in sorted(folder.glob(pattern))
        if path != main
    ]
    block = [INDEX_START]
    if others:
        block += ["", "Other reports in this folder:", ""]
        for path in others:
            title = path.read_text().split("\n", 1)[0].lstrip("#").strip() or path.name
            block.append(f"- [{title}]({path.name})")
        block.append("")
    block.append(INDEX_END)
    lines = main.read_text().split("\n")
    if INDEX_START in lines and INDEX_END in lines:
        start, end = lines.index(INDEX_START), lines.index(INDEX_END)
        lines[start : end + 1] = block
    else:  # a report written before the index existed: the list goes under its title
        lines[1:1] = ["", *block]
    main.write_text("\n".join(lines))


def write_report(results: Results, path: Path) -> None:
    """Write the report of ``results`` to ``path`` and its plots beside it, then the index of
    reports in the RESULTS.md of that folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_paths(path)
    ratios_png, growth_png = plots["ratios"], plots["growth"]
    _plot_ratios(results, ratios_png)
    _plot_growth(results, growth_png)
    settings = results.settings
    precision = str(settings.get("precision", "fp32"))
    autocast_note = (
        ""
        if precision == "fp32"
        else " Both sides run under `torch.autocast(device, dtype=torch.bfloat16)` with float32 "
        "weights, as mixed-precision training does: the forward, the training step's forward "
        "and loss (the backward outside it), the memory row and `generate()`."
    )
    lines = [
        report_title(settings),
        "",
        "Produced by `uv run python -m benchmarks` "
        f"(`--size {settings['size']} --device {settings['device']} --precision {precision}"
        + ("" if settings["compile"] else " --no-compile")
        + f"`). Batch {settings['batch']} x {settings['length']} tokens for the forward and training rows; "
        f"`generate()` adds {settings['new_tokens']} tokens to a {settings['prompt']}-token prompt, greedy. "
        f"Medians of {settings['repeats']} repeats, ours and theirs interleaved in one run."
        f"{autocast_note} "
        "**Ratio above 1.0 means ours is faster** (for memory: uses less). Peak memory is the "
        "most bytes of tensors held at once during a first training step with a fresh AdamW "
        "(on a CPU counted op by op, `benchmarks/memory.py`; on a GPU the CUDA allocator's peak).",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in results.machine.items()],
        *[
            f"| {name} matmul peak (measured in this run) | {peak / 1e9:,.0f} GFLOP/s |"
            for name, peak in (results.peaks or {"fp32": results.peak_flops}).items()
        ],
        *_earlier_runs(results, precision),
        *_noise_lines(results),
        "",
        "## Speed and memory",
        "",
        "`generate()` variants, the same options on both sides: *dynamic cache*; *static cache*; "
        "*static cache + compile* (transformers' `compile_config`, which our models run through "
        "their lean decode loop, `scratchformers.core_attention.decoding`, compiling one decode "
        "step); on a CPU also *static cache + compile (C++ wrapper)*, the same with inductor's "
        "`cpp_wrapper` option, which our loop picks by itself on a CPU. *Best against best* "
        "races each side's fastest variant.",
        "",
        "| model | workload | ours | transformers | unit | ratio |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for entry in results.speed:
        variants = entry["variants"]
        note = f" (ours: {variants['ours']}, theirs: {variants['theirs']})" if variants else ""
        lines.append(
            f"| {entry['row']} | {entry['workload']}{note} | {entry['ours']:,.1f} | "
            f"{entry['theirs']:,.1f} | {entry['unit']} | **{entry['ratio']:.3f}** |"
        )
    band = _noise_range(results)
    if band:
        lines += [
            "",
            f"Identical work landed up to {band[1] - 1.0:.3f} from 1.0 in this run "
            f"({results.noise['workload']}, timed like a row): a ratio between {band[0]:.3f} "
            f"and {band[1]:.3f} is parity within this machine's noise, not a lead or a gap. The "
            "band is shaded in the plot.",
        ]
    lines += [
        "",
        f"![ratios]({ratios_png.name})",
        "",
        "## Model FLOPs utilisation (forward)",
        "",
        "Matmul FLOPs of the forward (projections, MLP, attention scores, LM head) per second, "
        f"against the {precision} matmul peak measured in the same run.",
        "",
        "| model | ours GFLOP/s | ours MFU | transformers GFLOP/s | transformers MFU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for entry in results.mfu:
        lines.append(
            f"| {entry['row']} | {entry['ours_gflops']:,.1f} | {entry['ours']:.2f} | "
            f"{entry['theirs_gflops']:,.1f} | {entry['theirs']:.2f} |"
        )
    lines += [
        "",
        "## Cost of one generated token as the context grows (ours, batch 1)",
        "",
        "| model | context | ms/token with cache | ms/token without cache |",
        "| --- | ---: | ---: | ---: |",
    ]
    for entry in results.growth:
        lines.append(
            f"| {entry['row']} | {entry['context']} | {entry['with cache'] * 1e3:.2f} | "
            f"{entry['without cache'] * 1e3:.2f} |"
        )
    lines += ["", f"![cost growth]({growth_png.name})", ""]
    path.write_text("\n".join(lines))
    refresh_index(path.parent)


def _earlier_runs(results: Results, precision: str) -> list[str]:
    """Table lines for the rows kept from earlier runs: when, and the peak they measured (in
    ``precision``: rows are kept only from a run in the same precision)."""
    runs: dict[tuple[str, float], list[str]] = {}
    for row, machine in results.earlier.items():
        runs.setdefault((machine["date"], machine["peak_flops"]), []).append(row)
    return [
        f"| rows kept from an earlier run: {', '.join(sorted(rows))} | {date}, "
        f"{precision} matmul peak {peak / 1e9:,.0f} GFLOP/s |"
        for (date, peak), rows in sorted(runs.items())
    ]


def _noise_range(results: Results) -> tuple[float, float] | None:
    """``1 - d`` and ``1 + d``, where ``d`` is how far from 1.0 a ratio of identical work landed
    in the run (its true ratio is 1.0, so the noise reaches as far either way); ``None`` for a
    run from before the band was measured."""
    ratios = results.noise.get("ratios") if results.noise else None
    if not ratios:
        return None
    reach = max(abs(r - 1.0) for r in ratios)
    return 1.0 - reach, 1.0 + reach


def _noise_lines(results: Results) -> list[str]:
    """The machine-table line for the ratios of identical work (see ``IdenticalWork``)."""
    if not results.noise:
        return []
    ratios = ", ".join(f"{r:.3f}" for r in results.noise["ratios"])
    return [f"| ratios of identical work in this run ({results.noise['workload']}) | {ratios} |"]


def _plot_ratios(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e['row']}: {e['workload']}" for e in results.speed]
    ratios = [e["ratio"] for e in results.speed]
    figure, axis = plt.subplots(figsize=(9, 0.35 * len(labels) + 1.5), dpi=110)
    colors = ["tab:green" if r >= 1.0 else "tab:red" for r in ratios]
    axis.barh(range(len(labels)), ratios, color=colors)
    axis.axvline(1.0, color="black", linewidth=1)
    band = _noise_range(results)
    if band:
        axis.axvspan(*band, color="grey", alpha=0.3, label="identical work in this run (noise)")
        axis.legend(loc="lower right", fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("ours / transformers (above 1.0: ours faster or smaller)")
    axis.set_title("scratchformers against transformers, same weights")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _plot_growth(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results.growth:  # only non-generative rows were measured
        return
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for row in sorted({e["row"] for e in results.growth}):
        entries = [e for e in results.growth if e["row"] == row]
        contexts = [e["context"] for e in entries]
        axis.plot(
            contexts, [e["with cache"] * 1e3 for e in entries], "o-", label=f"{row}, with cache"
        )
        axis.plot(
            contexts,
            [e["without cache"] * 1e3 for e in entries],
            "s--",
            label=f"{row}, without cache",
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("context length (tokens)")
    axis.set_ylabel("ms per generated token")
    axis.set_title("Generation cost as the context grows")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
