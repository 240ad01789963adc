"""Evaluation (what `oftsr eval` runs): degrade HR photographs with the model's own
degradation (or take real LR/HR pairs as given), super-resolve them, and tabulate
fidelity and realism (Markdown + CSV) with the fidelity-realism curve."""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..resample import upsample_lr
from .degradations import SIGMA_Y, degradation_settings, degrade
from .realesrgan import REALESRGAN_CONFIGS
from ..checkpoint import read_metadata
from ..color import split_alpha
from ..files import sha256_file
from ..images import list_images, load_image
from ..checks import check_t
from ..inference import sample, upscale
from .metrics import LPIPS, LPIPSUnavailable, quality
from ..model import OFTSRModel

COLUMNS = ["method", "t", "NFE", "PSNR RGB", "PSNR Y", "SSIM Y", "LPIPS", "realism SWD", "s/img"]
# The columns that hold a Row's scores, and the score each holds.
SCORE_COLUMNS = {"PSNR RGB": "psnr", "PSNR Y": "psnr_y", "SSIM Y": "ssim", "LPIPS": "lpips", "realism SWD": "swd",
                 "s/img": "sec"}


@dataclass
class Row:
    method: str
    t: float | None = None
    nfe: float | None = None  # network evaluations per image (a mean where they vary: the adaptive solver)
    scores: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("psnr", "psnr_y", "ssim", "lpips", "swd", "sec")})

    def mean(self, key: str) -> float:
        v = self.scores[key]
        return sum(v) / len(v) if v else math.nan

    @property
    def is_interpolation(self) -> bool:
        """The first row: the LR brought to HR size, no network (it has no time)."""
        return self.method in INTERPOLATION_ROWS.values()


# The first row, named for what it is: the LR up-sampled as the models' degradation
# defines it (`upsample_lr`), which is block replication for average pooling.
INTERPOLATION_ROWS = {"bicubic": "bicubic", "noisy_avgpool": "nearest", "realesrgan": "bicubic"}


def _rgb(path: Path) -> torch.Tensor:
    # with alpha: the colour under transparency filled, as the models see an input with alpha
    image = load_image(path)[0]
    if image.shape[1] in (2, 4) and image[:, -1].min() < 1:  # what is scored is not the file's own colour there
        warnings.warn(f"{path.name} has transparent pixels: scored on its colour with them filled from the visible "
                      f"ones (as the models see it); flatten it or leave it out for numbers to quote", stacklevel=2)
    return split_alpha(image)[0]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """An image in [0, 1] as an 8-bit file holds it: what is scored is what would be saved."""
    return (x.clamp(0, 1) * 255).round() / 255


def image_seed(seed: int, name: str) -> int:
    """The seed of an image's LR degradation: from its name, so the LR of an image does not
    depend on which other files are in the folder."""
    return seed * 1_000_003 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _images(folder: str | Path, exclude: Path | None) -> list[Path]:
    """The images under `folder`, without those under `exclude` (the output folder) when
    it lies inside `folder` (an output folder above the data holds it: nothing is left out)."""
    found = list_images([folder])
    exclude = None if exclude is None else Path(exclude).resolve()
    if exclude is not None and Path(folder).resolve() == exclude:  # its curve.png would be scored next time
        raise ValueError(f"the output folder is the data folder {folder}: what an evaluation writes there (curve.png) "
                         f"would be read as an image by the next; write elsewhere, e.g. {Path(folder) / 'eval'}")
    if exclude is not None and Path(folder).resolve() in exclude.parents:
        found = [p for p in found if exclude not in p.resolve().parents]
    return found


MIN_SIDE = 32  # pixels of an HR image: the measures need room for their windows after the border crop


def _name(path: Path, folder: Path) -> str:
    """An image's name in logs, per_image.csv and its LR seed: its path under the data
    folder, so same-named files in two subfolders stay two images (a file at the top keeps
    its plain name, and so its seed)."""
    return path.relative_to(folder).as_posix() if folder.is_dir() else path.name


def _read_all(*groups: tuple[list[Path], Path]) -> list[list[torch.Tensor]]:
    """The RGB images of each group (paths, their folder), or one error that names every
    file of every group that could not be read (and why): a mean over the set without them
    would be a number for another set."""
    read, failed, total = [], [], 0
    for paths, folder in groups:
        images = []
        for path in paths:
            try:
                images.append(_rgb(path))
            except (ValueError, OSError) as e:
                name = _name(path, folder) if len(groups) == 1 else f"{folder.name}/{_name(path, folder)}"
                failed.append(f"{name} ({str(e).removeprefix(f'{path.name}: ')})")
        read.append(images)
        total += len(paths)
    if failed:
        where = " and ".join(str(folder) for _, folder in groups)
        raise ValueError(f"{len(failed)} of the {total} images in {where} could not be read: "
                         + "; ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
                         + ". Repair them or move them out of the folder, so that the scores are over the set meant")
    return read


def _hr_images(data: str | Path, scale: int, exclude: Path | None = None) -> list[tuple[str, torch.Tensor]]:
    out = []
    paths = _images(data, exclude)
    (images,) = _read_all((paths, Path(data)))
    for path, image in zip(paths, images, strict=True):
        h, w = image.shape[-2] // scale * scale, image.shape[-1] // scale * scale  # mod-crop
        out.append((_name(path, Path(data)), image[..., :h, :w], image.shape[-2:]))
    if not out:
        raise ValueError(f"no images in {data}")
    _refuse_small([(name, size) for name, _, size in out])  # before an LR is made of one: 3 px at x4 is none
    return [(name, image) for name, image, _ in out]


def _refuse_small(sizes: list[tuple[str, tuple[int, int]]]) -> None:
    """Refuse images (name, (height, width)) with a side under MIN_SIDE, all named at once."""
    small = [f"{name} ({w}x{h})" for name, (h, w) in sizes if min(h, w) < MIN_SIDE]
    if small:
        raise ValueError(f"images smaller than {MIN_SIDE} px on a side cannot be scored: {', '.join(small)}")


def images_sha256(folder: str | Path, exclude: Path | None = None) -> str:
    """One sha256 over the images an evaluation reads from `folder`: each one's path under
    it and its file's sha256, so that two runs can tell whether they scored the same files."""
    digest = hashlib.sha256()
    for path in sorted(_images(folder, exclude), key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _subfolders(data: str | Path) -> list[Path]:
    data = Path(data)
    return sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")) if data.is_dir() else []


# Real LR/HR sets' subfolders, in any case: HR/ and LR/, or BasicSR's GT/ and LQ/
PAIR_NAMES = (("hr", "lr"), ("gt", "lq"))
# A part of a folder name (between separators) that names LR images: LR, LQ, LRbicx4, X4LR
LR_NAME = re.compile(r"(lr|lq)(bic)?(x?\d+)?|x\d+(lr|lq)")


def paired_folders(data: str | Path) -> tuple[Path, Path] | None:
    """(HR, LR) subfolders of `data` when it holds both (PAIR_NAMES: the layout of real
    LR/HR sets)."""
    named = {p.name.lower(): p for p in _subfolders(data)}
    return next(((named[hr], named[lr]) for hr, lr in PAIR_NAMES if hr in named and lr in named), None)


def _refuse_lr_folders(data: str | Path, exclude: Path | None) -> None:
    """HR images are about to be degraded: a subfolder named as LR images (LR/, lr_x4/,
    DIV2K_valid_LR_bicubic/, BasicSR's LRbicx4/ and LQ/) would be shrunk once more and scored as HR, without a word.
    `exclude` (the output folder, not read) may be named as the user likes."""
    exclude = None if exclude is None else Path(exclude).resolve()
    lr_like = [p.name for p in _subfolders(data) if p.resolve() != exclude
               and any(LR_NAME.fullmatch(part) for part in re.split(r"[^a-z0-9]+", p.name.lower()))]
    if lr_like:
        raise ValueError(f"{data} holds {', '.join(f'{n}/' for n in lr_like)}, named as low-resolution images, which "
                         f"would be scored as HR images, shrunk once more: for real pairs name the LR folder with "
                         f"--lr-dir and the HR folder as the data (or name the two subfolders HR and LR); else point "
                         f"the data at the HR images' own folder")


def image_pairs(hr_dir: str | Path, lr_dir: str | Path, scale: int,
                exclude: Path | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, LR, HR) for real pairs: files matched by their path without suffix under each
    folder, the LR used as given. An HR image may exceed `scale` times its LR by less than
    `scale` pixels (it is cropped, as the mod-crop does); any other size is an error."""
    def by_key(folder: Path) -> dict[Path, Path]:
        return {p.relative_to(folder).with_suffix(""): p for p in _images(folder, exclude)}

    hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
    for folder in (hr_dir, lr_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
    hrs, lrs = by_key(hr_dir), by_key(lr_dir)
    if not hrs:
        raise ValueError(f"no images in {hr_dir}")
    unmatched = [f"{hrs[k].relative_to(hr_dir)} (HR)" for k in sorted(hrs.keys() - lrs.keys())]
    unmatched += [f"{lrs[k].relative_to(lr_dir)} (LR)" for k in sorted(lrs.keys() - hrs.keys())]
    if unmatched:
        raise ValueError(f"{len(unmatched)} image(s) without a partner of the same name in {hr_dir} / {lr_dir}: "
                         + ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""))
    out = []
    keys = sorted(hrs)
    hr_images, lr_images = _read_all(([hrs[k] for k in keys], hr_dir), ([lrs[k] for k in keys], lr_dir))
    for key, hr, lr in zip(keys, hr_images, lr_images, strict=True):
        (h, w), (H, W) = lr.shape[-2:], hr.shape[-2:]
        if H // scale != h or W // scale != w:
            raise ValueError(f"{_name(hrs[key], hr_dir)}: HR {W}x{H} is not x{scale} of its LR {w}x{h} "
                             f"(expected {w * scale}x{h * scale}); check the folders and the model's scale")
        out.append((_name(hrs[key], hr_dir), lr, hr[..., :h * scale, :w * scale]))
    return out


def degrade_image(hr: torch.Tensor, scale: int, degradation: str = "bicubic",
                  generator: torch.Generator | None = None, settings: dict | None = None) -> torch.Tensor:
    """The LR image of an HR image, both in [0, 1], as the models were trained to see it
    (`settings`: what their files record of the degradation, `recorded_degradation`)."""
    given = degradation_settings(degradation, settings or {})
    config = given.get("realesrgan_config")
    return ((degrade(hr * 2 - 1, scale, degradation, generator=generator, sigma_y=given.get("sigma_y", SIGMA_Y),
                     realesrgan_config=None if config is None else REALESRGAN_CONFIGS[config]) + 1) / 2).clamp(0, 1)


def recorded_degradation(path: str | Path, degradation: str) -> dict:
    """What a model's file records of its degradation's own settings, as its trainer used
    them: the Real-ESRGAN chain ("full" where not recorded) or the average pooling's noise."""
    return degradation_settings(degradation, read_metadata(path))


def describe_degradation(degradation: str, settings: dict) -> str:
    """e.g. "realesrgan camera chain", for titles and run.json."""
    if "realesrgan_config" in settings:
        return f"{degradation} {settings['realesrgan_config']} chain"
    if "sigma_y" in settings:
        return f"{degradation} sigma_y {settings['sigma_y']:g}"
    return degradation


def baseline_upsample(lr: torch.Tensor, scale: int, degradation: str = "bicubic") -> torch.Tensor:
    """The interpolation baseline (the first row: "bicubic", or "nearest" for average
    pooling), in [0, 1]."""
    return (upsample_lr(lr * 2 - 1, scale, degradation).clamp(-1, 1) + 1) / 2


def evaluate(models: list[OFTSRModel], data: str | Path, *, ts: list[float], steps: int = 16, solver: str = "midpoint",
             seed: int = 0, tile: int | None = None, lpips: LPIPS | None = None,
             log: Callable[[str], None] = print, baselines: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
             lr_dir: str | Path | None = None, scale: int | None = None, degradation_settings: dict | None = None,
             per_image_csv: str | Path | None = None, exclude: str | Path | None = None,
             names: list[str] | None = None) -> list[Row]:
    """One row for the interpolation baseline ("bicubic"; "nearest" for models trained on
    average pooling), one per teacher (at `steps`/`solver`), one per student and t
    (one alone, without t, for a fixed-point student: "student (flowsr)"), and one per
    baseline (name -> function from LR to SR, both in [0, 1]). A model's rows are named by
    its role, or where two share one by its entry in `names` (`model_labels` of their
    files; else numbered).

    The HR images of `data` are degraded with the models' degradation, unless the LR is
    given: `lr_dir`, or `data` holding HR/ and LR/ subfolders (real pairs, used as they are).
    `degradation_settings` are the models' own (`recorded_degradation`; default the
    trainer's defaults).
    Images under `exclude` (the output folder) are left out. Made LR images and every
    output are scored as 8-bit files hold them (`quantize`). `scale` is needed only when
    there are no models (baselines alone). `per_image_csv` receives every image's scores as
    soon as they are computed (in `<name>.partial`, renamed when the run is complete, so a
    stopped run leaves its results and a failed one never replaces a complete file)."""
    if not models and scale is None:
        raise ValueError("evaluate needs models, or the scale of the baselines")
    try:  # before any image, not after a slow teacher; as floats, which the rows are labelled with
        ts = list(dict.fromkeys(check_t(t) for t in ts))  # a t given twice is one row
    except ValueError as e:
        raise ValueError(f"ts: {e}") from None  # the CLI has checked its --t before
    scale = models[0].scale if models else scale
    degradation = models[0].degradation if models else "bicubic"
    if names is not None and len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    roles = [m.role for m in models]
    labels = names or [f"{m.role} {roles[:i + 1].count(m.role)}" for i, m in enumerate(models)]
    if any(m.scale != scale or m.degradation != degradation for m in models):
        raise ValueError("the models evaluated together must share scale and degradation, and these do not: "
                         + ", ".join(f"{label} x{m.scale} {m.degradation}" for label, m in zip(labels, models)))
    rows = [Row(INTERPOLATION_ROWS[degradation])]
    runs: list[tuple[Row, Callable[[torch.Tensor], torch.Tensor]]] = []
    for label, m in zip(labels, models):
        name = m.role if roles.count(m.role) == 1 else label
        if m.role == "teacher":
            row = Row(f"{name} ({solver})")  # its NFE is filled in as it runs: the adaptive solver's, a mean
            counts: list[int] = []
            def run(lr, m=m, row=row, counts=counts):
                info: dict = {}
                out = sample(m, lr, steps=steps, solver=solver, seed=seed, tile=tile, info=info)
                counts.append(info["nfe"])
                row.nfe = round(sum(counts) / len(counts), 1)  # shown as "31", or "37.5" where they vary
                return out
            runs.append((row, run))
        elif m.ignores_t:  # FlowSR/FluxSR: the same image at every t, so one row named by its objective
            runs.append((Row(f"{name} ({m.objective})", nfe=1), lambda lr, m=m: upscale(m, lr, seed=seed, tile=tile)))
        else:
            for t in ts:
                runs.append((Row(name, t=t, nfe=1), lambda lr, m=m, t=t: upscale(m, lr, t=t, seed=seed, tile=tile)))
    for label, run in (baselines or {}).items():
        runs.append((Row(label, nfe=1), run))
    rows += [r for r, _ in runs]

    if lr_dir is None and paired_folders(data) is not None:
        data, lr_dir = paired_folders(data)
    if lr_dir is not None:
        triples = image_pairs(data, lr_dir, scale, exclude)
    else:  # LR made from each HR image with a seed of its own, saved as an 8-bit file would be
        _refuse_lr_folders(data, exclude)
        triples = [(name, quantize(degrade_image(hr, scale, degradation, settings=degradation_settings,
                                                 generator=torch.Generator().manual_seed(image_seed(seed, name)))), hr)
                   for name, hr in _hr_images(data, scale, exclude)]
    _refuse_small([(name, hr.shape[-2:]) for name, _, hr in triples])

    device = models[0].device if models else torch.device("cpu")
    partial = None if per_image_csv is None else Path(f"{per_image_csv}.partial")
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        if partial.is_file():  # a stopped run's scores: kept, not overwritten by this run's
            kept = partial.with_name(f"{Path(per_image_csv).stem}.stopped.csv")
            os.replace(partial, kept)
            log(f"{partial.name}, a stopped evaluation's scores, kept as {kept}")
        with open(partial, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(["image", "method", "t", *SCORE_COLUMNS])
    for name, lr, hr in triples:
        outputs = [(rows[0], quantize(baseline_upsample(lr, scale, degradation)), None)]  # untimed: no network
        for row, run in runs:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = run(lr)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            outputs.append((row, quantize(out), time.perf_counter() - start))
        for row, out, sec in outputs:
            for key, value in quality(out, hr, scale, lpips).items():
                row.scores[key].append(value)
            if sec is not None:
                row.scores["sec"].append(sec)
        log(f"{name}: " + ", ".join(f"{r.method}{'' if r.t is None else f' t={r.t:g}'} {r.scores['psnr_y'][-1]:.2f} dB"
                                   for r, _, _ in outputs))
        if partial is not None:
            with open(partial, "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(
                    [name, r.method, "" if r.t is None else f"{r.t:g}",
                     *(repr(r.scores[k][-1]) if r.scores[k] else "" for k in SCORE_COLUMNS.values())]
                    for r, _, _ in outputs)
    if partial is not None:
        os.replace(partial, per_image_csv)
    return rows


def model_labels(paths: list[str | Path], reserved: Iterable[str] = ()) -> list[str]:
    """Short distinct names for model files, for rows and messages: the file's stem, with as
    many of its folders as tell it apart from the other files' (runs/a/student.safetensors
    and runs/b/student.safetensors are "a/student" and "b/student"), or from a `reserved`
    name (another row's, such as "bicubic"); one file given more than once is numbered
    ("student (1)", "student (2)")."""
    parts = [Path(os.path.abspath(p)).with_suffix("").parts for p in paths]  # as given: a link by its own name
    files = [Path(p).resolve() for p in paths]  # one file, however named
    depth = [1] * len(parts)
    reserved = set(reserved)

    def label(i: int) -> str:
        return "/".join(parts[i][-depth[i]:])

    grown = True
    while grown:  # one folder more for each label shared with another file, or with another row
        labels = [label(i) for i in range(len(parts))]
        grown = False
        for i, own in enumerate(labels):
            clash = own in reserved or any(own == other and files[j] != files[i] for j, other in enumerate(labels))
            if clash and depth[i] < len(parts[i]) - 1:  # never the file system's root
                depth[i] += 1
                grown = True
    labels = [label(i) for i in range(len(parts))]
    return [f"{own} ({labels[:i + 1].count(own)})" if labels.count(own) > 1 else own for i, own in enumerate(labels)]


def _cells(row: Row, lpips_note: str | None) -> list[str]:
    lp = lpips_note or (f"{row.mean('lpips'):.4f}" if row.scores["lpips"] else "")  # as results.csv: empty, not nan
    return [row.method, "" if row.t is None else f"{row.t:g}", "" if row.nfe is None else f"{row.nfe:g}",
            f"{row.mean('psnr'):.2f}", f"{row.mean('psnr_y'):.2f}", f"{row.mean('ssim'):.4f}", lp,
            f"{row.mean('swd'):.2f}", f"{row.mean('sec'):.3f}" if row.scores["sec"] else ""]


def _csv_score(row: Row, key: str, lpips_note: str | None) -> str:
    """A mean at full precision for results.csv; the note where LPIPS did not run, empty
    where there is no score (the interpolation's time)."""
    if key == "lpips" and lpips_note:
        return lpips_note
    if not row.scores[key]:
        return ""
    return repr(row.mean(key))


def write_tables(rows: list[Row], out_dir: Path, lpips_note: str | None, title: str,
                 lr_given: bool = False) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / "results.md", out_dir / "results.csv"
    lines = [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r, lpips_note)) + " |" for r in rows]
    lines += ["", ("Outputs scored as 8-bit images (the LR as given)" if lr_given else
                   "Outputs (and made LR) scored as 8-bit images") + ". PSNR RGB: whole image; PSNR Y and SSIM Y: BT.601 "
              "luma with a border crop equal to the scale, SSIM over the valid window positions; realism SWD: sliced "
              "Wasserstein distance of 4096 Laplacian-pyramid patches per image (lower = more realistic)."]
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:  # full precision: the means, not their display
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(_cells(r, lpips_note)[:3] + [_csv_score(r, k, lpips_note) for k in SCORE_COLUMNS.values()]
                    for r in rows)
    return md, csv_path


def read_table(csv_path: str | Path) -> list[Row]:
    """The rows of a `results.csv` written by `write_tables`, each holding its means, so
    runs made separately (a slow teacher once, students per checkpoint) can be plotted
    together with `plot_curve`."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"{csv_path} is not an `oftsr eval` results.csv (columns {reader.fieldnames})")
        for rec in reader:
            row = Row(rec["method"], t=float(rec["t"]) if rec["t"] else None, nfe=float(rec["NFE"]) if rec["NFE"] else None)
            for column, key in SCORE_COLUMNS.items():
                try:
                    row.scores[key] = [float(rec[column])]
                except ValueError:  # empty, or a note such as "n/a: weights missing"
                    row.scores[key] = []
            rows.append(row)
    return rows


def plot_curve(rows: list[Row], path: Path, title: str) -> Path:
    """PSNR (Y) against the realism measure: the student's t points joined in order;
    rows without t (bicubic, teachers, fixed-point students, baselines) as single
    markers labelled by their method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    # one colour cycle for markers and lines (each has its own in matplotlib: the first of
    # both would be blue); the interpolation row in grey
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = (cycle[i % len(cycle)] for i in itertools.count())
    students: dict[str, list[Row]] = {}
    for r in rows:
        if r.t is not None:
            students.setdefault(r.method, []).append(r)
        else:
            ax.scatter(r.mean("swd"), r.mean("psnr_y"), marker="s" if r.is_interpolation else "*", s=70, label=r.method,
                       color="0.45" if r.is_interpolation else next(colours))
    for name, pts in students.items():
        xs, ys = [p.mean("swd") for p in pts], [p.mean("psnr_y") for p in pts]
        ax.plot(xs, ys, "o-", label=f"{name} (one step)", color=next(colours))
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"t={p.t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("realism measure: patch SWD (lower = more realistic)")
    ax.set_ylabel("PSNR Y (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def make_lpips(device: torch.device, log: Callable[[str], None] = print) -> tuple[LPIPS | None, str | None]:
    """LPIPS, or None and the note to print in its column (the whole reason goes to `log`)."""
    try:
        return LPIPS(device), None
    except LPIPSUnavailable as e:
        log(f"LPIPS {e}")
        return None, str(e).split(" (")[0]
