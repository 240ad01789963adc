#!/usr/bin/env python
r"""Stage 2: distil a one-step student from a trained teacher.

--objective oftsr (default): same-trajectory distillation (distill + align + boundary
    losses, teacher step Euler or midpoint); the student keeps the t slider.
--objective flowsr: consistency distillation on the straight LR-HR path with HR
    regularisation, fast-slow timesteps and an optional patch-GAN loss.
--objective fluxsr: flow trajectory distillation on teacher-made pairs (make them with
    make_pairs.py; --train_data_dir is then the pairs folder): MSE + TV-LPIPS + ADL.
FlowSR and FluxSR students are fixed-point maps (no t slider).

    accelerate launch trainer/distill.py --teacher runs/teacher/teacher.safetensors \
        --train_data_dir DATA --output_dir runs/student --max_train_steps 20000
"""

from __future__ import annotations

import launcher  # noqa: F401  first: the launcher is found before the imports below take their seconds

import argparse
import contextlib
import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from checkpoints import checkpoint_record, checkpoint_to_resume, training_metadata
from common import (load_init_weights, load_teacher, make_accelerator, make_dataloader, resolve_train_steps,
                    run_script, training_loader)
from flags import (HelpFormatter, add_common_args, below_one, check_data_dirs, make_optimizer, non_negative_float,
                   open_unit_interval, positive_float, positive_int, settle_resolution, unit_interval)
from loop import lr_schedule, run_training
from validation import ema_copy, log_images, validation_scores, validation_start

import oftsr
from oftsr.training.ema import EMA
from oftsr.flow import T_EPS, noise_augment, student_step
from oftsr.model import OBJECTIVES
from oftsr.training.losses import TEACHER_STEPS, distill_loss, sample_distill_time
from oftsr.training.objectives import (DISTANCES, PatchDiscriminator, discriminator_hinge_loss, ema_update_,
                                       fast_slow_times, flowsr_loss, fluxsr_loss, generator_hinge_loss,
                                       make_training_lpips)
from oftsr.checkpoint import network_digest
from oftsr.training.pairs import RECORDED_LATER, PairDataset, pairs_resolution
from oftsr.weights import BUNDLED_MODELS

if TYPE_CHECKING:
    from accelerate import Accelerator

    from oftsr.training.metrics import LPIPS

logger = logging.getLogger("oftsr.trainer")

VALIDATION_T = (0.0, 0.5, 1.0)

# The flags that set each objective's loss: recorded in its checkpoints and exported file,
# and warned of when a resume changes them (the model's own settings are refused instead).
LOSS_FLAGS = {"oftsr": ("dt", "teacher_solver", "lambda_align", "lambda_bc"),
              "flowsr": ("teacher_solver", "fast_steps", "slow_steps", "p_fast", "lambda_hr", "consistency_distance",
                         "target_ema_decay", "lambda_adv", "disc_learning_rate", "disc_width"),
              "fluxsr": ("lambda_lpips", "tv_gamma", "lambda_adl")}


def loss_settings(args: argparse.Namespace) -> dict:
    return {flag: getattr(args, flag) for flag in LOSS_FLAGS[args.objective]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p, lr=2e-5, batch=32, steps=20_000)
    # The student learns from the teacher's LR: by default the degradation its file records.
    p.set_defaults(degradation=None, scale=None, realesrgan_config=None, sigma_y=None, resolution=None)
    p.add_argument("--teacher", required=True,
                   help="teacher: a bundled model's name (x4), our .safetensors or an authors' .pth")
    p.add_argument("--objective", choices=OBJECTIVES, default="oftsr", help="distillation objective (default oftsr)")
    p.add_argument("--sigma_p", type=unit_interval, default=None, help="default: the teacher's")
    p.add_argument("--dt", type=open_unit_interval, default=0.05, help="teacher step length (s = min(t + dt, 0.99))")
    p.add_argument("--teacher_solver", choices=list(TEACHER_STEPS), default="midpoint")
    p.add_argument("--lambda_align", type=non_negative_float, default=0.01)
    p.add_argument("--lambda_bc", type=non_negative_float, default=0.1)
    p.add_argument("--dropout", type=below_one, default=0.0,
                   help="student dropout (the teacher runs in eval mode). 0 by default: the student fits the "
                        "teacher's deterministic steps, and the bundled students were distilled without it; the "
                        "paper's 0.1 is the teacher's (train_teacher.py's default)")
    p.add_argument("--init_student", default=None,
                   help="fine-tune: start the student from this student's weights instead of the teacher's, a "
                        f"bundled model's name ({', '.join(BUNDLED_MODELS)}: its student) or a file, e.g. to fine-tune "
                        "it for another degradation (same architecture as the teacher)")
    g = p.add_argument_group("flowsr (--teacher_solver sets its teacher step too)")
    g.add_argument("--fast_steps", type=positive_int, default=4, help="steps of the fast (coarse) timestep grid")
    g.add_argument("--slow_steps", type=positive_int, default=1000, help="steps of the slow (fine) timestep grid")
    g.add_argument("--p_fast", type=unit_interval, default=0.5, help="probability of drawing adjacent times from the fast grid")
    g.add_argument("--lambda_hr", type=non_negative_float, default=1.0, help="weight of the HR regularisation")
    g.add_argument("--consistency_distance", choices=list(DISTANCES), default="mse")
    g.add_argument("--target_ema_decay", type=unit_interval, default=0.95,
                   help="decay of the consistency target's EMA copy of the student (0 = the student itself, stop-grad)")
    g.add_argument("--lambda_adv", type=non_negative_float, default=0.0, help="patch-GAN generator loss weight; 0 = off (default)")
    g.add_argument("--disc_learning_rate", type=positive_float, default=1e-4)
    g.add_argument("--disc_width", type=positive_int, default=64, help="channels of the discriminator's first conv")
    g = p.add_argument_group("fluxsr (--train_data_dir is a make_pairs.py folder)")
    g.add_argument("--lambda_lpips", type=non_negative_float, default=1.0, help="weight of TV-LPIPS")
    g.add_argument("--tv_gamma", type=non_negative_float, default=1.0, help="weight of the TV term inside TV-LPIPS")
    g.add_argument("--lambda_adl", type=non_negative_float, default=0.01, help="weight of the attention diversification loss")
    args = p.parse_args(argv)
    if args.objective == "fluxsr":  # the pairs' crop size: the run trains, validates and records at it
        if args.max_train_samples is not None:
            p.error("--max_train_samples is for a folder of images; make fewer pairs with make_pairs.py --num_pairs")
        if args.random_flip is not None:  # the pairs hold the crops as make_pairs drew them
            p.error(f"--{'' if args.random_flip else 'no_'}random_flip does not reach teacher-made pairs, whose crops "
                    f"are drawn (and flipped) by make_pairs.py")
        made = pairs_resolution(args.train_data_dir)
        if made is not None and args.resolution not in (None, made):
            p.error(f"--resolution {args.resolution}: the pairs in {args.train_data_dir} are {made} px crops; leave "
                    f"--resolution out")
        args.resolution = made or args.resolution
    args.random_flip = args.random_flip is not False
    return args


def build_models(args: argparse.Namespace) -> tuple[oftsr.OFTSRModel, oftsr.OFTSRModel]:
    """The frozen teacher, and a student that starts as a copy of its (EMA) weights, or of
    `--init_student`'s."""
    teacher = load_teacher(args)
    student = oftsr.OFTSRModel(oftsr.UNet(teacher.config, dropout=args.dropout), sigma_p=teacher.sigma_p,
                               role="student", scale=teacher.scale, degradation=teacher.degradation,
                               objective=args.objective)
    init = teacher
    if args.init_student:
        init = load_init_weights(args.init_student, "student", "--init_student", sigma_p=teacher.sigma_p,
                                 scale=teacher.scale, role="student")
        if init.role != "student":  # a teacher's weights are where a student starts anyway: this one is likely a mix-up
            raise ValueError(f"--init_student {args.init_student} is a teacher; the student starts from --teacher's "
                             f"weights without the flag, and --init_student takes a one-step student to fine-tune")
        if init.config != teacher.config:
            raise ValueError(f"--init_student has architecture {init.config}, but the teacher is {teacher.config}")
    student.unet.load_state_dict(init.unet.state_dict())
    student.unet.gradient_checkpointing = args.gradient_checkpointing
    return teacher.eval().requires_grad_(False), student.train().requires_grad_(True)


@torch.no_grad()
def validate(accelerator: Accelerator, student: torch.nn.Module, ema: EMA, batch: dict[str, torch.Tensor],
             args: argparse.Namespace, step: int, lpips: LPIPS | None) -> dict[str, float]:
    net = ema_copy(student, ema, accelerator.device)
    x0 = validation_start(net, batch, args.seed)
    logs, rows = validation_scores("lr_upsampled", batch["lr"], batch, args.scale, lpips), [batch["lr"]]
    for t in (T_EPS,) if net.ignores_t else VALIDATION_T:
        x1 = student_step(x0, net.velocity(x0, batch["lr"], t))
        logs.update(validation_scores("student" if net.ignores_t else f"student_t{t:g}", x1, batch, args.scale, lpips))
        rows.append(x1)
    name = "val/lr_student_hr" if net.ignores_t else "val/lr_t0_t0.5_t1_hr"
    log_images(accelerator, name, torch.cat([*rows, batch["hr"]], dim=-1), step)
    return logs


def make_pair_dataloader(args: argparse.Namespace, teacher: oftsr.OFTSRModel) -> torch.utils.data.DataLoader:
    """The teacher-made pairs of `--train_data_dir` (fluxsr), checked against the teacher."""
    dataset = PairDataset(args.train_data_dir)
    made = dataset.manifest
    # Folders made before --realesrgan_config record it only when it is not "full", and those
    # made before --sigma_y had the default.
    ours = {"sigma_p": teacher.sigma_p, "scale": teacher.scale, "degradation": teacher.degradation,
            **training_metadata(args, teacher)}
    for key, value in ours.items():
        recorded = made.get(key, {"realesrgan_config": "full", **RECORDED_LATER}.get(key))
        if recorded != value:
            raise ValueError(f"the pairs in {args.train_data_dir} were made with {key} = {recorded}, "
                             f"the teacher has {value}")
    digest, ours = made.get("teacher_digest"), network_digest(teacher)  # older folders name the teacher only
    if digest is not None and digest != ours:
        raise ValueError(f"the pairs in {args.train_data_dir} were made by another teacher ({made['teacher']}, step "
                         f"{made['teacher_step']}, digest {digest[:12]}), not this --teacher {Path(args.teacher).name} "
                         f"(digest {ours[:12]}): pass the teacher that made them")
    logger.info("fluxsr pairs: %d of %d px from %s (%s x %d steps)", len(dataset), made["resolution"], made["teacher"],
                made["solver"], made["steps"])
    return training_loader(args, dataset)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data_dirs(args)
    teacher, student = build_models(args)  # first: the trackers log the settings taken from the teacher
    settle_resolution(args, "the teacher's scale")
    accelerator = make_accelerator(args, "oftsr-distill")
    check_one_loss_scaler(args, accelerator)
    teacher.to(accelerator.device)
    optimizer = make_optimizer(args, student.parameters())
    if args.objective == "fluxsr":
        dataloader = make_pair_dataloader(args, teacher)
    else:
        dataloader = make_dataloader(args, args.train_data_dir)
    resolve_train_steps(args, dataloader, accelerator.num_processes)
    # The student starts from the teacher's weights: a warm-up longer than a tenth of the
    # run would spend much of a short fine-tune at a tiny rate.
    requested_warmup, args.lr_warmup_steps = args.lr_warmup_steps, min(args.lr_warmup_steps,
                                                                        max(1, args.max_train_steps // 10))
    # A resumed run past its warm-up keeps it over, whatever tenth a new --max_train_steps makes.
    resumed = checkpoint_to_resume(args)
    record = checkpoint_record(resumed, args.output_dir) if resumed is not None else {}
    if resumed is not None and args.objective == "flowsr":
        check_discriminator(resumed, args.lambda_adv > 0)
    done = record.get("data", {}).get("lr_warmup_steps")
    if isinstance(done, int) and record.get("step", 0) + 1 >= done and args.lr_warmup_steps > done:
        args.lr_warmup_steps = done
        logger.info("keeping the resumed run's warm-up of %d steps, which is over", done)
    elif args.lr_warmup_steps < requested_warmup:
        logger.info("warming up over %d steps, a tenth of the run (the student starts from trained weights; "
                    "--lr_warmup_steps is %d)", args.lr_warmup_steps, requested_warmup)
    scheduler = lr_schedule(optimizer, args.lr_scheduler, args.lr_warmup_steps, args.max_train_steps,
                            accelerator.num_processes)
    student, optimizer, dataloader, scheduler = accelerator.prepare(student, optimizer, dataloader, scheduler)
    ema = EMA(accelerator.unwrap_model(student), args.ema_decay)  # after prepare: the main process's weights
    extra_state, after_step = (), None

    def oftsr_losses(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_lr = batch["lr"]
        x0 = noise_augment(x_lr, args.sigma_p, torch.randn_like(x_lr))
        t = sample_distill_time(x0.shape[0], x0.device)
        with accelerator.autocast():  # the frozen teacher runs outside the prepared model
            return distill_loss(student, teacher, x0, x_lr, t, dt=args.dt, teacher_solver=args.teacher_solver,
                                lambda_align=args.lambda_align, lambda_bc=args.lambda_bc)

    step_losses = oftsr_losses
    if args.objective == "flowsr":
        # The consistency target: an EMA copy of the student, checkpointed with the run.
        target = copy.deepcopy(accelerator.unwrap_model(student)).eval().requires_grad_(False)
        extra_state = (target,)
        after_step = lambda: ema_update_(target, accelerator.unwrap_model(student), args.target_ema_decay)  # noqa: E731
        disc = disc_opt = None
        if args.lambda_adv > 0:
            disc = PatchDiscriminator(args.disc_width)
            disc_opt = torch.optim.Adam(disc.parameters(), lr=args.disc_learning_rate, betas=(0.5, 0.999))
            disc, disc_opt = accelerator.prepare(disc, disc_opt)

        def flowsr_losses(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            x1, x_lr = batch["hr"], batch["lr"]
            x0 = noise_augment(x_lr, args.sigma_p, torch.randn_like(x_lr))
            t_a, t_b = fast_slow_times(x0.shape[0], fast_steps=args.fast_steps, slow_steps=args.slow_steps,
                                       p_fast=args.p_fast, device=x0.device)
            with accelerator.autocast():
                out = flowsr_loss(student, target, teacher, x0, x1, x_lr, t_a, t_b, teacher_solver=args.teacher_solver,
                                  lambda_hr=args.lambda_hr, distance=args.consistency_distance)
            estimate = out.pop("estimate")
            if disc is not None:
                # Discriminator step on the detached estimate, then the generator loss through
                # the updated discriminator (its own weights get no gradient from it).
                d_loss = discriminator_step(accelerator, disc, disc_opt, x1, estimate, x_lr)
                d = accelerator.unwrap_model(disc).eval().requires_grad_(False)
                with accelerator.autocast():
                    adv = generator_hinge_loss(d(estimate, x_lr))
                d.train().requires_grad_(True)
                out["loss"] = out["loss"] + args.lambda_adv * adv
                out.update(adv=adv, disc=d_loss)
            return out

        step_losses = flowsr_losses
    elif args.objective == "fluxsr":
        lpips_fn, note = make_training_lpips(accelerator.device) if args.lambda_lpips else (None, "off")
        logger.info("fluxsr TV-LPIPS: %s", note)
        network = accelerator.unwrap_model(student).unet

        def fluxsr_losses(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            x0 = noise_augment(batch["lr"], args.sigma_p, batch["noise"])
            with accelerator.autocast():
                return fluxsr_loss(student, x0, batch["lr"], batch["target"], lpips_fn, network=network,
                                   lambda_lpips=args.lambda_lpips, gamma=args.tv_gamma, lambda_adl=args.lambda_adl)

        step_losses = fluxsr_losses

    return run_training(accelerator, args, student, optimizer, scheduler, dataloader, ema,
                        desc=f"{args.objective} student", step_losses=step_losses,
                        export_name="student.safetensors", extra_state=extra_state, after_step=after_step,
                        provenance={"teacher_digest": network_digest(teacher)}, loss=loss_settings(args),
                        validate=lambda net, batch, step, lpips: validate(accelerator, net, ema, batch, args, step,
                                                                          lpips))


def check_one_loss_scaler(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """fp16's one loss scaler (Accelerate has one for all optimizers) is updated by the
    discriminator's step, which comes before the student's last backward: with gradient
    accumulation the student's micro-batches would then sum gradients at two scales."""
    if (args.objective == "flowsr" and args.lambda_adv > 0 and args.gradient_accumulation_steps > 1
            and accelerator.scaler is not None):
        raise ValueError(f"--lambda_adv with --mixed_precision fp16 and --gradient_accumulation_steps "
                         f"{args.gradient_accumulation_steps}: the discriminator and the student share fp16's loss "
                         f"scaler, whose update between them would rescale part of the student's accumulated "
                         f"gradient; use --mixed_precision bf16, or --gradient_accumulation_steps 1 with a larger "
                         f"--train_batch_size")


def check_discriminator(checkpoint: Path, wanted: bool) -> None:
    """A FlowSR run's checkpoint holds a discriminator and its optimizer (Accelerate's
    second model and optimizer: optimizer_1.bin) when it trained with --lambda_adv > 0: a
    resume that adds one cannot load it, and one that leaves it out stops the GAN loss."""
    had = any(checkpoint.glob("optimizer_1.*"))
    if wanted and not had:
        raise ValueError(f"{checkpoint} is a run without a discriminator (--lambda_adv 0): pass --lambda_adv 0 to go "
                         f"on with it, or train the GAN in another --output_dir from this run's export "
                         f"(--init_student)")
    if had and not wanted:
        logger.warning("resuming %s, which trained a discriminator, with --lambda_adv 0: its GAN loss stops from "
                       "here and the discriminator is left out of this run's checkpoints", checkpoint)


def discriminator_step(accelerator: Accelerator, disc: torch.nn.Module, disc_opt: torch.optim.Optimizer, hr: torch.Tensor,
                       estimate: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
    """One hinge-loss step of the discriminator, real HR against the detached estimate; its
    loss. Step, then zero: the optimizer is Accelerate's, which with
    --gradient_accumulation_steps N steps and zeroes only at the Nth micro-batch, so it
    steps on the gradient of all N, as one batch N times larger would (zeroing first
    would drop all but the last). As for the student (`accelerator.accumulate`), processes
    sum their gradients at the Nth micro-batch only, not at each."""
    sync = contextlib.nullcontext() if accelerator.sync_gradients else accelerator.no_sync(disc)
    with sync:
        with accelerator.autocast():  # real and fake in one forward pass
            logits = disc(torch.cat([hr, estimate.detach()]), x_lr.repeat(2, 1, 1, 1))
            d_loss = discriminator_hinge_loss(*logits.chunk(2))
        accelerator.backward(d_loss)
    disc_opt.step()
    disc_opt.zero_grad(set_to_none=True)
    return d_loss.detach()


if __name__ == "__main__":
    run_script(main)
