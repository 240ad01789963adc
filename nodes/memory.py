"""Running a node's job on ComfyUI's device: memory freed for its estimated need, a tile
that fits what is free, and the out-of-memory retry (the smaller tiles it tries are
`oftsr.tiling.retry_tiling`'s, in every node)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Callable

import torch

import comfy.model_management as mm

from ..oftsr.devices import available_memory, error_summary, is_out_of_memory
from ..oftsr.inference import activation_memory
from ..oftsr.model import OFTSRModel, RunWarning
from ..oftsr.tiling import batch_passes, images_per_pass, num_tiles, retry_tiling
from .progress import ADAPTIVE_PROGRESS_UNITS, Progress, cancel_between_blocks
from .widgets import check_tile

log = logging.getLogger(__name__)

def estimate_memory(model: OFTSRModel, batch: int, out_h: int, out_w: int, tile: int | None, states: int = 0,
                    per_image: bool = False) -> int:
    """Bytes a run needs on the device: weights, one tile's activations, the band of tile
    rows being blended (tile height x image width; the result goes to the image's device)
    and `states` whole-image float32 buffers (the teacher's solver; the upscaler has none).
    `per_image`: the library computes a tiled batch a few images at a time (`upscale`,
    `tiling.images_per_pass`), so the tile and the band are those images'."""
    th, tw = (min(tile, out_h), min(tile, out_w)) if tile else (out_h, out_w)
    at_once = images_per_pass(batch, out_h, out_w, tile or None) if per_image else batch
    activations = activation_memory(model, at_once, th, tw)
    band = at_once * 4 * th * out_w * 4 * 4  # RGBA sums, their normalised copy and the conversion, float32
    images = batch * 3 * out_h * out_w * 4 * states
    return int(mm.module_size(model) + activations + band + images)


def is_oom(e: BaseException) -> bool:
    if isinstance(e, mm.OOM_EXCEPTION) and mm.OOM_EXCEPTION is not Exception:
        return True
    return is_out_of_memory(e)  # MPS, other back-ends and the CPU allocator raise a plain RuntimeError


def first_tiling(tile: int, overlap: int) -> tuple[int | None, int]:
    """The widgets' tile (0: none) and overlap for the library, the overlap capped at half
    the tile: the two widgets are set apart, so a cap rather than an error, as ComfyUI's
    own tiled nodes do. A tile out of range is an error here too: a linked value passes
    `validate_inputs` unchecked."""
    if (problem := check_tile(int(tile))) is not True:
        raise ValueError(problem)
    tile, overlap = int(tile), max(0, int(overlap))
    return (None, overlap) if tile <= 0 else (tile, min(overlap, tile // 2))


def tiling_that_fits(model: OFTSRModel, batch: int, out_h: int, out_w: int, tile: int | None, overlap: int,
                     widget_overlap: int, *, node: str, states: int = 0, per_image: bool = False
                     ) -> tuple[int | None, int]:
    """The tiling to start with, the model on its device: `tile` and `overlap` halved as
    after an out-of-memory (`retry_tiling`, down to MIN_OOM_TILE) while the run's
    estimated need beyond the weights is more than the device has free, with a warning
    in the log. On a CPU a run past the free memory need not fail at all: it swaps for
    minutes, or the system's OOM killer ends ComfyUI."""
    free = available_memory(model.device)
    if free is None:
        return tile, overlap

    weights, start = mm.module_size(model), tile
    asked = need = estimate_memory(model, batch, out_h, out_w, tile, states, per_image) - weights
    while need > free:
        _, smaller, smaller_overlap = tiling_after_oom(tile, widget_overlap, batch, out_h, out_w, per_image)
        if smaller is None:
            break  # the smallest tile is tried: if memory does run out, the error says what to do
        tile, overlap = smaller, smaller_overlap
        need = estimate_memory(model, batch, out_h, out_w, tile, states, per_image) - weights
    if tile != start:
        log.warning("%s: %s need about %.1f GiB on %s, %.1f GiB is free: starting with %d-pixel tiles", node,
                    "the whole image" if start is None else f"{start}-pixel tiles", asked / 2**30, model.device,
                    free / 2**30, tile)
    return tile, overlap


Job = Callable[[OFTSRModel, torch.Tensor, "int | None", int, Progress], torch.Tensor]


def run_on_device(model: OFTSRModel, x: torch.Tensor, job: Job, *, tile: int, overlap: int, node: str, passes: int = 1,
                  evaluations: int | None = 1, states: int = 0, per_image: bool = False) -> torch.Tensor:
    """Run `job(model, x, tile, overlap, progress)` with the model on ComfyUI's torch
    device, then put the model back on the offload device.

    Memory is freed for the estimated need first (other models are unloaded), as
    ComfyUI's ImageUpscaleWithModel does; where less is free than that even so, the run
    starts with a smaller tile (`tiling_that_fits`). On out-of-memory the tile is halved and the
    whole job retried, down to MIN_OOM_TILE; below that a ValueError says what to do.
    The progress bar ticks at every tile of each of a library call's `evaluations`
    network evaluations (None: a count not known ahead, the adaptive solver's, shown on
    ADAPTIVE_PROGRESS_UNITS ticks); `per_image`: the library computes a tiled batch a few
    images at a time (`upscale`), its ticks counting the tiles of every pass, so Cancel
    stops within one tile and memory holds one tile. `x` is (B, C, H, W); the result is what `job` returns. (A gray
    photograph, which LoadImage makes three equal channels, comes back with three equal
    channels: the library keeps neutral images neutral.)"""
    device = mm.get_torch_device()
    out_h, out_w = x.shape[-2] * model.scale, x.shape[-1] * model.scale

    def units(tile: int | None, overlap: int) -> int:
        if evaluations is None:
            return ADAPTIVE_PROGRESS_UNITS
        passes = batch_passes(x.shape[0], out_h, out_w, tile) if per_image else 1
        return evaluations * num_tiles(out_h, out_w, tile, overlap) * passes

    widget_overlap = overlap  # what a retry's smaller tile starts from
    tile, overlap = first_tiling(tile, overlap)
    mm.free_memory(estimate_memory(model, x.shape[0], out_h, out_w, tile, states, per_image), device)
    model.to(device)  # the model takes this device's faster layout as it moves (OFTSRModel._apply)
    try:
        tile, overlap = tiling_that_fits(model, x.shape[0], out_h, out_w, tile, overlap, widget_overlap, node=node,
                                         states=states, per_image=per_image)
        while True:
            try:
                progress = Progress(passes, units(tile, overlap))
                with run_warnings_logged(node), cancel_between_blocks(model) if tile is None else contextlib.nullcontext():
                    out = job(model, x, tile, overlap, progress)
                progress.finish()
                return out
            except Exception as e:
                if not is_oom(e):
                    raise
                reason = error_summary(e)
            # outside the except block the exception's frames and their tensors are released
            mm.soft_empty_cache()
            failed, tile, overlap = tiling_after_oom(tile, widget_overlap, x.shape[0], out_h, out_w, per_image)
            if tile is None:
                cpu = "" if device.type == "cpu" else ", or run on the CPU with --cpu"
                raise ValueError(
                    f"{node}: out of memory on {device} even with {failed}-pixel tiles ({reason}). Upscale fewer "
                    f"images at once (smaller batch) or a smaller image, choose dtype fp16 or bf16 in Load OFTSR Model, "
                    f"free memory held by other models and programs (start ComfyUI with --lowvram to unload models "
                    f"sooner){cpu}."
                )
            log.warning("%s: out of memory with %d-pixel tiles on %s; retrying with %d", node, failed, device, tile)
            mm.free_memory(estimate_memory(model, x.shape[0], out_h, out_w, tile, states, per_image), device)
    finally:
        model.to(mm.unet_offload_device())


@contextlib.contextmanager
def run_warnings_logged(node: str) -> Iterator[None]:
    """The library's word on how a run goes (`RunWarning`: float16 on a CPU, ...) logged as
    the node's, once a run, instead of Python's warning with a source line; other warnings
    pass on as they came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunWarning)
        yield
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, RunWarning)):
        log.warning("%s: %s", node, message)
    for w in caught:
        if not issubclass(w.category, RunWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def tiling_after_oom(tile: int | None, widget_overlap: int, batch: int, out_h: int, out_w: int,
                     per_image: bool) -> tuple[int, int | None, int]:
    """`retry_tiling` for a batch of `batch` images of out_h x out_w: the tile that failed,
    the next (None: none left) and its overlap. `per_image`: the library shares a tile
    among small images (`images_per_pass`), so a smaller tile takes fewer at once."""
    at_once = images_per_pass(batch, out_h, out_w, tile) if per_image else 1
    return retry_tiling(tile, widget_overlap, out_h, out_w, at_once)
