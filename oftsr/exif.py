"""EXIF blocks as results carry them on: the field types Pillow loses, and A1111's
generation settings in the UserComment.

Pillow re-serialises an EXIF block with a type per tag taken from its own table, which
lacks most of EXIF's UNDEFINED tags: MakerNote, UserComment, ComponentsConfiguration and
SceneType come out as BYTE. Readers that go by the type (piexif, so A1111's "PNG Info";
some maker-note parsers) then see a list of numbers instead of the bytes. BYTE and
UNDEFINED are both one byte a value, so the type field alone is mended, in place."""

from __future__ import annotations

import struct

from PIL import Image

EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
USER_COMMENT = 0x9286
_BYTE, _UNDEFINED = 1, 7
# The tags EXIF 2.32 defines as UNDEFINED, by the directory they live in.
_UNDEFINED_TAGS = {
    EXIF_IFD: {0x8828, 0x9000, 0x9101, 0x927C, 0x9286, 0xA000, 0xA20C, 0xA300, 0xA301, 0xA302, 0xA40B, 0xA462},
    GPS_IFD: {0x1B, 0x1C},
    INTEROP_IFD: {0x0002},
}
_POINTERS = {(None, EXIF_IFD), (None, GPS_IFD), (EXIF_IFD, INTEROP_IFD)}  # (where, tag) of sub-directories
_HEADER = b"Exif\0\0"
# A1111's way of keeping the settings (a PNG's `parameters` text) in JPEG and WebP: the
# UserComment, UTF-16BE after the "UNICODE" code, as it and piexif write and read it.
_UNICODE_CODE = b"UNICODE\0"


def with_undefined_types(data: bytes) -> bytes:
    """`data` (an EXIF block as Pillow writes it, with or without its "Exif" header) with
    the BYTE entries that EXIF defines as UNDEFINED typed so again. A block it cannot walk
    is returned as it is."""
    start = len(_HEADER) if data.startswith(_HEADER) else 0
    out = bytearray(data)
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(out[start:start + 2])]
        directories = [(None, struct.unpack_from(order + "I", out, start + 4)[0])]
        seen = set()
        while directories:
            group, offset = directories.pop()
            if offset in seen or not offset:
                continue
            seen.add(offset)
            base = start + offset
            count = struct.unpack_from(order + "H", out, base)[0]
            for i in range(count):
                entry = base + 2 + 12 * i
                tag, kind = struct.unpack_from(order + "HH", out, entry)
                if (group, tag) in _POINTERS:
                    directories.append((tag, struct.unpack_from(order + "I", out, entry + 8)[0]))
                elif kind == _BYTE and tag in _UNDEFINED_TAGS.get(group, ()):
                    struct.pack_into(order + "H", out, entry + 2, _UNDEFINED)
    except (KeyError, struct.error):
        return data
    return bytes(out)


def exif_bytes(exif: Image.Exif) -> bytes:
    """`exif` serialised, its UNDEFINED fields typed as EXIF defines them."""
    return with_undefined_types(exif.tobytes())


def user_comment(text: str) -> bytes:
    """A UserComment value holding `text`, as A1111 writes its settings."""
    return _UNICODE_CODE + text.encode("utf_16_be")


def with_user_comment(data: bytes | None, text: str) -> bytes | None:
    """`data` (or a new block) with `text` as its UserComment, unless it has a comment of
    its own, which is kept."""
    exif = Image.Exif()
    if data:
        exif.load(data)
    sub = exif.get_ifd(EXIF_IFD)
    if USER_COMMENT in sub:
        return data
    sub[USER_COMMENT] = user_comment(text)
    exif[EXIF_IFD] = sub  # written even where the block had no Exif sub-directory
    return exif_bytes(exif)
