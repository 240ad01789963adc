"""Degradations that make LR images from HR ones for training and evaluation (images in [-1, 1])."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..model import DEGRADATIONS
from ..resample import bicubic_resize, upsample_lr
from .realesrgan import RealESRGANConfig, degrade_realesrgan

SIGMA_Y = 0.05  # the noisy FFHQ task's measurement noise, on the [-1, 1] scale

# The setting each degradation has beyond its name, and its value where a file or folder
# does not record it (made before it was recorded, or with the default): the ranges of the
# Real-ESRGAN chain, the noise of the average pooling. Bicubic has none.
DEGRADATION_SETTINGS: dict[str, tuple[str, str | float]] = {"realesrgan": ("realesrgan_config", "full"),
                                                            "noisy_avgpool": ("sigma_y", SIGMA_Y)}


def degradation_settings(degradation: str, given: Mapping[str, object]) -> dict[str, str | float]:
    """{setting: value} of `degradation` as `given` (a file's metadata, a pairs folder's
    manifest, a run's flags) says it, typed, and its default where `given` does not
    (None counts as not given); {} for a degradation without one."""
    if degradation not in DEGRADATION_SETTINGS:
        return {}
    key, default = DEGRADATION_SETTINGS[degradation]
    value = given.get(key)
    return {key: default if value is None else type(default)(value)}


def settings_text(settings: Mapping[str, str | float]) -> dict[str, str]:
    """`degradation_settings` as a file's metadata holds them (text; 0.05, not 0.05000000000000000277)."""
    return {key: f"{value:g}" if isinstance(value, float) else str(value) for key, value in settings.items()}


def check_divisible(hr: torch.Tensor, scale: int) -> None:
    """An HR image must be `scale` times its LR: a remainder would make a pair whose sides
    disagree, which fails later somewhere else."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not divisible by the scale {scale}; crop it first")


def bicubic_downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    check_divisible(x, scale)
    return bicubic_resize(x, (x.shape[-2] // scale, x.shape[-1] // scale))


def noisy_avgpool_downsample(x: torch.Tensor, scale: int, sigma_y: float, noise: torch.Tensor) -> torch.Tensor:
    """The noisy FFHQ measurement: scale x scale average pooling plus N(0, sigma_y^2) noise
    (on the [-1, 1] scale); `noise` has the LR shape."""
    return F.avg_pool2d(x, scale) + sigma_y * noise


def degrade(hr: torch.Tensor, scale: int, degradation: str, *, generator: torch.Generator | None = None,
            sigma_y: float = SIGMA_Y, realesrgan_config: RealESRGANConfig | None = None) -> torch.Tensor:
    """The LR image (LR size, [-1, 1]) of an HR batch (B, 3, H, W) in [-1, 1], degraded the
    way `degradation` defines (random parts seeded through `generator`). `realesrgan_config`
    sets the ranges of the Real-ESRGAN pipeline (default: the published ones)."""
    check_divisible(hr, scale)  # every degradation: average pooling would drop the remainder
    if degradation == "bicubic":
        return bicubic_downsample(hr, scale)
    if degradation == "noisy_avgpool":
        h, w = hr.shape[-2:]
        noise = torch.randn(hr.shape[0], hr.shape[1], h // scale, w // scale, generator=generator).to(hr.device)
        return noisy_avgpool_downsample(hr, scale, sigma_y, noise)
    if degradation == "realesrgan":
        seed = int(torch.randint(2**31 - 1, (), generator=generator))
        lr = degrade_realesrgan(((hr + 1) / 2).cpu(), scale, np.random.default_rng(seed),
                                realesrgan_config or RealESRGANConfig())
        return lr.to(hr.device) * 2 - 1
    raise ValueError(f"unknown degradation {degradation!r}; choose one of {', '.join(DEGRADATIONS)}")


def make_lr(hr: torch.Tensor, scale: int, degradation: str, *, generator: torch.Generator | None = None,
            sigma_y: float = SIGMA_Y, realesrgan_config: RealESRGANConfig | None = None) -> torch.Tensor:
    """The model's condition x_lr: the degraded image brought back to HR size, [-1, 1]."""
    lr = degrade(hr, scale, degradation, generator=generator, sigma_y=sigma_y, realesrgan_config=realesrgan_config)
    return upsample_lr(lr, scale, degradation)
