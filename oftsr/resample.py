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


# LR pixels read beyond a region's own: bicubic reads 2 either side of an output pixel's
# source position (nearest none); 3 leaves room for rounding in the kernel windows.
REGION_MARGIN = 3


def upsample_lr_region(x_lr: torch.Tensor, scale: int, degradation: str, top: int, left: int, height: int,
                       width: int) -> torch.Tensor:
    """Output rows top..top+height and columns left..left+width of `upsample_lr(x_lr,
    scale, degradation)`, computed from an LR crop with a margin. The kernels are local,
    so this equals the crop of the whole up-sampled image (to float rounding, also at the
    image borders), at a cost and memory proportional to the region."""
    lr_h, lr_w = x_lr.shape[-2:]
    y0, x0 = max(0, top // scale - REGION_MARGIN), max(0, left // scale - REGION_MARGIN)
    y1 = min(lr_h, -(-(top + height) // scale) + REGION_MARGIN)
    x1 = min(lr_w, -(-(left + width) // scale) + REGION_MARGIN)
    up = upsample_lr(x_lr[..., y0:y1, x0:x1], scale, degradation)
    top, left = top - y0 * scale, left - x0 * scale
    return up[..., top:top + height, left:left + width]


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An image in [0, 1] at another (height, width): antialiased bicubic down, plain bicubic
    up (antialiasing changes the up-sampling kernel), clamped to [0, 1]."""
    if size[0] <= image.shape[-2] and size[1] <= image.shape[-1]:
        out = bicubic_resize(image, size)
    else:
        out = F.interpolate(image, size=size, mode="bicubic", align_corners=False)
    return out.clamp(0, 1)
