"""What a run leaves for people to read: metrics, a loss curve, and a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"


class MetricsLog:
    """Metrics as JSON lines, one record per log or eval step, in ``metrics.jsonl``."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        """On resume, drop what the interrupted run logged after its last checkpoint."""
        kept = [record for record in self.read() if record["step"] <= step]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training and evaluation loss against the optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evaluation = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", alpha=0.8)
    if evaluation:
        axis.plot(*zip(*evaluation, strict=True), "o-", label="eval loss", color="tab:orange")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_model_card(
    path: Path,
    *,
    model_name: str,
    recipe: str,
    preset: str,
    auto_class: str,
    data_description: str,
    settings: dict[str, Any],
    summary: dict[str, Any],
    samples: list[str],
) -> None:
    """A short README.md beside the saved model: what was trained, on what, for how long."""
    first, last = summary.get("first_eval_loss"), summary.get("final_eval_loss")
    lines = [
        f"# {model_name}",
        "",
        f"Trained from scratch with `scratchformers train {recipe} --preset {preset}`.",
        "",
        f"- **Data**: {data_description}",
        f"- **Training**: {summary['steps']} optimizer steps of {settings['batch_size']} x "
        f"{settings['grad_accum']} examples, peak learning rate {settings['lr']}, "
        f"{settings['schedule']} schedule, {summary['num_processes']} process(es), "
        f"mixed precision `{settings['mixed_precision']}`, {summary['wall_time_s']:.0f} s.",
        f"- **Parameters**: {summary['parameters']:,}",
    ]
    if first is not None and last is not None:
        lines.append(f"- **Eval loss**: {first:.3f} before training, {last:.3f} after.")
    for name, value in summary.get("final_metrics", {}).items():
        lines.append(f"- **{name}**: {value:.4g}")
    lines += ["", "![loss curve](loss_curve.png)", ""]
    if samples:
        lines += ["## Samples (greedy)", ""]
        lines += [f"- `{sample!r}`" for sample in samples]
        lines.append("")
    lines += [
        "## Use",
        "",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        f"import scratchformers.{recipe.replace('-', '_')}  # registers the model classes",
        "",
        f'model = {auto_class}.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
