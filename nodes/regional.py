"""OFTSR Regional Trade-off: realism inside a mask, fidelity outside, blended per pixel."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from comfy_api.latest import io

from ..oftsr import upscale
from ..oftsr.model import OFTSRModel
from ..oftsr.tiling import DEFAULT_OVERLAP
from .memory import run_on_device
from .progress import Progress
from .widgets import (CATEGORY, DEFAULT_TILE, check_options, check_tile, color_fix_input, color_fix_option,
                      color_fixed_image, image_input, model_input, require_t_slider, seed_input, t_input,
                      tiling_inputs, to_bchw)

log = logging.getLogger(__name__)
NAME = "OFTSR Regional Trade-off"


def prepare_mask(mask: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """A MASK ([B, H, W] or [H, W], any resolution) as (batch, 1, *size) in [0, 1]."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a MASK tensor, got {type(mask).__name__}")
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    elif m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[-1] == 0 or m.shape[-2] == 0:
        raise ValueError(f"mask must be [batch, height, width] or [height, width], got {tuple(mask.shape)}")
    if m.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {m.shape[0]} must be 1 or the image batch {batch}")
    if not torch.isfinite(m).all():
        raise ValueError("mask contains NaN or infinite values")
    m = m[:, None]
    (mh, mw), (h, w) = m.shape[-2:], size
    # Stretching distorts only a mask that varies both across and down (a painted shape):
    # bands, ramps and a constant mask (Load Image's 64x64 one without alpha) keep their meaning.
    shaped = bool((m != m[..., :1]).any()) and bool((m != m[..., :1, :]).any())
    if shaped and abs(mw / mh - w / h) > 0.01 * (w / h):
        log.warning("%s: the mask (%dx%d) has another aspect ratio than the output (%dx%d); it is stretched to fit",
                    NAME, mw, mh, w, h)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False, antialias=True)
    return m.clamp(0, 1).expand(batch, 1, *size)


class OFTSRRegionalTradeoff(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OFTSRRegionalTradeoff",
            display_name="OFTSR Regional Trade-off",
            category=CATEGORY,
            description="Realism where the mask is 1 (t_inside), fidelity where it is 0 (t_outside), blended per pixel "
                        "for soft masks. Runs the student at both t with the same seed.",
            inputs=[
                model_input(), image_input(),
                io.Mask.Input("mask", tooltip="Where to use t_inside (1) and t_outside (0); any size, resized to the "
                                              "output. E.g. Load Image's MASK painted in the mask editor, or core "
                                              "mask nodes (Solid Mask, Mask Composite, Feather Mask)."),
                t_input("t_inside", 1.0, "t where the mask is 1 (default 1: realism, sharp detail)."),
                t_input("t_outside", 0.0, "t where the mask is 0 (default 0: fidelity, smooth and faithful)."),
                seed_input(), *tiling_inputs(), color_fix_input(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The upscaled image(s): t_inside where the mask is 1, "
                                                                   "t_outside where it is 0, blended between.")],
        )

    @classmethod
    def validate_inputs(cls, tile: int | None = None) -> bool | str:
        return check_tile(tile)

    @classmethod
    def execute(cls, model: OFTSRModel, image: torch.Tensor, mask: torch.Tensor, t_inside: float = 1.0,
                t_outside: float = 0.0, seed: int = 0, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                color_fix: str = "none") -> io.NodeOutput:
        check_options(**color_fix_option(color_fix))
        require_t_slider(model, NAME)  # a fixed-point student would give the same image inside and outside
        x = to_bchw(image)
        m = prepare_mask(mask, x.shape[0], (x.shape[-2] * model.scale, x.shape[-1] * model.scale))

        def job(model: OFTSRModel, x: torch.Tensor, tile: int | None, overlap: int,
                progress: Progress) -> torch.Tensor:
            inside = upscale(model, x, t=t_inside, seed=seed, tile=tile, overlap=overlap, callback=progress.callback())
            outside = upscale(model, x, t=t_outside, seed=seed, tile=tile, overlap=overlap, callback=progress.callback())
            return torch.lerp(outside, inside, m.to(inside.device))

        out = run_on_device(model, x, job, tile=tile, overlap=overlap, node=NAME, passes=2, per_image=True)
        return io.NodeOutput(color_fixed_image(out, x, color_fix))
