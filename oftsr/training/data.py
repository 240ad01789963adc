"""Training data: a folder of HR photographs, random crops and flips, LR made on the fly."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..color import split_alpha
from ..model import DEGRADATIONS
from .degradations import SIGMA_Y, make_lr
from .realesrgan import RealESRGANConfig
from ..images import HEIF_SUFFIXES, READ_SUFFIXES, files_below, load_image

logger = logging.getLogger(__name__)
# What reading an item meets (a file that stopped decoding): only the process that read it
# knows, so the trainer lets every process say it; the scan's messages are said once.
load_logger = logging.getLogger(f"{__name__}.load")


def _decodes(path: Path) -> None:
    """Raise if the image does not decode to the end as the loader reads it (`load_image`:
    float and 16-bit TIFFs through tifffile, HDR values refused). JPEGs are decoded at 1/8
    scale (`draft`): every byte of the data is still read, at a fraction of the cost."""
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
                return
    except (UnidentifiedImageError, ValueError, OSError):  # a TIFF only tifffile reads, a PNG whose text chunks
        pass  # Pillow refuses (load_image reads it without them); else load_image says what it is
    load_image(path)


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, or by decoding a file Pillow does not open."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, ValueError, OSError):  # as in _decodes
        h, w = load_image(path)[0].shape[-2:]
        return w, h


def scan_images(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursive; the suffixes the CLI reads), each decoded once
    here; the format comes from the content, so JPEG data under a .png name is fine. Files
    that cannot be decoded (not images, truncated, corrupt) are reported once, here, and
    left out: a loader worker, restarted every epoch, never meets them. Files of other
    types (camera raw, sidecars) are counted by suffix, so that a folder of them is not a
    riddle. Hidden files and folders are not searched; linked folders are."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} does not exist")
    files = files_below(root)  # not hidden ones (macOS's ._ files); linked folders followed
    others = Counter(p.suffix.lower() or "no suffix" for p in files if p.suffix.lower() not in READ_SUFFIXES)
    other_types = ", ".join(f"{suffix} ({n})" for suffix, n in others.most_common())
    heif_reader = _heif_reader() if any(p.suffix.lower() in HEIF_SUFFIXES for p in files) else True
    good, bad, heif = [], [], []
    for path in (p for p in files if p.suffix.lower() in READ_SUFFIXES):
        if path.suffix.lower() in HEIF_SUFFIXES and not heif_reader:
            heif.append(path.name)
            continue
        try:
            _decodes(path)
            good.append(path)
        except Exception as e:  # any decoder error means "skip this file"
            bad.append(f"{path.name} ({type(e).__name__})")
    if bad:
        logger.warning("skipping %d unreadable file(s) in %s: %s", len(bad), root, ", ".join(bad))
    if heif:
        logger.warning("skipping %d HEIC/HEIF file(s) in %s, which need the pillow-heif package (pip install "
                       "pillow-heif): %s", len(heif), root, ", ".join(heif[:5]) + (", ..." if len(heif) > 5 else ""))
    if others and good:
        logger.info("left out %d file(s) of other types in %s: %s", sum(others.values()), root, other_types)
    if not good:
        found = f"; it holds {other_types}" if others else ""
        raise ValueError(f"no readable images ({', '.join(s.lstrip('.') for s in READ_SUFFIXES)}) found under "
                         f"{root}{found}" + (": convert camera raw files to TIFF or PNG first" if others.keys() &
                                             RAW_SUFFIXES else ""))
    return good


# Camera raw files, which a training folder of photographs may hold beside (or instead of) JPEGs.
RAW_SUFFIXES = {".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw", ".raw"}


def _heif_reader() -> bool:
    """Whether HEIC/HEIF files can be read here: pillow-heif, registered with Pillow."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def warn_small_images(files: list[Path], resolution: int) -> None:
    """For a training set: images smaller than the crop are scaled up to it
    (`SRDataset._crop`), so their "HR" is an interpolation, which teaches the model to make
    blur. Say so, once (not for a validation set, which teaches nothing); when every image
    is smaller, the crop size is a mistake: refuse it."""
    small = []
    for path in files:
        side = min(_size(path))
        if side < resolution:
            small.append((side, path))
    small.sort()
    if small and len(small) == len(files):  # a flag mistake, not a few odd images: stop before training on blur
        fits = small[-1][0]
        raise ValueError(f"all {len(files)} training images are smaller than the {resolution} px crop (the largest "
                         f"fits {fits} px); scaled up, they would teach blur: use a --resolution of at most {fits}")
    if small:
        side, path = small[0]
        logger.warning("%d of %d training images are smaller than the %d px crop and are scaled up to it, which "
                       "teaches blur (smallest: %s, %d px); use a smaller --resolution or leave them out",
                       len(small), len(files), resolution, path.name, side)


class SRDataset(torch.utils.data.Dataset):
    """Items are dicts with `hr` and `lr` (the LR brought back to HR size), both
    (3, resolution, resolution) in [-1, 1]. Crops, flips and degradation noise are drawn
    from a generator seeded by (seed, epoch, index): the same item is the same whatever
    the number of workers or processes, and a resumed run sees the data it would have.

    `repeats` crops are drawn from each image per epoch: with a few hundred photographs
    and a large batch, an epoch of one crop per image is only a few steps long, and every
    epoch restarts the loader's workers."""

    def __init__(self, root: str | os.PathLike, *, resolution: int = 256, scale: int = 4, degradation: str = "bicubic",
                 sigma_y: float = SIGMA_Y, random_flip: bool = True, center_crop: bool = False, seed: int = 0,
                 repeats: int = 1, realesrgan_config: RealESRGANConfig | None = None) -> None:
        # Checked here, in the main process, not at the first item in a DataLoader worker.
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; choose one of {', '.join(DEGRADATIONS)}")
        if resolution % scale:
            raise ValueError(f"resolution {resolution} must be a multiple of the scale {scale}")
        if repeats < 1:
            raise ValueError(f"repeats must be 1 or more, not {repeats}")
        self.files = scan_images(root)
        self.repeats = repeats
        self.resolution, self.scale, self.degradation, self.sigma_y = resolution, scale, degradation, sigma_y
        self.random_flip, self.center_crop = random_flip, center_crop
        self.realesrgan_config = realesrgan_config
        self.seed, self.epoch = seed, 0
        self._reported: set[Path] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def _load(self, index: int) -> torch.Tensor:
        # A file that decoded in the scan can still fail now (changed on disk since): report
        # it (once per process) and use the next one, so a bad file never stops a run.
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                image, _ = load_image(path)
                return image[0]
            except Exception as e:  # unreadable now, moved, deleted, a network share gone: never the run
                if path not in self._reported:
                    self._reported.add(path)
                    load_logger.warning("skipping unreadable training image: %s", e)
        raise RuntimeError("no training image could be decoded")

    def _crop(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        image = split_alpha(image[None])[0][0]  # gray as RGB; under transparency filled, as at inference
        r = self.resolution
        h, w = image.shape[-2:]
        if min(h, w) < r:  # small images: scale up so the crop fits
            f = r / min(h, w)
            image = F.interpolate(image[None], size=(max(r, round(h * f)), max(r, round(w * f))), mode="bicubic",
                                  align_corners=False)[0].clamp(0, 1)
            h, w = image.shape[-2:]
        if self.center_crop:
            y, x = (h - r) // 2, (w - r) // 2
        else:
            y, x = int(torch.randint(h - r + 1, (), generator=g)), int(torch.randint(w - r + 1, (), generator=g))
        crop = image[:, y:y + r, x:x + r]
        if self.random_flip and torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        return crop

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
        hr = self._crop(self._load(index % len(self.files)), g) * 2 - 1
        lr = make_lr(hr[None], self.scale, self.degradation, generator=g, sigma_y=self.sigma_y,
                     realesrgan_config=self.realesrgan_config)[0]
        return {"hr": hr.contiguous(), "lr": lr.contiguous()}
