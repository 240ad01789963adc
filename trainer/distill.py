#!/usr/bin/env python
"""Stage 2: distil the one-step OFTSR student from a trained teacher (same-trajectory
distillation: distill + align + boundary losses, teacher step Euler or midpoint).

    accelerate launch trainer/distill.py --teacher runs/teacher/teacher.safetensors \
        --train_data_dir DATA --output_dir runs/student --max_train_steps 20000
"""

from __future__ import annotations

import argparse
import logging

import torch

from common import (add_common_args, ema_copy, log_images, make_accelerator, make_dataloader, run_training, validation_scores,
                    validation_start, warmup_schedule)

import oftsr
from oftsr.training.ema import EMA
from oftsr.flow import noise_augment, student_step
from oftsr.training.losses import TEACHER_STEPS, distill_loss, sample_distill_time

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
    net = ema_copy(student, ema, accelerator.device)
    x0 = validation_start(net, batch, args.seed)
    logs, rows = validation_scores("lr_upsampled", batch["lr"], batch, args.scale, lpips), [batch["lr"]]
    for t in VALIDATION_T:
        x1 = student_step(x0, net.velocity(x0, batch["lr"], t))
        logs.update(validation_scores(f"student_t{t:g}", x1, batch, args.scale, lpips))
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

    def step_losses(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_lr = batch["lr"]
        x0 = noise_augment(x_lr, args.sigma_p, torch.randn_like(x_lr))
        t = sample_distill_time(x0.shape[0], x0.device)
        with accelerator.autocast():  # the frozen teacher runs outside the prepared model
            losses = distill_loss(student, teacher, x0, x_lr, t, dt=args.dt, teacher_solver=args.teacher_solver,
                                  lambda_align=args.lambda_align, lambda_bc=args.lambda_bc)
        losses["loss"] = losses.pop("total")
        return losses

    run_training(accelerator, args, student, optimizer, scheduler, dataloader, ema, desc="distill",
                 step_losses=step_losses, export_name="student.safetensors",
                 validate=lambda net, batch, step, lpips: validate(accelerator, net, ema, batch, args, step, lpips))


if __name__ == "__main__":
    main()
