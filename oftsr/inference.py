"""Image-level super-resolution: `upscale` (one-step student) and `sample` (teacher ODE).

Images are float tensors (B, C, H, W) in [0, 1] with C = 3 (RGB), 1 (grayscale: the
result is grayscale), 4 (RGBA) or 2 (gray + alpha); alpha is upscaled conventionally
(antialiased bicubic) and kept. An RGB image with three equal channels (black and white
saved as RGB) comes back with three equal channels: no colour noise.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, SupportsFloat

import torch
import torch.nn.functional as F

from .checks import (OUTPUT_DTYPES, Seed, check_int, check_seed, check_t, check_unit_range,
                     image_hint)
from .color import split_alpha
from . import devices
from .devices import available_memory
from .flow import T_EPS, endpoint_estimate, noise_augment, student_step, time_grid
from .model import OFTSRModel, RunWarning
from .noise import region_noise
from .resample import upsample_lr_region
from .sampling import Callback, CountNFE, evaluations, get_sampler
from .tiling import (Box, batch_passes, blend_tiles, blend_tiles_into_tensor, check_tiling, crop_tiles,
                     images_per_pass)

__all__ = ["upscale", "sample"]

_WRITE_ROWS = 256  # rows of the teacher's final state converted at a time


NEUTRAL_TOLERANCE = 1.5 / 255  # channel spread of a neutral pixel: one 8-bit level, and rounding


def _split_channels(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool, torch.Tensor]:
    """(RGB the network sees, alpha or None, whether the result has one colour channel, which
    images are neutral) of a 1-4 channel image. Neutral: gray, or RGB whose visible pixels
    have three channels within a level of each other (a black-and-white photo saved as RGB,
    perhaps through a colour profile, or ComfyUI's LoadImage of a gray file);
    their result is made neutral too, the mean of the network's channels, as for gray."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (B, C, H, W) tensor in [0, 1], got {shape}{image_hint(image)}")
    b, c, h, w = image.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    if c not in (1, 2, 3, 4):
        raise ValueError(f"image must have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels, got {c}"
                         f"{image_hint(image)}")
    if not image.is_floating_point():  # 8-bit levels would all clamp to white
        raise ValueError(f"image must be a floating-point tensor in [0, 1], got {image.dtype}: divide 8-bit levels by "
                         f"255 (16-bit by 65535) first")
    image = image.float()
    check_unit_range(image, "image", stacklevel=5)  # the line that called upscale() or sample()
    colour, alpha = split_alpha(image.clamp(0, 1))
    if c <= 2:
        neutral = torch.ones(b, dtype=torch.bool, device=image.device)
    else:  # within a level: a gray photo through a colour-managed round trip is off by one here and there
        spread = image[:, :3].amax(dim=1) - image[:, :3].amin(dim=1)
        off = spread > NEUTRAL_TOLERANCE
        if c == 4:  # what lies under full transparency is not seen (and often not gray)
            off &= image[:, 3] > 0.5 / 255
        neutral = ~off.flatten(1).any(dim=1)
    return colour, alpha, c <= 2, neutral


def _neutralise(rgb: torch.Tensor, neutral: torch.Tensor, gray: bool) -> torch.Tensor:
    """The network's RGB as the input's colour: the channel mean for gray (one channel) and
    for neutral images (three equal channels); colour images unchanged."""
    if gray:
        return rgb.mean(dim=1, keepdim=True)
    if not bool(neutral.any()):
        return rgb
    mean = rgb.mean(dim=1, keepdim=True).expand_as(rgb)
    return torch.where(neutral.to(rgb.device).view(-1, 1, 1, 1), mean, rgb)


ALPHA_SNAP = 1e-6  # an up-sampled alpha this close to 0 or 1 is that: float rounding, 1/65 of a 16-bit level


class _Output:
    """The result buffer, filled band by band from x1 (in [-1, 1], unclamped): clamp to
    [0, 1], grayscale or alpha as the input had it, and rounding for integer dtypes. The
    alpha band is up-sampled from the input's alpha on the fly (antialiased bicubic)."""

    def __init__(self, image: torch.Tensor, alpha: torch.Tensor | None, gray: bool, neutral: torch.Tensor,
                 scale: int, dtype: torch.dtype) -> None:
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {', '.join(map(str, OUTPUT_DTYPES))}, got {dtype}")
        b, _, h, w = image.shape
        self.alpha, self.gray, self.neutral, self.scale, self.peak = alpha, gray, neutral, scale, OUTPUT_DTYPES[dtype]
        channels = (1 if gray else 3) + (alpha is not None)
        self.out = torch.empty(b, channels, h * scale, w * scale, dtype=dtype, device=image.device)

    def write(self, top: int, x1: torch.Tensor, first: int = 0) -> None:
        """Rows from `top` of the images first..first+len(x1)-1."""
        images = slice(first, first + x1.shape[0])
        rows = x1.clamp(-1, 1).add_(1).div_(2)  # in place after the first copy: these are bands of the image width
        rows = _neutralise(rows, self.neutral[images], self.gray)
        if self.alpha is not None:
            a = upsample_lr_region(self.alpha[images], self.scale, "bicubic", top, 0, rows.shape[-2], rows.shape[-1])
            # opaque stays exactly 1 and transparent 0 (bicubic's weights sum to 1 only up to rounding)
            a = torch.where(a >= 1 - ALPHA_SNAP, 1.0, torch.where(a <= ALPHA_SNAP, 0.0, a))
            rows = torch.cat([rows, a], dim=1)
        if self.peak != 1.0:
            rows = rows.mul_(self.peak).round_()
        self.out[images, :, top:top + rows.shape[-2]] = rows.to(self.out.device, self.out.dtype)


def _condition(model: OFTSRModel, lr: torch.Tensor, boxes: list[Box], height: int, width: int) -> torch.Tensor:
    """x_lr of tiles: the LR image (in [-1, 1]) up-sampled as the model was trained."""
    return torch.cat([upsample_lr_region(lr, model.scale, model.degradation, y, x, height, width) for y, x in boxes])


def _start(model: OFTSRModel, lr: torch.Tensor, seed: Seed, boxes: list[Box], height: int,
           width: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 and x_lr of tiles of `lr`, images first.. of the batch. The noise is a function of
    the seed, the image's place and the output pixel (`region_noise`), so it is the same
    whatever the tiling, the device, and how the batch is split."""
    x_lr = _condition(model, lr, boxes, height, width)
    noise = torch.cat([region_noise(seed, lr.shape[0], y, x, height, width, first=first)
                       for y, x in boxes]).to(x_lr.device)
    return noise_augment(x_lr, model.sigma_p, noise), x_lr


def _check_model(model: OFTSRModel, role: str, use: str) -> None:
    """The role `use` needs; and a word where the model runs in float16 on a CPU, or in
    bfloat16 on one without AVX512-bf16 or AMX, which emulate them (said when it runs, not
    when it loads: ComfyUI loads onto the CPU to move later)."""
    if not isinstance(getattr(model, "_orig_mod", model), OFTSRModel):  # torch.compile(model) wraps one
        load = f"oftsr.load_model({model!r})" if isinstance(model, str) else "oftsr.load_model('x4')"
        raise TypeError(f"{use} needs an OFTSRModel, got {type(model).__name__}: load one with {load}")
    if model.role != role:
        other = "sample() / the teacher sampler" if model.role == "teacher" else "upscale() / the one-step upscaler"
        raise ValueError(f"{use} needs a {role} model, but this model is a {model.role}; use {other} for it")
    if torch.float16 in (model.dtype, model.autocast_dtype) and model.device.type == "cpu":
        warnings.warn("float16 on a CPU is emulated: about 10x slower than float32 (bfloat16 is fast on CPUs with "
                      "AVX512-bf16 or AMX); float16 is for GPUs", RunWarning, stacklevel=4)  # past torch.no_grad
    elif torch.bfloat16 in (model.dtype, model.autocast_dtype) and model.device.type == "cpu" \
            and not devices.cpu_has_native_bf16():
        warnings.warn("bfloat16 on this CPU is emulated (it has neither AVX512-bf16 nor AMX): about 2-3x slower than "
                      "float32: load the model in float32 (or dtype auto) here", RunWarning, stacklevel=4)
    if hasattr(model, "_orig_mod"):  # torch.compile(model): compiles forward, and velocity is what runs
        warnings.warn("torch.compile(model) compiles forward, which upscale and sample do not call: the network runs "
                      "uncompiled. Use oftsr.load_model(..., compile=True) or model.optimize(compile=True)",
                      RunWarning, stacklevel=4)


# Bytes of activations per output pixel and per UNet base channel, measured on the compact,
# div2k and imagenet presets (about 40-60 in float32); half precision stores less.
_ACT_BYTES_PER_ELEM = 10
_ACT_BYTES_FIXED = 16


def activation_memory(model: OFTSRModel, images: int, height: int, width: int) -> int:
    """Bytes one network evaluation of `images` tiles (or whole images) of height x width
    output pixels takes beyond the weights, at its peak (the compact preset measured 50-59
    bytes per pixel and base channel in float32)."""
    elem = torch.empty((), dtype=model.dtype).element_size()
    return images * height * width * model.config.model_channels * (_ACT_BYTES_PER_ELEM * elem + _ACT_BYTES_FIXED)


class NotEnoughMemory(MemoryError, ValueError):
    """A run whose estimated memory is more than the device has free, refused before any
    work: an out-of-memory error (`devices.is_out_of_memory`) that callers retry with
    smaller tiles, as the command line and the nodes do."""


def _check_memory(model: OFTSRModel, images: int, height: int, width: int, tile: int | None, tile_batch: int,
                  use: str) -> None:
    # Fail at once, with the way out, rather than by the allocator's error (or the system's
    # OOM killer on a CPU) in the first network evaluation: `images` images of height x
    # width go through it at once, whole or `tile_batch` tiles of each at a time.
    if not hasattr(model.config, "model_channels"):  # a network of the caller's own: no estimate
        return
    th, tw = (min(tile, height), min(tile, width)) if tile else (height, width)
    pieces = images * (tile_batch if tile else 1)
    need, free = activation_memory(model, pieces, th, tw), available_memory(model.device)
    if free is None or need <= free:
        return
    if tile is None:
        what = f"{images} whole {width}x{height} outputs" if images > 1 else f"the whole {width}x{height} output"
        way = "pass tile=512 (seam-free tiles, as the command line and the nodes use; memory then holds one tile)"
    else:
        what = f"{pieces} {tw}x{th} tiles" if pieces > 1 else f"a {tw}x{th} tile"
        way = "pass a smaller tile" + (" or tile_batch" if tile_batch > 1 else "")
    raise NotEnoughMemory(f"{use}: {what} at once need about {need / 2**30:.1f} GiB on {model.device}, but "
                          f"{free / 2**30:.1f} GiB is free: {way}")


def _check_callables(**functions: object) -> None:
    for name, fn in functions.items():
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be a function or None, got {fn!r}")


# no_grad, not inference_mode: the result is an ordinary tensor, which callers may change
# in place or use in autograd (inference tensors allow neither).
@torch.no_grad()
def upscale(model: OFTSRModel, image: torch.Tensor, *, t: SupportsFloat = 0.5, seed: Seed = 0, tile: int | None = None,
            overlap: int | None = None, tile_batch: int = 1, callback: Callback | None = None,
            out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-step super-resolution with the student: x1 = x0 + (1 - 0.001) v(x0, x_lr, t).
    t = 0 favours fidelity (smooth, high PSNR), t = 1 realism (detail); the default 0.5
    is the balanced middle, as in the command line and the nodes. `tile` and
    `overlap` are in output pixels. Returns (B, C, scale*H, scale*W) on the image's
    device: in [0, 1] for float32, 0..255 / 0..65535 for `out_dtype` uint8 / uint16 (what
    `images.save_image` writes as they are; torch has few operations on uint16, so convert
    with `.numpy()` or `.to(torch.int32)` to compute on it).

    `seed` sets the start noise: one seed for the batch, where image i's noise depends on
    i too (a batch of copies gives different results), or one per image (a list, tuple,
    tensor or array), each image then getting the result it has alone with that seed (to
    float rounding). The start is noised at every t (the model's sigma_p), so seeds differ
    a little at t = 0 too, and more towards t = 1.

    A tiled batch (a video's frames) is computed a few images at a time, as many as one
    tile's pixels hold (`tiling.images_per_pass`; the callback counts the tiles of every
    pass), each tile with its own noise, condition and result, and finished rows go
    straight into the result, so beyond it memory is bounded by one tile (times the image
    width), whatever the image size and the batch. Tiles of 256 px or more give results
    close to the whole image's (smaller ones see less context). Without tiling the batch
    goes at once. Where a network evaluation's estimated memory (`activation_memory`) is
    more than the device has free, `NotEnoughMemory` (a MemoryError and a ValueError) says
    so before any work, rather than the allocator's error or the system's out-of-memory
    killer."""
    _check_model(model, "student", "upscale()")
    _check_callables(callback=callback)
    t = check_t(t)
    if model.ignores_t:  # FlowSR/FluxSR: x1 = f(x0, T_EPS), the start of the flow, whatever t is asked
        t = T_EPS
    rgb, alpha, gray, neutral = _split_channels(image)
    seed = check_seed(seed, rgb.shape[0])
    result = _Output(image, None if alpha is None else alpha.to(model.device), gray, neutral, model.scale, out_dtype)
    lr = rgb.to(model.device) * 2 - 1
    b, _, h, w = result.out.shape

    tiled = check_tiling(tile, overlap)[0]
    at_once, passes = images_per_pass(b, h, w, tiled), batch_passes(b, h, w, tiled)
    _check_memory(model, at_once, h, w, tiled, check_int(tile_batch, "tile_batch", minimum=1), "upscale()")
    for first in range(0, b, at_once):
        n = min(at_once, b - first)
        part_seed = seed[first:first + n] if isinstance(seed, list) else seed

        def tile_fn(boxes: list[Box], height: int, width: int, first: int = first, n: int = n,
                    part_seed: Seed = part_seed) -> torch.Tensor:
            x0, x_lr = _start(model, lr[first:first + n], part_seed, boxes, height, width, first=first)
            return student_step(x0, model.velocity(x0, x_lr, t))

        def tick(done: int, total: int, k: int = first // at_once) -> None:
            callback(k * total + done, passes * total)

        blend_tiles(tile_fn, n, h, w, functools.partial(result.write, first=first), tile=tile, overlap=overlap,
                    tile_batch=tile_batch, callback=None if callback is None else tick)
    return result.out


# Whole-image float32 buffers `sample` holds at its peak, by solver: the state, the stage
# velocities and the tile blend's sums (midpoint measured about five, docs/performance.md;
# dopri5 keeps seven stages and its error estimate). What to free ahead of a run.
SAMPLE_BUFFERS = {"euler": 6, "midpoint": 6, "heun": 6, "adaptive": 14}
# The least any solver keeps (the state, a velocity, the blend sums): below it, refuse at once.
_SAMPLE_MIN_BUFFERS = 3


def _check_sample_memory(model: OFTSRModel, batch: int, height: int, width: int) -> None:
    # Fail at once rather than after minutes of steps (or by the system's OOM killer).
    need = _SAMPLE_MIN_BUFFERS * batch * 3 * height * width * 4
    free = available_memory(model.device)
    if free is not None and need > free:
        raise ValueError(
            f"the teacher keeps the whole {width}x{height} output in memory between its steps, at least "
            f"{need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB is free on {model.device}: use the one-step "
            f"student (oftsr upscale / OFTSR Upscale), a smaller image or a crop of it, or fewer images at once")


def _straight_estimate(x: torch.Tensor, v: torch.Tensor, t: float, size: int, neutral: torch.Tensor) -> torch.Tensor:
    """The endpoint estimate x + (1 - t) v in [0, 1], at most `size` px a side (neutral images neutral, as their
    result is). Area reduction is linear, so the two terms are reduced apart: no
    whole-image buffer beyond x and v."""
    h, w = x.shape[-2:]
    scale = min(1.0, size / max(h, w))
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    x, v = (F.interpolate(a.float(), size=small, mode="area") for a in (x, v)) if scale < 1 else (x.float(), v.float())
    return _neutralise((endpoint_estimate(x, v, t).clamp(-1, 1) + 1) / 2, neutral, gray=False)


def tile_evaluation_progress(callback: Callback, solver: str, steps: int) -> Callback:
    """A `tile_callback` for `sample` that reports the progress of the whole run tile by
    tile, where its `callback` reports steps: `callback(tiles done, tiles in all)` over
    every tile of every network evaluation, or, from the adaptive solver, whose length is
    not known ahead, `callback(evaluations finished, 0)` at every tile. A teacher step on a
    big image is many tiles: a progress bar (and a Cancel checked with it) should not wait
    for a whole step."""
    total = evaluations(solver, steps)
    finished = 0

    def on_tile(done: int, tiles: int) -> None:
        nonlocal finished
        ticks = finished * tiles + done
        if done >= tiles:
            finished += 1
        if total is None:
            callback(finished, 0)
        else:
            callback(ticks, total * tiles)

    return on_tile


@torch.no_grad()
def sample(model: OFTSRModel, image: torch.Tensor, *, steps: int = 16, solver: str = "midpoint", seed: Seed = 0,
           tile: int | None = None, overlap: int | None = None, tile_batch: int = 1,
           callback: Callback | None = None, tile_callback: Callback | None = None, info: dict | None = None,
           out_dtype: torch.dtype = torch.float32, preview: Callable[[torch.Tensor], None] | None = None,
           preview_size: int = 512) -> torch.Tensor:
    """Multi-step super-resolution with the teacher, integrating the flow from t = 0.001
    to 1 on the grid t_i = i/N (1 - 0.001) + 0.001. `solver`: euler (NFE N), midpoint or
    heun (NFE 2N - 1), adaptive (dopri5, rtol = atol = 1e-3; `steps` ignored).
    `seed` as for `upscale`. The callback gets (step, steps), and (evaluations so far, 0)
    from the adaptive solver, whose length is not known ahead; `tile_callback` gets (tiles done, tiles) within each
    network evaluation, so a caller can stop a long step between its tiles by raising;
    `info["nfe"]` receives the evaluation count (the adaptive solver's summed over a batch: it
    integrates the images one by one, so that each has the steps and result it has alone). `out_dtype` as for `upscale`.
    `preview(estimate)` is called after each network evaluation with the result as the
    flow would end from there in a straight line, x + (1 - t) v: (B, 3, h, w) in [0, 1],
    area-reduced to at most `preview_size` px a side (the last one is the result's).

    The solver needs the whole state x_t between steps: it is kept in float32 (the
    steps add small increments) with the solver's few stage buffers; the condition is
    computed per tile and not stored."""
    _check_model(model, "teacher", "sample()")
    sampler = get_sampler(solver)
    steps = check_int(steps, "steps", minimum=1)
    # before any evaluation: these are used only after one, or after the whole run
    _check_callables(callback=callback, tile_callback=tile_callback, preview=preview)
    if info is not None and not isinstance(info, dict):
        raise ValueError(f"info must be a dict (it receives info['nfe']) or None, got {type(info).__name__}")
    if preview is not None:
        check_int(preview_size, "preview_size", minimum=1)
    rgb, alpha, gray, neutral = _split_channels(image)
    seed = check_seed(seed, rgb.shape[0])
    _check_sample_memory(model, rgb.shape[0], rgb.shape[-2] * model.scale, rgb.shape[-1] * model.scale)
    result = _Output(image, None if alpha is None else alpha.to(model.device), gray, neutral, model.scale, out_dtype)
    lr = rgb.to(model.device) * 2 - 1
    b, _, h, w = result.out.shape
    _check_memory(model, 1 if solver == "adaptive" else b, h, w, check_tiling(tile, overlap)[0],
                  check_int(tile_batch, "tile_batch", minimum=1), "sample()")
    x0 = _start(model, lr, seed, [(0, 0)], h, w)[0]

    def velocity_of(part: slice) -> Callable[[torch.Tensor, float], torch.Tensor]:
        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            def tile_fn(boxes: list[Box], height: int, width: int) -> torch.Tensor:
                condition = _condition(model, lr[part], boxes, height, width)
                return model.velocity(crop_tiles(x, boxes, height, width), condition, t)

            v = blend_tiles_into_tensor(tile_fn, x.shape[0], h, w, tile=tile, overlap=overlap, tile_batch=tile_batch,
                                        callback=tile_callback)
            if preview is not None:
                preview(_straight_estimate(x, v, t, preview_size, neutral[part]))
            return v

        return velocity

    # dopri5 sizes its steps by one error norm over its whole state: a batch solved at once
    # would share them, and an image's result would depend on the others. Image by image,
    # each gets the steps and the result it has alone (the fixed-step solvers take the batch).
    parts = [slice(i, i + 1) for i in range(b)] if solver == "adaptive" else [slice(0, b)]
    ends, nfe = [], 0
    for part in parts:
        fn = CountNFE(velocity_of(part))
        done = nfe  # the adaptive solver's callback counts the evaluations of the whole run

        def on_step(i: int, n: int, done: int = done) -> None:
            callback(done + i, n)

        ends.append(sampler(fn, x0[part], time_grid(steps, T_EPS), callback=None if callback is None else on_step))
        nfe += fn.nfe
    x1 = ends[0] if len(ends) == 1 else torch.cat(ends)
    if info is not None:
        info["nfe"] = nfe
    for top in range(0, h, _WRITE_ROWS):
        result.write(top, x1[..., top:top + _WRITE_ROWS, :])
    return result.out
