"""OFTSR as Upscale Model: a student at a fixed t as ComfyUI's UPSCALE_MODEL, for
Upscale Image (using Model) and the nodes built on it (e.g. Ultimate SD Upscale)."""

from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..oftsr import upscale
from ..oftsr.checks import SEED_MAX, check_t
from ..oftsr.model import OFTSRModel
from ..oftsr.tiling import DEFAULT_OVERLAP, MIN_OOM_TILE
from .memory import first_tiling, is_oom, tiling_after_oom, tiling_that_fits
from .progress import check_interrupt
from .widgets import (CATEGORY, DEFAULT_TILE, check_tile, model_input, require_role, t_input, tiling_inputs,
                      warn_if_ignores_t)

NAME = "OFTSR as Upscale Model"
SEED_TOOLTIP = ("Seed of the start-point noise. The consuming node calls the model once per image and per tile of its "
                "own, and the noise starts again in each call: the images of a batch get the same noise, and where "
                "the consuming node blends two of its tiles the detail is a little softer near t = 1.")
TILE_TOOLTIP = (f"Tile size in output pixels within each call of the consuming node (0 = what it hands over, at "
                f"once; Upscale Image hands over 512 px of input, 2048 px of output at x4). Bounds memory; when memory "
                f"runs out it is halved and the call retried inside, down to {MIN_OOM_TILE} px (the smaller tile is "
                f"kept).")
log = logging.getLogger(__name__)


class StudentUpscaleModel:
    """The part of spandrel's ImageModelDescriptor that UPSCALE_MODEL consumers use:
    `model` (its size sets the memory ComfyUI frees), `scale`, `to(device)`, `half()` /
    `bfloat16()` / `float()`, and a call on (B, C, H, W) in [0, 1] that returns
    (B, 3, scale*H, scale*W) in the input's dtype.

    The consumer calls it once per image and per tile of its own (512 px of input in
    Upscale Image); each call is tiled again here, in `tile` output pixels, so memory stays
    bounded whatever the consumer's tile. The start noise is drawn per pixel of what one
    call sees, so it restarts in each call. On out-of-memory the inner tile is halved and
    the call retried, down to MIN_OOM_TILE px, as OFTSR Upscale does; the smaller tile is kept."""

    input_channels = 3
    output_channels = 3
    supports_half = True
    supports_bfloat16 = True

    def __init__(self, model: OFTSRModel, t: float, seed: int, tile: int, overlap: int) -> None:
        self.model, self.t, self.seed = model, float(t), int(seed)
        self.tile, self.overlap = first_tiling(tile, overlap)
        self.widget_overlap = overlap  # what a retry's smaller tile starts from
        self.warned_alpha = False

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, *args, **kwargs) -> "StudentUpscaleModel":
        self.model.to(*args, **kwargs)
        return self

    def half(self) -> "StudentUpscaleModel":
        return self.to(torch.float16)

    def bfloat16(self) -> "StudentUpscaleModel":
        return self.to(torch.bfloat16)

    def float(self) -> "StudentUpscaleModel":
        return self.to(torch.float32)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        check_interrupt()
        if image.shape[1] == 4:  # Upscale Image's result holds three channels; OFTSR Upscale keeps alpha
            if not self.warned_alpha:
                self.warned_alpha = True
                log.warning("%s: the alpha channel is dropped (Upscale Image (using Model) returns RGB); use OFTSR "
                            "Upscale to keep it", NAME)
            image = image[:, :3]
        elif image.shape[1] in (1, 2):  # gray (+ alpha): three equal channels, as an IMAGE holds gray
            image = image[:, :1].expand(-1, 3, -1, -1)
        out_h, out_w = image.shape[-2] * self.scale, image.shape[-1] * self.scale
        # kept for the next calls, as after an out-of-memory: the consumer calls once per tile of its own
        self.tile, self.overlap = tile, overlap = tiling_that_fits(
            self.model, image.shape[0], out_h, out_w, self.tile, self.overlap, self.widget_overlap, node=NAME,
            per_image=True)
        while True:
            try:
                out = upscale(self.model, image.float(), t=self.t, seed=self.seed, tile=tile, overlap=overlap,
                              callback=check_interrupt)
                return out.to(image.dtype)
            except Exception as e:
                failed, smaller, smaller_overlap = tiling_after_oom(tile, self.widget_overlap, image.shape[0], out_h,
                                                                    out_w, per_image=True)
                if not is_oom(e) or smaller is None:
                    raise  # the consumer's own retry (Upscale Image's) halves its tile next
            # outside the except block the exception's frames and their tensors are released
            mm.soft_empty_cache()
            self.tile, self.overlap = tile, overlap = smaller, smaller_overlap  # kept for the next calls
            log.warning("%s: out of memory with %d-pixel tiles; retrying with %d", NAME, failed, tile)


class OFTSRAsUpscaleModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OFTSRAsUpscaleModel",
            display_name=NAME,
            category=CATEGORY,
            description="An OFTSR student at a fixed t as an UPSCALE_MODEL, for core Upscale Image (using Model) and "
                        "other nodes that take one (tiled upscalers such as Ultimate SD Upscale). Such nodes cut the "
                        "image into their own tiles and keep only RGB; OFTSR Upscale is the node with seamless "
                        "per-pixel noise, alpha and colour fix.",
            inputs=[model_input(), t_input(),
                    # no control after generate: a new seed each Queue would redo everything downstream
                    io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=False,
                                 tooltip=SEED_TOOLTIP),
                    *tiling_inputs(TILE_TOOLTIP)],
            outputs=[io.UpscaleModel.Output(display_name="upscale_model",
                                            tooltip="The student at this t and seed, for any UPSCALE_MODEL input.")],
        )

    @classmethod
    def validate_inputs(cls, tile: int | None = None) -> bool | str:
        return check_tile(tile)

    @classmethod
    def execute(cls, model: OFTSRModel, t: float = 0.5, seed: int = 0, tile: int = DEFAULT_TILE,
                overlap: int = DEFAULT_OVERLAP) -> io.NodeOutput:
        require_role(model, "student", NAME)
        warn_if_ignores_t(model, NAME)
        return io.NodeOutput(StudentUpscaleModel(model, check_t(t), seed, tile, overlap))
