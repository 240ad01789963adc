"""The training loop both stages share (`run_training`): accumulate, clip, step, EMA, log,
validate, checkpoint, stop early on request, and export; with the learning-rate schedule
and what a resumed run restores of it."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from checkpoints import (any_process, data_settings, export_model, list_checkpoints, model_info, resume,
                         save_checkpoint, training_metadata)
from common import EXIT_RESUMABLE, SCRIPT_START, TrainingDiverged, enter_training_loop, logger, start_trackers
from flags import LR_SCHEDULES, adam_settings
from launcher import LAUNCHER
from validation import make_validation_lpips, validation_batch

import oftsr
from oftsr.checkpoint import recorded_settings
from oftsr.files import atomic_write
from oftsr.training.ema import EMA

if TYPE_CHECKING:
    from accelerate import Accelerator

    from oftsr.training.metrics import LPIPS


def lr_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int,
                num_processes: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps` optimizer steps, then `name`: constant (the
    paper's: no decay), or a linear or cosine decay that reaches 0 at `total_steps`.
    Accelerate's prepared scheduler steps once per process for every optimizer step: its
    count is divided back, so N processes follow the schedule as one does."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if name != "constant" and warmup_steps >= total_steps:
        raise ValueError(f"--lr_scheduler {name} decays after the warm-up, but --lr_warmup_steps {warmup_steps} is not "
                         f"shorter than --max_train_steps {total_steps}: give fewer warm-up steps")

    def factor(count: int) -> float:
        step = count // num_processes  # optimizer steps taken
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if name == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restore_optimizer_flags(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> None:
    """After a resume: this run's --adam_* flags, which loading the optimizer's state had
    replaced with the checkpoint's run's (said where they differ, e.g. a larger
    --adam_epsilon to steady a half-precision run)."""
    want = adam_settings(args)
    flags = {"betas": "--adam_beta1/--adam_beta2", "eps": "--adam_epsilon", "weight_decay": "--adam_weight_decay"}
    changed = {}
    for group in optimizer.param_groups:
        for key, value in want.items():
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                changed[key] = (old, value)
                group[key] = value
    for key, (old, value) in changed.items():
        logger.warning("%s %s: the checkpoint's run had %s; the new value applies from here on", flags[key], value, old)


def restore_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer,
                     learning_rate: float, step: int, num_processes: int) -> None:
    """After a resume: the schedule's position from the optimizer `step` (its counter is
    per process, and the process count may have changed), with this run's schedule and
    `--learning_rate` (the checkpoint holds the old run's rate: said when it differs);
    the rate it resumes at is logged."""
    inner = getattr(scheduler, "scheduler", scheduler)  # under Accelerate's wrapper
    if any(abs(b - learning_rate) > 1e-12 * max(b, learning_rate) for b in inner.base_lrs):
        logger.warning("--learning_rate %g: the checkpoint's run had %g; the new rate applies from here on",
                       learning_rate, inner.base_lrs[0])
    inner.base_lrs = [learning_rate] * len(inner.base_lrs)
    inner.last_epoch = step * num_processes
    for group, base, factor in zip(optimizer.param_groups, inner.base_lrs, inner.lr_lambdas, strict=True):
        group["lr"] = base * factor(inner.last_epoch)
        group["initial_lr"] = base
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]
    logger.info("resuming at step %d with learning rate %g", step, optimizer.param_groups[0]["lr"])


class TrainState:
    """The optimisation step, checkpointed with the rest by `accelerator.save_state`, and
    the fp16 steps whose update the loss scaler skipped: they took their batches (a resume
    goes on after them) but count as no step, as the learning-rate schedule counts none."""

    def __init__(self) -> None:
        self.step = 0
        self.skipped = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped", 0))  # absent from checkpoints of 0.27 and older


# fp16 overflows this many optimizer steps in a row: the loss scale has fallen by 2**40, so the
# gradients themselves are not finite (a scale too high for a few steps is what the scaler fixes).
MAX_SKIPPED_IN_A_ROW = 40


class StopRequest:
    """Ends a run early with a checkpoint: on SIGTERM (a scheduler's pre-emption or time
    limit) or Ctrl-C, and once `minutes` have passed. Looked at after each optimizer step
    and agreed by all processes, so that they save the same checkpoint and stop together.
    A second Ctrl-C quits at once (the checkpoint being written is then left unfinished,
    and resume ignores it)."""

    def __init__(self, minutes: float | None, launcher: int | None) -> None:
        self.minutes = minutes
        self.deadline = None if minutes is None else SCRIPT_START + 60 * minutes
        self.reason: str | None = None
        self._previous: dict[int, object] = {}
        self.launcher = launcher  # `launcher_process()`, whose going stops the run

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.reason is None:
            self.reason = signal.Signals(signum).name
            logger.warning("%s: stopping after this step with a checkpoint (Ctrl-C again quits without one)",
                           self.reason)

    def due(self, accelerator: Accelerator) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = f"--max_train_minutes {self.minutes:g}"
        if self.reason is None and self.launcher is not None and os.getppid() != self.launcher:
            self.reason = "the launcher has gone"
            logger.warning("the launcher (process %d) has gone: stopping after this step with a checkpoint",
                           self.launcher)
        stop = any_process(accelerator, self.reason is not None)  # one process's signal or clock stops them all
        if stop and self.reason is None:
            self.reason = "a stop on another process"
        return stop


def diverged_message(args: argparse.Namespace, what: str) -> str:
    kept = list_checkpoints(args.output_dir)
    resume = (f"{kept[-1].name}, the newest checkpoint, was saved before it: resume from it with a lower rate"
              if kept else "no checkpoint was saved before it")
    return (f"training diverged: {what}. Lower --learning_rate (it is {args.learning_rate:g}), keep gradient "
            f"clipping on (--max_grad_norm 1) or give a longer --lr_warmup_steps; nothing of this step was saved, "
            f"and {resume}")


def check_finite_weights(args: argparse.Namespace, model: torch.nn.Module, ema: EMA, step: int) -> None:
    """Refuse to checkpoint weights that are no longer finite numbers (a finite loss can
    still end in an overflowing step), so the newest checkpoint is one to go on from."""
    for name, params in (("the weights", model.parameters()), ("the EMA weights", ema.shadow_params)):
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingDiverged(diverged_message(args, f"{name} hold NaN or infinity after step {step}"))


def train_batches(accelerator: "Accelerator", dataloader: Iterable, start_step: int,
                  grad_accum: int) -> Iterator[tuple[object, float]]:
    """Endless (batch, loss weight) pairs from the (prepared) loader, positioned at
    `start_step` optimizer steps: earlier epochs are skipped by number and the current one
    by batch count, so a resumed run continues with the batch it would have seen.
    Accelerate ends every epoch with an optimizer step, so an epoch holds
    ceil(batches / grad_accum) of them; its backward divides every loss by grad_accum, so
    the k < grad_accum batches of an epoch's last step weigh grad_accum / k each, and that
    step's gradient is a mean like the others'."""
    per_epoch = len(dataloader)
    if per_epoch == 0:  # checked now, not at the first batch: a generator would raise only then
        n, crops = accelerator.num_processes, len(dataloader.dataset)
        batch = dataloader.total_batch_size if hasattr(dataloader, "total_batch_size") else dataloader.batch_size
        each = f" for each of the {n} processes" if n > 1 else ""
        raise ValueError(f"the training set is smaller than one batch{each}: an epoch has {crops} crops and a step "
                         f"takes {batch}; raise --repeats, lower --train_batch_size or add images")
    epoch, steps_in = divmod(start_step, -(-per_epoch // grad_accum))
    return _endless_batches(accelerator, dataloader, epoch, steps_in * grad_accum, grad_accum)


def _endless_batches(accelerator: Accelerator, dataloader: torch.utils.data.DataLoader, epoch: int, skip: int,
                     grad_accum: int) -> Iterator[tuple[dict, float]]:
    per_epoch = len(dataloader)
    tail = per_epoch % grad_accum  # batches of the epoch's last, shorter accumulation
    while True:
        dataloader.set_epoch(epoch)
        dataloader.dataset.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for i, batch in enumerate(loader, start=skip):
            yield batch, (grad_accum / tail if tail and i >= per_epoch - tail else 1.0)
        epoch, skip = epoch + 1, 0


def log_metrics(accelerator: Accelerator, output_dir: str, logs: dict[str, float], step: int) -> None:
    """To the trackers, and as one JSON line per step in `output_dir/metrics.jsonl`
    (a plain record that survives without any tracker installed)."""
    accelerator.log(logs, step=step)
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **logs}) + "\n")


def trim_metrics(output_dir: str, step: int) -> None:
    """Drop the `metrics.jsonl` rows of steps after `step`: a killed run logged steps that
    its last checkpoint does not hold, and the resumed run logs them again. At step 0 (a
    new run, where a run killed before its first checkpoint was) every row goes, a
    fine-tune's step-0 scores too, which it logs again. A line cut off mid-write goes too.
    Rewritten atomically."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if step and json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        with atomic_write(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        logger.info("metrics.jsonl: dropped %d row(s) %s", len(lines) - len(kept),
                    f"logged after step {step}" if step else "of an earlier run that left no checkpoint")


# The flags whose weights a run starts from (a fine-tune, validated before its first step
# too), and the role a bundled name means there.
FINE_TUNE_FLAGS = {"init_from": "teacher", "init_student": "student"}


def warn_crops_below_init(args: argparse.Namespace) -> None:
    """A fine-tune on much smaller crops than its weights learnt on can lose on whole images
    what crop validation at that size does not show: the network's deepest blocks see a few
    pixels of context where they learnt to use many."""
    for flag, role in FINE_TUNE_FLAGS.items():
        if not getattr(args, flag, None):
            continue
        try:
            record = json.loads(recorded_settings(oftsr.existing_model_path(getattr(args, flag), role)).get("training", "{}"))
            learnt = int(record.get("resolution", 0))
        except (ValueError, TypeError, AttributeError):  # a record we cannot read says nothing of its crops
            continue
        if args.resolution * 4 < learnt * 3:
            logger.warning("--%s %s learnt on %d px crops and this run trains on %d px ones: it may lose on whole "
                           "images what crops that small do not show. Keep --resolution near %d (--gradient_"
                           "checkpointing or a smaller --train_batch_size make room), or validate on larger crops "
                           "with --validation_resolution %d", flag, getattr(args, flag), learnt, args.resolution,
                           learnt, learnt // args.scale * args.scale)


def training_record(args: argparse.Namespace, data: dict, loss: dict | None = None) -> dict:
    """How a model was trained, for its exported file (the `training` entry, which `oftsr
    info` shows): the data settings, with the data folder by its name only (a file that is
    shared should not carry its maker's paths), the optimiser's and EMA's settings, the
    precision, dropout, the objective's `loss` settings and this package's version; the
    weights it started from (`--init_from`,
    `--init_student`: a bundled name as given, a file by its name) and the time limit its
    last run was given (`--max_train_minutes`; after a resume, what was left of it), which
    say why a fine-tune's `step` can be short of `max_train_steps`.
    Recorded, never compared on resume."""
    started = {flag: Path(getattr(args, flag)).name for flag in FINE_TUNE_FLAGS if getattr(args, flag, None)}
    if getattr(args, "max_train_minutes", None) is not None:
        started["max_train_minutes"] = args.max_train_minutes
    return {**{k: v for k, v in data.items() if k != "train_data_dir"},
            "train_data": Path(args.train_data_dir).name, "learning_rate": args.learning_rate,
            "adam": adam_settings(args), "max_grad_norm": args.max_grad_norm, "ema_decay": args.ema_decay,
            "mixed_precision": args.mixed_precision or "no", "dropout": args.dropout,
            **({"loss": loss} if loss else {}), **started, "oftsr_version": oftsr.__version__}


def next_step(role: str, path: Path) -> str:
    """What to do with an exported model file, said at the end of a run."""
    if role == "teacher":
        return (f"distil its one-step student with `accelerate launch trainer/distill.py --teacher {path} "
                f"--train_data_dir ... --output_dir ...`, or sample with it: `oftsr sample --model {path} photo.png -o out/`")
    return (f"upscale with it: `oftsr upscale --model {path} photo.png -o out/`; in ComfyUI, put it in models/oftsr and "
            f"pick it in Load OFTSR Model")


SHORT_EPOCH_STEPS = 50  # shorter epochs, with workers started as new interpreters, are said


def log_run_summary(args: argparse.Namespace, desc: str, items: int, crops: int, processes: int, step: int,
                    steps_per_epoch: int) -> None:
    """What the run will do, before its first step, as diffusers' scripts say it, and what
    in its flags would make the run other than meant."""
    if step >= args.max_train_steps:
        logger.warning("the checkpoint is at step %d, not before --max_train_steps %d: nothing to train; its weights "
                       "are exported as they are (give a larger --max_train_steps to go on)", step, args.max_train_steps)
    elif args.lr_warmup_steps > args.max_train_steps:
        logger.warning("--lr_warmup_steps %d is longer than the run (--max_train_steps %d): the learning rate ends at "
                       "%.2g%% of --learning_rate", args.lr_warmup_steps, args.max_train_steps,
                       100 * args.max_train_steps / args.lr_warmup_steps)
    spawned = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
    repeatable = getattr(args, "objective", None) != "fluxsr"  # teacher-made pairs take no --repeats
    if args.dataloader_num_workers and spawned != "fork" and steps_per_epoch < SHORT_EPOCH_STEPS and repeatable:
        # The workers restart every epoch (each epoch's crops are drawn anew in them); started
        # as fresh interpreters (Windows, macOS), that takes seconds each time.
        logger.warning("an epoch is %d optimizer step(s), and each restarts the %d loader workers, which the '%s' "
                       "start method makes slow: --repeats %d draws more crops per image and epoch",
                       steps_per_epoch, args.dataloader_num_workers, spawned,
                       args.repeats * -(-SHORT_EPOCH_STEPS // max(1, steps_per_epoch)))
    per_step = args.train_batch_size * processes * args.gradient_accumulation_steps
    found = "training images: %d in %s (%d crops per epoch)" if repeatable else \
        "teacher-made pairs: %d in %s (%d per epoch)"  # a make_pairs.py folder: crops already drawn
    logger.info("***** training the %s *****\n"
                f"  {found}\n"
                "  batch per process: %d; processes: %d; gradient accumulation: %d -> %d crops per optimizer step\n"
                "  optimizer steps: %d%s, about %.1f epochs\n"
                "  checkpoints: every %d steps in %s", desc, items, args.train_data_dir, crops,
                args.train_batch_size, processes, args.gradient_accumulation_steps, per_step,
                args.max_train_steps, f" (resuming at {step})" if step else "",
                args.max_train_steps / max(1, steps_per_epoch), args.checkpointing_steps, args.output_dir)


# step_losses(batch) -> {"loss": optimised, ...logged}; validate(model, batch, step, lpips) -> logged scalars
StepLosses = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
Validate = Callable[[oftsr.OFTSRModel, dict[str, torch.Tensor], int, "LPIPS | None"], dict[str, float]]


def run_training(accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 dataloader: torch.utils.data.DataLoader, ema: EMA, *, desc: str, step_losses: StepLosses,
                 validate: Validate, export_name: str, extra_state: tuple = (),
                 after_step: Callable[[], None] | None = None, provenance: dict[str, str] | None = None,
                 loss: dict | None = None) -> int:
    """The loop both stages share: accumulate, clip, step, EMA, log, validate, checkpoint,
    and at the end export the EMA weights. `step_losses(batch)` returns a dict whose
    "loss" is optimised (the rest is logged); `validate(model, batch, step, lpips)`
    returns scalars. `extra_state` (objects with state_dict/load_state_dict) is
    checkpointed after the EMA and the step; `after_step()` runs after each optimizer
    step's EMA update. `provenance` (the teacher's `network_digest`) joins the metadata that the
    checkpoints and the exported file record, and that a resume must match. `loss`: the
    settings of the objective (distill's weights and step), recorded with the training
    settings and warned of when a resume changes them. Resumes first
    when `--resume_from_checkpoint` says so. Returns the
    exit status: 0 at `--max_train_steps`, `EXIT_RESUMABLE` when stopped early (`StopRequest`)
    with a checkpoint of the last step and no export."""
    from tqdm.auto import tqdm

    state = TrainState()
    metadata = {**training_metadata(args, accelerator.unwrap_model(model)), **(provenance or {})}
    accelerator.register_for_checkpointing(ema, state, *extra_state)  # the EMA first: export.py reads it by number
    dataset = dataloader.dataset
    train_items = getattr(dataset, "found", len(dataset.files)) if hasattr(dataset, "files") else len(dataset)
    data = data_settings(args, accelerator.num_processes, train_items)
    training = training_record(args, data, loss)
    val_batch = validation_batch(args, accelerator.device)  # its refusals before a resume loads anything
    resume(accelerator, args, model_info(accelerator.unwrap_model(model), 0, metadata), data, loss)
    if state.step:
        restore_schedule(scheduler, optimizer, args.learning_rate, state.step, accelerator.num_processes)
        restore_optimizer_flags(optimizer, args)
    batches = train_batches(accelerator, dataloader, state.step + state.skipped, args.gradient_accumulation_steps)  # a set smaller
    # than one batch is refused before a summary of its epochs is said, and before the trackers
    # start: a run refused in its set-up leaves no logs (nor its folder, `run_script`)
    start_trackers(accelerator, args, state.step)
    if accelerator.is_main_process:
        steps_per_epoch = -(-len(dataloader) // args.gradient_accumulation_steps)  # full batches only (drop_last)
        log_run_summary(args, desc, train_items, len(dataset), accelerator.num_processes, state.step, steps_per_epoch)
        warn_crops_below_init(args)
        trim_metrics(args.output_dir, state.step)
    lpips = make_validation_lpips() if val_batch is not None and accelerator.is_main_process else None

    def validated(step: int) -> dict[str, float]:
        # Validation draws its own noise and builds a network: on a forked RNG, so that
        # validating never changes the t and noise that training draws next.
        cuda = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            return validate(accelerator.unwrap_model(model), val_batch, step, lpips)

    fine_tune = [f"--{flag} {getattr(args, flag)}" for flag in FINE_TUNE_FLAGS if getattr(args, flag, None)]
    if val_batch is not None and fine_tune and not state.step and accelerator.is_main_process:
        # The weights a fine-tune starts from, scored as every later step is: what it must beat.
        logs = validated(0)
        logger.info("step 0 (%s, before training): %s", fine_tune[0], {k: float(f"{v:.4g}") for k, v in logs.items()})
        log_metrics(accelerator, args.output_dir, logs, 0)
    bar = tqdm(total=args.max_train_steps, initial=state.step, desc=desc, disable=not accelerator.is_local_main_process)
    summed, micro = {}, 0  # losses over the micro-batches of one optimizer step
    stopped, skipped_in_a_row, skip_said = False, 0, False
    enter_training_loop()
    # Whatever ends the loop, the loader's workers are shut down now: they ignore SIGTERM
    # (`ignore_stop_signals`), so left to the interpreter's exit they would wait forever.
    with closing(batches), StopRequest(args.max_train_minutes, LAUNCHER) as stop:
        while state.step < args.max_train_steps and not stopped:
            batch, weight = next(batches)
            with accelerator.accumulate(model):
                losses = step_losses(batch)
                accelerator.backward(losses["loss"] * weight)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            summed = {k: summed.get(k, 0) + v.detach().float() for k, v in losses.items()}
            micro += 1
            if not accelerator.sync_gradients:
                continue
            logs = {k: accelerator.gather(v / micro).mean().item() for k, v in summed.items()}
            summed, micro = {}, 0
            if not math.isfinite(logs["loss"]):  # the same gathered value on every process: all stop
                raise TrainingDiverged(diverged_message(args, f"the loss is {logs['loss']} at step {state.step + 1}"))
            # fp16: the scaler found the (all-reduced, so every process's) gradients overflowing
            # and made no update; the scheduler did not step either. The scale is lowered and
            # the step is taken again with the next batch.
            if optimizer.step_was_skipped:
                state.skipped += 1
                skipped_in_a_row += 1
                if skipped_in_a_row == MAX_SKIPPED_IN_A_ROW:
                    raise TrainingDiverged(diverged_message(
                        args, f"fp16 gradients overflowed at {skipped_in_a_row} optimizer steps in a row after step "
                              f"{state.step} (--mixed_precision bf16 does not overflow)"))
                if not skip_said:  # once a run (a resumed one too)
                    skip_said = True
                    logger.info("fp16: the gradients overflowed the loss scale at step %d; that update is skipped and "
                                "the scale lowered (expected in the first steps; the run's count of skipped updates, "
                                "%d so far, is in its checkpoints)", state.step + 1, state.skipped)
                continue
            skipped_in_a_row = 0
            ema.update(accelerator.unwrap_model(model))
            if after_step is not None:
                after_step()
            state.step += 1
            bar.update(1)
            logs["lr"] = lr
            bar.set_postfix(loss=f"{logs['loss']:.4g}")  # significant digits: a distillation loss is under 1e-4
            # A stop is decided first: its checkpoint may have seconds left (a launcher's grace), not a validation.
            stopped = state.step < args.max_train_steps and stop.due(accelerator)
            due = (state.step % args.validation_steps == 0 or state.step == args.max_train_steps) and not stopped
            if val_batch is not None and due and accelerator.is_main_process:
                logs.update(validated(state.step))
                logger.info("step %d: %s", state.step, {k: float(f"{v:.4g}") for k, v in logs.items()})
            log_metrics(accelerator, args.output_dir, logs, state.step)
            if stopped or state.step % args.checkpointing_steps == 0 or state.step == args.max_train_steps:
                check_finite_weights(args, accelerator.unwrap_model(model), ema, state.step)
                save_checkpoint(accelerator, args.output_dir, state.step, args.checkpoints_total_limit,
                                accelerator.unwrap_model(model), metadata, data, training)
    bar.close()
    if stopped:
        logger.warning("stopped at step %d of %d (%s): %s holds its checkpoint; run the same command with "
                       "--resume_from_checkpoint latest to go on", state.step, args.max_train_steps, stop.reason,
                       args.output_dir)
    elif accelerator.is_main_process:
        path = export_model({**model_info(accelerator.unwrap_model(model), state.step, metadata), "training": training},
                          ema.shadow_params, Path(args.output_dir) / export_name)
        logger.info("exported EMA weights to %s\n  next: %s", path, next_step(accelerator.unwrap_model(model).role, path))
    accelerator.end_training()
    return EXIT_RESUMABLE if stopped else 0
