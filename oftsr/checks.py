"""The checks of what the library, the command line and the nodes are given: the trade-off
t (one, or a list as text), whole numbers and seeds, images in [0, 1] and their layout,
and the dtypes a result can come in. Errors say what to change."""

from __future__ import annotations

import argparse
import math
import operator
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import numpy as np
import torch

# What `upscale` and `sample` can return. uint8/uint16 hold exactly what an 8/16-bit file
# stores (the same rounding as `images.save_image`), in a quarter/half of float32's
# memory: the form for big photographs (a 12 MP photo at x4 is 192 MP, 2.3 GB as float32).
OUTPUT_DTYPES = {torch.float32: 1.0, torch.uint8: 255.0, torch.uint16: 65535.0}


def ranged_argument(kind: type, ok: Callable[[Any], bool], wording: str) -> Callable[[str], Any]:
    """An argparse type: `kind(text)`, refused unless `ok(value)`, with "must be `wording`"
    (argparse names the option)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:  # argparse would say "invalid parse value"
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text}")
        return value
    return parse


def check_t(t: SupportsFloat) -> float:
    """`t` as a float in [0, 1]: a number, or a tensor of one. Text and booleans are refused,
    not converted ("0.5" is for `parse_t_values`; True is no trade-off point)."""
    if isinstance(t, (str, bytes, bool)):
        raise ValueError(f"t must be a number in [0, 1] (0 = fidelity, 1 = realism), got {t!r}")
    if isinstance(t, torch.Tensor) and t.numel() > 1:
        raise ValueError(f"t must be one number in [0, 1], got a tensor of {t.numel()}: call once per t")
    if not isinstance(t, torch.Tensor) and getattr(t, "ndim", 0) > 0:  # a numpy array: of one value, as a tensor
        flat = t.reshape(-1)
        if len(flat) != 1:
            raise ValueError(f"t must be one number in [0, 1], got an array of {len(flat)}: call once per t")
        t = flat[0]
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"t must be a number in [0, 1] (0 = fidelity, 1 = realism), got {t!r}") from None
    if not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1] (0 = fidelity, 1 = realism), got {t}")
    return t


T_VALUES_EXAMPLE = "0, 0.25, 0.5, 0.75, 1"
MAX_T_VALUES = 64
_T_SEPARATOR = re.compile(r"\s*,\s*|\s*\n\s*")  # a comma (line breaks around it allowed) or a line break
_T_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def parse_t_values(text: str, name: str = "t_values") -> list[float]:
    """Comma- (or newline-) separated numbers in [0, 1], e.g. "0, 0.25, 0.5, 0.75, 1"
    (the t-Sweep node's `t_values`, the command line's `--t`). Strict: every entry must be
    a plain decimal number, none empty (a comma at the end is allowed), none twice; errors
    name the entry and `name`."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be text such as {T_VALUES_EXAMPLE!r}, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name} is empty: give comma-separated numbers in [0, 1], e.g. {T_VALUES_EXAMPLE!r}")
    values: list[float] = []
    entries = _T_SEPARATOR.split(text.strip())
    if len(entries) > 1 and not entries[-1].strip():  # "0, 1," as typed: the last comma ends the list
        entries.pop()
    for pos, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"{name} entry {pos} is empty ({'a comma first' if pos == 1 else 'two commas in a row'}) "
                             f"in {text!r}")
        if not _T_NUMBER.fullmatch(entry):
            raise ValueError(f"{name} entry {pos} ({entry!r}) is not a number; write e.g. {T_VALUES_EXAMPLE!r}")
        value = float(entry)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} entry {pos} ({entry}) is outside [0, 1] (0 = fidelity, 1 = realism)")
        if value in values:
            raise ValueError(f"{name} entry {pos} ({entry}) repeats entry {values.index(value) + 1}")
        values.append(value)
    if len(values) > MAX_T_VALUES:
        raise ValueError(f"{name} has {len(values)} entries; at most {MAX_T_VALUES}")
    return values


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """An integer argument (steps, a seed, a tile size), at least `minimum` where given: a
    float, a boolean or None is refused, not truncated or taken for 0 / 1."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


Seed = int | Sequence[int] | torch.Tensor | np.ndarray  # a tensor or array of seeds: one per image


def check_seed(seed: Seed, batch: int) -> Seed:
    """One seed for the batch (image i's noise then depends on i as well), or one per image
    (each image then gets the result it has alone with its seed)."""
    if getattr(seed, "ndim", 0) == 1:  # a tensor or numpy array of seeds
        seed = seed.tolist()
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != batch:
            raise ValueError(f"seed: {len(seed)} seeds for a batch of {batch} images (give one, or one per image)")
        return [check_seed_value(s) for s in seed]
    return check_seed_value(seed)


SEED_MAX = 2 ** 64 - 1  # the noise is drawn from a 64-bit seed (ComfyUI's seed widget has this range too)


def check_seed_value(seed: object) -> int:
    """One seed, an integer from 0 to SEED_MAX: out of range it would wrap onto another
    (-1 onto 2**64 - 1), so it is refused and one seed stays one image."""
    seed = check_int(seed, "seed")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be from 0 to 2**64 - 1 ({SEED_MAX}), got {seed}")
    return seed


# Values further than this beyond [0, 1], in more than this share of an image, are clipped with
# a warning: resampling overshoot lies near 0 and 1 and at edges only.
CLIP_SLACK, CLIP_SHARE = 0.05, 0.01


def check_unit_range(image: torch.Tensor, what: str, stacklevel: int = 3) -> None:
    """A float image meant for [0, 1]: NaN, infinities, 0-255 and [-1, 1] values are refused,
    not clamped (a little beyond 0 or 1 is resampling overshoot, which the clamp takes; a
    larger share of values beyond it is clipped with a warning, at `stacklevel`: 3 is the
    line that called this function's caller)."""
    if not image.numel():
        return
    low, high = (float(v) for v in torch.aminmax(image))  # one pass; NaN propagates into both
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if high > 2:
        levels = "16-bit levels (0-65535) by 65535" if high > 255.5 else "0-255 values by 255"
        raise ValueError(f"{what} must be in [0, 1], but its maximum is {high:g}: divide {levels} first")
    if low < -0.5:  # a little under 0 is resampling undershoot; more is [-1, 1]
        raise ValueError(f"{what} must be in [0, 1], but its minimum is {low:g}: map [-1, 1] values to [0, 1] with "
                         f"(x + 1) / 2 first")
    if low < -CLIP_SLACK or high > 1 + CLIP_SLACK:  # overshoot is at edges; this much is the image itself
        outside = float(((image < -CLIP_SLACK) | (image > 1 + CLIP_SLACK)).float().mean())
        if outside > CLIP_SHARE:
            warnings.warn(f"{what}: {outside:.1%} of its values lie outside [0, 1] (from {low:.3g} to {high:.3g}) and "
                          f"are clipped: scale it into [0, 1] first to keep what lies beyond", stacklevel=stacklevel)


def image_hint(image: object, batch: bool = True) -> str:
    """What to change when `image` is not the tensor wanted, (B, C, H, W) with `batch`, else
    (C, H, W): the usual mix-ups, named with their fix ("" when none applies)."""
    add = "[None]" if batch else ""
    if isinstance(image, tuple):
        return ": load_image returns (image, bit_depth); unpack it, image, _ = load_image(path)"
    if isinstance(image, torch.Tensor):
        if batch and image.ndim == 3 and image.shape[0] in (1, 2, 3, 4):
            return ": add the batch axis, image[None]"
        if image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
            return f": channels come first, image.permute(2, 0, 1){add}"
        if batch and image.ndim == 4 and image.shape[-1] in (1, 2, 3, 4):  # ComfyUI's IMAGE layout
            return ": channels come second, image.permute(0, 3, 1, 2)"
        return ""
    if type(image).__module__.startswith("numpy"):
        ndim, shape = getattr(image, "ndim", 0), getattr(image, "shape", ())
        integer = getattr(getattr(image, "dtype", None), "kind", "") in "ui"
        levels = " / 255" if batch and integer else ""  # save_image takes uint8 levels as they are
        if ndim == 4 and shape[1] in (1, 2, 3, 4):  # already (B, C, H, W)
            return f" (a numpy (B, C, H, W) array: torch.from_numpy(a){levels})"
        if ndim == 4 and shape[-1] in (1, 2, 3, 4):
            return f" (a numpy (B, H, W, C) array: torch.from_numpy(a).permute(0, 3, 1, 2){levels})"
        if ndim == 3 and shape[-1] in (1, 2, 3, 4):
            return f" (a numpy (H, W, C) array: torch.from_numpy(a).permute(2, 0, 1){add}{levels})"
        if ndim == 3 and shape[0] in (1, 2, 3, 4):
            return f" (a numpy (C, H, W) array: torch.from_numpy(a){add}{levels})"
        if ndim == 2:
            return f" (a numpy (H, W) gray array: torch.from_numpy(a)[None]{add}{levels})"
        return " (a numpy array: torch.from_numpy(a), with channels second)"
    if batch and type(image).__module__.startswith("PIL"):
        return (" (a Pillow image: torch.from_numpy(numpy.asarray(im.convert('RGB'))).permute(2, 0, 1)[None] / 255, "
                "or read its file with oftsr.images.load_image, which takes a path, bytes or an open file, keeps "
                "16 bits, the ICC profile and the EXIF orientation, and returns (image, bit_depth))")
    return ""
