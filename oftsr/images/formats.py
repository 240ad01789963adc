"""File names and metadata keys that reading, metadata and writing share."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # the formats written
HEIF_SUFFIXES = (".heic", ".heif")
# What a folder is searched for: the formats written, and read-only ones (a GIF's first frame;
# AVIF where Pillow has it; HEIC, a phone's format, with pillow-heif, else a clear error).
READ_SUFFIXES = IMAGE_SUFFIXES + (".gif", ".jfif", ".jpe", ".avif") + HEIF_SUFFIXES
# Camera raw files: sensor data to develop (demosaic, white balance, tone), which this does
# not do. Many are TIFF inside and would open as their small embedded preview.
CAMERA_RAW_SUFFIXES = (".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
                       ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mrw", ".mos",
                       ".raw")
CAMERA_RAW_ADVICE = "develop it in a raw converter and export a 16-bit TIFF (or a JPEG) to upscale"
PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword Adobe's tools read XMP from
EXIF_ORIENTATION = 0x0112
RAW_PROFILE_EXIF = "Raw profile type exif"  # ImageMagick's and exiv2's EXIF in a PNG: a text chunk of hex


def raw_profile_bytes(text: str | bytes) -> bytes | None:
    """The bytes of an ImageMagick raw profile ("\\nexif\\n    1234\\n4578 6966..."), as
    Pillow reads it; None where it is not one."""
    text = text.decode("latin-1") if isinstance(text, bytes) else text
    try:
        return bytes.fromhex("".join(text.split("\n")[3:]))
    except ValueError:
        return None
