"""Overlapping, feathered tiles: apply a function to crops of same-sized images and
blend the results with linear ramps in the overlaps, so memory is bounded by the tile
and there are no seams. Tiles are cut from whole-image tensors, so anything drawn for
the whole image (the sp noise) is the same tiled or not."""

from __future__ import annotations

import math
from typing import Callable

import torch

DEFAULT_OVERLAP = 64
MIN_TILE = 32


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
    w = torch.ones(length)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        n = min(overlap, length)
        if ramp_start:
            w[:n] = torch.minimum(w[:n], ramp[:n])
        if ramp_end:
            w[length - n:] = torch.minimum(w[length - n:], ramp[:n].flip(0))
    return w


def check_tiling(tile: int | None, overlap: int | None) -> tuple[int | None, int]:
    if tile is None or tile == 0:
        return None, 0
    if tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} px (or 0/None for no tiling), got {tile}")
    overlap = min(DEFAULT_OVERLAP, tile // 4) if overlap is None else overlap
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be between 0 and half the tile ({tile // 2}), got {overlap}")
    return tile, overlap


def tiled_apply(fn: Callable[..., torch.Tensor], *images: torch.Tensor, tile: int | None, overlap: int | None = None,
                tile_batch: int = 1, callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`fn(*crops) -> out crop` over tiles of `images` (all (B, C_i, H, W)), blended.
    `tile_batch` tiles go through `fn` at once (stacked on the batch axis)."""
    tile, overlap = check_tiling(tile, overlap)
    b, _, h, w = images[0].shape
    if tile is None or (h <= tile and w <= tile):
        out = fn(*images)
        if callback is not None:
            callback(1, 1)
        return out
    (th, ys), (tw, xs) = tile_layout(h, tile, overlap), tile_layout(w, tile, overlap)
    boxes = [(y, x) for y in ys for x in xs]
    out = wsum = None
    for first in range(0, len(boxes), tile_batch):
        chunk = boxes[first:first + tile_batch]
        crops = [torch.cat([im[..., y:y + th, x:x + tw] for y, x in chunk]) for im in images]
        results = fn(*crops).split(b)
        for (y, x), res in zip(chunk, results):
            if out is None:
                out = torch.zeros(b, res.shape[1], h, w, dtype=res.dtype, device=res.device)
                wsum = torch.zeros(1, 1, h, w, dtype=res.dtype, device=res.device)
            wy = feather(th, overlap, y > 0, y + th < h)
            wx = feather(tw, overlap, x > 0, x + tw < w)
            weight = (wy[:, None] * wx[None, :]).to(res.device, res.dtype)
            out[..., y:y + th, x:x + tw] += res * weight
            wsum[..., y:y + th, x:x + tw] += weight
        if callback is not None:
            callback(min(first + tile_batch, len(boxes)), len(boxes))
    return out / wsum


def num_tiles(h: int, w: int, tile: int | None, overlap: int | None = None) -> int:
    tile, overlap = check_tiling(tile, overlap)
    if tile is None or (h <= tile and w <= tile):
        return 1
    return len(tile_layout(h, tile, overlap)[1]) * len(tile_layout(w, tile, overlap)[1])
