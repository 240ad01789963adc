"""Progress and Cancel for the OFTSR nodes: one ComfyUI progress bar over a node's library
calls, with the teacher's step previews, and Cancel checked at every tile."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils

from ..oftsr.model import OFTSRModel
from ..oftsr.sampling import Callback

# The adaptive solver's length is not known ahead (20-31 NFE in the paper, 30-70 measured):
# its bar has 100 units and moves as 1 - exp(-NFE / 26), about 90% at a typical 60, never stalled.
ADAPTIVE_PROGRESS_UNITS = 100
ADAPTIVE_NFE_SCALE = 26
PREVIEW_SIZE = 512  # px, the longer side of step previews where ComfyUI names no size (its own default)


def check_interrupt(_done: int = 0, _total: int = 0) -> None:
    """A library callback that only checks Cancel (between the tiles of OFTSR as Upscale
    Model's `upscale` calls)."""
    mm.throw_exception_if_processing_interrupted()


@contextlib.contextmanager
def cancel_between_blocks(model: OFTSRModel) -> Iterator[None]:
    """Cancel checked before each block of the network as well (`UNet.before_block`):
    without tiles a whole image is one network evaluation, minutes long on a CPU, which
    Cancel would otherwise wait out. Not for a compiled network, whose graph the call
    would break."""
    if getattr(model, "_compiled", None) is not None:
        yield
        return
    model.unet.before_block = mm.throw_exception_if_processing_interrupted
    try:
        yield
    finally:
        model.unet.before_block = None


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
