"""What the OFTSR nodes' inputs share: the widgets (model, image, t, seed, tiling, colour
fix), their checks, the role checks, and ComfyUI's IMAGE layout."""

from __future__ import annotations

import logging
import weakref

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..oftsr.checks import SEED_MAX
from ..oftsr.color import COLOR_FIX_MODES, color_fix
from ..oftsr.model import OFTSRModel
from ..oftsr.tiling import DEFAULT_OVERLAP, MIN_OOM_TILE, MIN_TILE

log = logging.getLogger(__name__)

CATEGORY = "image/upscaling/OFTSR"
OFTSR_MODEL = io.Custom("OFTSR_MODEL")
DEFAULT_TILE = 512
MAX_TILE = 8192


def model_input() -> io.Input:
    return OFTSR_MODEL.Input("model", tooltip="An OFTSR model from Load OFTSR Model.")


def image_input() -> io.Input:
    return io.Image.Input("image", tooltip="The low-resolution image(s). RGBA keeps its alpha (upscaled bicubically); "
                                           "Load Image gives a transparent file's alpha as a separate MASK: join it "
                                           "with Join Image with Alpha to keep it.")


def t_input(name: str = "t", default: float = 0.5, tooltip: str | None = None) -> io.Input:
    return io.Float.Input(
        name, default=default, min=0.0, max=1.0, step=0.01, display_mode=io.NumberDisplay.slider,
        tooltip=tooltip or "Fidelity-realism trade-off: 0 = fidelity (smooth, faithful, highest PSNR), "
                           "1 = realism (sharp detail, lowest LPIPS).",
    )


KEEP_CACHED = ("Keep 'control after generate' at fixed to keep a result cached: with randomize, every Queue "
               "upscales again.")


def seed_input(tooltip: str = "Seed of the start-point noise. The noise depends on the seed, the image's place in "
                              "the batch and the pixel, not on the tiling (the result changes a little with the tile "
                              "size, as each tile sees only its own surroundings).") -> io.Input:
    # "fixed" by default, so that an upscale stays cached from one Queue to the next, where
    # ComfyUI lets a node choose (io.ControlAfterGenerate, 2026 on); True leaves the
    # frontend's default, randomize, to older versions.
    control = getattr(io, "ControlAfterGenerate", None)
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=control.fixed if control else True,
                        tooltip=f"{tooltip} {KEEP_CACHED}")


def tiling_inputs(tile_tooltip: str = f"Tile size in output pixels, {MIN_TILE} or more, or 0 for the whole image at "
                                      f"once. Bounds memory (the GPU's, or RAM on a CPU); halved automatically down "
                                      f"to {MIN_OOM_TILE} when memory runs out or less is free than the tile needs. "
                                      f"{DEFAULT_TILE} is about the fastest: small tiles (128 and less) compute their "
                                      f"overlaps again and take several times longer, and on a CPU the whole of a "
                                      f"large photograph is slower too (attention grows with the square of the "
                                      f"area).") -> list[io.Input]:
    # steps of MIN_TILE: every size the widget offers from 0 runs (8, 16 and 24 would be refused)
    return [
        io.Int.Input("tile", default=DEFAULT_TILE, min=0, max=MAX_TILE, step=MIN_TILE, tooltip=tile_tooltip),
        io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=1024, step=8,
                     tooltip="Overlap of neighbouring tiles in output pixels, blended with linear feathering (no seams). "
                             "At most half the tile. Near t = 1 a blended band is a little smoother than the rest (two "
                             "tiles' grain averaged): keep tiles large (512 or more) and the overlap small."),
    ]


def color_fix_input() -> io.Input:
    return io.Combo.Input(
        "color_fix", options=list(COLOR_FIX_MODES), default="none",
        tooltip="Keep the low-frequency colour of the bicubic-upscaled input: none, wavelet (replace the coarsest "
                "wavelet band) or adain (match per-channel mean and contrast). Either also holds the colour of "
                "very small images (icons, sprites: tens of pixels), where the network's can drift by several levels.",
    )


# --------------------------------------------------------------------------- checks and layout

def check_tile(tile: int | None) -> bool | str:
    """The sampling nodes' `validate_inputs`, before the prompt runs: the tile widget can
    hold sizes that never run (1 to 31). It takes `tile` alone because ComfyUI files a
    `validate_inputs` error under every input the method takes, and leaves those inputs
    out of its own range check (made here in full). A linked value arrives as None and is
    checked by the library when the node runs."""
    if isinstance(tile, int) and not (tile == 0 or MIN_TILE <= tile <= MAX_TILE):
        return f"tile must be 0 (the whole image at once) or {MIN_TILE} to {MAX_TILE} pixels, got {tile}"
    return True


def check_options(**options: tuple[object, list[str]]) -> None:
    """Combo values, {name: (value, allowed)}, checked first thing in `execute`: ComfyUI
    0.3.6x does not check the options of these nodes' combos (0.8 refuses the prompt
    itself), and the UI offers only the listed ones, so another value comes from an API
    prompt or another version's workflow."""
    for name, (value, allowed) in options.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def color_fix_option(value: object) -> dict[str, tuple[object, list[str]]]:
    return {"color_fix": (value, list(COLOR_FIX_MODES))}


def require_role(model: OFTSRModel, role: str, node: str) -> None:
    """A clear error when a node gets the wrong kind of model (the library's message
    names library functions; this one names nodes)."""
    actual = getattr(model, "role", None)
    if actual is None or not hasattr(model, "velocity"):
        raise ValueError(f"{node} needs an OFTSR_MODEL from the Load OFTSR Model node, got {type(model).__name__}")
    if actual == role:
        return
    if role == "student":
        raise ValueError(
            f"{node} needs a one-step student model, but this model is a teacher. Use the OFTSR Teacher Sampler node "
            f"for a teacher (or, for a file that does not record its role, such as an authors' .pth, set role = "
            f"student in Load OFTSR Model)."
        )
    raise ValueError(
        f"{node} needs a teacher model, but this model is a one-step student. Use OFTSR Upscale (or OFTSR t-Sweep, "
        f"OFTSR Regional Trade-off, OFTSR as Upscale Model) for a student (or, for a file that does not record its "
        f"role, such as an authors' .pth, set role = teacher in Load OFTSR Model)."
    )


def require_t_slider(model: OFTSRModel, node: str) -> None:
    """A clear error when a node that compares values of t gets a fixed-point student
    (FlowSR, FluxSR): every t gives it the same image."""
    require_role(model, "student", node)
    if getattr(model, "ignores_t", False):
        raise ValueError(f"{node} needs an OFTSR student with a t slider, but this student was distilled with "
                         f"{model.objective}: a fixed-point map that gives the same image at every t. Use OFTSR "
                         f"Upscale for it.")


def to_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> (B, C, H, W) float32."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        mask = " (a MASK, [batch, height, width]: turn it into an IMAGE with Convert Mask to Image)" \
            if isinstance(image, torch.Tensor) and image.ndim == 3 else ""
        raise ValueError(f"{name} must be an IMAGE [batch, height, width, channels], got {shape}{mask}")
    if 0 in image.shape[:3]:
        raise ValueError(f"{name} is empty: IMAGE [batch, height, width, channels] {list(image.shape)}")
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must have 3 (RGB), 4 (RGBA) or 1 (gray) channels, got {image.shape[-1]}")
    return image.movedim(-1, 1).float()


def to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> ComfyUI IMAGE [B, H, W, C] float32 on the intermediate device. A gray
    result (from a one-channel IMAGE) comes back as three equal channels, as ComfyUI's IMAGE
    is: Save Image and Preview Image cannot take one channel."""
    if x.shape[1] in (1, 2):  # gray (+ alpha)
        x = torch.cat([x[:, :1].expand(-1, 3, -1, -1), x[:, 1:]], dim=1)
    return x.movedim(1, -1).to(device=mm.intermediate_device(), dtype=torch.float32).contiguous()


def color_fixed_image(out: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Colour correction against the (B, C, H, W) input, then back to an IMAGE."""
    return to_image(color_fix(out, reference.to(out.device), mode))


_warned_fixed_point: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the nodes that warned, per model


def warn_if_ignores_t(model: OFTSRModel, node: str) -> None:
    """A FlowSR/FluxSR student has no trade-off slider: say so once per loaded model and node."""
    if getattr(model, "ignores_t", False) and node not in _warned_fixed_point.setdefault(model, set()):
        _warned_fixed_point[model].add(node)
        log.warning("%s: %s", node, model.ignores_t_note())
