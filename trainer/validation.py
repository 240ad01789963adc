"""Validation during training: a fixed batch of centre crops from --validation_data_dir,
the EMA network that is scored on it, its scores and the images sent to the trackers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common import logger  # also puts the checkout on sys.path

import oftsr
from oftsr.flow import noise_augment
from oftsr.training.data import SRDataset, warn_image_sizes
from oftsr.training.metrics import LPIPS, LPIPSUnavailable, quality
from oftsr.training.realesrgan import REALESRGAN_CONFIGS

if TYPE_CHECKING:
    from accelerate import Accelerator

    from oftsr.training.ema import EMA


@torch.no_grad()
def validation_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor] | None:
    """A fixed batch of center crops from the validation folder (or None)."""
    if not args.validation_data_dir:
        return None
    train, val = Path(args.train_data_dir).resolve(), Path(args.validation_data_dir).resolve()
    if _inside(val, train) or _inside(train, val):
        logger.warning("--validation_data_dir %s overlaps --train_data_dir %s: its scores are on images the model "
                       "trains on, so they overstate how it does on others", args.validation_data_dir,
                       args.train_data_dir)
    ds = SRDataset(args.validation_data_dir, resolution=args.validation_resolution, scale=args.scale,
                   degradation=args.degradation, random_flip=False, center_crop=True, seed=args.seed,
                   sigma_y=args.sigma_y, realesrgan_config=REALESRGAN_CONFIGS[args.realesrgan_config],
                   purpose="validation")
    items, used = [], []
    for i in range(len(ds.files)):
        item = ds[i]
        if ds.unreadable(i):  # the dataset gave the next file's crop instead: that one comes in its own turn
            continue
        items.append(item)
        used.append(ds.files[i])
        if len(items) == args.num_validation_images:
            break
    logger.info("validation: %d of the %d images in %s (%d px centre crops): %s", len(used), len(ds.files),
                args.validation_data_dir, args.validation_resolution,
                ", ".join(str(p.relative_to(ds.root)) for p in used[:8]) + (", ..." if len(used) > 8 else ""))
    warn_image_sizes(used, args.validation_resolution, purpose="validation")
    return {k: torch.stack([it[k] for it in items]).to(device) for k in ("hr", "lr")}


def _inside(folder: Path, other: Path) -> bool:
    """Whether `folder` is `other` or lies in it (the same folder however spelt: a case-
    insensitive file system, links)."""
    for parent in (folder, *folder.parents):
        try:
            if os.path.samefile(parent, other):
                return True
        except OSError:
            pass
    return False


def ema_copy(model: oftsr.OFTSRModel, ema: EMA, device: torch.device) -> oftsr.OFTSRModel:
    """A separate eval-mode model holding the EMA weights (the training model is untouched)."""
    with torch.device("meta"):  # no random init (the EMA weights replace it): training's random stream untouched
        unet = oftsr.UNet(model.config)
    net = oftsr.OFTSRModel(unet.to_empty(device=device), **model.settings()).eval()
    ema.copy_to(net.unet)
    return net


def validation_start(net: oftsr.OFTSRModel, batch: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """x0 for the validation batch, with the same noise at every validation."""
    noise = torch.randn(batch["lr"].shape, generator=torch.Generator().manual_seed(seed)).to(batch["lr"].device)
    return noise_augment(batch["lr"], net.sigma_p, noise)


def validation_scores(name: str, out: torch.Tensor, batch: dict[str, torch.Tensor], scale: int,
                      lpips: LPIPS | None) -> dict[str, float]:
    """`val/<name>/<measure>` for outputs in [-1, 1] against the batch's HR crops."""
    scores = quality(((out.clamp(-1, 1) + 1) / 2).float().cpu(), ((batch["hr"] + 1) / 2).float().cpu(), scale, lpips)
    return {f"val/{name}/{k}": v for k, v in scores.items()}


def make_validation_lpips() -> LPIPS | None:
    """LPIPS when its weights are present here (never downloaded), else None with a log line.
    Built on a forked RNG: its layers' initialisation would otherwise move the global
    generator, which a resumed run has just restored, and change the t and noise it draws."""
    try:
        with torch.random.fork_rng(devices=[]):
            return LPIPS("cpu")
    except LPIPSUnavailable as e:
        logger.info("validation LPIPS %s", e)
        return None


def log_images(accelerator: Accelerator, name: str, images: torch.Tensor, step: int) -> None:
    """Validation images (B, 3, H, W) in [-1, 1] to the trackers that show images."""
    pictures = ((images.clamp(-1, 1) + 1) / 2).float().cpu()
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(name, pictures, step)
        elif tracker.name == "wandb":
            import wandb

            levels = (pictures * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            tracker.log({name: [wandb.Image(picture) for picture in levels]}, step=step)
