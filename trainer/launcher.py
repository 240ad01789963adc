"""The launcher (torchrun, `accelerate launch`) that started this training process, found
as the script starts: imported first by the training scripts, before torch (seconds of
import), so that a launcher killed at any time after is seen. Its workers outlive a launcher
killed with SIGKILL (they are re-parented) and would train on unseen; `loop.StopRequest`
stops them when it goes."""

from __future__ import annotations

import os
from pathlib import Path

# What a launcher sets in its training processes' environment: torchrun (several processes),
# and `accelerate launch`'s single-process launcher (which sets it whatever the device).
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


# A launcher's command line: its program (`accelerate launch`, `accelerate-launch`, torchrun)
# or module (`python -m accelerate.commands.launch`, `-m torch.distributed.run`).
LAUNCHER_PROGRAMS = ("accelerate", "accelerate-launch", "torchrun")
LAUNCHER_MODULES = ("accelerate.commands.launch", "torch.distributed.run", "torch.distributed.launch")


def command_line(pid: int) -> list[str] | None:
    """Process `pid`'s arguments, where the system shows them (Linux's /proc)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def launcher_process() -> int | None:
    """The launcher this process was started by (torchrun, `accelerate launch`), or None.
    Its training processes outlive it when it is killed with SIGKILL, training on unseen, so
    they stop when it goes. Run by plain python (a shell, nohup) the parent may go, and the
    run goes on: the environment a launcher sets (ACCELERATE_USE_CPU can be a user's own
    too) is checked against the parent's command line where the system shows it."""
    if not any(name in os.environ for name in LAUNCHER_ENV):
        return None
    parent = os.getppid()
    argv = command_line(parent)
    return parent if argv is None or is_launcher(argv) else None


def is_launcher(argv: list[str]) -> bool:
    """Whether a command line runs a launcher: its program, or python's `-m` module, before
    the program python runs (whose own arguments may say anything)."""
    for i, arg in enumerate(argv):
        module = i > 0 and argv[i - 1] == "-m"
        if Path(arg).name in LAUNCHER_PROGRAMS or (module and arg in LAUNCHER_MODULES):
            return True
        if module or arg.endswith(".py"):
            return False
    return False


def launcher_option(argv: list[str], name: str) -> str | None:
    """The value of the launcher's `--name` option in its command line `argv` (`--name V`,
    `--name=V`, with hyphens or underscores, as Accelerate takes them; "" for a switch),
    looked for before the training script, whose own arguments it leaves alone; None
    where the option is not given."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, arg in enumerate(argv):
        if arg.endswith(".py"):
            return None
        key, eq, value = arg.partition("=")
        if key in spellings:
            if eq:
                return value
            following = argv[i + 1] if i + 1 < len(argv) else ""
            return "" if following.startswith("-") or following.endswith(".py") else following
    return None


LAUNCHER = launcher_process()  # found at import, the scripts' first: a launcher killed later is seen at the first step
