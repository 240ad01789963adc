"""Reading and writing image files as float tensors in [0, 1].

Pillow decodes everything except 16-bit-per-channel colour PNGs and TIFFs, which it
truncates to 8 bits: those PNGs (and 16-bit grayscale ones) are decoded by libpng through
imagecodecs (and written by pypng), those TIFFs read with tifffile, so no precision is lost,
and their EXIF orientation is applied as Pillow's is for the rest.
Files are written atomically (a temporary name in the same folder, then a rename).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .color import srgb_decode, srgb_encode
from .exif import EXIF_IFD, GPS_IFD, exif_bytes, mend_tiff_types, with_user_comment
from .files import atomic_write
from .icc import has_linear_tone_curve
from .checks import OUTPUT_DTYPES, check_unit_range, image_hint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# What a folder is searched for: the formats written, and read-only ones (a GIF's first frame;
# AVIF where Pillow has it; HEIC, a phone's format, with pillow-heif, else a clear error).
HEIF_SUFFIXES = (".heic", ".heif")
# zlib level of written PNGs (8 and 16 bits): ComfyUI's SaveImage level, 2.5 times faster than
# zlib's default 6 on an upscaled result, for files 3-7% larger (bench/bench.py --only files).
PNG_COMPRESS_LEVEL = 4
JPEG_FULL_CHROMA_QUALITY = 90  # from this --quality on, JPEG keeps colour at full resolution (4:4:4)
READ_SUFFIXES = IMAGE_SUFFIXES + (".gif", ".jfif", ".jpe", ".avif") + HEIF_SUFFIXES
# Camera raw files: sensor data to develop (demosaic, white balance, tone), which this does
# not do. Many are TIFF inside and would open as their small embedded preview.
CAMERA_RAW_SUFFIXES = (".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
                       ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mrw", ".mos",
                       ".raw")
CAMERA_RAW_ADVICE = "develop it in a raw converter and export a 16-bit TIFF (or a JPEG) to upscale"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword Adobe's tools read XMP from

__all__ = ["load_image", "save_image", "list_images", "read_image_metadata", "frame_count", "check_output_size",
           "IMAGE_SUFFIXES", "READ_SUFFIXES"]
_EXIF_ORIENTATION = 0x0112
_EXIF_PIXEL_SIZE = (0xA002, 0xA003)  # PixelXDimension, PixelYDimension: the source's size
# Tags of an EXIF's first IFD that describe pixels as a TIFF stores them (ImageWidth,
# ImageLength, BitsPerSample, Compression, PhotometricInterpretation, StripOffsets,
# SamplesPerPixel, RowsPerStrip, StripByteCounts, PlanarConfiguration): some writers put the
# source's there; they misstate a result's size, and clash with a TIFF result's own.
_EXIF_LAYOUT_TAGS = (0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0111, 0x0115, 0x0116, 0x0117, 0x011C)
_SETTINGS_TEXT = "parameters"  # A1111's generation settings: kept in JPEG and WebP as the EXIF UserComment
_FORMAT_NAMES = {"WEBP": "WebP"}  # as messages name them
# What of a TIFF's first IFD describes the photograph rather than the file's layout:
# ImageDescription, Make, Model, Software, DateTime, Artist, Copyright.
_TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24]
    return None


def _check_pixel_count(width: int, height: int) -> None:
    """Pillow's guard against decompression bombs, for the files read without Pillow (a
    16-bit PNG: a few hundred KB can declare gigapixels): an error beyond twice
    `Image.MAX_IMAGE_PIXELS`, Pillow's warning beyond it."""
    limit, pixels = Image.MAX_IMAGE_PIXELS, width * height
    if limit and pixels > 2 * limit:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit of {2 * limit} pixels")
    if limit and pixels > limit:
        warnings.warn(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels", Image.DecompressionBombWarning)


def _bomb_message(path: Path, error: Exception) -> str:
    pixels = re.search(r"\((\d+) pixels\)", str(error))
    size = f" ({int(pixels.group(1)) / 1e6:,.1f} MP)" if pixels else ""
    return (f"{path.name}: the image{size} is beyond the {2 * Image.MAX_IMAGE_PIXELS / 1e6:,.1f} MP that Pillow opens "
            f"(its guard against decompression bombs); upscale a crop or a smaller copy: at x4 its result alone "
            f"would be 16 times that")


def _read_png16(path: Path, significant_bits: int) -> np.ndarray:
    """A 16-bit PNG's pixels as (H, W, C) in [0, 1], through libpng (imagecodecs): pypng
    unfilters in pure Python, some 2.5 s per megapixel of a photograph's Paeth-filtered rows."""
    import imagecodecs

    with open(path, "rb") as f:  # closed however reading ends
        data = f.read()
    _check_pixel_count(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))  # before decoding
    try:
        arr = imagecodecs.png_decode(data)  # tRNS as an alpha channel, interlacing undone, native byte order
    except imagecodecs.PngError as e:
        raise ValueError(f"{type(e).__name__}: {e}") from e
    arr = arr.reshape(*arr.shape[:2], -1)
    if significant_bits < 16:  # a 12-bit source in a 16-bit file: its levels, as libpng's png_set_shift gives them
        return (arr >> (16 - significant_bits)).astype(np.float32) / float(2 ** significant_bits - 1)
    return arr.astype(np.float32) / 65535.0


_RAW_PROFILE_EXIF = "Raw profile type exif"  # ImageMagick's and exiv2's EXIF in a PNG: a text chunk of hex


def _raw_profile_bytes(text: str | bytes) -> bytes | None:
    """The bytes of an ImageMagick raw profile ("\\nexif\\n    1234\\n4578 6966..."), as
    Pillow reads it; None where it is not one."""
    text = text.decode("latin-1") if isinstance(text, bytes) else text
    try:
        return bytes.fromhex("".join(text.split("\n")[3:]))
    except ValueError:
        return None


def _png_orientation(exif: bytes | None, raw_profile: bytes | None, xmp: bytes | None) -> int:
    """A PNG's orientation as Pillow reads it (so every bit depth turns the same way): its
    eXIf chunk, else its raw EXIF profile, else its XMP's tiff:Orientation."""
    orientation = None
    data = exif if exif is not None else (_raw_profile_bytes(raw_profile) if raw_profile is not None else None)
    if data:
        try:
            tags = Image.Exif()
            tags.load(data)
            orientation = tags.get(_EXIF_ORIENTATION)
        except Exception:  # unreadable metadata never costs the image: taken as upright
            return 1
    if orientation is None and xmp and (match := re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)):
        orientation = int(match[2])
    return _valid_orientation(orientation)


def _png16_chunks(path: Path) -> tuple[int, bytes | None, int]:
    """A 16-bit PNG's orientation (`_png_orientation`), its ICC profile (iCCP) and its
    significant bits (sBIT, the most of any channel; 16 without one or where it is not
    1-16, which libpng ignores too), read from its chunks without decoding the pixels;
    every checksum checked, as Pillow checks an 8-bit PNG's."""
    import zlib

    import png

    inflated = 0

    def inflate(data: bytes) -> bytes | None:  # no further than Pillow inflates (a small chunk can hold gigabytes),
        nonlocal inflated  # per chunk and over the file (thousands of chunks)
        if inflated >= PngImagePlugin.MAX_TEXT_MEMORY:
            return None
        try:
            d = zlib.decompressobj()
            out = d.decompress(data, PngImagePlugin.MAX_TEXT_CHUNK)
        except zlib.error:  # damaged: left out, as Pillow leaves it out
            return None
        inflated += len(out)
        return None if d.unconsumed_tail else out

    def text_of(kind: bytes, rest: bytes) -> bytes | None:  # a text chunk's text, after its keyword and 0
        if kind == b"tEXt":
            return rest
        if kind == b"zTXt":  # the compression method, then the text
            return inflate(rest[1:])
        text = rest[2:].split(b"\x00", 2)[-1]  # iTXt: its flag, method, language 0, translated keyword 0
        return inflate(text) if rest[:1] == b"\x01" else text

    exif = raw_profile = xmp = icc = None
    significant_bits = 16
    with open(path, "rb") as f:  # closed however reading ends
        for kind, data in png.Reader(file=f).chunks():
            if kind == b"sBIT" and data and all(1 <= b <= 16 for b in data):
                significant_bits = max(data)
            elif kind == b"eXIf":
                exif = data
            elif kind == b"iCCP":  # a name, its 0, the compression method (0: zlib), the profile
                icc = inflate(data.partition(b"\x00")[2][1:])
            elif kind in (b"tEXt", b"zTXt", b"iTXt"):  # split here only: the pixels' chunks are not copied
                key, _, rest = data.partition(b"\x00")
                if key == _PNG_XMP_KEY.encode():
                    xmp = text_of(kind, rest)
                elif key == _RAW_PROFILE_EXIF.encode():
                    raw_profile = text_of(kind, rest)
            elif kind == b"IEND":
                break
    return _png_orientation(exif, raw_profile, xmp), icc, significant_bits


def _read_png16_upright(path: Path) -> tuple[np.ndarray, bytes | None]:
    """A 16-bit PNG's pixels, turned upright, and its ICC profile; a bad chunk checksum or a
    truncated stream as the ValueError any unreadable image gives."""
    import zlib

    import png

    try:
        orientation, icc, significant_bits = _png16_chunks(path)
    except (png.Error, zlib.error, EOFError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from e
    return _orient(_read_png16(path, significant_bits), orientation), icc


def _png_pixels_only(path: Path) -> io.BytesIO | None:
    """The PNG at `path` with only the chunks its pixels need (header, palette,
    transparency, orientation, data, end), or None where it is not a PNG whose chunks can
    be walked."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out, at = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind = data[at + 4:at + 8]
        if kind in (b"IHDR", b"PLTE", b"tRNS", b"eXIf", b"IDAT", b"IEND"):  # eXIf: its orientation
            out.append(data[at:at + 12 + length])
        if kind == b"IEND":
            return io.BytesIO(b"".join(out))
        at += 12 + length
    return None


def _valid_orientation(value: object) -> int:
    """An EXIF orientation as the eight it can be; anything else (text, a float, 0) is 1."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8 else 1


def _read_tiff(path: Path) -> tuple[np.ndarray, int, int]:
    """(H, W, C) in [0, 1], the bit depth and the orientation tag, through tifffile: the TIFFs
    Pillow reads at 8 bits only (16-bit colour) or not at all (16-bit gray + alpha)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        try:
            _check_pixel_count(int(page.imagewidth), int(page.imagelength))  # before any pixel is decoded
        except Image.DecompressionBombError as e:
            raise UnsupportedImage(_bomb_message(path, e)) from e
        try:
            arr = page.asarray()
        except (TypeError, KeyError, IndexError, RuntimeError) as e:  # tags it cannot make sense of; a codec's
            raise ValueError(f"{path.name}: a damaged TIFF ({type(e).__name__}: {e})") from e  # error (imagecodecs')
        associated = any(int(e) == 1 for e in (page.extrasamples or ()))  # ASSOCALPHA: premultiplied colour
        min_is_white = int(page.photometric) == 0
        tag = page.tags.get(_EXIF_ORIENTATION)
        orientation = _valid_orientation(tag.value if tag is not None else 1)
    if arr.ndim == 3 and arr.shape[0] in (2, 3, 4) and arr.shape[-1] not in (2, 3, 4):  # planar: samples first
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype == np.bool_:  # a 1-bit (bilevel) scan: black and white
        arr, depth = arr.astype(np.float32), 8
    elif arr.dtype.kind == "f":
        arr, depth = _display_floats(arr, path), 16
    elif arr.dtype in (np.uint8, np.uint16):
        peak, depth = (65535.0, 16) if arr.dtype == np.uint16 else (255.0, 8)
        arr = arr.astype(np.float32) / peak
    else:
        raise _unsupported_samples(path, str(arr.dtype))
    arr = arr.reshape(*arr.shape[:2], -1)
    if min_is_white:  # gray stored as ink: 0 is white
        arr[..., :1] = 1.0 - arr[..., :1]
    if associated and arr.shape[-1] in (2, 4):
        arr = _unpremultiply(arr)
    return arr, depth, orientation


class UnsupportedImage(ValueError):
    """A readable file whose kind of pixels this tool does not take (its message says what to do)."""


def _unsupported_samples(path: Path, sample_type: str) -> UnsupportedImage:
    return UnsupportedImage(f"{path.name}: {sample_type} samples are not supported; save it with unsigned 8 or 16 "
                            f"bits per channel")


def _display_floats(arr: np.ndarray, path: Path) -> np.ndarray:
    """Floating-point samples (a 32-bit TIFF) as values in [0, 1]: display values, or linear
    light under a gamma-1 profile, which `load_image` encodes for the network (`oftsr.icc`); HDR
    values beyond 1 have no place in an 8- or 16-bit result and are refused, not clipped."""
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise UnsupportedImage(f"{path.name}: floating-point samples with NaN or infinite values")
    low, high = float(arr.min()), float(arr.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise UnsupportedImage(f"{path.name}: a floating-point (HDR) image with values from {low:.3g} to {high:.3g}, "
                               f"beyond the 0-1 of a displayable photograph: tone-map it, or export it with 16 bits "
                               f"per channel, first")
    return np.clip(arr, 0.0, 1.0)


def _unpremultiply(arr: np.ndarray) -> np.ndarray:
    """Straight colour from colour premultiplied by the last channel, alpha (Pillow's "RGBa"
    and "La" convert alike); fully transparent pixels stay 0."""
    alpha = arr[..., -1:]
    colour = np.divide(arr[..., :-1], alpha, out=np.zeros_like(arr[..., :-1]), where=alpha > 0)
    return np.concatenate([np.clip(colour, 0.0, 1.0), alpha], axis=-1)


def _tiff_tag(im: Image.Image, tag: int, default: int) -> tuple:
    value = im.tag_v2.get(tag, default)
    return value if isinstance(value, tuple) else (value,)


def _tiff_sample_type(im: Image.Image) -> str:
    """The sample type a TIFF's tags declare, as numpy names it ("uint16", "int16", "float32")."""
    kind = {2: "int", 3: "float"}.get(max(_tiff_tag(im, 339, 1)), "uint")  # SampleFormat
    return f"{kind}{max(_tiff_tag(im, 258, 1))}"


def _tiff_for_tifffile(im: Image.Image) -> bool:
    """A gray or RGB(A) TIFF that Pillow reads at 8 bits (16-bit colour) or scales wrongly
    (signed or 32-bit integers, taken as 16-bit; 16-bit min-is-white gray, not inverted)."""
    if im.format != "TIFF" or _tiff_tag(im, 262, 1)[0] not in (0, 1, 2):  # MinIsWhite, MinIsBlack, RGB
        return False
    return max(_tiff_tag(im, 258, 1)) > 8 or 2 in _tiff_tag(im, 339, 1)  # BitsPerSample, SampleFormat signed


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, C) array turned upright by its EXIF orientation, as `ImageOps.exif_transpose`
    turns a Pillow image."""
    if orientation in (5, 6, 7, 8):
        arr = {5: arr.swapaxes(0, 1), 6: np.rot90(arr, -1), 7: arr.swapaxes(0, 1)[::-1, ::-1], 8: np.rot90(arr)}[orientation]
    elif orientation in (2, 3, 4):
        arr = {2: arr[:, ::-1], 3: arr[::-1, ::-1], 4: arr[::-1]}[orientation]
    return arr


def _cmyk_to_srgb(im: Image.Image) -> Image.Image:
    """A CMYK image through its embedded ICC profile to sRGB, as an editor converts it
    (Pillow's own conversion ignores the profile: print colours come out wrong)."""
    icc = im.info.get("icc_profile")
    if icc:
        from PIL import ImageCms

        try:
            return ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                             ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):  # a broken profile: the plain conversion below
            pass
    return im.convert("RGB")


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # by EXIF orientation, as ImageOps.exif_transpose turns an image


def _upright(im: Image.Image) -> Image.Image:
    """`ImageOps.exif_transpose`, which re-writes the EXIF and fails on a damaged tag: then
    the orientation alone is read, and an unreadable one is taken as upright."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        try:
            orientation = _valid_orientation(im.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:
            orientation = 1
        return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im


def _pil_to_array(im: Image.Image) -> np.ndarray:
    if im.format == "WEBP" and getattr(im, "is_animated", False) and im.mode == "RGBA" \
            and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert("RGB")  # Pillow decodes every animated WebP as RGBA: an opaque one has no alpha to keep
    im = _upright(im)
    if im.mode == "CMYK":
        im = _cmyk_to_srgb(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray (Pillow opens 16-bit PGM and some TIFFs as "I")
        return (np.asarray(im, dtype=np.float32) / 65535.0)[..., None]
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)[..., None]
    # RGBa and La hold premultiplied colour (a TIFF's associated alpha): converting unpremultiplies
    has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if im.mode in ("L", "1") and not has_alpha:
        return np.asarray(im.convert("L"), dtype=np.float32)[..., None] / 255.0
    if im.mode in ("L", "LA", "La", "1") and has_alpha:  # gray + alpha stays two channels
        return np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
    if has_alpha:
        return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _is_heif(path: Path) -> bool:
    """Whether the file holds HEIF data (an ISO box `ftyp` first), whatever its name says."""
    try:
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except OSError:
        return True  # let the reader report it


def heif_readable() -> bool:
    """Whether HEIC/HEIF files (iPhone photos) can be read here: through pillow-heif, which
    Pillow lacks, registered with Pillow where it is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _register_heif(path: Path) -> None:
    if not heif_readable():
        raise ValueError(f"{path.name}: HEIC/HEIF images need the pillow-heif package (pip install pillow-heif), "
                         f"or convert the file to JPEG or PNG first")


def _read_opened(im: Image.Image, path: Path) -> tuple[np.ndarray, int]:
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if im.format == "TIFF" else 1  # tags: read at open
    floats = im.format == "TIFF" and im.mode == "F"  # a gray float TIFF: values checked by _display_floats
    deep = _tiff_for_tifffile(im)
    eight_bits = ""  # why a 16-bit colour TIFF is read by Pillow, at 8 bits
    if deep and _tiff_sample_type(im) not in ("uint8", "uint16", "float16", "float32", "float64"):  # by its tags,
        raise _unsupported_samples(path, _tiff_sample_type(im))  # before any codec is needed to decode it
    # tifffile for what Pillow reads wrongly or at 8 bits, and for a gray or colour TIFF to be
    # turned (Pillow 13 leaves a gray one with orientation 5-8 as stored)
    if deep or floats or (orientation != 1 and im.tag_v2.get(262) in (1, 2)):
        try:
            arr, depth, _ = _read_tiff(path)  # turned by the orientation Pillow read
            return _orient(arr, orientation), depth
        except UnsupportedImage:
            raise
        except (ImportError, ValueError) as e:  # a compression tifffile reads only with imagecodecs (LZW, JPEG),
            codec = isinstance(e, ImportError) or "imagecodecs" in str(e)  # or data it finds damaged
            pillow_exact = im.mode in ("F", "I;16", "I;16B", "I;16L") and im.tag_v2.get(262) == 1
            if deep and codec and not pillow_exact and im.mode not in ("RGB", "RGBA"):
                raise UnsupportedImage(f"{path.name}: this TIFF's samples are read only through tifffile, and its "
                                       f"compression needs the imagecodecs package (pip install imagecodecs); or "
                                       f"save it uncompressed or with zip") from e
            if deep and im.mode in ("RGB", "RGBA"):  # Pillow's 8 bits, said once Pillow has read them
                eight_bits = f"{e}); pip install imagecodecs to read all 16" if codec else f"tifffile: {e})"
    if orientation in (5, 6, 7, 8) and im.tag_v2.get(262) in (3, 5):  # a palette or CMYK TIFF turned sideways:
        turned = _tiff_turned_by_tifffile(im, path, orientation)  # Pillow 13 decodes it scrambled
        if turned is not None:
            return _pil_to_array(turned), 8
    if im.mode == "CMYK" and im.format == "TIFF" and max(_tiff_tag(im, 258, 8)) > 8:
        warnings.warn(f"{path.name}: a 16-bit CMYK image is converted to RGB with 8 bits per channel", stacklevel=3)
    im.load()
    if eight_bits:
        warnings.warn(f"{path.name}: read with 8 bits per channel, not its 16 ({eight_bits}", stacklevel=3)
    if floats:  # Pillow reads it at full precision: the same range check as tifffile's path
        return _display_floats(_pil_to_array(im), path), 16
    return _pil_to_array(im), 16 if im.mode.startswith("I;16") or im.mode == "I" else 8


def _tiff_turned_by_tifffile(im: Image.Image, path: Path, orientation: int) -> Image.Image | None:
    """An 8-bit palette or CMYK TIFF read by tifffile and turned upright, as a Pillow image
    of its mode (its profile and transparency kept) for the usual conversion; None where
    tifffile cannot read it (a compression that needs imagecodecs): Pillow's reading stands."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr, colormap, planar = page.asarray(), page.colormap, int(page.planarconfig) == 2
    except Exception:
        return None
    if planar and arr.ndim == 3:  # samples first: (4, H, W)
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype != np.uint8 or arr.shape[2:] != (() if im.mode == "P" else (4,)):
        return None
    turned = Image.fromarray(np.ascontiguousarray(_orient(arr, orientation)), im.mode)
    if im.mode == "P":
        if colormap is None:
            return None
        turned.putpalette((colormap.T >> 8).astype(np.uint8).tobytes())
    turned.info.update({k: v for k, v in im.info.items() if k in ("icc_profile", "transparency")})
    return turned


def _read_unidentified_tiff(path: Path, error: Exception) -> tuple[np.ndarray, int]:
    """What Pillow cannot read: a TIFF tifffile can (16-bit gray + alpha), else the error."""
    with open(path, "rb") as f:
        tiff = f.read(4) in (b"II*\x00", b"MM\x00*")
    if tiff:
        try:
            arr, depth, orientation = _read_tiff(path)
            return _orient(arr, orientation), depth
        except UnsupportedImage:
            raise
        except Exception as e:  # not one tifffile reads either: Pillow's error says more, but for a codec
            if "imagecodecs" in str(e) or isinstance(e, ImportError):
                raise UnsupportedImage(f"{path.name}: this TIFF's compression needs the imagecodecs package "
                                       f"(pip install imagecodecs), or save it uncompressed or with zip") from e
    detail = "" if isinstance(error, UnidentifiedImageError) else f" ({error})"  # Pillow's only repeats the path
    raise ValueError(f"{path.name}: cannot read as an image; it is truncated or not an image file{detail}") from error


def load_image(path: str | os.PathLike | bytes | BinaryIO) -> tuple[torch.Tensor, int]:
    """(1, C, H, W) float32 in [0, 1] with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4
    (RGBA), and the source bit depth (8 or 16). The format is decided by content, not by the file name.
    Values are display (gamma-encoded) values, as the network learned them: a file whose ICC
    profile has linear tone curves (Photoshop's 32-bit mode, a raw converter's linear export)
    is sRGB-encoded here, and `save_image` decodes it again when it writes that profile.
    `path` is a file's path (`~` expanded), or a file's bytes or an open binary file (an
    upload held in memory: read through a temporary file, as the readers of some formats
    need a path). A camera raw file is refused (`CAMERA_RAW_SUFFIXES`)."""
    if isinstance(path, (bytes, bytearray, memoryview)) or hasattr(path, "read"):
        data = bytes(path.read() if hasattr(path, "read") else path)
        with tempfile.TemporaryDirectory() as folder:
            upload = Path(folder) / "upload"  # named in messages
            upload.write_bytes(data)
            return load_image(upload)
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():  # a pipe or a device: reading it may never end
        raise ValueError(f"{path.name}: not a regular file (a pipe or a device?)")
    if path.suffix.lower() in CAMERA_RAW_SUFFIXES:  # else a TIFF-based raw reads as its thumbnail, without a word
        raise ValueError(f"{path.name} is a camera raw file, whose sensor data needs developing: {CAMERA_RAW_ADVICE}")
    if path.suffix.lower() in HEIF_SUFFIXES and _is_heif(path):  # a JPEG under a .heic name needs no pillow-heif
        _register_heif(path)
    try:
        if _png_bit_depth(path) == 16:  # libpng, as Pillow truncates; the orientation from the chunks
            arr, icc = _read_png16_upright(path)
            depth = 16
        else:
            try:
                with Image.open(path) as im:
                    arr, depth = _read_opened(im, path)
                    icc = im.info.get("icc_profile")
            except ValueError as e:  # a text or profile chunk beyond Pillow's limit: the pixels without them
                text_limit = "MAX_TEXT_CHUNK" in str(e) or "MAX_TEXT_MEMORY" in str(e)  # one chunk, or all
                if not text_limit or not (stripped := _png_pixels_only(path)):
                    raise
                warnings.warn(f"{path.name}: its metadata chunks inflate beyond what Pillow reads ({e}): read "
                              f"without them", stacklevel=2)
                with Image.open(stripped) as im:
                    arr, depth = _read_opened(im, path)
                icc = None
    except (FileNotFoundError, UnsupportedImage):
        raise
    except Image.DecompressionBombError as e:
        raise ValueError(_bomb_message(path, e)) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        arr, depth = _read_unidentified_tiff(path, e)
        icc = _tifffile_metadata(path).get("icc_profile")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # some decoders hand out read-only buffers, which torch warns about
        arr = arr.copy()
    image = torch.from_numpy(arr).permute(2, 0, 1)[None].clamp(0, 1)
    if has_linear_tone_curve(icc):  # the network learned gamma-encoded photographs
        image = srgb_encode(image)
    return image, depth


# XMP properties that describe the old pixels: the orientation (already applied) and the size.
_XMP_STALE = ("tiff:ImageWidth", "tiff:ImageLength", "exif:PixelXDimension", "exif:PixelYDimension")


def _upright_xmp(xmp: bytes | str) -> bytes:
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
                found["xmp"] = _upright_xmp(xmp)
            raw_profile = None
            if im.format == "PNG" and (text := _png_text(im)):
                # EXIF as a text chunk (ImageMagick, exiv2): kept as EXIF, orientation reset, not
                # copied as it is (its stale orientation would turn the upright result again)
                raw_profile = text.pop(_RAW_PROFILE_EXIF, None)
                if text:
                    found["png_text"] = text
            with warnings.catch_warnings():  # a corrupt EXIF block is left out, not reported
                warnings.simplefilter("ignore")
                exif = _read_exif(im, None if raw_profile is None else _raw_profile_bytes(raw_profile))
        if exif is not None:
            exif[_EXIF_ORIENTATION] = 1
            for tag in _EXIF_LAYOUT_TAGS:
                exif.pop(tag, None)
            sub = exif.get_ifd(EXIF_IFD)
            for tag in _EXIF_PIXEL_SIZE:
                sub.pop(tag, None)
            found["exif"] = exif_bytes(exif)
    except UnidentifiedImageError:  # a TIFF Pillow does not open (float colour, 16-bit gray + alpha)
        return _tifffile_metadata(path)
    except Exception:  # any decoder or parser error: keep what was read so far
        pass
    return _valid_dpi(found)


def _png_text(im: Image.Image) -> dict[str, str]:
    """A PNG's text chunks but the XMP: how an AI image was made (A1111's `parameters`,
    ComfyUI's `prompt` and `workflow`), a title, an author. Pillow decodes the pixels to
    find the chunks after them; a file that fails to decode gives none here."""
    try:
        return {k: str(v) for k, v in im.text.items() if k != _PNG_XMP_KEY}
    except Exception:
        return {}


def _tifffile_metadata(path: str | os.PathLike) -> dict[str, object]:
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
        found["xmp"] = _upright_xmp(bytes(tags[700]))
    unit = tags.get(296, 2)
    per_inch = {2: 1.0, 3: 2.54}.get(unit if isinstance(unit, int) else 2)  # ResolutionUnit: inch or centimetre
    try:
        if per_inch and 282 in tags and 283 in tags:
            found["dpi"] = tuple(float(n) / float(d) * per_inch for n, d in (tags[282], tags[283]))
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return _valid_dpi(found)


MAX_DPI = 1e6  # beyond any scanner's; a resolution outside (0, MAX_DPI] is a damaged tag


def _valid_dpi(metadata: dict[str, object]) -> dict[str, object]:
    """`metadata` without a DPI that is not two finite numbers in (0, MAX_DPI] (a TIFF's
    72/0 reads as NaN; writers overflow on others)."""
    dpi = metadata.get("dpi")
    if dpi is not None and not (isinstance(dpi, tuple) and len(dpi) == 2
                                and all(isinstance(d, (int, float)) and 0 < d <= MAX_DPI for d in dpi)):
        metadata = {k: v for k, v in metadata.items() if k != "dpi"}
    return metadata


def _read_exif(im: Image.Image, png_raw_profile: bytes | None = None) -> Image.Exif | None:
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


def _keeps_profile(icc: bytes, colour: bool) -> bool:
    """An ICC profile describes the written pixels only if its colour space is theirs
    (bytes 16-20 of its header): RGB for colour output, GRAY for gray. A CMYK or Lab
    source is converted to RGB on load, so its profile no longer applies."""
    return icc[16:20] == (b"RGB " if colour else b"GRAY")


def _png_add_chunks(path: Path, icc_profile: bytes | None, xmp: bytes | None, exif: bytes | None,
                    text: dict[str, str] | None = None) -> None:
    """Insert an iCCP chunk after IHDR, XMP as the iTXt chunk Adobe's tools read, an eXIf
    chunk and text chunks into a PNG written by pypng (which has no option for these)."""
    if not icc_profile and not xmp and not exif and not text:
        return
    import zlib

    import png

    with open(path, "rb") as f:
        chunks = list(png.Reader(file=f).chunks())
    if exif:  # the TIFF structure itself, without the "Exif\0\0" that JPEG puts before it
        chunks.insert(1, (b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    for key, value in reversed(list((text or {}).items())):
        try:
            chunks.insert(1, (b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1")))
        except UnicodeEncodeError:
            chunks.insert(1, (b"iTXt", key.encode("latin-1", "replace") + b"\x00\x00\x00\x00\x00" + value.encode()))
    if xmp:
        chunks.insert(1, (b"iTXt", _PNG_XMP_KEY.encode() + b"\x00\x00\x00\x00\x00" + xmp))
    if icc_profile:
        chunks.insert(1, (b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    with open(path, "wb") as f:
        png.write_chunks(f, chunks)


def _levels(image: torch.Tensor, bits: int) -> np.ndarray:
    """(C, H, W) -> (H, W, C) uint8 / uint16 file levels. A float tensor in [0, 1] is rounded;
    a uint8 / uint16 one (as `upscale(out_dtype=...)` returns big images, without a float
    copy) is taken as it is, or rescaled between 8 and 16 bits with the same rounding."""
    peak, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)
    if image.dtype in (torch.uint8, torch.uint16):
        arr = image.detach().permute(1, 2, 0).cpu().numpy()
        have = OUTPUT_DTYPES[image.dtype]
        return arr if have == peak else np.round(arr.astype(np.float32) * (peak / have)).astype(dtype)
    return np.round(image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * peak).astype(dtype)


# The largest side each format can hold (Pillow's encoders refuse more only once the image is made).
MAX_SIDE = {".webp": 16383, ".jpg": 65500, ".jpeg": 65500}
JPEG_MAX_XMP = 65504  # bytes of XMP in one JPEG APP1 segment
JPEG_MAX_EXIF = 65533  # bytes of EXIF ("Exif\0\0" and its TIFF structure) in one APP1 segment


def check_output_size(path: str | os.PathLike, width: int, height: int) -> None:
    """Refuse an output size its format cannot hold, before anything is computed."""
    limit = MAX_SIDE.get(Path(path).suffix.lower())
    if limit is not None and max(width, height) > limit:
        raise ValueError(f"{Path(path).name}: {Path(path).suffix} holds at most {limit} px a side, and the result is "
                         f"{width}x{height}; name the output .png or .tif")


def _check_savable(image: object, bit_depth: int) -> torch.Tensor:
    """The (C, H, W) image `save_image` writes, or a ValueError that says what to change:
    a silent clamp would write 0-255 floats as a white image."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"save_image takes a (C, H, W) tensor, got {type(image).__name__}{image_hint(image, batch=False)}")
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"save_image writes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"save_image takes a (C, H, W) tensor with 1 to 4 channels, got {tuple(image.shape)}"
                         f"{image_hint(image, batch=False)}")
    if image.is_floating_point():
        check_unit_range(image, "the image to save")
    elif image.dtype not in (torch.uint8, torch.uint16):
        raise ValueError(f"save_image takes floats in [0, 1] or uint8 / uint16 levels, got {image.dtype}")
    return image


def file_format(path: str | os.PathLike) -> str:
    """The format a written file's suffix names, as Pillow names it ("PNG", "JPEG", "WEBP",
    "TIFF", "BMP"); for a suffix in IMAGE_SUFFIXES."""
    return Image.registered_extensions()[Path(path).suffix.lower()]


def save_image(image: torch.Tensor, path: str | os.PathLike, *, bit_depth: int = 8,
               metadata: dict[str, object] | None = None, quality: int = 95) -> int:
    """Write a (C, H, W) or (1, C, H, W) tensor in [0, 1], or of uint8 / uint16 levels
    (C = 1, 2, 3 or 4), in the format the suffix names, atomically. Returns the bit depth
    written: `bit_depth=16` gives 16 as PNG or TIFF, and 8 otherwise (JPEG, WebP and BMP
    have 8 bits) -- the caller can say so. `metadata` (from `read_image_metadata`) is
    written where the format holds it: ICC profile, EXIF, XMP and DPI (a 16-bit TIFF
    keeps the profile, XMP and DPI, not the EXIF; BMP the DPI only). The image holds display
    values, as `load_image` returns them: under a written profile with linear tone curves
    they are decoded to linear light. JPEG and WebP are written at `quality`; JPEG has no
    alpha, nor has BMP as viewers read it, so an image with alpha is flattened onto white.
    The folder is created if it does not exist; `~` is expanded."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{path.name}: cannot write {suffix or 'a file without suffix'!r} images; use one of "
                         f"{', '.join(IMAGE_SUFFIXES)}")
    fmt = file_format(path)
    image = _check_savable(image, bit_depth)
    extra = {k: v for k, v in (metadata or {}).items() if fmt != "BMP" or k == "dpi"}  # BMP: a resolution only
    checked = _valid_dpi(extra)
    if len(checked) < len(extra):  # writers overflow or fail on it, after the image is computed
        warnings.warn(f"{path.name}: DPI {extra['dpi']!r} is not a resolution: written without it", stacklevel=2)
    extra = checked
    # The profile must fit the pixels written (WebP writes gray as RGB).
    colour = image.shape[0] >= 3 or fmt == "WEBP"
    if "icc_profile" in extra and not _keeps_profile(extra["icc_profile"], colour=colour):
        del extra["icc_profile"]
    if has_linear_tone_curve(extra.get("icc_profile")):  # `load_image` encoded it: linear light again
        image = srgb_decode(image[None].float() / OUTPUT_DTYPES.get(image.dtype, 1.0))[0]
    with atomic_write(path) as tmp:
        if bit_depth == 16 and fmt == "PNG":
            _write_png16(image, tmp, extra)
            return 16
        if bit_depth == 16 and fmt == "TIFF":  # Pillow writes 16-bit TIFF for grayscale only
            _warn_text_left_out(list(extra.get("png_text") or ()), fmt, path.name, stacklevel=3)
            if extra.get("exif"):
                warnings.warn(f"{path.name}: a 16-bit TIFF is written here without the source's EXIF (camera, lens "
                              f"and exposure); a .png output keeps it with 16 bits, an 8-bit .tif with 8",
                              stacklevel=2)
            _write_tiff16(image, tmp, extra)
            return 16
        _write_pillow8(image, tmp, fmt, extra, quality, path.name)
    return 8


def _write_png16(image: torch.Tensor, tmp: Path, metadata: dict[str, object]) -> None:
    """16-bit PNG with pypng (Pillow truncates to 8 bits), then the profile, XMP and EXIF chunks."""
    import png

    c, h, w = image.shape
    data = _levels(image, 16).reshape(h, w * c)
    dpi = metadata.get("dpi")
    resolution = {} if not dpi else {"x_pixels_per_unit": round(dpi[0] / 0.0254),
                                     "y_pixels_per_unit": round(dpi[1] / 0.0254), "unit_is_meter": True}
    with open(tmp, "wb") as f:
        png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16, compression=PNG_COMPRESS_LEVEL,
                   **resolution).write(f, data)
    _png_add_chunks(tmp, metadata.get("icc_profile"), metadata.get("xmp"), metadata.get("exif"),
                    metadata.get("png_text"))


def _write_tiff16(image: torch.Tensor, tmp: Path, extra: dict[str, object]) -> None:
    """16-bit TIFF with tifffile (Pillow writes 16 bits for grayscale only), deflate-compressed;
    it keeps the profile, XMP and DPI, not the EXIF."""
    import tifffile

    c = image.shape[0]
    dpi = extra.get("dpi")
    levels = _levels(image, 16)
    tifffile.imwrite(tmp, levels[..., 0] if c == 1 else levels, photometric="minisblack" if c <= 2 else "rgb",
                     planarconfig=None if c == 1 else "contig",
                     extrasamples=("unassalpha",) if c in (2, 4) else None, compression="zlib",
                     metadata=None, software=False,  # no JSON shape description, no tifffile.py
                     iccprofile=extra.get("icc_profile"),
                     extratags=[(700, 1, len(extra["xmp"]), extra["xmp"], True)] if extra.get("xmp") else None,
                     resolution=None if not dpi else (dpi[0], dpi[1]), resolutionunit=2 if dpi else None)


def _write_pillow8(image: torch.Tensor, tmp: Path, fmt: str, extra: dict[str, object], quality: int,
                   name: str) -> None:
    """8 bits a channel through Pillow, with each format's way of holding XMP and EXIF."""
    c = image.shape[0]
    # No transparency in JPEG, nor in a BMP as viewers read it: flattened onto white, as editors do.
    if fmt in ("JPEG", "BMP") and c in (2, 4):
        alpha = image[c - 1:].float() / OUTPUT_DTYPES.get(image.dtype, 1.0)
        colour = image[:c - 1].float() / OUTPUT_DTYPES.get(image.dtype, 1.0)
        image, c = colour * alpha + (1 - alpha), c - 1
    xmp, text = extra.pop("xmp", None), extra.pop("png_text", None)
    if fmt == "PNG" and (xmp or text):
        extra["pnginfo"] = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            extra["pnginfo"].add_text(key, value)  # tEXt, or iTXt where it is not Latin-1
        if xmp:
            extra["pnginfo"].add_itxt(_PNG_XMP_KEY, xmp.decode("utf-8", "replace"))
    elif xmp and fmt == "TIFF" and extra.get("exif"):  # Pillow writes `tiffinfo` instead of `exif`: one block
        merged = Image.Exif()
        merged.load(extra["exif"])
        merged[700] = xmp
        extra["exif"] = merged
    elif xmp and fmt == "TIFF":
        extra["tiffinfo"] = {700: xmp}
    elif xmp and fmt == "JPEG" and len(xmp) > JPEG_MAX_XMP:
        warnings.warn(f"{name}: the source's XMP ({len(xmp):,} bytes) is more than JPEG holds "
                      f"({JPEG_MAX_XMP:,}): written without it; a .png or .tif output keeps it", stacklevel=3)
    elif xmp and fmt in ("JPEG", "WEBP"):
        extra["xmp"] = xmp
    if text and fmt != "PNG" and (exif := _exif_with_settings(extra.pop("exif", None), text, fmt, name)):
        extra["exif"] = exif
    if fmt == "JPEG" and len(extra.get("exif") or b"") > JPEG_MAX_EXIF:
        warnings.warn(f"{name}: the source's EXIF ({len(extra['exif']):,} bytes, maker notes most likely) "
                      f"is more than JPEG holds ({JPEG_MAX_EXIF:,}): written without it; a .png or .tif output "
                      f"keeps it", stacklevel=3)
        del extra["exif"]
    data = _levels(image, 8)
    im = Image.fromarray(data[..., 0] if c == 1 else data)  # L, LA, RGB or RGBA
    if fmt in ("JPEG", "WEBP"):
        extra["quality"] = quality
    if fmt == "PNG":
        extra["compress_level"] = PNG_COMPRESS_LEVEL
    if fmt == "TIFF" and not extra.get("exif"):  # Pillow's compressing writer (libtiff) drops an EXIF block
        extra["compression"] = "tiff_adobe_deflate"  # lossless, as the 16-bit TIFFs (zlib)
    if fmt == "JPEG":  # no alpha in JPEG; full-resolution colour at high quality, as editors export it
        im = im.convert("L" if c <= 2 else "RGB")
        extra["subsampling"] = "4:4:4" if quality >= JPEG_FULL_CHROMA_QUALITY else "4:2:0"
    elif c == 2 and fmt not in ("PNG", "TIFF"):
        im = im.convert("RGBA")
    im.save(tmp, format=fmt, **extra)
    if fmt == "TIFF" and extra.get("exif"):  # Pillow's TIFF writer types the EXIF fields itself
        mend_tiff_types(tmp)


def _exif_with_settings(exif: bytes | None, text: dict[str, str], fmt: str, name: str) -> bytes | None:
    """The EXIF of a JPEG or WebP result, with a PNG source's generation settings as its
    UserComment where it has room: not over a comment of the source's own, nor past what
    a JPEG holds (the source's EXIF is kept then). The other text chunks (ComfyUI's
    workflow) have no place outside PNG. What is left out is said, as other metadata is."""
    merged = exif
    if _SETTINGS_TEXT in text and fmt in ("JPEG", "WEBP"):
        merged = with_user_comment(exif, text[_SETTINGS_TEXT])  # `exif` itself where the comment has no room
        if fmt == "JPEG" and len(merged or b"") > JPEG_MAX_EXIF:
            merged = exif
    _warn_text_left_out([k for k in text if k != _SETTINGS_TEXT or merged is exif], fmt, name, stacklevel=5)
    return merged


def _warn_text_left_out(keys: list[str], fmt: str, name: str, stacklevel: int) -> None:
    if keys:
        warnings.warn(f"{name}: the source's PNG text ({', '.join(keys)}) has no place in "
                      f"{_FORMAT_NAMES.get(fmt, fmt)} here: written without it; a .png output keeps it",
                      stacklevel=stacklevel)


def files_below(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted. Hidden files and folders (a name starting with a
    dot: macOS's ._IMG_0001.jpg on exFAT and network drives, .thumbnails/) are left out;
    linked folders (photographs linked in from another disk) are followed, each real folder
    once. Not followed: a link to a folder it lies in (which would loop) or to one of the
    tree's own folders (listed under its own path)."""
    inside = {os.path.realpath(top) for top, _, _ in os.walk(folder)}  # links not followed
    seen: set[str] = set()
    found = []
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # reached again through another link (two links to one folder, a loop outside)
            dirs[:] = []
            continue
        seen.add(real)
        # sorted: which of two links to one folder lists it does not depend on the file system's order
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _loops_back(os.path.join(top, d), real, inside))
        found.extend(q for q in (Path(top) / n for n in names if not n.startswith(".")) if q.is_file())
    return sorted(found)


def _loops_back(path: str, real_parent: str, inside: set[str]) -> bool:
    """Whether `path` is a link to a folder it lies in or to a folder of `inside`."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    return target in inside or (real_parent + os.sep).startswith(target + os.sep)


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and image files (by suffix, `READ_SUFFIXES`) found recursively in
    folders (`files_below`: hidden ones left out, linked folders followed), sorted."""
    return find_images(paths)[0]


def find_images(paths: list[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """`list_images`'s files, and the camera raw files (`CAMERA_RAW_SUFFIXES`) its folders
    hold, which it leaves out: one walk of each folder for both. A file given twice (a folder
    and one inside it, or the file too) is listed once, where it was first met."""
    found: list[Path] = []
    raws: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            below = files_below(p)
            found.extend(q for q in below if q.suffix.lower() in READ_SUFFIXES)
            raws.extend(q for q in below if q.suffix.lower() in CAMERA_RAW_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    once = {os.path.normcase(os.path.abspath(q)): q for q in reversed(found)}  # the first of each kept
    return [q for q in found if once[os.path.normcase(os.path.abspath(q))] is q], list(dict.fromkeys(raws))
