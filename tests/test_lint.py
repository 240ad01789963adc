"""Lint: unused or undefined names and likely bugs (pyproject.toml's [tool.ruff.lint]),
over every tracked Python file. ruff comes with the test extras (through comfy-cli)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")  # this venv's first
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    result = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _text_opens_without_encoding(source: str) -> list[int]:
    """Lines that open a file as text with the locale's encoding: `open(...)` in a text
    mode, `Path.read_text()` or `Path.write_text(...)` without `encoding=`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                lines.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            lines.append(node.lineno)
    return lines


def test_text_files_name_their_encoding():
    # Windows opens text in the locale's code page (cp1252, cp932): an image named 写真.png
    # in a results table or a log line would fail there at the end of a run.
    assert _text_opens_without_encoding("open(p)\nopen(p, 'rb')\np.read_text()\np.write_text(s, encoding='utf-8')\n") \
        == [1, 3]
    tracked = subprocess.run(["git", "ls-files", "*.py"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    found = [f"{path}:{line}" for path in tracked if not path.startswith("tests/")
             for line in _text_opens_without_encoding((ROOT / path).read_text(encoding="utf-8"))]
    assert not found, "text files opened with the locale's encoding (add encoding=\"utf-8\"): " + ", ".join(found)
