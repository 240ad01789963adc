"""OFTSR t-Sweep: one student, one seed, several points of the fidelity-realism trade-off."""

from __future__ import annotations

import torch

from comfy_api.latest import io

from ..oftsr import upscale
from ..oftsr.grid import MAX_GRID_SIDE, labelled_grid, t_labels
from ..oftsr.checks import MAX_T_VALUES, T_VALUES_EXAMPLE, parse_t_values
from ..oftsr.model import OFTSRModel
from ..oftsr.tiling import DEFAULT_OVERLAP
from .memory import run_on_device
from .progress import Progress
from .widgets import (CATEGORY, DEFAULT_TILE, check_options, color_fix_input, color_fix_option, color_fixed_image,
                      image_input, model_input, require_t_slider, seed_input, tiling_inputs, to_bchw)

NAME = "OFTSR t-Sweep"
DEFAULT_T_VALUES = T_VALUES_EXAMPLE


class OFTSRTSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OFTSRTSweep",
            display_name="OFTSR t-Sweep",
            category=CATEGORY,
            description="Upscales an image at several values of t with the same seed, to compare fidelity (0) and "
                        "realism (1) side by side. Returns one image per t (per input image, in t order) and the "
                        "same images as one labelled grid.",
            inputs=[
                model_input(), image_input(),
                io.String.Input("t_values", default=DEFAULT_T_VALUES,
                                tooltip=f"Comma-separated t values in [0, 1], at most {MAX_T_VALUES}; 0 = fidelity, 1 = realism."),
                seed_input(), *tiling_inputs(), color_fix_input(),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="One upscale per t for each input image, image-major: "
                                                               "image 0 at every t, then image 1, ..."),
                io.Image.Output(display_name="grid", tooltip="The same upscales as one labelled sheet: a column per t "
                                                             "(\"t = 0.25\" above it), a row per input image. Scaled "
                                                             f"down as a whole if longer than {MAX_GRID_SIDE} px."),
            ],
        )

    @classmethod
    def validate_inputs(cls, t_values: str | None = None) -> bool | str:
        """t_values only: ComfyUI files the error under every input this takes. The tile
        and colour fix are checked when the node runs, before any network evaluation."""
        if isinstance(t_values, str):  # a linked value is checked when the node runs
            try:
                parse_t_values(t_values)
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, model: OFTSRModel, image: torch.Tensor, t_values: str = DEFAULT_T_VALUES, seed: int = 0,
                tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, color_fix: str = "none") -> io.NodeOutput:
        check_options(**color_fix_option(color_fix))
        require_t_slider(model, NAME)
        ts = parse_t_values(t_values)
        x = to_bchw(image)

        def job(model: OFTSRModel, x: torch.Tensor, tile: int | None, overlap: int,
                progress: Progress) -> torch.Tensor:
            outs = [upscale(model, x, t=t, seed=seed, tile=tile, overlap=overlap, callback=progress.callback())
                    for t in ts]
            return torch.stack(outs, dim=1).flatten(0, 1)  # image-major: image 0 at every t, then image 1, ...

        out = run_on_device(model, x, job, tile=tile, overlap=overlap, node=NAME, passes=len(ts), per_image=True)
        images = color_fixed_image(out, x.repeat_interleave(len(ts), dim=0), color_fix)
        return io.NodeOutput(images, t_grid(images, ts))


def t_grid(images: torch.Tensor, ts: list[float]) -> torch.Tensor:
    """The image-major IMAGE batch of a sweep as one labelled sheet (1, H, W, C)."""
    per_t = images.movedim(-1, 1).unflatten(0, (-1, len(ts)))  # (inputs, t, C, H, W)
    return labelled_grid(per_t, t_labels(ts)).movedim(0, -1).unsqueeze(0)
