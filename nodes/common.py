"""What the OFTSR nodes share: ComfyUI's IMAGE layout, common inputs, role checks,
devices and memory, progress and Cancel, and the out-of-memory retry (the smaller tiles
it tries are `retry_tiling`'s, in every node)."""

from __future__ import annotations

import logging
import math
import weakref
from typing import Callable

import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..oftsr.checks import SEED_MAX
from ..oftsr.devices import available_memory, is_out_of_memory
from ..oftsr.model import OFTSRModel
from ..oftsr.sampling import Callback
from ..oftsr.tiling import (DEFAULT_OVERLAP, MIN_OOM_TILE, MIN_TILE, batch_passes, images_per_pass, num_tiles,
                           retry_tiling)
from ..oftsr.color import COLOR_FIX_MODES, color_fix

log = logging.getLogger(__name__)

CATEGORY = "image/upscaling/OFTSR"
OFTSR_MODEL = io.Custom("OFTSR_MODEL")
DEFAULT_TILE = 512
MAX_TILE = 8192
# The adaptive solver's length is not known ahead (20-31 NFE in the paper, 30-70 measured):
# its bar has 100 units and moves as 1 - exp(-NFE / 26), about 90% at a typical 60, never stalled.
ADAPTIVE_PROGRESS_UNITS = 100
ADAPTIVE_NFE_SCALE = 26
PREVIEW_SIZE = 512  # px, the longer side of step previews where ComfyUI names no size (its own default)

# Bytes of activations per output pixel and per UNet base channel, measured on the
# div2k and imagenet presets (about 40-60 in float32); half precision stores less.
_ACT_BYTES_PER_ELEM = 10
_ACT_BYTES_FIXED = 16


# --------------------------------------------------------------------------- inputs

def model_input() -> io.Input:
    return OFTSR_MODEL.Input("model", tooltip="An OFTSR model from Load OFTSR Model.")


def image_input() -> io.Input:
    return io.Image.Input("image", tooltip="The low-resolution image(s). RGBA keeps its alpha (upscaled bicubically); "
                                           "Load Image gives a transparent file's alpha as a separate MASK: join it "
                                           "with Join Image with Alpha to keep it.")


def t_input(name: str = "t", default: float = 0.5, tooltip: str | None = None) -> io.Input:
    return io.Float.Input(
        name, default=default, min=0.0, max=1.0, step=0.01, display_mode=io.NumberDisplay.slider,
        tooltip=tooltip or "Fidelity-realism trade-off: 0 = fidelity (smooth, faithful, highest PSNR), "
                           "1 = realism (sharp detail, lowest LPIPS).",
    )


KEEP_CACHED = ("Keep 'control after generate' at fixed to keep a result cached: with randomize, every Queue "
               "upscales again.")


def seed_input(tooltip: str = "Seed of the start-point noise. The noise depends on the seed, the image's place in "
                              "the batch and the pixel, not on the tiling (the result changes a little with the tile "
                              "size, as each tile sees only its own surroundings).") -> io.Input:
    # "fixed" by default, so that an upscale stays cached from one Queue to the next, where
    # ComfyUI lets a node choose (io.ControlAfterGenerate, 2026 on); True leaves the
    # frontend's default, randomize, to older versions.
    control = getattr(io, "ControlAfterGenerate", None)
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=control.fixed if control else True,
                        tooltip=f"{tooltip} {KEEP_CACHED}")


def tiling_inputs(tile_tooltip: str = f"Tile size in output pixels, {MIN_TILE} or more, or 0 for the whole image at "
                                      f"once (then Cancel waits for a whole network evaluation of it). Bounds memory "
                                      f"(the GPU's, or RAM on a CPU); halved automatically down to {MIN_OOM_TILE} "
                                      f"when memory runs out or less is free than the tile needs.") -> list[io.Input]:
    # steps of MIN_TILE: every size the widget offers from 0 runs (8, 16 and 24 would be refused)
    return [
        io.Int.Input("tile", default=DEFAULT_TILE, min=0, max=MAX_TILE, step=MIN_TILE, tooltip=tile_tooltip),
        io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=1024, step=8,
                     tooltip="Overlap of neighbouring tiles in output pixels, blended with linear feathering (no seams). "
                             "At most half the tile. Near t = 1 a blended band is a little smoother than the rest (two "
                             "tiles' grain averaged): keep tiles large (512 or more) and the overlap small."),
    ]


def color_fix_input() -> io.Input:
    return io.Combo.Input(
        "color_fix", options=list(COLOR_FIX_MODES), default="none",
        tooltip="Keep the low-frequency colour of the bicubic-upscaled input: none, wavelet (replace the coarsest "
                "wavelet band) or adain (match per-channel mean and contrast). Either also holds the colour of "
                "very small images (icons, sprites: tens of pixels), where the network's can drift by several levels.",
    )


# --------------------------------------------------------------------------- checks and layout

def check_tile(tile) -> bool | str:
    """The sampling nodes' `validate_inputs`, before the prompt runs: the tile widget can
    hold sizes that never run (1 to 31). It takes `tile` alone because ComfyUI files a
    `validate_inputs` error under every input the method takes, and leaves those inputs
    out of its own range check (made here in full). A linked value arrives as None and is
    checked by the library when the node runs."""
    if isinstance(tile, int) and not (tile == 0 or MIN_TILE <= tile <= MAX_TILE):
        return f"tile must be 0 (the whole image at once) or {MIN_TILE} to {MAX_TILE} pixels, got {tile}"
    return True


def check_options(**options: tuple[object, list[str]]) -> None:
    """Combo values, {name: (value, allowed)}, checked first thing in `execute`: ComfyUI
    (0.3.6x) does not check the options of these nodes' combos, and the UI offers only the
    listed ones, so another value comes from an API prompt or another version's workflow."""
    for name, (value, allowed) in options.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def color_fix_option(value: object) -> dict[str, tuple[object, list[str]]]:
    return {"color_fix": (value, list(COLOR_FIX_MODES))}


def require_role(model: OFTSRModel, role: str, node: str) -> None:
    """A clear error when a node gets the wrong kind of model (the library's message
    names library functions; this one names nodes)."""
    actual = getattr(model, "role", None)
    if actual is None or not hasattr(model, "velocity"):
        raise ValueError(f"{node} needs an OFTSR_MODEL from the Load OFTSR Model node, got {type(model).__name__}")
    if actual == role:
        return
    if role == "student":
        raise ValueError(
            f"{node} needs a one-step student model, but this model is a teacher. Use the OFTSR Teacher Sampler node "
            f"for a teacher (or, for a file that does not record its role, such as an authors' .pth, set role = "
            f"student in Load OFTSR Model)."
        )
    raise ValueError(
        f"{node} needs a teacher model, but this model is a one-step student. Use OFTSR Upscale (or OFTSR t-Sweep, "
        f"OFTSR Regional Trade-off, OFTSR as Upscale Model) for a student (or, for a file that does not record its "
        f"role, such as an authors' .pth, set role = teacher in Load OFTSR Model)."
    )


def require_t_slider(model: OFTSRModel, node: str) -> None:
    """A clear error when a node that compares values of t gets a fixed-point student
    (FlowSR, FluxSR): every t gives it the same image."""
    require_role(model, "student", node)
    if getattr(model, "ignores_t", False):
        raise ValueError(f"{node} needs an OFTSR student with a t slider, but this student was distilled with "
                         f"{model.objective}: a fixed-point map that gives the same image at every t. Use OFTSR "
                         f"Upscale for it.")


def to_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> (B, C, H, W) float32."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        mask = " (a MASK, [batch, height, width]: turn it into an IMAGE with Convert Mask to Image)" \
            if isinstance(image, torch.Tensor) and image.ndim == 3 else ""
        raise ValueError(f"{name} must be an IMAGE [batch, height, width, channels], got {shape}{mask}")
    if 0 in image.shape[:3]:
        raise ValueError(f"{name} is empty: IMAGE [batch, height, width, channels] {list(image.shape)}")
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must have 3 (RGB), 4 (RGBA) or 1 (gray) channels, got {image.shape[-1]}")
    return image.movedim(-1, 1).float()


def to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> ComfyUI IMAGE [B, H, W, C] float32 on the intermediate device. A gray
    result (from a one-channel IMAGE) comes back as three equal channels, as ComfyUI's IMAGE
    is: Save Image and Preview Image cannot take one channel."""
    if x.shape[1] in (1, 2):  # gray (+ alpha)
        x = torch.cat([x[:, :1].expand(-1, 3, -1, -1), x[:, 1:]], dim=1)
    return x.movedim(1, -1).to(device=mm.intermediate_device(), dtype=torch.float32).contiguous()


def color_fixed_image(out: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Colour correction against the (B, C, H, W) input, then back to an IMAGE."""
    return to_image(color_fix(out, reference.to(out.device), mode))


_warned_fixed_point: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the nodes that warned, per model


def warn_if_ignores_t(model: OFTSRModel, node: str) -> None:
    """A FlowSR/FluxSR student has no trade-off slider: say so once per loaded model and node."""
    if getattr(model, "ignores_t", False) and node not in _warned_fixed_point.setdefault(model, set()):
        _warned_fixed_point[model].add(node)
        log.warning("%s: %s", node, model.ignores_t_note())


# --------------------------------------------------------------------------- progress and Cancel

def check_interrupt(_done: int = 0, _total: int = 0) -> None:
    """A library callback that only checks Cancel (e.g. between the tiles of one teacher step)."""
    mm.throw_exception_if_processing_interrupted()


def preview_size() -> int | None:
    """The longer side of the teacher's step previews, as ComfyUI's samplers make theirs
    (`--preview-size`), or None where the user turned previews off: `--preview-method none`,
    ComfyUI's default, or the frontend's "Live preview method" for this prompt, which ComfyUI
    sets in the same place while the prompt runs. Read at each run, never at import."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError:  # a ComfyUI without this module: previews as before
        return PREVIEW_SIZE
    if getattr(args, "preview_method", None) == LatentPreviewMethod.NoPreviews:
        return None
    return int(getattr(args, "preview_size", None) or PREVIEW_SIZE)


class Progress:
    """One ComfyUI progress bar over `passes` library calls of `units` ticks each (tiles,
    or a teacher's tiles of every network evaluation). Every tick first checks Cancel, so
    an interrupt stops within a tile, and carries the newest `preview` image, if one came
    since the last tick."""

    def __init__(self, passes: int, units: int) -> None:
        self.units = max(1, int(units))
        self.preview_size = preview_size()  # None: the user turned previews off
        self.total = max(1, int(passes)) * self.units
        self.started = 0
        self.value = 0
        self.bar = comfy.utils.ProgressBar(self.total)
        self.pending = None  # the preview for the next tick

    def preview(self, image: torch.Tensor) -> None:
        """A library preview, (B, 3, h, w) in [0, 1], small: its first image is shown on
        the node with the next tick, as ComfyUI shows a sampler's latent preview (only the
        newest is converted)."""
        self.pending = image[0]

    def previews(self) -> dict:
        """`sample()`'s preview arguments, none where the user turned previews off."""
        return {} if self.preview_size is None else {"preview": self.preview, "preview_size": self.preview_size}

    def callback(self) -> Callback:
        """The `callback(i, n)` for the next library call (call once per call)."""
        mm.throw_exception_if_processing_interrupted()
        base, units = self.started * self.units, self.units
        self.started += 1

        def tick(i: int, n: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            if n > 0:
                done = min(i, n)
            else:  # the adaptive solver's count of evaluations, of an unknown total
                done = min(units - 1, round(units * (1 - math.exp(-i / ADAPTIVE_NFE_SCALE))))
            self.value = min(self.total, base + min(done, units))
            self._update()

        return tick

    def _update(self) -> None:
        preview, self.pending = self.pending, None
        if preview is not None:
            pixels = (preview.movedim(0, -1).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            preview = ("JPEG", Image.fromarray(pixels), self.preview_size)
        self.bar.update_absolute(self.value, self.total, preview)

    def finish(self) -> None:
        # the adaptive solver's length was a guess; the last preview (the result's) comes after the last tile
        if self.value < self.total or self.pending is not None:
            self.value = self.total
            self._update()


# --------------------------------------------------------------------------- devices, memory, OOM

def estimate_memory(model: OFTSRModel, batch: int, out_h: int, out_w: int, tile: int | None, states: int = 0,
                    per_image: bool = False) -> int:
    """Bytes a run needs on the device: weights, one tile's activations, the band of tile
    rows being blended (tile height x image width; the result goes to the image's device)
    and `states` whole-image float32 buffers (the teacher's solver; the upscaler has none).
    `per_image`: the library computes a tiled batch a few images at a time (`upscale`,
    `tiling.images_per_pass`), so the tile and the band are those images'."""
    th, tw = (min(tile, out_h), min(tile, out_w)) if tile else (out_h, out_w)
    elem = torch.empty((), dtype=model.dtype).element_size()
    at_once = images_per_pass(batch, out_h, out_w, tile or None) if per_image else batch
    activations = at_once * th * tw * model.config.model_channels * (_ACT_BYTES_PER_ELEM * elem + _ACT_BYTES_FIXED)
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
        at_once = images_per_pass(batch, out_h, out_w, tile) if per_image else 1
        _, smaller, smaller_overlap = retry_tiling(tile, widget_overlap, out_h, out_w, at_once)
        if smaller is None:
            break  # the smallest tile is tried: if memory does run out, the error says what to do
        tile, overlap = smaller, smaller_overlap
        need = estimate_memory(model, batch, out_h, out_w, tile, states, per_image) - weights
    if tile != start:
        log.warning("%s: %s need about %.1f GiB on %s, %.1f GiB is free: starting with %d-pixel tiles", node,
                    "the whole image" if start is None else f"{start}-pixel tiles", asked / 2**30, model.device,
                    free / 2**30, tile)
    return tile, overlap


Job = Callable[[object, torch.Tensor, "int | None", int, Progress], torch.Tensor]


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
                out = job(model, x, tile, overlap, progress)
                progress.finish()
                return out
            except Exception as e:
                if not is_oom(e):
                    raise
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            # outside the except block the exception's frames and their tensors are released
            mm.soft_empty_cache()
            at_once = images_per_pass(x.shape[0], out_h, out_w, tile) if per_image else 1
            failed, tile, overlap = retry_tiling(tile, widget_overlap, out_h, out_w, at_once)
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
