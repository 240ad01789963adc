"""Files: written atomically (a crash, kill -9 or power cut never leaves a truncated file
under the final name), replaced only when asked, and identified by their sha256."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


ATOMIC_NAME_EXTRA = len(".") + 2 * 4 + len("..tmp")  # what `atomic_write`'s temporary name adds: 14 bytes


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the folder of `path`; once the block has written it, it
    is renamed to `path` in one step (same file system), else removed. The folder is
    created if needed. The result has the usual permissions, not a temp file's private ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"  # ATOMIC_NAME_EXTRA bytes more
        try:
            # Created with 0o666, so the kernel applies the umask and the mode it gives is the
            # usual one for a new file (reading the umask would mean setting it, which races
            # with files other threads create meanwhile).
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        mode = tmp.stat().st_mode & 0o777
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a private one
        sync_to_disk(tmp)  # on disk before it takes the name: after a power cut, the old file or the whole new one
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name != "nt":  # the rename itself, in the folder's entry (Windows opens no folder to sync)
        sync_to_disk(path.parent)


FLUSH_NEEDS_WRITE = os.name == "nt"  # Windows flushes only a handle opened for writing (and cannot open folders)


def sync_to_disk(path: str | os.PathLike) -> None:
    """fsync one file or folder, where the system allows: a file system that cannot sync
    (some network and FUSE ones), or a file this user may not open, stays as written."""
    path = Path(path)
    try:
        # read-only where that flushes: a finished file may be read-only under the user's umask
        fd = os.open(path, os.O_RDWR if FLUSH_NEEDS_WRITE and path.is_file() else os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# On Windows a file open in another program (a viewer, a virus scanner or indexer for a
# moment) cannot be replaced: waited for briefly, in seconds, before it is an error.
REPLACE_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8) if os.name == "nt" else ()


def _replace(tmp: Path, path: Path) -> None:
    for wait in REPLACE_WAITS:
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            time.sleep(wait)
    try:
        os.replace(tmp, path)
    except PermissionError as e:  # named by the file the user asked for, not the temporary one
        raise PermissionError(e.errno, f"{e.strerror} (is it open in another program?)", str(path)) from None


def file_in_the_way(folder: str | os.PathLike) -> Path | None:
    """The file (not a folder) at `folder` or at one of its parents, which stops the folder
    being made, or None."""
    folder = Path(folder)
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, hex, read in 1 MiB blocks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_new_file(path: str | os.PathLike, overwrite: bool) -> None:
    """A model file to write: named .safetensors, what it is written as (tools that pick a
    loader by the name would take a .pth for a pickle), and replaced only when asked
    (`--overwrite`): it may be the only copy of a trained run."""
    if Path(path).suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: the model file is written as safetensors; name it "
                         f"{Path(path).with_suffix('.safetensors').name}")
    if Path(path).exists() and not overwrite:
        raise ValueError(f"{path} exists; choose another name, or pass --overwrite to replace it")
