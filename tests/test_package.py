import asyncio
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

import comfy_stubs
from registry_archive import (NotAGitCheckout, comfy_includes, environment_for_tools, forbidden_uses, git,
                              registry_files, scan_archive)

ROOT = Path(__file__).resolve().parents[1]
# What a fresh ComfyUI has in its input/ folder: the only file a shipped workflow may load.
FRESH_INPUTS = {"example.png"}
FILE_NAME = re.compile(r"\.(png|jpe?g|webp|bmp|gif|tiff?|exr|mp4|webm|mov|wav|mp3|flac|npy|json|txt|safetensors|pth?|ckpt)$",
                       re.IGNORECASE)


def test_comfyui_entry_imports_without_comfyui():
    assert "comfy" not in sys.modules
    spec = importlib.util.spec_from_file_location("oftsr_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # one registration mechanism (V3)


def test_library_does_not_import_comfyui():
    for path in (ROOT / "oftsr").rglob("*.py"):
        text = path.read_text()
        assert "import comfy" not in text and "from comfy" not in text and "folder_paths" not in text, path


def test_requirements_leave_torch_alone():
    reqs = [line.split(">")[0].split("=")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert "torch" not in reqs and "torchvision" not in reqs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(d for d in project["dependencies"] if d.startswith("torch") and not d.startswith("torchdiffeq"))
    assert "<" not in torch_req and "==" not in torch_req  # never forces a torch reinstall
    assert project["scripts"]["oftsr"] == "oftsr.cli:main"


def test_ci_runs_the_readme_test_command():
    """.ci/run's last line is the README's test command, verbatim, and it installs the test extra."""
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command.startswith("python3 -m venv .venv && ") and command.endswith("python -m pytest -q"), command
    assert 'pip install -e ".[test]"' in command
    assert f"\n{command}\n" in (ROOT / "README.md").read_text()


def test_no_eval_exec_or_runtime_installs():
    # no eval/exec, and nothing that runs pip (a message telling the user to pip install is fine)
    banned = re.compile(r"(?<![\w.])(eval|exec)\(|(subprocess\.\w+|os\.system)\([^)]*pip")
    for folder in ("oftsr", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not banned.search(path.read_text()), path
    assert not (ROOT / "install.py").exists()  # ComfyUI-Manager would run it


def test_registry_metadata():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "requires-comfyui" in comfy
    assert "comfyui" not in pyproject["project"]["name"].lower()
    repository = pyproject["project"]["urls"]["Repository"]
    assert repository.startswith("https://github.com/")

    # the licence: the registry's {file = ...} form, and the file says MIT
    assert pyproject["project"]["license"] == "MIT" and pyproject["project"]["license-files"] == ["LICENSE"]  # PEP 639
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "OFTSR contributors" in license_text

    # the icon: a raw URL of a file in this repository's main branch, small and square
    owner_repo = repository.removeprefix("https://github.com/").rstrip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert comfy["Icon"].startswith(prefix), comfy["Icon"]
    icon = ROOT / comfy["Icon"].removeprefix(prefix)
    with Image.open(icon) as im:
        assert im.format in ("PNG", "JPEG", "WEBP") and im.width == im.height and 64 <= im.width <= 512, (im.format, im.size)
    assert icon.stat().st_size < 200_000
    assert "web" not in comfy  # no bundled frontend code


# --------------------------------------------------------------------------- the Comfy Registry archive


@pytest.fixture(scope="module")
def archive() -> list[str]:
    try:
        return registry_files(ROOT)
    except NotAGitCheckout as e:
        pytest.skip(f"the registry archive is built from git-tracked files: {e}")


def test_archive_holds_the_pack_and_nothing_else(archive):
    assert {"__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md"} <= set(archive)
    assert {f"nodes/{p.name}" for p in (ROOT / "nodes").glob("*.py")} <= set(archive)
    assert {"oftsr/__init__.py", "oftsr/inference.py"} <= set(archive)
    weights = [f for f in archive if f.startswith("oftsr/weights/") and f.endswith(".safetensors")]
    assert sorted(weights) == sorted(f"oftsr/weights/{name}-{role}.safetensors" for name in ("x4", "x4-real")
                                     for role in ("student", "teacher"))  # the bundled models
    assert all((ROOT / f).stat().st_size > 1_000_000 for f in weights)
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "workflows").glob("*.json")} <= set(archive)
    left_out = ("trainer/", "bench/", "tests/", "scripts/", "assets/", "oftsr/training/", ".ci/",
                "oftsr/cli.py", "oftsr/output_paths.py", "oftsr/__main__.py", "oftsr/images/", "oftsr/icc.py",
                "oftsr/exif.py")  # the CLI and its image files come with pip install
    assert not [f for f in archive if f.startswith(left_out)]
    # the README's pictures and pages under docs/ come along (a registry install reads it offline)
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert linked and linked <= set(archive), sorted(linked - set(archive))
    assert not comfy_includes(ROOT)  # everything shipped is tracked; nothing forced in


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # comfy-cli's own pathspec call
def test_archive_matches_comfy_cli(archive, tmp_path, monkeypatch):
    """The file list is the one comfy-cli zips for `comfy node publish` (run in-process)."""
    file_utils = pytest.importorskip("comfy_cli.file_utils", reason="comfy-cli is not installed (pip install comfy-cli)")
    monkeypatch.chdir(ROOT)
    file_utils.zip_files(tmp_path / "node.zip", includes=comfy_includes(ROOT))
    import zipfile
    with zipfile.ZipFile(tmp_path / "node.zip") as z:
        assert sorted(z.namelist()) == archive


def test_archive_python_has_no_network_process_environment_or_eval(archive):
    """What the registry's scanner flags: network calls, subprocess, os.environ reads,
    eval/exec, and any bundled JavaScript."""
    problems = scan_archive(ROOT, archive)
    assert not problems, "\n".join(problems)
    assert sum(f.endswith(".py") for f in archive) >= 15  # the scan saw the pack


@pytest.mark.parametrize("source", [
    "import socket", "import urllib.request", "from urllib.request import urlopen", "import requests as r\nr.get(u)",
    "import http.client", "from http import client", "import aiohttp", "import subprocess",
    "from subprocess import run", "import os\nos.system('x')", "import os\nos.popen('x')", "import os\nos.execv(a, b)",
    "import os\nx = os.environ['HOME']", "import os\nos.environ.get('HOME')", "import os\nos.getenv('HOME')",
    "from os import environ", "from os import getenv as g", "import os as o\no.environ", "import os\ngetattr(os, 'environ')",
    "eval('1')", "exec('x = 1')", "__import__('socket')", "import importlib\nimportlib.import_module('x')",
    "import torch\ntorch.hub.load('a', 'b')", "from torch.hub import download_url_to_file",
])
def test_scanner_flags(source):
    assert forbidden_uses(source), source


@pytest.mark.parametrize("source", [
    "import os\nos.path.join('a', 'b')", "import os\nos.replace(a, b)", "import torch\ntorch.compile(f)",
    "import re\nre.compile('x')", "model.eval()", "from pathlib import Path", "x = 'os.environ in a string'",
    "def load(compile=False):\n    if compile:\n        pass",
])
def test_scanner_passes(source):
    assert not forbidden_uses(source), source


def test_archive_alone_loads_every_node(archive, tmp_path, monkeypatch):
    """The archive is self-sufficient: the pack imports from a copy of just those files,
    and every module it loads comes from the copy."""
    pack_dir = tmp_path / "pack"
    pack_dir.mkdir()
    for name in archive:
        if not name.endswith(".safetensors"):  # not needed to import
            (pack_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, pack_dir / name)
    comfy_stubs.install(monkeypatch, tmp_path / "models")
    name = "oftsr_registry_archive_under_test"
    spec = importlib.util.spec_from_file_location(name, pack_dir / "__init__.py", submodule_search_locations=[str(pack_dir)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    try:
        spec.loader.exec_module(module)
        classes = asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
        assert [c.define_schema().node_id for c in classes] == ["OFTSRModelLoader", "OFTSRUpscale", "OFTSRTeacherSampler",
                                                             "OFTSRTSweep", "OFTSRRegionalTradeoff", "OFTSRAsUpscaleModel"]
        loaded = [m for k, m in sys.modules.items() if k.startswith(name + ".")]
        assert len(loaded) >= 10
        assert all(Path(m.__file__).resolve().is_relative_to(pack_dir.resolve()) for m in loaded)
    finally:
        for k in [k for k in sys.modules if k.startswith(name + ".")]:
            del sys.modules[k]


def test_comfy_node_validate_is_clean(archive, tmp_path):
    """`comfy node validate` (comfy-cli) on the tracked files: the registry's metadata and
    ruff security checks (eval/exec, several statements on one line) pass without warnings.
    It runs on a copy, with its own HOME and telemetry off; it needs no network."""
    comfy = shutil.which("comfy", path=str(Path(sys.executable).parent)) or shutil.which("comfy")
    if comfy is None:
        pytest.skip("comfy-cli is not installed (pip install comfy-cli); `comfy node validate` not run")
    copy = tmp_path / "repo"
    for name in git(ROOT, "ls-files"):
        if (ROOT / name).is_file() and not name.endswith(".safetensors"):  # weights: not read, not linted
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, copy / name)
    (tmp_path / "home").mkdir()
    result = subprocess.run([comfy, "--skip-prompt", "--no-json", "node", "validate"], cwd=copy, capture_output=True,
                            text=True, timeout=300, env=environment_for_tools(tmp_path / "home"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output and "warning" not in output.lower(), output


def test_workflows_need_only_the_example_image():
    """A fresh ComfyUI's input/ holds only example.png: no shipped workflow may load any
    other file (a mask is made in the graph, e.g. with core mask nodes)."""
    workflows = sorted((ROOT / "workflows").glob("*.json"))
    assert len(workflows) >= 4
    for path in workflows:
        workflow = json.loads(path.read_text())
        for node in workflow["nodes"]:
            if node["type"] in ("Note", "MarkdownNote"):
                continue
            values = node.get("widgets_values") or []
            values = values.values() if isinstance(values, dict) else values
            files = {v for v in values if isinstance(v, str) and FILE_NAME.search(v.strip())}
            assert files <= FRESH_INPUTS, (path.name, node["type"], files)
            if node["type"].startswith("Load"):
                assert node["type"] == "LoadImage" and values and list(values)[0] == "example.png", (path.name, node)


def test_workflow_nodes_name_the_pack_and_its_version():
    """cnr_id and ver, as ComfyUI's frontend saves them: ComfyUI-Manager finds the pack of a
    shared workflow's missing nodes by them."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for path in sorted((ROOT / "workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"].startswith("OFTSR"):
                assert node["properties"].get("cnr_id") == "oftsr" and node["properties"].get("ver") == version, \
                    (path.name, node["type"])


def test_the_teacher_template_runs_on_a_crop():
    """The teacher costs 31 network evaluations: its template crops example.png (768 px) to
    a 256 px piece, minutes on a CPU instead of hours, and its note says so. The piece is at
    the top left: core Image Crop moves an offset past a smaller image's edge to its last
    pixel, so any other place gives a user's small image a result a few pixels wide."""
    workflow = json.loads((ROOT / "workflows" / "oftsr_teacher_vs_student.json").read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    source = {link[0]: link[1] for link in workflow["links"]}  # link id -> origin node id
    for node in (n for n in workflow["nodes"] if n["type"] in ("OFTSRTeacherSampler", "OFTSRUpscale")):
        image = next(i for i in node["inputs"] if i["name"] == "image")
        crop = nodes[source[image["link"]]]
        assert crop["type"] == "ImageCrop" and crop["widgets_values"][:2] == [256, 256], node["type"]
        assert crop["widgets_values"][2:] == [0, 0], crop["widgets_values"]
    note = next(n for n in workflow["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "256 px" in note and "bypass the crop" in note


def test_version_is_the_same_everywhere():
    import oftsr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert oftsr.__version__ == project["version"]
