"""Image files as float tensors (1, C, H, W) in [0, 1]: reading (`read`), the metadata a
result keeps (`metadata`), writing (`write`) and finding images in folders (`listing`)."""

from .formats import CAMERA_RAW_ADVICE, CAMERA_RAW_SUFFIXES, HEIF_SUFFIXES, IMAGE_SUFFIXES, READ_SUFFIXES
from .listing import files_below, find_images, list_images
from .metadata import MAX_FRAMES_COUNTED, frame_count, read_image_metadata
from .read import UnsupportedImage, heif_readable, load_image
from .write import check_output_size, file_format, save_image

__all__ = ["CAMERA_RAW_ADVICE", "CAMERA_RAW_SUFFIXES", "HEIF_SUFFIXES", "IMAGE_SUFFIXES", "MAX_FRAMES_COUNTED",
           "READ_SUFFIXES", "UnsupportedImage", "check_output_size", "file_format", "files_below", "find_images",
           "frame_count", "heif_readable", "list_images", "load_image", "read_image_metadata", "save_image"]
