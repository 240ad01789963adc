"""Reading an image file as a float tensor in [0, 1] (`load_image`).

Pillow decodes everything except 16-bit-per-channel colour PNGs and TIFFs, which it
truncates to 8 bits: those PNGs (and 16-bit grayscale ones) are decoded by libpng through
imagecodecs, those TIFFs read with tifffile, so no precision is lost, and their EXIF
orientation is applied as Pillow's is for the rest.
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

from ..color import srgb_encode
from ..icc import has_linear_tone_curve
from .formats import (CAMERA_RAW_ADVICE, CAMERA_RAW_SUFFIXES, EXIF_ORIENTATION, HEIF_SUFFIXES, PNG_XMP_KEY,
                      RAW_PROFILE_EXIF, raw_profile_bytes)
from .metadata import tifffile_metadata

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def _png_orientation(exif: bytes | None, raw_profile: bytes | None, xmp: bytes | None) -> int:
    """A PNG's orientation as Pillow reads it (so every bit depth turns the same way): its
    eXIf chunk, else its raw EXIF profile, else its XMP's tiff:Orientation."""
    orientation = None
    data = exif if exif is not None else (raw_profile_bytes(raw_profile) if raw_profile is not None else None)
    if data:
        try:
            tags = Image.Exif()
            tags.load(data)
            orientation = tags.get(EXIF_ORIENTATION)
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
                if key == PNG_XMP_KEY.encode():
                    xmp = text_of(kind, rest)
                elif key == RAW_PROFILE_EXIF.encode():
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
    return orient(_read_png16(path, significant_bits), orientation), icc


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
        tag = page.tags.get(EXIF_ORIENTATION)
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


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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
            orientation = _valid_orientation(im.getexif().get(EXIF_ORIENTATION, 1))
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
    orientation = im.getexif().get(EXIF_ORIENTATION, 1) if im.format == "TIFF" else 1  # tags: read at open
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
            return orient(arr, orientation), depth
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
    turned = Image.fromarray(np.ascontiguousarray(orient(arr, orientation)), im.mode)
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
            return orient(arr, orientation), depth
        except UnsupportedImage:
            raise
        except Exception as e:  # not one tifffile reads either: Pillow's error says more, but for a codec
            if "imagecodecs" in str(e) or isinstance(e, ImportError):
                raise UnsupportedImage(f"{path.name}: this TIFF's compression needs the imagecodecs package "
                                       f"(pip install imagecodecs), or save it uncompressed or with zip") from e
    if path.stat().st_size == 0:  # a copy or download that never wrote
        raise ValueError(f"{path.name}: the file is empty (0 bytes); copy or export it again") from error
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
        icc = tifffile_metadata(path).get("icc_profile")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # some decoders hand out read-only buffers, which torch warns about
        arr = arr.copy()
    image = torch.from_numpy(arr).permute(2, 0, 1)[None].clamp(0, 1)
    if has_linear_tone_curve(icc):  # the network learned gamma-encoded photographs
        image = srgb_encode(image)
    return image, depth
