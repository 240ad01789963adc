"""The flags the training scripts share, diffusers' names and defaults, and their checks
(each refused with its flag named before anything is loaded)."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable
from pathlib import Path

import torch

from common import EXIT_RESUMABLE  # also puts the checkout on sys.path

from oftsr.checks import ranged_argument
from oftsr.files import file_in_the_way
from oftsr.model import DEGRADATIONS
from oftsr.training.degradations import SIGMA_Y
from oftsr.training.realesrgan import REALESRGAN_CONFIGS


LR_SCHEDULES = ("constant", "linear", "cosine")  # --lr_scheduler, after the warm-up

# diffusers' names for the same schedules (its "constant" skips the warm-up; ours always warms up)
LR_SCHEDULE_ALIASES = {"constant_with_warmup": "constant"}


# Refused as flags: a checkpoint every 0 steps, a limit of 0 checkpoints, ... would fail
# after the first step, or do nothing.
positive_int = ranged_argument(int, lambda v: v >= 1, "1 or more")
non_negative_int = ranged_argument(int, lambda v: v >= 0, "0 or more")
non_negative_float = ranged_argument(float, lambda v: v >= 0, "0 or more")
positive_float = ranged_argument(float, lambda v: v > 0, "more than 0")
unit_interval = ranged_argument(float, lambda v: 0 <= v <= 1, "between 0 and 1")  # a probability or a decay
# a dropout of 1 drops everything; an Adam decay of 1 never forgets
below_one = ranged_argument(float, lambda v: 0 <= v < 1, "0 or more and below 1")
open_unit_interval = ranged_argument(float, lambda v: 0 < v < 1, "more than 0 and below 1")  # a step along the flow's t


def add_common_args(p: argparse.ArgumentParser, *, lr: float, batch: int, steps: int) -> None:
    """The diffusers-style flags both scripts share (defaults: the paper's, scaled to one GPU)."""
    p.add_argument("--train_data_dir", required=True, help="folder of HR images (recursive)")
    p.add_argument("--validation_data_dir", default=None, help="folder of HR images for validation")
    p.add_argument("--output_dir", required=True,
                   help="folder of the run: checkpoints, metrics.jsonl, the trackers' logs and the exported model")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="HR crop size in pixels, a multiple of the scale (default 256, or the multiple of the scale "
                        "just below it, 255 at x3; distill.py --objective fluxsr: the pairs')")
    p.add_argument("--train_batch_size", type=positive_int, default=batch, help="per device")
    p.add_argument("--max_train_steps", type=positive_int, default=None,
                   help=f"optimizer steps to train (default: {steps}, or what --num_train_epochs makes)")
    p.add_argument("--num_train_epochs", type=positive_int, default=None,
                   help="passes over the training data, counted in optimizer steps when the data is read; "
                        "--max_train_steps wins when both are given")
    p.set_defaults(default_train_steps=steps)
    p.add_argument("--learning_rate", type=positive_float, default=lr)
    p.add_argument("--lr_warmup_steps", type=non_negative_int, default=1000,
                   help="linear warm-up, in optimizer steps (distill.py: at most a tenth of --max_train_steps)")
    p.add_argument("--lr_scheduler", choices=LR_SCHEDULES, default="constant",
                   type=lambda name: LR_SCHEDULE_ALIASES.get(name, name),
                   help="after the warm-up: constant (the paper's; diffusers' constant_with_warmup is the same), or a "
                        "linear or cosine decay to 0 at --max_train_steps")
    p.add_argument("--adam_beta1", type=below_one, default=0.9)
    p.add_argument("--adam_beta2", type=below_one, default=0.999)
    p.add_argument("--adam_epsilon", type=positive_float, default=1e-8)
    p.add_argument("--adam_weight_decay", type=non_negative_float, default=0.0,
                   help="torch.optim.Adam's weight_decay, an L2 term added to the gradient (the paper's Adam has none); "
                        "not AdamW's decoupled decay of diffusers' scripts")
    p.add_argument("--max_grad_norm", type=non_negative_float, default=1.0,
                   help="clip the gradient to this norm; 0 = no clipping (default 1, the paper's)")
    p.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: what `accelerate config` says under `accelerate launch`; none with plain python")
    p.add_argument("--allow_tf32", action="store_true",
                   help="TF32 tensor cores for float32 matrix products on Ampere and newer GPUs (faster, ~1e-3 relative)")
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute each UNet block in the backward pass instead of keeping its activations: a "
                        "bigger --train_batch_size or --resolution fits in memory, for about a third more compute")
    p.add_argument("--checkpointing_steps", type=positive_int, default=5000)
    p.add_argument("--checkpoints_total_limit", type=positive_int, default=None,
                   help="keep only the newest N checkpoints (default: all)")
    p.add_argument("--max_train_minutes", type=non_negative_float, default=None,
                   help="stop at the first step after this many minutes from the script's start, save a checkpoint "
                        f"and exit with status {EXIT_RESUMABLE} (a job's time limit: allow a step and a save after "
                        "it); SIGTERM and Ctrl-C do the same at once")
    p.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder, or "latest"')
    p.add_argument("--report_to", default="tensorboard",
                   help='tensorboard, wandb (or several, separated by commas), all, or "none"')
    p.add_argument("--logging_dir", default="logs",
                   help="the trackers' folder (tensorboard's events), under --output_dir unless absolute (default logs)")
    p.add_argument("--tracker_project_name", default=None,
                   help="the project the trackers log to (a wandb project; default oftsr-teacher or oftsr-distill)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation_steps", type=positive_int, default=1000,
                   help="validate on --validation_data_dir every N steps, and at the last step")
    p.add_argument("--num_validation_images", type=positive_int, default=4)
    p.add_argument("--validation_resolution", type=positive_int, default=None,
                   help="size of the validation centre crops, a multiple of the scale (default: --resolution). A "
                        "fine-tune on small crops can lose on whole images what crops that small do not show")
    p.add_argument("--dataloader_num_workers", type=non_negative_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=1, help="random crops of each training image per epoch")
    p.add_argument("--max_train_samples", type=positive_int, default=None,
                   help="train on this many of the folder's images, drawn with --seed (a quick trial; the whole "
                        "folder is still scanned once)")
    p.add_argument("--scale_lr", action="store_true",
                   help="multiply --learning_rate by the crops per optimizer step (batch x processes x accumulation), "
                        "as diffusers' scripts do")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--random_flip", dest="random_flip", action="store_true", default=None,  # None: not given
                      help="flip each crop left-right with probability 1/2: the default here (diffusers' scripts "
                           "need this flag for it)")
    flip.add_argument("--no_random_flip", dest="random_flip", action="store_false",
                      help="no flips, for images whose handedness matters, such as text (default: flips)")
    p.add_argument("--scale", type=positive_int, default=4, help="upscaling factor (distill.py: default the teacher's)")
    p.add_argument("--degradation", choices=DEGRADATIONS, default="bicubic",
                   help="how training LR images are made (distill.py: default the teacher's)")
    p.add_argument("--realesrgan_config", choices=sorted(REALESRGAN_CONFIGS), default="full",
                   help="ranges of the realesrgan degradation: full (the published second-order chain) or camera "
                        "(one stage, a lens's blur, mild noise and JPEG: photographs from a camera); "
                        "distill.py: default the teacher's")
    p.add_argument("--sigma_y", type=float, default=SIGMA_Y,
                   help="measurement noise of the noisy_avgpool degradation; distill.py: default the teacher's")
    p.add_argument("--ema_decay", type=unit_interval, default=0.9999)


def check_data_dirs(args: argparse.Namespace) -> None:
    """The folders the flags name, checked before anything is loaded, with the flag in the message."""
    for flag in ("train_data_dir", "validation_data_dir"):
        folder = getattr(args, flag, None)
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"--{flag} {folder} " + ("is not a folder" if Path(folder).exists()
                                                               else "does not exist"))
    output = getattr(args, "output_dir", None)
    blocking = file_in_the_way(output) if output else None
    if blocking is not None:
        raise ValueError(f"--output_dir {output}: {blocking} is a file, not a folder")


def adam_settings(args: argparse.Namespace) -> dict:
    """Adam's settings from the --adam_* flags, by the optimizer's own names."""
    return {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
            "weight_decay": args.adam_weight_decay}


def make_optimizer(args: argparse.Namespace, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam with the --adam_* flags (the paper's optimizer)."""
    return torch.optim.Adam(params, lr=args.learning_rate, **adam_settings(args))


def _no_default(action: argparse.Action) -> bool:
    """None ("not given"), a suppressed one, or a switch's False; 0 is a default to show."""
    return action.default is None or action.default is argparse.SUPPRESS or action.default is False


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The scripts' --help: their docstring as written, and the default of every flag whose
    help does not already say it (a default of None means "not given": left out)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and not _no_default(action):
            action = copy.copy(action)  # argparse prints nothing for a flag without help, not even its default
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or _no_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: {action.default})" if text else f"default: {action.default}"


DEFAULT_RESOLUTION = 256


def settle_resolution(args: argparse.Namespace, scale_from: str) -> None:
    """--resolution and --validation_resolution must be multiples of the scale (`scale_from`
    names where the scale came from: --scale, or the teacher): left out, --resolution is
    DEFAULT_RESOLUTION or the multiple just below it, and --validation_resolution is
    --resolution; given, a multiple, or refused with the nearest one."""
    if args.resolution is None:
        args.resolution = max(args.scale, DEFAULT_RESOLUTION // args.scale * args.scale)
    if getattr(args, "validation_resolution", None) is None:
        args.validation_resolution = args.resolution
    for flag in ("resolution", "validation_resolution"):
        size = getattr(args, flag)
        if size % args.scale:
            fits = max(args.scale, size // args.scale * args.scale)
            raise ValueError(f"--{flag} {size} is not a multiple of {scale_from} {args.scale}: pass --{flag} {fits}")
