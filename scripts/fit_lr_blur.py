"""The blur LR images carry, fitted against their HR: for each image, the Gaussian sigma
(HR pixels) that, before an antialiased bicubic reduction, brings the HR closest to the LR
(`oftsr.training.realesrgan.fit_gaussian_blur`). Real pairs, or the LR a Real-ESRGAN
chain makes from HR photographs, so the two can be compared:

    python scripts/fit_lr_blur.py --pairs data/val/RealSR-Canon                 # HR/ and LR/ by name
    python scripts/fit_lr_blur.py --hr data/train --realesrgan_config camera --every 6 --draws 3

Prints each image's sigma with --verbose, then the 10th, 50th and 90th percentiles, the
share of images between 1 and 3 HR pixels, and the mean PSNR (LR space) at the best
single sigma and with no blur. Noise and JPEG in an LR read as sharpness.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from oftsr.images import list_images, load_image
from oftsr.training.evaluate import image_pairs
from oftsr.training.realesrgan import REALESRGAN_CONFIGS, degrade_realesrgan, fit_gaussian_blur


def rgb(path: Path):
    image, _ = load_image(path)
    if image.shape[1] not in (3, 4):
        raise SystemExit(f"error: {path} is not an RGB image")
    return image[0, :3]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pairs", type=Path, help="a folder with HR/ and LR/ images paired by name")
    what.add_argument("--hr", type=Path, help="a folder of HR photographs to degrade")
    p.add_argument("--realesrgan_config", choices=sorted(REALESRGAN_CONFIGS), default="camera")
    p.add_argument("--scale", type=int, default=4, help="of the pairs, or of the degradation (--hr)")
    p.add_argument("--every", type=int, default=1, help="use every Nth photograph (--hr)")
    p.add_argument("--draws", type=int, default=1, help="degradations per photograph (--hr), from one seeded generator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="each image's fitted sigma")
    args = p.parse_args()

    fits = []  # one {sigma: PSNR} per LR
    if args.pairs:
        try:  # matched by name, as `oftsr eval` pairs them
            pairs = image_pairs(args.pairs / "HR", args.pairs / "LR", args.scale)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        fits = [(name, fit_gaussian_blur(hr[0, :3], lr[0, :3])) for name, lr, hr in pairs]
    else:
        rng = np.random.default_rng(args.seed)
        config = REALESRGAN_CONFIGS[args.realesrgan_config]
        for path in list_images([args.hr])[::args.every]:
            hr = rgb(path)
            hr = hr[:, : hr.shape[1] // args.scale * args.scale, : hr.shape[2] // args.scale * args.scale]
            for draw in range(args.draws):
                fits.append((f"{path.name} #{draw}", fit_gaussian_blur(hr, degrade_realesrgan(hr, args.scale, rng, config))))
        if not fits:
            raise SystemExit(f"error: no images in {args.hr}")

    best = np.array([max(f, key=f.get) for _, f in fits])
    if args.verbose:
        for (name, _), sigma in zip(fits, best):
            print(f"{name}: {sigma:g}")
    sigmas = list(fits[0][1])
    mean_psnr = {s: float(np.mean([f[s] for _, f in fits])) for s in sigmas}
    single = max(mean_psnr, key=mean_psnr.get)
    lo, mid, hi = np.percentile(best, [10, 50, 90])
    print(f"{len(fits)} LR images: fitted blur sigma (HR px) 10th/50th/90th percentile {lo:g} / {mid:g} / {hi:g}, "
          f"{np.mean((best >= 1) & (best <= 3)):.0%} between 1 and 3")
    print(f"mean PSNR (LR space): {mean_psnr[single]:.2f} dB at sigma {single:g} for all, "
          f"{mean_psnr[0.0]:.2f} dB with no blur")


if __name__ == "__main__":
    main()
