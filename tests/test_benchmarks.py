"""The benchmark runner works end to end and counts FLOPs right. No timing is asserted: speed
is reported in benchmarks/RESULTS.md, never tested."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not a package

from benchmarks import measure  # noqa: E402
from benchmarks.__main__ import Results  # noqa: E402
from benchmarks.measure import interleaved_medians  # noqa: E402
from benchmarks.report import _noise_range  # noqa: E402
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
    command += ["--repeats", "1", "--seconds", "0", "--generate-seconds", "0"]
    command += ["--output", str(output), "--rows", *rows]
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


def test_timing_by_seconds_repeats_a_short_workload_until_it_has_run_that_long() -> None:
    """With ``seconds``, the slower workload of the warm-up sets the repeat count for both, in
    alternation; ``repeats`` is the floor and ``most`` the ceiling. The workloads advance a
    clock of their own (steps of 1/64 s and 1/1024 s, exact in binary), so the counts are
    exact whatever the machine is doing."""
    now = [0.0]
    calls = {"short": 0, "long": 0}

    def workload(name: str, seconds: float) -> Callable[[], None]:
        def run() -> None:
            calls[name] += 1
            now[0] += seconds

        return run

    workloads = {"short": workload("short", 1 / 1024), "long": workload("long", 1 / 64)}
    cpu = torch.device("cpu")

    def counts(*args: object, **kwargs: object) -> dict[str, int]:
        calls.update(short=0, long=0)
        with mock.patch.object(measure.time, "perf_counter", lambda: now[0]):
            interleaved_medians(workloads, *args, **kwargs)
        return dict(calls)

    # One warm-up call each, then 10/64 s over the long one's 1/64 s: 10 repeats, not 3.
    assert counts(3, cpu, warmup=1, seconds=10 / 64) == {"short": 11, "long": 11}
    assert counts(3, cpu, warmup=1, seconds=10.0, most=5) == {"short": 6, "long": 6}
    assert counts(12, cpu, warmup=1, seconds=10 / 64) == {"short": 13, "long": 13}  # the floor
    assert counts(4, cpu, warmup=1) == {"short": 5, "long": 5}  # no seconds: the count alone


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
    # Identical work is timed before every row and after the last: the band spans the run.
    first_noise = json.loads((tmp_path / "results.json").read_text())["noise"]
    assert len(first_noise["ratios"]) == len(others) + 1
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
    # Every run times identical work, and its report gives the ratios and the band they span.
    noise = json.loads((tmp_path / "results.json").read_text())["noise"]
    assert len(noise["ratios"]) == 3 and all(r > 0 for r in noise["ratios"])  # at least three
    assert f"| ratios of identical work in this run ({noise['workload']}) |" in report
    reach = max(abs(r - 1.0) for r in noise["ratios"])
    assert f"between {1 - reach:.3f} and {1 + reach:.3f} is parity" in report
    for plot in ("ratios.png", "cost_growth.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_noise_band_reaches_as_far_below_one_as_the_farthest_identical_ratio() -> None:
    """Identical work's true ratio is 1.0, so a deviation either way is noise: the band is
    symmetric around 1.0, as wide as the farthest ratio, and absent for a run without one."""
    results = Results(settings={}, machine={}, peak_flops=1.0)
    assert _noise_range(results) is None
    results.noise = {"workload": "w", "ratios": [0.99, 1.03, 1.005]}
    low, high = _noise_range(results)
    assert (round(low, 6), round(high, 6)) == (0.97, 1.03)


def test_an_output_that_cannot_be_written_is_refused_before_measuring(tmp_path: Path) -> None:
    """A folder given as --output (or a non-Markdown path) stops the run at its arguments,
    naming --output, before the matmul peaks or any row are measured; a missing folder that
    can be made is fine."""
    from benchmarks import __main__ as runner
    from benchmarks import decode

    never = mock.Mock(side_effect=AssertionError("measured before refusing --output"))
    for module, extra in ((runner, ["--rows", "gpt2"]), (decode, [])):
        for output in (tmp_path, tmp_path / "report.txt"):
            with (
                mock.patch.object(runner, "matmul_peak_flops", never),
                pytest.raises(SystemExit) as exit_info,
            ):
                module.main(["--output", str(output), *extra])
            assert exit_info.value.code == 2
    runner.parse_arguments(["--output", str(tmp_path / "new" / "RESULTS.md")])


def test_each_shape_and_precision_has_its_own_report_and_companions() -> None:
    from benchmarks.__main__ import default_output
    from benchmarks.report import plot_paths, results_json

    assert default_output("small", "fp32").name == "RESULTS.md"
    assert default_output("small", "bf16").name == "RESULTS-bf16.md"
    assert default_output("gpt2", "bf16").name == "RESULTS-gpt2-bf16.md"
    main, bf16 = Path("RESULTS.md"), Path("RESULTS-gpt2-bf16.md")
    assert results_json(main).name == "results.json"
    assert {p.name for p in plot_paths(main).values()} == {"ratios.png", "cost_growth.png"}
    assert results_json(bf16).name == "results-gpt2-bf16.json"
    assert {p.name for p in plot_paths(bf16).values()} == {
        "ratios-gpt2-bf16.png",
        "cost_growth-gpt2-bf16.png",
    }


class _Int8Linear(torch.nn.Module):
    """A stand-in for scratchformers' weight-only int8 layer: int8 weight, per-row scales."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        quantized = (weight / scales[:, None]).round().clamp(-128, 127).to(torch.int8)
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("scales", scales)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales.to(x.dtype))
        return out.reshape(*x.shape[:-1], -1) + self.bias


def _quantize_layers(model: torch.nn.Module) -> None:
    """In place, as quantize_int8 may be: every Linear of the decoder layers to int8."""
    for block in model.transformer.h:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, _Int8Linear(child))


def _tiny_trained_gpt2(folder: Path) -> Path:
    """A tiny GPT-2 folder with a word-level tokenizer, as ``scratchformers train`` leaves."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

    words = [f"w{i}" for i in range(60)]
    vocab = {"<unk>": 0} | {word: i + 1 for i, word in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    config = GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=32, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = folder / "held-out.txt"
    text.write_text(" ".join(words[i % 17] for i in range(100)))
    return text


def test_decode_benchmark_writes_its_report_and_joins_the_index(tmp_path: Path) -> None:
    """The decode benchmark at the tiny shape, with an int8 quantizer standing in for
    quantize_int8 and a tiny trained model's perplexity: every section is filled, the numbers
    go beside the report, and the RESULTS.md of that folder links to it."""
    from benchmarks import decode

    (tmp_path / "RESULTS.md").write_text("# Main report\n\nbody\n")
    text = _tiny_trained_gpt2(tmp_path / "model")
    output = tmp_path / "DECODE.md"
    arguments = ["--shape", "tiny", "--repeats", "1", "--no-compile", "--output", str(output)]
    arguments += ["--prompt", "8", "--new-tokens", "8"]
    arguments += ["--model-dir", str(tmp_path / "model"), "--text", str(text)]
    peaks = {"fp32": 1e11, "bf16": 2e11}  # measured by the runner's test; seconds saved here
    with (
        mock.patch.object(decode, "int8_quantizer", return_value=_quantize_layers),
        mock.patch.object(decode, "measure_peaks", return_value=peaks),
    ):
        decode.main(arguments)

    results = json.loads((tmp_path / "decode.json").read_text())
    precisions = {"fp32", "bf16", "int8", "int8+bf16"}
    assert set(results["floors"]) == set(results["fastest"]) == precisions
    for floor in results["floors"].values():
        assert 0 < floor["lm_head_ms"] <= floor["model_ms"]
    # int8 reads a quarter of the layers' bytes (plus scales); the tied head stays float32.
    assert results["floors"]["int8"]["model_mb"] < results["floors"]["fp32"]["model_mb"]
    assert set(results["ratios"]) == {"int8", "bf16"}
    perplexity = results["perplexity"]["perplexity"]
    assert set(perplexity) == precisions
    assert all(1 < value < 200 for value in perplexity.values())  # about the vocabulary's 61
    report = output.read_text()
    for section in ("Weight-read floor", "ms per generated token", "Against fp32", "perplexity"):
        assert section in report
    assert "](DECODE.md)" in (tmp_path / "RESULTS.md").read_text()


def test_the_int8_floor_multiplies_by_the_stored_int8_weight_and_its_scales() -> None:
    """The floor finds a quantized layer's int8 weight and its scales (not its bias, which has
    as many values) whatever their names, and its product is the layer's own."""
    from benchmarks.decode import _int8_pair, _matvecs

    layer = _Int8Linear(torch.nn.Linear(32, 48))
    weight, scales = _int8_pair(layer)
    assert weight is layer.weight_int8 and scales.data_ptr() == layer.scales.data_ptr()
    ((product, nbytes),) = _matvecs(torch.nn.Sequential(layer))
    assert product().shape == (1, 48) and nbytes == 48 * 32 + 48 * 4


def test_tensor_bytes_counts_new_storage_at_its_peak_and_nothing_aliased() -> None:
    """The CPU memory row's counter: a new tensor adds its bytes, an in-place op or a view of
    it adds none, freeing it takes them off, and storage from before the mode never counts."""
    from benchmarks.memory import TensorBytes

    megabyte = 2**20
    existing = torch.zeros(megabyte // 4)
    counter = TensorBytes()
    with counter:
        existing.add_(1)  # in place on storage from before: no new memory
        first = torch.ones(megabyte // 4)  # 1 MB
        first.mul_(2)
        view = first[: megabyte // 8]
        second = first * 3  # 2 MB live
        del first, view
        third = second + 1  # first freed before: 2 MB live again
        del second, third
        fourth = torch.empty(megabyte // 8)  # 0.5 MB
    assert counter.peak == 2 * megabyte
    assert counter.live == megabyte // 2
    assert fourth.numel() == megabyte // 8
