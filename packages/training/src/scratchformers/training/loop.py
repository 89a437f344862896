"""The training loop, written once for every recipe, on top of ``accelerate.Accelerator``.

Accelerate is the distributed engine: the same code runs as one process, as N CPU processes,
on N GPUs, on several machines, or sharded with FSDP, depending only on how it is launched
(``accelerate launch --config_file ...``). Nothing here talks to ``torch.distributed``.

One run: check the settings and the output folder, build the data, the model and the optimizer
(the recipe's part), then optimizer steps on the recipe's loss with gradient accumulation,
clipping and a warmup schedule; evaluation with the recipe's metrics, logging and atomic
checkpoints every N steps; at the end the model saved with ``save_pretrained`` beside its
tokenizer, a model card, metrics and a loss-curve PNG.

The loss of an optimizer step is the mean over the loss-bearing items (real tokens, examples)
of the whole step: every micro-batch of the accumulation on every process. So the loop counts
them before the step's first forward pass and hands the count to the recipe's loss, which
divides its sum by it; a micro-batch with few real tokens then weighs as little as it should,
and one step of 16 examples, two of 8 accumulated, or two processes of 8 give one gradient.

The final evaluation of the final weights goes to the recipe's ``finish`` and ``card_sections``
(as an :class:`~scratchformers.training.recipe.Evaluation`); a segment that ends between
evaluations (a resume at the last checkpoint) runs one, so every run reports the same figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import DistributedType, send_to_device, set_seed, str_to_bool
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from . import checkpoints
from .console import status
from .errors import TrainingError, TrainingInterrupted
from .precision import choose_mixed_precision
from .recipe import EvalResults, Evaluation, Recipe, RecipeData
from .reporting import (
    PLOT_FILE,
    MetricsLog,
    command_line,
    finish_segments,
    plot_losses,
    resume_command,
    segments_at_start,
    write_model_card,
)
from .rundir import RUN_FILE, RunLock, check_output_dir, clear_previous_run, write_json
from .settings import TrainingSettings

__all__ = [
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "TrainingResult",
    "accumulate_gradients",
    "describe_processes",
    "evaluate",
    "held_out_loader",
    "process_count_warning",
    "train",
]


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


class Trainer:
    """One training run. ``run()`` does everything; the methods are its steps in order."""

    def __init__(self, recipe: Recipe, settings: TrainingSettings) -> None:
        settings.check()
        check_output_dir(settings)
        self.recipe = recipe
        self.settings = settings
        self.data_train: Any = None  # the recipe's training set, once run() has built it
        # The processes, devices and launch are known now; the Accelerator, which also holds
        # the precision, is built in run() once the model exists: --mixed-precision auto
        # decides from the model's width (precision.choose_mixed_precision).
        self.state = PartialState(cpu=not torch.accelerator.is_available())
        self.accelerator: Accelerator | None = None
        self.requested_precision = settings.mixed_precision
        self.ran: dict[str, Any] = {}  # how the run really runs, once run() knows
        processes = self.state.num_processes
        if settings.batch_size % processes:
            raise ValueError(
                f"--batch-size {settings.batch_size} does not divide across {processes} "
                f"processes; use a multiple of {processes}"
            )
        self.metrics = MetricsLog(settings.output_dir)
        # This start of the command is one segment of the run; with --resume, the earlier ones
        # come from the run.json the previous segment left, read before _start rewrites it.
        # The checkpoint is the one _start resumes from.
        self.resume_checkpoint = self._checkpoint_to_resume()
        self.segments = segments_at_start(
            settings.output_dir / RUN_FILE,
            self.resume_checkpoint,
            command=command_line(),
            num_processes=processes,
        )

    def _accelerator_for(self, model: torch.nn.Module) -> Accelerator:
        """The run's Accelerator, in the precision chosen for ``model`` (said, and recorded
        in run.json and the model card)."""
        settings = self.settings
        choice = choose_mixed_precision(self.requested_precision, model, self.state.device)
        status(f"precision: {choice.describe()}")
        # From here on the settings (and so run.json and the model card) say what really runs.
        settings.mixed_precision = choice.mixed_precision
        self.ran = {
            "mixed_precision": choice.mixed_precision,
            "mixed_precision_requested": self.requested_precision,
            "mixed_precision_reason": choice.reason,
            "compile": settings.compile,
        }
        accelerator = Accelerator(
            cpu=self.state.device.type == "cpu",
            mixed_precision=choice.mixed_precision,
            log_with="tensorboard",
            project_dir=str(settings.output_dir),
            # One global batch per step, split across processes: the data order and the
            # examples per optimizer step do not depend on how many processes there are.
            # Accumulation is the loop's own (see _optimizer_step): it needs the whole step's
            # micro-batches before the first forward pass, to count their items.
            dataloader_config=DataLoaderConfiguration(
                split_batches=True, use_seedable_sampler=True
            ),
        )
        self.ran = self._say_what_runs(accelerator) | self.ran
        return accelerator

    def _checkpoint_to_resume(self) -> Path | None:
        """For ``--resume``: the checkpoint given, else the newest usable one in the output folder."""
        settings = self.settings
        if not settings.resume:
            return None
        return checkpoints.resumable_checkpoint(
            settings.output_dir, settings.resume_from, warn=self._print
        )

    def _say_what_runs(self, accelerator: Accelerator) -> dict[str, Any]:
        """Say how many processes the run has and how they are distributed, and when that is
        not what the launch asked for: Accelerate runs an FSDP (or DeepSpeed) launch without a
        GPU as plain data parallel, and ``accelerate launch --cpu`` starts one process whatever
        its ``--num_processes``, both without a word."""
        state = accelerator.state
        asked = _requested_engine()
        ran = state.distributed_type.value
        processes = describe_processes(state.num_processes, ran, state.device.type)
        status(f"processes: {processes}")
        if asked and asked != ran:
            status(
                f"warning: the launch asked for {asked}, which needs a GPU; Accelerate runs it as "
                f"{ran} on {state.num_processes} CPU process(es) instead"
            )
        mismatch = process_count_warning(state.num_processes)
        if mismatch:
            status(f"warning: {mismatch}")
        return {
            "distributed_type": ran,
            "distributed_type_requested": asked or ran,
            "num_processes": state.num_processes,
            "processes": processes,
            "processes_warning": mismatch,
            "device": str(state.device),
        }

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def run(self) -> TrainingResult:
        started = time.perf_counter()
        settings = self.settings
        set_seed(settings.seed)
        status(f"building the data ({self.recipe.name} recipe)")
        with self.state.main_process_first():
            data = self.recipe.build_data(settings)
        status(f"data: {data.description}")
        model = self.recipe.build_model(settings, data)
        if settings.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        parameters = sum(p.numel() for p in model.parameters())
        status(f"model: {type(model).__name__}, {parameters / 1e6:.2f}M parameters")
        if settings.compile:
            # In place (nn.Module.compile), not Accelerate's wrapper: the model keeps its
            # parameter names, so checkpoints and the saved model are the same with or without.
            model.compile()
            status("compiling the model with torch.compile (inductor) at its first steps")
        accelerator = self.accelerator = self._accelerator_for(model)
        optimizer = self.recipe.build_optimizer(model, settings)
        scheduler = get_scheduler(
            settings.schedule if settings.schedule != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=settings.warmup_steps,
            num_training_steps=settings.max_steps,
        )
        eval_loader = self._eval_loader(data)
        held_out = len(eval_loader.dataset)
        self.data_train = data.train
        if is_streamed(data.train):
            # Each process reads its own shard, so Accelerate must not split its batches again:
            # the loader stays out of prepare(), and each process batches its share of the
            # global batch itself (_streamed_steps moves it to the device).
            rank, processes = accelerator.process_index, accelerator.num_processes
            if processes > 1:
                # Every process says so (status speaks on the main one only): the log shows
                # that the shards are the processes' own.
                print(
                    f"process {rank} streams shard {rank} of {processes} of the training set",
                    file=sys.stderr,
                    flush=True,
                )
            train_loader = DataLoader(
                own_shard(data.train, rank, processes),
                batch_size=settings.batch_size // accelerator.num_processes,
                drop_last=True,
                collate_fn=data.collate,
            )
            model, optimizer, eval_loader, scheduler = accelerator.prepare(
                model, optimizer, eval_loader, scheduler
            )
        else:
            train_loader = DataLoader(
                data.train,
                batch_size=settings.batch_size,
                shuffle=True,
                drop_last=True,
                collate_fn=data.collate,
            )
            if len(train_loader) < settings.grad_accum:
                raise ValueError(
                    f"the training set has {len(data.train)} examples, fewer than one optimizer "
                    f"step of --batch-size {settings.batch_size} x --grad-accum "
                    f"{settings.grad_accum}"
                )
            model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
                model, optimizer, train_loader, eval_loader, scheduler
            )

        step, first_eval_loss = self._start(model, optimizer)
        if step == 0:
            status(f"first evaluation, on {held_out:,} held-out examples")
            first_eval_loss = self._evaluate(model, eval_loader, step).metrics.get("eval_loss")
        final = self._train(
            model, optimizer, scheduler, train_loader, eval_loader, step, first_eval_loss
        )
        if final is None:
            # This segment resumed at the last step and ran no evaluation; the one the earlier
            # segment logged at this step is in metrics.jsonl already, so this one is not.
            status("evaluating the final weights")
            final = evaluate(self.recipe, model, eval_loader, self.accelerator)
        return self._finish(model, data, first_eval_loss, final, time.perf_counter() - started)

    def _eval_loader(self, data: RecipeData) -> DataLoader:
        return held_out_loader(data, self.settings.batch_size, self.accelerator.num_processes)

    def _start(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[int, float | None]:
        """Fresh start, or restore a checkpoint for ``--resume``."""
        settings, accelerator = self.settings, self.accelerator
        output_dir = settings.output_dir
        checkpoint = self.resume_checkpoint
        if self.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            checkpoints.remove_partial_checkpoints(output_dir)
            if settings.overwrite:
                clear_previous_run(output_dir, self.recipe.output_files)
            elif checkpoint is None:
                # A resume with nothing to resume from: the earlier run's log would mislead.
                self.metrics.path.unlink(missing_ok=True)
            # With the segments so far, so that a segment killed before its end is still known.
            write_json(output_dir / RUN_FILE, {**settings.to_dict(), "segments": self.segments})
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
    ) -> Evaluation | None:
        """Optimizer steps from ``step`` to the last; the evaluation at the last step, or None
        when this segment starts there."""
        settings, accelerator = self.settings, self.accelerator
        rate_key = f"{self.recipe.item_unit}_per_s"
        progress = tqdm(
            total=settings.max_steps,
            initial=step,
            desc=f"training {settings.recipe}",
            disable=not self.is_main,
            dynamic_ncols=True,
        )
        step_batches = (
            self._streamed_steps(train_loader, step)
            if is_streamed(self.data_train)
            else self._shuffled_steps(train_loader, step)
        )
        window_losses: list[torch.Tensor] = []
        window_items, window_started = 0, time.perf_counter()
        final: Evaluation | None = None
        model.train()
        with StopRequests() as stop:
            if step < settings.max_steps:
                for micro_batches in step_batches:
                    window_losses.append(
                        self._optimizer_step(model, optimizer, scheduler, micro_batches, step + 1)
                    )
                    window_items += accelerator.num_processes * sum(
                        self.recipe.count_items(batch) for batch in micro_batches
                    )
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
                        evaluation = self._evaluate(model, eval_loader, step)
                        if step == settings.max_steps:
                            final = evaluation
                        model.train()
                    saved = step % settings.save_every == 0 or step == settings.max_steps
                    if saved:
                        self._save(step, first_eval_loss)
                    if step >= settings.max_steps:
                        break
                    # Asked to stop (on any process): save at this step boundary, then stop.
                    if stop.requested(accelerator):
                        if not saved:
                            self._save(step, first_eval_loss)
                        progress.close()
                        self._stop_on_request(stop.signal_number, step)
        progress.close()
        return final

    def _shuffled_steps(
        self, train_loader: DataLoader, step: int
    ) -> Iterator[list[dict[str, Any]]]:
        """The micro-batches of every optimizer step from ``step`` on, epoch after epoch, from
        the prepared (shuffled, split across processes) map-style loader."""
        grad_accum = self.settings.grad_accum
        # Every step takes grad_accum whole batches, and an epoch's last few batches that make
        # no whole step are left out: so a step's place in the data is step * grad_accum.
        steps_per_epoch = len(train_loader) // grad_accum
        while True:
            epoch, position = divmod(step, steps_per_epoch)
            batches = (
                self.accelerator.skip_first_batches(train_loader, position * grad_accum)
                if position
                else train_loader
            )
            batches.set_epoch(epoch)  # the shuffle of epoch e is seeded by seed + e
            for micro_batches in _steps(batches, grad_accum, steps_per_epoch - position):
                yield micro_batches
                step += 1

    def _streamed_steps(
        self, train_loader: DataLoader, step: int
    ) -> Iterator[list[dict[str, Any]]]:
        """The micro-batches of every optimizer step from ``step`` on, from this process's
        own shard of a streamed training set (``--streaming``): read in order, from the start
        again at the end of each epoch. A resume reads past the batches of the steps done."""
        accelerator, grad_accum = self.accelerator, self.settings.grad_accum
        to_skip = step * grad_accum
        epoch = 0
        while True:
            batches = 0
            group: list[dict[str, Any]] = []
            # An epoch's last few batches that make no whole step are left out, as in
            # _shuffled_steps (so a resume skips exactly the batches the steps read).
            for batch in train_loader:
                batches += 1
                if to_skip:
                    to_skip -= 1
                    continue
                group.append(send_to_device(batch, accelerator.device))
                if len(group) == grad_accum:
                    yield group
                    group = []
            if batches < grad_accum:
                # Every process has its own shard; one too small to give a step stops the run.
                raise ValueError(
                    f"process {accelerator.process_index}'s share of the streamed training set "
                    f"gave {batches} batches of {train_loader.batch_size}, fewer than one "
                    f"optimizer step (--grad-accum {grad_accum}); give more data or a smaller "
                    "--batch-size"
                )
            epoch += 1
            self._print(f"streamed training set: epoch {epoch} read, starting over")

    def _optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        micro_batches: list[dict[str, Any]],
        step: int,
    ) -> torch.Tensor:
        """One optimizer step over ``micro_batches`` (this process's shares); its loss, the
        mean over every loss-bearing item of the step on every process."""
        accelerator = self.accelerator
        step_loss = accumulate_gradients(self.recipe, model, micro_batches, accelerator)
        if not torch.isfinite(step_loss):
            self._stop_on_bad_loss(float(step_loss), step)
        if self.settings.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), self.settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return step_loss

    def _save(self, step: int, first_eval_loss: float | None) -> Path:
        return checkpoints.save_checkpoint(
            self.accelerator,
            self.settings.output_dir,
            step,
            {"first_eval_loss": first_eval_loss},
            self.settings.keep_checkpoints,
        )

    def _stop_on_request(self, signal_number: int, step: int) -> None:
        settings = self.settings
        checkpoint = checkpoints.latest_checkpoint(settings.output_dir)
        self.accelerator.end_training()
        name = signal.Signals(signal_number).name
        raise TrainingInterrupted(
            f"stopped by {name} at step {step} of {settings.max_steps}; the checkpoint is "
            f"{checkpoint}\ncontinue with: {resume_command()}",
            signal_number,
        )

    def _stop_on_bad_loss(self, value: float, step: int) -> None:
        last = checkpoints.latest_checkpoint(self.settings.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        self.accelerator.end_training()
        raise TrainingError(
            f"the loss became {value} at step {step}; training stopped before the weights were "
            f"updated, and {kept}. Lower --lr, or try --mixed-precision no."
        )

    def _evaluate(self, model: torch.nn.Module, eval_loader: DataLoader, step: int) -> Evaluation:
        """The recipe's evaluation on the held-out set (see :func:`evaluate`), its metrics
        logged at ``step``."""
        evaluation = evaluate(self.recipe, model, eval_loader, self.accelerator)
        self._log({"step": step, **evaluation.metrics})
        return evaluation

    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            self.metrics.write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def _finish(
        self,
        model: torch.nn.Module,
        data: RecipeData,
        first_eval_loss: float | None,
        final: Evaluation,
        wall_time_s: float,
    ) -> TrainingResult:
        settings, accelerator = self.settings, self.accelerator
        output_dir = settings.output_dir
        final_metrics = final.metrics
        accelerator.wait_for_everyone()
        unwrapped: PreTrainedModel = accelerator.unwrap_model(model)
        fingerprints = accelerator.gather_for_metrics(
            [model_fingerprint(unwrapped)], use_gather_object=True
        )
        state_dict = accelerator.get_state_dict(model)
        to_save = self.recipe.model_to_save(unwrapped)
        to_save.save_pretrained(
            output_dir,
            is_main_process=self.is_main,
            # A recipe's own model to save (a merged copy) has its own, unsharded weights.
            state_dict=state_dict if to_save is unwrapped else None,
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
                "ran": self.ran,
                **finish_segments(self.segments, settings.max_steps, wall_time_s),
            }
            run = {**settings.to_dict(), "summary": summary, "samples": samples}
            write_json(output_dir / RUN_FILE, run)
            plot_losses(
                self.metrics.read(),
                output_dir / PLOT_FILE,
                f"{settings.recipe} ({settings.preset})",
            )
            files = self.recipe.finish(unwrapped, data, output_dir, final)
            write_model_card(
                output_dir / "README.md",
                model_name=f"{settings.recipe}-{settings.preset}",
                recipe=settings.recipe,
                preset=settings.preset,
                auto_class=self.recipe.auto_class,
                processor_class=self.recipe.processor_auto_class,
                pipeline_tag=self.recipe.pipeline_tag,
                license=self.recipe.license,
                data_description=data.description,
                settings=settings.to_dict(),
                summary=summary,
                samples=samples,
                sections=self.recipe.card_sections(output_dir, final),
                model_type=unwrapped.config.model_type,
                trained_from_scratch=self.recipe.trained_from_scratch,
                figures={
                    name: path.relative_to(output_dir)
                    for name, path in files.items()
                    if path.suffix == ".png" and path.parent == output_dir
                },
            )
            self._report(first_eval_loss, final_metrics, samples, summary, files)
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
        summary: dict[str, Any],
        files: dict[str, Path],
    ) -> None:
        output_dir = self.settings.output_dir
        processor = (
            "tokenizer" if self.recipe.processor_auto_class == "AutoTokenizer" else "processor"
        )
        took = f"{summary['total_wall_time_s']:.0f} s"
        if len(summary["segments"]) > 1:
            took += f" over {len(summary['segments'])} segments (resumed)"
        lines = [f"\nfinished {self.settings.max_steps} steps in {took}"]
        if first_eval_loss is not None and "eval_loss" in final:
            lines.append(
                f"eval loss {first_eval_loss:.3f} -> {final['eval_loss']:.3f} "
                f"({final['eval_loss'] / first_eval_loss:.0%} of the start)"
            )
        lines += [f"  {sample!r}" for sample in samples]
        lines += [
            f"{'model and ' + processor + ':':<21}{output_dir}/ (load with from_pretrained)",
            f"loss curve:          {output_dir / PLOT_FILE}",
            *(f"{name + ':':<21}{path}" for name, path in files.items()),
            f"metrics:             {self.metrics.path} and TensorBoard logs in {output_dir}/tensorboard",
            f"model card:          {output_dir / 'README.md'}",
        ]
        print("\n".join(lines))

    def _print(self, message: str) -> None:
        self.state.print(message)


class StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM during training, turned into a clean stop.

    The first signal only raises a flag; the loop checks it at the next optimizer-step
    boundary, saves a checkpoint there and stops with :class:`TrainingInterrupted`. A second
    Ctrl-C stops at once (``KeyboardInterrupt``). A SIGTERM after the first signal is ignored:
    launchers such as torchrun send one to every worker when the terminal's Ctrl-C reaches
    them, and it must not cut the checkpoint short. Handlers are installed only in the main
    thread (Python allows no other) and restored on exit.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: object) -> None:
        if self.signal_number is None:
            self.signal_number = number
            status(
                f"\n{signal.Signals(number).name}: stopping after this step, with a checkpoint "
                "(Ctrl-C again stops at once, without one)"
            )
        elif number == signal.SIGINT:
            raise KeyboardInterrupt

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop; every process must call this at the same
        step, since with several it is one collective (Accelerate's trigger)."""
        if accelerator.num_processes == 1:
            return self.signal_number is not None
        if self.signal_number is not None:
            accelerator.set_trigger()
        if accelerator.check_trigger():
            self.signal_number = self.signal_number or signal.SIGTERM
            return True
        return False


def _requested_engine() -> str | None:
    """The sharding engine an ``accelerate launch`` config asked for, from the environment
    the launcher sets (``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``)."""

    for variable, engine in (
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED),
    ):
        if str_to_bool(os.environ.get(variable, "false")):
            return engine.value
    return None


def describe_processes(num_processes: int, distributed_type: str, device_type: str) -> str:
    """A run's processes in a few words, from Accelerate's state: ``1 process, CPU``,
    ``2 processes, MULTI_CPU``, ``8 processes, FSDP on 8 GPUs``.

    ``distributed_type`` is the value of Accelerate's ``DistributedType`` (``NO`` for one
    process), ``device_type`` the type of the process's device (``cpu``, ``cuda``, ...).
    """
    count = f"{num_processes} process{'' if num_processes == 1 else 'es'}"
    alone = distributed_type == DistributedType.NO.value
    if device_type == "cpu":
        return f"{count}, {'CPU' if alone else distributed_type}"
    unit = "GPU" if device_type == "cuda" else device_type.upper()
    devices = f"{num_processes} {unit}{'' if num_processes == 1 else 's'}"
    where = devices if alone else f"{distributed_type} on {devices}"
    return f"{count}, {where}"


# The launch that gives several CPU processes: accelerate's torchrun launcher, which runs every
# process on the CPU when the machine has no GPU (the loop's PartialState picks the device).
SEVERAL_CPU_PROCESSES = "accelerate launch --multi_gpu --num_processes N --num_machines 1 -m ..."


def process_count_warning(
    num_processes: int, environ: Mapping[str, str] | None = None
) -> str | None:
    """What to tell the user when the launch asked for another number of processes than the
    run got (``num_processes``); ``None`` when nothing says it did.

    The launcher's environment says it: torchrun (``accelerate launch --multi_gpu``, FSDP)
    and mpirun set the world size (``WORLD_SIZE``, ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``).
    ``accelerate launch --cpu`` exports no process count: it starts one process whatever its
    ``--num_processes`` says, and sets ``MASTER_ADDR`` / ``MASTER_PORT`` only when that (or
    ``--num_machines``) is above 1, which is what gives it away.
    """
    environ = os.environ if environ is None else environ
    for variable in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(variable, "").isdigit():
            asked = int(environ[variable])
            if asked != num_processes:
                return (
                    f"the launch asked for {asked} processes ({variable}={asked}), but the run "
                    f"has {num_processes}"
                )
            return None
    cpu_launch = str_to_bool(environ.get("ACCELERATE_USE_CPU", "false"))
    if cpu_launch and "MASTER_PORT" in environ and num_processes == 1:
        return (
            "accelerate launch --cpu starts one process, whatever its --num_processes says: "
            "this run has 1, alone (with --num_machines above 1, one such run per machine). "
            f"For several CPU processes on a machine without a GPU: {SEVERAL_CPU_PROCESSES}"
        )
    return None


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Turn on transformers' gradient checkpointing (``--gradient-checkpointing``), or raise a
    ``ValueError`` naming the flag when the model's layers do not support it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"--gradient-checkpointing: {type(model).__name__} does not support gradient "
            "checkpointing (its layers are not GradientCheckpointingLayer); leave the flag out"
        )
    # Non-reentrant checkpointing: a layer whose inputs need no gradient (a frozen LoRA base
    # model's embeddings) still gets its parameters' gradients, without
    # enable_input_require_grads.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    status(f"gradient checkpointing: {type(model).__name__} recomputes its layers' activations")


def is_streamed(dataset: Any) -> bool:
    """Whether a training set is read as a stream (``--streaming``): an iterable dataset,
    with no length, that the loop reads in order and does not shuffle."""
    import datasets

    return isinstance(dataset, IterableDataset | datasets.IterableDataset)


def own_shard(dataset: Any, rank: int, world_size: int) -> Any:
    """Process ``rank``'s own part of a streamed training set, so that the processes read
    distinct examples: its ``split_by_node`` (a
    :class:`~scratchformers.training.data.StreamingBlocks`), or
    ``datasets.distributed.split_dataset_by_node`` for a ``datasets.IterableDataset``."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    if world_size == 1:
        return dataset
    if hasattr(dataset, "split_by_node"):
        return dataset.split_by_node(rank, world_size)
    if isinstance(dataset, datasets.IterableDataset):
        return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    raise TypeError(
        f"a streamed training set ({type(dataset).__name__}) must say how to split it across "
        "processes (a split_by_node method)"
    )


def held_out_loader(data: RecipeData, batch_size: int, processes: int) -> DataLoader:
    """The held-out set in batches of at most ``batch_size`` for ``processes`` processes.

    Full batches only, each split evenly across the processes, so that no process pads its
    share with repeated examples and the examples evaluated are the same for any process
    count. Any map-style dataset with a length works. The loop and ``scratchformers eval``
    both evaluate on it, so they evaluate the same examples.
    """
    if batch_size % processes:
        raise ValueError(
            f"--batch-size {batch_size} does not divide across {processes} processes; use a "
            f"multiple of {processes}"
        )
    batch_size = min(batch_size, len(data.eval) // processes * processes)
    if batch_size == 0:
        raise ValueError(
            f"the held-out set has {len(data.eval)} examples, fewer than the {processes} "
            "processes; use more data"
        )
    held_out = Subset(data.eval, range(len(data.eval) // batch_size * batch_size))
    return DataLoader(held_out, batch_size=batch_size, collate_fn=data.collate)


@torch.no_grad()
def evaluate(
    recipe: Recipe, model: torch.nn.Module, eval_loader: DataLoader, accelerator: Accelerator
) -> Evaluation:
    """Run the recipe's ``eval_step`` on every held-out batch; what it kept, and the
    ``eval_metrics`` of that.

    ``model`` and ``eval_loader`` are prepared by ``accelerator``; every process calls this
    and gets the same evaluation, the one a single process gets: a batch's 0-dim values are
    each process's mean over its share, so they are weighted by the share's loss-bearing
    items (``Recipe.count_loss_items``: a masked LM's halves hold different numbers of masked
    tokens) before the batches are averaged. The training loop and ``scratchformers eval``
    both use it, so a saved model evaluates to the numbers its run logged.
    """
    model.eval()
    # The recipe sees the model itself (generate() is not on a DDP wrapper); a forward pass
    # without gradients needs nothing from the wrapper.
    unwrapped = accelerator.unwrap_model(model)
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    parts: dict[str, list[Any]] = {}
    for batch in eval_loader:
        items = recipe.count_loss_items(batch)
        for key, value in recipe.eval_step(unwrapped, batch).items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                totals[key] = totals.get(key, 0.0) + _batch_mean(accelerator, value, items)
                counts[key] = counts.get(key, 0) + 1
            else:
                parts.setdefault(key, []).append(_gather_examples(accelerator, value))
    results = EvalResults(
        means={key: totals[key] / counts[key] for key in totals},
        gathered={key: _join(pieces) for key, pieces in parts.items()},
    )
    return Evaluation(results=results, metrics=recipe.eval_metrics(results))


def accumulate_gradients(
    recipe: Recipe,
    model: torch.nn.Module,
    micro_batches: list[dict[str, Any]],
    accelerator: Accelerator,
) -> torch.Tensor:
    """The forward and backward passes of one optimizer step: ``micro_batches`` are this
    process's shares of its batches. Leaves in the gradients of ``model`` (prepared by
    ``accelerator``) the gradient of the mean loss over every loss-bearing item of the step,
    on every process (``Recipe.count_loss_items``), and returns that loss.

    So one batch of 16, two accumulated batches of 8, and two processes with 8 each give the
    same gradient, however the real tokens fall among them.
    """
    local_items = sum(recipe.count_loss_items(batch) for batch in micro_batches)
    items = accelerator.reduce(torch.tensor(local_items, device=accelerator.device), "sum")
    num_items_in_batch = int(items)
    step_loss = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        # Gradients are exchanged once a step, after its last micro-batch.
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = recipe.compute_loss(model, batch, num_items_in_batch)
            step_loss += loss.detach()
            # Each process's loss is already its share of the step's mean, and DDP (or FSDP)
            # averages the gradients over the processes: undo that average.
            accelerator.backward(loss * accelerator.num_processes)
    return accelerator.reduce(step_loss, reduction="sum")


def _steps(
    batches: Iterable[dict[str, Any]], grad_accum: int, steps: int
) -> Iterator[list[dict[str, Any]]]:
    """The first ``steps`` groups of ``grad_accum`` consecutive batches: one optimizer step's
    micro-batches each. The batches after the last whole group are not read."""
    group: list[dict[str, Any]] = []
    if steps <= 0:
        return
    for batch in batches:
        group.append(batch)
        if len(group) == grad_accum:
            yield group
            group = []
            steps -= 1
            if steps == 0:
                return


def _batch_mean(accelerator: Accelerator, value: torch.Tensor, items: int) -> float:
    """The whole batch's mean of a 0-dim ``value``, this process's mean over its ``items``
    loss-bearing items: every process's mean weighted by its items (in float64, so that one
    process gets its own value back exactly). A share without items has no mean (a NaN
    loss) and weighs nothing; a batch without any keeps the plain mean of the values."""
    # float32 holds the item count exactly (the value's own dtype, bf16, would not above 256).
    pair = torch.tensor([[float(value.detach()), float(items)]], device=value.device)
    gathered = accelerator.gather(pair).double().cpu()
    means, weights = gathered[:, 0], gathered[:, 1]
    if float(weights.sum()) == 0:
        return float(means.mean())
    present = weights > 0
    return float((means[present] * weights[present]).sum() / weights[present].sum())


def _gather_examples(
    accelerator: Accelerator, value: torch.Tensor | list[Any]
) -> torch.Tensor | list[Any]:
    """Every process's per-example outputs of one batch, kept on the CPU so that the
    predictions of a large held-out set do not fill the accelerator's memory."""
    if isinstance(value, torch.Tensor):
        return accelerator.gather_for_metrics(value.detach()).cpu()
    return accelerator.gather_for_metrics(list(value), use_gather_object=True)


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
    """Run one training of ``recipe`` with ``settings``; see :class:`Trainer`. The launch's
    main process holds the output folder's lock throughout (:class:`~.rundir.RunLock`)."""
    with RunLock(settings.output_dir):
        return Trainer(recipe, settings).run()
