"""OFTSR Teacher Sampler: the multi-step conditional flow (the student's teacher)."""

from __future__ import annotations

import logging

import torch

from comfy_api.latest import io

from ..oftsr import sample
from ..oftsr.inference import SAMPLE_BUFFERS, tile_evaluation_progress
from ..oftsr.sampling import SOLVERS, evaluations
from ..oftsr.model import OFTSRModel
from ..oftsr.tiling import DEFAULT_OVERLAP
from .memory import run_on_device
from .progress import Progress
from .widgets import (CATEGORY, DEFAULT_TILE, check_options, check_tile, color_fix_input, color_fix_option,
                      color_fixed_image, image_input, model_input, require_role, seed_input, tiling_inputs, to_bchw)

log = logging.getLogger(__name__)
NAME = "OFTSR Teacher Sampler"


class OFTSRTeacherSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OFTSRTeacherSampler",
            display_name="OFTSR Teacher Sampler",
            category=CATEGORY,
            description="Multi-step super-resolution with an OFTSR teacher: integrates the flow from the noised "
                        "bicubic upsample to the sharp image. Fewer steps give smoother, more faithful results; "
                        "more steps more detail.",
            inputs=[
                model_input(), image_input(),
                io.Int.Input("steps", default=16, min=1, max=1000,
                             tooltip="ODE steps. euler: one network evaluation each; midpoint and heun: 2 x steps - 1; "
                                     "adaptive ignores it."),
                io.Combo.Input("solver", options=list(SOLVERS), default="midpoint",
                               tooltip="euler, midpoint or heun (RK2, last step Euler), or adaptive (dopri5, "
                                       "rtol = atol = 1e-3; typically 30-70 evaluations with the bundled teacher)."),
                seed_input(), *tiling_inputs(), color_fix_input(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The teacher's upscaled image(s), scale x the input size.")],
        )

    @classmethod
    def validate_inputs(cls, tile: int | None = None) -> bool | str:
        return check_tile(tile)

    @classmethod
    def execute(cls, model: OFTSRModel, image: torch.Tensor, steps: int = 16, solver: str = "midpoint", seed: int = 0,
                tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, color_fix: str = "none") -> io.NodeOutput:
        check_options(solver=(solver, list(SOLVERS)), **color_fix_option(color_fix))
        require_role(model, "teacher", NAME)
        x = to_bchw(image)
        info: dict = {}

        def job(model: OFTSRModel, x: torch.Tensor, tile: int | None, overlap: int,
                progress: Progress) -> torch.Tensor:
            ticks = tile_evaluation_progress(progress.callback(), solver, steps)  # a step of a big image is many tiles
            return sample(model, x, steps=steps, solver=solver, seed=seed, tile=tile, overlap=overlap,
                          tile_callback=ticks, info=info, **progress.previews())

        out = run_on_device(model, x, job, tile=tile, overlap=overlap, node=NAME,
                            evaluations=evaluations(solver, steps), states=SAMPLE_BUFFERS[solver])
        nfe = info.get("nfe")
        log.info("%s: %s network evaluation%s", NAME, nfe, "" if nfe == 1 else "s")
        return io.NodeOutput(color_fixed_image(out, x, color_fix))
