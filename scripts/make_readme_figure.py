#!/usr/bin/env python
"""Make the README's figure (`docs/t_slider.png`): a crop of a photograph upscaled x4 by
bicubic and by the bundled one-step student at three points of the fidelity-realism
slider, side by side and labelled, each cell at the result's own pixels.

    python scripts/make_readme_figure.py --image assets/barn.png --box 32 44 96 92 -o docs/t_slider.png

`--box LEFT TOP RIGHT BOTTOM` is the crop, in input pixels; the whole image is upscaled
(so the crop sees its context) and the crop is cut from the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import oftsr
from oftsr.grid import labelled_grid
from oftsr.images import load_image, save_image
from oftsr.resample import resize

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(ROOT / "assets" / "barn.png"))
    parser.add_argument("--box", type=int, nargs=4, default=(32, 44, 96, 92), metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"))
    parser.add_argument("--model", default="x4")
    parser.add_argument("--t", type=float, nargs="+", default=(0.0, 0.5, 1.0))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "t_slider.png"))
    args = parser.parse_args()

    model = oftsr.load_model(args.model)
    image = load_image(args.image)[0][:, :3]
    s = model.scale
    left, top, right, bottom = (v * s for v in args.box)
    results = [resize(image, (image.shape[-2] * s, image.shape[-1] * s))]  # antialiased bicubic
    results += [oftsr.upscale(model, image, t=t, seed=args.seed) for t in args.t]
    cells = torch.stack([r[0, :, top:bottom, left:right] for r in results])[None]
    labels = ["bicubic"] + [f"t = {t:g}" for t in args.t]
    save_image(labelled_grid(cells, labels), args.output)
    print(f"wrote {args.output}: {cells.shape[-1]}x{cells.shape[-2]} px cells, {', '.join(labels)}")


if __name__ == "__main__":
    main()
