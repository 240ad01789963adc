"""ComfyUI nodes: thin adapters between ComfyUI's types and the `oftsr` library.

One file per feature (loader, upscale, teacher, sweep, regional, upscale_model); the shared glue is
in `widgets` (inputs, their checks, the IMAGE layout), `progress` (bar, previews, Cancel) and
`memory` (the memory estimate and the out-of-memory retry); colour correction lives in
`oftsr.color`, and `extension` does the registration.
Importing this package needs no ComfyUI; its node modules do.
"""
