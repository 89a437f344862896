"""What ``--compile`` gives a training step, and what it costs to compile.

    uv run python -m benchmarks.compile_training
    uv run python -m benchmarks.compile_training --shapes tiny --precision fp32

Times one training step (forward, backward, AdamW) of our GPT-2 eagerly and compiled in place
(``model.compile()``, as ``--compile`` does), interleaved, in float32 and under bf16 autocast,
at the gpt2 tiny preset's shape (width 128, 2 layers, 16 x 64 tokens) and at a medium shape
(width 512, 6 layers, 8 x 256 tokens). Prints tokens/s of each, their ratio, and the seconds
the first compiled steps took (the compiler's cost, paid once per run).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

from .measure import interleaved_medians, training_step

# name -> (width, layers, heads, batch, length)
SHAPES = {"tiny": (128, 2, 4, 16, 64), "medium": (512, 6, 8, 8, 256)}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compile_training", description=__doc__
    )
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument(
        "--precision", nargs="+", choices=sorted(PRECISIONS), default=list(PRECISIONS)
    )
    parser.add_argument("--repeats", type=int, default=7)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    device = torch.device("cpu")
    print(
        f"{'shape':8s} {'precision':9s} {'eager tok/s':>12s} {'compiled':>10s} {'ratio':>6s}  compile s"
    )
    for shape in args.shapes:
        width, layers, heads, batch, length = SHAPES[shape]
        config = GPT2Config(
            vocab_size=2048, n_positions=length, n_embd=width, n_layer=layers, n_head=heads
        )
        ids = torch.randint(0, config.vocab_size, (batch, length))
        inputs = {"input_ids": ids, "labels": ids}
        for precision in args.precision:
            torch.manual_seed(0)
            models = {"eager": GPT2LMHeadModel(config).train()}
            models["compiled"] = GPT2LMHeadModel(config).train()
            models["compiled"].compile()
            optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
            steps = {
                name: functools.partial(
                    training_step,
                    model,
                    optimizers[name],
                    inputs,
                    autocast_dtype=PRECISIONS[precision],
                )
                for name, model in models.items()
            }
            started = time.perf_counter()
            for _ in range(2):  # the forward-and-backward graphs, then the steady state
                steps["compiled"]()
            compile_seconds = time.perf_counter() - started
            seconds = interleaved_medians(steps, args.repeats, device)
            rates = {name: batch * length / s for name, s in seconds.items()}
            print(
                f"{shape:8s} {precision:9s} {rates['eager']:12,.0f} {rates['compiled']:10,.0f} "
                f"{rates['compiled'] / rates['eager']:6.2f}  {compile_seconds:.0f}",
                flush=True,
            )
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
