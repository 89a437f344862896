"""The LoRA fine-tuning recipe's work outside the training loop: the base model it starts from
(pretrained first by the bert-mlm recipe when the default one is absent), and the report it
leaves beside the model (``finetune.json``, and the comparison with a run of the other kind,
LoRA against full fine-tuning).

Used by :mod:`scratchformers.recipes.lora`, so it needs the ``[train]`` extra; the package's
own modules never import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from scratchformers.training.console import status
from scratchformers.training.errors import TrainingError
from scratchformers.training.rundir import write_json

BASE_RECIPE = "bert-mlm"
# What a base folder's config.json may say: our BERT, or transformers' (converted on load).
BASE_MODEL_TYPES = ("scratchformers-bert-mlm", "bert")
REPORT_FILE = "finetune.json"
ADAPTER_DIR = "adapter"
COMPARISON_PLOT = "lora_vs_full.png"
MODES = ("lora", "full")
_NAMES = {"lora": "LoRA", "full": "full fine-tuning"}
# The settings two runs must share for their comparison to mean anything: the files (None
# for the generated reviews), how many training and held-out texts, and the seed.
SHARED_DATA = ("dataset", "eval_dataset", "train_reviews", "held_out_reviews", "seed")
# Variables that torchrun / accelerate launch set for the processes they start: a base model
# pretrained from inside such a process runs alone, as one process of its own.
_LAUNCH_VARIABLES = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)


def default_base(preset: str) -> Path:
    """Where the bert-mlm recipe leaves its ``preset`` model by default."""
    return Path("outputs") / f"{BASE_RECIPE}-{preset}"


def prepare_base(base: str | os.PathLike[str] | None, preset: str) -> Path:
    """The folder of the model to fine-tune: ``--init-from`` (``--base``) as given, a local
    folder or a Hub id (downloaded once into the Hub cache), which must hold a BERT and its
    tokenizer; or by default ``outputs/bert-mlm-<preset>``, pretrained first with the bert-mlm
    recipe's ``preset`` when absent. Raises a ``ValueError`` naming the folder and what is
    wrong."""
    if base is not None:
        from scratchformers.training.pretrained import checkpoint_path

        folder = checkpoint_path(str(base), "--init-from")
        check_base(folder, "--init-from (--base)")
        return folder
    folder = default_base(preset)
    if not folder.exists():
        pretrain_base(folder, preset)
    check_base(folder, "the default base (--init-from)")
    return folder


def base_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The config.json of a base (or trained) model folder, as a dictionary."""
    from scratchformers.training.pretrained import checkpoint_config

    return checkpoint_config(Path(folder), "--init-from")


def has_pooler(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` holds BERT's pooler (transformers' ``BertModel``
    and its task models do; a masked LM does not), read from its safetensors files' headers
    without loading a weight. A folder whose weights cannot be listed counts as having one:
    loading it then names the pooler if it is missing."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return True
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:
                names = weights.keys()  # a safe_open handle is not a dict: it lists its names
        except SafetensorError:
            return True  # damaged: loading it names the file and what is wrong with it
        if any(name.endswith("pooler.dense.weight") for name in names):
            return True
    return False


def check_base(folder: Path, name: str) -> None:
    """Raise a ``ValueError`` unless ``folder`` holds a finished BERT model and its tokenizer;
    ``name`` says where the folder came from, for the message."""
    remedy = (
        f"give the folder of a finished {BASE_RECIPE} run (scratchformers train {BASE_RECIPE} "
        f"--output-dir {folder} makes one), a transformers BERT folder or its Hub id"
    )
    if not folder.exists():
        raise ValueError(f"{name} {folder} does not exist; {remedy}")
    if not folder.is_dir():
        raise ValueError(f"{name} {folder} is a file, not a model folder; {remedy}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "run.json").is_file():
            raise ValueError(
                f"{name} {folder} holds a {BASE_RECIPE} run that has not finished (no "
                f"config.json yet); finish it with scratchformers train {BASE_RECIPE} "
                f"--output-dir {folder} --resume"
            )
        raise ValueError(f"{name} {folder} holds no model (no config.json); {remedy}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{name} {folder}: config.json is unreadable ({error})") from error
    if model_type not in BASE_MODEL_TYPES:
        raise ValueError(
            f"{name} {folder} holds a {model_type!r} model; the lora recipe fine-tunes a BERT "
            f"(model_type {' or '.join(repr(t) for t in BASE_MODEL_TYPES)})"
        )
    if not any((folder / file).is_file() for file in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(
            f"{name} {folder} has no tokenizer (no tokenizer.json); the recipe reuses the one "
            "saved with the base model"
        )


def pretrain_base(folder: Path, preset: str) -> None:
    """Pretrain the base model into ``folder`` with the bert-mlm recipe's ``preset``, as a
    process of its own (it has its own Accelerate state, and prints its own progress)."""
    command = [
        sys.executable,
        "-m",
        "scratchformers.bert_mlm.train",
        "--preset",
        preset,
        "--output-dir",
        str(folder),
    ]
    status(
        f"no base model in {folder}: pretraining one first with the {BASE_RECIPE} recipe's "
        f"{preset} preset (python {' '.join(command[1:])})"
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in _LAUNCH_VARIABLES and not key.startswith(("ACCELERATE_", "TORCHELASTIC_"))
    }
    result = subprocess.run(command, env=environment, check=False)
    if result.returncode != 0:
        raise TrainingError(
            f"pretraining the base model into {folder} failed (exit code {result.returncode}; "
            f"its output is above); train it with scratchformers train {BASE_RECIPE} --preset "
            f"{preset} --output-dir {folder}, or give another --base"
        )
    status(f"base model ready in {folder}; now fine-tuning it")


def directory_bytes(folder: Path) -> int:
    """The size on disk of every file in ``folder``, in bytes."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def read_report(folder: Path) -> dict[str, Any]:
    """The ``finetune.json`` of a finished run of the lora recipe in ``folder``, or a
    ``ValueError`` naming what is missing (for ``--compare-with``)."""
    file = folder / REPORT_FILE
    if not folder.is_dir():
        raise ValueError(f"--compare-with {folder} is not a folder; give a finished lora run's")
    if not file.is_file():
        raise ValueError(
            f"--compare-with {folder} holds no {REPORT_FILE}: not a finished run of the lora "
            "recipe (scratchformers train lora [--full] writes one at its end)"
        )
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--compare-with {file} is unreadable ({error})") from error
    if not isinstance(report, dict) or report.get("mode") not in MODES:
        raise ValueError(f"--compare-with {file} is not a lora recipe's report (no mode)")
    return report


def check_comparable(other: dict[str, Any], folder: Path, mode: str, data: dict[str, Any]) -> None:
    """Raise a ``ValueError`` unless ``other`` (the report in ``folder``) is a run of the other
    kind than ``mode`` on the same data (``data``: the values of :data:`SHARED_DATA`)."""
    if other["mode"] == mode:
        other_kind = "--full" if mode == "lora" else "LoRA (without --full)"
        raise ValueError(
            f"--compare-with {folder} is a {mode} run too; compare with a run of the other "
            f"kind ({other_kind})"
        )
    # A report from before --dataset has no "dataset": it was trained on the reviews (None).
    differing = {
        key: (other.get(key), data.get(key))
        for key in SHARED_DATA
        if other.get(key) != data.get(key)
    }
    if differing:
        said = ", ".join(
            f"{key} {theirs} (here {ours})" for key, (theirs, ours) in differing.items()
        )
        raise ValueError(
            f"--compare-with {folder} was trained on other data ({said}); a comparison needs "
            "the same texts: give the same --dataset and --eval-dataset (or "
            "--num-train-reviews and --num-eval-reviews) and --seed"
        )


def write_report(output_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as ``output_dir/finetune.json``; returns the file."""
    file = output_dir / REPORT_FILE
    write_json(file, report)
    return file


def side_by_side(
    report: dict[str, Any], other: dict[str, Any], other_folder: Path
) -> dict[str, Any]:
    """The two runs' figures by mode (``{"lora": ..., "full": ...}``), each with its folder."""
    keys = (
        "accuracy",
        "baseline_accuracy",
        "trainable_parameters",
        "total_parameters",
        "trainable_fraction",
        "adapter_bytes",
        "checkpoint_bytes",
        "wall_time_s",
    )
    this = {key: report.get(key) for key in keys} | {"folder": "this run"}
    that = {key: other.get(key) for key in keys} | {"folder": str(other_folder)}
    return {report["mode"]: this, other["mode"]: that}


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.2f} MB" if value >= 1e6 else f"{value / 1e3:.0f} KB"


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def report_lines(report: dict[str, Any]) -> list[str]:
    """The model card's fine-tuning section: what was fine-tuned how, and the figures, beside
    those of the compared run when there is one."""
    lines = ["## Fine-tuning", ""]
    lora = report.get("lora")
    if lora:
        lines.append(
            f"LoRA on `{report['base']}`: rank {lora['r']}, alpha {lora['lora_alpha']}, dropout "
            f"{lora['lora_dropout']}, on {', '.join(f'`{t}`' for t in lora['target_modules'])}; "
            f"trained in full: {', '.join(f'`{m}`' for m in lora['modules_to_save'])}. The "
            "weights here have the adapter merged in; the adapter alone, in peft's format, is in "
            f'`{ADAPTER_DIR}/` (`peft.PeftModel.from_pretrained(base, "{ADAPTER_DIR}")`).'
        )
    else:
        lines.append(f"Full fine-tuning of `{report['base']}`: every parameter trained.")
    lines.append("")
    runs = report.get("comparison") or {report["mode"]: report | {"folder": "this run"}}
    order = [mode for mode in MODES if mode in runs]
    lines += [
        "| | " + " | ".join(f"{_NAMES[m]} ({runs[m]['folder']})" for m in order) + " |",
        "| --- |" + " --- |" * len(order),
        "| held-out accuracy | " + " | ".join(f"{runs[m]['accuracy']:.1%}" for m in order) + " |",
        "| majority-class baseline | "
        + " | ".join(f"{runs[m]['baseline_accuracy']:.1%}" for m in order)
        + " |",
        "| trainable parameters | "
        + " | ".join(
            f"{runs[m]['trainable_parameters']:,} of {runs[m]['total_parameters']:,} "
            f"({runs[m]['trainable_fraction']:.2%})"
            for m in order
        )
        + " |",
        "| adapter on disk | " + " | ".join(_size(runs[m]["adapter_bytes"]) for m in order) + " |",
        "| full checkpoint on disk | "
        + " | ".join(_size(runs[m]["checkpoint_bytes"]) for m in order)
        + " |",
        "| wall time | " + " | ".join(_time(runs[m]["wall_time_s"]) for m in order) + " |",
        "",
    ]
    by_structure = report.get("accuracy_by_structure") or {}
    if by_structure:
        lines += [
            "Held-out accuracy of this run by how the review is built: "
            + ", ".join(f"{name} {value:.1%}" for name, value in by_structure.items())
            + ".",
            "",
        ]
    return lines


def plot_comparison(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Held-out accuracy of the LoRA and the full fine-tuning run as bars, the majority-class
    baseline as a dashed line, each bar labelled with its trainable share and what it saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [mode for mode in MODES if mode in runs]
    figure, axis = plt.subplots(figsize=(5.2, 3.8), dpi=120)
    accuracies = [runs[mode]["accuracy"] for mode in order]
    colours = {"lora": "tab:blue", "full": "tab:grey"}
    bars = axis.bar(
        [_NAMES[mode] for mode in order], accuracies, color=[colours[mode] for mode in order]
    )
    labels = []
    for mode in order:
        run = runs[mode]
        saved = (
            f"adapter {_size(run['adapter_bytes'])}"
            if run.get("adapter_bytes")
            else f"checkpoint {_size(run['checkpoint_bytes'])}"
        )
        labels.append(f"{run['accuracy']:.1%}\n{run['trainable_fraction']:.1%} trainable\n{saved}")
    axis.bar_label(bars, labels=labels, fontsize=8, padding=2)
    baseline = max(runs[mode]["baseline_accuracy"] for mode in order)
    axis.axhline(baseline, color="black", linestyle="--", linewidth=1)
    axis.text(len(order) - 0.55, baseline, "majority class", va="bottom", ha="right", fontsize=8)
    axis.set_ylim(0, 1.25)
    axis.set_ylabel("held-out accuracy")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
