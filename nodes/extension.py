"""The ComfyExtension that registers the OFTSR nodes (imported by the pack's comfy_entrypoint)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .loader import LoadOFTSRModel
from .regional import OFTSRRegionalTradeoff
from .sweep import OFTSRTSweep
from .teacher import OFTSRTeacherSampler
from .upscale import OFTSRUpscale
from .upscale_model import OFTSRAsUpscaleModel

NODES: list[type[io.ComfyNode]] = [LoadOFTSRModel, OFTSRUpscale, OFTSRTeacherSampler, OFTSRTSweep, OFTSRRegionalTradeoff,
                                   OFTSRAsUpscaleModel]


class OFTSRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
