#!/usr/bin/env python
"""Stage 2: distil the one-step OFTSR student from a trained teacher (same-trajectory
distillation: distill + align + boundary losses, teacher step Euler or midpoint).

    accelerate launch trainer/distill.py --teacher runs/teacher/teacher.safetensors \
        --train_data_dir DATA --output_dir runs/student --max_train_steps 20000
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from common import (TrainState, add_common_args, export_ema, log_images, log_metrics, make_accelerator,
                    make_dataloader, make_validation_lpips, model_info, resume, save_checkpoint,
                    train_batches, validation_batch, validation_scores, warmup_schedule)

import oftsr
from oftsr.ema import EMA
from oftsr.flow import noise_augment, student_step
from oftsr.losses import TEACHER_STEPS, distill_loss, sample_distill_time

logger = logging.getLogger("oftsr.trainer")

VALIDATION_T = (0.0, 0.5, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, lr=2e-5, batch=32, steps=20_000)
    p.add_argument("--teacher", required=True, help="teacher checkpoint: our .safetensors or an authors' .pth")
    p.add_argument("--sigma_p", type=float, default=None, help="default: the teacher's")
    p.add_argument("--dt", type=float, default=0.05, help="teacher step length (s = min(t + dt, 0.99))")
    p.add_argument("--teacher_solver", choices=list(TEACHER_STEPS), default="midpoint")
    p.add_argument("--lambda_align", type=float, default=0.01)
    p.add_argument("--lambda_bc", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.0, help="student dropout (the teacher runs in eval mode)")
    args = p.parse_args(argv)
    args.lr_warmup_steps = min(args.lr_warmup_steps, max(1, args.max_train_steps // 10))
    return args


def build_models(args: argparse.Namespace) -> tuple[oftsr.OFTSRModel, oftsr.OFTSRModel]:
    """The frozen teacher, and a student that starts as a copy of its (EMA) weights."""
    teacher = oftsr.load_model(args.teacher, sigma_p=args.sigma_p, role="teacher", scale=args.scale,
                               degradation=args.degradation)
    if teacher.scale != args.scale:
        raise ValueError(f"the teacher is x{teacher.scale}, but --scale is {args.scale}")
    args.sigma_p = teacher.sigma_p
    student = oftsr.OFTSRModel(oftsr.UNet(teacher.config, dropout=args.dropout), sigma_p=teacher.sigma_p,
                               role="student", scale=teacher.scale, degradation=teacher.degradation)
    student.unet.load_state_dict(teacher.unet.state_dict())
    return teacher.eval().requires_grad_(False), student.train().requires_grad_(True)


@torch.no_grad()
def validate(accelerator, student, ema, batch, args, step, lpips) -> dict[str, float]:
    net = oftsr.OFTSRModel(oftsr.UNet(student.config), sigma_p=student.sigma_p, role="student", scale=student.scale,
                           degradation=student.degradation).to(accelerator.device).eval()
    ema.copy_to(net.unet)
    gen = torch.Generator().manual_seed(args.seed)
    x0 = noise_augment(batch["lr"], net.sigma_p, torch.randn(batch["lr"].shape, generator=gen).to(accelerator.device))
    logs, rows = validation_scores(accelerator, "lr_upsampled", batch["lr"], batch, args.scale, lpips), [batch["lr"]]
    for t in VALIDATION_T:
        x1 = student_step(x0, net.velocity(x0, batch["lr"], t))
        logs.update(validation_scores(accelerator, f"student_t{t:g}", x1, batch, args.scale, lpips))
        rows.append(x1)
    log_images(accelerator, "val/lr_t0_t0.5_t1_hr", torch.cat([*rows, batch["hr"]], dim=-1), step)
    return logs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args, "oftsr-distill")
    teacher, student = build_models(args)
    teacher.to(accelerator.device)
    ema = EMA(student, args.ema_decay)
    optimizer = torch.optim.Adam(student.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                 weight_decay=args.adam_weight_decay)
    scheduler = warmup_schedule(optimizer, args.lr_warmup_steps)
    dataloader = make_dataloader(args, args.train_data_dir)
    student, optimizer, dataloader, scheduler = accelerator.prepare(student, optimizer, dataloader, scheduler)
    ema.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)
    resume(accelerator, args)
    val_batch = validation_batch(args, accelerator.device)
    lpips = make_validation_lpips() if val_batch is not None and accelerator.is_main_process else None

    from tqdm.auto import tqdm

    bar = tqdm(total=args.max_train_steps, initial=state.step, desc="distill", disable=not accelerator.is_local_main_process)
    batches = train_batches(accelerator, dataloader, state.step, args.gradient_accumulation_steps)
    while state.step < args.max_train_steps:
        batch = next(batches)
        with accelerator.accumulate(student):
            x_lr = batch["lr"]
            x0 = noise_augment(x_lr, args.sigma_p, torch.randn_like(x_lr))
            t = sample_distill_time(x0.shape[0], x0.device)
            with accelerator.autocast():
                losses = distill_loss(student, teacher, x0, x_lr, t, dt=args.dt, teacher_solver=args.teacher_solver,
                                      lambda_align=args.lambda_align, lambda_bc=args.lambda_bc)
            accelerator.backward(losses["total"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        ema.update(accelerator.unwrap_model(student))
        state.step += 1
        bar.update(1)
        logs = {k: accelerator.gather(v.detach()).mean().item() for k, v in losses.items()}
        logs["lr"] = scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{logs['total']:.4f}")
        if val_batch is not None and state.step % args.validation_steps == 0 and accelerator.is_main_process:
            logs.update(validate(accelerator, accelerator.unwrap_model(student), ema, val_batch, args, state.step, lpips))
            logger.info("step %d: %s", state.step, {k: float(f"{v:.4g}") for k, v in logs.items()})
        log_metrics(accelerator, args.output_dir, logs, state.step)
        if state.step % args.checkpointing_steps == 0 or state.step == args.max_train_steps:
            save_checkpoint(accelerator, args.output_dir, state.step, args.checkpoints_total_limit,
                            accelerator.unwrap_model(student))
    bar.close()

    if accelerator.is_main_process:
        path = export_ema(model_info(accelerator.unwrap_model(student), state.step), ema.shadow_params,
                          Path(args.output_dir) / "student.safetensors")
        logger.info("exported EMA weights to %s", path)
    accelerator.end_training()


if __name__ == "__main__":
    main()
