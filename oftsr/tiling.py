"""Overlapping, feathered tiles: apply a function to crops of same-sized images and
blend the results with linear ramps in the overlaps, so there are no seams. The blend
is streamed in bands of rows, so memory is bounded by the tile, not the image."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .checks import check_int
from .sampling import Callback

DEFAULT_OVERLAP = 64
MIN_TILE = 32
MIN_OOM_TILE = 128  # the out-of-memory retry halves the tile down to this


def tile_layout(size: int, tile: int, overlap: int, multiple: int = 8) -> tuple[int, list[int]]:
    """Tile length and start offsets covering [0, size) with at most `tile` px per tile
    and at least `overlap` px shared by neighbours. The fewest tiles that fit are shrunk
    to an even size (a multiple of `multiple` where possible) and spread evenly, so no
    work is wasted on a mostly-overlapping last tile."""
    if size <= tile:
        return size, [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    length = min(tile, -(-math.ceil((size + (n - 1) * overlap) / n) // multiple) * multiple)
    return length, [round(i * (size - length) / (n - 1)) for i in range(n)]


def feather(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D blending weights: linear ramps (never zero) over `overlap` at inner edges."""
    w = torch.ones(length, dtype=torch.float32)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        n = min(overlap, length)
        if ramp_start:
            w[:n] = torch.minimum(w[:n], ramp[:n])
        if ramp_end:
            w[length - n:] = torch.minimum(w[length - n:], ramp[:n].flip(0))
    return w


def check_tiling(tile: int | None, overlap: int | None) -> tuple[int | None, int]:
    # a float would reach slicing as a float, a boolean would be a tile of 1
    tile, overlap = (None if v is None else check_int(v, name) for v, name in ((tile, "tile"), (overlap, "overlap")))
    if tile is None or tile == 0:
        return None, 0
    if tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} px (or 0/None for no tiling), got {tile}")
    overlap = min(DEFAULT_OVERLAP, tile // 4) if overlap is None else overlap
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be between 0 and half the tile ({tile // 2}), got {overlap}")
    return tile, overlap


def retry_tiling(tile: int | None, overlap: int, out_h: int, out_w: int,
                 images_at_once: int = 1) -> tuple[int, int | None, int]:
    """After an out-of-memory with `tile` (None: no tiling): the tile that failed (an image
    smaller than the tile is one tile, unless `images_at_once` such images shared it: a
    smaller tile then takes fewer frames at once); the next to try, half of it but at
    least MIN_OOM_TILE, or None when the failed tile was already that small; and its
    overlap, the `overlap` asked for but at most a quarter of the new tile."""
    overlap = max(0, int(overlap))
    if tile and images_at_once > 1:
        failed = tile
    else:
        failed = min(tile, max(out_h, out_w)) if tile else max(out_h, out_w)
    if failed <= MIN_OOM_TILE:
        return failed, None, overlap
    smaller = max(MIN_OOM_TILE, failed // 2)
    return failed, smaller, min(overlap, smaller // 4)


Box = tuple[int, int]  # (top, left) of a tile, in pixels
TileFn = Callable[[list[Box], int, int], torch.Tensor]


def crop_tiles(image: torch.Tensor, boxes: list[Box], height: int, width: int) -> torch.Tensor:
    """The tiles of `image` at `boxes`, stacked on the batch axis."""
    return torch.cat([image[..., y:y + height, x:x + width] for y, x in boxes])


def blend_tiles(fn: TileFn, batch: int, height: int, width: int, write: Callable[[int, torch.Tensor], None], *,
                tile: int | None, overlap: int | None = None, tile_batch: int = 1,
                callback: Callback | None = None) -> None:
    """Cover a (height, width) image with overlapping tiles, compute each with
    `fn(boxes, tile_h, tile_w) -> (len(boxes) * batch, C, tile_h, tile_w)` and hand the
    feathered blend to `write(top, rows)` band by band, top to bottom (`rows` is
    (batch, C, n, width) float32). Only one row of tiles is held at a time, so memory is
    bounded by the tile height times the width; no tiling is one tile. `tile_batch`
    tiles of a row go through `fn` at once."""
    tile, overlap = check_tiling(tile, overlap)
    tile_batch = check_int(tile_batch, "tile_batch", minimum=1)
    if tile is None or (height <= tile and width <= tile):
        write(0, fn([(0, 0)], height, width).float())
        if callback is not None:
            callback(1, 1)
        return
    (th, ys), (tw, xs) = tile_layout(height, tile, overlap), tile_layout(width, tile, overlap)
    row_w = [feather(th, overlap, y > 0, y + th < height) for y in ys]
    col_w = [feather(tw, overlap, x > 0, x + tw < width) for x in xs]
    # The weights are products wy * wx, so their sum over all tiles is separable.
    norm_y, norm_x = torch.zeros(height, dtype=torch.float32), torch.zeros(width, dtype=torch.float32)
    for y, w in zip(ys, row_w, strict=True):
        norm_y[y:y + th] += w
    for x, w in zip(xs, col_w, strict=True):
        norm_x[x:x + tw] += w
    band = None  # blended sums of the image rows ys[i] .. ys[i] + th
    done, total = 0, len(ys) * len(xs)
    for i, y in enumerate(ys):
        for first in range(0, len(xs), tile_batch):
            cols = range(first, min(first + tile_batch, len(xs)))
            results = fn([(y, xs[j]) for j in cols], th, tw).float().split(batch)
            for j, res in zip(cols, results, strict=True):
                if band is None:
                    band = torch.zeros(batch, res.shape[1], th, width, dtype=torch.float32, device=res.device)
                weight = (row_w[i][:, None] * col_w[j][None, :]).to(res.device)
                band[..., xs[j]:xs[j] + tw] += res * weight
            done += len(cols)
            if callback is not None:
                callback(done, total)
        end = ys[i + 1] if i + 1 < len(ys) else height  # rows above `end` get no more tiles
        norm = (norm_y[y:end, None] * norm_x[None, :]).to(band.device)
        write(y, band[..., :end - y, :] / norm)
        kept = y + th - end  # rows shared with the next row of tiles move to the top
        band[..., :kept, :] = band[..., end - y:, :].clone()
        band[..., kept:, :] = 0


def blend_tiles_into_tensor(fn: TileFn, batch: int, height: int, width: int, *, tile: int | None,
                            overlap: int | None = None, tile_batch: int = 1,
                            callback: Callback | None = None) -> torch.Tensor:
    """`blend_tiles` with its bands gathered into one whole-image tensor (for a caller that
    needs the whole result, such as an ODE solver's state)."""
    out: torch.Tensor | None = None

    def write(top: int, rows: torch.Tensor) -> None:
        nonlocal out
        if rows.shape[-2] == height:  # one tile: no copy
            out = rows
            return
        if out is None:
            out = rows.new_empty(batch, rows.shape[1], height, width)
        out[..., top:top + rows.shape[-2], :] = rows

    blend_tiles(fn, batch, height, width, write, tile=tile, overlap=overlap, tile_batch=tile_batch, callback=callback)
    return out


def images_per_pass(batch: int, height: int, width: int, tile: int | None) -> int:
    """How many images of a batch `upscale` computes together: the whole batch without
    tiling (asked for at once), else as many images as one tile's pixels hold (at least
    one), so that memory and the wait for a Cancel stay those of one tile, while small
    frames still share a network evaluation."""
    if tile is None:
        return batch
    return max(1, min(batch, (tile * tile) // max(1, height * width)))


def batch_passes(batch: int, height: int, width: int, tile: int | None) -> int:
    """How many passes `upscale` makes over a batch (`images_per_pass` images each)."""
    return -(-batch // images_per_pass(batch, height, width, tile))


def num_tiles(h: int, w: int, tile: int | None, overlap: int | None = None) -> int:
    tile, overlap = check_tiling(tile, overlap)
    if tile is None or (h <= tile and w <= tile):
        return 1
    return len(tile_layout(h, tile, overlap)[1]) * len(tile_layout(w, tile, overlap)[1])
