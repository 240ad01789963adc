"""ComfyUI nodes: thin adapters between ComfyUI's types and the `oftsr` library.

One file per feature (loader, upscale, teacher, sweep, regional, upscale_model); `common` holds the
shared glue (colour correction lives in `oftsr.color`), `extension` the registration.
Importing this package needs no ComfyUI; its node modules do.
"""
