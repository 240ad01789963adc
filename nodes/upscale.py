"""OFTSR Upscale: the one-step student at one point t of the fidelity-realism trade-off."""

from __future__ import annotations

import torch

from comfy_api.latest import io

from ..oftsr import upscale
from ..oftsr.model import OFTSRModel
from ..oftsr.tiling import DEFAULT_OVERLAP
from .memory import run_on_device
from .progress import Progress
from .widgets import (CATEGORY, DEFAULT_TILE, check_options, check_tile, color_fix_input, color_fix_option,
                      color_fixed_image, image_input, model_input, require_role, seed_input, t_input, tiling_inputs,
                      to_bchw, warn_if_ignores_t)

NAME = "OFTSR Upscale"


class OFTSRUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OFTSRUpscale",
            display_name="OFTSR Upscale (one step)",
            category=CATEGORY,
            description="One-step super-resolution with an OFTSR student. t slides from fidelity (0: smooth, faithful) "
                        "to realism (1: sharp detail) at the cost of a single network evaluation.",
            inputs=[model_input(), image_input(), t_input(), seed_input(), *tiling_inputs(), color_fix_input()],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The upscaled image(s), scale x the input size, RGBA kept.")],
        )

    @classmethod
    def validate_inputs(cls, tile: int | None = None) -> bool | str:
        return check_tile(tile)

    @classmethod
    def execute(cls, model: OFTSRModel, image: torch.Tensor, t: float = 0.5, seed: int = 0, tile: int = DEFAULT_TILE,
                overlap: int = DEFAULT_OVERLAP, color_fix: str = "none") -> io.NodeOutput:
        check_options(**color_fix_option(color_fix))
        require_role(model, "student", NAME)
        warn_if_ignores_t(model, NAME)
        x = to_bchw(image)

        def job(model: OFTSRModel, x: torch.Tensor, tile: int | None, overlap: int,
                progress: Progress) -> torch.Tensor:
            return upscale(model, x, t=t, seed=seed, tile=tile, overlap=overlap, callback=progress.callback())

        out = run_on_device(model, x, job, tile=tile, overlap=overlap, node=NAME, per_image=True)
        return io.NodeOutput(color_fixed_image(out, x, color_fix))
