import importlib.util
import inspect
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    readme = (ROOT / "README.md").read_text()
    command = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q'
    assert command in readme and command in (ROOT / ".ci" / "run").read_text()


def test_no_eval_exec_or_runtime_installs():
    import re

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
    assert pyproject["project"]["urls"]["Repository"].startswith("https://")


def test_version_is_the_same_everywhere():
    import oftsr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert oftsr.__version__ == project["version"]
