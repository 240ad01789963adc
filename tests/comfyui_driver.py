"""Drive a real ComfyUI over HTTP for the integration test (tests/test_comfyui_integration.py).

Stdlib only, but for the websocket (aiohttp, one of ComfyUI's own requirements). Everything
is loopback and every wait is bounded. Nothing here imports ComfyUI: the server runs in a
child process of its own (`python main.py --cpu ...`).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"

# Node types that exist only in the web page: they are not in /object_info and never run.
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}  # the frontend adds control_after_generate to these even without the flag


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- HTTP


class HTTPError(RuntimeError):
    def __init__(self, status: int, body: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {body[:4000]}")
        self.status, self.body = status, body


def http(base: str, path: str, payload=None, timeout: float = 30.0):
    """GET (or POST `payload` as JSON) `base + path`; returns the decoded JSON (or bytes)."""
    url = base + path
    assert url.startswith(f"http://{HOST}:"), url  # loopback only
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
            kind = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raise HTTPError(e.code, e.read().decode("utf-8", "replace"), url) from None
    return json.loads(body) if "json" in kind else body


# --------------------------------------------------------------------------- the server


def supported_flags(comfyui: Path) -> str:
    """The text of ComfyUI's argument parser, to pass optional flags only where they exist."""
    try:
        return (comfyui / "comfy" / "cli_args.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


class ComfyServer:
    """`python main.py --cpu --listen 127.0.0.1 --port N ...` in `comfyui`, output to a log file.

    Use as a context manager: the server is stopped (SIGTERM, then SIGKILL) on exit,
    whatever happened."""

    def __init__(self, comfyui: Path, *, work: Path, input_dir: Path, output_dir: Path,
                 extra_model_paths: Path | None = None, preview_method: str | None = None,
                 only_custom_node: str | None = None, start_timeout: float = 240.0, max_lifetime: int = 1800):
        self.comfyui, self.work = Path(comfyui), Path(work)
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = self.work / "comfyui.log"
        self.start_timeout = start_timeout
        cli = supported_flags(self.comfyui)
        args = [sys.executable, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
                "--output-directory", str(output_dir), "--input-directory", str(input_dir)]
        if extra_model_paths is not None:
            args += ["--extra-model-paths-config", str(extra_model_paths)]
        if preview_method is not None:
            args += ["--preview-method", preview_method]
        # Keep the checkout clean and the run isolated where this ComfyUI can.
        temp, user = self.work / "temp", self.work / "user"
        temp.mkdir(exist_ok=True)
        user.mkdir(exist_ok=True)
        optional = [("--temp-directory", [str(temp)]), ("--user-directory", [str(user)]),
                    ("--database-url", ["sqlite:///:memory:"]), ("--disable-auto-launch", []),
                    ("--disable-api-nodes", [])]
        if only_custom_node:
            optional.append(("--disable-all-custom-nodes", []))
            optional.append(("--whitelist-custom-nodes", [only_custom_node]))
        for flag, values in optional:
            if f'"{flag}"' in cli:
                args += [flag, *values]
        self.args = args
        # A hard cap on the child's lifetime in case this process dies without cleaning up.
        if sys.platform != "win32" and Path("/usr/bin/timeout").exists():
            self.args = ["/usr/bin/timeout", "-k", "10", str(max_lifetime), *args]
        self.proc: subprocess.Popen | None = None

    # -- lifecycle

    def __enter__(self) -> "ComfyServer":
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny models; do not fight other work for cores
        env.setdefault("MKL_NUM_THREADS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                http(self.base, "/system_stats", timeout=5)
                return
            except (OSError, HTTPError):
                time.sleep(1.0)
        raise TimeoutError(f"ComfyUI did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)  # the group this server was started in (start_new_session)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "_log", None) is not None and not self._log.closed:
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 6000) -> str:
        return self.log()[-n:]

    # -- API

    def get(self, path: str, timeout: float = 30.0):
        return http(self.base, path, timeout=timeout)

    def post(self, path: str, payload, timeout: float = 30.0):
        return http(self.base, path, payload, timeout=timeout)

    def queue(self, prompt: dict, client_id: str = "oftsr-integration-test") -> str:
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        except HTTPError as e:
            raise AssertionError(f"/prompt refused the workflow: {e}") from None
        assert not answer.get("node_errors"), answer
        return answer["prompt_id"]

    def run_watched(self, prompt: dict, timeout: float = 300.0) -> tuple[dict, list[tuple[int, bytes]]]:
        """Queue `prompt` with a websocket open, as the browser does, and wait for it to end.

        Returns its history entry and the binary messages the server sent this client while it
        ran, as (event type, payload): a step preview is event 1, its payload a 4-byte image
        format (1 JPEG, 2 PNG) and the image."""
        import aiohttp

        client_id = uuid.uuid4().hex
        ended = {"execution_success", "execution_error", "execution_interrupted"}

        async def watch() -> tuple[str, list[tuple[int, bytes]]]:
            binary: list[tuple[int, bytes]] = []
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.base}/ws?clientId={client_id}", max_msg_size=0) as ws:
                    prompt_id = await asyncio.to_thread(self.queue, prompt, client_id)
                    async for message in ws:
                        if message.type == aiohttp.WSMsgType.BINARY:
                            binary.append((struct.unpack(">I", message.data[:4])[0], bytes(message.data[4:])))
                        elif message.type == aiohttp.WSMsgType.TEXT:
                            event = json.loads(message.data)
                            data = event.get("data") or {}
                            if data.get("prompt_id") == prompt_id and (
                                    event.get("type") in ended
                                    or (event.get("type") == "executing" and data.get("node") is None)):
                                return prompt_id, binary
                        else:  # closed or failed
                            break
            raise RuntimeError(f"the websocket closed before prompt {prompt_id} ended:\n{self.log_tail()}")

        try:
            prompt_id, binary = asyncio.run(asyncio.wait_for(watch(), timeout))
        except (asyncio.TimeoutError, TimeoutError):
            raise TimeoutError(f"a prompt did not end within {timeout:.0f} s:\n{self.log_tail()}") from None
        return self.wait(prompt_id, timeout=60), binary

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Poll /history/<id> until the prompt finished; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}:\n{self.log_tail()}")
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # ComfyUI adds a prompt to the history when it has finished (or failed)
                return entry
            time.sleep(0.5)
        try:
            self.post("/interrupt", {"prompt_id": prompt_id})
        except (OSError, HTTPError):
            pass
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")


# --------------------------------------------------------------------------- UI workflow -> API prompt


def spec_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    kind, options = spec[0], spec_options(spec)
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def extra_values_after(name: str, spec) -> int:
    """Values the frontend stores after this widget's own (control_after_generate's "fixed").
    An INT named seed or noise_seed has the control unless its spec says false."""
    options = spec_options(spec)
    return int(bool(options.get("control_after_generate", spec[0] == "INT" and name in SEED_NAMES)))


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    """A workflow in the UI format (what is saved and shared) as the API prompt of POST /prompt.

    Widget values are positional in the node's input order (required, then optional);
    a seed's control_after_generate value is skipped; values that trail all widgets
    (LoadImage's upload button) are ignored; links become [source node id, output slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) == 2:  # notes; muted nodes do not run
            continue
        if node.get("mode", 0) == 4:
            raise NotImplementedError(f"node {node['id']} ({kind}) is bypassed; not supported by this converter")
        if kind not in object_info:
            raise KeyError(f"node {node['id']}: type {kind!r} is not in /object_info (missing node)")
        info = object_info[kind]
        order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        inputs: dict = {}
        position = 0
        for section in ("required", "optional"):
            for name in order.get(section, []):
                spec = info["input"][section][name]
                if is_widget(spec):
                    if isinstance(values, dict):
                        if name in values:
                            inputs[name] = values[name]
                    elif position < len(values):
                        inputs[name] = values[position]
                        position += 1 + extra_values_after(name, spec)
                if name in linked:
                    link = links[linked[name]]
                    inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    # links from notes or muted nodes would dangle
    for node_id, entry in prompt.items():
        for name, value in entry["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt:
                raise ValueError(f"node {node_id} input {name} links to node {value[0]}, which does not run")
    return prompt
