"""Speed and memory of our models against transformers' with the same weights.

    uv run python -m benchmarks                       # small models, CPU, writes benchmarks/RESULTS.md
    uv run python -m benchmarks --precision bf16      # the same under bf16 autocast: RESULTS-bf16.md
    uv run python -m benchmarks --size gpt2           # GPT-2 (124M) shape: RESULTS-gpt2.md
    uv run python -m benchmarks --device cuda --size gpt2-medium
    uv run python -m benchmarks --rows gpt2 --no-compile   # quick: no torch.compile variants
    uv run python -m benchmarks --rows vit            # measure one row, keep the others' numbers

Every row loads identical weights into ours and into transformers' class, then measures, with
the two sides interleaved: forward throughput, a training step (forward + backward + AdamW),
``generate()`` tokens/s at batch 1 and 8 with the cache (same variant on both sides, and each
side's fastest variant against the other's: dynamic cache, static cache, and static cache with
``torch.compile`` through transformers' ``compile_config``, which our models run through their
lean decode loop, ``scratchformers.core_attention.decoding``), peak memory of a training step, model FLOPs
utilisation against the machine's matmul peak measured in the same run, and the cost of
one generated token as the context grows, with and without the cache.

Every run also times identical work, the gpt2 row's training step against an exact copy of
itself, in a round before every row and after the last (``IdenticalWork``): how far from 1.0
this run's noise alone moves a ratio. The report gives those ratios and shades 1 +/- the
farthest of them in its plot, so that a row at parity is not read as a gap or a lead.

``--precision bf16`` runs all of that under ``torch.autocast(device, dtype=torch.bfloat16)`` on
both sides, with the same float32 weights (what mixed-precision training runs; the training
step's backward runs outside autocast), and measures MFU against the bf16 matmul peak. Both
peaks are measured in every run and reported.

Each shape and precision has its own report, so that one run never overwrites another's: by
default ``RESULTS.md`` (small, fp32), ``RESULTS-bf16.md``, ``RESULTS-gpt2.md``,
``RESULTS-gpt2-bf16.md``... in ``benchmarks/``, each with its numbers (``results.json``,
``results-bf16.json``...) and plots named after it. RESULTS.md begins with links to the other
reports in its folder, ``DECODE.md`` (``python -m benchmarks.decode``) among them.

The numbers of every run are kept beside the report: a run of some rows replaces those rows
and keeps the others as they were measured (when they were measured with the same settings:
shape, precision, batch...), so that a new package's row joins the report without measuring
every other row again. The report says which rows come from an earlier run, with its date and
matmul peak. ``--output`` is checked before anything is measured: a folder, a path that is not
``.md`` or one that cannot be written stops the run at once.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from .measure import (
    PRECISIONS,
    autocast,
    forward,
    forward_method,
    generate,
    interleaved_medians,
    matmul_peak_flops,
    training_step,
)
from .memory import training_step_peak_mb
from .report import output_problem, plot_paths, results_json, write_report
from .rows import ROWS, SIZES, Row

HERE = Path(__file__).parent


@dataclass
class Results:
    """Everything measured, for the report."""

    settings: dict[str, object]
    machine: dict[str, str]
    peak_flops: float  # the matmul peak of the run's precision, which MFU is measured against
    # Every matmul peak measured in the run, by precision ("fp32", "bf16").
    peaks: dict[str, float] = field(default_factory=dict)
    speed: list[dict[str, object]] = field(default_factory=list)
    mfu: list[dict[str, object]] = field(default_factory=list)
    growth: list[dict[str, object]] = field(default_factory=list)
    # Rows kept from earlier runs -> that run's machine (with its "peak_flops").
    earlier: dict[str, dict[str, object]] = field(default_factory=dict)
    # The ratios of identical work timed in this run (see IdenticalWork): the machine's noise.
    noise: dict[str, object] = field(default_factory=dict)

    def keep_earlier_rows(self, path: Path) -> None:
        """Add the rows of the earlier run saved at ``path`` that this run did not measure,
        when it measured with the same settings (apart from the rows and the output)."""
        if not path.is_file():
            return
        earlier = json.loads(path.read_text())
        compared = ("rows", "output")
        # Runs from before --precision existed measured in float32.
        earlier["settings"].setdefault("precision", "fp32")
        if {k: v for k, v in earlier["settings"].items() if k not in compared} != {
            k: v for k, v in self.settings.items() if k not in compared
        }:
            print(f"not keeping the rows of {path}: they were measured with other settings")
            return
        measured = set(self.settings["rows"])
        machines = earlier.get("earlier", {})
        for name in earlier["settings"]["rows"]:
            if name in measured:
                continue
            for kind in ("speed", "mfu", "growth"):
                getattr(self, kind).extend(e for e in earlier[kind] if e["row"] == name)
            self.earlier[name] = machines.get(
                name, earlier["machine"] | {"peak_flops": earlier["peak_flops"]}
            )
        self.settings["rows"] = sorted(measured | set(self.earlier))
        for kind in ("speed", "mfu", "growth"):
            getattr(self, kind).sort(key=lambda e: e["row"])  # stable: workloads keep their order

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")


def default_output(size: str, precision: str) -> Path:
    """``benchmarks/RESULTS.md`` for the small shape in fp32; other shapes and precisions get
    their own file (``RESULTS-gpt2.md``, ``RESULTS-bf16.md``, ``RESULTS-gpt2-bf16.md``...)."""
    tags = [tag for tag, default in ((size, "small"), (precision, "fp32")) if tag != default]
    return HERE / f"{'-'.join(['RESULTS', *tags])}.md"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="small", help="model shape (default: small)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS))
    parser.add_argument(
        "--batch", type=int, default=4, help="batch of the forward and training rows"
    )
    parser.add_argument("--length", type=int, default=128, help="sequence length of those rows")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length for generate()")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generate() adds")
    parser.add_argument(
        "--repeats",
        type=int,
        default=11,
        help="timed repeats of generate() (at least) and of the growth rows (default: 11)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="the forward and training-step timings repeat until each side has run about this "
        "long (at least 15 and at most 200 times; default: 10)",
    )
    parser.add_argument(
        "--generate-seconds",
        type=float,
        default=4.0,
        help="the generate() timings repeat until the slowest variant has run about this long "
        "(at least --repeats times; default: 4)",
    )
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="leave out the torch.compile'd static-cache generate() variants (faster to run)",
    )
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="fp32",
        help="fp32, or bf16 autocast on both sides over the same float32 weights (default: fp32)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the Markdown report; its numbers and plots go beside it (default: "
        "benchmarks/RESULTS.md, or RESULTS-<size>-<precision>.md for another shape or precision)",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = default_output(args.size, args.precision)
    # Checked now rather than when the report is written, after every row was measured.
    problem = output_problem(
        args.output, [results_json(args.output), *plot_paths(args.output).values()]
    )
    if problem:
        parser.error(f"--output {args.output}: {problem}")
    return args


def machine_info(device: torch.device) -> dict[str, str]:
    """The date, machine and versions a report's numbers were measured with."""
    info = {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu threads": str(torch.get_num_threads()),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def timed_for_long(
    workloads: dict[str, Callable[[], object]], args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Median seconds of the short workloads (forward, encoders, training step): each side runs
    for about ``args.seconds`` in all, and at least 15 times. They are cheap, and on a noisy
    machine their medians need many repeats (see ``interleaved_medians``). Two warm-up rounds:
    the first step of a fresh model allocates its gradients and optimizer state, and would
    make the estimate of a step's time too long."""
    return interleaved_medians(
        workloads, max(args.repeats, 15), device, warmup=2, seconds=args.seconds
    )


def speed_rows(
    row: Row, args: argparse.Namespace, device: torch.device, peak: float, results: Results
) -> None:
    """Forward, encoders, training step, memory and ``generate()`` of both sides of ``row``,
    all in ``args.precision`` (under bf16 autocast for bf16); MFU against ``peak``."""
    sides = {"ours": row.ours, "theirs": row.theirs}
    inputs = row.inputs(args.batch, args.length, device)
    items = row.items(args.batch, args.length)
    rate = f"{row.unit}/s"

    forward_models = {side: row.forward_model(side) for side in sides}
    with autocast(device, args.precision):
        seconds = timed_for_long(
            {s: lambda m=m: forward(m, inputs) for s, m in forward_models.items()}, args, device
        )
    add_speed(results, row, "forward", rate, {s: items / t for s, t in seconds.items()})
    flops = row.forward_flops(args.batch, args.length)
    results.mfu.append(
        {
            "row": row.name,
            "ours": flops / seconds["ours"] / peak,
            "theirs": flops / seconds["theirs"] / peak,
            "ours_gflops": flops / seconds["ours"] / 1e9,
            "theirs_gflops": flops / seconds["theirs"] / 1e9,
        }
    )

    for name, (method, keys) in row.encoders().items():
        arguments = {key: inputs[key] for key in keys}
        methods = {s: getattr(m, method) for s, m in sides.items()}
        with autocast(device, args.precision):
            seconds = timed_for_long(
                {s: lambda f=f, a=arguments: forward_method(f, a) for s, f in methods.items()},
                args,
                device,
            )
        add_speed(results, row, name, rate, {s: items / t for s, t in seconds.items()})

    trainees = {s: copy.deepcopy(m).train() for s, m in sides.items()}
    optimizers = {s: torch.optim.AdamW(m.parameters(), lr=1e-4) for s, m in trainees.items()}
    training_inputs = row.training_inputs(inputs)
    dtype = PRECISIONS[args.precision]  # autocast around the forward and loss only
    seconds = timed_for_long(
        {
            s: lambda s=s: training_step(trainees[s], optimizers[s], training_inputs, dtype)
            for s in trainees
        },
        args,
        device,
    )
    add_speed(results, row, "training step", rate, {s: items / t for s, t in seconds.items()})
    # The first step of a fresh copy: gradients and the optimizer's state are allocated in it.
    memory = {
        side: training_step_peak_mb(model, training_inputs, device, args.precision)
        for side, model in sides.items()
    }
    if all(memory.values()):
        add_speed(results, row, "training step peak memory", "MB", memory, lower_is_better=True)

    if not row.generative:
        return
    for generate_batch in (1, 8):
        prompt = torch.randint(1, row.vocab_size, (generate_batch, args.prompt), device=device)
        new = args.new_tokens * generate_batch
        variants = generate_variants(device, args.compile) | row.extra_generate_variants()
        workloads = {
            (side, variant): (
                lambda m=model, o=options, p=prompt: generate(m, p, args.new_tokens, **o)
            )
            for variant, options in variants.items()
            for side, model in sides.items()
        }
        with autocast(device, args.precision):
            # Two warm-up rounds: the first compiles the compiled variants, and would make the
            # estimate of a call's time far too long.
            seconds = interleaved_medians(
                workloads, args.repeats, device, warmup=2, seconds=args.generate_seconds
            )
        rate = {key: new / t for key, t in seconds.items()}
        add_speed(
            results,
            row,
            f"generate batch {generate_batch} (dynamic cache)",
            "tokens/s",
            {s: rate[(s, "dynamic cache")] for s in sides},
        )
        for variant in variants:
            if variant != "dynamic cache":
                add_speed(
                    results,
                    row,
                    f"generate batch {generate_batch} ({variant})",
                    "tokens/s",
                    {s: rate[(s, variant)] for s in sides},
                )
        raced = generate_variants(device, args.compile)  # the cache variants, not beam search
        best = {s: max((rate[(s, v)], v) for v in raced) for s in sides}
        add_speed(
            results,
            row,
            f"generate batch {generate_batch}, best against best",
            "tokens/s",
            {s: best[s][0] for s in sides},
            variants={s: best[s][1] for s in sides},
        )


def generate_variants(device: torch.device, compile: bool) -> dict[str, dict[str, object]]:
    """The ``generate()`` options raced on both sides, by name.

    Both sides get the same options. With ``compile``: transformers' ``CompileConfig`` as it
    stands (CUDA graphs on a GPU, inductor's default mode on a CPU) and, on a CPU, the same with
    inductor's C++ wrapper, so that each side's best compiled setting is in the race.
    """
    variants: dict[str, dict[str, object]] = {
        "dynamic cache": {},
        "static cache": {"cache_implementation": "static"},
    }
    if not compile:
        return variants
    variants["static cache + compile"] = {
        "cache_implementation": "static",
        "compile_config": compile_config(device),
    }
    if device.type == "cpu":
        variants["static cache + compile (C++ wrapper)"] = {
            "cache_implementation": "static",
            "compile_config": compile_config(device, options={"cpp_wrapper": True}),
        }
    return variants


def compile_config(
    device: torch.device, options: dict[str, object] | None = None
) -> transformers.CompileConfig:
    """transformers' compile settings for generate(); on a CPU its auto-compile is off unless
    asked for through this private flag (it only compiles on GPUs and TPUs by default)."""
    mode = None if options else "default" if device.type == "cpu" else "reduce-overhead"
    config = transformers.CompileConfig(fullgraph=True, dynamic=False, mode=mode, options=options)
    config._compile_all_devices = True
    return config


def add_speed(
    results: Results,
    row: Row,
    workload: str,
    unit: str,
    values: dict[str, float],
    lower_is_better: bool = False,
    variants: dict[str, str] | None = None,
) -> None:
    ratio = (
        values["theirs"] / values["ours"] if lower_is_better else values["ours"] / values["theirs"]
    )
    results.speed.append(
        {
            "row": row.name,
            "workload": workload,
            "unit": unit,
            "ours": values["ours"],
            "theirs": values["theirs"],
            "ratio": ratio,
            "variants": variants or {},
        }
    )
    print(
        f"  {row.name:12s} {workload:45s} ours {values['ours']:12,.1f}  theirs {values['theirs']:12,.1f} {unit:9s} ratio {ratio:.2f}"
    )


def growth_rows(row: Row, args: argparse.Namespace, device: torch.device, results: Results) -> None:
    """Seconds per generated token at growing context, with and without the cache (ours), in
    ``args.precision``."""
    steps = 8
    limit = row.ours.config.max_position_embeddings - steps
    for context in sorted({min(c, limit) for c in (64, 128, 256, 512, 1024)}):
        prompt = torch.randint(1, row.vocab_size, (1, context), device=device)
        per_token = {}
        for label, use_cache in (("with cache", True), ("without cache", False)):
            with autocast(device, args.precision):
                seconds = interleaved_medians(
                    {
                        "long": lambda u=use_cache, p=prompt: generate(
                            row.ours, p, steps, use_cache=u
                        ),
                        "short": lambda u=use_cache, p=prompt: generate(
                            row.ours, p, 1, use_cache=u
                        ),
                    },
                    max(3, args.repeats // 2),
                    device,
                )
            per_token[label] = max(seconds["long"] - seconds["short"], 0.0) / (steps - 1)
        results.growth.append({"row": row.name, "context": context, **per_token})
        print(
            f"  {row.name:12s} context {context:5d}: {per_token['with cache'] * 1e3:7.2f} ms/token with cache, "
            f"{per_token['without cache'] * 1e3:7.2f} without"
        )


class IdenticalWork:
    """How far from 1.0 the ratio of two equal sides lands in this run: the gpt2 row's model
    against an exact copy of itself, its training step timed as a row's is (interleaved, for
    as long, in ``args.precision``). A row whose ratio lies within 1 +/- the farthest of these
    is at parity within the machine's noise, neither behind nor ahead.

    One round is timed before every row and one after the last, at least three in all, so
    that the band covers the whole run: the noise of a shared machine changes over minutes
    (three rounds at the start of a run once read 0.996-0.999, while training steps that run
    the same ops as transformers' read 0.98-0.99 later in that run).

    Measured at the small shape at most: a bigger one only takes longer (a GPT-2 124M step
    takes seconds), and the noise is the machine's, not the model's."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.size = args.size if args.size in ("tiny", "small") else "small"
        row = ROWS["gpt2"](SIZES[self.size])
        inputs = row.training_inputs(row.inputs(args.batch, args.length, device))
        dtype = PRECISIONS[args.precision]
        copies = {side: copy.deepcopy(row.ours).to(device).train() for side in ("first", "second")}
        optimizers = {s: torch.optim.AdamW(m.parameters(), lr=1e-4) for s, m in copies.items()}
        self.steps = {
            s: lambda s=s: training_step(copies[s], optimizers[s], inputs, dtype) for s in copies
        }
        self.ratios: list[float] = []

    def round(self) -> None:
        """Time one more round."""
        seconds = timed_for_long(self.steps, self.args, self.device)
        self.ratios.append(seconds["second"] / seconds["first"])
        print(f"identical work: ratio {self.ratios[-1]:.3f}")

    def summary(self) -> dict[str, object]:
        """What the report shows: the workload and every round's ratio, in the run's order."""
        return {
            "workload": f"gpt2 training step ({self.size} shape), a copy against itself",
            "ratios": self.ratios,
        }


def measure_peaks(device: torch.device) -> dict[str, float]:
    """The fp32 and bf16 matmul peaks of ``device``, measured now, in FLOP/s."""
    peaks = {}
    for name in ("fp32", "bf16"):
        print(f"measuring the {name} matmul peak on {device} ...")
        peaks[name] = matmul_peak_flops(device, dtype=PRECISIONS[name] or torch.float32)
        print(f"  {peaks[name] / 1e9:,.0f} GFLOP/s")
    return peaks


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    peaks = measure_peaks(device)
    peak = peaks[args.precision]
    results = Results(
        settings=vars(args) | {"output": str(args.output)},
        machine=machine_info(device),
        peak_flops=peak,
        peaks=peaks,
    )
    identical = IdenticalWork(args, device)
    for _ in range(max(0, 3 - len(args.rows) - 1)):  # at least three rounds in all
        identical.round()
    for name in args.rows:
        identical.round()
        # transformers' models share one compiled wrapper (utils/generic.py): without a reset,
        # each row's compiled generate() recompiles that one wrapper, and a few rows in, dynamo's
        # recompile limit (8) fails the run (the bf16 run did at gpt2, the sixth row).
        torch._dynamo.reset()
        row = ROWS[name](SIZES[args.size])
        row.ours.to(device)
        row.theirs.to(device)
        for model in (row.ours, row.theirs):
            model.generation_config = row.generation_config()
        print(f"{name}: ours against {row.reference}")
        speed_rows(row, args, device, peak, results)
        if row.generative:
            growth_rows(row, args, device, results)
    identical.round()
    results.noise = identical.summary()
    saved = results_json(args.output)
    results.keep_earlier_rows(saved)
    write_report(results, args.output)
    results.save(saved)
    print(
        f"wrote {args.output}, {saved.name} and the plots; median ratio "
        f"{statistics.median(r['ratio'] for r in results.speed):.2f}"
    )


if __name__ == "__main__":
    main()
