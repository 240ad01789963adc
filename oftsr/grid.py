"""A labelled grid of images, for comparing one image at several settings side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .checks import OUTPUT_DTYPES

# Browsers and WebP stop at 16383 px a side; a sheet for looking at stays within that.
MAX_GRID_SIDE = 16383
# Cells narrower than their label at the smallest font (10 px, about 6 px a character, and
# a margin) are enlarged by a whole factor (nearest neighbour: each pixel a square), so that
# a sweep of a small image has readable labels that do not run into each other.
MIN_CELL_PX_PER_CHAR = 8


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # a Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def on_checkerboard(image: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """(B, 3, H, W) of a 1-4 channel image in [0, 1]: gray as three channels, and an image
    with alpha laid over a light checkerboard as editors show transparency (the colour
    under transparent pixels is filler, not meant to be seen)."""
    alpha = image[:, -1:] if image.shape[1] in (2, 4) else None
    colour = image[:, :1].expand(-1, 3, -1, -1) if image.shape[1] <= 2 else image[:, :3]
    if alpha is None:
        return colour
    h, w = image.shape[-2:]
    ys = torch.arange(h, device=image.device) // cell
    xs = torch.arange(w, device=image.device) // cell
    board = torch.where((ys[:, None] + xs[None, :]) % 2 == 0, 1.0, 0.8).to(image.dtype)
    return colour * alpha + board * (1 - alpha)


def t_labels(ts: Sequence[float]) -> list[str]:
    """The column labels of a t sweep: "t = 0.25"."""
    return [f"t = {t:g}" for t in ts]


def _label_band(labels: Sequence[str], cell_w: int, gap: int, font_size: int, width: int) -> np.ndarray:
    """A white band `width` wide with each label centred over its column, as uint8 (band_h, width)."""
    font = _font(font_size)
    band_h = _band_height(font_size)
    band = Image.new("L", (width, band_h), 255)
    draw = ImageDraw.Draw(band)
    for i, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        x = i * (cell_w + gap) + max(0, (cell_w - (right - left)) // 2) - left
        y = (band_h - (bottom - top)) // 2 - top
        draw.text((x, y), label, font=font, fill=0)
    return np.asarray(band)


def _layout(rows: int, cols: int, cell_h: int, cell_w: int, longest: int) -> tuple[int, int, int, int]:
    """Gap, font size and the sheet's width and height for cells of this size. The font is
    about 1.2% of the sheet's width, so that it stays readable when the whole sheet is fitted
    to a screen, and small enough that the `longest` label (in characters) fits its column."""
    gap = max(2, round(0.01 * min(cell_h, cell_w)))
    width = cols * cell_w + (cols - 1) * gap
    font_size = max(10, min(round(0.012 * width), round(cell_w / (0.6 * max(longest, 1)))))
    height = _band_height(font_size) + rows * cell_h + (rows - 1) * gap
    return gap, font_size, width, height


def _band_height(font_size: int) -> int:
    return round(font_size * 1.6)


def labelled_grid(images: torch.Tensor, labels: Sequence[str], max_side: int = MAX_GRID_SIDE) -> torch.Tensor:
    """Images (rows, cols, C, H, W) in [0, 1] as one (C, H', W') sheet: a row per input,
    a column per label, the labels in a white band on top, thin white lines between cells.
    A sheet longer than `max_side` is scaled down as a whole (antialiased) to fit; cells
    too narrow for their labels are enlarged by a whole factor, each pixel a square.
    uint8 / uint16 levels (`upscale(out_dtype=...)`) give a sheet of the same levels."""
    if not isinstance(images, torch.Tensor) or images.dim() != 5:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a tensor of images (rows, cols, C, H, W), got {got}: one row of (C, H, W) "
                         f"images is torch.stack(images)[None]")
    dtype = images.dtype
    if not dtype.is_floating_point and dtype not in OUTPUT_DTYPES:
        raise ValueError(f"images must be floats in [0, 1] or uint8 / uint16 levels, got {dtype}")
    peak = OUTPUT_DTYPES.get(dtype, 1.0)
    images = images.float() / peak if peak != 1.0 else images
    rows, cols, c, h, w = images.shape
    if len(labels) != cols:
        raise ValueError(f"{len(labels)} labels for {cols} columns")
    longest = max(len(label) for label in labels)
    up = -(-MIN_CELL_PX_PER_CHAR * longest // w)
    while up > 1 and max(_layout(rows, cols, h * up, w * up, longest)[2:]) > max_side:  # never past the limit
        up -= 1
    if up > 1:
        images, h, w = images.repeat_interleave(up, dim=-2).repeat_interleave(up, dim=-1), h * up, w * up
    scale, cell_h, cell_w = 1.0, h, w
    for _ in range(32):  # one scale for both sides; gaps and the band shrink less than cells, so a few rounds
        gap, font_size, width, height = _layout(rows, cols, cell_h, cell_w, longest)
        if max(width, height) <= max_side or (cell_h, cell_w) == (1, 1):
            break
        scale *= min(0.999, max_side / max(width, height))
        cell_h, cell_w = max(1, int(h * scale)), max(1, int(w * scale))
    cells = images.flatten(0, 1).float()
    if (cell_h, cell_w) != (h, w):
        cells = F.interpolate(cells, size=(cell_h, cell_w), mode="bicubic", antialias=True).clamp(0, 1)
    band = torch.from_numpy(_label_band(labels, cell_w, gap, font_size, width).copy()).float().div(255)
    sheet = torch.ones(c, height, width, dtype=cells.dtype)
    colour = c - 1 if c in (2, 4) else c  # an alpha channel stays opaque under the text
    sheet[:colour, :band.shape[0]] = band
    top = band.shape[0]
    for i, cell in enumerate(cells):
        r, k = divmod(i, cols)
        y, x = top + r * (cell_h + gap), k * (cell_w + gap)
        sheet[:, y:y + cell_h, x:x + cell_w] = cell
    return (sheet * peak).round_().to(dtype) if peak != 1.0 else sheet.to(dtype)
