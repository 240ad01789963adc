"""Tiles of large training photographs, cut once (`trainer/make_tiles.py`): a crop of a 2K
photograph decodes the whole file (some 85 ms for a PNG), so loading, not the GPU, sets the
pace of training; from tiles a little larger than the crop it is about ten times faster."""

from __future__ import annotations

from pathlib import Path

from ..images import load_image, save_image


# How `tile_starts` places tiles, recorded in a tiles folder (`TILES_RECORD`): a folder is
# only ever added to with the layout and sizes it was cut with.
TILE_LAYOUT = "even"
TILES_RECORD = ".tiles.json"  # hidden: the training loader does not list it


def tile_starts(length: int, size: int, step: int) -> list[int]:
    """Where tiles of `size` start along a side of `length`: spread evenly from one edge to
    the other, at most `step` apart, so that every pixel is in a tile and each tile adds at
    least half a step of its own (a last tile flush with the edge a few pixels after the one
    before would nearly repeat it, doubling that region's weight in training). A side at
    most `size` is one tile, [0]; one longer by less than half a step is one centred tile,
    the few pixels beyond it at each end left out."""
    excess = length - size
    if excess <= 0:
        return [0]
    if 2 * excess < step:
        return [excess // 2]
    gaps = -(-excess // step)
    return [round(i * excess / gaps) for i in range(gaps + 1)]


def tile_names(path: Path, root: Path, height: int, width: int, size: int, step: int) -> list[tuple[Path, int, int]]:
    """(relative output path, top, left) of each tile of an image `path` under `root`: the
    sub-folders kept, the name `<name>_y<top>_x<left>.png` (the source's whole name: a.png
    and a.jpg side by side have tiles of their own)."""
    rel = path.relative_to(root)
    return [(rel.parent / f"{rel.name}_y{top}_x{left}.png", top, left)
            for top in tile_starts(height, size, step) for left in tile_starts(width, size, step)]


def cut_tiles(path: Path, root: Path, out: Path, size: int, step: int) -> int:
    """Write the tiles of the image `path` (a file under `root`) into `out`, as the loader
    reads it (upright, display values, 8 or 16 bits as the source; alpha kept), as PNG.
    Tiles already there are kept: a run cut short goes on. Returns the tiles written now."""
    image, depth = load_image(path)
    written = 0
    for rel, top, left in tile_names(path, root, image.shape[-2], image.shape[-1], size, step):
        target = out / rel
        if target.exists():
            continue
        save_image(image[0, :, top:top + size, left:left + size], target, bit_depth=depth)  # atomic
        written += 1
    return written
