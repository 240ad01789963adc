"""Telling linear-light ICC profiles from gamma-encoded ones, and the sRGB curve."""

import struct

import numpy as np
import pytest
import torch
from PIL import ImageCms

from oftsr.color import srgb_decode, srgb_encode
from oftsr.icc import has_linear_tone_curve


def _profile(space: bytes, curves: dict[bytes, bytes]) -> bytes:
    """A minimal ICC profile: a 128-byte header naming the colour space, then a tag table
    holding only the given curve tags."""
    table, data = b"", b""
    start = 128 + 4 + 12 * len(curves)
    for sig, body in curves.items():
        body += b"\x00" * (-len(body) % 4)  # tags start on 4-byte boundaries
        table += struct.pack(">4sII", sig, start + len(data), len(body))
        data += body
    size = start + len(data)
    header = struct.pack(">I", size) + b"\x00" * 12 + space + b"XYZ " + b"\x00" * 12 + b"acsp"
    header += b"\x00" * (128 - len(header))
    return header + struct.pack(">I", len(curves)) + table + data


def _curv(values: list[int]) -> bytes:
    return b"curv\x00\x00\x00\x00" + struct.pack(f">I{len(values)}H", len(values), *values)


def _para(function: int, *params: float) -> bytes:
    return b"para\x00\x00\x00\x00" + struct.pack(f">HH{len(params)}i", function, 0, *(round(p * 65536) for p in params))


def _rgb(curve: bytes) -> bytes:
    return _profile(b"RGB ", {b"rTRC": curve, b"gTRC": curve, b"bTRC": curve})


IDENTITY_TABLE = [round(i * 65535 / 1023) for i in range(1024)]
LINEAR = {
    "identity curv": _curv([]),
    "gamma 1.0": _curv([0x0100]),
    "identity table": _curv(IDENTITY_TABLE),
    "para gamma 1": _para(0, 1.0),
    "para type 3, straight": _para(3, 1.0, 1.0, 0.0, 1.0, 0.0),
    "para type 4, straight": _para(4, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 0.0),
}
ENCODED = {
    "gamma 2.2": _curv([0x0233]),
    "gamma 1.8": _para(0, 1.8),
    "sRGB para": _para(3, 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045),
    "sRGB table": _curv([round(65535 * (x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4))
                         for x in np.linspace(0, 1, 1024)]),
    "para type 1 gamma 2.2": _para(1, 2.2, 1.0, 0.0),
    "para type 2 offset": _para(2, 1.0, 1.0, 0.0, 0.1),
}


@pytest.mark.parametrize("name", LINEAR)
def test_linear_curves_are_recognised_in_rgb_and_gray_profiles(name):
    assert has_linear_tone_curve(_rgb(LINEAR[name]))
    assert has_linear_tone_curve(_profile(b"GRAY", {b"kTRC": LINEAR[name]}))


@pytest.mark.parametrize("name", ENCODED)
def test_gamma_encoded_curves_are_not_linear(name):
    assert not has_linear_tone_curve(_rgb(ENCODED[name]))
    assert not has_linear_tone_curve(_profile(b"GRAY", {b"kTRC": ENCODED[name]}))


def test_what_is_not_a_linear_rgb_or_gray_profile_is_taken_as_display_values():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # lcms's own: para type 3
    assert not has_linear_tone_curve(srgb)
    linear = LINEAR["gamma 1.0"]
    assert not has_linear_tone_curve(_profile(b"RGB ", {b"rTRC": linear, b"gTRC": linear, b"bTRC": _curv([0x0233])}))
    assert not has_linear_tone_curve(_profile(b"RGB ", {b"rTRC": linear, b"gTRC": linear}))  # a curve missing
    assert not has_linear_tone_curve(_profile(b"CMYK", {b"kTRC": linear}))
    assert not has_linear_tone_curve(_profile(b"RGB ", {b"rTRC": b"mAB " + b"\x00" * 28,  # LUT-based
                                                        b"gTRC": linear, b"bTRC": linear}))
    whole = _rgb(linear)
    for broken in (None, b"", whole[:100], whole[:140], whole[:-4], b"\xff" * 600):
        assert not has_linear_tone_curve(broken)


def test_srgb_curve_is_the_standards_and_inverts_on_colour_only():
    linear = torch.tensor([0.0, 0.002, 0.0031308, 0.18, 0.5, 1.0])
    encoded = torch.tensor([0.0, 0.02584, 0.04045, 0.46135, 0.73536, 1.0])  # IEC 61966-2-1
    assert torch.allclose(srgb_encode(linear.view(1, 1, 1, 6)).flatten(), encoded, atol=2e-5)
    image = torch.rand(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    coded = srgb_encode(image)
    assert torch.equal(coded[:, 3], image[:, 3])  # alpha is coverage, not light
    assert (coded[:, :3] >= image[:, :3] - 1e-7).all()  # encoding lifts the shadows
    assert torch.allclose(srgb_decode(coded), image, atol=1e-6)
    gray_alpha = srgb_encode(image[:, :2])
    assert torch.equal(gray_alpha[:, 1], image[:, 1]) and torch.allclose(gray_alpha[:, 0], coded[:, 0])
