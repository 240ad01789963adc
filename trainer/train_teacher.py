#!/usr/bin/env python
"""Stage 1: train the OFTSR teacher, a conditional rectified flow from the noised LR image
to the HR image (L1 velocity loss, t ~ U[0.001, 1]).

    accelerate launch trainer/train_teacher.py --train_data_dir DATA --output_dir runs/teacher \
        --preset small --sigma_p 0.2 --max_train_steps 100000
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from common import (TrainState, add_common_args, export_ema, log_images, log_metrics, make_accelerator,
                    make_dataloader, make_validation_lpips, model_info, preset_choices, resume,
                    save_checkpoint, train_batches, validation_batch, validation_scores, warmup_schedule)

import oftsr
from oftsr.ema import EMA
from oftsr.flow import noise_augment, time_grid
from oftsr.inference import velocity_field
from oftsr.losses import sample_flow_time, teacher_loss
from oftsr.sampling import get_sampler

logger = logging.getLogger("oftsr.trainer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, lr=1e-4, batch=32, steps=100_000)
    p.add_argument("--preset", choices=preset_choices(), default="div2k")
    p.add_argument("--init_from", default=None, help="start from these weights (our .safetensors or an authors' .pth)")
    p.add_argument("--sigma_p", type=float, default=0.2, help="start-point noise (0.1 FFHQ, 0.2 DIV2K/ImageNet)")
    p.add_argument("--sigma_y", type=float, default=0.05, help="measurement noise of noisy_avgpool")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--validation_nfe_steps", type=int, default=8, help="midpoint steps for validation (NFE 2N-1)")
    return p.parse_args(argv)


def build_model(args: argparse.Namespace) -> oftsr.OFTSRModel:
    model = oftsr.create_model(args.preset, role="teacher", scale=args.scale, sigma_p=args.sigma_p,
                               degradation=args.degradation, dropout=args.dropout)
    if args.init_from:
        init = oftsr.load_model(args.init_from, sigma_p=args.sigma_p, role="teacher", scale=args.scale)
        if init.config != model.config:
            raise ValueError(f"--init_from has architecture {init.config}, but --preset {args.preset} is {model.config}")
        model.unet.load_state_dict(init.unet.state_dict())
    return model.requires_grad_(True).train()


@torch.no_grad()
def validate(accelerator, model, ema, batch, args, step, lpips) -> dict[str, float]:
    """Teacher samples (midpoint, stated NFE) with the EMA weights on the validation crops."""
    net = oftsr.OFTSRModel(oftsr.UNet(model.config), sigma_p=model.sigma_p, role="teacher", scale=model.scale,
                           degradation=model.degradation).to(accelerator.device).eval()
    ema.copy_to(net.unet)
    gen = torch.Generator().manual_seed(args.seed)
    x0 = noise_augment(batch["lr"], net.sigma_p, torch.randn(batch["lr"].shape, generator=gen).to(accelerator.device))
    fn = lambda x, t: velocity_field(net, x, batch["lr"], t)  # noqa: E731
    x1 = get_sampler("midpoint")(fn, x0, time_grid(args.validation_nfe_steps))
    nfe = 2 * args.validation_nfe_steps - 1
    logs = {**validation_scores(accelerator, "lr_upsampled", batch["lr"], batch, args.scale, lpips),
            **validation_scores(accelerator, f"teacher_nfe{nfe}", x1, batch, args.scale, lpips)}
    log_images(accelerator, "val/lr_sample_hr", torch.cat([batch["lr"], x1, batch["hr"]], dim=-1), step)
    return logs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args, "oftsr-teacher")
    model = build_model(args)
    ema = EMA(model, args.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                 weight_decay=args.adam_weight_decay)
    scheduler = warmup_schedule(optimizer, args.lr_warmup_steps)
    dataloader = make_dataloader(args, args.train_data_dir, sigma_y=args.sigma_y)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    ema.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)
    resume(accelerator, args)
    val_batch = validation_batch(args, accelerator.device)
    lpips = make_validation_lpips() if val_batch is not None and accelerator.is_main_process else None

    from tqdm.auto import tqdm

    bar = tqdm(total=args.max_train_steps, initial=state.step, desc="teacher", disable=not accelerator.is_local_main_process)
    batches = train_batches(accelerator, dataloader, state.step, args.gradient_accumulation_steps)
    while state.step < args.max_train_steps:
        batch = next(batches)
        with accelerator.accumulate(model):
            x1, x_lr = batch["hr"], batch["lr"]
            t = sample_flow_time(x1.shape[0], x1.device)
            loss = teacher_loss(model, x1, x_lr, args.sigma_p, torch.randn_like(x1), t)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        ema.update(accelerator.unwrap_model(model))
        state.step += 1
        bar.update(1)
        logs = {"loss": accelerator.gather(loss.detach()).mean().item(), "lr": scheduler.get_last_lr()[0]}
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if val_batch is not None and state.step % args.validation_steps == 0 and accelerator.is_main_process:
            logs.update(validate(accelerator, accelerator.unwrap_model(model), ema, val_batch, args, state.step, lpips))
            logger.info("step %d: %s", state.step, {k: float(f"{v:.4g}") for k, v in logs.items()})
        log_metrics(accelerator, args.output_dir, logs, state.step)
        if state.step % args.checkpointing_steps == 0 or state.step == args.max_train_steps:
            save_checkpoint(accelerator, args.output_dir, state.step, args.checkpoints_total_limit,
                            accelerator.unwrap_model(model))
    bar.close()

    if accelerator.is_main_process:
        path = export_ema(model_info(accelerator.unwrap_model(model), state.step), ema.shadow_params,
                          Path(args.output_dir) / "teacher.safetensors")
        logger.info("exported EMA weights to %s", path)
    accelerator.end_training()


if __name__ == "__main__":
    main()
