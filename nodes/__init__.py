"""ComfyUI nodes: thin adapters between ComfyUI's types and the `oftsr` package."""

from __future__ import annotations


def _extension_class():
    from comfy_api.latest import ComfyExtension

    class OFTSRExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return []  # nodes are added one file per feature

    return OFTSRExtension


def __getattr__(name: str):
    # Resolved lazily so that importing the pack never needs ComfyUI.
    if name == "OFTSRExtension":
        return _extension_class()
    raise AttributeError(name)
