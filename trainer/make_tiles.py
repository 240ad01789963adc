#!/usr/bin/env python
r"""Cut large training photographs into overlapping tiles, once, before training.

A random crop of a 2K photograph decodes the whole file: some 85 ms for a PNG on one core,
so a GPU that takes 64 crops in 0.2 s waits for the loader. Tiles a little larger than the
crop load about ten times faster and give the same crops, nearly (a crop can no longer
straddle two tiles' borders). Tiles are PNG (lossless, 16 bits where the source has
them), upright and in display values as the loader reads the photographs; sub-folders are
kept. Along each side the tiles are spread evenly, at most --step apart, from edge to
edge (a side just over --tile_size gets one centred tile, not two near copies). Resumable:
tiles already written are kept; the folder records its --tile_size and --step
(.tiles.json), and a run that would cut it otherwise is refused.

    python trainer/make_tiles.py --input_dir DIV2K_train_HR --output_dir DIV2K_tiles \
        --tile_size 480 --step 240 --workers 8
    accelerate launch trainer/train_teacher.py --train_data_dir DIV2K_tiles ...
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import cpu_cores, logger, run_script, setup_logging  # also puts the checkout on sys.path
from flags import HelpFormatter, positive_int

from oftsr.files import atomic_write
from oftsr.training.data import scan_images
from oftsr.training.tiles import TILE_LAYOUT, TILES_RECORD, cut_tiles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--input_dir", required=True, help="folder of HR photographs (recursive)")
    p.add_argument("--output_dir", required=True, help="folder for the tiles (sub-folders kept)")
    p.add_argument("--tile_size", type=positive_int, default=480,
                   help="tile side in px: at least --resolution of the training runs (480 leaves room for 256 crops)")
    p.add_argument("--step", type=positive_int, default=240, help="largest distance between tiles in px: they are spread evenly from edge to edge "
                        "(< tile_size: overlap)")
    p.add_argument("--workers", type=positive_int, default=min(8, cpu_cores()), help="processes cutting")
    args = p.parse_args(argv)
    if args.step > args.tile_size:
        raise ValueError(f"--step {args.step} is larger than --tile_size {args.tile_size}: pixels between tiles "
                         f"would be lost; use a step of at most the tile size")
    if Path(args.output_dir).resolve() == Path(args.input_dir).resolve() or \
            Path(args.input_dir).resolve() in Path(args.output_dir).resolve().parents:
        raise ValueError(f"--output_dir {args.output_dir} is inside --input_dir: the tiles would be read as "
                         f"photographs next time; give a folder outside it")
    return args


def claim_output(out: Path, size: int, step: int) -> None:
    """Record in `out` how its tiles are cut, or check that a folder being added to was cut
    the same way: tiles of two sizes or layouts side by side would give some photographs
    twice the weight of others in training."""
    wanted = {"tile_size": size, "step": step, "layout": TILE_LAYOUT}
    record = out / TILES_RECORD
    if record.is_file():
        try:
            made = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{record} is unreadable ({e}): give a new --output_dir") from e
        if made != wanted:
            raise ValueError(f"{out} holds tiles cut with --tile_size {made.get('tile_size')} --step "
                             f"{made.get('step')} (layout {made.get('layout')!r}); this run's would sit beside them: "
                             f"pass those values to add to it, or give a new --output_dir")
        return
    if out.is_dir() and next(out.rglob("*.png"), None) is not None:
        raise ValueError(f"{out} holds PNGs but no {TILES_RECORD}: tiles of an earlier make_tiles.py, placed otherwise, "
                         f"or other images; give a new --output_dir so that no photograph is tiled twice")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(record) as tmp:
        tmp.write_text(json.dumps(wanted) + "\n", encoding="utf-8")


def _cut(job: tuple[Path, Path, Path, int, int]) -> tuple[Path, int, str | None]:
    path, root, out, size, step = job
    try:
        return path, cut_tiles(path, root, out, size, step), None
    except Exception as e:  # a file that passed the scan but does not decode: said, the others go on
        return path, 0, f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    setup_logging()
    root, out = Path(args.input_dir), Path(args.output_dir)
    claim_output(out, args.tile_size, args.step)
    files = scan_images(root)
    start = time.perf_counter()
    jobs = [(path, root, out, args.tile_size, args.step) for path in files]
    written, failed = 0, []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for path, n, error in tqdm(pool.map(_cut, jobs, chunksize=4), total=len(jobs), unit="img"):
            written += n
            if error:
                failed.append(f"{path.relative_to(root)} ({error[:200]})")
    total = sum(1 for _ in out.rglob("*.png")) if out.is_dir() else 0
    logger.info("%d photographs -> %d tiles of %d px (smaller photographs whole) in %s (%d written now, %.0f s)",
                len(files), total,
                args.tile_size, out, written, time.perf_counter() - start)
    if failed:
        logger.warning("%d photograph(s) could not be read and have no tiles: %s", len(failed),
                       "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)
