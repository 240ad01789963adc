#!/usr/bin/env python
"""The floor and spread of the realism measure on a folder of HR images: the ground truth
against itself moved by a few pixels (a perfect output, up to the shift) and the bicubic
x4 upsampling of its LR, over several patch seeds, for each patch count.

    python scripts/realism_floor.py data/val/Set5 --patches 256 4096 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from oftsr.images import list_images, load_image  # noqa: E402
from oftsr.training.evaluate import baseline_upsample, degrade_image, quantize  # noqa: E402
from oftsr.training.metrics import realism_swd  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a folder of HR images")
    p.add_argument("--patches", type=int, nargs="+", default=[256, 4096], help="patches per image to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="patch seeds")
    p.add_argument("--shift", type=int, default=8, help="pixels the ground truth is moved by")
    p.add_argument("--scale", type=int, default=4)
    args = p.parse_args(argv)
    images = []
    for path in list_images([args.data]):
        hr = load_image(path)[0][:, :3]
        images.append(hr[..., : hr.shape[-2] // args.scale * args.scale, : hr.shape[-1] // args.scale * args.scale])
    s = args.shift
    for patches in args.patches:
        for seed in args.seeds:
            def mean(pairs):
                return sum(realism_swd(x, y, patches_per_image=patches, seed=seed) for x, y in pairs) / len(images)
            floor = mean((hr[..., s:, s:], hr[..., :-s, :-s]) for hr in images)
            bicubic = mean((quantize(baseline_upsample(quantize(degrade_image(hr, args.scale)), args.scale)), hr)
                           for hr in images)
            print(f"{patches} patches, seed {seed}: ground truth moved {s} px {floor:.2f}, bicubic {bicubic:.2f}")


if __name__ == "__main__":
    main()
