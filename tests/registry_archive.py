"""What the Comfy Registry ships of this repository, and the checks its scanner makes.

`comfy node publish` (comfy-cli) zips the git-tracked files minus the `.comfyignore`
patterns (gitignore syntax), plus the files under `[tool.comfy] includes`. The registry
then flags a version whose archive makes network calls, starts processes, reads the
environment, evaluates code, or bundles JavaScript.

Used by tests/test_package.py (the checks) and tests/test_comfyui_integration.py (which
installs exactly this file list into a real ComfyUI).
"""

from __future__ import annotations

import ast
import os
import subprocess
import tomllib
from pathlib import Path

# Modules that open connections, start processes or import code by name.
NETWORK_MODULES = {"socket", "ssl", "urllib", "urllib3", "http", "requests", "httpx", "aiohttp", "websocket",
                   "websockets", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib", "xmlrpc", "webbrowser",
                   "paramiko", "huggingface_hub", "gdown", "wget"}
PROCESS_MODULES = {"subprocess", "multiprocessing", "pty", "importlib"}
FORBIDDEN_MODULES = NETWORK_MODULES | PROCESS_MODULES
# Dotted names (after import aliases are resolved) that download, run a process or read the environment.
FORBIDDEN_NAMES = {"os.environ", "os.environb", "os.getenv", "os.getenvb", "os.putenv", "os.system", "os.popen",
                   "os.startfile", "os.fork", "os.forkpty", "torch.hub", "torch.utils.model_zoo",
                   "torchvision.datasets.utils", "torch.utils.cpp_extension"}
FORBIDDEN_NAME_PREFIXES = ("os.exec", "os.spawn", "os.posix_spawn")
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_SUFFIXES = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".vue", ".wasm", ".html", ".htm")


class NotAGitCheckout(RuntimeError):
    pass


def git(root: Path, *args: str) -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise NotAGitCheckout(f"{root} is not a git checkout (or git is missing): {e}") from None
    return [line for line in out.splitlines() if line.strip()]


def comfy_includes(root: Path) -> list[str]:
    return tomllib.loads((root / "pyproject.toml").read_text())["tool"]["comfy"].get("includes", [])


def registry_files(root: Path) -> list[str]:
    """The archive's file list: tracked files not matched by `.comfyignore`, plus `includes`.

    The patterns are matched by git itself (`ls-files --ignored --exclude-from`), which is
    the gitignore syntax that comfy-cli's matcher follows."""
    root = Path(root)
    tracked = [p for p in git(root, "ls-files") if (root / p).is_file()]
    ignore = root / ".comfyignore"
    ignored = set(git(root, "ls-files", "--cached", "--ignored", f"--exclude-from={ignore}")) if ignore.is_file() else set()
    files = {p for p in tracked if p not in ignored}
    for include in comfy_includes(root):  # forced in, ignored or not, tracked or not
        base = root / include.lstrip("/")
        found = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        files.update(p.relative_to(root).as_posix() for p in found)
    return sorted(files)


def copy_archive(root: Path, target: Path) -> list[str]:
    """Copy the archive's files into `target` (as the registry would unpack them)."""
    files = registry_files(root)
    for name in files:
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((Path(root) / name).read_bytes())
    return files


# --------------------------------------------------------------------------- the scanner


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def forbidden_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every network call, process start, environment read, eval/exec or dynamic import
    in `source`, as "file:line: what" (an empty list when it is clean)."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> dotted name it stands for
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    def check_name(node: ast.AST, name: str) -> None:
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        if full.split(".")[0] in FORBIDDEN_MODULES:
            flag(node, full)
        elif any(full == n or full.startswith(n + ".") for n in FORBIDDEN_NAMES) or full.startswith(FORBIDDEN_NAME_PREFIXES):
            flag(node, full)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                check_name(node, a.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                check_name(node, f"{node.module}.{a.name}")
    # names the file binds itself (a parameter called `compile` is not the builtin)
    bound = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    bound |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_BUILTINS and node.id not in bound | aliases.keys():
            flag(node, f"{node.id}()")
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name and name.split(".")[0] in aliases:
                check_name(node, name)
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("getattr", "builtins.getattr"):
            # getattr(os, "environ") and the like
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[0], ast.Name):
                check_name(node, f"{node.args[0].id}.{node.args[1].value}")
    return sorted(set(found), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def scan_archive(root: Path, files: list[str]) -> list[str]:
    problems = [f"{name}: bundled web code" for name in files if name.lower().endswith(FORBIDDEN_SUFFIXES)]
    for name in files:
        if name.endswith(".py"):
            problems += forbidden_uses((Path(root) / name).read_text(encoding="utf-8"), name)
    return problems


def environment_for_tools(home: Path) -> dict[str, str]:
    """A child process environment with its own HOME (so a tool's settings land there) and
    telemetry off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY", "XDG_"))}
    env.update(HOME=str(home), DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1", NO_COLOR="1", TERM="dumb",
               COLUMNS="200")
    return env
