"""Training data: a folder of HR photographs, random crops and flips, LR made on the fly."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..color import split_alpha
from ..model import DEGRADATIONS
from .degradations import SIGMA_Y, make_lr
from .realesrgan import RealESRGANConfig
from ..images import CAMERA_RAW_SUFFIXES, HEIF_SUFFIXES, READ_SUFFIXES, files_below, heif_readable, load_image

logger = logging.getLogger(__name__)
# What reading an item meets (a file that stopped decoding): only the process that read it
# knows, so the trainer lets every process say it; the scan's messages are said once.
load_logger = logging.getLogger(f"{__name__}.load")


# Pillow modes whose values may lie outside [0, 1] (float TIFFs): only a decode can tell
# whether the loader takes them (it refuses HDR values).
_FLOAT_MODES = {"F", "I"}
SCAN_PROGRESS_SECONDS = 10.0  # a scan of a large folder says how far it is this often


def _checked_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image the loader reads, or an exception saying why it cannot.
    From the header where Pillow opens the file as levels (8 or 16 bits): decoding every
    photograph in full would take minutes to hours at each start (85 ms for a 2K PNG), and
    a body damaged anyway is met, once, by the loader, which then takes the next image.
    Decoded in full where only the loader's own readers open it (float and 16-bit colour
    TIFFs) or the values may be HDR."""
    try:
        with Image.open(path) as im:
            if im.mode not in _FLOAT_MODES:
                return im.size
    except (UnidentifiedImageError, ValueError, OSError):  # a TIFF only tifffile reads, a PNG whose text chunks
        pass  # Pillow refuses (load_image reads it without them); else load_image says what it is
    h, w = load_image(path)[0].shape[-2:]
    return w, h


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


def _listed(names: list[str], most: int = 10) -> str:
    return "; ".join(names[:most]) + (f"; and {len(names) - most} more" if len(names) > most else "")


def scan_images(root: str | os.PathLike) -> list[Path]:
    """The images under `root` that `scan_image_sizes` finds."""
    return list(scan_image_sizes(root))


def scan_image_sizes(root: str | os.PathLike) -> dict[Path, tuple[int, int]]:
    """Image files under `root` (recursive; the suffixes the CLI reads), sorted, with their
    (width, height), each checked here
    from its header (`_checked_size`); the format comes from the content, so JPEG data under
    a .png name is fine. Files that are not images the loader reads are reported once, with
    why, and left out. Files of other types (camera raw, sidecars) are counted by suffix, so
    that a folder of them is not a riddle; links that lead nowhere are counted. Hidden files
    and folders are not searched; linked folders are. A long scan says how far it is."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} does not exist")
    files, linked_again = _each_file_once(files_below(root))  # not hidden ones (macOS's ._ files); linked folders followed
    others = Counter(p.suffix.lower() or "no suffix" for p in files if p.suffix.lower() not in READ_SUFFIXES)
    other_types = ", ".join(f"{suffix} ({n})" for suffix, n in others.most_common())
    heif_reader = heif_readable() if any(p.suffix.lower() in HEIF_SUFFIXES for p in files) else True
    candidates = [p for p in files if p.suffix.lower() in READ_SUFFIXES]
    good: dict[Path, tuple[int, int]] = {}
    bad, heif = [], []
    said = time.monotonic()
    for i, path in enumerate(candidates):
        if time.monotonic() - said > SCAN_PROGRESS_SECONDS:
            said = time.monotonic()
            logger.info("checked %d of %d images in %s", i, len(candidates), root)
        if path.suffix.lower() in HEIF_SUFFIXES and not heif_reader:
            heif.append(path.name)
            continue
        try:
            good[path] = _checked_size(path)
        except Exception as e:  # any decoder error means "skip this file"
            bad.append(f"{path.relative_to(root)} ({_reason(e)})")
    if bad:
        logger.warning("skipping %d unreadable file(s) in %s: %s", len(bad), root, _listed(bad))
    if heif:
        logger.warning("skipping %d HEIC/HEIF file(s) in %s, which need the pillow-heif package (pip install "
                       "pillow-heif): %s", len(heif), root, ", ".join(heif[:5]) + (", ..." if len(heif) > 5 else ""))
    dangling = dangling_links(root)
    if dangling:
        logger.warning("%d link(s) in %s lead nowhere: %s", len(dangling), root,
                       _listed([str(p.relative_to(root)) for p in dangling]))
    if others and good:
        logger.info("left out %d file(s) of other types in %s: %s", sum(others.values()), root, other_types)
    if linked_again:
        logger.info("left out %d link(s) to images listed already in %s (each file is trained on once): %s",
                    len(linked_again), root, _listed([str(p.relative_to(root)) for p in linked_again]))
    if not good:
        found = f"; it holds {other_types}" if others else ""
        raise ValueError(f"no readable images ({', '.join(s.lstrip('.') for s in READ_SUFFIXES)}) found under "
                         f"{root}{found}" + (": convert camera raw files to TIFF or PNG first" if others.keys() &
                                             set(CAMERA_RAW_SUFFIXES) else ""))
    return good


def _each_file_once(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """`files` less the links (symbolic or hard) to a file listed already, and those left
    out. A file is kept under its own name where the folder has it. Files are told apart
    by device and inode, which neither a link's spelling nor a file system's case changes."""
    first: dict[tuple[int, int], Path] = {}
    for path in sorted(files, key=lambda p: (p.is_symlink(), p)):
        st = path.stat()
        first.setdefault((st.st_dev, st.st_ino), path)
    kept = set(first.values())
    return [p for p in files if p in kept], [p for p in files if p not in kept]


def dangling_links(root: Path) -> list[Path]:
    """Links under `root` (outside hidden folders) whose target does not exist."""
    found = []
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / n for n in names + dirs if not n.startswith(".")
                  and os.path.islink(os.path.join(top, n)) and not os.path.exists(os.path.join(top, n))]
    return sorted(found)


# Images this many times a crop's area, and of at least this many megapixels, are decoded
# whole for each crop: loading, not the GPU, then sets the pace (a 2K PNG takes some 85 ms
# for one 256 px crop). Smaller ones decode fast enough whatever the crop: 0.4 MP JPEGs
# fed 128 px crops to an H200 at 320 a second with 14 loader workers.
LARGE_IMAGE_CROPS = 16
LARGE_IMAGE_MP = 1.0


def warn_image_sizes(files: list[Path], resolution: int, tiles_hint: bool = True,
                     sizes: dict[Path, tuple[int, int]] | None = None, purpose: str = "training") -> None:
    """Images smaller than the crop are scaled up to it (`SRDataset._crop`), so their "HR"
    is an interpolation: in a training set that teaches the model to make blur, in a
    validation set (`purpose` "validation") it scores the model against blur. Say so, once;
    when every image is smaller, the crop size is a mistake: refuse it. Training images far
    larger than the crop (LARGE_IMAGE_CROPS, LARGE_IMAGE_MP) are said with the way to load
    them faster: tiles cut once. `sizes`: what `scan_image_sizes` found, so that no header
    is read twice."""
    known, measured = sizes or {}, []
    for path in files:  # the scan's sizes where given, else from the headers
        try:
            measured.append((known[path] if path in known else _checked_size(path), path))
        except Exception:  # changed since the scan: the loader skips it
            continue
    small = sorted((min(size), path) for size, path in measured if min(size) < resolution)
    flag, harm = ("--resolution", "teach blur") if purpose == "training" else \
        (f"--{purpose}_resolution", "score the model against blur")
    if small and len(small) == len(measured):  # a flag mistake, not a few odd images: stop before training on blur
        fits = small[-1][0]
        raise ValueError(f"all {len(files)} {purpose} images are smaller than the {resolution} px crop (the largest "
                         f"fits {fits} px); scaled up, they would {harm}: use a {flag} of at most {fits}")
    if small:
        side, path = small[0]
        logger.warning("%d of %d %s images are smaller than the %d px crop and are scaled up to it, which would %s "
                       "(smallest: %s, %d px); use a smaller %s or leave them out",
                       len(small), len(files), purpose, resolution, harm, path.name, side, flag)
    mean = sum(w * h for (w, h), _ in measured) / max(1, len(measured))
    if tiles_hint and purpose == "training" and mean >= max(LARGE_IMAGE_CROPS * resolution ** 2, LARGE_IMAGE_MP * 1e6):
        logger.warning("the training images average %.1f MP, %d times a %d px crop, and each crop decodes its whole "
                       "image: loading may not keep up with a GPU. Cut them once into tiles (python "
                       "trainer/make_tiles.py --input_dir ... --output_dir ...; about 10x faster loading) and train "
                       "on those", mean / 1e6, mean / resolution ** 2, resolution)


REPORTED_FAILURES = 3  # unreadable files said by one item's search for a readable one
GONE_AFTER_FAILURES = 10  # that many vanished files in a row: the folder is gone, not a few files
SHARE_WAITS = (5.0, 15.0, 40.0)  # seconds waited for a vanished folder to come back before the run stops


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
                 repeats: int = 1, realesrgan_config: RealESRGANConfig | None = None,
                 files: list[Path] | None = None, purpose: str = "training") -> None:
        """`files`: what `scan_images(root)` found, where it is known already (one process
        scans, and the others of a run take its list, so that all train on the same files).
        `purpose` names the images in messages ("validation" for a validation folder)."""
        # Checked here, in the main process, not at the first item in a DataLoader worker.
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; choose one of {', '.join(DEGRADATIONS)}")
        if resolution % scale:
            raise ValueError(f"resolution {resolution} must be a multiple of the scale {scale}")
        if repeats < 1:
            raise ValueError(f"repeats must be 1 or more, not {repeats}")
        self.root = Path(root)
        self.files = scan_images(root) if files is None else list(files)
        self.repeats = repeats
        self.resolution, self.scale, self.degradation, self.sigma_y = resolution, scale, degradation, sigma_y
        self.random_flip, self.center_crop = random_flip, center_crop
        self.realesrgan_config = realesrgan_config
        self.seed, self.epoch = seed, 0
        self.purpose = purpose

    @property
    def files(self) -> list[Path]:
        return self._files

    @files.setter
    def files(self, files: list[Path]) -> None:
        self._files = files
        # Which files stopped reading since the scan, in shared memory: every loader worker (and
        # the workers of later epochs) skips them without trying, and each is said once per run.
        self._unreadable = torch.zeros(len(files), dtype=torch.bool).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def unreadable(self, file_index: int) -> bool:
        """Whether `files[file_index]` failed to load in this run (its items come from the next file)."""
        return bool(self._unreadable[file_index])

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def _load(self, index: int, waited: bool = False) -> torch.Tensor:
        # A file that passed the scan can still fail now (a damaged body, changed on disk
        # since): say it and use the next one, so that a bad file never stops a run.
        failed: list[int] = []
        for k in range(len(self.files)):
            i = (index + k) % len(self.files)
            if self._unreadable[i]:
                continue
            try:
                image, _ = load_image(self.files[i])
                return image[0]
            except Exception as e:
                self._unreadable[i] = True
                failed.append(i)
                if len(failed) <= REPORTED_FAILURES:
                    load_logger.warning("skipping unreadable %s image: %s", self.purpose, e)
                if len(failed) == GONE_AFTER_FAILURES and all(not self.files[j].exists() for j in failed):
                    break  # the folder itself, not a few files
        # Every file failed, now or before: the folder has gone (wait for it), or none reads any more.
        gone = self.files[failed[0] if failed else index % len(self.files)]
        if gone.exists():
            raise RuntimeError(f"none of the {len(self.files)} {self.purpose} images in {self.root} can be read any more")
        if not waited and self._comes_back(gone):
            self._unreadable[:] = False  # every file gets another try: a damaged one is found again
            return self._load(index, waited=True)
        raise RuntimeError(
            f"{self.purpose} images are gone (such as {gone}): is {self.root} still there (a network share, a removed "
            f"disk)? The run stops; its newest checkpoint is kept: go on with --resume_from_checkpoint latest once "
            f"the images are back")

    @staticmethod
    def _comes_back(path: Path) -> bool:
        """Whether a vanished file is back within a minute (a network share reconnecting)."""
        for wait in SHARE_WAITS:
            if path.exists():
                return True
            time.sleep(wait)
        return path.exists()

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
