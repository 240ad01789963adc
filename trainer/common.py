"""What every training script sets up: the checkout on sys.path, the way a script runs and
exits (`run_script`), logging, the accelerator and its trackers, the output folder's lock,
the training data, and the teacher or starting weights a run loads. The shared flags are
in `flags.py`, the training loop in `loop.py`, validation in `validation.py`, and
checkpoints, resume and export in `checkpoints.py`."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import weakref
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import torch

if TYPE_CHECKING:  # imported where a run starts: --help and argument errors stay fast
    from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import oftsr  # noqa: E402
from oftsr.checkpoint import MissingInfoError, contradicted_metadata, recorded_settings  # noqa: E402
from oftsr.devices import cpu_has_native_bf16  # noqa: E402
from oftsr.output_paths import remove_empty_folders  # noqa: E402
from oftsr.training.data import SRDataset, load_logger, scan_image_sizes, warn_image_sizes  # noqa: E402
from oftsr.training.degradations import DEGRADATION_SETTINGS, degradation_settings  # noqa: E402
from oftsr.training.realesrgan import REALESRGAN_CONFIGS  # noqa: E402

from checkpoints import any_process, check_training_metadata, training_metadata  # noqa: E402
from launcher import LAUNCHER, command_line, launcher_option  # noqa: E402

logger = logging.getLogger("oftsr.trainer")

# The exit status of a run stopped before --max_train_steps with its checkpoint saved
# (--max_train_minutes, SIGTERM, Ctrl-C): sysexits' EX_TEMPFAIL, "run it again to go on".
EXIT_RESUMABLE = 75

SCRIPT_START = time.monotonic()  # --max_train_minutes counts from here: set-up and resume included


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matrix products and convolutions (Ampere and newer;
    nothing changes on a CPU). cuDNN convolutions use TF32 by default already: this adds
    attention and the linear layers."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def run_script(main: Callable[[], int]) -> None:
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
        _remove_unused_output_dir()
    finally:
        _kill_leftover_workers()
    # Left to the interpreter's exit, a process group that has run a collective can abort
    # ("terminate called", SIGABRT) when another process leaves first, even after a run that
    # went well: a crash report instead of the run's status.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(status)


def _kill_leftover_workers() -> None:
    """Loader workers still running as the script ends: the loop shuts its own down, but
    after an error in the loader itself (one of its workers killed, by the system's OOM
    killer say) the others live on, and they ignore SIGTERM (`ignore_stop_signals`), with
    which the interpreter's exit stops them before it waits for them: the run would hang
    instead of exiting with the error."""
    for worker in multiprocessing.active_children():
        if worker.daemon:
            worker.kill()
            worker.join(10)


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers: a run to stop before it saves them."""


_loop_started = False
# What this run's main process made for --output_dir: the folders (the deepest first), and
# the lock file (None where one was there before) with the open file that holds the lock
# (a weak reference: the lock lasts as long as the run's accelerator keeps it open): a run
# whose set-up fails (a wrong data folder) leaves neither behind while they hold nothing else.
_made_for_output: tuple[list[Path], Path | None, weakref.ref | None] | None = None


def _remove_unused_output_dir() -> None:
    if _made_for_output is None:
        return
    folders, lock_path, lock_ref = _made_for_output
    lock = lock_ref() if lock_ref is not None else None
    try:
        if lock is not None and os.name == "nt":  # Windows removes no open file
            lock.close()
        if lock_path is not None:
            os.remove(lock_path)  # elsewhere while still locked: a run waiting on it cannot take it meanwhile
    except OSError:  # written to meanwhile: left as it is
        pass
    finally:
        if lock is not None:
            lock.close()
    remove_empty_folders(folders)  # its parents made with it, where they stayed empty


def enter_training_loop() -> None:
    """Called by the training loop before its first step: from then on an error is a bug to
    trace (`run_script` keeps its traceback), not a mistake of the set-up."""
    global _loop_started
    _loop_started = True


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


def warn_single_cpu_launch(num_processes: int) -> None:
    """`accelerate launch --cpu --num_processes N` starts one process whatever N says:
    said, with the launch that starts N CPU processes."""
    argv = command_line(LAUNCHER) if LAUNCHER is not None and num_processes == 1 else None
    if argv is None or launcher_option(argv, "cpu") is None:
        return
    asked = launcher_option(argv, "num_processes")
    if asked and asked.isdigit() and int(asked) > 1:
        logger.warning("accelerate launch --cpu starts one process whatever --num_processes %s says: for %s CPU "
                       "processes, launch with --multi_gpu --num_processes %s (and without --cpu)", asked, asked, asked)


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
    if accelerator.device.type == "cpu":
        precision = check_cpu_training(accelerator, precision)
        warn_single_cpu_launch(accelerator.num_processes)
    args.mixed_precision = precision  # what the model file records
    set_seed(args.seed, device_specific=True)
    if getattr(args, "scale_lr", False):  # before the optimizer is made
        crops = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        args.learning_rate *= crops
        logger.info("--scale_lr: learning rate %g (x %d crops per optimizer step)", args.learning_rate, crops)
    held_elsewhere = ""
    if accelerator.is_main_process:
        output = Path(args.output_dir).absolute()
        made = [folder for folder in (output, *output.parents) if not folder.exists()]
        new_lock = not (output / LOCK_NAME).exists()
        os.makedirs(args.output_dir, exist_ok=True)
        try:  # kept open (and locked) until the process ends
            accelerator.oftsr_lock = lock_output_dir(args.output_dir)
        except RunningElsewhere as e:
            held_elsewhere = str(e)
        else:
            global _made_for_output
            lock = accelerator.oftsr_lock
            _made_for_output = (made, output / LOCK_NAME if new_lock else None,
                                None if lock is None else weakref.ref(lock))
    if any_process(accelerator, bool(held_elsewhere)):  # every process stops, not only the one that knows
        raise RunningElsewhere(held_elsewhere or f"another run is writing to {args.output_dir} (the main process "
                                                 f"says which)")
    # The trackers start in run_training, once the run's length and warm-up are settled.
    accelerator.oftsr_project = args.tracker_project_name or project
    return accelerator


def cpu_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_cpu_training(accelerator: "Accelerator", precision: str) -> str:
    """The precision a CPU run trains in, with a warning for what would make it needlessly
    slow: fp16 (Accelerate ignores it on a CPU, silently: float32), bf16 without the CPU's
    own bf16 (emulated: 16x slower than float32 on a 2-core AVX2 CPU, measured), and one
    thread per process where the cores allow more (`accelerate launch` sets
    OMP_NUM_THREADS=1 unless told otherwise: 1.6x slower on 2 cores, measured)."""
    native_bf16 = cpu_has_native_bf16()
    if precision == "fp16":
        logger.warning("--mixed_precision fp16 needs a GPU: this run trains in float32%s",
                       " (this CPU has native bf16: --mixed_precision bf16 is faster)" if native_bf16 else "")
        precision = "no"
    elif precision == "bf16" and not native_bf16:
        logger.warning("--mixed_precision bf16: this CPU has no native bf16 (AVX512-bf16 or AMX), so it is emulated, "
                       "many times slower than float32: train with --mixed_precision no")
    # OMP_NUM_THREADS=1, not torch's thread count, which is the physical cores' where the
    # logical ones are twice as many
    cores = cpu_cores()
    per_process = cores // accelerator.num_processes
    if accelerator.is_main_process and os.environ.get("OMP_NUM_THREADS") == "1" and per_process > 1:
        logger.warning("training on the CPU with one thread per process, on %d cores (OMP_NUM_THREADS=1, which "
                       "`accelerate launch` sets): pass it --num_cpu_threads_per_process %d", cores, per_process)
    return precision


class RunningElsewhere(ValueError):
    """Another process holds the output folder's lock."""


LOCK_NAME = ".lock"


def lock_output_dir(output_dir: str) -> TextIO | None:
    """An exclusive lock on `output_dir/.lock`, for as long as the returned file stays open
    (the main process keeps it until it ends). Two runs in one folder would interleave their
    checkpoints and rotate away each other's; and the workers of a killed `accelerate launch`
    go on training. Returns None, with a warning, where the file system has no locks (some
    network shares)."""
    path = Path(output_dir) / LOCK_NAME
    f = open(path, "a+", encoding="utf-8")
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
            f"them too (kill the process named there, and its launcher's other workers)") from None
    if os.name != "nt" and not _names_file(path, f):  # removed by the run that held it, as its set-up failed:
        f.close()  # this lock is on a file no other run opens; take the one they will
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        return lock_output_dir(output_dir)
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def _names_file(path: Path, f: TextIO) -> bool:
    """Whether `path` still names the open file `f`."""
    try:
        found, held = os.stat(path), os.fstat(f.fileno())
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def multi_cpu() -> bool:
    """Several processes and no GPU: data-parallel on the CPU (gloo). Accelerate only
    detects this when told (`Accelerator(cpu=True)`, `PartialState(cpu=True)`), and its
    `--cpu` launch flag starts a single process."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def start_trackers(accelerator: Accelerator, args: argparse.Namespace, step: int = 0) -> None:
    """The trackers (--report_to), with the run's flags as their config: the values it runs
    with (the length --num_train_epochs makes, distill's capped warm-up). A run resumed at
    `step` has TensorBoard drop what a killed run logged after that step's checkpoint (a
    new run, all of it), as `trim_metrics` does for metrics.jsonl: one point a step."""
    if accelerator.is_main_process and accelerator.log_with:
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))
                  and k not in ("default_train_steps", "steps_from_epochs")}
        accelerator.init_trackers(accelerator.oftsr_project, config=config,
                                  init_kwargs={"tensorboard": {"purge_step": step + 1 if step else 0}})


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
    for key, default in DEGRADATION_SETTINGS.values():  # the file's, the default where it records none
        if getattr(args, key) is None:
            setattr(args, key, degradation_settings(teacher.degradation, recorded).get(key, default))
    ours = training_metadata(args, teacher)
    check_training_metadata("the teacher", {k: v for k, v in recorded.items() if k in ours}, ours)
    return teacher
