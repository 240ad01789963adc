"""The start-point noise as a pure function of (seed, image index, output pixel).

The noise is drawn in NOISE_BLOCK x NOISE_BLOCK blocks on a fixed grid of output pixels,
each block from its own generator seeded by a hash of (seed, image index, block row,
block column). Any region -- a tile, a band of rows, the whole image -- therefore draws
exactly its own pixels without holding the whole image's noise, and a pixel's noise
does not depend on the tiling or on the image size. It is drawn on the CPU, so every
device gets the same numbers. With one seed per image, image i draws from (seed[i], 0):
the noise it has alone.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import torch

NOISE_BLOCK = 64  # output px; 3 x 64 x 64 normals per generator (about 75 us per block on a CPU core)


def block_seed(seed: int, item: int, block_row: int, block_col: int) -> int:
    """A 64-bit generator seed for one block; a hash, so neighbouring blocks and seeds
    give unrelated streams."""
    data = struct.pack("<4Q", int(seed) % 2**64, item, block_row, block_col)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def region_noise(seed: int | Sequence[int], batch: int, top: int, left: int, height: int, width: int,
                 channels: int = 3, first: int = 0) -> torch.Tensor:
    """Standard normal noise (batch, channels, height, width), float32 on the CPU, for the
    output rows top..top+height and columns left..left+width of images first..first+batch-1
    of a batch. One `seed` for the batch draws image i's noise from (seed, i); a seed per
    image (one for each of these images) draws each from (seed[i], 0), the noise that image
    has alone with that seed."""
    if min(top, left) < 0 or min(height, width) < 1:
        raise ValueError(f"bad noise region: top {top}, left {left}, height {height}, width {width}")
    keys = [(s, 0) for s in seed] if isinstance(seed, Sequence) else [(seed, first + i) for i in range(batch)]
    if len(keys) != batch:
        raise ValueError(f"{len(keys)} seeds for {batch} images")
    n = NOISE_BLOCK
    # float32 whatever torch.set_default_dtype says: a seed's noise is the same in any program
    out = torch.empty(batch, channels, height, width, dtype=torch.float32)
    for item, (image_seed, key) in enumerate(keys):
        for row in range(top // n, (top + height - 1) // n + 1):
            y0, y1 = max(top, row * n), min(top + height, (row + 1) * n)
            for col in range(left // n, (left + width - 1) // n + 1):
                x0, x1 = max(left, col * n), min(left + width, (col + 1) * n)
                g = torch.Generator().manual_seed(block_seed(image_seed, key, row, col))
                block = torch.randn(channels, n, n, generator=g, dtype=torch.float32)
                out[item, :, y0 - top:y1 - top, x0 - left:x1 - left] = block[:, y0 - row * n:y1 - row * n,
                                                                              x0 - col * n:x1 - col * n]
    return out
