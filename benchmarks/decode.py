"""Decode speed of our GPT-2 at GPT-2 (124M) shape in fp32, bf16 and int8, against the time it
takes to read its weights once.

    uv run python -m benchmarks.decode                # writes benchmarks/DECODE.md, decode.json
    uv run python -m benchmarks.decode --device cuda
    uv run python -m benchmarks.decode --model-dir outputs/gpt2-tiny --text held-out.txt
    uv run python -m benchmarks.decode --shape tiny --repeats 1 --no-compile --output /tmp/D.md

Generating one token at batch 1 multiplies one vector by every weight matrix of the model, so
its time is bounded below by the time it takes to read those matrices: the *weight-read floor*,
measured here as one matrix-vector product with each 2-D weight of the decoder layers and the
LM head (``W @ x``; ``torch._weight_int8pack_mm`` for int8 weights), reported for the LM head
alone and for the whole model. A precision that stores fewer bytes per weight lowers the
floor, and the decode loop gains from it as far as it is bound by reading weights.

The model is ``scratchformers.gpt2.GPT2LMHeadModel`` with random weights (seed 0) in three
precisions: fp32; bf16 (the weights cast with ``.to(torch.bfloat16)``); int8 (weight-only, by
``scratchformers.core_attention.quantize.quantize_int8``; left out, with a note, where that
module is not installed). Each decodes greedily at batch 1 in each ``generate()`` variant of
the main benchmark (dynamic cache, static cache, static cache + compile), and each precision's
fastest variant is reported, with its ratio to fp32's fastest (goals: int8 at most 0.5 of fp32,
bf16 at most 0.75).

**ms per token** = (time of generating ``--new-tokens`` tokens - time of generating 1) /
(``--new-tokens`` - 1): both runs pay the prompt's prefill and its first token, so the
difference is the decode steps alone. Every workload runs once first (compiling what
compiles; a variant that fails there is reported as failed and not timed); then all
precisions and variants are timed interleaved, and the medians reported.

With ``--model-dir`` (a folder written by ``scratchformers train gpt2``, with its tokenizer)
and ``--text`` (held-out text), the perplexity of that trained model over the text is measured
in each precision, in consecutive blocks of ``--block`` tokens (the model's context by
default; the first token of each block is not predicted), with its difference relative to
fp32 (goal for int8: within 1%).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig

from .__main__ import HERE, generate_variants, machine_info, measure_peaks
from .measure import generate, interleaved_medians
from .report import SIZE_TITLES, output_problem, refresh_index, results_json
from .rows import SIZES, gpt2_row

# Goals of each precision's fastest ms/token against fp32's fastest.
RATIO_GOALS = {"int8": 0.5, "bf16": 0.75}
PERPLEXITY_GOAL = 0.01  # int8's perplexity within 1% of fp32's


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: a run that could not write its report or read its model and
    text stops here, before minutes of measuring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SIZES),
        default="gpt2",
        help="model shape, one of the main benchmark's sizes (default: gpt2, GPT-2 124M)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length (default: 32)")
    parser.add_argument(
        "--new-tokens", type=int, default=64, help="tokens each timed run generates (default: 64)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (default: 7)")
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="leave out the torch.compile'd static-cache variants (faster to run)",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="a trained GPT-2 folder with its tokenizer, for perplexity"
    )
    parser.add_argument("--text", type=Path, help="held-out text for the perplexity")
    parser.add_argument(
        "--block", type=int, help="tokens per perplexity block (default: the model's context)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the Markdown report; its numbers go beside it as <name>.json (default: "
        "benchmarks/DECODE.md, or DECODE-<shape>.md for another shape)",
    )
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: ms/token subtracts a 1-token run")
    if args.prompt < 1 or args.repeats < 1:
        parser.error("--prompt and --repeats must be at least 1")
    if args.prompt + args.new_tokens > SIZES[args.shape]["n_positions"]:
        parser.error(
            f"--prompt + --new-tokens ({args.prompt + args.new_tokens}) exceeds the "
            f"{args.shape} shape's {SIZES[args.shape]['n_positions']} positions"
        )
    if (args.model_dir is None) != (args.text is None):
        parser.error("--model-dir and --text go together: the perplexity needs both")
    if args.model_dir is not None and not (args.model_dir / "config.json").is_file():
        parser.error(f"--model-dir {args.model_dir}: no config.json there (not a model folder)")
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: not a file")
    if args.block is not None and args.block < 2:
        parser.error("--block must be at least 2 tokens")
    if args.output is None:
        suffix = "" if args.shape == "gpt2" else f"-{args.shape}"
        args.output = HERE / f"DECODE{suffix}.md"
    # Checked now rather than after the measurements, which take minutes.
    problem = output_problem(args.output, [results_json(args.output)])
    if problem:
        parser.error(f"--output {args.output}: {problem}")
    return args


def build_model(shape: str, device: torch.device) -> nn.Module:
    """Our GPT-2 at ``shape`` with the main benchmark's gpt2 row weights (seed 0), float32,
    greedy generation."""
    model = gpt2_row(SIZES[shape]).ours.to(device)
    model.generation_config = GenerationConfig(pad_token_id=0, do_sample=False)
    return model


def int8_quantizer() -> Callable[[nn.Module], nn.Module | None] | None:
    """``quantize_int8`` where it is installed, else ``None`` (int8 is then left out)."""
    try:
        from scratchformers.core_attention.quantize import quantize_int8
    except ImportError:
        return None
    return quantize_int8


def in_precisions(
    model: nn.Module, quantize: Callable[[nn.Module], nn.Module | None] | None
) -> dict[str, nn.Module]:
    """``model`` (fp32) and copies of it in bf16 and, where ``quantize`` is given, int8 with
    float32 activations and int8 with bf16 activations (``int8+bf16``: the quantized copy cast
    to bf16, which casts its scales and biases; torch's CPU int8 kernel is vectorised for bf16
    activations).

    Copies are taken before anything runs: a model keeps its compiled decode step, and a copy
    of one would keep calling the original's.
    """
    models = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}
    if quantize is not None:
        quantized = copy.deepcopy(model)
        models["int8"] = quantize(quantized) or quantized  # in place or returned
        quantized = copy.deepcopy(model)
        models["int8+bf16"] = (quantize(quantized) or quantized).to(torch.bfloat16)
    return models


def _int8_pair(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The int8 weight ``(out, in)`` and per-row scales that ``module`` itself stores, or
    ``None``: what ``torch._weight_int8pack_mm`` takes. Found by dtype and shape, since the
    quantized layer's attribute names are its own: the scales are the floating tensor with one
    value per output row, by preference one whose name says "scale" (a bias has that length
    too)."""
    tensors = dict(module.named_parameters(recurse=False)) | dict(
        module.named_buffers(recurse=False)
    )
    weights = [t for t in tensors.values() if t.dtype == torch.int8 and t.dim() == 2]
    if not weights:
        return None
    (weight,) = weights
    candidates = {
        name: t
        for name, t in tensors.items()
        if t.is_floating_point() and t.numel() in weight.shape and name != "bias"
    }
    named = {name: t for name, t in candidates.items() if "scale" in name.lower()}
    if len(named or candidates) != 1:
        raise ValueError(
            f"{type(module).__name__} stores an int8 weight, and the floor cannot tell its "
            f"per-row scales among {sorted(candidates) or 'no tensor'}"
        )
    (scales,) = (named or candidates).values()
    if scales.numel() != weight.shape[0]:  # stored (in, out): the kernel takes (out, in)
        weight = weight.t().contiguous()
    return weight, scales.reshape(-1)


def _matvecs(module: nn.Module) -> list[tuple[Callable[[], object], int]]:
    """One matrix-vector product for each weight matrix in ``module``, with the bytes it reads:
    ``W @ x`` in the weight's dtype, or ``torch._weight_int8pack_mm(x[None], w_int8, scales)``
    with ``x`` in the scales' dtype for a layer that stores int8 weights."""
    products = []
    for leaf in module.modules():
        pair = _int8_pair(leaf)
        if pair is not None:
            weight, scales = pair
            x = torch.randn(1, weight.shape[1], dtype=scales.dtype, device=weight.device)
            products.append(
                (
                    lambda w=weight, s=scales, x=x: torch._weight_int8pack_mm(x, w, s),
                    weight.nbytes + scales.nbytes,
                )
            )
            continue
        weight = getattr(leaf, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.is_floating_point():
            x = torch.randn(weight.shape[1], dtype=weight.dtype, device=weight.device)
            products.append((lambda w=weight, x=x: w @ x, weight.nbytes))
    return products


def weight_reads(model: nn.Module) -> dict[str, tuple[Callable[[], None], int]]:
    """The weight-read floor's workloads of a GPT-2: ``"lm_head"`` and ``"model"`` (every
    decoder layer's matrices and the LM head), each one call that multiplies a vector by every
    matrix in it, with the bytes of weights it reads."""
    head = _matvecs(model.lm_head)
    layers = [product for block in model.transformer.h for product in _matvecs(block)]

    def run_all(products: list[tuple[Callable[[], object], int]]) -> Callable[[], None]:
        def run() -> None:
            for product, _ in products:
                product()

        return run

    return {
        name: (run_all(products), sum(nbytes for _, nbytes in products))
        for name, products in (("lm_head", head), ("model", layers + head))
    }


def runnable(
    workloads: dict[tuple[str, ...], Callable[[], object]], notes: list[str]
) -> dict[tuple[str, ...], Callable[[], object]]:
    """The workloads that run, each run once (compiling what compiles: the warm-up of the
    timing); a failure is noted and its workload left out, so that one precision's or
    variant's failure does not cost the others' numbers."""
    kept = {}
    for key, run in workloads.items():
        try:
            run()
        except Exception as error:  # reported; the other workloads are still measured
            message = f"{' / '.join(key)} failed: {type(error).__name__}: {error}".split("\n")[0]
            print(f"  {message}")
            notes.append(message)
        else:
            kept[key] = run
    return kept


def measure_floors(
    models: dict[str, nn.Module], repeats: int, device: torch.device, notes: list[str]
) -> dict[str, dict[str, float]]:
    """Each precision's weight-read floor in ms, for the LM head and for the whole model, and
    the MB each reads; all timed interleaved."""
    reads = {}
    for precision, model in models.items():
        try:
            reads[precision] = weight_reads(model)
        except ValueError as error:  # an int8 layer stored in a way the floor cannot read
            notes.append(f"{precision} floor not measured: {error}")
    workloads = runnable(
        {
            (precision, part): run
            for precision, parts in reads.items()
            for part, (run, _) in parts.items()
        },
        notes,
    )
    # The floor is short, so it gets more repeats, as the main benchmark's short workloads do.
    seconds = interleaved_medians(workloads, 3 * repeats, device, warmup=0)
    floors: dict[str, dict[str, float]] = {}
    for precision, parts in reads.items():
        if all((precision, part) in seconds for part in parts):
            floors[precision] = {
                "lm_head_ms": seconds[(precision, "lm_head")] * 1e3,
                "model_ms": seconds[(precision, "model")] * 1e3,
                "lm_head_mb": parts["lm_head"][1] / 1e6,
                "model_mb": parts["model"][1] / 1e6,
            }
    return floors


def measure_decode(
    models: dict[str, nn.Module], args: argparse.Namespace, device: torch.device, notes: list[str]
) -> dict[str, dict[str, float]]:
    """ms per generated token of each precision in each ``generate()`` variant (see the module
    docstring), all timed interleaved; a variant that failed, or that timed no slower than its
    1-token run (noise swamping a tiny model's steps), is missing, with a note."""
    prompt = torch.randint(1, SIZES[args.shape]["vocab_size"], (1, args.prompt), device=device)
    variants = generate_variants(device, args.compile)  # the main benchmark's, compile included
    lengths = {"long": args.new_tokens, "short": 1}
    workloads = {
        (precision, variant, length): (
            lambda m=model, o=options, n=tokens: generate(m, prompt, n, **o)
        )
        for precision, model in models.items()
        for variant, options in variants.items()
        for length, tokens in lengths.items()
    }
    print("running each workload once (compiling the compiled variants) ...")
    workloads = runnable(workloads, notes)
    # Both lengths of a variant, or neither: one without the other gives no ms/token.
    workloads = {
        key: run
        for key, run in workloads.items()
        if all((*key[:2], length) in workloads for length in lengths)
    }
    print(f"timing {len(workloads)} workloads, {args.repeats} repeats ...")
    seconds = interleaved_medians(workloads, args.repeats, device, warmup=0)
    per_token: dict[str, dict[str, float]] = {precision: {} for precision in models}
    for precision, variant, length in seconds:
        if length == "long":
            steps = seconds[(precision, variant, "long")] - seconds[(precision, variant, "short")]
            if steps > 0:
                per_token[precision][variant] = steps / (args.new_tokens - 1) * 1e3
            else:
                notes.append(
                    f"{precision} / {variant}: {args.new_tokens} tokens timed no slower than 1 "
                    "(noise); not reported, more --repeats may help"
                )
    return per_token


def fastest(per_token: dict[str, dict[str, float]]) -> dict[str, dict[str, object]]:
    """Each precision's fastest variant and its ms/token."""
    best = {}
    for precision, variants in per_token.items():
        if variants:
            variant = min(variants, key=variants.__getitem__)
            best[precision] = {"variant": variant, "ms": variants[variant]}
    return best


def perplexities(
    model_dir: Path,
    text: Path,
    block: int | None,
    quantize: Callable[[nn.Module], nn.Module | None] | None,
    device: torch.device,
) -> dict[str, object]:
    """Perplexity of the trained model in ``model_dir`` over ``text`` in each precision, and its
    difference relative to fp32: ``exp`` of the mean next-token loss over consecutive blocks of
    ``block`` tokens, the loss taken on float32 logits whatever the precision."""
    from scratchformers.gpt2 import GPT2LMHeadModel
    from scratchformers.training.pretrained import load_checkpoint_processor

    tokenizer = load_checkpoint_processor(model_dir)
    if tokenizer is None:
        raise SystemExit(f"--model-dir {model_dir}: no tokenizer saved there")
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval().to(device)
    context = model.config.n_positions
    block = min(block or context, context)
    ids = torch.tensor(tokenizer(text.read_text(), verbose=False)["input_ids"], device=device)
    if ids.numel() < 2:
        raise SystemExit(f"--text {text}: fewer than 2 tokens, nothing to predict")
    blocks = [ids[start : start + block] for start in range(0, ids.numel(), block)]
    blocks = [b for b in blocks if b.numel() >= 2]  # a 1-token tail predicts nothing
    values = {}
    for precision, candidate in in_precisions(model, quantize).items():
        total, count = 0.0, 0
        with torch.no_grad():
            for tokens in blocks:
                logits = candidate(tokens[None]).logits[0, :-1].float()
                loss = nn.functional.cross_entropy(logits, tokens[1:], reduction="sum")
                total += float(loss)
                count += tokens.numel() - 1
        values[precision] = math.exp(total / count)
        print(f"  perplexity in {precision}: {values[precision]:.4f}")
    relative = {p: (v - values["fp32"]) / values["fp32"] for p, v in values.items()}
    return {
        "model_dir": str(model_dir),
        "text": str(text),
        "tokens": int(ids.numel()),
        "block": block,
        "perplexity": values,
        "relative_to_fp32": relative,
    }


def main(argv: list[str] | None = None) -> None:
    """Measure the peaks, floors, ms/token and (with a trained model) perplexities, print them
    and write the report and its numbers."""
    args = parse_arguments(argv)
    device = torch.device(args.device)
    notes: list[str] = []
    peaks = measure_peaks(device)
    quantize = int8_quantizer()
    if quantize is None:
        note = (
            "int8 left out: scratchformers.core_attention.quantize.quantize_int8 is not installed"
        )
        print(note)
        notes.append(note)
    models = in_precisions(build_model(args.shape, device), quantize)
    print("measuring the weight-read floors ...")
    floors = measure_floors(models, args.repeats, device, notes)
    per_token = measure_decode(models, args, device, notes)
    best = fastest(per_token)
    ratios = {
        # A goal's precision races in every form it comes in: int8 is int8 or int8+bf16.
        goal: min(best[p]["ms"] for p in best if p.split("+")[0] == goal) / best["fp32"]["ms"]
        for goal in RATIO_GOALS
        if goal in best and "fp32" in best
    }
    perplexity = None
    if args.model_dir is not None:
        print(f"perplexity of {args.model_dir} over {args.text} ...")
        perplexity = perplexities(args.model_dir, args.text, args.block, quantize, device)
    else:
        notes.append("perplexity not measured: give --model-dir and --text")
    results = {
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "machine": machine_info(device),
        "peaks": peaks,
        "floors": floors,
        "variants": list(generate_variants(device, args.compile)),
        "ms_per_token": per_token,
        "fastest": best,
        "ratios": ratios,
        "perplexity": perplexity,
        "notes": notes,
    }
    print_summary(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(results))
    saved = results_json(args.output)
    saved.write_text(json.dumps(results, indent=1) + "\n")
    refresh_index(args.output.parent)
    print(f"wrote {args.output} and {saved.name}")


def _ms(value: float | None) -> str:
    """Milliseconds for a table, or "n/a" for what was not timed."""
    return "n/a" if value is None else f"{value:.3f}"


def _goal(name: str, value: float) -> str:
    """Whether ``name``'s ratio to fp32, ``value``, meets its goal, in words."""
    return "met" if value <= RATIO_GOALS[name] else "not met"


def print_summary(results: dict[str, object]) -> None:
    """The floors, ms/token, ratios and notes, on the terminal."""
    floors, per_token = results["floors"], results["ms_per_token"]
    print(
        f"{'precision':10s} {'head floor':>11s} {'model floor':>12s} {'best ms/token':>14s}  variant"
    )
    for precision in per_token:
        floor = floors.get(precision, {})
        best = results["fastest"].get(precision)
        print(
            f"{precision:10s} {_ms(floor.get('lm_head_ms')):>11s} {_ms(floor.get('model_ms')):>12s} "
            f"{_ms(best and best['ms']):>14s}  {best['variant'] if best else 'not timed'}"
        )
    for name, value in results["ratios"].items():
        print(
            f"{name}/fp32 fastest: {value:.2f} (goal <= {RATIO_GOALS[name]}: {_goal(name, value)})"
        )
    for note in results["notes"]:
        print(f"note: {note}")


def report(results: dict[str, object]) -> str:
    """DECODE.md: the machine, the floors, ms/token of every variant, the ratios and the
    perplexities."""
    settings = results["settings"]
    shape = settings["shape"]
    per_token = results["ms_per_token"]
    precisions = list(per_token)
    floors, best = results["floors"], results["fastest"]
    command = f"--shape {shape} --device {settings['device']}" + (
        "" if settings["compile"] else " --no-compile"
    )
    lines = [
        f"# Decode at {SIZE_TITLES.get(shape, f'{shape} shape')}: fp32, bf16 and int8 weights",
        "",
        f"Produced by `uv run python -m benchmarks.decode` (`{command}`). Our "
        "`scratchformers.gpt2` GPT2LMHeadModel with random weights (seed 0), batch 1, greedy, "
        f"a {settings['prompt']}-token prompt. **ms per token** = (time of generating "
        f"{settings['new_tokens']} tokens - time of generating 1) / {settings['new_tokens'] - 1}: "
        "the prefill cancels out. Medians of "
        f"{settings['repeats']} repeats, every precision and variant interleaved in one run. "
        "bf16: the weights cast to bfloat16; int8: weight-only int8 "
        "(`scratchformers.core_attention.quantize.quantize_int8`).",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in results["machine"].items()],
        *[
            f"| {name} matmul peak (measured in this run) | {peak / 1e9:,.0f} GFLOP/s |"
            for name, peak in results["peaks"].items()
        ],
        "",
        "## Weight-read floor",
        "",
        "One matrix-vector product with every weight matrix of the decoder layers and the LM "
        "head, in the precision's dtype (`torch._weight_int8pack_mm` for int8): what one "
        "decode step cannot beat where reading the weights bounds it.",
        "",
        "| precision | weights read (MB) | LM head floor (ms) | whole-model floor (ms) "
        "| fastest ms/token | fastest / floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for precision in precisions:
        floor = floors.get(precision)
        fast = best.get(precision)
        if floor is None:
            lines.append(
                f"| {precision} | | not timed | not timed | {_ms(fast and fast['ms'])} | |"
            )
            continue
        over = f"{fast['ms'] / floor['model_ms']:.2f}" if fast else ""
        lines.append(
            f"| {precision} | {floor['model_mb']:,.2f} | {floor['lm_head_ms']:.3f} | "
            f"{floor['model_ms']:.3f} | {_ms(fast and fast['ms'])} | {over} |"
        )
    variants = results["variants"]
    lines += [
        "",
        "## ms per generated token",
        "",
        "The `generate()` variants of the main benchmark (`python -m benchmarks`); each "
        "precision's fastest in bold; the notes say why a variant was not timed.",
        "",
        "| variant | " + " | ".join(precisions) + " |",
        "| --- |" + " ---: |" * len(precisions),
    ]
    for variant in variants:
        cells = []
        for precision in precisions:
            value = per_token[precision].get(variant)
            cell = "not timed" if value is None else f"{value:.3f}"
            if best.get(precision, {}).get("variant") == variant:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Against fp32",
        "",
        "| fastest against fp32's fastest | ratio | goal | |",
        "| --- | ---: | ---: | --- |",
    ]
    for name in RATIO_GOALS:
        value = results["ratios"].get(name)
        if value is None:  # this precision or fp32 not timed
            lines.append(f"| {name} | not measured | at most {RATIO_GOALS[name]} | |")
            continue
        # The form of the precision that set the ratio (int8 or int8+bf16) and its variant.
        form = min((p for p in best if p.split("+")[0] == name), key=lambda p: best[p]["ms"])
        lines.append(
            f"| {form} ({best[form]['variant']}) | {value:.2f} | at most {RATIO_GOALS[name]} | "
            f"{_goal(name, value)} |"
        )
    lines += ["", "## Held-out perplexity", ""]
    perplexity = results["perplexity"]
    if perplexity is None:
        lines.append("Not measured: give `--model-dir` (a trained GPT-2) and `--text`.")
    else:
        lines += [
            f"The model in `{perplexity['model_dir']}` over `{perplexity['text']}` "
            f"({perplexity['tokens']:,} tokens, blocks of {perplexity['block']}). Goal: int8 "
            f"within {PERPLEXITY_GOAL:.0%} of fp32.",
            "",
            "| precision | perplexity | relative to fp32 |",
            "| --- | ---: | ---: |",
        ]
        for precision, value in perplexity["perplexity"].items():
            relative = perplexity["relative_to_fp32"][precision]
            lines.append(f"| {precision} | {value:.4f} | {relative:+.2%} |")
    if results["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
