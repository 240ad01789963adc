"""Image-level super-resolution: `upscale` (one-step student) and `sample` (teacher ODE).

Images are float tensors (B, C, H, W) in [0, 1] with C = 3 (RGB), 1 (grayscale: the
result is grayscale) or 4 (RGBA: alpha is upscaled conventionally and kept).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .resample import bicubic_resize, upsample_lr
from .flow import T_EPS, noise_augment, student_step, time_grid
from .model import OFTSRModel
from .sampling import CountNFE, get_sampler
from .tiling import tiled_apply

__all__ = ["upscale", "sample", "velocity_field"]

Callback = Callable[[int, int], None]


def check_t(t: float) -> float:
    t = float(t)
    if not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1] (0 = fidelity, 1 = realism), got {t}")
    return t


def _split_channels(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (B, C, H, W) tensor in [0, 1], got {shape}")
    b, c, h, w = image.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    if c not in (1, 3, 4):
        raise ValueError(f"image must have 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {c}")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    image = image.clamp(0, 1)
    if c == 1:
        return image.expand(b, 3, h, w), None, True
    return image[:, :3], (image[:, 3:] if c == 4 else None), False


def _join_channels(rgb: torch.Tensor, alpha: torch.Tensor | None, gray: bool) -> torch.Tensor:
    if gray:
        return rgb.mean(dim=1, keepdim=True)
    if alpha is not None:
        alpha = bicubic_resize(alpha, tuple(rgb.shape[-2:])).clamp(0, 1)
        return torch.cat([rgb, alpha], dim=1)
    return rgb


def _start(model: OFTSRModel, rgb: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 and x_lr at HR size in [-1, 1]. The noise is drawn on the CPU for the whole
    image from `seed`, so results do not depend on device or tiling."""
    x_lr = upsample_lr(rgb.to(model.device) * 2 - 1, model.scale, model.degradation)
    noise = torch.randn(x_lr.shape, generator=torch.Generator().manual_seed(int(seed))).to(x_lr.device)
    return noise_augment(x_lr, model.sigma_p, noise), x_lr


def velocity_field(model: OFTSRModel, x: torch.Tensor, x_lr: torch.Tensor, t: float, *, tile: int | None = None,
                   overlap: int | None = None, tile_batch: int = 1, callback: Callback | None = None) -> torch.Tensor:
    """The model's velocity over a whole image, tile by tile when `tile` is set."""
    return tiled_apply(lambda xs, cs: model.velocity(xs, cs, t), x, x_lr, tile=tile, overlap=overlap,
                       tile_batch=tile_batch, callback=callback)


def _require_role(model: OFTSRModel, role: str, use: str) -> None:
    if model.role != role:
        other = "sample() / the teacher sampler" if model.role == "teacher" else "upscale() / the one-step upscaler"
        raise ValueError(f"{use} needs a {role} model, but this model is a {model.role}; use {other} for it")


@torch.inference_mode()
def upscale(model: OFTSRModel, image: torch.Tensor, *, t: float = 1.0, seed: int = 0, tile: int | None = None,
            overlap: int | None = None, tile_batch: int = 1, callback: Callback | None = None) -> torch.Tensor:
    """One-step super-resolution with the student: x1 = x0 + (1 - 0.001) v(x0, x_lr, t).
    t = 0 favours fidelity (smooth, high PSNR), t = 1 realism (detail). `tile` and
    `overlap` are in output pixels. Returns (B, C, scale*H, scale*W) in [0, 1]."""
    _require_role(model, "student", "upscale()")
    t = check_t(t)
    if model.ignores_t:  # FlowSR/FluxSR: x1 = f(x0, T_EPS), the start of the flow, whatever t is asked
        t = T_EPS
    rgb, alpha, gray = _split_channels(image)
    x0, x_lr = _start(model, rgb, seed)
    v = velocity_field(model, x0, x_lr, t, tile=tile, overlap=overlap, tile_batch=tile_batch, callback=callback)
    out = (student_step(x0, v).clamp(-1, 1) + 1) / 2
    return _join_channels(out, None if alpha is None else alpha.to(out.device), gray).to(image.device)


@torch.inference_mode()
def sample(model: OFTSRModel, image: torch.Tensor, *, steps: int = 16, solver: str = "midpoint", seed: int = 0,
           tile: int | None = None, overlap: int | None = None, tile_batch: int = 1,
           callback: Callback | None = None, info: dict | None = None) -> torch.Tensor:
    """Multi-step super-resolution with the teacher, integrating the flow from t = 0.001
    to 1 on the grid t_i = i/N (1 - 0.001) + 0.001. `solver`: euler (NFE N), midpoint or
    heun (NFE 2N - 1), adaptive (dopri5, rtol = atol = 1e-3; `steps` ignored).
    The callback gets (step, steps); `info["nfe"]` receives the evaluation count."""
    _require_role(model, "teacher", "sample()")
    sampler = get_sampler(solver)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rgb, alpha, gray = _split_channels(image)
    x0, x_lr = _start(model, rgb, seed)
    fn = CountNFE(lambda x, t: velocity_field(model, x, x_lr, t, tile=tile, overlap=overlap, tile_batch=tile_batch))
    x1 = sampler(fn, x0, time_grid(int(steps), T_EPS), callback=callback)
    if info is not None:
        info["nfe"] = fn.nfe
    out = (x1.clamp(-1, 1) + 1) / 2
    return _join_channels(out, None if alpha is None else alpha.to(out.device), gray).to(image.device)
