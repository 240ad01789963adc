"""What of a source image's metadata a result keeps (`read_image_metadata`): its ICC
profile, EXIF without what describes the old pixels, XMP, DPI and text; and how many
frames a file holds (`frame_count`)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..exif import EXIF_IFD, GPS_IFD, exif_bytes, exif_dpi
from .formats import EXIF_ORIENTATION, PNG_XMP_KEY, RAW_PROFILE_EXIF, raw_profile_bytes

_EXIF_PIXEL_SIZE = (0xA002, 0xA003)  # PixelXDimension, PixelYDimension: the source's size
# Tags of an EXIF's first IFD that describe pixels as a TIFF stores them (ImageWidth,
# ImageLength, BitsPerSample, Compression, PhotometricInterpretation, StripOffsets,
# SamplesPerPixel, RowsPerStrip, StripByteCounts, PlanarConfiguration): some writers put the
# source's there; they misstate a result's size, and clash with a TIFF result's own.
_EXIF_LAYOUT_TAGS = (0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0111, 0x0115, 0x0116, 0x0117, 0x011C)
# What of a TIFF's first IFD describes the photograph rather than the file's layout:
# ImageDescription, Make, Model, Software, DateTime, Artist, Copyright.
_TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)


# XMP properties that describe the old pixels: the orientation (already applied) and the size.
_XMP_STALE = ("tiff:ImageWidth", "tiff:ImageLength", "exif:PixelXDimension", "exif:PixelYDimension")


def upright_xmp(xmp: bytes | str) -> bytes:
    """An XMP packet (ratings, keywords, copyright: what Lightroom and Bridge write) for the
    upscaled, upright image: its orientation set to 1 and the old pixel size left out, in
    attribute or element form."""
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    text = re.sub(r"""(tiff:Orientation\s*=\s*(["']))\d+\2""", r"\g<1>1\2", text)
    text = re.sub(r"(<tiff:Orientation>)\s*\d+\s*(</tiff:Orientation>)", r"\g<1>1\2", text)
    for name in _XMP_STALE:
        text = re.sub(rf"""\s{name}\s*=\s*(["'])[^"']*\1""", "", text)  # either quote
        text = re.sub(rf"<{name}>[^<]*</{name}>", "", text)
    return text.encode("utf-8")


def _describes_layout(tag: int, value: object) -> bool:
    """A description or software tag that scientific writers fill with the file's own
    layout: tifffile's JSON shape and ImageJ's header, which would misdescribe a copy of
    another size."""
    text = str(value).lstrip()
    return (tag == 0x010E and (text.startswith('{"shape"') or text.startswith("ImageJ="))) or \
        (tag == 0x0131 and text.startswith("tifffile"))


def _tiff_exif(im: Image.Image) -> Image.Exif | None:
    """A TIFF's EXIF: its camera and GPS blocks and the descriptive tags of its first IFD,
    without the tags that describe the file's own layout (strips, sizes, compression)."""
    src = im.getexif()
    exif = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE_TAGS:
        if tag in src and not _describes_layout(tag, src[tag]):
            exif[tag] = src[tag]
    for ifd in (EXIF_IFD, GPS_IFD):
        if sub := src.get_ifd(ifd):
            exif.get_ifd(ifd).update(sub)
    return exif if len(exif) or any(exif.get_ifd(ifd) for ifd in (EXIF_IFD, GPS_IFD)) else None


def read_image_metadata(path: str | os.PathLike) -> dict[str, object]:
    """What of an image file's metadata an upscaled copy should keep: its ICC colour
    profile (without it a wide-gamut photo displays desaturated), its EXIF block with the
    orientation reset (`load_image` has already turned the pixels upright) and the old
    pixel size and storage layout left out, its XMP likewise, and its DPI. Only the keys the file has; reads
    the header, not the pixels (but for a PNG's text chunks). From a TIFF, whose first IFD mostly describes its own layout,
    the EXIF keeps the camera and GPS blocks and the descriptive tags (make, model, date,
    artist, copyright); from a TIFF only tifffile reads (float colour), the profile, XMP and
    DPI; from a PNG its text chunks (`png_text`: an AI image's generation settings), which a
    PNG result keeps. Metadata that cannot be parsed is left out: it must never cost the image."""
    found: dict[str, object] = {}
    if isinstance(path, (str, os.PathLike)):
        path = Path(path).expanduser()
        if path.exists() and not path.is_file():  # a pipe or a device: reading it may never end
            return found
    try:
        with Image.open(path) as im:
            icc = im.info.get("icc_profile")
            if icc and len(icc) >= 20:
                found["icc_profile"] = icc
            # Pillow reports 1 dpi for a TIFF without resolution tags: not a resolution to keep
            if "dpi" in im.info and not (im.format == "TIFF" and 282 not in im.tag_v2):
                found["dpi"] = tuple(float(d) for d in im.info["dpi"])
            xmp = im.info.get("xmp")
            if xmp:
                found["xmp"] = upright_xmp(xmp)
            raw_profile = None
            if im.format == "PNG" and (text := _png_text(im)):
                # EXIF as a text chunk (ImageMagick, exiv2): kept as EXIF, orientation reset, not
                # copied as it is (its stale orientation would turn the upright result again)
                raw_profile = text.pop(RAW_PROFILE_EXIF, None)
                if text:
                    found["png_text"] = text
            with warnings.catch_warnings():  # a corrupt EXIF block is left out, not reported
                warnings.simplefilter("ignore")
                exif = read_exif(im, None if raw_profile is None else raw_profile_bytes(raw_profile))
            if im.format == "WEBP" and exif is not None and (dpi := exif_dpi(exif)):  # no field of its own
                found["dpi"] = dpi
        if exif is not None:
            exif[EXIF_ORIENTATION] = 1
            for tag in _EXIF_LAYOUT_TAGS:
                exif.pop(tag, None)
            sub = exif.get_ifd(EXIF_IFD)
            for tag in _EXIF_PIXEL_SIZE:
                sub.pop(tag, None)
            found["exif"] = exif_bytes(exif)
    except UnidentifiedImageError:  # a TIFF Pillow does not open (float colour, 16-bit gray + alpha)
        return tifffile_metadata(path)
    except Exception:  # any decoder or parser error: keep what was read so far
        pass
    return valid_dpi(found)


def _png_text(im: Image.Image) -> dict[str, str]:
    """A PNG's text chunks but the XMP: how an AI image was made (A1111's `parameters`,
    ComfyUI's `prompt` and `workflow`), a title, an author. Pillow decodes the pixels to
    find the chunks after them; a file that fails to decode gives none here."""
    try:
        return {k: str(v) for k, v in im.text.items() if k != PNG_XMP_KEY}
    except Exception:
        return {}


def tifffile_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The ICC profile, XMP and DPI of a TIFF that only tifffile reads (its EXIF is left out:
    a 16-bit TIFF result holds none). Empty for a file that is not such a TIFF; never raises."""
    try:
        return _tifffile_tags_metadata(path)
    except Exception:  # tags of unexpected types: metadata must never cost the image
        return {}


def _tifffile_tags_metadata(path: str | os.PathLike) -> dict[str, object]:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tags = {tag.code: tag.value for tag in tif.pages[0].tags}
    except Exception:
        return {}
    found: dict[str, object] = {}
    if isinstance(tags.get(34675), bytes) and len(tags[34675]) >= 20:  # InterColorProfile
        found["icc_profile"] = tags[34675]
    if isinstance(tags.get(700), (bytes, bytearray)) and tags[700]:  # XMP, where it is bytes (not a number's count)
        found["xmp"] = upright_xmp(bytes(tags[700]))
    unit = tags.get(296, 2)
    per_inch = {2: 1.0, 3: 2.54}.get(unit if isinstance(unit, int) else 2)  # ResolutionUnit: inch or centimetre
    try:
        if per_inch and 282 in tags and 283 in tags:
            found["dpi"] = tuple(float(n) / float(d) * per_inch for n, d in (tags[282], tags[283]))
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return valid_dpi(found)


MAX_DPI = 1e6  # beyond any scanner's; a resolution outside (0, MAX_DPI] is a damaged tag


def valid_dpi(metadata: dict[str, object]) -> dict[str, object]:
    """`metadata` without a DPI that is not two finite numbers in (0, MAX_DPI] (a TIFF's
    72/0 reads as NaN; writers overflow on others)."""
    dpi = metadata.get("dpi")
    if dpi is not None and not (isinstance(dpi, tuple) and len(dpi) == 2
                                and all(isinstance(d, (int, float)) and 0 < d <= MAX_DPI for d in dpi)):
        metadata = {k: v for k, v in metadata.items() if k != "dpi"}
    return metadata


def read_exif(im: Image.Image, png_raw_profile: bytes | None = None) -> Image.Exif | None:
    """The EXIF of an open image, or None: the block a JPEG, PNG (its eXIf chunk, else
    `png_raw_profile`), WebP, AVIF or HEIF holds, a TIFF's camera tags (`_tiff_exif`); one
    that cannot be parsed is None."""
    try:
        if im.format == "TIFF":
            return _tiff_exif(im)
        raw = im.info.get("exif") or png_raw_profile
        if not raw:
            return None
        exif = Image.Exif()
        exif.load(raw)
        return exif
    except Exception:
        return None


MAX_FRAMES_COUNTED = 100  # counting every page of a TIFF walks them all: 100,000 pages took 42 s


def frame_count(path: str | os.PathLike) -> int:
    """How many frames the file holds (an animated GIF or WebP, a multi-page TIFF: more than
    one; `load_image` reads the first), counted up to MAX_FRAMES_COUNTED + 1 (that is, "more
    than MAX_FRAMES_COUNTED"). 1 when it cannot tell."""
    path = Path(path)
    if not path.is_file():  # a pipe or a device: opening it may never end
        return 1
    try:
        with Image.open(path) as im:  # a phone's MPO JPEG holds a preview as its second frame: one picture
            if im.format == "MPO" or not getattr(im, "is_animated", False):
                return 1
            count = 1
            while count <= MAX_FRAMES_COUNTED:
                try:
                    im.seek(count)
                except EOFError:
                    break
                count += 1
            return count
    except Exception:
        return 1
