"""The training loop, written once for every recipe, on top of ``accelerate.Accelerator``.

Accelerate is the distributed engine: the same code runs as one process, as N CPU processes,
on N GPUs, on several machines, or sharded with FSDP, depending only on how it is launched
(``accelerate launch --config_file ...``). Nothing here talks to ``torch.distributed``.

One run: check the settings and the output folder, build the data, the model and the optimizer
(the recipe's part), then optimizer steps on the recipe's loss with gradient accumulation,
clipping and a warmup schedule; evaluation with the recipe's metrics, logging and atomic
checkpoints every N steps; at the end the model saved with ``save_pretrained`` beside its
tokenizer, a model card, metrics and a loss-curve PNG.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from . import checkpoints
from .recipe import EvalResults, Recipe, RecipeData
from .reporting import (
    PLOT_FILE,
    MetricsLog,
    command_line,
    finish_segments,
    plot_losses,
    segments_at_start,
    write_model_card,
)
from .settings import TrainingSettings

RUN_FILE = "run.json"


class TrainingError(RuntimeError):
    """Training had to stop; the message says why, at which step, and what was kept."""


@dataclass
class TrainingResult:
    output_dir: Path
    steps: int
    first_eval_loss: float | None
    final_metrics: dict[str, float]
    samples: list[str]
    wall_time_s: float


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal on two processes means identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prepare_output_dir(settings: TrainingSettings, model_options: dict[str, Any]) -> None:
    """Refuse an output folder that holds a different model; start a fresh run otherwise.

    Same recipe and model options: a ``--resume`` continues, anything else starts over (the
    old checkpoints and metrics are removed). A folder with another run or another model in it
    is an error, so nothing of someone else's is overwritten.
    """
    output_dir = settings.output_dir
    run_file = output_dir / RUN_FILE
    identity = {"recipe": settings.recipe, "model": model_options}
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        previous_identity = {"recipe": previous.get("recipe"), "model": previous.get("model")}
        if previous_identity != identity:
            raise ValueError(
                f"--output-dir {output_dir} holds a different model (recipe "
                f"{previous.get('recipe')!r}, preset {previous.get('preset')!r}, other model "
                "options); choose another --output-dir"
            )
    elif (output_dir / "config.json").is_file() or checkpoints.checkpoint_dir(output_dir).is_dir():
        raise ValueError(
            f"--output-dir {output_dir} holds a model that scratchformers did not train; "
            "choose another --output-dir"
        )


class Trainer:
    """One training run. ``run()`` does everything; the methods are its steps in order."""

    def __init__(self, recipe: Recipe, settings: TrainingSettings) -> None:
        settings.check()
        self.recipe = recipe
        self.settings = settings
        self.accelerator = Accelerator(
            # Without a GPU (or other accelerator), say so: Accelerate then runs the processes
            # of a multi-process launch on the CPU over gloo instead of falling back to one.
            cpu=not torch.accelerator.is_available(),
            gradient_accumulation_steps=settings.grad_accum,
            mixed_precision=settings.mixed_precision,
            log_with="tensorboard",
            project_dir=str(settings.output_dir),
            # One global batch per step, split across processes: the data order and the
            # examples per optimizer step do not depend on how many processes there are.
            dataloader_config=DataLoaderConfiguration(
                split_batches=True, use_seedable_sampler=True
            ),
        )
        processes = self.accelerator.num_processes
        if settings.batch_size % processes:
            raise ValueError(
                f"--batch-size {settings.batch_size} does not divide across {processes} "
                f"processes; use a multiple of {processes}"
            )
        prepare_output_dir(settings, settings.model)
        self.metrics = MetricsLog(settings.output_dir)
        # This start of the command is one segment of the run; with --resume, the earlier ones
        # come from the run.json the previous segment left, read before _start rewrites it.
        # The checkpoint is the one _start resumes from: the newest complete one.
        self.segments = segments_at_start(
            settings.output_dir / RUN_FILE,
            checkpoints.latest_checkpoint(settings.output_dir) if settings.resume else None,
            command=command_line(),
            num_processes=processes,
        )

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def run(self) -> TrainingResult:
        started = time.perf_counter()
        settings, accelerator = self.settings, self.accelerator
        set_seed(settings.seed)
        with accelerator.main_process_first():
            data = self.recipe.build_data(settings)
        model = self.recipe.build_model(settings, data)
        optimizer = self.recipe.build_optimizer(model, settings)
        scheduler = get_scheduler(
            settings.schedule if settings.schedule != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=settings.warmup_steps,
            num_training_steps=settings.max_steps,
        )
        train_loader = DataLoader(
            data.train,
            batch_size=settings.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=data.collate,
        )
        if len(train_loader) == 0:
            raise ValueError(
                f"the training set has {len(data.train)} examples, fewer than one --batch-size "
                f"of {settings.batch_size}"
            )
        eval_loader = self._eval_loader(data)
        model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
            model, optimizer, train_loader, eval_loader, scheduler
        )

        step, first_eval_loss = self._start(model, optimizer)
        if step == 0:
            first_eval_loss = self._evaluate(model, eval_loader, step).get("eval_loss")
        final_metrics = self._train(
            model, optimizer, scheduler, train_loader, eval_loader, step, first_eval_loss
        )
        return self._finish(
            model, data, first_eval_loss, final_metrics, time.perf_counter() - started
        )

    def _eval_loader(self, data: RecipeData) -> DataLoader:
        """Full batches only, each split evenly across the processes, so that the mean of the
        per-process losses is the mean over the whole held-out set, and the examples evaluated
        are the same, for any process count. Any map-style dataset with a length works."""
        processes = self.accelerator.num_processes
        batch_size = min(self.settings.batch_size, len(data.eval) // processes * processes)
        if batch_size == 0:
            raise ValueError(
                f"the held-out set has {len(data.eval)} examples, fewer than the {processes} "
                "processes; use more data"
            )
        held_out = Subset(data.eval, range(len(data.eval) // batch_size * batch_size))
        return DataLoader(held_out, batch_size=batch_size, collate_fn=data.collate)

    def _start(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[int, float | None]:
        """Fresh start, or restore the newest checkpoint for ``--resume``."""
        settings, accelerator = self.settings, self.accelerator
        output_dir = settings.output_dir
        checkpoint = checkpoints.latest_checkpoint(output_dir) if settings.resume else None
        if self.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            checkpoints.remove_partial_checkpoints(output_dir)
            if checkpoint is None:
                shutil.rmtree(checkpoints.checkpoint_dir(output_dir), ignore_errors=True)
                self.metrics.path.unlink(missing_ok=True)
            # With the segments so far, so that a segment killed before its end is still known.
            run = {**settings.to_dict(), "segments": self.segments}
            (output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
        accelerator.wait_for_everyone()
        accelerator.init_trackers("tensorboard", config=_flat_hparams(settings))
        if checkpoint is None:
            if settings.resume:
                self._print(f"--resume: no checkpoint in {output_dir}, starting from scratch")
            return 0, None
        state = checkpoints.load_checkpoint(accelerator, checkpoint)
        if self.is_main:
            self.metrics.truncate_after(state["step"])
        self._print(f"resumed from {checkpoint} at step {state['step']}")
        return state["step"], state.get("first_eval_loss")

    def _train(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        train_loader: DataLoader,
        eval_loader: DataLoader,
        step: int,
        first_eval_loss: float | None,
    ) -> dict[str, float]:
        settings, accelerator = self.settings, self.accelerator
        rate_key = f"{self.recipe.item_unit}_per_s"
        progress = tqdm(
            total=settings.max_steps,
            initial=step,
            desc=f"training {settings.recipe}",
            disable=not self.is_main,
            dynamic_ncols=True,
        )
        batches_per_epoch = len(train_loader)
        window_losses: list[torch.Tensor] = []
        window_items, window_started = 0, time.perf_counter()
        final_metrics: dict[str, float] = {}
        model.train()
        while step < settings.max_steps:
            # Where the data stream stands: every optimizer step consumed grad_accum batches.
            consumed = step * settings.grad_accum
            epoch, position = divmod(consumed, batches_per_epoch)
            batches = (
                accelerator.skip_first_batches(train_loader, position) if position else train_loader
            )
            batches.set_epoch(epoch)  # the shuffle of epoch e is seeded by seed + e
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = self.recipe.compute_loss(model, batch)
                    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
                    if not torch.isfinite(mean_loss):
                        self._stop_on_bad_loss(float(mean_loss), step + 1)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and settings.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                window_losses.append(mean_loss)
                window_items += self.recipe.count_items(batch) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                step += 1
                progress.update(1)
                if step % settings.log_every == 0 or step == settings.max_steps:
                    elapsed = time.perf_counter() - window_started
                    record = {
                        "step": step,
                        "loss": float(torch.stack(window_losses).mean()),
                        "lr": scheduler.get_last_lr()[0],
                        rate_key: window_items / max(elapsed, 1e-9),
                    }
                    self._log(record)
                    progress.set_postfix(
                        {
                            "loss": f"{record['loss']:.3f}",
                            "lr": f"{record['lr']:.2e}",
                            f"{self.recipe.item_unit}/s": f"{record[rate_key]:,.0f}",
                        }
                    )
                    window_losses, window_items, window_started = [], 0, time.perf_counter()
                if step % settings.eval_every == 0 or step == settings.max_steps:
                    final_metrics = self._evaluate(model, eval_loader, step)
                    model.train()
                if step % settings.save_every == 0 or step == settings.max_steps:
                    checkpoints.save_checkpoint(
                        accelerator,
                        settings.output_dir,
                        step,
                        {"first_eval_loss": first_eval_loss},
                        settings.keep_checkpoints,
                    )
                if step >= settings.max_steps:
                    break
        progress.close()
        return final_metrics

    def _stop_on_bad_loss(self, value: float, step: int) -> None:
        last = checkpoints.latest_checkpoint(self.settings.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        self.accelerator.end_training()
        raise TrainingError(
            f"the loss became {value} at step {step}; training stopped before the weights were "
            f"updated, and {kept}. Lower --lr, or try --mixed-precision no."
        )

    @torch.no_grad()
    def _evaluate(
        self, model: torch.nn.Module, eval_loader: DataLoader, step: int
    ) -> dict[str, float]:
        """Run the recipe's ``eval_step`` on every held-out batch and log its metrics."""
        model.eval()
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        parts: dict[str, list[Any]] = {}
        for batch in eval_loader:
            for key, value in self.recipe.eval_step(model, batch).items():
                if isinstance(value, torch.Tensor) and value.dim() == 0:
                    # One batch mean from each process; the batches are full and split evenly,
                    # so the plain mean of all of them is the mean over the held-out set.
                    values = self.accelerator.gather(value.detach().reshape(1))
                    totals[key] = totals.get(key, 0.0) + float(values.sum())
                    counts[key] = counts.get(key, 0) + values.numel()
                else:
                    parts.setdefault(key, []).append(self._gather_examples(value))
        results = EvalResults(
            means={key: totals[key] / counts[key] for key in totals},
            gathered={key: _join(pieces) for key, pieces in parts.items()},
        )
        metrics = self.recipe.eval_metrics(results)
        self._log({"step": step, **metrics})
        return metrics

    def _gather_examples(self, value: torch.Tensor | list[Any]) -> torch.Tensor | list[Any]:
        """Every process's per-example outputs of one batch, kept on the CPU so that the
        predictions of a large held-out set do not fill the accelerator's memory."""
        if isinstance(value, torch.Tensor):
            return self.accelerator.gather_for_metrics(value.detach()).cpu()
        return self.accelerator.gather_for_metrics(list(value), use_gather_object=True)

    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            self.metrics.write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def _finish(
        self,
        model: torch.nn.Module,
        data: RecipeData,
        first_eval_loss: float | None,
        final_metrics: dict[str, float],
        wall_time_s: float,
    ) -> TrainingResult:
        settings, accelerator = self.settings, self.accelerator
        output_dir = settings.output_dir
        accelerator.wait_for_everyone()
        unwrapped: PreTrainedModel = accelerator.unwrap_model(model)
        fingerprints = accelerator.gather_for_metrics(
            [model_fingerprint(unwrapped)], use_gather_object=True
        )
        state_dict = accelerator.get_state_dict(model)
        unwrapped.save_pretrained(
            output_dir,
            is_main_process=self.is_main,
            state_dict=state_dict,
            save_function=accelerator.save,
        )
        samples: list[str] = []
        if self.is_main:
            if data.processor is not None:
                data.processor.save_pretrained(output_dir)
            unwrapped.eval()
            samples = self.recipe.samples(unwrapped, data)
            summary = {
                "steps": settings.max_steps,
                "num_processes": accelerator.num_processes,
                "wall_time_s": wall_time_s,
                "parameters": sum(p.numel() for p in unwrapped.parameters()),
                "trainable_parameters": sum(
                    p.numel() for p in unwrapped.parameters() if p.requires_grad
                ),
                "first_eval_loss": first_eval_loss,
                "final_eval_loss": final_metrics.get("eval_loss"),
                "final_metrics": final_metrics,
                "weight_fingerprints": fingerprints,
                **finish_segments(self.segments, settings.max_steps, wall_time_s),
            }
            run = {**settings.to_dict(), "summary": summary, "samples": samples}
            (output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
            plot_losses(
                self.metrics.read(),
                output_dir / PLOT_FILE,
                f"{settings.recipe} ({settings.preset})",
            )
            write_model_card(
                output_dir / "README.md",
                model_name=f"{settings.recipe}-{settings.preset}",
                recipe=settings.recipe,
                preset=settings.preset,
                auto_class=self.recipe.auto_class,
                pipeline_tag=self.recipe.pipeline_tag,
                license=self.recipe.license,
                data_description=data.description,
                settings=settings.to_dict(),
                summary=summary,
                samples=samples,
            )
            self._report(first_eval_loss, final_metrics, samples, wall_time_s)
        accelerator.end_training()
        return TrainingResult(
            output_dir=output_dir,
            steps=settings.max_steps,
            first_eval_loss=first_eval_loss,
            final_metrics=final_metrics,
            samples=samples,
            wall_time_s=wall_time_s,
        )

    def _report(
        self,
        first_eval_loss: float | None,
        final: dict[str, float],
        samples: list[str],
        wall_time_s: float,
    ) -> None:
        output_dir = self.settings.output_dir
        lines = [f"\nfinished {self.settings.max_steps} steps in {wall_time_s:.0f} s"]
        if first_eval_loss is not None and "eval_loss" in final:
            lines.append(
                f"eval loss {first_eval_loss:.3f} -> {final['eval_loss']:.3f} "
                f"({final['eval_loss'] / first_eval_loss:.0%} of the start)"
            )
        lines += [f"  {sample!r}" for sample in samples]
        lines += [
            f"model and tokenizer: {output_dir}/ (load with from_pretrained)",
            f"loss curve:          {output_dir / PLOT_FILE}",
            f"metrics:             {self.metrics.path} and TensorBoard logs in {output_dir}/tensorboard",
            f"model card:          {output_dir / 'README.md'}",
        ]
        print("\n".join(lines))

    def _print(self, message: str) -> None:
        self.accelerator.print(message)


def _join(pieces: list[torch.Tensor | list[Any]]) -> torch.Tensor | list[Any]:
    """One output's per-batch pieces as one tensor (joined on the example dimension) or list."""
    if isinstance(pieces[0], torch.Tensor):
        return torch.cat(pieces)
    return [item for piece in pieces for item in piece]


def _flat_hparams(settings: TrainingSettings) -> dict[str, Any]:
    """TensorBoard's hparams take scalars and strings only."""
    flat: dict[str, Any] = {}
    for key, value in settings.to_dict().items():
        if isinstance(value, dict):
            flat.update(
                {
                    f"{key}.{k}": v
                    for k, v in value.items()
                    if isinstance(v, int | float | str | bool)
                }
            )
        elif isinstance(value, int | float | str | bool):
            flat[key] = value
    return flat


def train(recipe: Recipe, settings: TrainingSettings) -> TrainingResult:
    """Run one training of ``recipe`` with ``settings``; see :class:`Trainer`."""
    return Trainer(recipe, settings).run()
