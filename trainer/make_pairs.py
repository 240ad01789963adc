#!/usr/bin/env python
r"""Make the teacher's (start noise, end point, LR) pairs that `distill.py --objective fluxsr`
trains on: LR crops of the HR photographs, each integrated by the teacher's multi-step
sampler. Deterministic per --seed; resumable (complete shards are kept, an interrupted
shard is redone); several processes split the shards.

    accelerate launch trainer/make_pairs.py --teacher teacher.safetensors \
        --train_data_dir DATA --output_dir runs/pairs --num_pairs 20000 --resolution 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# common also puts the checkout on sys.path
from common import load_teacher, logger, multi_cpu, process_logger, run_script, scan_once, setup_logging
from flags import HelpFormatter, positive_int, unit_interval

from oftsr.checkpoint import network_digest
from oftsr.model import DEGRADATIONS
from oftsr.sampling import SOLVERS
from oftsr.training.data import SRDataset, warn_image_sizes
from oftsr.training.pairs import make_pairs, write_manifest
from oftsr.training.realesrgan import REALESRGAN_CONFIGS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--teacher", required=True,
                   help="teacher: a bundled model's name (x4), our .safetensors or an authors' .pth")
    p.add_argument("--train_data_dir", required=True, help="folder of HR images (recursive)")
    p.add_argument("--output_dir", required=True, help="folder for pairs.json and the shards")
    p.add_argument("--num_pairs", type=positive_int, default=10_000)
    p.add_argument("--shard_size", type=positive_int, default=256, help="pairs per .safetensors shard")
    p.add_argument("--resolution", type=positive_int, default=256, help="HR crop size")
    p.add_argument("--steps", type=positive_int, default=16, help="teacher solver steps")
    p.add_argument("--solver", choices=[s for s in SOLVERS if s != "adaptive"], default="midpoint")
    p.add_argument("--batch_size", type=positive_int, default=8, help="pairs per teacher forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=None, help="default: the teacher's")
    p.add_argument("--degradation", choices=DEGRADATIONS, default=None, help="default: the teacher's")
    p.add_argument("--sigma_p", type=unit_interval, default=None, help="default: the teacher's")
    p.add_argument("--realesrgan_config", choices=sorted(REALESRGAN_CONFIGS), default=None,
                   help="ranges of a realesrgan teacher's degradation (full or camera); default: the teacher's")
    p.add_argument("--sigma_y", type=float, default=None,
                   help="measurement noise of a noisy_avgpool teacher's degradation; default: the teacher's")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from accelerate import PartialState

    args = parse_args(argv)
    setup_logging()
    state = PartialState(cpu=multi_cpu())  # else each CPU process would make every shard
    teacher = load_teacher(args, state.device)
    sizes = scan_once(args.train_data_dir)
    data = SRDataset(args.train_data_dir, resolution=args.resolution, scale=teacher.scale,
                     degradation=teacher.degradation, seed=args.seed, sigma_y=args.sigma_y,
                     realesrgan_config=REALESRGAN_CONFIGS[args.realesrgan_config],
                     files=list(sizes))
    warn_image_sizes(data.files, args.resolution, tiles_hint=False, sizes=sizes)  # each image gives few pairs
    settings = {"teacher": Path(args.teacher).name, "teacher_step": teacher.step,
                "teacher_digest": network_digest(teacher), "sigma_p": teacher.sigma_p,
                "scale": teacher.scale, "degradation": teacher.degradation, "resolution": args.resolution,
                "steps": args.steps, "solver": args.solver, "seed": args.seed, "num_pairs": args.num_pairs,
                "shard_size": args.shard_size, "source_images": len(data.files)}
    # Only when not "full": folders made before the option keep resuming.
    if teacher.degradation == "realesrgan" and args.realesrgan_config != "full":
        settings["realesrgan_config"] = args.realesrgan_config
    if teacher.degradation == "noisy_avgpool":
        settings["sigma_y"] = f"{args.sigma_y:g}"
    out = Path(args.output_dir)
    if state.is_main_process:
        write_manifest(out, settings)
    state.wait_for_everyone()
    n = make_pairs(teacher, data, out, num_pairs=args.num_pairs, shard_size=args.shard_size, seed=args.seed,
                   steps=args.steps, solver=args.solver, batch_size=args.batch_size,
                   shards=lambda i: i % state.num_processes == state.process_index,
                   log=lambda s: process_logger.info("process %d: %s", state.process_index, s))
    if state.num_processes > 1:  # each process counts its own shards
        from accelerate.utils import gather

        n = int(gather(torch.tensor([n], device=state.device)).sum().item())
    state.wait_for_everyone()
    if state.is_main_process:
        logger.info("%s: %d pairs of %d px (%s teacher, %s x %d steps); %d shard(s) written now",
                    out, args.num_pairs, args.resolution, teacher.degradation, args.solver, args.steps, n)


if __name__ == "__main__":
    run_script(main)
