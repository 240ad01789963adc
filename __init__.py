"""ComfyUI entry point of the OFTSR node pack (V3 API).

Importing this file needs neither ComfyUI nor a GPU; ComfyUI calls `comfy_entrypoint`.
"""


async def comfy_entrypoint():
    from .nodes.extension import OFTSRExtension

    return OFTSRExtension()
