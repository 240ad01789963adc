"""Resampling between LR and HR as each degradation defines it (images in [-1, 1]).
Used at inference; the degradations that make training and evaluation pairs are in
`oftsr.training.degradations`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize, no clamping or rounding (the paper's convention)."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def upsample_lr(x_lr: torch.Tensor, scale: int, degradation: str = "bicubic") -> torch.Tensor:
    """Bring an LR image to HR size the way the model was trained: block replication for
    the average-pooling degradation, plain bicubic (no antialias, which changes the
    kernel even when up-sampling) for Real-ESRGAN, antialiased bicubic otherwise."""
    size = (x_lr.shape[-2] * scale, x_lr.shape[-1] * scale)
    if degradation == "noisy_avgpool":
        return F.interpolate(x_lr, size=size, mode="nearest")
    if degradation == "realesrgan":
        return F.interpolate(x_lr, size=size, mode="bicubic", align_corners=False, antialias=False)
    return bicubic_resize(x_lr, size)
