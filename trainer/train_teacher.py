#!/usr/bin/env python
r"""Stage 1: train the OFTSR teacher, a conditional rectified flow from the noised LR image
to the HR image (L1 velocity loss, t ~ U[0.001, 1]).

    accelerate launch trainer/train_teacher.py --train_data_dir DATA --output_dir runs/teacher \
        --preset small --sigma_p 0.2 --max_train_steps 100000
"""

from __future__ import annotations

import launcher  # noqa: F401  first: the launcher is found before the imports below take their seconds

import argparse
import logging
from typing import TYPE_CHECKING

import torch

from common import load_init_weights, make_accelerator, make_dataloader, resolve_train_steps, run_script
from flags import (HelpFormatter, add_common_args, below_one, check_data_dirs, make_optimizer, positive_int,
                   settle_resolution, unit_interval)
from loop import lr_schedule, run_training
from validation import ema_copy, log_images, validation_scores, validation_start

import oftsr
from oftsr.checkpoint import recorded_settings
from oftsr.training.degradations import DEGRADATION_SETTINGS
from oftsr.training.ema import EMA
from oftsr.flow import time_grid
from oftsr.training.losses import sample_flow_time, teacher_loss
from oftsr.sampling import evaluations, get_sampler
from oftsr.unet import PRESETS
from oftsr.weights import BUNDLED_MODELS

if TYPE_CHECKING:
    from accelerate import Accelerator

    from oftsr.training.metrics import LPIPS

logger = logging.getLogger("oftsr.trainer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p, lr=1e-4, batch=32, steps=100_000)
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help=f"the network's size (default: --init_from's, else {MODEL_DEFAULTS['preset']})")
    p.add_argument("--init_from", default=None,
                   help=f"fine-tune: start from these weights, a bundled model's name ({', '.join(BUNDLED_MODELS)}: its "
                        "teacher), our .safetensors or an authors' .pth. The flags of the model left out (--preset, "
                        "--scale, --sigma_p, --degradation and its settings) take what its file records")
    p.add_argument("--sigma_p", type=unit_interval, default=None,
                   help=f"start-point noise (0.1 FFHQ, 0.2 DIV2K/ImageNet; default: --init_from's, else "
                        f"{MODEL_DEFAULTS['sigma_p']})")
    p.add_argument("--dropout", type=below_one, default=0.1)
    p.add_argument("--validation_nfe_steps", type=positive_int, default=8, help="midpoint steps for validation (NFE 2N-1)")
    p.set_defaults(scale=None, degradation=None, realesrgan_config=None, sigma_y=None)  # settle_model_flags
    args = p.parse_args(argv)
    args.random_flip = args.random_flip is not False
    settle_model_flags(args)
    settle_resolution(args, "--scale")
    return args


# The model's flags without --init_from (with it, their defaults are what its file records),
# the settings of the degradations among them.
SETTING_DEFAULTS = dict(DEGRADATION_SETTINGS.values())
MODEL_DEFAULTS = {"preset": "div2k", "scale": 4, "sigma_p": 0.2, "degradation": "bicubic", **SETTING_DEFAULTS}


def settle_model_flags(args: argparse.Namespace) -> None:
    """A fine-tune goes on with the model it starts from: each model flag left out takes
    what --init_from's file records (`x4-real` fine-tunes the realesrgan degradation with its
    camera ranges, not bicubic), else MODEL_DEFAULTS; its --preset is left None for
    `build_model` to read off its weights. A flag given is taken, even where it differs
    (another degradation or scale is a fine-tune's usual aim): `args.init_changes` lists
    those, for the log."""
    recorded: dict = {}
    if args.init_from:
        recorded = dict(recorded_settings(oftsr.existing_model_path(args.init_from, "teacher", "--init_from")))
        recorded.pop("architecture", None)  # --preset left out stays None: build_model reads it off the weights
    same_degradation = args.degradation in (None, recorded.get("degradation"))
    args.init_changes = {}
    for key, default in MODEL_DEFAULTS.items():
        if key == "preset" and args.init_from:
            continue
        kind = type(default)
        in_file = recorded.get(key)
        if key in SETTING_DEFAULTS and not same_degradation:
            in_file = None  # the ranges of the degradation it was trained on, not of the one asked for
        in_file = None if in_file is None else kind(in_file)
        given = getattr(args, key)
        if given is None:
            setattr(args, key, default if in_file is None else in_file)
        elif in_file is not None and given != in_file:
            args.init_changes[key] = (in_file, given)


def build_model(args: argparse.Namespace) -> oftsr.OFTSRModel:
    """The teacher to train: --preset's network, or --init_from's with its weights. A file
    whose architecture is not recorded (an authors' .pth) has the architecture its weights
    show, unless --preset says otherwise (which cannot take those weights: refused)."""
    init = config = None
    if args.init_from:
        if args.init_changes:
            logger.info("--init_from %s: fine-tuning it with %s", args.init_from, ", ".join(
                f"--{key} {given} (it has {in_file})" for key, (in_file, given) in args.init_changes.items()))
        init = load_init_weights(args.init_from, "teacher", "--init_from", sigma_p=args.sigma_p, role="teacher",
                                 scale=args.scale)
        if init.role != "teacher":  # its weights map to one step, not to the flow's velocity
            raise ValueError(f"--init_from {args.init_from} is a one-step student; a teacher starts from a teacher's "
                             f"weights (a bundled name such as x4-teacher, or what train_teacher.py exports)")
        preset = next((name for name, c in PRESETS.items() if c == init.config), None)
        its = f"the {preset} preset" if preset else f"architecture {init.config}"
        if args.preset is not None and init.config != PRESETS[args.preset]:
            raise ValueError(f"--init_from {args.init_from} is {its}, not --preset {args.preset}'s: leave --preset "
                             f"out to fine-tune its own (another size cannot take its weights)")
        if args.preset is None:
            config, args.preset = init.config, preset  # None: an architecture of no preset's
            logger.info("--init_from %s: its architecture is %s", args.init_from, its)
    model = oftsr.create_model(config or args.preset, role="teacher", scale=args.scale, sigma_p=args.sigma_p,
                               degradation=args.degradation, dropout=args.dropout)
    if init is not None:
        model.unet.load_state_dict(init.unet.state_dict())
    model.unet.gradient_checkpointing = args.gradient_checkpointing
    return model.requires_grad_(True).train()


@torch.no_grad()
def validate(accelerator: Accelerator, model: torch.nn.Module, ema: EMA, batch: dict[str, torch.Tensor],
             args: argparse.Namespace, step: int, lpips: LPIPS | None) -> dict[str, float]:
    """Teacher samples (midpoint, stated NFE) with the EMA weights on the validation crops."""
    net = ema_copy(model, ema, accelerator.device)
    x0 = validation_start(net, batch, args.seed)
    fn = lambda x, t: net.velocity(x, batch["lr"], t)  # noqa: E731
    x1 = get_sampler("midpoint")(fn, x0, time_grid(args.validation_nfe_steps))
    nfe = evaluations("midpoint", args.validation_nfe_steps)
    logs = {**validation_scores("lr_upsampled", batch["lr"], batch, args.scale, lpips),
            **validation_scores(f"teacher_nfe{nfe}", x1, batch, args.scale, lpips)}
    log_images(accelerator, "val/lr_sample_hr", torch.cat([batch["lr"], x1, batch["hr"]], dim=-1), step)
    return logs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data_dirs(args)
    accelerator = make_accelerator(args, "oftsr-teacher")
    model = build_model(args)
    optimizer = make_optimizer(args, model.parameters())
    dataloader = make_dataloader(args, args.train_data_dir)
    resolve_train_steps(args, dataloader, accelerator.num_processes)
    scheduler = lr_schedule(optimizer, args.lr_scheduler, args.lr_warmup_steps, args.max_train_steps,
                            accelerator.num_processes)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    # after prepare, which gives every process the main one's weights (each drew its own)
    ema = EMA(accelerator.unwrap_model(model), args.ema_decay)

    def step_losses(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x1, x_lr = batch["hr"], batch["lr"]
        t = sample_flow_time(x1.shape[0], x1.device)
        return {"loss": teacher_loss(model, x1, x_lr, args.sigma_p, torch.randn_like(x1), t)}

    return run_training(accelerator, args, model, optimizer, scheduler, dataloader, ema, desc="teacher",
                        step_losses=step_losses, export_name="teacher.safetensors",
                        validate=lambda net, batch, step, lpips: validate(accelerator, net, ema, batch, args, step, lpips))


if __name__ == "__main__":
    run_script(main)
