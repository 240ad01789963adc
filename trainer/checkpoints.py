"""Training checkpoints: what a checkpoint's model is (`oftsr.json`), atomic saves with
rotation, resume with its refusals, and export of the EMA weights as a model file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import oftsr  # noqa: E402
from oftsr.checkpoint import EXPORTED_MODELS  # noqa: E402
from oftsr.files import sync_to_disk  # noqa: E402
from oftsr.training.degradations import degradation_settings, settings_text  # noqa: E402

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger("oftsr.trainer")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
MODEL_INFO = oftsr.checkpoint.TRAINING_CHECKPOINT_INFO
SETTINGS = oftsr.model.SETTINGS


def model_info(model: oftsr.OFTSRModel, step: int, metadata: dict[str, str] | None = None) -> dict:
    """What a checkpoint's model is, and `metadata` for its exported file (`training_metadata`)."""
    return {"architecture": model.config.to_dict(), **model.settings(), "step": step, "metadata": metadata or {}}


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints, oldest first. Temporary folders (a save that was cut off)
    never match the name pattern, so they are never resumed from."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


SCHEDULE_SETTINGS = ("lr_scheduler", "lr_warmup_steps", "max_train_steps")


def data_settings(args: argparse.Namespace, num_processes: int, train_items: int | None = None) -> dict:
    """What decides the order and content of the training batches, and the shape of the
    learning-rate schedule (SCHEDULE_SETTINGS): a checkpoint records them, and a run
    resumed with other values is warned that its data, or its decaying rate, now differs.
    `train_items`: the images (or pairs) found in the training folder, so that a folder
    with files added or removed since is noticed."""
    items = {} if train_items is None else {"train_items": train_items}
    if getattr(args, "max_train_samples", None) is not None:  # a subset drawn with the seed from train_items
        items["max_train_samples"] = args.max_train_samples
    return {"train_data_dir": str(Path(args.train_data_dir).resolve()), **items, "resolution": args.resolution,
            "train_batch_size": args.train_batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "repeats": args.repeats, "random_flip": getattr(args, "random_flip", True), "seed": args.seed,
            "num_processes": num_processes,
            **{k: getattr(args, k) for k in SCHEDULE_SETTINGS}}


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: int | None,
                    model: oftsr.OFTSRModel, metadata: dict[str, str] | None = None, data: dict | None = None,
                    training: dict | None = None) -> Path:
    """`accelerator.save_state` into a temporary folder, renamed when complete; then the
    oldest checkpoints beyond `total_limit` are removed. `oftsr.json` beside the state
    says what the model is, so `trainer/export.py` can turn any checkpoint into a model file."""
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / MODEL_INFO).write_text(json.dumps({**model_info(model, step, metadata), "data": data or {},
                                                  "training": training or {}}, indent=1),
                                       encoding="utf-8")
        _sync_to_disk(tmp)  # a machine that goes down after the rename finds whole files, not empty ones
        if final.exists():  # this step saved again: the old one renamed away first (as below), never half-removed
            replaced = final.with_name(f"{tmp.name}-replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp, final)
        _sync_to_disk(Path(output_dir), files=False)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                # renamed first: a run killed while removing it leaves a .tmp- folder, never a
                # checkpoint-N with files missing
                gone = old.with_name(f".tmp-{old.name}")
                shutil.rmtree(gone, ignore_errors=True)
                os.replace(old, gone)
        for cut_off in Path(output_dir).glob(".tmp-checkpoint-*"):  # saves (and removals) a killed run cut off
            shutil.rmtree(cut_off, ignore_errors=True)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def _sync_to_disk(folder: Path, files: bool = True) -> None:
    """fsync the files in `folder` (recursively) and the folder itself, where the system allows."""
    paths = [p for p in folder.rglob("*") if p.is_file()] if files else []
    for path in [*paths, folder]:
        sync_to_disk(path)


class _Damaged(Exception):
    """A checkpoint that Accelerate would load in part, or fail on without saying why."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that holds more than tensors and plain values: loading it could run code."""


def _check_custom_states(path: Path) -> None:
    """Accelerate reads the objects registered for checkpointing (the EMA, the step, FlowSR's
    consistency target) with `torch.load(weights_only=False)`, which runs whatever code a
    pickle names. Each is read here first with `weights_only=True`: a file that holds more
    than tensors and plain values (never one this trainer wrote) is refused before that."""
    for f in sorted(path.glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):  # cut short: the damage messages below say what to do
                raise
            raise UnsafeCheckpoint(f"{f} holds more than tensors and numbers, and loading it could run code: the "
                                   f"resume is refused (this trainer never writes such a file; resume from a "
                                   f"checkpoint you trust)") from None


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether `flag` holds on any of the run's processes (each process passes its own)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([float(flag)], device=accelerator.device)).max().item())


def _own_random_states_read(accelerator: Accelerator, path: Path) -> bool:
    """Whether every process can read its own `random_states_<rank>.pkl` as Accelerate will
    (which says it could not only on the main process, and goes on with other t and noise on
    the others). A missing file is no damage: a run resumed with more processes than it had."""
    from accelerate.utils.other import load

    own = path / f"random_states_{accelerator.process_index}.pkl"
    try:
        if own.is_file():
            load(own)
        read = True
    except Exception:  # cut short, or not a pickle of states
        read = False
    return not any_process(accelerator, not read)


def is_cut_short(file: Path) -> bool:
    """Whether a checkpoint's file is cut short, by its end: a safetensors file whose data
    does not cover its header's tensors, or one of torch.save's zip files (.bin, .pkl)
    without the directory written last."""
    if file.suffix == ".safetensors":
        try:
            with safe_open(file, "pt"):
                return False
        except Exception:
            return True
    return file.suffix in (".bin", ".pkl") and not zipfile.is_zipfile(file)


def _cut_short_files(path: Path) -> list[str]:
    return [file.name for file in sorted(path.iterdir()) if file.is_file() and is_cut_short(file)]


def _load_state(accelerator: Accelerator, path: Path, output_dir: str) -> None:
    """`accelerator.load_state`, with what to do when the checkpoint is damaged (a disk that
    filled up, a copy cut short): name its empty or cut-short files and the checkpoint before it.
    Accelerate only logs, at INFO, that it could not load the random states, and would go on
    with other t and noise than the run had: that is damage too."""
    said: list[str] = []

    def hear(record: logging.LogRecord) -> bool:  # INFO is off for this logger: see it, show only warnings
        said.append(record.getMessage())
        return record.levelno >= logging.WARNING

    checkpointing = logging.getLogger("accelerate.checkpointing")
    level = checkpointing.level
    checkpointing.setLevel(logging.INFO)
    checkpointing.addFilter(hear)
    empty = sorted(p.name for p in path.iterdir() if p.is_file() and p.stat().st_size == 0)  # every process sees these
    try:
        if empty:
            raise _Damaged("empty files")
        _check_custom_states(path)
        if not _own_random_states_read(accelerator, path):
            raise _Damaged("its random states (random_states_*.pkl) could not be read")
        accelerator.load_state(str(path))
        if any("Could not load random states" in m for m in said):
            raise _Damaged("its random states (random_states_*.pkl) could not be read")
    except Exception as e:
        # Damage: an empty file, or what reading a cut-short one raises (safetensors, pickle,
        # torch.load's zip reader). Anything else (a size mismatch, out of memory) keeps its words.
        # A copy cut short can also leave files out: Accelerate then misses one by name, or
        # counts fewer custom_checkpoint_*.pkl files than objects registered.
        # A file cut short by its end is damage whatever reading it raised (torch's zip reader: OSError).
        missing = isinstance(e, FileNotFoundError) or "Number of custom checkpoints" in str(e)
        damaged = [] if empty or missing else _cut_short_files(path)
        cut_short = missing or bool(damaged) or isinstance(e, (_Damaged, SafetensorError, pickle.UnpicklingError,
                                                                 EOFError)) \
            or "zip archive" in str(e) or "central directory" in str(e)
        if not cut_short:
            raise
        hint = _damaged_checkpoint_hint(path, output_dir)
        why = str(e) if isinstance(e, _Damaged) else f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        raise ValueError(f"could not load the checkpoint {path} ({why}); "
                         + (f"these files are empty: {', '.join(empty)}; " if empty
                            else "a file in it is missing: " if missing
                            else f"{', '.join(damaged)} {'is' if len(damaged) == 1 else 'are'} cut short: " if damaged
                            else "a file in it is damaged: ")
                         + hint) from e
    finally:
        checkpointing.removeFilter(hear)
        checkpointing.setLevel(level)


def _damaged_checkpoint_hint(path: Path, output_dir: str) -> str:
    """What to do instead of resuming the damaged checkpoint `path`: the one before it where
    it is `output_dir`'s own, else another of its own folder's (a run branched from one
    of another run's)."""
    m = CHECKPOINT.match(path.name)
    if path.parent.resolve() == Path(output_dir).resolve():
        earlier = [p.name for p in list_checkpoints(output_dir)
                   if m and int(CHECKPOINT.match(p.name).group(1)) < int(m.group(1))]
        return (f"move {path.name} out of {output_dir} and run again with --resume_from_checkpoint latest to go on "
                f"from {earlier[-1]}" if earlier else "start the run again in a new --output_dir")
    others = [p for p in list_checkpoints(str(path.parent)) if p.name != path.name]
    return (f"resume from another checkpoint of {path.parent} ({', '.join(p.name for p in others)}) with "
            f"--resume_from_checkpoint {others[-1]}" if others else "start the run without --resume_from_checkpoint")


def checkpoint_to_resume(args: argparse.Namespace) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names (a path, a name in `--output_dir`, or
    "latest": the newest complete one there, None where there is none yet)."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(args.output_dir)
        return found[-1] if found else None
    path = Path(args.resume_from_checkpoint)
    if not path.is_dir() and not path.is_absolute() and (Path(args.output_dir) / path).is_dir():
        path = Path(args.output_dir) / path  # "checkpoint-500": a name in --output_dir, as in diffusers
    if not path.is_dir():
        found = list_checkpoints(args.output_dir) if Path(args.output_dir).is_dir() else []
        where = "no such folder" + ("" if path.is_absolute() else f", here or in --output_dir {args.output_dir}")
        there = (f"{args.output_dir} holds {', '.join(p.name for p in found)} (or pass latest)" if found else
                 f"{args.output_dir} holds no checkpoint" if Path(args.output_dir).is_dir() else
                 f"{args.output_dir} does not exist: check --output_dir")
        raise FileNotFoundError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: {where}; {there}")
    return path


def checkpoint_record(path: Path, output_dir: str) -> dict:
    """What a checkpoint's `oftsr.json` records ({} for one without it)."""
    info_file = path / MODEL_INFO
    try:
        return json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{info_file} is unreadable ({e}): the checkpoint is damaged; move {path.name} out of "
                         f"{output_dir} to go on from the one before it") from e


def resume(accelerator: Accelerator, args: argparse.Namespace, info: dict, data: dict | None = None,
           loss: dict | None = None) -> None:
    """Load `--resume_from_checkpoint` (a path, or "latest" = newest complete one in
    `--output_dir`). Restores models, EMA, optimizer, scheduler, RNG and step. A checkpoint
    of another model than `info` describes (this run's `model_info`: architecture, scale,
    sigma_p, degradation, objective, training metadata) is refused before anything is
    loaded, and so is a new run in a folder that already holds checkpoints, whose rotation
    would otherwise delete the new run's checkpoints and keep the old ones. Other `data`
    settings (crop size, batch, ...) and `loss` settings (distill's weights) are allowed,
    with a warning."""
    if not args.resume_from_checkpoint:
        found = list_checkpoints(args.output_dir)
        if found:
            raise ValueError(f"{args.output_dir} already holds {found[-1].name} of an earlier run: pass "
                             f"--resume_from_checkpoint latest to go on with it, or use another --output_dir")
        _refuse_an_earlier_runs_files(args.output_dir)
        return
    path = checkpoint_to_resume(args)
    if path is None:
        _refuse_an_earlier_runs_files(args.output_dir)
        logger.info("no checkpoint in %s: starting a new run", args.output_dir)
        return
    recorded = checkpoint_record(path, args.output_dir)
    step = recorded.get("step", int(m.group(1)) if (m := CHECKPOINT.match(path.name)) else None)
    later = [p.name for p in list_checkpoints(args.output_dir) if step is not None
             and int(CHECKPOINT.match(p.name).group(1)) > step and p.resolve() != path.resolve()]
    if later:  # a branch from an earlier step: rotation would delete its checkpoints, "latest" pick the old run's
        raise ValueError(f"{args.output_dir} holds {', '.join(later)}, later than {path.name}: going on from "
                         f"{path.name} there would mix two runs. Resume into another --output_dir, or remove the "
                         f"later checkpoints first")
    if recorded:
        ours = json.loads(json.dumps(info))  # tuples as lists, as in the file
        if "architecture" in recorded:  # as a config, so fields added later with defaults compare equal
            recorded["architecture"] = oftsr.UNetConfig.from_dict(recorded["architecture"]).to_dict()
            recorded = json.loads(json.dumps(recorded))
        for key in CHECKED_MODEL_FIELDS:
            if key in recorded and recorded[key] != ours[key]:
                raise ValueError(f"{path} is a run with {key} {_short(recorded[key])}, but this run has "
                                 f"{_short(ours[key])}: pass the flags it was started with "
                                 f"({CHECKED_MODEL_FIELDS[key]}), or use another --output_dir")
        check_training_metadata(str(path), recorded.get("metadata", {}), info["metadata"], ", or another --output_dir")
        changed = {k: (v, data[k]) for k, v in recorded.get("data", {}).items() if data and k in data and data[k] != v}
        if getattr(args, "objective", None) == "fluxsr":  # runs before 0.7.0 recorded --resolution, not the pairs'
            changed.pop("resolution", None)
        schedule = {k: changed.pop(k) for k in SCHEDULE_SETTINGS if k in changed}
        if "max_train_steps" in schedule and getattr(args, "steps_from_epochs", False):
            before, now = schedule["max_train_steps"]
            logger.warning("resuming %s: --num_train_epochs %d makes %d steps here (processes, data and batch as "
                           "now), where the run was to end at step %d; pass --max_train_steps %d to end it as started",
                           path, args.num_train_epochs, now, before, before)
        decays = {recorded.get("data", {}).get("lr_scheduler"), (data or {}).get("lr_scheduler")} - {"constant", None}
        if "lr_warmup_steps" in schedule and step is not None and step + 1 < max(schedule["lr_warmup_steps"]):
            before, now = schedule["lr_warmup_steps"]
            logger.warning("resuming %s at step %d with --lr_warmup_steps %d where the run had %d: the rate goes from "
                           "%.3g to %.3g of --learning_rate, and is full from step %d", path, step, now, before,
                           min(1.0, (step + 1) / max(1, before)), min(1.0, (step + 1) / max(1, now)), now)
        if schedule and decays:  # a constant rate after the warm-up is the same rate whatever the step count
            logger.warning("resuming %s with another learning-rate schedule (%s): the rate follows this run's from "
                           "here on", path, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in schedule.items()))
        if changed:
            logger.warning("resuming %s with other data settings (%s): from here on the batches are not the ones "
                           "the run would have seen", path, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        before = recorded.get("training", {}).get("loss", {})  # recorded from 0.26 on
        other = {k: (v, loss[k]) for k, v in before.items() if loss and k in loss and loss[k] != v}
        if other:
            logger.warning("resuming %s with other loss settings (%s): the run learns another objective from here "
                           "on; pass %s to go on as it started", path,
                           ", ".join(f"{k} {a} -> {b}" for k, (a, b) in other.items()),
                           " ".join(f"--{k} {a}" for k, (a, _) in other.items()))
    _load_state(accelerator, path, args.output_dir)
    logger.info("resumed from %s", path)


def _refuse_an_earlier_runs_files(output_dir: str) -> None:
    """A new run would overwrite the model an earlier run exported there (its checkpoints
    removed to save space, say), or, of the other role, mix its metrics and logs with it.
    A lone metrics.jsonl, of a run killed before its first checkpoint, is no loss: that run
    starts anew."""
    for name in EXPORTED_MODELS:
        if (Path(output_dir) / name).is_file():
            raise ValueError(f"{output_dir} holds {name} of an earlier run and no checkpoint to go on from: a new "
                             f"run there would overwrite it, or mix its metrics and logs with that run's. Use another "
                             f"--output_dir, or move {name} out first")


# What a checkpoint's oftsr.json says its model is, and the flags that set it.
CHECKED_MODEL_FIELDS = {"architecture": "--preset, or distill.py's --teacher", "role": "the other training script",
                        "scale": "--scale", "sigma_p": "--sigma_p", "degradation": "--degradation",
                        "objective": "--objective"}


def _short(value) -> str:
    """A recorded value for a message: an architecture by its widths, not its whole dict."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {value[k]}" for k in ("model_channels", "channel_mult", "num_res_blocks") if k in value) \
            or json.dumps(value)
    return str(value)


def training_metadata(args: argparse.Namespace, model: oftsr.OFTSRModel) -> dict[str, str]:
    """What the exported file records of its training beyond the model's own metadata: the
    ranges of a realesrgan degradation, or the noise of a noisy_avgpool one, which the next
    stage must repeat."""
    return settings_text(degradation_settings(model.degradation, vars(args)))


def check_training_metadata(what: str, recorded: dict[str, str], metadata: dict[str, str], hint: str = "") -> None:
    """Refuse to go on from `what` (a checkpoint, a teacher) when a setting it recorded in
    `training_metadata` differs from this run's; settings it did not record are not checked."""
    for key, value in recorded.items():
        if key == "teacher_digest" and metadata.get(key) != value:  # oftsr.checkpoint.network_digest
            raise ValueError(f"{what} was distilled from another teacher (digest {value[:12]}), not this --teacher "
                             f"(digest {metadata.get(key, '?')[:12]}): pass the teacher it started with{hint}")
        if metadata.get(key) != value:
            raise ValueError(f"{what} was trained with --{key} {value}, but this run has "
                             f"{metadata.get(key, 'another setting')}: pass --{key} {value}{hint}")


def export_model(info: dict, params: list[torch.Tensor], path: Path) -> Path:
    """Write a run's weights, its EMA's (or the raw ones, `export.py --raw`), in the order of
    the network's parameters, as our `.safetensors` (full metadata, plus the info's training
    `metadata`; loads in the CLI and nodes)."""
    settings = {k: info[k] for k in SETTINGS if k in info}  # checkpoints from before `objective` lack it
    with torch.device("meta"):  # no random initialisation to overwrite
        unet = oftsr.UNet(oftsr.UNetConfig.from_dict(info["architecture"]))
    names = [name for name, _ in unet.named_parameters()]
    if len(names) != len(params):
        raise ValueError(f"{len(params)} tensors for a network of {len(names)} parameters")
    unet.load_state_dict(dict(zip(names, (p.detach().to("cpu", torch.float32) for p in params))), assign=True)
    export = oftsr.OFTSRModel(unet, **settings)
    record = {"training": json.dumps({**info["training"], "step": info["step"]})} if info.get("training") else {}
    oftsr.save_model(export, path, **info.get("metadata", {}), **record)
    return path
