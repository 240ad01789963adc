"""Resampling between LR and HR as each degradation defines it (images in [-1, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize, no clamping or rounding (the paper's convention)."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def bicubic_downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not divisible by the scale {scale}; crop it first")
    return bicubic_resize(x, (h // scale, w // scale))


def upsample_lr(x_lr: torch.Tensor, scale: int, degradation: str = "bicubic") -> torch.Tensor:
    """Bring an LR image to HR size the way the model was trained: block replication for
    the average-pooling degradation, bicubic otherwise."""
    size = (x_lr.shape[-2] * scale, x_lr.shape[-1] * scale)
    if degradation == "noisy_avgpool":
        return F.interpolate(x_lr, size=size, mode="nearest")
    return bicubic_resize(x_lr, size)


def noisy_avgpool_downsample(x: torch.Tensor, scale: int, sigma_y: float, noise: torch.Tensor) -> torch.Tensor:
    """The noisy FFHQ measurement: scale x scale average pooling plus N(0, sigma_y^2) noise
    (on the [-1, 1] scale); `noise` has the LR shape."""
    return F.avg_pool2d(x, scale) + sigma_y * noise


def make_lr(hr: torch.Tensor, scale: int, degradation: str, *, generator: torch.Generator | None = None,
            sigma_y: float = 0.05) -> torch.Tensor:
    """The model's condition x_lr at HR size in [-1, 1] from an HR batch (B, 3, H, W) in
    [-1, 1], degraded the way `degradation` defines (seeded through `generator`)."""
    if degradation == "bicubic":
        return upsample_lr(bicubic_downsample(hr, scale), scale, degradation)
    if degradation == "noisy_avgpool":
        h, w = hr.shape[-2:]
        noise = torch.randn(hr.shape[0], hr.shape[1], h // scale, w // scale, generator=generator).to(hr.device)
        return upsample_lr(noisy_avgpool_downsample(hr, scale, sigma_y, noise), scale, degradation)
    if degradation == "realesrgan":
        import numpy as np

        from .realesrgan import degrade_realesrgan, upsample_realesrgan_lr

        seed = int(torch.randint(2**31 - 1, (), generator=generator))
        lr = degrade_realesrgan(((hr + 1) / 2).cpu(), scale, np.random.default_rng(seed))
        return upsample_realesrgan_lr(lr * 2 - 1, scale).to(hr.device)
    raise ValueError(f"unknown degradation {degradation!r}; choose bicubic, noisy_avgpool or realesrgan")
