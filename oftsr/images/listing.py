"""Finding the images in folders given on a command line or to a training set."""

from __future__ import annotations

import os
from pathlib import Path

from .formats import CAMERA_RAW_SUFFIXES, READ_SUFFIXES

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
