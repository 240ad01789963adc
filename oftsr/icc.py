"""What an image's ICC profile says about how its values encode light.

Only one question is asked: are the tone curves linear? Photoshop's 32-bit mode, GIMP's
linear precision and raw converters' linear exports hold linear light under a profile
whose TRC tags are gamma 1. The network learned gamma-encoded photographs, so such
pixels are sRGB-encoded for it and decoded after (`oftsr.color.srgb_encode`).
Parsed by hand (ICC.1 tag table, `curv` and `para` curves): Pillow's ImageCms gives no
access to the curves, and a profile is a few hundred bytes.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["has_linear_tone_curve"]

_TRC_TAGS = {b"RGB ": (b"rTRC", b"gTRC", b"bTRC"), b"GRAY": (b"kTRC",)}
# ICC.1 parametricCurveType: how many s15Fixed16 parameters each function type has
_PARA_COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}
_SAMPLES = np.linspace(0.0, 1.0, 65)
_LINEAR_TOLERANCE = 0.01  # of full scale; a gamma of 1.0 within 1/256 or a sampled table still passes


def _tag_table(icc: bytes) -> dict[bytes, bytes]:
    (count,) = struct.unpack_from(">I", icc, 128)
    tags = {}
    for i in range(min(count, 256)):
        sig, offset, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
        if offset + size <= len(icc):
            tags[sig] = icc[offset:offset + size]
    return tags


def _curve(data: bytes) -> np.ndarray | None:
    """A TRC tag's curve sampled on [0, 1], or None for a type this does not read."""
    kind = data[:4]
    if kind == b"curv":
        (n,) = struct.unpack_from(">I", data, 8)
        if n == 0:  # the identity
            return _SAMPLES.copy()
        if n == 1:  # a gamma, u8Fixed8
            return _SAMPLES ** (struct.unpack_from(">H", data, 12)[0] / 256.0)
        table = np.frombuffer(data, dtype=">u2", count=n, offset=12) / 65535.0
        return np.interp(_SAMPLES, np.linspace(0.0, 1.0, n), table)
    if kind == b"para":
        (function,) = struct.unpack_from(">H", data, 8)
        if function not in _PARA_COUNTS:
            return None
        p = [v / 65536.0 for v in struct.unpack_from(f">{_PARA_COUNTS[function]}i", data, 12)]
        x, g = _SAMPLES, p[0]
        if function == 0:
            return x ** g
        a, b = p[1], p[2]
        rise = np.power(np.clip(a * x + b, 0.0, None), g)
        if function == 1:  # (aX + b)^g from X = -b/a on, else 0
            return np.where(a * x + b >= 0, rise, 0.0)
        if function == 2:  # (aX + b)^g + c, else c
            return np.where(a * x + b >= 0, rise, 0.0) + p[3]
        if function == 3:  # (aX + b)^g from X = d on, else cX (sRGB's form)
            return np.where(x >= p[4], rise, p[3] * x)
        return np.where(x >= p[4], rise + p[5], p[3] * x + p[6])  # 4: both parts offset
    return None


def has_linear_tone_curve(icc: bytes | None) -> bool:
    """Whether an RGB or gray ICC profile's tone curves are all linear (within 1% of full
    scale). False for no profile, another colour space, a LUT-based profile or bytes that
    do not parse: the values are then taken as display values."""
    if not icc or len(icc) < 132:
        return False
    try:
        tags = _tag_table(icc)
        with np.errstate(all="ignore"):  # a forged gamma (negative, huge) gives inf or nan: not linear, no warning
            curves = [_curve(tags[name]) if name in tags else None for name in _TRC_TAGS.get(icc[16:20], ())]
    except (struct.error, ValueError):
        return False
    return bool(curves) and all(c is not None and np.abs(c - _SAMPLES).max() <= _LINEAR_TOLERANCE for c in curves)
