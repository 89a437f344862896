"""The settings of a training run: command-line flags on top of the recipe's preset."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .precision import AUTO, MIXED_PRECISION
from .recipe import Recipe

SCHEDULES = ("cosine", "linear", "constant")
# The TrainingSettings fields that no loop flag sets: a recipe flag may use these names.
NOT_FLAGS = frozenset({"recipe", "model", "recipe_options", "resume_from"})
# The argparse dest of a model flag: "model:<option>", apart from loop and recipe flags.
MODEL_DEST = "model:"


@dataclass
class TrainingSettings:
    """Everything the loop needs to know; built by :func:`parse_settings`.

    ``batch_size`` is the global batch of one forward pass, split evenly across the processes
    (so it must divide by their number); an optimizer step sees ``batch_size * grad_accum``
    examples whatever the number of processes.
    """

    recipe: str
    preset: str
    output_dir: Path
    max_steps: int = 200
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 20
    schedule: str = "cosine"
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    # "auto": bf16 autocast where it is fast for this model on this machine, else float32
    # (precision.choose_mixed_precision); the loop replaces it with what really runs.
    mixed_precision: str = AUTO
    # torch.compile the model for training (Accelerate's dynamo_backend="inductor").
    compile: bool = False
    # Recompute each layer's activations in the backward pass instead of keeping them: less
    # memory for a longer step, the same gradients.
    gradient_checkpointing: bool = False
    eval_every: int = 50
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = False
    # A checkpoint folder to resume from (``--resume PATH``); None: the newest in output_dir.
    resume_from: Path | None = None
    overwrite: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    # The values of the recipe's own flags (Recipe.add_arguments), by dest.
    recipe_options: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> argparse.Namespace:
        """The recipe's options by name: the preset's model options with the shape flags over
        them (``model``) and the recipe's own flags (``recipe_options``), as one namespace
        (``settings.options.hidden_size``, ``settings.options.dataset``), each value of the
        type its flag or preset gave it. A recipe flag left unset (None) that shares its name
        with a model option keeps the preset's value (``--augment`` over a preset's
        ``augment``)."""
        given = {
            name: value
            for name, value in self.recipe_options.items()
            if value is not None or name not in self.model
        }
        return argparse.Namespace(**{**self.model, **given})

    def to_dict(self) -> dict[str, Any]:
        resume_from = None if self.resume_from is None else str(self.resume_from)
        return {**asdict(self), "output_dir": str(self.output_dir), "resume_from": resume_from}

    def check(self) -> None:
        """Raise a ``ValueError`` naming the flag when a setting cannot work."""
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"--mixed-precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if self.resume and self.overwrite:
            raise ValueError(
                "--resume continues the run in --output-dir and --overwrite starts it over; "
                "give one of them"
            )


def _launch_config_precision() -> str:
    """The default of ``--mixed-precision``: an ``accelerate launch`` config's bf16 or fp16
    (the launcher passes it as ``ACCELERATE_MIXED_PRECISION``), else auto. The launcher passes
    ``no`` when its config says nothing, so ``no`` there is not taken as a choice: give
    ``--mixed-precision no`` to force float32."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    return launched if launched in ("bf16", "fp16") else AUTO


def build_parser(recipe: Recipe, prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``scratchformers train <recipe>`` and ``python -m scratchformers.<pkg>.train``."""
    presets = ", ".join(
        f"{name} ({preset.training.get('max_steps', '?')} steps)"
        for name, preset in recipe.presets.items()
    )
    preset_values = recipe.presets[recipe.default_preset].training
    field_defaults = {f.name: f.default for f in fields(TrainingSettings)}

    def default(name: str) -> str:
        if name in preset_values:
            return f" (preset {recipe.default_preset}: {preset_values[name]})"
        return f" (default: {field_defaults[name]})"

    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{recipe.description} Runs on a CPU, one GPU or many: start it with "
        "`accelerate launch` for several processes. Flags not given come from the preset.",
    )
    add = parser.add_argument
    add(
        "--preset",
        choices=sorted(recipe.presets),
        default=recipe.default_preset,
        help=f"model size and training defaults: {presets} (default: {recipe.default_preset})",
    )
    add(
        "--output-dir",
        type=Path,
        default=None,
        help="where the model, checkpoints, metrics and plot go (default: outputs/<recipe>-<preset>)",
    )
    add("--max-steps", type=int, help="optimizer steps" + default("max_steps"))
    add(
        "--batch-size",
        type=int,
        help="global batch per forward pass, split across processes" + default("batch_size"),
    )
    add("--grad-accum", type=int, help="forward passes per optimizer step" + default("grad_accum"))
    add("--lr", type=float, help="peak learning rate" + default("lr"))
    add("--warmup-steps", type=int, help="linear warmup steps" + default("warmup_steps"))
    add(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate decay after warmup" + default("schedule"),
    )
    add(
        "--weight-decay",
        type=float,
        help="AdamW weight decay, not applied to norms and biases" + default("weight_decay"),
    )
    add("--max-grad-norm", type=float, help="gradient clipping norm" + default("max_grad_norm"))
    add("--seed", type=int, default=0, help="seed for weights, data order and dropout (default: 0)")
    add(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        default=_launch_config_precision(),
        help="auto: bf16 autocast where the hardware computes bf16 natively (AMX or "
        "AVX512-BF16 CPUs, bf16 GPUs) and the model is wide enough for it to pay, else "
        "float32; no: float32; bf16; fp16 (GPUs only). The run prints what it picked and why "
        "(default: an accelerate launch config's bf16 or fp16, else auto)",
    )
    add(
        "--compile",
        action="store_true",
        default=None,
        help="compile the model with torch.compile (inductor) for training: the first steps "
        "wait for the compiler, later ones may run faster (default: off)",
    )
    add(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="keep only each layer's input in the forward pass and recompute the rest in the "
        "backward pass: activation memory shrinks from every layer's to one layer's, for "
        "about a third more compute per step; the gradients are the same (default: off)",
    )
    add("--eval-every", type=int, help="evaluate every N optimizer steps" + default("eval_every"))
    add("--save-every", type=int, help="checkpoint every N optimizer steps" + default("save_every"))
    add(
        "--keep-checkpoints",
        type=int,
        help="how many checkpoints to keep" + default("keep_checkpoints"),
    )
    add(
        "--log-every",
        type=int,
        help="log training metrics every N optimizer steps" + default("log_every"),
    )
    add(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in --output-dir from its newest usable checkpoint, or from the "
        "checkpoint folder given",
    )
    add(
        "--overwrite",
        action="store_true",
        help="start over in an --output-dir that holds an earlier run, deleting its checkpoints "
        "and metrics (without --resume or --overwrite such a folder is left untouched)",
    )
    if recipe.model_flags:
        model = parser.add_argument_group("model shape (over the preset's)")
        model_values = recipe.presets[recipe.default_preset].model
        for flag, spec in recipe.model_flags.items():
            preset_value = model_values.get(spec.option, "none")
            model.add_argument(
                flag,
                dest=MODEL_DEST + spec.option,
                metavar={int: "N", float: "X"}.get(spec.type, "VALUE"),
                type=spec.type,
                help=f"{spec.help} (preset {recipe.default_preset}: {preset_value})",
            )
    add_starting_point_and_data_arguments(recipe, parser)
    recipe.add_arguments(parser)
    return parser


def add_starting_point_and_data_arguments(recipe: Recipe, parser: argparse.ArgumentParser) -> None:
    """The flags every recipe shares for fine-tuning on the user's files: ``--init-from``,
    ``--dataset``, ``--eval-dataset`` and ``--eval-fraction`` (the recipe reads them as
    ``settings.options.init_from`` and so on; its own column flags come from its
    ``add_arguments``)."""
    start = parser.add_argument_group("starting point")
    start.add_argument(
        "--init-from",
        *recipe.init_from_aliases,
        dest="init_from",
        default=None,
        metavar="CHECKPOINT",
        help=f"fine-tune from a pretrained checkpoint: {recipe.init_from_formats}; its "
        "tokenizer or image processor is used when it has one (default: train from scratch)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        help=f"the training data: {recipe.dataset_formats}",
    )
    data.add_argument(
        "--eval-dataset",
        default=None,
        help="held-out data in the same format (default: --eval-fraction of --dataset)",
    )
    data.add_argument(
        "--eval-fraction",
        type=float,
        default=recipe.default_eval_fraction,
        help="share of --dataset held out when there is no --eval-dataset, chosen by a hash "
        f"of each example's content (default: {recipe.default_eval_fraction})",
    )


def parse_settings(
    recipe: Recipe, argv: list[str] | None = None, prog: str | None = None
) -> TrainingSettings:
    """Parse the flags; anything not given comes from the preset, then from the defaults.

    Every flag that is not the loop's own belongs to the recipe and lands, default or given,
    in ``settings.recipe_options``.
    """
    arguments = vars(build_parser(recipe, prog).parse_args(argv))
    preset = recipe.presets[arguments["preset"]]
    model = dict(preset.model)
    for dest in [k for k in arguments if k.startswith(MODEL_DEST)]:
        value = arguments.pop(dest)
        if value is not None:
            option = dest.removeprefix(MODEL_DEST)
            flag = next(f for f, spec in recipe.model_flags.items() if spec.option == option)
            # Sizes and counts; ratios, names and switches are checked by the model's config.
            if type(value) is int and value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
            model[option] = value
    resume = arguments.pop("resume")
    loop_flags = {f.name for f in fields(TrainingSettings)} - NOT_FLAGS
    recipe_options = {k: v for k, v in arguments.items() if k not in loop_flags}
    unknown = set(preset.training) - loop_flags
    if unknown:
        raise ValueError(
            f"preset {arguments['preset']!r} sets unknown training fields {sorted(unknown)}"
        )
    values = {
        **preset.training,
        **{k: v for k, v in arguments.items() if v is not None and k in loop_flags},
    }
    values["output_dir"] = (
        arguments["output_dir"] or Path("outputs") / f"{recipe.name}-{arguments['preset']}"
    )
    settings = TrainingSettings(
        recipe=recipe.name,
        model=model,
        recipe_options=recipe_options,
        resume=resume is not False,
        resume_from=None if isinstance(resume, bool) else Path(resume),
        **values,
    )
    settings.check()
    return settings
