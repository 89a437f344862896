"""What a run leaves for people to read: metrics, a loss curve, its segments, a model card.

A run that is stopped and continued with ``--resume`` is several *segments*, one per start of
the command. Each records the command that started it, the optimizer steps it contributed
(from its start step to its end step), its number of processes and its wall time; run.json's
summary and the model card list them all, with the totals.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoints import STATE_FILE
from .data import hub_dataset_id
from .rundir import write_text_atomically

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
# Where a card's loading snippet points until the folder has a place of its own; a push hands
# the repository id instead (scratchformers.core_attention.hub.FOLDER_PLACEHOLDER, spelled out
# here so that this module stays without torch).
CARD_FOLDER = "path/to/this/folder"
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


class MetricsLog:
    """Metrics as JSON lines, one record per log or eval step, in ``metrics.jsonl``."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        """On resume, drop what the interrupted run logged after its last checkpoint."""
        kept = [record for record in self.read() if record["step"] <= step]
        write_text_atomically(self.path, "".join(json.dumps(record) + "\n" for record in kept))

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


def plot_confusion_matrix(
    counts: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> None:
    """A classifier's confusion matrix as a PNG: ``counts[true][predicted]`` held-out
    examples, one row per true class and one column per predicted class, both labelled with
    ``class_names``. Each cell is shaded by the share of its row (so a rare class reads as
    clearly as a common one) and, for up to 20 classes, shows its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(counts, dtype=np.int64)
    classes = len(class_names)
    if matrix.shape != (classes, classes):
        raise ValueError(f"a confusion matrix of {classes} classes is {classes}x{classes}")
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.55 * classes + 2.5), 20.0)
    figure, axis = plt.subplots(figsize=(side + 1.0, side), dpi=120)
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(classes)
    axis.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    axis.set_yticks(ticks, labels=list(class_names))
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title)
    if classes <= 20:
        for true in ticks:
            for predicted in ticks:
                colour = "white" if shares[true, predicted] > 0.5 else "black"
                axis.text(
                    predicted,
                    true,
                    str(matrix[true, predicted]),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=8,
                )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def command_line(
    argv: Sequence[str] | None = None,
    main_module: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The command that started this process, rebuilt from ``sys.argv`` to be typed again.

    The console script shows as ``scratchformers train basicformer --max-steps 30``, a module
    run as ``python -m scratchformers.basicformer.train ...``. A process started by
    ``accelerate launch`` (or torchrun) sees only the module and its flags, never the
    launcher's own (``--config_file``, ``--num_processes``): those show as a literal ``...``,
    as in ``accelerate launch ... -m scratchformers.basicformer.train --max-steps 6``.
    ``argv``, ``main_module`` (what ``-m`` ran; "" for nothing) and ``environ`` default to this
    process's.
    """
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ if environ is None else environ
    if main_module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        main_module = spec.name if spec is not None else None
    program, flags = (argv[0] if argv else ""), [shlex.quote(flag) for flag in argv[1:]]
    # Every word below but the flags is already shell-safe; "..." marks what is not known.
    needs_python = True
    if main_module:
        # Run with -m: Python has put the module's file path in argv[0] instead of "-m <module>".
        invocation = ["-m", main_module.removesuffix(".__main__")]
    elif program == "-c":
        invocation = ["-c", "..."]  # the code itself is not in argv
    elif program == "":
        invocation = []  # an interactive session or a script read from stdin
    elif program.endswith(".py"):
        invocation = [shlex.quote(program)]
    else:
        # A console script (scratchformers, pytest): its name, not the virtualenv's path to it.
        invocation, needs_python = [shlex.quote(Path(program).name)], False
    if "ACCELERATE_MIXED_PRECISION" in environ:  # set by every launcher of accelerate launch
        launcher = ["accelerate", "launch", "..."]
    elif "TORCHELASTIC_RUN_ID" in environ:
        launcher = ["torchrun", "..."]
    else:
        launcher = ["python"] if needs_python else []
    return " ".join([*launcher, *invocation, *flags])


def resume_command() -> str:
    """The command that continues this run: :func:`command_line` with ``--resume`` (and
    without ``--overwrite``, which would start it over)."""
    words = [word for word in command_line().split(" ") if word != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return " ".join(words)


def _now() -> datetime:
    return datetime.now(UTC)


def segments_at_start(
    run_file: Path,
    checkpoint: Path | None,
    *,
    command: str,
    num_processes: int,
    started_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """The segments of a run as one more starts: the earlier ones, then this one (running).

    ``checkpoint`` is the one this segment resumes from (``None``: a fresh start, which keeps
    nothing of an earlier run). The earlier segments come from the ``run_file`` the previous
    segment left. One still marked running there never reached its end: it was killed or
    crashed. It becomes ``interrupted``; its end step is the step of ``checkpoint`` (what it
    did after that checkpoint was lost and is done again by this segment), and its wall time
    runs from its start to when that checkpoint was saved, or is ``None`` when it saved no
    checkpoint of its own (nothing it did was kept; how long it ran is not known).
    """
    started_at = started_at or _now()
    current = {
        "command": command,
        "num_processes": num_processes,
        "started_at": started_at.isoformat(timespec="milliseconds"),
        "start_step": 0,
        "end_step": None,
        "wall_time_s": None,
        "status": "running",
    }
    if checkpoint is None:
        return [current]
    state_file = checkpoint / STATE_FILE
    resume_step = json.loads(state_file.read_text())["step"]
    current["start_step"] = resume_step
    previous: dict[str, Any] = json.loads(run_file.read_text()) if run_file.is_file() else {}
    # A finished run keeps its segments in the summary; one that was stopped, at the top level.
    earlier = previous.get("summary", {}).get("segments") or previous.get("segments")
    if earlier is None:
        # A run.json from before segments were recorded: one segment, nothing known of it.
        earlier = [{"command": None, "start_step": 0, "end_step": resume_step, "status": "unknown"}]
    saved_at = datetime.fromtimestamp(state_file.stat().st_mtime, UTC)
    segments = []
    for segment in earlier:
        if segment["start_step"] > resume_step:
            continue  # it only did work past the checkpoint, all of it redone now
        segment = dict(segment)
        if segment["status"] == "running":
            segment["status"] = "interrupted"
            segment["end_step"] = resume_step
            began = datetime.fromisoformat(segment["started_at"])
            saved_its_own = segment["start_step"] < resume_step and saved_at >= began
            segment["wall_time_s"] = (saved_at - began).total_seconds() if saved_its_own else None
        else:
            # Steps past the checkpoint resumed from (a newer one was removed) do not count.
            segment["end_step"] = min(segment["end_step"], resume_step)
        segments.append(segment)
    return [*segments, current]


def finish_segments(
    segments: list[dict[str, Any]], end_step: int, wall_time_s: float
) -> dict[str, Any]:
    """Close the running (last) segment at ``end_step`` after ``wall_time_s`` seconds; the
    segments and their totals, for run.json's summary.

    ``total_steps`` adds up the steps each segment contributed, which is the run's final
    step. ``total_wall_time_s`` adds up the known wall times; ``unknown_time_segments``
    counts the segments whose time is not known (see :func:`segments_at_start`), so the total
    is a lower bound when it is not 0.
    """
    *earlier, current = segments
    current = {
        **current,
        "end_step": max(end_step, current["start_step"]),
        "wall_time_s": wall_time_s,
        "status": "finished",
    }
    segments = [*earlier, current]
    return {
        "segments": segments,
        "total_steps": sum(s["end_step"] - s["start_step"] for s in segments),
        "total_wall_time_s": sum(s["wall_time_s"] or 0.0 for s in segments),
        "unknown_time_segments": sum(s["wall_time_s"] is None for s in segments),
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value < 10:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _model_card_data(
    *,
    model_name: str,
    recipe: str,
    pipeline_tag: str | None,
    license: str | None,
    dataset: str | None,
    final_metrics: dict[str, float],
    init_from: str | None = None,
) -> ModelCardData:
    """The card's YAML metadata: what the Hub indexes, filters and shows beside the text."""
    hub_dataset = hub_dataset_id(dataset)
    eval_results = None
    if pipeline_tag is not None and final_metrics:
        # The model-index needs a task and a dataset. Local data has no Hub id: "local" names
        # no dataset on the Hub, so the Hub links nothing to it.
        if hub_dataset:
            dataset_name = hub_dataset
        else:
            dataset_name = "local data" if dataset else f"the {recipe} recipe's default data"
        eval_results = [
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=hub_dataset or "local",
                dataset_name=f"{dataset_name} (held-out part)",
                metric_type=name,
                metric_name=name.replace("_", " "),
                # Four decimals: what the text shows, without float noise in the metadata.
                metric_value=round(float(value), 4),
            )
            for name, value in final_metrics.items()
        ]
    return ModelCardData(
        library_name="transformers",  # saved with save_pretrained, loaded with the Auto classes
        pipeline_tag=pipeline_tag,
        license=license,
        datasets=[hub_dataset] if hub_dataset else None,
        # The Hub links a fine-tuning to its base model by id; a local folder has none.
        base_model=hub_model_id(init_from),
        metrics=list(final_metrics) or None,
        tags=["scratchformers", recipe],
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
    )


def hub_model_id(source: str | None) -> str | None:
    """``source`` when ``--init-from`` named a Hugging Face Hub model by its id, else ``None``
    (nothing, or a local folder or file): what a model card may list as its base model."""
    if source is None or Path(source).expanduser().exists():
        return None
    return hub_dataset_id(source)


def _markdown_code(text: str) -> str:
    # Inline code in a table cell: a "|" would end the cell, even between backticks.
    return "`" + text.replace("|", "\\|") + "`"


def _training_section(settings: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    segments = summary["segments"]
    examples = settings["batch_size"] * settings["grad_accum"]
    # In order, each count once: "1, then 2 processes" when a resume changed the count.
    processes = list(dict.fromkeys(s["num_processes"] for s in segments if s.get("num_processes")))
    on = ", then ".join(map(str, processes)) or "?"
    on += " process" if processes == [1] else " processes"
    total_time = _seconds(summary["total_wall_time_s"])
    if summary["unknown_time_segments"]:
        total_time = f"at least {total_time}"
    lines = ["## Training", ""]
    if len(segments) == 1:
        lines += ["Command:", "", "```", segments[0]["command"], "```", ""]
    else:
        lines += [
            f"Stopped and resumed: {len(segments)} segments, one per start of the command.",
            "",
            "| segment | command | steps | processes | wall time | ended |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for number, segment in enumerate(segments, 1):
            command = segment["command"]
            lines.append(
                f"| {number} | {_markdown_code(command) if command else 'not recorded'} "
                f"| {segment['start_step']} to {segment['end_step']} "
                f"| {segment.get('num_processes') or '?'} | {_seconds(segment['wall_time_s'])} "
                f"| {segment['status']} |"
            )
        lines += [
            "",
            "An interrupted segment counts up to the checkpoint the next one resumed from, "
            "its time up to when that checkpoint was saved.",
            "",
        ]
    if any(" ... " in (segment["command"] or "") for segment in segments):
        lines += [
            "`...` stands for the launcher's own flags (such as `--config_file`), which the "
            "training processes do not see.",
            "",
        ]
    lines += [
        f"- **Steps**: {summary['total_steps']} optimizer steps of {settings['batch_size']} x "
        f"{settings['grad_accum']} = {examples} examples, in {total_time} on {on}",
        f"- **Learning rate**: peak {settings['lr']} after {settings['warmup_steps']} warmup "
        f"steps, {settings['schedule']} schedule; weight decay {settings['weight_decay']}, "
        f"gradient clipping at {settings['max_grad_norm']}",
        f"- **Precision**: {_precision(settings, summary.get('ran', {}))}; seed {settings['seed']}",
        "",
    ]
    return lines


def _precision(settings: dict[str, Any], ran: dict[str, Any]) -> str:
    """The card's line on the precision: what ran, why, and whether the model was compiled."""
    names = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
    text = f"{names.get(settings['mixed_precision'], settings['mixed_precision'])}"
    if ran.get("mixed_precision_reason"):
        text += f" ({ran['mixed_precision_reason']})"
    if settings.get("compile"):
        text += "; compiled with torch.compile"
    return text


def _registering_import(recipe: str, model_type: str | None) -> list[str]:
    """The import that registers the saved model with transformers' Auto classes, as a line
    of the card's code: the package of a ``scratchformers-<package>`` model type, none for a
    model type of transformers itself, the recipe's package when the model type is unknown."""
    if model_type is None:
        package = recipe
    elif model_type.startswith("scratchformers-"):
        package = model_type.removeprefix("scratchformers-")
    else:
        return []
    return [f"import scratchformers.{package.replace('-', '_')}  # registers the model classes"]


def write_model_card(
    path: Path,
    *,
    model_name: str,
    recipe: str,
    preset: str,
    auto_class: str,
    processor_class: str = "AutoTokenizer",
    pipeline_tag: str | None,
    license: str | None,
    data_description: str,
    settings: dict[str, Any],
    summary: dict[str, Any],
    samples: list[str],
    figures: Mapping[str, Path | str] | None = None,
    sections: list[str] | None = None,
    model_type: str | None = None,
    trained_from_scratch: bool = True,
) -> ModelCard:
    """The README.md beside the saved model, as the Hugging Face Hub reads and shows it.

    YAML metadata (``ModelCardData``: library, task, tags, Hub dataset, metrics and the final
    eval metrics as model-index results) above a text saying what was trained on what, with
    which command(s) and settings, for how many steps and how long (over every segment of a
    resumed run), how the eval loss moved, samples, the loss curve, and how to load it.
    ``summary`` is run.json's (with :func:`finish_segments`'s keys); ``figures`` are more
    images beside the loss curve (by what they show, paths relative to the card), and
    ``processor_class`` the Auto class that loads the saved processor. ``sections`` are the
    recipe's own Markdown lines, after the results. ``model_type`` (the saved config's) names
    the package whose import registers the model (``scratchformers-bert-mlm``:
    ``scratchformers.bert_mlm``; none for a model type of transformers itself); without it,
    the recipe's package. ``trained_from_scratch=False`` says "Fine-tuned"; a run with ``--init-from`` says from what
    (and a Hub id is the card's ``base_model``). Returns the card.
    """
    final_metrics = summary.get("final_metrics") or {}
    data = _model_card_data(
        model_name=model_name,
        recipe=recipe,
        pipeline_tag=pipeline_tag,
        license=license,
        dataset=(settings.get("recipe_options") or {}).get("dataset"),
        final_metrics=final_metrics,
        init_from=(settings.get("recipe_options") or {}).get("init_from"),
    )
    init_from = (settings.get("recipe_options") or {}).get("init_from")
    how = "Trained from scratch" if trained_from_scratch else "Fine-tuned"
    if init_from:
        how = f"Fine-tuned from {_markdown_code(str(init_from))}"
    first, last = summary.get("first_eval_loss"), summary.get("final_eval_loss")
    processor_name = "tokenizer" if processor_class == "AutoTokenizer" else "processor"
    lines = [
        f"# {model_name}",
        "",
        f"{how} with scratchformers: recipe `{recipe}`, preset `{preset}`.",
        "",
        "## Data",
        "",
        data_description,
        "",
        *_training_section(settings, summary),
        "## Results",
        "",
        f"- **Parameters**: {summary['parameters']:,}"
        + (
            f" ({summary['trainable_parameters']:,} trainable)"
            if summary.get("trainable_parameters", summary["parameters"]) != summary["parameters"]
            else ""
        ),
    ]
    shown = set()
    if first is not None and last is not None:
        lines.append(f"- **Eval loss**: {first:.3f} before training, {last:.3f} after.")
        shown.add("eval_loss")
    lines += [
        f"- **{name}**: {value:.4g}" for name, value in final_metrics.items() if name not in shown
    ]
    lines += ["", "![loss curve](loss_curve.png)", ""]
    for name, figure in (figures or {}).items():
        lines += [f"![{name}]({Path(figure).as_posix()})", ""]
    lines += sections or []
    if samples:
        lines += ["## Samples (greedy)", ""]
        lines += [f"- `{sample!r}`" for sample in samples]
        lines.append("")
    lines += [
        "## Use",
        "",
        "```python",
        f"from transformers import {auto_class}, {processor_class}",
        *_registering_import(recipe, model_type),
        "",
        f'model = {auto_class}.from_pretrained("{CARD_FOLDER}")',
        f'{processor_name} = {processor_class}.from_pretrained("{CARD_FOLDER}")',
        "```",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(path)
    return card


def write_export_card(
    out: Path,
    *,
    source: Path,
    format_name: str,
    library_name: str,
    usage: Sequence[str],
) -> ModelCard:
    """The README.md of an export, written into ``out``: the card of the run in ``source``,
    turned into the card of the export.

    The run's metadata stays where it still holds, since the weights are the run's: license,
    datasets, base model, pipeline tag, tags, metrics and model-index results (measured on the
    run's model before the export); ``library_name`` becomes the export's. The text says
    that this is an export, in which format and of which run, and shows the export's own
    loading snippet, from the format's ``usage(out)`` lines: lines that start with a space are
    code (with an ``import`` of each module they call by name), the others prose, and ``out``
    itself reads ``path/to/this/folder``. Below it, the
    run's card follows without its own "Use" section (which loads the run's folder, not this
    one), the figures it shows copied beside it. A run without a card gives the export a
    card of the export alone. Returns the card.
    """
    run_card = source / "README.md"
    if run_card.is_file():
        loaded = ModelCard.load(run_card)
        data, body = loaded.data, loaded.text
    else:
        data, body = ModelCardData(tags=["scratchformers"]), ""
    data.library_name = library_name
    title, run_sections = _run_card_parts(body)
    name = title or source.name
    prose = [line for line in usage if line and not line[0].isspace()]
    code = [line.strip() for line in usage if line[:1].isspace()]
    lines = [
        f"# {name} ({format_name} export)",
        "",
        f"An export of the scratchformers model `{name}` (the run folder `{source.name}`) "
        f"for {library_name}, written by `scratchformers export --format {format_name}`. The "
        "weights are the run's; the results in the metadata and below were measured on the "
        "run's model before the export.",
        "",
        "## Use",
        "",
        *[_replace_folder(line, out) for line in prose],
        "",
    ]
    if code:
        # The usage lines call modules by name (transformers.pipeline(...)); a card's snippet
        # is copied whole, so it imports them first unless it does so itself.
        modules = dict.fromkeys(
            match[1] for line in code if (match := re.match(r"([A-Za-z_]\w*)\.", line))
        )
        imports = [f"import {module}" for module in modules if f"import {module}" not in code]
        imports += [""] if imports else []
        lines += ["```python", *imports, *[_replace_folder(line, out) for line in code], "```", ""]
    if run_sections:
        lines += ["## The run", "", *run_sections, ""]
    for figure in _IMAGE_LINK.findall("\n".join(run_sections)):
        _copy_figure(source, out, figure)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).rstrip() + "\n")
    card.save(out / "README.md")
    return card


def _run_card_parts(body: str) -> tuple[str | None, list[str]]:
    """A run card's title, and its lines after the title without its "Use" section, each
    heading one level down (they sit under the export card's "The run")."""
    title, kept, skipping = None, [], False
    for line in body.strip().splitlines():
        if title is None and line.startswith("# "):
            title = line[2:].strip()
            continue
        if line.startswith("## "):
            skipping = line[3:].strip() == "Use"
        if skipping:
            continue
        kept.append("#" + line if line.startswith("##") else line)
    while kept and not kept[0].strip():
        kept.pop(0)
    return title, kept


def _replace_folder(line: str, out: Path) -> str:
    # The usage lines name the folder they were asked about, a path on this machine.
    return line.replace(str(out), CARD_FOLDER)


def _copy_figure(source: Path, out: Path, link: str) -> None:
    """Copy the image a card shows at ``link`` from ``source`` into ``out``, when it is a file
    of the run folder itself (never a URL, an absolute path or one outside it)."""
    relative = Path(link)
    if "://" in link or relative.is_absolute() or ".." in relative.parts:
        return
    if (source / relative).is_file() and not (out / relative).exists():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, out / relative)
