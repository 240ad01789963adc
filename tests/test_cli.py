import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import oftsr
from oftsr.cli import main
from oftsr.images import load_image

from conftest import make_model


@pytest.fixture
def model_files(tmp_path, random_unet_weights):
    student, teacher = tmp_path / "student.safetensors", tmp_path / "teacher.safetensors"
    oftsr.save_model(make_model(random_unet_weights, "student"), student)
    oftsr.save_model(make_model(random_unet_weights, "teacher"), teacher)
    return student, teacher


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "sub" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (8, 6, 4), dtype=np.uint8)).save(folder / "rgba.png")
    return folder


def test_upscale_folder(tmp_path, model_files, inputs, capsys):
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--model", str(model_files[0]), "--t", "0.3", "--tile", "32",
                 "--overlap", "8", "-q"])
    assert code == 0
    assert load_image(out / "rgb.png")[0].shape == (1, 3, 48, 40)
    assert load_image(out / "sub" / "gray.png")[0].shape == (1, 1, 32, 32)
    assert load_image(out / "rgba.png")[0].shape == (1, 4, 32, 24)


def test_upscale_single_file_to_file(tmp_path, model_files, inputs):
    dst = tmp_path / "x4.png"
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(dst), "--model", str(model_files[0]), "-q"]) == 0
    assert load_image(dst)[0].shape == (1, 3, 48, 40)


def test_unreadable_file_is_reported_and_others_written(tmp_path, model_files, inputs, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model_files[0]), "-q"])
    assert code == 1
    assert "broken.png" in capsys.readouterr().err
    assert (tmp_path / "out" / "rgb.png").is_file() and not (tmp_path / "out" / "broken.png").exists()


def test_sample_reports_nfe(tmp_path, model_files, inputs, capsys):
    code = main(["sample", str(inputs / "rgb.png"), "-o", str(tmp_path / "t.png"), "--model", str(model_files[1]),
                 "--steps", "3", "--solver", "heun"])
    assert code == 0 and "network evaluations per image: 5" in capsys.readouterr().out
    assert load_image(tmp_path / "t.png")[0].shape == (1, 3, 48, 40)


def test_wrong_role_and_bad_t_are_clear_errors(tmp_path, model_files, inputs, capsys):
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[1]), "-q"]) == 1
    assert "needs a student model" in capsys.readouterr().err
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[0]), "--t", "2", "-q"]) == 1
    assert "t must be in [0, 1]" in capsys.readouterr().err


def test_missing_model_message(tmp_path, inputs, capsys):
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none.safetensors")])
    assert code == 2 and "no checkpoint at" in capsys.readouterr().err


def test_convert_and_info_authors_file(tmp_path, fixture_dir, capsys):
    dst = tmp_path / "conv.safetensors"
    assert main(["convert", str(fixture_dir / "official_format_ema.pth"), str(dst), "--sigma-p", "0.2", "--role",
                 "student", "--scale", "4"]) == 0
    capsys.readouterr()
    assert main(["info", str(dst)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["role"] == "student" and info["sigma_p"] == "0.2" and info["step"] == "1234"
    assert info["architecture"]["channel_mult"] == [1, 2, 4] and info["source"] == "official_format_ema.pth"
    assert main(["info", str(fixture_dir / "official_format_ema.pth")]) == 2  # no sigma_p etc.: says how to give them
    assert "--sigma-p" in capsys.readouterr().err


def test_create_then_upscale(tmp_path, inputs):
    dst = tmp_path / "new.safetensors"
    assert main(["create", str(dst), "--preset", "tiny", "--role", "student"]) == 0
    m = oftsr.load_model(dst)
    assert m.role == "student" and m.config == oftsr.PRESETS["tiny"]
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o.png"), "--model", str(dst), "-q"]) == 0


def test_python_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "oftsr", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("upscale", "sample", "convert", "info", "create"):
        assert cmd in res.stdout
