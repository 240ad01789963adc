"""Accelerate glue shared by `train_teacher.py` and `distill.py`: flags, the accelerator,
data loading, stopping early, validation, logging and the training loop. Checkpoints,
resume and export are in `checkpoints.py`."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # imported where a run starts: --help and argument errors stay fast
    from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import oftsr  # noqa: E402
from oftsr.checkpoint import MissingInfoError, contradicted_metadata, recorded_settings  # noqa: E402
from oftsr.training.data import SRDataset, load_logger, scan_image_sizes, warn_image_sizes  # noqa: E402
from oftsr.training.degradations import SIGMA_Y  # noqa: E402
from oftsr.training.ema import EMA  # noqa: E402
from oftsr.flow import noise_augment  # noqa: E402
from oftsr.training.metrics import LPIPS, LPIPSUnavailable, quality  # noqa: E402
from oftsr.training.realesrgan import REALESRGAN_CONFIGS  # noqa: E402
from oftsr.model import DEGRADATIONS  # noqa: E402
from oftsr.files import atomic_write, file_in_the_way  # noqa: E402

from checkpoints import (any_process, check_training_metadata, data_settings, export_model,  # noqa: E402
                         list_checkpoints, model_info, resume, save_checkpoint, training_metadata)

logger = logging.getLogger("oftsr.trainer")

# The exit status of a run stopped before --max_train_steps with its checkpoint saved
# (--max_train_minutes, SIGTERM, Ctrl-C): sysexits' EX_TEMPFAIL, "run it again to go on".
EXIT_RESUMABLE = 75
SCRIPT_START = time.monotonic()  # --max_train_minutes counts from here: set-up and resume included
LR_SCHEDULES = ("constant", "linear", "cosine")  # --lr_scheduler, after the warm-up
# diffusers' names for the same schedules (its "constant" skips the warm-up; ours always warms up)
LR_SCHEDULE_ALIASES = {"constant_with_warmup": "constant"}


def _checked(kind: type, ok, wording: str):
    """An argparse type: `kind(text)`, refused unless `ok(value)` (a checkpoint every 0
    steps, a limit of 0 checkpoints, ... would fail after the first step, or do nothing)."""
    def parse(text: str):
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text}")
        return value
    return parse


positive_int = _checked(int, lambda v: v >= 1, "1 or more")
non_negative_int = _checked(int, lambda v: v >= 0, "0 or more")
non_negative_float = _checked(float, lambda v: v >= 0, "0 or more")
positive_float = _checked(float, lambda v: v > 0, "more than 0")
unit_interval = _checked(float, lambda v: 0 <= v <= 1, "between 0 and 1")  # a probability or a decay


def add_common_args(p: argparse.ArgumentParser, *, lr: float, batch: int, steps: int) -> None:
    """The diffusers-style flags both scripts share (defaults: the paper's, scaled to one GPU)."""
    p.add_argument("--train_data_dir", required=True, help="folder of HR images (recursive)")
    p.add_argument("--validation_data_dir", default=None, help="folder of HR images for validation")
    p.add_argument("--output_dir", required=True,
                   help="folder of the run: checkpoints, metrics.jsonl, the trackers' logs and the exported model")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="HR crop size in pixels, a multiple of the scale (default 256, or the multiple of the scale "
                        "just below it, 255 at x3; distill.py --objective fluxsr: the pairs')")
    p.add_argument("--train_batch_size", type=positive_int, default=batch, help="per device")
    p.add_argument("--max_train_steps", type=positive_int, default=None,
                   help=f"optimizer steps to train (default: {steps}, or what --num_train_epochs makes)")
    p.add_argument("--num_train_epochs", type=positive_int, default=None,
                   help="passes over the training data, counted in optimizer steps when the data is read; "
                        "--max_train_steps wins when both are given")
    p.set_defaults(default_train_steps=steps)
    p.add_argument("--learning_rate", type=positive_float, default=lr)
    p.add_argument("--lr_warmup_steps", type=non_negative_int, default=1000,
                   help="linear warm-up, in optimizer steps (distill.py: at most a tenth of --max_train_steps)")
    p.add_argument("--lr_scheduler", choices=LR_SCHEDULES, default="constant",
                   type=lambda name: LR_SCHEDULE_ALIASES.get(name, name),
                   help="after the warm-up: constant (the paper's; diffusers' constant_with_warmup is the same), or a "
                        "linear or cosine decay to 0 at --max_train_steps")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_epsilon", type=positive_float, default=1e-8)
    p.add_argument("--adam_weight_decay", type=float, default=0.0,
                   help="torch.optim.Adam's weight_decay, an L2 term added to the gradient (the paper's Adam has none); "
                        "not AdamW's decoupled decay of diffusers' scripts")
    p.add_argument("--max_grad_norm", type=non_negative_float, default=1.0,
                   help="clip the gradient to this norm; 0 = no clipping (default 1, the paper's)")
    p.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: what `accelerate config` says under `accelerate launch`; none with plain python")
    p.add_argument("--allow_tf32", action="store_true",
                   help="TF32 tensor cores for float32 matrix products on Ampere and newer GPUs (faster, ~1e-3 relative)")
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute each UNet block in the backward pass instead of keeping its activations: a "
                        "bigger --train_batch_size or --resolution fits in memory, for about a third more compute")
    p.add_argument("--checkpointing_steps", type=positive_int, default=5000)
    p.add_argument("--checkpoints_total_limit", type=positive_int, default=None,
                   help="keep only the newest N checkpoints (default: all)")
    p.add_argument("--max_train_minutes", type=non_negative_float, default=None,
                   help="stop at the first step after this many minutes from the script's start, save a checkpoint "
                        f"and exit with status {EXIT_RESUMABLE} (a job's time limit: allow a step and a save after "
                        "it); SIGTERM and Ctrl-C do the same at once")
    p.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder, or "latest"')
    p.add_argument("--report_to", default="tensorboard",
                   help='tensorboard, wandb (or several, separated by commas), all, or "none"')
    p.add_argument("--logging_dir", default="logs",
                   help="the trackers' folder (tensorboard's events), under --output_dir unless absolute (default logs)")
    p.add_argument("--tracker_project_name", default=None,
                   help="the project the trackers log to (a wandb project; default oftsr-teacher or oftsr-distill)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation_steps", type=positive_int, default=1000,
                   help="validate on --validation_data_dir every N steps, and at the last step")
    p.add_argument("--num_validation_images", type=positive_int, default=4)
    p.add_argument("--dataloader_num_workers", type=non_negative_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=1, help="random crops of each training image per epoch")
    p.add_argument("--max_train_samples", type=positive_int, default=None,
                   help="train on this many of the folder's images, drawn with --seed (a quick trial; the whole "
                        "folder is still scanned once)")
    p.add_argument("--scale_lr", action="store_true",
                   help="multiply --learning_rate by the crops per optimizer step (batch x processes x accumulation), "
                        "as diffusers' scripts do")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--random_flip", dest="random_flip", action="store_true", default=None,  # None: not given
                      help="flip each crop left-right with probability 1/2: the default here (diffusers' scripts "
                           "need this flag for it)")
    flip.add_argument("--no_random_flip", dest="random_flip", action="store_false",
                      help="no flips, for images whose handedness matters, such as text (default: flips)")
    p.add_argument("--scale", type=positive_int, default=4, help="upscaling factor (distill.py: default the teacher's)")
    p.add_argument("--degradation", choices=DEGRADATIONS, default="bicubic",
                   help="how training LR images are made (distill.py: default the teacher's)")
    p.add_argument("--realesrgan_config", choices=sorted(REALESRGAN_CONFIGS), default="full",
                   help="ranges of the realesrgan degradation: full (the published second-order chain) or camera "
                        "(one stage, a lens's blur, mild noise and JPEG: photographs from a camera); "
                        "distill.py: default the teacher's")
    p.add_argument("--sigma_y", type=float, default=SIGMA_Y,
                   help="measurement noise of the noisy_avgpool degradation; distill.py: default the teacher's")
    p.add_argument("--ema_decay", type=unit_interval, default=0.9999)


def check_data_dirs(args: argparse.Namespace) -> None:
    """The folders the flags name, checked before anything is loaded, with the flag in the message."""
    for flag in ("train_data_dir", "validation_data_dir"):
        folder = getattr(args, flag, None)
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"--{flag} {folder} " + ("is not a folder" if Path(folder).exists()
                                                               else "does not exist"))
    output = getattr(args, "output_dir", None)
    blocking = file_in_the_way(output) if output else None
    if blocking is not None:
        raise ValueError(f"--output_dir {output}: {blocking} is a file, not a folder")


def adam_settings(args: argparse.Namespace) -> dict:
    """Adam's settings from the --adam_* flags, by the optimizer's own names."""
    return {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
            "weight_decay": args.adam_weight_decay}


def make_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    """Adam with the --adam_* flags (the paper's optimizer)."""
    return torch.optim.Adam(params, lr=args.learning_rate, **adam_settings(args))


def training_record(args: argparse.Namespace, data: dict) -> dict:
    """How a model was trained, for its exported file (the `training` entry, which `oftsr
    info` shows): the data settings, with the data folder by its name only (a file that is
    shared should not carry its maker's paths), the optimiser's and EMA's settings, the
    precision and this package's version; the weights it started from (`--init_from`,
    `--init_student`: a bundled name as given, a file by its name) and the time limit its
    last run was given (`--max_train_minutes`; after a resume, what was left of it), which
    say why a fine-tune's `step` can be short of `max_train_steps`.
    Recorded, never compared on resume."""
    started = {flag: Path(getattr(args, flag)).name for flag in ("init_from", "init_student") if getattr(args, flag, None)}
    if getattr(args, "max_train_minutes", None) is not None:
        started["max_train_minutes"] = args.max_train_minutes
    return {**{k: v for k, v in data.items() if k != "train_data_dir"},
            "train_data": Path(args.train_data_dir).name, "learning_rate": args.learning_rate,
            "adam": adam_settings(args), "max_grad_norm": args.max_grad_norm, "ema_decay": args.ema_decay,
            "mixed_precision": args.mixed_precision or "no", **started, "oftsr_version": oftsr.__version__}


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matrix products and convolutions (Ampere and newer;
    nothing changes on a CPU). cuDNN convolutions use TF32 by default already: this adds
    attention and the linear layers."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def _no_default(action: argparse.Action) -> bool:
    """None ("not given"), a suppressed one, or a switch's False; 0 is a default to show."""
    return action.default is None or action.default is argparse.SUPPRESS or action.default is False


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The scripts' --help: their docstring as written, and the default of every flag whose
    help does not already say it (a default of None means "not given": left out)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and not _no_default(action):
            action = copy.copy(action)  # argparse prints nothing for a flag without help, not even its default
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or _no_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: {action.default})" if text else f"default: {action.default}"


DEFAULT_RESOLUTION = 256


def settle_resolution(args: argparse.Namespace, scale_from: str) -> None:
    """--resolution must be a multiple of the scale (`scale_from` names where the scale came
    from: --scale, or the teacher): left out, it is DEFAULT_RESOLUTION or the multiple just
    below it; given, a multiple, or refused with the nearest one."""
    if args.resolution is None:
        args.resolution = max(args.scale, DEFAULT_RESOLUTION // args.scale * args.scale)
    elif args.resolution % args.scale:
        fits = max(args.scale, args.resolution // args.scale * args.scale)
        raise ValueError(f"--resolution {args.resolution} is not a multiple of {scale_from} {args.scale}: pass "
                         f"--resolution {fits}")


def run_script(main) -> None:
    """Run a training script's `main` and exit with its status. An error of the set-up (a
    flag, a folder, a checkpoint, a missing package) is one `error:` line and status 2
    instead of a traceback; once the first step has run, errors keep their traceback."""
    try:
        status = main()
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    except (ValueError, FileNotFoundError, ImportError) as e:
        if _loop_started:
            raise
        print(f"error: {e}", file=sys.stderr)
        status = 2
    # Left to the interpreter's exit, a process group that has run a collective can abort
    # ("terminate called", SIGABRT) when another process leaves first, even after a run that
    # went well: a crash report instead of the run's status.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(status)


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers: a run to stop before it saves them."""


_loop_started = False  # set by run_training: from then on an error is a bug to trace, not a set-up mistake


# --report_to values and the package each needs (Accelerate only warns, and logs nothing).
TRACKERS = ("tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive")  # each its own package


def trackers(report_to: str) -> list[str] | str | None:
    """--report_to as Accelerate's `log_with`: "all", None for "none", or the named
    trackers (commas between several) whose package is installed; a missing one is said and
    left out, as Accelerate would only warn and log nothing."""
    if report_to in ("all", "none"):
        return None if report_to == "none" else report_to
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"--report_to {report_to}: unknown tracker {', '.join(unknown)}; choose from "
                         f"{', '.join(TRACKERS)}, all or none")
    present = []
    for name in dict.fromkeys(names):
        if importlib.util.find_spec(name) is None:
            logger.warning("%s is not installed: scalars are not logged to it (pip install %s)", name, name)
        else:
            present.append(name)
    return present or None


def setup_logging() -> None:
    """The scripts' log format, and one copy of each message, not one per process (set
    before anything is said: the process index is the launcher's RANK)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if int(os.environ.get("RANK", "0")) != 0:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_messages)


# What each process says for itself (the pair shards it wrote), which the others cannot say for it.
process_logger = logging.getLogger("oftsr.trainer.process")


def _own_messages(record: logging.LogRecord) -> bool:
    """What a process other than the main one logs: errors, and what only it can see (the
    training images its loader could not read, its own work); the rest the main process says once."""
    return record.levelno >= logging.ERROR or record.name.startswith((load_logger.name, process_logger.name))


def make_accelerator(args: argparse.Namespace, project: str) -> "Accelerator":
    try:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    except ImportError as e:
        raise ImportError(f"{e.name or 'accelerate'} is missing: the trainer needs the training extra, "
                          f"pip install -e \".[train]\"") from e

    setup_logging()
    report_to = trackers(args.report_to)
    accelerator = Accelerator(
        cpu=multi_cpu(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
        # One shuffle seed for every process, so that they split one permutation between them;
        # without it the sampler takes torch's seed, which set_seed below makes differ by rank,
        # and the processes would draw overlapping crops and leave others out.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if args.allow_tf32:
        enable_tf32()
    for name in ("accelerate.accelerator", "accelerate.checkpointing"):  # 8 lines per save; ours says "saved ..."
        logging.getLogger(name).setLevel(logging.WARNING)
    # The precision that runs: the flag's, or `accelerate launch --mixed_precision`'s, which the
    # flag's default leaves to Accelerate; fp16 on a CPU Accelerate ignores, silently.
    precision = accelerator.mixed_precision
    if accelerator.device.type == "cpu" and precision == "fp16":
        logger.warning("--mixed_precision fp16 needs a GPU: this run trains in float32 (bf16 runs on CPUs)")
        precision = "no"
    args.mixed_precision = precision  # what the model file records
    set_seed(args.seed, device_specific=True)
    if getattr(args, "scale_lr", False):  # before the optimizer is made
        crops = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        args.learning_rate *= crops
        logger.info("--scale_lr: learning rate %g (x %d crops per optimizer step)", args.learning_rate, crops)
    held_elsewhere = ""
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        try:  # kept open (and locked) until the process ends
            accelerator.oftsr_lock = lock_output_dir(args.output_dir)
        except RunningElsewhere as e:
            held_elsewhere = str(e)
    if any_process(accelerator, bool(held_elsewhere)):  # every process stops, not only the one that knows
        raise RunningElsewhere(held_elsewhere or f"another run is writing to {args.output_dir} (the main process "
                                                 f"says which)")
    # The trackers start in run_training, once the run's length and warm-up are settled.
    accelerator.oftsr_project = args.tracker_project_name or project
    return accelerator


class RunningElsewhere(ValueError):
    """Another process holds the output folder's lock."""


LOCK_NAME = ".lock"


def lock_output_dir(output_dir: str):
    """An exclusive lock on `output_dir/.lock`, for as long as the returned file stays open
    (the main process keeps it until it ends). Two runs in one folder would interleave their
    checkpoints and rotate away each other's; and the workers of a killed `accelerate launch`
    go on training. Returns None, with a warning, where the file system has no locks (some
    network shares)."""
    f = open(Path(output_dir) / LOCK_NAME, "a+", encoding="utf-8")
    try:
        if os.name == "nt":
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        held = os.name == "nt" or isinstance(e, BlockingIOError)
        if not held:  # ENOLCK, EOPNOTSUPP: nothing to hold
            f.close()
            logger.warning("%s cannot be locked (%s): make sure no other run writes there", output_dir, e.strerror)
            return None
        try:
            f.seek(0)
            holder = f.read().strip()
        except OSError:  # Windows: the locked byte cannot be read either
            holder = ""
        f.close()
        raise RunningElsewhere(
            f"another run is writing to {output_dir}{f' ({holder})' if holder else ''}: wait for it to end or stop "
            f"it, or use another --output_dir. A killed `accelerate launch` can leave its workers training: stop "
            f"them too (e.g. pkill -f trainer/)") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def multi_cpu() -> bool:
    """Several processes and no GPU: data-parallel on the CPU (gloo). Accelerate only
    detects this when told (`Accelerator(cpu=True)`, `PartialState(cpu=True)`), and its
    `--cpu` launch flag starts a single process."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def start_trackers(accelerator, args: argparse.Namespace) -> None:
    """The trackers (--report_to), with the run's flags as their config: the values it runs
    with (the length --num_train_epochs makes, distill's capped warm-up)."""
    if accelerator.is_main_process and accelerator.log_with:
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))
                  and k not in ("default_train_steps", "steps_from_epochs")}
        accelerator.init_trackers(accelerator.oftsr_project, config=config)


def scan_once(root: str) -> dict[Path, tuple[int, int]]:
    """The training images and their sizes, found by the main process's scan and shared with
    the others: one scan, not one per process, and every process trains on the same files (a
    file still being copied could pass one process's scan and fail another's)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    try:
        found = [scan_image_sizes(root) if state.is_main_process else None]
    except (ValueError, FileNotFoundError) as e:  # said by every process, not waited for by the others
        found = [e]
    if state.num_processes > 1:
        broadcast_object_list(found)
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]


def make_dataloader(args: argparse.Namespace, root: str) -> torch.utils.data.DataLoader:
    sizes = scan_once(root)
    dataset = SRDataset(root, resolution=args.resolution, scale=args.scale, degradation=args.degradation,
                        sigma_y=args.sigma_y, seed=args.seed, repeats=args.repeats, random_flip=args.random_flip,
                        realesrgan_config=REALESRGAN_CONFIGS[args.realesrgan_config], files=list(sizes))
    dataset.found = len(dataset.files)  # the folder's images, recorded with a checkpoint
    if args.max_train_samples is not None and args.max_train_samples < len(dataset.files):
        keep = torch.randperm(len(dataset.files), generator=torch.Generator().manual_seed(args.seed))
        dataset.files = [dataset.files[i] for i in sorted(keep[:args.max_train_samples].tolist())]
        logger.info("--max_train_samples %d: training on %d of the images", args.max_train_samples, len(dataset.files))
    warn_image_sizes(dataset.files, args.resolution, sizes=sizes)  # every process: a refusal stops them all
    return training_loader(args, dataset)


def resolve_train_steps(args: argparse.Namespace, dataloader: torch.utils.data.DataLoader, num_processes: int) -> None:
    """`--max_train_steps` where only `--num_train_epochs` was given (diffusers' rule), in
    optimizer steps as the prepared loader counts them: full batches, shared out between the
    processes, one step per `--gradient_accumulation_steps` batches (a short last one too).
    Called with the unprepared loader, before the learning-rate schedule is made."""
    if args.max_train_steps is not None:
        if args.num_train_epochs is not None:
            logger.warning("--max_train_steps %d and --num_train_epochs %d: training for %d steps",
                           args.max_train_steps, args.num_train_epochs, args.max_train_steps)
        return
    if args.num_train_epochs is None:
        args.max_train_steps = args.default_train_steps
        return
    per_process = len(dataloader) // num_processes
    args.max_train_steps = args.num_train_epochs * max(1, -(-per_process // args.gradient_accumulation_steps))
    args.steps_from_epochs = True  # a resume whose count differs (other processes, data) says so
    logger.info("--num_train_epochs %d: %d optimizer steps", args.num_train_epochs, args.max_train_steps)


def training_loader(args: argparse.Namespace, dataset: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
    """Shuffled full batches of `dataset`, with workers that leave a stop to the main process."""
    # The loader's own generator: starting an epoch must not draw from the global RNG, or a
    # resumed run (which starts its epoch at another point) would draw different t and noise.
    return torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                                       num_workers=args.dataloader_num_workers, persistent_workers=False,
                                       pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_stop_signals,
                                       generator=torch.Generator().manual_seed(args.seed))


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """A loader worker's `worker_init_fn`. A scheduler's SIGTERM (and Ctrl-C's SIGINT) reach
    every process of the job; a worker that died of it would fail the main process before
    it saves its checkpoint (`StopRequest`), so the workers leave the stop to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def lr_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int,
                num_processes: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps` optimizer steps, then `name`: constant (the
    paper's: no decay), or a linear or cosine decay that reaches 0 at `total_steps`.
    Accelerate's prepared scheduler steps once per process for every optimizer step: its
    count is divided back, so N processes follow the schedule as one does."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if name != "constant" and warmup_steps >= total_steps:
        raise ValueError(f"--lr_scheduler {name} decays after the warm-up, but --lr_warmup_steps {warmup_steps} is not "
                         f"shorter than --max_train_steps {total_steps}: give fewer warm-up steps")

    def factor(count: int) -> float:
        step = count // num_processes  # optimizer steps taken
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if name == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restore_optimizer_flags(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> None:
    """After a resume: this run's --adam_* flags, which loading the optimizer's state had
    replaced with the checkpoint's run's (said where they differ, e.g. a larger
    --adam_epsilon to steady a half-precision run)."""
    want = adam_settings(args)
    flags = {"betas": "--adam_beta1/--adam_beta2", "eps": "--adam_epsilon", "weight_decay": "--adam_weight_decay"}
    changed = {}
    for group in optimizer.param_groups:
        for key, value in want.items():
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                changed[key] = (old, value)
                group[key] = value
    for key, (old, value) in changed.items():
        logger.warning("%s %s: the checkpoint's run had %s; the new value applies from here on", flags[key], value, old)


def restore_schedule(scheduler, optimizer, learning_rate: float, step: int, num_processes: int) -> None:
    """After a resume: the schedule's position from the optimizer `step` (its counter is
    per process, and the process count may have changed), with this run's schedule and
    `--learning_rate` (the checkpoint holds the old run's rate: said when it differs);
    the rate it resumes at is logged."""
    inner = getattr(scheduler, "scheduler", scheduler)  # under Accelerate's wrapper
    if any(abs(b - learning_rate) > 1e-12 * max(b, learning_rate) for b in inner.base_lrs):
        logger.warning("--learning_rate %g: the checkpoint's run had %g; the new rate applies from here on",
                       learning_rate, inner.base_lrs[0])
    inner.base_lrs = [learning_rate] * len(inner.base_lrs)
    inner.last_epoch = step * num_processes
    for group, base, factor in zip(optimizer.param_groups, inner.base_lrs, inner.lr_lambdas, strict=True):
        group["lr"] = base * factor(inner.last_epoch)
        group["initial_lr"] = base
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]
    logger.info("resuming at step %d with learning rate %g", step, optimizer.param_groups[0]["lr"])


class TrainState:
    """The optimisation step, checkpointed with the rest by `accelerator.save_state`."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class StopRequest:
    """Ends a run early with a checkpoint: on SIGTERM (a scheduler's pre-emption or time
    limit) or Ctrl-C, and once `minutes` have passed. Looked at after each optimizer step
    and agreed by all processes, so that they save the same checkpoint and stop together.
    A second Ctrl-C quits at once (the checkpoint being written is then left unfinished,
    and resume ignores it)."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.deadline = None if minutes is None else SCRIPT_START + 60 * minutes
        self.reason: str | None = None
        self._previous: dict[int, object] = {}
        # Workers of torchrun (what `accelerate launch` runs several processes with) outlive a
        # launcher killed with SIGKILL, training on unseen: they stop as at a SIGTERM.
        self.launcher = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.reason is None:
            self.reason = signal.Signals(signum).name
            logger.warning("%s: stopping after this step with a checkpoint (Ctrl-C again quits without one)",
                           self.reason)

    def due(self, accelerator) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = f"--max_train_minutes {self.minutes:g}"
        if self.reason is None and self.launcher is not None and os.getppid() != self.launcher:
            self.reason = "the launcher has gone"
            logger.warning("the launcher (process %d) has gone: stopping after this step with a checkpoint",
                           self.launcher)
        stop = any_process(accelerator, self.reason is not None)  # one process's signal or clock stops them all
        if stop and self.reason is None:
            self.reason = "a stop on another process"
        return stop


def diverged_message(args: argparse.Namespace, what: str) -> str:
    kept = list_checkpoints(args.output_dir)
    resume = (f"{kept[-1].name}, the newest checkpoint, was saved before it: resume from it with a lower rate"
              if kept else "no checkpoint was saved before it")
    return (f"training diverged: {what}. Lower --learning_rate (it is {args.learning_rate:g}), keep gradient "
            f"clipping on (--max_grad_norm 1) or give a longer --lr_warmup_steps; nothing of this step was saved, "
            f"and {resume}")


def check_finite_weights(args: argparse.Namespace, model: torch.nn.Module, ema: EMA, step: int) -> None:
    """Refuse to checkpoint weights that are no longer finite numbers (a finite loss can
    still end in an overflowing step), so the newest checkpoint is one to go on from."""
    for name, params in (("the weights", model.parameters()), ("the EMA weights", ema.shadow_params)):
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingDiverged(diverged_message(args, f"{name} hold NaN or infinity after step {step}"))


def train_batches(accelerator: "Accelerator", dataloader: Iterable, start_step: int,
                  grad_accum: int) -> Iterator[tuple[object, float]]:
    """Endless (batch, loss weight) pairs from the (prepared) loader, positioned at
    `start_step` optimizer steps: earlier epochs are skipped by number and the current one
    by batch count, so a resumed run continues with the batch it would have seen.
    Accelerate ends every epoch with an optimizer step, so an epoch holds
    ceil(batches / grad_accum) of them; its backward divides every loss by grad_accum, so
    the k < grad_accum batches of an epoch's last step weigh grad_accum / k each, and that
    step's gradient is a mean like the others'."""
    per_epoch = len(dataloader)
    if per_epoch == 0:  # checked now, not at the first batch: a generator would raise only then
        n, crops = accelerator.num_processes, len(dataloader.dataset)
        batch = dataloader.total_batch_size if hasattr(dataloader, "total_batch_size") else dataloader.batch_size
        each = f" for each of the {n} processes" if n > 1 else ""
        raise ValueError(f"the training set is smaller than one batch{each}: an epoch has {crops} crops and a step "
                         f"takes {batch}; raise --repeats, lower --train_batch_size or add images")
    epoch, steps_in = divmod(start_step, -(-per_epoch // grad_accum))
    return _endless_batches(accelerator, dataloader, epoch, steps_in * grad_accum, grad_accum)


def _endless_batches(accelerator, dataloader, epoch: int, skip: int, grad_accum: int):
    per_epoch = len(dataloader)
    tail = per_epoch % grad_accum  # batches of the epoch's last, shorter accumulation
    while True:
        dataloader.set_epoch(epoch)
        dataloader.dataset.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for i, batch in enumerate(loader, start=skip):
            yield batch, (grad_accum / tail if tail and i >= per_epoch - tail else 1.0)
        epoch, skip = epoch + 1, 0


@torch.no_grad()
def validation_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor] | None:
    """A fixed batch of center crops from the validation folder (or None)."""
    if not args.validation_data_dir:
        return None
    ds = SRDataset(args.validation_data_dir, resolution=args.resolution, scale=args.scale,
                   degradation=args.degradation, random_flip=False, center_crop=True, seed=args.seed,
                   sigma_y=args.sigma_y, realesrgan_config=REALESRGAN_CONFIGS[args.realesrgan_config])
    items = [ds[i] for i in range(min(args.num_validation_images, len(ds)))]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in ("hr", "lr")}


def ema_copy(model: oftsr.OFTSRModel, ema, device: torch.device) -> oftsr.OFTSRModel:
    """A separate eval-mode model holding the EMA weights (the training model is untouched)."""
    with torch.device("meta"):  # no random init (the EMA weights replace it): training's random stream untouched
        unet = oftsr.UNet(model.config)
    net = oftsr.OFTSRModel(unet.to_empty(device=device), **model.settings()).eval()
    ema.copy_to(net.unet)
    return net


def validation_start(net: oftsr.OFTSRModel, batch: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """x0 for the validation batch, with the same noise at every validation."""
    noise = torch.randn(batch["lr"].shape, generator=torch.Generator().manual_seed(seed)).to(batch["lr"].device)
    return noise_augment(batch["lr"], net.sigma_p, noise)


def validation_scores(name: str, out: torch.Tensor, batch: dict[str, torch.Tensor], scale: int,
                      lpips) -> dict[str, float]:
    """`val/<name>/<measure>` for outputs in [-1, 1] against the batch's HR crops."""
    scores = quality(((out.clamp(-1, 1) + 1) / 2).float().cpu(), ((batch["hr"] + 1) / 2).float().cpu(), scale, lpips)
    return {f"val/{name}/{k}": v for k, v in scores.items()}


def make_validation_lpips():
    """LPIPS when its weights are present here (never downloaded), else None with a log line.
    Built on a forked RNG: its layers' initialisation would otherwise move the global
    generator, which a resumed run has just restored, and change the t and noise it draws."""
    try:
        with torch.random.fork_rng(devices=[]):
            return LPIPS("cpu")
    except LPIPSUnavailable as e:
        logger.info("validation LPIPS %s", e)
        return None


def log_metrics(accelerator, output_dir: str, logs: dict[str, float], step: int) -> None:
    """To the trackers, and as one JSON line per step in `output_dir/metrics.jsonl`
    (a plain record that survives without any tracker installed)."""
    accelerator.log(logs, step=step)
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **logs}) + "\n")


def trim_metrics(output_dir: str, step: int) -> None:
    """Drop the `metrics.jsonl` rows of steps after `step`: a killed run logged steps that
    its last checkpoint does not hold, and the resumed run logs them again. A line cut off
    mid-write goes too. Rewritten atomically."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        with atomic_write(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        logger.info("metrics.jsonl: dropped %d row(s) logged after step %d", len(lines) - len(kept), step)


def log_images(accelerator, name: str, images: torch.Tensor, step: int) -> None:
    """Validation images (B, 3, H, W) in [-1, 1] to the trackers that show images."""
    pictures = ((images.clamp(-1, 1) + 1) / 2).float().cpu()
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(name, pictures, step)
        elif tracker.name == "wandb":
            import wandb

            levels = (pictures * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            tracker.log({name: [wandb.Image(picture) for picture in levels]}, step=step)


# What a teacher file records about the LR it learnt from, by the flag that sets it.
TEACHER_SETTINGS = ("scale", "sigma_p", "degradation")


def load_init_weights(spec: str, name_role: str, option: str, **fallback: object) -> oftsr.OFTSRModel:
    """The model whose weights start a run (`--init_from`, `--init_student`; a bundled name
    means its `name_role` file): only its weights are taken, so what its file records
    stands, and `fallback` fills in only what a file without metadata (an authors' .pth)
    does not say, in its metadata or its name (the authors' naming: `...-distil-...` is a
    student)."""
    path = oftsr.existing_model_path(spec, name_role, option)
    recorded = recorded_settings(path)
    return oftsr.load_model(path, **{k: v for k, v in fallback.items() if k not in recorded})


def load_teacher(args: argparse.Namespace, device: torch.device | str = "cpu") -> oftsr.OFTSRModel:
    """The teacher of `distill.py` and `make_pairs.py`. What its file records (`--scale`,
    `--sigma_p`, `--degradation`, a realesrgan teacher's `--realesrgan_config` and a
    noisy_avgpool teacher's `--sigma_y`) is what
    the student must learn from: a flag left out takes the file's value (written back into
    `args`), a flag that says otherwise is refused. Files that record none of it (an
    authors' `.pth`) take the flags."""
    # absolute: "./x4", once a string, would read as the bundled name "x4"
    args.teacher = str(oftsr.existing_model_path(args.teacher, "teacher", "--teacher").absolute())
    recorded = oftsr.read_metadata(args.teacher)
    if recorded_settings(args.teacher).get("role") == "student":  # an authors' file says it in its name
        raise ValueError(f"--teacher {Path(args.teacher).name} is a one-step student; the student learns from a "
                         f"teacher (what train_teacher.py exports, or a bundled name such as x4-teacher)")
    flags = {key: getattr(args, key) for key in TEACHER_SETTINGS}
    for key, (in_file, value) in contradicted_metadata(args.teacher, **flags).items():
        raise ValueError(f"the teacher was trained with --{key} {in_file}, but this run has --{key} {value}: leave "
                         f"the flag out, or pass --{key} {in_file}")
    try:  # flags the file agrees with change nothing; the others are what a file without metadata needs
        teacher = oftsr.load_model(args.teacher, device=device, role="teacher", **flags)
    except MissingInfoError as e:  # the library's message names the CLI's flags
        raise ValueError(f"the teacher {Path(args.teacher).name} does not say its {', '.join(e.missing)}: pass "
                         f"{' '.join(f'--{k} ...' for k in e.missing)}") from e
    for key in TEACHER_SETTINGS:
        setattr(args, key, getattr(teacher, key))
    if args.realesrgan_config is None:
        args.realesrgan_config = recorded.get("realesrgan_config", "full")
    if args.sigma_y is None:  # files from before it was recorded had the default
        args.sigma_y = float(recorded.get("sigma_y", SIGMA_Y))
    ours = training_metadata(args, teacher)
    check_training_metadata("the teacher", {k: v for k, v in recorded.items() if k in ours}, ours)
    return teacher


def next_step(role: str, path: Path) -> str:
    """What to do with an exported model file, said at the end of a run."""
    if role == "teacher":
        return (f"distil its one-step student with `accelerate launch trainer/distill.py --teacher {path} "
                f"--train_data_dir ... --output_dir ...`, or sample with it: `oftsr sample --model {path} photo.png -o out/`")
    return (f"upscale with it: `oftsr upscale --model {path} photo.png -o out/`; in ComfyUI, put it in models/oftsr and "
            f"pick it in Load OFTSR Model")


SHORT_EPOCH_STEPS = 50  # shorter epochs, with workers started as new interpreters, are said


def log_run_summary(args: argparse.Namespace, desc: str, items: int, crops: int, processes: int, step: int,
                    steps_per_epoch: int) -> None:
    """What the run will do, before its first step, as diffusers' scripts say it, and what
    in its flags would make the run other than meant."""
    if step >= args.max_train_steps:
        logger.warning("the checkpoint is at step %d, not before --max_train_steps %d: nothing to train; its weights "
                       "are exported as they are (give a larger --max_train_steps to go on)", step, args.max_train_steps)
    elif args.lr_warmup_steps > args.max_train_steps:
        logger.warning("--lr_warmup_steps %d is longer than the run (--max_train_steps %d): the learning rate ends at "
                       "%.2g%% of --learning_rate", args.lr_warmup_steps, args.max_train_steps,
                       100 * args.max_train_steps / args.lr_warmup_steps)
    spawned = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
    repeatable = getattr(args, "objective", None) != "fluxsr"  # teacher-made pairs take no --repeats
    if args.dataloader_num_workers and spawned != "fork" and steps_per_epoch < SHORT_EPOCH_STEPS and repeatable:
        # The workers restart every epoch (each epoch's crops are drawn anew in them); started
        # as fresh interpreters (Windows, macOS), that takes seconds each time.
        logger.warning("an epoch is %d optimizer step(s), and each restarts the %d loader workers, which the '%s' "
                       "start method makes slow: --repeats %d draws more crops per image and epoch",
                       steps_per_epoch, args.dataloader_num_workers, spawned,
                       args.repeats * -(-SHORT_EPOCH_STEPS // max(1, steps_per_epoch)))
    per_step = args.train_batch_size * processes * args.gradient_accumulation_steps
    found = "training images: %d in %s (%d crops per epoch)" if repeatable else \
        "teacher-made pairs: %d in %s (%d per epoch)"  # a make_pairs.py folder: crops already drawn
    logger.info("***** training the %s *****\n"
                f"  {found}\n"
                "  batch per process: %d; processes: %d; gradient accumulation: %d -> %d crops per optimizer step\n"
                "  optimizer steps: %d%s, about %.1f epochs\n"
                "  checkpoints: every %d steps in %s", desc, items, args.train_data_dir, crops,
                args.train_batch_size, processes, args.gradient_accumulation_steps, per_step,
                args.max_train_steps, f" (resuming at {step})" if step else "",
                args.max_train_steps / max(1, steps_per_epoch), args.checkpointing_steps, args.output_dir)


def run_training(accelerator, args: argparse.Namespace, model, optimizer, scheduler, dataloader, ema, *, desc: str,
                 step_losses, validate, export_name: str, extra_state: tuple = (), after_step=None,
                 provenance: dict[str, str] | None = None) -> int:
    """The loop both stages share: accumulate, clip, step, EMA, log, validate, checkpoint,
    and at the end export the EMA weights. `step_losses(batch)` returns a dict whose
    "loss" is optimised (the rest is logged); `validate(model, batch, step, lpips)`
    returns scalars. `extra_state` (objects with state_dict/load_state_dict) is
    checkpointed after the EMA and the step; `after_step()` runs after each optimizer
    step's EMA update. `provenance` (the teacher's `network_digest`) joins the metadata that the
    checkpoints and the exported file record, and that a resume must match. Resumes first
    when `--resume_from_checkpoint` says so. Returns the
    exit status: 0 at `--max_train_steps`, `EXIT_RESUMABLE` when stopped early (`StopRequest`)
    with a checkpoint of the last step and no export."""
    from tqdm.auto import tqdm

    start_trackers(accelerator, args)
    state = TrainState()
    metadata = {**training_metadata(args, accelerator.unwrap_model(model)), **(provenance or {})}
    accelerator.register_for_checkpointing(ema, state, *extra_state)  # the EMA first: export.py reads it by number
    dataset = dataloader.dataset
    train_items = getattr(dataset, "found", len(dataset.files)) if hasattr(dataset, "files") else len(dataset)
    data = data_settings(args, accelerator.num_processes, train_items)
    training = training_record(args, data)
    resume(accelerator, args, model_info(accelerator.unwrap_model(model), 0, metadata), data)
    if state.step:
        restore_schedule(scheduler, optimizer, args.learning_rate, state.step, accelerator.num_processes)
        restore_optimizer_flags(optimizer, args)
    batches = train_batches(accelerator, dataloader, state.step, args.gradient_accumulation_steps)  # a set smaller
    if accelerator.is_main_process:  # than one batch is refused before a summary of its epochs is said
        steps_per_epoch = -(-len(dataloader) // args.gradient_accumulation_steps)  # full batches only (drop_last)
        log_run_summary(args, desc, train_items, len(dataset), accelerator.num_processes, state.step, steps_per_epoch)
        trim_metrics(args.output_dir, state.step)
    val_batch = validation_batch(args, accelerator.device)
    lpips = make_validation_lpips() if val_batch is not None and accelerator.is_main_process else None
    bar = tqdm(total=args.max_train_steps, initial=state.step, desc=desc, disable=not accelerator.is_local_main_process)
    summed, micro = {}, 0  # losses over the micro-batches of one optimizer step
    stopped = False
    global _loop_started
    _loop_started = True
    # Whatever ends the loop, the loader's workers are shut down now: they ignore SIGTERM
    # (`ignore_stop_signals`), so left to the interpreter's exit they would wait forever.
    with closing(batches), StopRequest(args.max_train_minutes) as stop:
        while state.step < args.max_train_steps and not stopped:
            batch, weight = next(batches)
            with accelerator.accumulate(model):
                losses = step_losses(batch)
                accelerator.backward(losses["loss"] * weight)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            summed = {k: summed.get(k, 0) + v.detach().float() for k, v in losses.items()}
            micro += 1
            if not accelerator.sync_gradients:
                continue
            ema.update(accelerator.unwrap_model(model))
            if after_step is not None:
                after_step()
            state.step += 1
            bar.update(1)
            logs = {k: accelerator.gather(v / micro).mean().item() for k, v in summed.items()}
            summed, micro = {}, 0
            if not math.isfinite(logs["loss"]):  # the same gathered value on every process: all stop
                raise TrainingDiverged(diverged_message(args, f"the loss is {logs['loss']} at step {state.step}"))
            logs["lr"] = lr
            bar.set_postfix(loss=f"{logs['loss']:.4g}")  # significant digits: a distillation loss is under 1e-4
            # A stop is decided first: its checkpoint may have seconds left (a launcher's grace), not a validation.
            stopped = state.step < args.max_train_steps and stop.due(accelerator)
            due = (state.step % args.validation_steps == 0 or state.step == args.max_train_steps) and not stopped
            if val_batch is not None and due and accelerator.is_main_process:
                # Validation draws its own noise and builds a network: on a forked RNG, so that
                # validating never changes the t and noise that training draws next.
                cuda = [accelerator.device] if accelerator.device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    logs.update(validate(accelerator.unwrap_model(model), val_batch, state.step, lpips))
                logger.info("step %d: %s", state.step, {k: float(f"{v:.4g}") for k, v in logs.items()})
            log_metrics(accelerator, args.output_dir, logs, state.step)
            if stopped or state.step % args.checkpointing_steps == 0 or state.step == args.max_train_steps:
                check_finite_weights(args, accelerator.unwrap_model(model), ema, state.step)
                save_checkpoint(accelerator, args.output_dir, state.step, args.checkpoints_total_limit,
                                accelerator.unwrap_model(model), metadata, data, training)
    bar.close()
    if stopped:
        logger.warning("stopped at step %d of %d (%s): %s holds its checkpoint; run the same command with "
                       "--resume_from_checkpoint latest to go on", state.step, args.max_train_steps, stop.reason,
                       args.output_dir)
    elif accelerator.is_main_process:
        path = export_model({**model_info(accelerator.unwrap_model(model), state.step, metadata), "training": training},
                          ema.shadow_params, Path(args.output_dir) / export_name)
        logger.info("exported EMA weights to %s\n  next: %s", path, next_step(accelerator.unwrap_model(model).role, path))
    accelerator.end_training()
    return EXIT_RESUMABLE if stopped else 0
