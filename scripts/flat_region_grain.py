"""Grain that upscaled images add to flat regions: in each HR image's flattest window (the
lowest Laplacian energy, away from black and white clipping), the RMS of the Laplacian of
the HR and of each upscaled version, on 8-bit luma. An upscaler that invents texture on
flat paint or sky shows a value above the HR's there.

    python scripts/flat_region_grain.py --hr data/val/RealSR-Canon/HR \\
        --sr 'out/{stem}_t0.png' --sr 'out/{stem}_t1.png' [--window 64] [--save crops.png]

Each --sr is a file pattern in which {stem} is the HR file's name without its suffix.
Prints the mean and median over the images for the HR and each pattern; --save writes the
windows side by side (HR first, 3x nearest-neighbour), one row per image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from oftsr.images import list_images

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]


def luma(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32))[None, None]


def flattest_window(hr: torch.Tensor, size: int, stride: int = 16) -> tuple[int, int]:
    """Top-left corner of the size x size window with the least Laplacian energy whose mean
    stays inside (20, 235) of 255."""
    energy = F.avg_pool2d(F.conv2d(hr, LAPLACIAN) ** 2, size, stride=stride)
    level = F.avg_pool2d(hr[..., 1:-1, 1:-1], size, stride=stride)
    energy = torch.where((level > 20) & (level < 235), energy, torch.full_like(energy, float("inf")))
    row, col = divmod(int(energy.flatten().argmin()), energy.shape[-1])
    return row * stride, col * stride


def laplacian_rms(image: torch.Tensor, y: int, x: int, size: int) -> float:
    return float(F.conv2d(image, LAPLACIAN)[..., y:y + size, x:x + size].square().mean().sqrt())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hr", type=Path, required=True, help="folder of HR images")
    p.add_argument("--sr", action="append", required=True, help="pattern of the upscaled files, with {stem}")
    p.add_argument("--window", type=int, default=64, help="window side in HR pixels")
    p.add_argument("--save", type=Path, help="write the windows side by side to this image")
    args = p.parse_args()
    hrs = list_images([args.hr])
    if not hrs:
        raise SystemExit(f"error: no images in {args.hr}")
    rows, crops = [], []
    for path in hrs:
        hr = luma(path)
        y, x = flattest_window(hr, args.window)
        files = [path] + [Path(pattern.format(stem=path.stem)) for pattern in args.sr]
        for f in files[1:]:
            if not f.is_file():
                raise SystemExit(f"error: {f} is missing")
        lumas = [hr] + [luma(f) for f in files[1:]]
        if any(l.shape != hr.shape for l in lumas):
            raise SystemExit(f"error: the upscaled images of {path.name} are not the HR's size {tuple(hr.shape[-2:])}")
        rows.append([laplacian_rms(l, y, x, args.window) for l in lumas])
        if args.save:
            tiles = []
            for f in files:
                with Image.open(f) as im:
                    tile = im.convert("RGB").crop((x, y, x + args.window, y + args.window))
                    tiles.append(np.asarray(tile.resize((3 * args.window,) * 2, Image.NEAREST)))
            crops.append(np.concatenate(tiles, 1))
    table = np.array(rows)
    print(f"Laplacian RMS in the flattest {args.window} px window of each of {len(hrs)} images (8-bit luma):")
    for name, column in zip(["HR", *args.sr], table.T):
        print(f"  {name}: mean {column.mean():.2f}, median {np.median(column):.2f}")
    if args.save:
        Image.fromarray(np.concatenate(crops, 0)).save(args.save)
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
