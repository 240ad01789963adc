#!/usr/bin/env python
"""Export a training checkpoint folder (from train_teacher.py or distill.py) as our
`.safetensors` model file, with the EMA weights (default) or the raw weights.

    python trainer/export.py runs/teacher/checkpoint-5000 teacher.safetensors
    python trainer/export.py runs/teacher teacher.safetensors   # its newest complete checkpoint

An existing output file is replaced only with --overwrite; the file is written whole or
not at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from checkpoints import MODEL_INFO, export_model, is_cut_short, list_checkpoints
from common import run_script
from flags import HelpFormatter

from oftsr.checkpoint import canonical_state_dict
from oftsr.files import check_new_file


def find_checkpoint(path: str) -> Path:
    p = Path(path)
    if (p / MODEL_INFO).is_file():
        return p
    found = list_checkpoints(str(p))
    if not found:
        raise FileNotFoundError(f"{p} is neither a checkpoint folder nor a run folder with checkpoint-N inside")
    return found[-1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint-N folder, or a run's --output_dir (its newest checkpoint)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    args = p.parse_args(argv)

    check_new_file(args.output, args.overwrite)
    ckpt = find_checkpoint(args.checkpoint)
    try:
        info = json.loads((ckpt / MODEL_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # missing, or cut short: say which file, not a bare parser message
        raise ValueError(f"{ckpt / MODEL_INFO} is unreadable ({e}): the checkpoint is damaged or not one of this "
                         f"trainer's; export another checkpoint of the run") from e
    source = ckpt / ("model.safetensors" if args.raw else "custom_checkpoint_0.pkl")
    try:
        if args.raw:
            params = list(canonical_state_dict(load_file(source)).values())
        else:
            # The EMA is the first object registered for checkpointing; its state holds only
            # numbers and tensors, so the weights-only loader reads it.
            params = torch.load(source, map_location="cpu", weights_only=True)["shadow_params"]
    except Exception as e:  # missing, empty or cut short (a full disk, a copy cut short): say which, not a traceback
        damage = ("is missing" if not source.is_file() else "is empty" if source.stat().st_size == 0
                  else "is cut short" if is_cut_short(source)
                  else f"is damaged ({type(e).__name__}: {str(e).strip().splitlines()[0].split('. ')[0][:200]})")
        raise ValueError(f"{source} {damage}; export another checkpoint of the run"
                         + ("" if args.raw else ", or this one's raw weights with --raw")) from e
    if args.raw:  # `oftsr info` tells the two exports apart
        info = {**info, "metadata": {**info.get("metadata", {}), "weights": "raw (not EMA)"}}
    out = export_model(info, params, Path(args.output))
    print(f"wrote {out} ({info['role']}, step {info['step']}, {'raw' if args.raw else 'EMA'} weights)")


if __name__ == "__main__":
    run_script(main)
