"""`oftsr eval` itself: its arguments to files, models and baselines, the evaluation
(`evaluate`), and the files it writes (results.md, results.csv, per_image.csv, run.json,
curve.png)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..checks import parse_t_values
from ..files import sha256_file
from ..model import OFTSRModel
from ..weights import BUNDLED_ROLES, DEFAULT_MODEL, bundled_model_path, existing_model_path, split_model_name
from .evaluate import (INTERPOLATION_ROWS, describe_degradation, evaluate, images_sha256, make_lpips, model_labels,
                       paired_folders, plot_curve, recorded_degradation, write_tables)


EVAL_T = "0,0.25,0.5,0.75,1"  # the students' t values an evaluation scores unless --t says others
EVAL_STEPS, EVAL_SOLVER = 16, "midpoint"  # a teacher's run unless --steps and --solver say otherwise


def run_eval(args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None) -> int:
    """`oftsr eval`: load the models, evaluate, and write results.md, results.csv,
    per_image.csv, run.json and curve.png under `--out`."""
    from .baselines import BASELINES

    ts = parse_t_values(",".join(args.t or [EVAL_T]), "--t")  # "--t 0 0.5 1" and "--t 0,0.5,1" alike
    unknown = [b for b in args.baseline or [] if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown --baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    paths = eval_model_paths(args.model)
    models = [load_model(m, device=device, dtype=dtype) for m in paths]
    teachers = any(m.role == "teacher" for m in models)
    given = [f"--{flag}" for flag in ("steps", "solver") if getattr(args, flag) is not None]
    if given and not teachers:
        print(f"warning: {' and '.join(given)} {'do' if len(given) > 1 else 'does'} nothing here: only a teacher "
              f"samples in steps (a student takes one)", file=sys.stderr)
    args.steps = EVAL_STEPS if args.steps is None else args.steps
    args.solver = EVAL_SOLVER if args.solver is None else args.solver
    if args.t and all(m.role == "teacher" or m.ignores_t for m in models):
        print("warning: --t does nothing here: " + ("a teacher samples from t = 0 to 1 (--steps and --solver set its "
                                                     "run)" if all(m.role == "teacher" for m in models)
                                                     else "no model here takes t"), file=sys.stderr)
    labels = model_labels(paths, reserved=[*INTERPOLATION_ROWS.values(), *BASELINES.values()])  # the other rows'
    if args.scale is not None and any(m.scale != args.scale for m in models):
        raise ValueError(f"--scale {args.scale} does not match the models' scales: "
                         + ", ".join(f"{label} x{m.scale}" for label, m in zip(labels, models)))
    baselines = eval_baselines(args.baseline or [], models[0].scale, device)
    settings = [recorded_degradation(p, m.degradation) for p, m in zip(paths, models, strict=True)]
    if any(s != settings[0] or m.degradation != models[0].degradation for s, m in zip(settings, models)):
        # each was trained on its own LR: evaluate them apart
        which = ("settings of their degradation" if all(m.degradation == models[0].degradation for m in models)
                 else "degradations")
        raise ValueError(f"the models were trained on different {which} ("
                         + ", ".join(f"{label}: {describe_degradation(m.degradation, s)}"
                                     for label, m, s in zip(labels, models, settings)) + "); evaluate them apart")
    paired = args.lr_dir is not None or paired_folders(args.data) is not None
    for folder in (args.data, args.lr_dir):  # said before the LPIPS notice and before any model runs
        if folder is not None and not Path(folder).exists():
            raise FileNotFoundError(f"no such file or folder: {folder}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file, not a folder: name a folder for the results (the table, "
                         f"per_image.csv and the plot go in it)")
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))  # noqa: E731
    lpips, note = make_lpips(device, log)
    out = Path(args.out)
    rows = evaluate(models, args.data, ts=ts, steps=args.steps, solver=args.solver, seed=args.seed,
                    tile=args.tile or None, lpips=lpips, log=log, baselines=baselines, lr_dir=args.lr_dir,
                    degradation_settings=settings[0],
                    per_image_csv=out / "per_image.csv", exclude=out, names=labels)
    made = describe_degradation(models[0].degradation, settings[0])
    lr_source = "LR as given" if paired else made
    tiled = f", models in {args.tile} px tiles" if args.tile else ""  # tiles change the scores a little
    data = Path(args.data).resolve()
    set_name = data.parent.name if args.lr_dir and data.name.upper() == "HR" else data.name  # Set/HR, Set/LR: "Set"
    title = f"{set_name}, x{models[0].scale} {lr_source}, {device.type}{tiled}"
    md, csv_path = write_tables(rows, out, note, title, lr_given=paired)
    with open(out / "per_image.csv", newline="", encoding="utf-8") as f:  # the images scored, in order: what the means are over
        images = list(dict.fromkeys(r["image"] for r in csv.DictReader(f)))
    run = out / "run.json"
    run.write_text(json.dumps({**eval_record(args, ts, paths, models, device, None if paired else made),
                               "images": images}, indent=1)
                   + "\n", encoding="utf-8")
    written = [md, csv_path, out / "per_image.csv", run]
    try:
        written.append(plot_curve(rows, out / "curve.png", title))
    except ImportError:
        print("warning: curve.png not drawn: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def eval_record(args: argparse.Namespace, ts: list[float], paths: list[Path], models: list[OFTSRModel],
                device: torch.device, made: str | None) -> dict:
    """How an evaluation was made (run.json), so that its numbers can be reproduced and compared."""
    from .. import __version__

    def file_record(path: Path, model: OFTSRModel) -> dict:
        return {"file": str(Path(path).resolve()), "sha256": sha256_file(path), "role": model.role, "step": model.step,
                "objective": model.objective, "dtype": str(model.dtype).removeprefix("torch.")}

    from .baselines import baseline_record

    paired = made is None
    hr_dir, lr_dir = paired_folders(args.data) if args.lr_dir is None and paired else (args.data, args.lr_dir)
    out = Path(args.out)
    return {"oftsr": __version__, "torch": torch.__version__, "device": str(device),
            "data": str(Path(args.data).resolve()), "lr": "given" if made is None else f"made ({made})",
            "lr_dir": None if args.lr_dir is None else str(Path(args.lr_dir).resolve()),
            "data_sha256": images_sha256(hr_dir, out), "lr_sha256": None if lr_dir is None else images_sha256(lr_dir, out),
            "models": [file_record(p, m) for p, m in zip(paths, models, strict=True)],
            "baselines": [baseline_record(name) for name in dict.fromkeys(args.baseline or [])],
            "t": ts, **({"steps": args.steps, "solver": args.solver} if any(m.role == "teacher" for m in models)
                        else {"steps": None, "solver": None}), "seed": args.seed,
            "tile": args.tile,
            "protocol": ("outputs rounded to 8 bits, the LR as given" if paired else
                         "outputs and made LR rounded to 8 bits") + "; PSNR RGB on the whole image; PSNR Y and SSIM Y on "
                        "BT.601 luma with a border crop of the scale, SSIM over the valid window positions; realism "
                        "SWD with 4096 patches per image, seed 0"}


def eval_model_paths(specs: list[str] | None) -> list[Path]:
    """The files `oftsr eval --model` names: a bundled name alone ("x4") means its student
    and teacher, "x4-student" one of them, anything else a checkpoint path."""
    paths = []
    for spec in specs or [DEFAULT_MODEL]:
        named = split_model_name(spec)
        if named is not None and named[1] is None:
            paths += [bundled_model_path(named[0], role) for role in BUNDLED_ROLES]
        else:
            paths.append(existing_model_path(spec, "student"))
    return paths


def eval_baselines(names: list[str], scale: int, device: torch.device) -> dict:
    """Row label -> network of each `--baseline` (evaluation-only packages, read offline)."""
    from .baselines import BASELINE_SCALE, BASELINES, load_baseline

    if names and scale != BASELINE_SCALE:
        raise ValueError(f"the baselines are x{BASELINE_SCALE} networks; the models here are x{scale}")
    return {BASELINES[name]: load_baseline(name, device) for name in dict.fromkeys(names)}
