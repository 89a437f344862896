"""RESULTS.md and its two plots: the ratio bars and the cost-growth curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .__main__ import Results


def write_report(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ratios_png = path.with_name("ratios.png")
    growth_png = path.with_name("cost_growth.png")
    _plot_ratios(results, ratios_png)
    _plot_growth(results, growth_png)
    settings = results.settings
    lines = [
        "# Benchmarks: scratchformers against transformers, same weights",
        "",
        "Produced by `uv run python -m benchmarks` "
        f"(`--size {settings['size']} --device {settings['device']}`"
        + ("" if settings["compile"] else " --no-compile")
        + f"). Batch {settings['batch']} x {settings['length']} tokens for the forward and training rows; "
        f"`generate()` adds {settings['new_tokens']} tokens to a {settings['prompt']}-token prompt, greedy. "
        f"Medians of {settings['repeats']} repeats, ours and theirs interleaved in one run. "
        "**Ratio above 1.0 means ours is faster** (for memory: uses less).",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in results.machine.items()],
        f"| fp32 matmul peak (measured in this run) | {results.peak_flops / 1e9:,.0f} GFLOP/s |",
        *_earlier_runs(results),
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
            f"{entry['theirs']:,.1f} | {entry['unit']} | **{entry['ratio']:.2f}** |"
        )
    lines += [
        "",
        f"![ratios]({ratios_png.name})",
        "",
        "## Model FLOPs utilisation (forward)",
        "",
        "Matmul FLOPs of the forward (projections, MLP, attention scores, LM head) per second, "
        "against the fp32 matmul peak measured in the same run.",
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


def _earlier_runs(results: Results) -> list[str]:
    """Table lines for the rows kept from earlier runs: when, and the peak they measured."""
    runs: dict[tuple[str, float], list[str]] = {}
    for row, machine in results.earlier.items():
        runs.setdefault((machine["date"], machine["peak_flops"]), []).append(row)
    return [
        f"| rows kept from an earlier run: {', '.join(sorted(rows))} | {date}, "
        f"matmul peak {peak / 1e9:,.0f} GFLOP/s |"
        for (date, peak), rows in sorted(runs.items())
    ]


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
