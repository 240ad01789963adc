"""Real-ESRGAN second-order degradation (Wang et al., ICCV-W 2021), used for real-world SR.

One call turns an HR image into the LR image the network is trained on:

    stage 1                 blur -> random resize -> Gaussian/Poisson noise -> JPEG
    stage 2 (p = 0.5)       blur (p = 0.8) -> random resize -> noise -> JPEG
    final, random order     [resize to H/s x W/s + sinc, JPEG]  or  [JPEG, resize + sinc]
    then clamp to [0, 1] and round to 8 bit

Images here are in [0, 1] (the rest of oftsr works in [-1, 1]). The caller then brings
the 8-bit LR back to HR size by bicubic up-sampling without antialias, see
`oftsr.resample.upsample_lr(lr, scale, "realesrgan")`; that resize is linear with weights summing to 1, so it may be
done before or after mapping to [-1, 1] with the same result.

Every random choice is drawn from one numpy Generator, so a seed gives bit-identical
output. The work is done on the CPU, one image at a time (Pillow does the JPEG), which
suits data-loader workers; the result goes back to the input's device.

Not included: the unsharp-masking of the HR target that Real-ESRGAN applies to the
ground truth for some of its losses, and its multiplicative kernel noise (off there).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "DegradationStage",
    "RealESRGANConfig",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "random_kernel",
    "degrade_realesrgan",
    "fit_gaussian_blur",
    "REALESRGAN_CONFIGS",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
ODD_SIZES_7_21 = tuple(range(7, 22, 2))
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class DegradationStage:
    """One blur -> resize -> noise -> JPEG pass. Defaults are Real-ESRGAN's first stage.

    Ranges are (low, high) for a uniform draw. Noise sigma is on the 0..255 scale.
    `noise_prob`, `jpeg_prob` and `blur_prob` = 1 is the published behaviour (always
    applied); they exist so a caller (or a test) can switch a step off.
    """

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = ODD_SIZES_7_21
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    noise_prob: float = 1.0
    gaussian_noise_prob: float = 0.5  # otherwise Poisson
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 1.0
    jpeg_range: tuple[int, int] = (30, 95)


def _stage2_defaults() -> DegradationStage:
    # Milder than stage 1: smaller blur, noise and resize range; blur only 80% of the time.
    return DegradationStage(
        blur_prob=0.8,
        blur_sigma=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass(frozen=True)
class RealESRGANConfig:
    """Real-ESRGAN x4 defaults; change fields with `dataclasses.replace`."""

    stage1: DegradationStage = field(default_factory=DegradationStage)
    stage2: DegradationStage = field(default_factory=_stage2_defaults)
    second_stage_prob: float = 0.5  # the OFTSR paper's real-world setting (Real-ESRGAN itself always runs it)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = ODD_SIZES_7_21
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    final_jpeg_prob: float = 1.0
    final_jpeg_range: tuple[int, int] = (30, 95)


def _camera_config() -> RealESRGANConfig:
    # Photographs from a decent camera. Their blur is the lens's and the sensor's own, with
    # no resampling before it reaches us (no random resize, rarely a sinc): the optics'
    # point spread, 0.25 to 0.65 LR pixels (Gaussian sigma; 1.0 to 2.6 HR pixels at x4),
    # then each pixel integrating the light over its area (an `area` reduction, which does
    # not alias as a non-antialiased bilinear or bicubic reduction does). At ordinary ISO
    # and JPEG settings they carry far less noise and compression than Real-ESRGAN's
    # web-image chain, and they are not re-uploaded (no second stage).
    stage1 = DegradationStage(blur_sigma=(1.0, 2.6), resize_probs=(0.0, 0.0, 1.0), noise_range=(1.0, 10.0),
                              poisson_scale_range=(0.05, 1.0), jpeg_range=(60, 95))
    return RealESRGANConfig(stage1=stage1, second_stage_prob=0.0, resize_modes=("area",), final_sinc_prob=0.1,
                            final_jpeg_range=(60, 95))


# The named settings the trainer offers (--realesrgan_config): "full" is the published
# pipeline, for images of any provenance; "camera" the milder one above.
REALESRGAN_CONFIGS: dict[str, RealESRGANConfig] = {"full": RealESRGANConfig(), "camera": _camera_config()}


# ----------------------------------------------------------------------------- kernels


def _check_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")


def _quadratic_form(size: int, sigma_x: float, sigma_y: float | None, theta: float) -> torch.Tensor:
    """x^T Sigma^-1 x on a centred (size, size) grid, Sigma = R diag(sx^2, sy^2) R^T."""
    _check_size(size)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(cov)
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalize(k: torch.Tensor) -> torch.Tensor:
    # Built in float64 so the float32 result sums to 1 as closely as float32 allows.
    return (k / k.sum()).float()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> torch.Tensor:
    """(Anisotropic) Gaussian exp(-q/2); sigma_y=None gives the isotropic kernel."""
    return _normalize(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """exp(-q^beta / 2): beta < 1 gives heavier tails, beta > 1 a flatter top."""
    return _normalize(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """1 / (1 + q^beta): flat top with slowly decaying tails."""
    return _normalize(1.0 / (1.0 + _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def sinc_kernel(size: int, omega: float) -> torch.Tensor:
    """Ideal circular low-pass with cutoff omega (rad/pixel), truncated to (size, size).

    The truncation produces the ringing and overshoot artifacts Real-ESRGAN wants to model.
    """
    _check_size(size)
    if not 0 < omega <= math.pi:
        raise ValueError(f"omega must be in (0, pi], got {omega}")
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    r = torch.sqrt(xx * xx + yy * yy)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    k = omega * torch.special.bessel_j1(omega * safe_r) / (2 * math.pi * safe_r)
    k = torch.where(r == 0, torch.full_like(r, omega**2 / (4 * math.pi)), k)  # limit r -> 0
    return _normalize(k)


def _draw_beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    # Half the draws below 1 and half above, so both tail shapes are equally common.
    lo, hi = beta_range
    return float(rng.uniform(lo, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, hi))


def random_kernel(rng: np.random.Generator, stage: DegradationStage = DegradationStage()) -> torch.Tensor:
    """Draw one blur kernel the way Real-ESRGAN does; returns a normalized (k, k) tensor."""
    size = int(rng.choice(stage.kernel_sizes))
    if rng.random() < stage.sinc_prob:
        # A small kernel cannot represent a very low cutoff, so keep omega >= pi/3 below 13.
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, float(rng.uniform(lo, math.pi)))
    kind = stage.kernel_types[int(rng.choice(len(stage.kernel_types), p=stage.kernel_probs))]
    sigma_x = float(rng.uniform(*stage.blur_sigma))
    if kind.endswith("aniso"):
        sigma_y = float(rng.uniform(*stage.blur_sigma))
        theta = float(rng.uniform(-math.pi, math.pi))
    else:
        sigma_y, theta = sigma_x, 0.0
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _draw_beta(rng, stage.betag_range))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _draw_beta(rng, stage.betap_range))
    if kind in ("iso", "aniso"):
        return gaussian_kernel(size, sigma_x, sigma_y, theta)
    raise ValueError(f"unknown kernel type {kind!r}; expected one of {KERNEL_TYPES}")


# ----------------------------------------------------------------------------- image steps
# Each step takes and returns one (3, h, w) float32 CPU image.


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Same kernel on every channel (grouped conv), reflect padding so borders stay clean."""
    pad = kernel.shape[-1] // 2
    # Reflect needs pad < side; tiny intermediate images (strong down-scaling) fall back to replicate.
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    x = F.pad(x[None], (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(x.dtype).expand(x.shape[1], 1, *kernel.shape)
    return F.conv2d(x, weight, groups=x.shape[1])[0]


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    # No antialias, as Real-ESRGAN: the aliasing of bilinear/bicubic is part of the degradation.
    corners = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x[None], size=size, mode=mode, **corners)[0]


def _random_scale(rng: np.random.Generator, stage: DegradationStage) -> float:
    kind = int(rng.choice(3, p=stage.resize_probs))
    if kind == 0:
        return float(rng.uniform(1.0, stage.resize_range[1]))
    if kind == 1:
        return float(rng.uniform(stage.resize_range[0], 1.0))
    return 1.0


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _add_noise(x: torch.Tensor, rng: np.random.Generator, stage: DegradationStage) -> torch.Tensor:
    if rng.random() >= stage.noise_prob:
        return x
    gray = rng.random() < stage.gray_noise_prob  # gray: one noise field shared by R, G, B
    channels = 1 if gray else 3
    h, w = x.shape[-2:]
    if rng.random() < stage.gaussian_noise_prob:
        sigma = rng.uniform(*stage.noise_range) / 255.0
        noise = torch.from_numpy(rng.standard_normal((channels, h, w), dtype=np.float32)) * float(sigma)
    else:
        scale = float(rng.uniform(*stage.poisson_scale_range))
        img = _gray(x) if gray else x
        # Photon count: the number of distinct 8-bit levels, up to a power of two, sets the
        # signal scale, so the noise level follows the image's own dynamic range.
        img8 = (img.clamp(0, 1) * 255).round()
        distinct = int(torch.bincount(img8.to(torch.uint8).flatten(), minlength=256).count_nonzero())
        levels = 2.0 ** math.ceil(math.log2(max(1, distinct)))
        img = img8 / 255
        counts = rng.poisson(img.double().numpy() * levels) / levels
        noise = (torch.from_numpy(counts) - img.double()).float() * scale
    return x + noise  # (1, h, w) broadcasts over colour for gray noise


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow JPEG round trip (libjpeg tables, 4:2:0 chroma); the result is 8-bit."""
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()


def _maybe_jpeg(x: torch.Tensor, rng: np.random.Generator, prob: float, quality_range: tuple[int, int]) -> torch.Tensor:
    if rng.random() >= prob:
        return x
    return _jpeg(x, int(rng.integers(quality_range[0], quality_range[1] + 1)))


def _stage(
    x: torch.Tensor,
    rng: np.random.Generator,
    stage: DegradationStage,
    modes: tuple[str, ...],
    base_size: tuple[int, int],
) -> torch.Tensor:
    """One pass; the random resize scales `base_size` (HR size in stage 1, LR size in stage 2)."""
    if rng.random() < stage.blur_prob:
        x = _blur(x, random_kernel(rng, stage))
    s = _random_scale(rng, stage)
    mode = modes[int(rng.integers(len(modes)))]
    x = _resize(x, (max(1, int(base_size[0] * s)), max(1, int(base_size[1] * s))), mode)
    x = _add_noise(x, rng, stage).clamp(0, 1)
    return _maybe_jpeg(x, rng, stage.jpeg_prob, stage.jpeg_range)


def _degrade_one(x: torch.Tensor, scale: int, rng: np.random.Generator, cfg: RealESRGANConfig) -> torch.Tensor:
    h, w = x.shape[-2:]
    lr_size = (h // scale, w // scale)
    x = _stage(x, rng, cfg.stage1, cfg.resize_modes, (h, w))
    if rng.random() < cfg.second_stage_prob:
        # Real-ESRGAN sizes the second resize relative to the final LR size.
        x = _stage(x, rng, cfg.stage2, cfg.resize_modes, lr_size)

    if rng.random() < cfg.final_sinc_prob:
        size = int(rng.choice(cfg.final_sinc_sizes))
        sinc = sinc_kernel(size, float(rng.uniform(*cfg.final_sinc_omega)))
    else:
        sinc = None  # identity: a pulse kernel would change nothing
    mode = cfg.resize_modes[int(rng.integers(len(cfg.resize_modes)))]

    def resize_and_sinc(y: torch.Tensor) -> torch.Tensor:
        y = _resize(y, lr_size, mode)
        return y if sinc is None else _blur(y, sinc)

    # Both orders occur in real images (resampled-then-compressed and vice versa).
    if rng.random() < 0.5:
        x = _maybe_jpeg(resize_and_sinc(x), rng, cfg.final_jpeg_prob, cfg.final_jpeg_range)
    else:
        x = resize_and_sinc(_maybe_jpeg(x, rng, cfg.final_jpeg_prob, cfg.final_jpeg_range))
    return (x.clamp(0, 1) * 255).round() / 255


# ----------------------------------------------------------------------------- public API


def degrade_realesrgan(
    hr: torch.Tensor,
    scale: int,
    rng: np.random.Generator | int,
    config: RealESRGANConfig = RealESRGANConfig(),
) -> torch.Tensor:
    """HR (3, H, W) or (B, 3, H, W) in [0, 1] -> LR (.., 3, H/scale, W/scale) in [0, 1], 8-bit.

    `rng` is a numpy Generator (consumed in place) or an int seed. Batch items are
    degraded one after the other with independent draws from the same generator.
    """
    if not isinstance(hr, torch.Tensor) or not hr.is_floating_point():
        raise ValueError("hr must be a floating-point torch.Tensor with values in [0, 1]")
    if hr.ndim not in (3, 4) or hr.shape[-3] != 3:
        raise ValueError(f"hr must be (3, H, W) or (B, 3, H, W) RGB, got shape {tuple(hr.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not divisible by the scale {scale}; crop it first")
    if hr.numel() and (hr.min() < -0.01 or hr.max() > 1.01):
        raise ValueError(
            f"hr values must be in [0, 1], got [{hr.min():.3f}, {hr.max():.3f}] "
            "(the rest of oftsr uses [-1, 1]: pass (x + 1) / 2)"
        )
    gen = np.random.default_rng(rng)  # a Generator is returned as is, an int seeds a new one
    batch = hr.detach().to("cpu", torch.float32).clamp(0, 1)
    batch = batch[None] if hr.ndim == 3 else batch
    out = torch.stack([_degrade_one(img, scale, gen, config) for img in batch])
    out = out[0] if hr.ndim == 3 else out
    return out.to(device=hr.device, dtype=hr.dtype)


def fit_gaussian_blur(hr: torch.Tensor, lr: torch.Tensor, sigmas: tuple[float, ...] = tuple(np.arange(0, 4.01, 0.25)),
                      border: int = 4) -> dict[float, float]:
    """How well each Gaussian blur explains an LR: for each sigma (HR pixels; 0 = none),
    the PSNR (dB, LR space, `border` LR pixels left out) between the LR and the HR blurred
    by it and reduced by an antialiased bicubic resize. The best sigma is the blur the LR
    carries, whatever made it: a lens, or a degradation chain. hr (3, H, W) and lr
    (3, h, w) in [0, 1]; noise and JPEG read as sharpness, so compare like with like."""
    if hr.ndim != 3 or lr.ndim != 3 or hr.shape[0] != lr.shape[0]:
        raise ValueError(f"hr and lr must be (C, H, W) with the same channels, got {tuple(hr.shape)}, {tuple(lr.shape)}")
    fits = {}
    for sigma in sigmas:
        x = hr.float() if sigma == 0 else _blur(hr.float(), gaussian_kernel(21, float(sigma)).float())
        down = F.interpolate(x[None], size=lr.shape[-2:], mode="bicubic", antialias=True).clamp(0, 1)[0]
        err = (down - lr.float())[:, border:-border or None, border:-border or None].square().mean().item()
        fits[float(sigma)] = 10 * math.log10(1 / max(err, 1e-12))
    return fits
