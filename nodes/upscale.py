"""OFTSR Upscale: the one-step student at one point t of the fidelity-realism trade-off."""

from __future__ import annotations

import logging
import weakref

from comfy_api.latest import io

from ..oftsr import upscale
from .common import (CATEGORY, check_options, check_tile, color_fix_input, color_fix_option, finish, image_input,
                     model_input, require_role, run_on_device, seed_input, t_input, tiling_inputs, to_bchw)

NAME = "OFTSR Upscale"
log = logging.getLogger(__name__)
# the nodes that have warned about each loaded model
_warned_fixed_point: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def warn_if_ignores_t(model, node: str = NAME) -> None:
    """A FlowSR/FluxSR student has no trade-off slider: say so once per loaded model and node."""
    if getattr(model, "ignores_t", False) and node not in _warned_fixed_point.setdefault(model, set()):
        _warned_fixed_point[model].add(node)
        log.warning("%s: %s", node, model.ignores_t_note())


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
    def validate_inputs(cls, tile=None) -> bool | str:
        return check_tile(tile)

    @classmethod
    def execute(cls, model, image, t: float = 0.5, seed: int = 0, tile: int = 512, overlap: int = 64,
                color_fix: str = "none") -> io.NodeOutput:
        check_options(**color_fix_option(color_fix))
        require_role(model, "student", NAME)
        warn_if_ignores_t(model)
        x = to_bchw(image)

        def job(model, x, tile, overlap, progress):
            return upscale(model, x, t=t, seed=seed, tile=tile, overlap=overlap, callback=progress.callback())

        out = run_on_device(model, x, job, tile=tile, overlap=overlap, node=NAME, per_image=True)
        return io.NodeOutput(finish(out, x, color_fix))
