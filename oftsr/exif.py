"""EXIF blocks as results carry them on: the field types Pillow loses, and A1111's
generation settings in the UserComment.

Pillow re-serialises an EXIF block with a type per tag taken from its own table, which
lacks most of EXIF's UNDEFINED tags: MakerNote, UserComment, ComponentsConfiguration and
SceneType come out as BYTE. Readers that go by the type (piexif, so A1111's "PNG Info";
some maker-note parsers) then see a list of numbers instead of the bytes. BYTE and
UNDEFINED are both one byte a value, so the type field alone is mended, in place (in a
TIFF result, whose directories hold the EXIF, in the written file)."""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

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
    buffer = io.BytesIO(data)
    _mend_types(buffer, len(_HEADER) if data.startswith(_HEADER) else 0)
    return buffer.getvalue()


def mend_tiff_types(path: str | os.PathLike) -> None:
    """The same, in place, for a TIFF file that Pillow wrote with EXIF: its directories are
    the file's own, and only the type fields of a few entries are rewritten."""
    with open(path, "r+b") as f:
        _mend_types(f, 0)


def _mend_types(f: BinaryIO, start: int) -> None:
    """Walk the TIFF structure at `start` of `f` (first directory, Exif, GPS and Interop
    sub-directories) and type UNDEFINED the BYTE entries EXIF defines so. Stops, leaving
    the rest as it is, where the structure is not a classic TIFF one."""
    def read(at: int, size: int) -> bytes:
        f.seek(start + at)
        data = f.read(size)
        if len(data) < size:
            raise struct.error("past the end")
        return data

    try:
        order = {b"II": "<", b"MM": ">"}[read(0, 2)]
        if struct.unpack(order + "H", read(2, 2))[0] != 42:
            return
        directories, seen = [(None, struct.unpack(order + "I", read(4, 4))[0])], set()
        while directories:
            group, offset = directories.pop()
            if group in seen or not offset:  # one directory of each kind: loops and forged pointers end here
                continue
            seen.add(group)
            count = struct.unpack(order + "H", read(offset, 2))[0]
            table = read(offset + 2, 12 * count)
            for i in range(count):
                tag, kind, _, value = struct.unpack_from(order + "HHI4s", table, 12 * i)
                if (group, tag) in _POINTERS:
                    directories.append((tag, struct.unpack(order + "I", value)[0]))
                elif kind == _BYTE and tag in _UNDEFINED_TAGS.get(group, ()):
                    f.seek(start + offset + 2 + 12 * i + 2)
                    f.write(struct.pack(order + "H", _UNDEFINED))
    except (KeyError, struct.error):
        return


def exif_bytes(exif: Image.Exif) -> bytes:
    """`exif` serialised, its UNDEFINED fields typed as EXIF defines them."""
    return with_undefined_types(exif.tobytes())


def user_comment(text: str) -> bytes:
    """A UserComment value holding `text`, as A1111 writes its settings."""
    return _UNICODE_CODE + text.encode("utf_16_be")


def _says_something(comment: object) -> bool:
    """Whether a UserComment value holds text (cameras write blank ones: the 8-byte code,
    then NULs or spaces)."""
    if isinstance(comment, str):  # Pillow decodes some codes itself
        return bool(comment.strip("\0 "))
    return isinstance(comment, bytes) and bool(comment[8:].strip(b"\0 "))


def with_user_comment(data: bytes | None, text: str) -> bytes | None:
    """`data` (or a new block) with `text` as its UserComment. Returns `data` itself where
    the block has a comment of its own, which is kept, or where Pillow cannot parse or
    write it back."""
    exif = Image.Exif()
    try:
        if data:
            exif.load(data)
        sub = exif.get_ifd(EXIF_IFD)
    except Exception:  # Pillow's parser raises many kinds; the block is the source's, kept as it is
        return data
    if _says_something(sub.get(USER_COMMENT)):
        return data
    sub[USER_COMMENT] = user_comment(text)
    exif[EXIF_IFD] = sub  # written even where the block had no Exif sub-directory
    try:
        return exif_bytes(exif)
    except Exception:  # a tag Pillow read but cannot write back
        return data


# Tags of an EXIF's first IFD: XResolution, YResolution, ResolutionUnit (2: inch, 3: centimetre)
X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT = 0x011A, 0x011B, 0x0128


def with_resolution(data: bytes | None, dpi: tuple[float, float]) -> bytes | None:
    """`data` (or a new block) with `dpi` as its resolution, for a format with no field of
    its own for it (WebP); `data` itself where Pillow cannot parse or write it back."""
    exif = Image.Exif()
    try:
        if data:
            exif.load(data)
        exif[X_RESOLUTION], exif[Y_RESOLUTION], exif[RESOLUTION_UNIT] = float(dpi[0]), float(dpi[1]), 2
        return exif_bytes(exif)
    except Exception:  # Pillow's parser and writer raise many kinds; the block is the source's
        return data


def exif_dpi(exif: Image.Exif) -> tuple[float, float] | None:
    """The resolution an EXIF block states, in dots per inch, or None."""
    try:
        per_inch = {2: 1.0, 3: 2.54}.get(int(exif.get(RESOLUTION_UNIT, 2)))
        x, y = exif.get(X_RESOLUTION), exif.get(Y_RESOLUTION)
        return None if per_inch is None or x is None or y is None else (float(x) * per_inch, float(y) * per_inch)
    except (TypeError, ValueError, ZeroDivisionError):
        return None

