"""Where bf16 autocast starts to pay for training on this machine.

    uv run python -m benchmarks.precision_crossover
    uv run python -m benchmarks.precision_crossover --widths 128 256 512 --tokens 2048

Times one training step (forward, backward, AdamW) of our GPT-2 at growing widths, in float32
and under bf16 autocast (what ``--mixed-precision bf16`` runs), interleaved, and prints the
speed-up of each width with the machine's fp32 and bf16 matmul peaks measured in the same run.
Small matmuls cost their per-op overhead whatever the precision, and autocast adds casts of
every weight on every step, so a narrow model gains nothing from bf16 and may lose. The width
where the speed-up passes 1 is what ``--mixed-precision auto`` uses
(:data:`scratchformers.training.precision.BF16_MIN_HIDDEN_SIZE`).
"""

from __future__ import annotations

import argparse

import torch

from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

from .measure import interleaved_medians, matmul_peak_flops, training_step


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision_crossover", description=__doc__
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 192, 256, 384, 512])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per training step")
    parser.add_argument("--repeats", type=int, default=7)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    device = torch.device("cpu")
    torch.manual_seed(0)
    fp32_peak = matmul_peak_flops(device)
    bf16_peak = matmul_peak_flops(device, dtype=torch.bfloat16)
    print(f"matmul peaks: fp32 {fp32_peak / 1e9:,.0f} GFLOP/s, bf16 {bf16_peak / 1e9:,.0f} GFLOP/s")
    batch = max(1, args.tokens // args.length)
    print(f"training step of {batch} x {args.length} tokens, {args.layers} layers")
    print(f"{'width':>6} {'fp32 tok/s':>11} {'bf16 tok/s':>11} {'bf16/fp32':>10}")
    for width in args.widths:
        config = GPT2Config(
            vocab_size=2048,
            n_positions=args.length,
            n_embd=width,
            n_layer=args.layers,
            n_head=max(1, width // 64),
        )
        models = {name: GPT2LMHeadModel(config).train() for name in ("fp32", "bf16")}
        optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
        ids = torch.randint(0, config.vocab_size, (batch, args.length))
        inputs = {"input_ids": ids, "labels": ids}

        dtypes = {"fp32": None, "bf16": torch.bfloat16}  # bf16: autocast around the forward
        steps = {
            name: lambda m=model, o=optimizers[name], d=dtypes[name], i=inputs: training_step(
                m, o, i, autocast_dtype=d
            )
            for name, model in models.items()
        }
        seconds = interleaved_medians(steps, args.repeats, device)
        rates = {name: batch * args.length / s for name, s in seconds.items()}
        print(
            f"{width:6d} {rates['fp32']:11,.0f} {rates['bf16']:11,.0f} "
            f"{rates['bf16'] / rates['fp32']:10.2f}"
        )


if __name__ == "__main__":
    main()
