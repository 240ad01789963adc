"""Where the command line writes its results: one output path per input image and t
(`output_paths`), refusing to replace an input or to write two results to one name (as
macOS and Windows compare names too), and the output folders checked as writable before
any image is computed (`check_writable`)."""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path

from .files import ATOMIC_NAME_EXTRA, file_in_the_way
from .images import IMAGE_SUFFIXES

# Image names `-o` cannot write (anything else without a writable suffix is a folder).
UNWRITABLE_SUFFIXES = (".gif", ".jpe", ".jfif", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".ico", ".tga", ".ppm",
                       ".pgm", ".pbm", ".psd", ".exr", ".hdr", ".dng", ".raw")


def names_a_file(out: Path) -> bool:
    """Whether `-o` names the output file (one input, photo_t0.5.png for each t) rather
    than a folder."""
    return out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()


def output_paths(inputs: list[str], files: list[Path], out: Path, overwrite: bool = False,
                 fmt: str | None = None, tags: list[str] | None = None) -> list[Path]:
    """One output path per input file and tag (file-major): `out` itself for a single file
    with an image suffix, else files under the folder `out` (sub-folders of input folders
    kept), named with the suffix of `fmt` (default png; "same": the input's, where it can be
    written, else .png), each tag before the suffix. A source image is replaced only by its own
    result and only with `overwrite`; never by another image's."""
    single = len(files) == 1 and len(inputs) == 1 and Path(inputs[0]).is_file()
    if fmt is None:
        fmt = "png"
    elif single and names_a_file(out) and fmt not in ("same", out.suffix.lower().lstrip(".")) \
            and (fmt, out.suffix.lower()) not in (("jpg", ".jpeg"), ("tif", ".tiff")):
        raise ValueError(f"--format {fmt} is for an output folder; -o {out.name} names the file, and its suffix "
                         f"sets its type: name it {out.with_suffix('.' + fmt).name}, or leave out --format")
    if out.suffix.lower() in UNWRITABLE_SUFFIXES and not out.is_dir():  # an image name, not a folder
        raise ValueError(f"-o {out}: cannot write {out.suffix!r} images; use one of {', '.join(IMAGE_SUFFIXES)}")
    if single and not out.exists() and out.suffix[1:].isalpha() and out.suffix.lower() not in IMAGE_SUFFIXES:
        # a mistyped image name ("photo.pnj") would otherwise become a folder of that name
        raise ValueError(f"-o {out}: {out.suffix!r} is not an image type this writes ({', '.join(IMAGE_SUFFIXES)}); "
                         f"for a folder, make it first or name it without that suffix")
    if names_a_file(out) and not single:
        raise ValueError(f"-o {out} names one file, but the input is {len(files)} image(s) from "
                         f"{'a folder' if any(Path(i).is_dir() for i in inputs) else 'several files'}; give a folder for -o")
    targets = [out] if single and names_a_file(out) else _folder_outputs(inputs, files, out, fmt)
    tags = tags or [""]
    targets = [tagged(t, tag) for t in targets for tag in tags]
    # By the file system's own identity: "A.PNG" for "a.png" on macOS or Windows is the same file.
    source_ids = [_file_id(f) for f in files]
    target_ids = [_file_id(t) for t in targets]
    inputs_at = {key: f for f, key in zip(files, source_ids) if key is not None}
    replaced = [inputs_at.get(key) if key is not None else None for key in target_ids]
    for src, src_id, t, t_id, victim in zip((f for f in files for _ in tags), (k for k in source_ids for _ in tags),
                                            targets, target_ids, replaced):
        # read later as an input: lost, or an upscale's upscale (its own source, under any of its names, is not)
        if victim is not None and t_id != src_id:
            raise ValueError(f"-o {out}: {t.name}, the result of {src.name}, would replace the input image "
                             f"{victim.name}; choose another output folder")
    if not overwrite:
        clash = next((t for t, victim in zip(targets, replaced) if victim is not None), None)
        out_id = _file_id(out)
        if clash is not None or out_id is not None and out_id in {_file_id(Path(i)) for i in inputs if Path(i).is_dir()}:
            why = "it is an input folder" if clash is None else f"{clash.name} would replace the input image itself"
            raise ValueError(f"-o {out}: {why}; choose another output, or pass --overwrite to replace the source images")
    return targets


def _file_id(path: Path) -> tuple[int, int] | None:
    """What the file system knows a file by (device, inode), or None where there is none yet."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _name_key(path: Path) -> str:
    """A path as macOS compares names (Windows too, but for the accents): without case
    (`lower`, as they fold it: "ß" stays apart from "ss"), and accents however encoded (NFC,
    NFD), so that results named apart on Linux stay apart there too."""
    return unicodedata.normalize("NFC", str(path)).lower()


def _folder_outputs(inputs: list[str], files: list[Path], out: Path, fmt: str = "png") -> list[Path]:
    targets, roots = [], []
    for f in files:
        # the outermost input folder that holds it (a folder given with one of its own sub-folders mirrors as the whole)
        root = min((Path(i) for i in inputs if Path(i).is_dir() and Path(i) in f.parents), key=lambda r: len(r.parts),
                   default=None)
        rel = f.relative_to(root) if root is not None else Path(f.name)
        same = f.suffix.lower() if f.suffix.lower() in IMAGE_SUFFIXES else ".png"
        targets.append(out / rel.with_suffix(same if fmt == "same" else f".{fmt}"))
        roots.append(root)
    seen: dict[str, tuple[Path, Path | None, Path]] = {}
    clashes, types_differ, holders = [], False, set()
    for f, t, root in zip(files, targets, roots, strict=True):
        if (key := _name_key(t)) in seen:
            other, other_root, other_t = seen[key]
            where = "macOS and Windows" if str(t).lower() == str(other_t).lower() else "macOS"
            both = t if t == other_t else f"{other_t} and {t.name} (one file on {where})"
            clashes.append(f"{other} and {f} would both write {both}")
            types_differ |= other.suffix.lower() != f.suffix.lower()
            # two sibling input folders (a card's 100CANON and 101CANON): their parent keeps them apart
            sibling = root is not None and other_root is not None and root.resolve() != other_root.resolve() \
                and root.resolve().parent == other_root.resolve().parent
            holders.add(root.resolve().parent if sibling else None)
        seen[key] = (f, root, t)
    if clashes:
        (holder,) = holders if len(holders) == 1 else (None,)
        raise ValueError("; ".join(clashes[:10]) + (f"; and {len(clashes) - 10} more" if len(clashes) > 10 else "")
                         + ": give them distinct names (or give each once)"
                         + (f"; or give the folder that holds them, {holder}, whose sub-folders the output mirrors"
                            if holder is not None else "")
                         + ("; --format same keeps each one's own type" if fmt != "same" and types_differ else ""))
    return targets


def check_writable(targets: list[Path]) -> list[Path]:
    """Create the output folders and write a scratch file in each, so an output that cannot
    be written is reported before any image is computed. Returns the folders it made,
    innermost first, for `remove_empty_folders` after a run that wrote nothing there."""
    by_folder: dict[Path, list[Path]] = {}
    for t in targets:
        by_folder.setdefault(t.parent, []).append(t)
    made: list[Path] = []
    try:
        for folder, named in by_folder.items():
            _check_folder(folder, named, made)
    except ValueError:
        remove_empty_folders(_innermost_first(made))
        raise
    return _innermost_first(made)


def _innermost_first(folders: list[Path]) -> list[Path]:
    return sorted(set(folders), key=lambda f: len(f.parts), reverse=True)


def _check_folder(folder: Path, named: list[Path], made: list[Path]) -> None:
    """`folder` made (each folder made added to `made`) and written to, and `named` checked
    against the system's name and path limits."""
    try:
        made += [f for f in (folder, *folder.parents) if not f.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        try:
            name_max = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # not on every system
            name_max = 255
        path_max, where = windows_path_limit(), folder.resolve()
        for t in named:  # written under a temporary name 14 bytes longer (atomic_write)
            if len(os.fsencode(t.name)) + ATOMIC_NAME_EXTRA > name_max:
                raise ValueError(f"{t.name}: the name is too long to write in {folder} ({len(os.fsencode(t.name))} "
                                 f"bytes; at most {name_max - ATOMIC_NAME_EXTRA}): rename the input, or name a "
                                 f"shorter output with -o")
            if path_max is not None and len(str(where / t.name)) + ATOMIC_NAME_EXTRA > path_max:
                raise ValueError(f"{where / t.name}: the path is longer than Windows opens ({path_max} "
                                 f"characters with the temporary name's {ATOMIC_NAME_EXTRA}): choose a shorter -o "
                                 f"folder, or enable long paths (LongPathsEnabled) in Windows")
    except OSError as e:
        blocking = file_in_the_way(folder)
        why = f"{blocking} is a file, not a folder" if blocking is not None else e.strerror or e
        raise ValueError(f"cannot write to {folder}: {why}") from None


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove those of `folders` (innermost first) that are empty: what a failed run made
    and did not use is not left behind."""
    for folder in folders:
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            pass


def windows_path_limit() -> int | None:
    """The longest path Windows opens here: 259 characters unless long paths are enabled
    (the LongPathsEnabled registry value); None on other systems."""
    if os.name != "nt":
        return None
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            if winreg.QueryValueEx(key, "LongPathsEnabled")[0] == 1:
                return None
    except OSError:
        pass
    return 259


def t_tag(t: float) -> str:
    return f"_t{t:g}"


def tagged(path: Path, tag: str) -> Path:
    """`photo.png` with tag "_t0.5" -> `photo_t0.5.png`."""
    return path.with_name(f"{path.stem}{tag}{path.suffix}")
