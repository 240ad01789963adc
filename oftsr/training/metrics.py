"""Image-quality measures for evaluation and validation. Images are (B, 3, H, W) in [0, 1].

- `psnr`: RGB, whole image (the paper's protocol).
- `psnr_y`, `ssim_y`: BT.601 luma with a border crop (classic SR papers' protocol);
  SSIM as Wang et al.'s reference code computes it (Gaussian window 11, sigma 1.5, the
  mean over the positions where the whole window fits: no padding).
- `LPIPS`: AlexNet LPIPS from the `lpips` package; its AlexNet trunk must already be in
  the torch hub cache (nothing is downloaded), otherwise it reports itself unavailable.
- `realism_swd`: a weight-free realism measure: the sliced Wasserstein distance between
  the sets of 7x7 Laplacian-pyramid patches of output and ground truth (lower = the
  output's local textures are distributed more like the real photo's). Blur, noise and
  over-sharpening all raise it, so it tracks the fidelity-realism trade-off anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import sha256_file

__all__ = ["psnr", "psnr_y", "ssim", "ssim_y", "rgb_to_y", "realism_swd", "quality", "LPIPS", "LPIPSUnavailable"]


def check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """Both images floating-point (B, C, H, W) of one shape: without the batch axis PSNR
    would be a mean over channels, and uint8 levels would be scored as if in [0, 1]."""
    for name, z in (("x", x), ("y", y)):
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or not z.is_floating_point():
            got = f"{z.dtype} of shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name} must be a floating-point (B, C, H, W) image in [0, 1], got {got} (one image: "
                             f"image[None]; 8-bit levels: levels / 255)")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the batch of per-image PSNR (dB), data range 1."""
    check_pair(x, y)
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1.0 / mse)).mean().item()


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma on the [16, 235]/255 scale with MATLAB rgb2ycbcr's coefficients (the
    SR convention), kept in float as BasicSR does: MATLAB rounds an 8-bit image's Y to whole
    levels, which scores about 0.01 dB lower."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) / 255.0 + 16.0 / 255.0


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    if 2 * border >= min(x.shape[-2:]):
        raise ValueError(f"a border of {border} px leaves nothing of a {x.shape[-1]}x{x.shape[-2]} image to score")
    return x[..., border:-border, border:-border] if border > 0 else x


def psnr_y(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> float:
    check_pair(x, y)
    return psnr(_crop(rgb_to_y(x), border), _crop(rgb_to_y(y), border))


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean over the batch of SSIM (data range 1) of (B, C, H, W) images, as Wang et al.'s
    reference: Gaussian-weighted local statistics, averaged over the "valid" positions
    (the window inside the image; padded borders would count made-up pixels)."""
    check_pair(x, y)
    x, y = x.double(), y.double()
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {window} px SSIM window")
    g = torch.exp(-((torch.arange(window, dtype=x.dtype) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)
    blur = lambda z: F.conv2d(z, kernel, groups=x.shape[1])  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).mean().item()


def ssim_y(x: torch.Tensor, y: torch.Tensor, border: int = 0) -> float:
    check_pair(x, y)
    return ssim(_crop(rgb_to_y(x.double()), border), _crop(rgb_to_y(y.double()), border))


# --------------------------------------------------------------------------- LPIPS

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, as the torch hub caches them
ALEXNET_SHA256_PREFIX = "7be5be79"


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot run here (package or backbone weights missing); the message says which."""


class LPIPS:
    """AlexNet LPIPS (lower = perceptually closer). Needs the `lpips` package and
    torchvision's AlexNet weights in `<torch hub dir>/checkpoints/`; they are never
    downloaded. `random_backbone=True` builds it with a random trunk (for tests only)."""

    def __init__(self, device: torch.device | str = "cpu", *, random_backbone: bool = False) -> None:
        try:
            import lpips
        except ImportError as e:
            raise LPIPSUnavailable("n/a: the lpips package is not installed (pip install lpips)") from e
        weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
        if not random_backbone and not weights.is_file():
            raise LPIPSUnavailable(f"n/a: weights missing (AlexNet trunk {weights} is not present; copy "
                                   f"torchvision's {ALEXNET_FILE} there to enable LPIPS)")
        if not random_backbone and not sha256_file(weights).startswith(ALEXNET_SHA256_PREFIX):
            # torch hub names its files by this prefix: another file under the name gives made-up scores
            raise LPIPSUnavailable(f"n/a: wrong weights ({weights} is not torchvision's AlexNet: its sha256 does "
                                   f"not start with {ALEXNET_SHA256_PREFIX})")
        self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=random_backbone, verbose=False).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        check_pair(x, y)
        d = self.net(x.to(self.device).float() * 2 - 1, y.to(self.device).float() * 2 - 1)
        return d.mean().item()


# --------------------------------------------------------------------------- realism

def _gaussian_down(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    k2 = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k2, groups=x.shape[1])


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels (finest first), then the low-pass residual."""
    bands = []
    for _ in range(levels - 1):
        if min(x.shape[-2:]) < 16:
            break
        low = _gaussian_down(x)
        bands.append(x - low)
        x = low[..., ::2, ::2]
    bands.append(x)
    return bands


def _patches(x: torch.Tensor, size: int, count: int, g: torch.Generator) -> torch.Tensor:
    """`count` random size x size patches per image, flattened: (B * count, C * size^2)."""
    b, c, h, w = x.shape
    ys = torch.randint(0, h - size + 1, (b, count), generator=g)
    xs = torch.randint(0, w - size + 1, (b, count), generator=g)
    offsets = torch.arange(size)
    rows = (ys[..., None] + offsets).view(b, count, size, 1).expand(b, count, size, size)
    cols = (xs[..., None] + offsets).view(b, count, 1, size).expand(b, count, size, size)
    batch = torch.arange(b).view(b, 1, 1, 1).expand_as(rows)
    p = x.permute(0, 2, 3, 1)[batch, rows, cols]  # (b, count, size, size, c)
    return p.reshape(b * count, -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int, g: torch.Generator) -> float:
    """SW1 between two equal-size point sets (N, D): mean over random directions of the
    mean absolute difference of the sorted projections."""
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)
    pb, _ = (b @ dirs).sort(dim=0)
    return (pa - pb).abs().mean().item()


def realism_swd(x: torch.Tensor, y: torch.Tensor, *, levels: int = 3, patch: int = 7, patches_per_image: int = 4096,
                projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein distance (x 1e3) between Laplacian-pyramid patch sets of `x`
    (outputs) and `y` (ground truth), averaged over the band-pass levels. Patches of both
    are normalised with the ground truth's per-level statistics, so the scale is shared
    (and the measure is not symmetric in x and y). Deterministic for a given seed; lower
    is more realistic. The estimate has a floor: the ground truth against itself moved by
    a few pixels does not score 0. 4096 patches per image put that floor well under the
    scores of realistic outputs; 256 did not."""
    check_pair(x, y)
    g = torch.Generator().manual_seed(seed)
    px, py = laplacian_pyramid(x.float().cpu(), levels), laplacian_pyramid(y.float().cpu(), levels)
    scores = []
    for bx, by in zip(px[:-1], py[:-1]):  # band-pass levels: the texture; the residual is colour
        if min(bx.shape[-2:]) < patch:
            continue
        state = g.get_state()
        a = _patches(bx, patch, patches_per_image, g)
        g.set_state(state)  # the same positions in both images: only the content differs
        b = _patches(by, patch, patches_per_image, g)
        mean, std = b.mean(0, keepdim=True), b.std(0, keepdim=True).mean().clamp_min(1e-8)
        scores.append(sliced_wasserstein((a - mean) / std, (b - mean) / std, projections, g))
    if not scores:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are too small for {patch}x{patch} patches")
    return 1e3 * sum(scores) / len(scores) / math.sqrt(a.shape[1])


def quality(out: torch.Tensor, hr: torch.Tensor, scale: int, lpips: LPIPS | None = None) -> dict[str, float]:
    """Every measure at once, images in [0, 1]: psnr (RGB), psnr_y and ssim (luma, border
    crop = scale), swd (realism), and lpips when an LPIPS model is given."""
    scores = {"psnr": psnr(out, hr), "psnr_y": psnr_y(out, hr, border=scale), "ssim": ssim_y(out, hr, border=scale),
              "swd": realism_swd(out, hr)}
    if lpips is not None:
        scores["lpips"] = lpips(out, hr)
    return scores
