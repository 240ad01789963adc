"""Colour correction: keep the low-frequency colour of a reference (the bicubic upsample
of the input) under the detail of a super-resolved image. Also the sRGB transfer curve,
for pixels that hold linear light.

Pure torch. Images are (B, C, H, W)
floats in [0, 1]; `reference` may have any size (it is resized bicubically to the
image) and a batch of 1 or the image's batch. Only the colour channels are corrected
(RGB, or gray); an alpha channel of `image` (the fourth, or the second of gray) is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIX_MODES = ("none", "wavelet", "adain")

__all__ = ["COLOR_FIX_MODES", "adain_color_fix", "bleed_colour", "split_alpha", "wavelet_color_fix", "wavelet_lowpass",
           "color_fix", "srgb_encode", "srgb_decode"]


def _reference_like(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    if reference.ndim != 4 or image.ndim != 4:
        raise ValueError(f"image and reference must be (B, C, H, W), got {tuple(image.shape)} and {tuple(reference.shape)}")
    if reference.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"reference batch {reference.shape[0]} must be 1 or the image batch {image.shape[0]}")
    if reference.shape[1] != image.shape[1]:
        raise ValueError(f"reference has {reference.shape[1]} channels, the image {image.shape[1]}")
    reference = reference.to(image.device, torch.float32)
    if reference.shape[-2:] != image.shape[-2:]:
        reference = F.interpolate(reference, size=tuple(image.shape[-2:]), mode="bicubic", align_corners=False)
    return reference.expand(image.shape[0], -1, -1, -1)


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give each channel of each image the mean and standard deviation of the reference's."""
    image = image.float()
    reference = _reference_like(reference, image)
    mean_i, std_i = image.mean((2, 3), keepdim=True), image.std((2, 3), correction=0, keepdim=True)
    mean_r, std_r = reference.mean((2, 3), keepdim=True), reference.std((2, 3), correction=0, keepdim=True)
    return (image - mean_i) / (std_i + eps) * std_r + mean_r


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 blur with holes (a trous), edges replicated."""
    c = x.shape[1]
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    x = F.pad(x, (dilation, dilation, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), dilation=(1, dilation), groups=c)
    x = F.pad(x, (0, 0, dilation, dilation), mode="replicate")
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), dilation=(dilation, 1), groups=c)


def wavelet_lowpass(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The coarsest band of an a trous wavelet decomposition (blurs at dilations 1, 2, 4, ...)."""
    for i in range(levels):
        x = _blur(x, 2 ** i)
    return x


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The image's high-frequency bands over the reference's low-frequency band."""
    image = image.float()
    reference = _reference_like(reference, image)
    return image - wavelet_lowpass(image, levels) + wavelet_lowpass(reference, levels)


def color_fix(image: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply `mode` ("none", "wavelet", "adain") to the colour channels; alpha is kept.
    A corrected result is clamped to [0, 1] ("none" returns `image` as it is)."""
    if mode not in COLOR_FIX_MODES:
        raise ValueError(f"unknown colour correction {mode!r}; choose one of {', '.join(COLOR_FIX_MODES)}")
    if mode == "none":
        return image
    k = _colour_channels(image)
    fix = adain_color_fix if mode == "adain" else wavelet_color_fix
    target = reference[:, :k]
    if reference.shape[1] in (2, 4):  # the colour under transparency (often black) is no colour to match
        target = bleed_colour(target.float(), reference[:, k:k + 1].float())
    return _on_colour(image, lambda colour: fix(colour, target).clamp(0, 1))


def split_alpha(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A (B, C, H, W) image with C = 1-4 as (RGB the network sees, alpha or None): gray
    repeated to three channels, and with alpha the colour under transparency filled
    (`bleed_colour`)."""
    c = image.shape[1]
    colour = image[:, :1].expand(-1, 3, -1, -1) if c <= 2 else image[:, :3]
    if c not in (2, 4):
        return colour, None
    alpha = image[:, c - 1:]
    return bleed_colour(colour, alpha), alpha


def bleed_colour(colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """`colour` with its fully transparent pixels given the colour of the nearest visible
    ones (push-pull: alpha-weighted means over a pyramid of 2x2 cells). What lies under
    transparency is arbitrary (often black); the network and the bicubic condition would
    smear it into the visible edge as a dark or coloured fringe."""
    known = (alpha > 0.5 / 255).float()
    if bool(known.all()) or not bool(known.any()):
        return colour
    dtype, colour = colour.dtype, colour.float()  # the means divide by small weights: float32 (fp16 gave NaN)
    levels = [(colour * known, known)]
    while max(levels[-1][1].shape[-2:]) > 1:
        c, k = levels[-1]
        levels.append((F.avg_pool2d(c, 2, ceil_mode=True), F.avg_pool2d(k, 2, ceil_mode=True)))
    filled = levels[-1][0] / levels[-1][1].clamp_min(1e-12)
    for c, k in reversed(levels[:-1]):
        coarse = F.interpolate(filled, size=c.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(k > 0, c / k.clamp_min(1e-12), coarse)
    return torch.where(known > 0, colour, filled).to(dtype)


def _colour_channels(image: torch.Tensor) -> int:
    return 1 if image.shape[1] <= 2 else 3  # gray (+ alpha) or RGB (+ alpha)


def _on_colour(image: torch.Tensor, change) -> torch.Tensor:
    """`change` applied to the colour channels (float32); alpha, a coverage, not light, kept."""
    k = _colour_channels(image)
    colour = change(image[:, :k].float()).to(image.dtype)
    return torch.cat([colour, image[:, k:]], dim=1) if image.shape[1] > k else colour


def srgb_encode(image: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] to sRGB-encoded values (IEC 61966-2-1), on the colour channels
    of a (B, C, H, W) image. The network learned gamma-encoded photographs: linear pixels
    would put most of their tones in its shadows."""
    return _on_colour(image, lambda x: torch.where(x <= 0.0031308, 12.92 * x.clamp_min(0),
                                                   1.055 * x.clamp(0.0031308, 1) ** (1 / 2.4) - 0.055))


def srgb_decode(image: torch.Tensor) -> torch.Tensor:
    """The inverse of `srgb_encode`: sRGB-encoded values back to linear light."""
    return _on_colour(image, lambda x: torch.where(x <= 0.04045, x.clamp_min(0) / 12.92,
                                                   ((x.clamp(0.04045, 1) + 0.055) / 1.055) ** 2.4))
