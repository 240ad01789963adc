"""Bundled models chosen by name: `x4` and `x4-real`, resolved the same way by the CLI and
the library; a path still works; an installation without a pair says how to make it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oftsr
from oftsr.cli import main
from oftsr.training.eval_command import eval_model_paths
from oftsr.images import load_image
from oftsr.weights import WEIGHTS_DIR, resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def without_x4_real(tmp_path, monkeypatch) -> Path:
    """An installation that has the x4 pair alone (as versions before 0.8 did)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for role in ("student", "teacher"):
        (folder / f"x4-{role}.safetensors").symlink_to(WEIGHTS_DIR / f"x4-{role}.safetensors")
    monkeypatch.setattr(oftsr.weights, "WEIGHTS_DIR", folder)
    return folder


def test_names_resolve_to_the_bundled_files():
    assert resolve_model(None, "student") == WEIGHTS_DIR / "x4-student.safetensors"
    assert resolve_model(None, "teacher") == oftsr.default_model_path("teacher") == WEIGHTS_DIR / "x4-teacher.safetensors"
    assert resolve_model("x4", "teacher") == WEIGHTS_DIR / "x4-teacher.safetensors"
    assert resolve_model("x4-teacher", "student") == WEIGHTS_DIR / "x4-teacher.safetensors"  # an explicit role wins
    assert resolve_model("runs/x4-student.safetensors", "student") == Path("runs/x4-student.safetensors")
    assert resolve_model("x4-students", "student") == Path("x4-students")  # not a name: a path
    assert resolve_model("x4-real", "teacher") == WEIGHTS_DIR / "x4-real-teacher.safetensors"
    assert resolve_model("x4-real-student", "teacher") == WEIGHTS_DIR / "x4-real-student.safetensors"
    for name, degradation in (("x4", "bicubic"), ("x4-real", "realesrgan")):
        for role in ("student", "teacher"):
            assert oftsr.bundled_model_path(name, role).is_file()
            model = oftsr.load_model(resolve_model(name, role))
            assert (model.role, model.degradation) == (role, degradation)
    assert list(oftsr.BUNDLED_MODELS) == ["x4", "x4-real"]
    assert oftsr.weights.shipped_model_names() == ["x4", "x4-real"]


def test_a_model_that_is_not_bundled_says_how_to_make_it(without_x4_real):
    for spec in ("x4-real", "x4-real-teacher"):
        with pytest.raises(FileNotFoundError) as e:
            resolve_model(spec, "student")
        message = str(e.value)
        assert "is not bundled in this version" in message and "real camera photographs" in message
        assert "scripts/train_x4_models.sh x4-real" in message
    assert (ROOT / "scripts" / "train_x4_models.sh").is_file()  # the recipe the message names exists
    with pytest.raises(ValueError, match="bundled names are x4, x4-real"):
        oftsr.bundled_model_path("x2", "student")
    assert oftsr.weights.model_name_help() == "x4; x4-real: not bundled in this version"


def test_eval_model_names(tmp_path):
    assert eval_model_paths(["x4-real"]) == [WEIGHTS_DIR / "x4-real-student.safetensors",
                                             WEIGHTS_DIR / "x4-real-teacher.safetensors"]
    assert eval_model_paths(None) == [WEIGHTS_DIR / "x4-student.safetensors", WEIGHTS_DIR / "x4-teacher.safetensors"]
    assert eval_model_paths(["x4-student"]) == [WEIGHTS_DIR / "x4-student.safetensors"]
    (tmp_path / "other.safetensors").write_bytes(b"")
    assert eval_model_paths(["x4", str(tmp_path / "other.safetensors")])[-1] == tmp_path / "other.safetensors"
    with pytest.raises(FileNotFoundError, match="--model absent.safetensors: no such file, and not a "
                                                "bundled model's name"):  # before any image is read
        eval_model_paths(["x4", "absent.safetensors"])


def test_eval_names_a_model_that_is_not_bundled(without_x4_real):
    with pytest.raises(FileNotFoundError, match="x4-real student .* not bundled"):
        eval_model_paths(["x4-real"])


def test_cli_upscale_and_sample_by_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "a.png"), "--model", "x4", "--t", "0.5",
                 "--seed", "1", "-q"]) == 0
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "b.png"), "--t", "0.5", "--seed", "1",
                 "-q"]) == 0
    a, b = load_image(tmp_path / "a.png")[0], load_image(tmp_path / "b.png")[0]
    assert a.shape == (1, 3, 48, 40) and np.array_equal(a.numpy(), b.numpy())  # x4 is the default
    path = str(oftsr.bundled_model_path("x4", "student"))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "c.png"), "--model", path, "--t", "0.5",
                 "--seed", "1", "-q"]) == 0
    assert np.array_equal(load_image(tmp_path / "c.png")[0].numpy(), a.numpy())  # a path still works
    assert main(["sample", str(tmp_path / "in.png"), "-o", str(tmp_path / "d.png"), "--model", "x4", "--steps", "1",
                 "-q"]) == 0
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "real.png"), "--model", "x4-real", "--t",
                 "0.5", "--seed", "1", "-q"]) == 0
    real = load_image(tmp_path / "real.png")[0]
    assert real.shape == a.shape and (real - a).abs().mean().item() > 1e-3  # another network


def test_cli_names_a_model_that_is_not_bundled(tmp_path, capsys, without_x4_real):
    Image.new("RGB", (10, 12)).save(tmp_path / "in.png")
    for command in ("upscale", "sample"):
        assert main([command, str(tmp_path / "in.png"), "-o", str(tmp_path / "e.png"), "--model", "x4-real", "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: the x4-real ") and "not bundled in this version" in err
        assert not (tmp_path / "e.png").exists()


def test_half_precision_files_load_as_float32(tmp_path, capsys):
    """The recipe ships fp16 files (oftsr convert --dtype fp16): half the size, the same
    metadata, and the loader casts the weights back to float32."""
    model = oftsr.create_model("tiny", role="student", seed=0)
    with torch.no_grad():  # weights that fp16 rounds (ADM zero-inits some layers)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    source = tmp_path / "full.safetensors"
    oftsr.save_model(model, source)
    assert main(["convert", str(source), str(tmp_path / "half.safetensors"), "--dtype", "fp16"]) == 0
    assert (tmp_path / "half.safetensors").stat().st_size < 0.51 * source.stat().st_size
    full, half = oftsr.load_model(source), oftsr.load_model(tmp_path / "half.safetensors")
    assert half.dtype == torch.float32
    assert (half.role, half.scale, half.sigma_p, half.degradation, half.step) == (
        full.role, full.scale, full.sigma_p, full.degradation, full.step)
    for p, q in zip(full.parameters(), half.parameters()):
        assert torch.equal(q, p.half().float())
    assert any(not torch.equal(q, p) for p, q in zip(full.parameters(), half.parameters()))
    from safetensors import safe_open
    for name in ("x4", "x4-real"):  # the bundled files are such files
        for role in ("student", "teacher"):
            with safe_open(oftsr.bundled_model_path(name, role), "pt") as f:
                assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, (name, role)
        assert oftsr.load_model(name).dtype == torch.float32


def test_load_model_takes_bundled_names_and_short_dtype_names(tmp_path, monkeypatch):
    student = oftsr.load_model("x4", dtype="bf16")
    assert student.role == "student" and student.dtype == torch.bfloat16
    assert oftsr.load_model("x4-teacher").role == "teacher"
    with pytest.raises(ValueError, match="dtype must be a torch dtype, auto or one of fp32, fp16, bf16, .*got 'fp8'"):
        oftsr.load_model("x4", dtype="fp8")
    assert oftsr.load_model("x4-real").degradation == "realesrgan"
    monkeypatch.chdir(tmp_path)  # a name wins over a file of that name, as on the command line
    oftsr.save_model(oftsr.create_model("tiny", role="teacher"), tmp_path / "x4")
    assert oftsr.load_model("x4").role == "student" and oftsr.load_model("./x4").role == "teacher"
    assert oftsr.load_model(tmp_path / "x4").role == "teacher"  # a Path is always a path


def test_load_model_names_a_model_that_is_not_bundled(without_x4_real):
    with pytest.raises(FileNotFoundError, match="x4-real student .* not bundled"):
        oftsr.load_model("x4-real")
