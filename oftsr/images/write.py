"""Writing a float tensor in [0, 1] as an image file (`save_image`): PNG and TIFF at 8 or 16
bits (16-bit PNGs by pypng), JPEG, WebP and BMP, with the source's metadata.
Files are written atomically (a temporary name in the same folder, then a rename)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..checks import OUTPUT_DTYPES, check_unit_range, image_hint
from ..color import srgb_decode
from ..exif import mend_tiff_types, with_resolution, with_user_comment
from ..files import atomic_write
from ..icc import has_linear_tone_curve
from .formats import IMAGE_SUFFIXES, PNG_XMP_KEY
from .metadata import valid_dpi

# zlib level of written PNGs (8 and 16 bits): ComfyUI's SaveImage level, 2.5 times faster than
# zlib's default 6 on an upscaled result, for files 3-7% larger (bench/bench.py --only files).
PNG_COMPRESS_LEVEL = 4
JPEG_FULL_CHROMA_QUALITY = 90  # from this --quality on, JPEG keeps colour at full resolution (4:4:4)
_SETTINGS_TEXT = "parameters"  # A1111's generation settings: kept in JPEG and WebP as the EXIF UserComment
_FORMAT_NAMES = {"WEBP": "WebP"}  # as messages name them


def _keeps_profile(icc: bytes, colour: bool) -> bool:
    """An ICC profile describes the written pixels only if its colour space is theirs
    (bytes 16-20 of its header): RGB for colour output, GRAY for gray. A CMYK or Lab
    source is converted to RGB on load, so its profile no longer applies."""
    return icc[16:20] == (b"RGB " if colour else b"GRAY")


def png_add_chunks(path: Path, icc_profile: bytes | None, xmp: bytes | None, exif: bytes | None,
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
        chunks.insert(1, (b"iTXt", PNG_XMP_KEY.encode() + b"\x00\x00\x00\x00\x00" + xmp))
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
        check_unit_range(image, "the image to save", stacklevel=4)  # the line that called save_image()
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
    checked = valid_dpi(extra)
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
    png_add_chunks(tmp, metadata.get("icc_profile"), metadata.get("xmp"), metadata.get("exif"),
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
            extra["pnginfo"].add_itxt(PNG_XMP_KEY, xmp.decode("utf-8", "replace"))
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
    if fmt == "WEBP" and extra.get("dpi"):  # WebP has no resolution field: EXIF's, as editors write it
        extra["exif"] = with_resolution(extra.get("exif"), extra.pop("dpi"))
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
