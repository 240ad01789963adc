"""Teacher-made training pairs for FluxSR-style distillation: (start noise, teacher end
point, LR) triples, written as `.safetensors` shards beside a `pairs.json` manifest.

Pair k is fully determined by (seed, k): its LR crop is item k of the HR data set (crop,
flip and degradation seeded by the data set, epoch k // len), its start noise comes from
a generator seeded by (seed, k), and the teacher integrates the flow from
x0 = noise_augment(lr, sigma_p, noise). Shards are written under a temporary name and
renamed when complete, so an interrupted run resumes at the first missing shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_write
from ..flow import noise_augment, time_grid
from ..model import OFTSRModel
from ..sampling import get_sampler
from .data import SRDataset
from .degradations import SIGMA_Y

MANIFEST = "pairs.json"
FORMAT = "oftsr-pairs"
FORMAT_VERSION = 1
KEYS = ("noise", "lr", "target")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def pair_noise(seed: int, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The start noise of pair k: its own generator, independent of every other pair."""
    state = int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0])
    return torch.randn(shape, generator=torch.Generator().manual_seed(state))


def pair_inputs(data: SRDataset, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, lr) of pair k, each (3, H, W)."""
    data.set_epoch(k // len(data))
    lr = data[k % len(data)]["lr"]
    return pair_noise(seed, k, tuple(lr.shape)), lr


@torch.no_grad()
def teacher_end_points(teacher: OFTSRModel, noise: torch.Tensor, lr: torch.Tensor, *, steps: int,
                       solver: str) -> torch.Tensor:
    """The teacher's multi-step sample from x0 = noise_augment(lr, sigma_p, noise)."""
    x0 = noise_augment(lr, teacher.sigma_p, noise)
    return get_sampler(solver)(lambda x, t: teacher.velocity(x, lr, t), x0, time_grid(steps))


def _write_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


# Settings that pairs.json records since a later version, and what a folder made before had.
RECORDED_LATER = {"teacher_digest": None, "sigma_y": f"{SIGMA_Y:g}"}


def write_manifest(out_dir: Path, settings: dict) -> None:
    """Create `pairs.json`, or check that the one there was made with the same settings
    (a resumed run must not mix pairs of two configurations)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        # Folders made before a setting was recorded: they had the default, or (the teacher's
        # digest) nothing to compare, and still resume.
        for key, before in RECORDED_LATER.items():
            if key not in old and key in settings:
                settings = {k: v for k, v in settings.items() if k != key} if before is None else settings
                old = old if before is None else {**old, key: before}
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise ValueError(f"{out_dir} holds pairs made with other settings {diff} (old, new): "
                             f"use another output folder or the same settings")
        return
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def make_shard(teacher: OFTSRModel, data: SRDataset, out_dir: Path, shard: int, *, num_pairs: int, shard_size: int,
               seed: int, steps: int, solver: str, batch_size: int) -> Path | None:
    """Write shard `shard` (pairs shard*shard_size ...), unless it is already complete.
    Returns its path, or None when it was there already."""
    path = out_dir / shard_name(shard)
    if path.is_file():
        return None
    first = shard * shard_size
    ks = list(range(first, min(first + shard_size, num_pairs)))
    noise, lr = (torch.stack(x) for x in zip(*(pair_inputs(data, seed, k) for k in ks)))
    device = teacher.device
    target = torch.cat([teacher_end_points(teacher, n.to(device), c.to(device), steps=steps, solver=solver).cpu()
                        for n, c in zip(noise.split(batch_size), lr.split(batch_size), strict=True)])
    _write_atomic({"noise": noise, "lr": lr, "target": target.float()}, path, {"first": str(first), "count": str(len(ks))})
    return path


def make_pairs(teacher: OFTSRModel, data: SRDataset, out_dir: str | os.PathLike, *, num_pairs: int, shard_size: int,
               seed: int, steps: int, solver: str, batch_size: int,
               shards: Callable[[int], bool] = lambda i: True, log: Callable[[str], None] = print) -> int:
    """All shards `shards(i)` selects (a process's share), skipping complete ones.
    Returns the number written."""
    if num_pairs < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(f"num_pairs, shard_size and batch_size must be >= 1, got {num_pairs}, {shard_size}, {batch_size}")
    out_dir = Path(out_dir)
    written = 0
    total = -(-num_pairs // shard_size)
    for i in range(total):
        if not shards(i):
            continue
        if make_shard(teacher, data, out_dir, i, num_pairs=num_pairs, shard_size=shard_size, seed=seed, steps=steps,
                      solver=solver, batch_size=batch_size) is not None:
            written += 1
            log(f"wrote {shard_name(i)} ({i + 1}/{total})")
    return written


def pairs_resolution(root: str | os.PathLike) -> int | None:
    """The crop size of the pairs in `root`, or None where it holds no manifest."""
    path = Path(root) / MANIFEST
    resolution = read_manifest(path).get("resolution") if path.is_file() else None
    return None if resolution is None else int(resolution)


def read_manifest(path: Path) -> dict:
    """A `pairs.json` this version reads, or a ValueError that names it."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is unreadable ({e}); make the pairs again with trainer/make_pairs.py") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} is not a pairs manifest this version reads")
    return manifest


class PairDataset(torch.utils.data.Dataset):
    """The pairs of a `make_pairs` folder; items are dicts of `noise`, `lr`, `target`,
    each (3, H, W). Refuses an incomplete folder (finish it by running make_pairs again)."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a pairs folder (no {MANIFEST}); make one with trainer/make_pairs.py")
        self.manifest = read_manifest(path)
        n, size = int(self.manifest["num_pairs"]), int(self.manifest["shard_size"])
        self.paths = [root / shard_name(i) for i in range(-(-n // size))]
        missing = [p.name for p in self.paths if not p.is_file()]
        if missing:
            raise ValueError(f"{root} is incomplete: {len(missing)} of {len(self.paths)} shards missing "
                             f"(first {missing[0]}); run trainer/make_pairs.py again with the same settings to finish it")
        self.num_pairs, self.shard_size = n, size
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.num_pairs

    def set_epoch(self, epoch: int) -> None:  # the pairs are fixed; the loader shuffles
        pass

    def __getstate__(self) -> dict:  # open file handles stay in the process that opened them
        return {**self.__dict__, "_handles": {}}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_pairs:
            raise IndexError(index)
        shard, j = divmod(index, self.shard_size)
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.paths[shard]), framework="pt", device="cpu")
        f = self._handles[shard]
        return {k: f.get_slice(k)[j] for k in KEYS}
