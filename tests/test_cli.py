import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image

import oftsr
import oftsr.cli
import oftsr.output_paths
from oftsr.cli import main
from oftsr.images import load_image, save_image

from conftest import make_model, smooth_image


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


def test_skip_existing_goes_on_after_an_interrupted_folder(tmp_path, model_files, inputs, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["upscale", str(inputs), "-o", str(out), "--model", str(model_files[0]), "-q"]
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(out / "rgb.png"), *args[4:]]) == 0  # done before
    done = (out / "rgb.png").read_bytes()
    assert main([*args, "--skip-existing"]) == 0
    assert "skipping 1 of 3 images whose output exists" in capsys.readouterr().err
    assert (out / "rgb.png").read_bytes() == done  # not written again
    assert load_image(out / "sub" / "gray.png")[0].shape == (1, 1, 32, 32)
    assert load_image(out / "rgba.png")[0].shape == (1, 4, 32, 24)
    # all done: nothing is loaded or computed
    monkeypatch.setattr("oftsr.cli.load_model", lambda *a, **k: pytest.fail("loaded a model with nothing to do"))
    assert main([*args, "--skip-existing"]) == 0
    assert "skipping 3 of 3 images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # in place, it would skip every image
        main([*args, "--skip-existing", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_an_output_folder_inside_the_input_folder_is_not_read_again(tmp_path, model_files, inputs, capsys,
                                                                    monkeypatch):
    # photos/ -o photos/upscaled, run twice: the first run's results are not inputs of the second
    args = ["upscale", str(inputs), "-o", str(inputs / "upscaled"), "--model", str(model_files[0]), "-q"]
    assert main(args) == 0 and "leaving out" not in capsys.readouterr().err
    first = sorted(p.relative_to(inputs) for p in (inputs / "upscaled").rglob("*.png"))
    assert main(args) == 0
    assert "leaving out 3 image(s) under the output folder" in capsys.readouterr().err
    assert sorted(p.relative_to(inputs) for p in (inputs / "upscaled").rglob("*.png")) == first  # no upscaled/upscaled
    assert load_image(inputs / "upscaled" / "rgb.png")[0].shape == (1, 3, 48, 40)  # x4 of the source, not x16
    # only a searched input folder that holds -o loses what is under -o: files named, or an
    # output folder that holds the inputs, keep every input
    model = ["--model", str(model_files[0]), "-q"]
    monkeypatch.chdir(inputs)
    assert main(["upscale", "rgb.png", "-o", ".", "--overwrite", *model]) == 0  # its own folder, the file named
    assert load_image(inputs / "rgb.png")[0].shape == (1, 3, 48, 40)
    assert main(["upscale", "sub", "-o", ".", *model]) == 0  # -o holds the input folder
    assert load_image(inputs / "gray.png")[0].shape == (1, 1, 32, 32)
    assert main(["upscale", "upscaled/rgb.png", "-o", "upscaled/x16.png", *model]) == 0  # a result named: an input
    assert load_image(inputs / "upscaled" / "x16.png")[0].shape == (1, 3, 192, 160)


def test_a_folder_is_searched_for_gif_too(tmp_path, model_files, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [Image.new("RGB", (8, 6), c) for c in ("red", "blue")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    (folder / "notes.txt").write_text("not an image")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_files[0]), "-q"]) == 0
    assert load_image(tmp_path / "out" / "anim.png")[0].shape == (1, 3, 24, 32)
    assert "anim.gif is animated (2 frames): only its first is upscaled" in capsys.readouterr().err


def test_convert_and_info_take_bundled_names_and_say_which_there_are(tmp_path, capsys):
    assert main(["convert", "x4-teacher", str(tmp_path / "t16.safetensors"), "--dtype", "fp16"]) == 0
    assert oftsr.load_model(tmp_path / "t16.safetensors").role == "teacher"
    for argv, option in [(["convert", "x4-techer", str(tmp_path / "t.safetensors")], "SRC"),
                         (["info", "x4-studnet"], "PATH"), (["eval", "--model", "x4-studnet", "--data", str(tmp_path)],
                                                            "--model")]:
        code, _, err = _run_cli(argv, capsys)
        assert code == 2 and f"error: {option} x4-" in err and "no such file, and not a bundled model's name (x4" in err
    code, _, err = _run_cli(["info", str(tmp_path)], capsys)  # a sentence, not "[Errno 21] Is a directory"
    assert code == 2 and _one_error(err) == f"error: PATH {tmp_path} is a folder, not a model file (.safetensors, " \
                                            f"or an authors' .pth)"
    main(["info", "x4"])
    keys = list(json.loads(capsys.readouterr().out))
    assert keys == sorted(keys)  # the same order every time
    code, out, err = _run_cli(["convert", "x4", str(tmp_path / "x2.safetensors"), "--scale", "2"], capsys)
    assert code == 0 and "warning: --scale 2 overrides the 4 that x4-student.safetensors records" in err
    # a damaged training record (not JSON, or nested past the parser's depth) is shown as text, not a traceback
    from safetensors.torch import save_file

    model = oftsr.load_model("x4")
    for record in ("{not json", "[" * 200_000 + "]" * 200_000):
        save_file({k: v.contiguous() for k, v in model.unet.state_dict().items()}, tmp_path / "odd.safetensors",
                  metadata={**oftsr.checkpoint.model_metadata(model), "training": record})
        code, out, _ = _run_cli(["info", str(tmp_path / "odd.safetensors")], capsys)
        assert code == 0 and json.loads(out)["training"] == record and json.loads(out)["role"] == "student"


def test_unreadable_file_is_reported_and_others_written(tmp_path, model_files, inputs, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model_files[0]), "-q"])
    assert code == 1
    assert "broken.png" in capsys.readouterr().err
    assert (tmp_path / "out" / "rgb.png").is_file() and not (tmp_path / "out" / "broken.png").exists()


def test_a_run_that_writes_nothing_leaves_no_folder_it_made(tmp_path, model_files, inputs, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "new" / "deeper"
    assert main(["upscale", str(tmp_path / "broken.png"), "-o", str(out / "r.png"), "--model", str(model_files[0]),
                 "-q"]) == 1
    assert not (tmp_path / "new").exists()
    (tmp_path / "cut.safetensors").write_bytes(model_files[1].read_bytes()[:100])  # fails after the folders are made
    assert main(["sample", str(inputs), "-o", str(out), "--model", str(tmp_path / "cut.safetensors"), "-q"]) == 2
    assert "cut.safetensors: cannot read safetensors file; it is truncated" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # a folder that was there stays, and so does one that got a result
    (tmp_path / "kept").mkdir()
    assert main(["upscale", str(tmp_path / "broken.png"), "-o", str(tmp_path / "kept" / "sub"), "--model",
                 str(model_files[0]), "-q"]) == 1
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "sub").exists()
    assert main(["upscale", str(inputs), str(tmp_path / "broken.png"), "-o", str(out), "--model", str(model_files[0]),
                 "-q"]) == 1
    assert (out / "rgb.png").is_file() and (out / "sub" / "gray.png").is_file()


def test_sample_reports_nfe(tmp_path, model_files, inputs, capsys):
    code = main(["sample", str(inputs / "rgb.png"), "-o", str(tmp_path / "t.png"), "--model", str(model_files[1]),
                 "--steps", "3", "--solver", "heun"])
    assert code == 0 and "network evaluations per image: 5" in capsys.readouterr().out
    assert load_image(tmp_path / "t.png")[0].shape == (1, 3, 48, 40)


def test_sample_and_eval_report_every_images_nfe_not_the_last(tmp_path, model_files, inputs, capsys, monkeypatch):
    """The adaptive solver's evaluations vary by image: the summary gives their range and
    mean, eval's NFE column their mean (it held the last image's)."""
    import oftsr.training.evaluate as evaluate_module

    real_sample, counts = oftsr.cli.sample, iter([30, 44, 37, 30, 44])

    def varying(*args, info=None, **kwargs):
        out = real_sample(*args, **{**kwargs, "solver": "euler", "steps": 1}, info=info)
        info["nfe"] = next(counts)
        return out

    monkeypatch.setattr(oftsr.cli, "sample", varying)
    assert main(["sample", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[1]), "--solver",
                 "adaptive"]) == 0
    assert "network evaluations per image: 30 to 44 (mean 37.0)" in capsys.readouterr().out
    monkeypatch.setattr(evaluate_module, "sample", varying)
    hr = tmp_path / "hr"
    hr.mkdir()
    for k in range(2):
        save_image(smooth_image(32, 32, k), hr / f"{k}.png")
    assert main(["eval", "--model", str(model_files[1]), "--data", str(hr), "--solver", "adaptive", "--out",
                 str(tmp_path / "ev"), "-q"]) == 0
    teacher = evaluate_module.read_table(tmp_path / "ev" / "results.csv")[1]
    assert teacher.method == "teacher (adaptive)" and teacher.nfe == 37.0  # (30 + 44) / 2
    assert "| teacher (adaptive) |  | 37 |" in (tmp_path / "ev" / "results.md").read_text()
    assert "--t does nothing here" not in capsys.readouterr().err
    # --t given for a teacher alone: said to do nothing
    monkeypatch.setattr(evaluate_module, "sample", real_sample)
    assert main(["eval", "--model", str(model_files[1]), "--data", str(hr), "--solver", "euler", "--steps", "1",
                 "--t", "0.3", "--out", str(tmp_path / "ev2"), "-q"]) == 0
    assert "warning: --t does nothing here: a teacher samples from t = 0 to 1 (--steps and --solver set its run)" \
        in capsys.readouterr().err


def test_missing_model_message(tmp_path, inputs, capsys):
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file, and not a bundled model's name (x4" in err


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


def test_convert_keeps_the_training_record(tmp_path, capsys):
    src, dst = tmp_path / "real.safetensors", tmp_path / "real-fp16.safetensors"
    oftsr.save_model(oftsr.create_model("tiny", role="student", degradation="realesrgan"), src, realesrgan_config="camera")
    assert main(["convert", str(src), str(dst), "--dtype", "fp16"]) == 0
    meta = oftsr.read_metadata(dst)
    assert meta["realesrgan_config"] == "camera" and meta["source"] == "real.safetensors"
    assert meta["degradation"] == "realesrgan"
    assert oftsr.load_model(dst).unet.input_blocks[0][0].weight.dtype == torch.float32  # the loader casts back
    assert oftsr.load_model(dst).stored_dtype == torch.float16
    # without --dtype the weights keep the dtype the source stores them in (fp16 is not doubled to fp32)
    again = tmp_path / "again.safetensors"
    assert main(["convert", str(dst), str(again), "--role", "student"]) == 0
    assert again.stat().st_size == pytest.approx(dst.stat().st_size, rel=0.01)
    assert oftsr.load_model(again).stored_dtype == torch.float16
    assert main(["convert", str(dst), str(tmp_path / "f32.safetensors"), "--dtype", "fp32"]) == 0
    assert oftsr.load_model(tmp_path / "f32.safetensors").stored_dtype == torch.float32
    assert (tmp_path / "f32.safetensors").stat().st_size > 1.9 * dst.stat().st_size


def test_create_then_upscale(tmp_path, inputs):
    dst = tmp_path / "new.safetensors"
    assert main(["create", str(dst), "--preset", "tiny", "--role", "student"]) == 0
    m = oftsr.load_model(dst)
    assert m.role == "student" and m.config == oftsr.PRESETS["tiny"]
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o.png"), "--model", str(dst), "-q"]) == 0


def test_convert_and_create_keep_an_existing_file_unless_overwrite(tmp_path, capsys):
    dst = tmp_path / "model.safetensors"
    assert main(["create", str(dst), "--preset", "tiny", "--seed", "1"]) == 0
    before = dst.read_bytes()
    for argv in (["create", str(dst), "--preset", "tiny", "--seed", "2"], ["convert", "x4", str(dst)]):
        code, _, err = _run_cli(argv, capsys)
        assert code == 2 and _one_error(err) == f"error: {dst} exists; choose another name, or pass --overwrite to " \
                                                "replace it"
        assert dst.read_bytes() == before
    # in place: the same weights, stored in half precision
    assert main(["convert", str(dst), str(dst), "--dtype", "fp16", "--overwrite"]) == 0
    assert len(dst.read_bytes()) < 0.6 * len(before)
    assert main(["create", str(dst), "--preset", "tiny", "--seed", "2", "--overwrite"]) == 0
    assert len(dst.read_bytes()) == len(before) and dst.read_bytes() != before


def test_python_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "oftsr", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("upscale", "sample", "convert", "info", "create"):
        assert cmd in res.stdout


# --------------------------------------------------------------------------- bad input fails fast and clearly

def _run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error(err: str) -> str:
    """The single `error: ...` line of a failed run; nothing ran, nothing was skipped."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "done in" not in err and "skipped" not in err
    return lines[0]


@pytest.mark.parametrize("device", ["nonsense", "tpu", "cuda:99", "xpu:5", "mps"])
def test_unavailable_device_lists_the_available_ones(tmp_path, model_files, inputs, capsys, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[0]),
                             "--device", device, "-q"], capsys)
    line = _one_error(err)
    assert code == 2 and f"--device {device}" in line and "available: cpu" in line
    assert not (tmp_path / "o").exists()


def test_device_names_that_exist_are_accepted():
    from oftsr.devices import available_devices, resolve_device

    assert available_devices()[0] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda", "mps", "xpu")
    assert resolve_device(torch.device("privateuseone", 0)).type == "privateuseone"  # another backend's: passed on
    assert resolve_device("cpu:0") == torch.device("cpu", 0)
    with pytest.raises(ValueError, match=r"--device cpu:3: this machine has no such device; available: cpu"):
        resolve_device("cpu:3")  # torch would run it on the one CPU: a typo for cuda:3, likely


def test_load_model_names_a_missing_device_and_takes_torch_dtype_names(monkeypatch):
    import oftsr.devices

    monkeypatch.setattr(oftsr.devices, "available_devices", lambda: ["cpu"])
    for device in ("cuda", torch.device("cuda", 1), "mps", "gpu"):
        with pytest.raises(ValueError, match=rf"load_model: device {device}: this machine has no such device; "
                                             rf"available: cpu \(or auto\)"):
            oftsr.load_model("x4", device=device)
    model = oftsr.load_model("x4", device="auto", dtype="bfloat16")
    assert next(model.parameters()).device.type == oftsr.devices.resolve_device("auto").type
    assert next(model.parameters()).dtype == torch.bfloat16
    for name, dtype in [("half", torch.float16), ("float32", torch.float32), ("torch.float16", torch.float16),
                        ("float64", torch.float64)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = oftsr.load_model("x4", dtype=name, device="cpu")  # as ComfyUI loads, to move it later: no word
            assert model.unet.input_blocks[0][0].weight.dtype == dtype and not caught
            oftsr.upscale(model, torch.rand(1, 3, 8, 8))  # float16 run on a CPU: said to be slow
        assert [str(w.message)[:40] for w in caught] == (["float16 on a CPU is emulated: about 10x "]
                                                         if dtype == torch.float16 else [])
    with pytest.raises(ValueError, match="dtype must be a torch dtype, auto or one of fp32, fp16, bf16, float32"):
        oftsr.load_model("x4", dtype="int8")


def test_a_folder_given_with_one_of_its_sub_folders_or_files_runs_each_image_once(tmp_path, model_files, inputs,
                                                                                      capsys):
    code, _, err = _run_cli(["upscale", str(inputs / "sub"), str(inputs), str(inputs / "rgb.png"), "-o",
                             str(tmp_path / "o"), "--model", str(model_files[0])], capsys)
    assert code == 0, err
    assert sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png")) == \
        ["rgb.png", "rgba.png", "sub/gray.png"]  # mirrored from the outer folder, each once
    assert "3/3" in err and "would both write" not in err


def test_a_word_on_how_the_model_runs_is_said_once_a_run_not_for_each_image(tmp_path, model_files, inputs, capsys):
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), str(inputs / "rgba.png"), "-o", str(tmp_path / "o"),
                             "--model", str(model_files[0]), "--dtype", "fp16", "--device", "cpu", "-q"], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["rgb.png", "rgba.png"]
    said = [line for line in err.splitlines() if "float16 on a CPU is emulated" in line]
    assert len(said) == 1 and said[0].startswith("warning: float16 on a CPU"), err  # not named for an image


@pytest.mark.parametrize("argv, message", [
    (["--tile-batch", "-1"], "--tile-batch must be at least 1, got -1"),
    (["--tile-batch", "0"], "--tile-batch must be at least 1, got 0"),
    (["--t", "2"], "--t entry 1 (2) is outside [0, 1]"),
    (["--t", "nan"], "--t entry 1 ('nan') is not a number"),
    (["--tile", "16"], "--tile: tile must be at least 32 px"),
    (["--tile", "-5"], "--tile: tile must be at least 32 px"),
    (["--tile", "128", "--overlap", "100"], "--overlap: overlap must be between 0 and half the tile (64)"),
    (["--overlap", "-1"], "--overlap: overlap must be between 0 and half the tile"),
    (["--seed", "-1"], "--seed: seed must be from 0 to 2**64 - 1 (18446744073709551615), got -1"),
    (["--seed", str(2 ** 64)], "--seed: seed must be from 0 to 2**64 - 1"),
])
def test_bad_arguments_fail_before_loading_anything(tmp_path, inputs, capsys, argv, message):
    # the model path does not exist: an argument error must be reported before the model is looked at
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model",
                             str(tmp_path / "absent.safetensors"), *argv], capsys)
    assert code == 2 and message in _one_error(err)
    assert not (tmp_path / "o").exists()


def test_unknown_compile_mode_is_a_usage_error(tmp_path, inputs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--compile-mode", "fastest"])
    assert exit_info.value.code == 2
    assert "--compile-mode: invalid choice: 'fastest'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,message", [
    (["upscale", "--scale", "0"], "argument --scale: must be a whole number from 1 to 16, got 0"),
    (["upscale", "--scale", "1.5"], "argument --scale: must be a whole number from 1 to 16, got 1.5"),
    (["sample", "--sigma-p", "-1"], "argument --sigma-p: must be between 0 and 1, got -1"),
    (["sample", "--sigma-p", "nan"], "argument --sigma-p: must be between 0 and 1, got nan")])
def test_model_overrides_out_of_range_are_usage_errors(tmp_path, inputs, capsys, argv, message):
    # said as the option's error, before any warning about what the file records
    with pytest.raises(SystemExit) as exit_info:
        main([argv[0], str(inputs), "-o", str(tmp_path / "o"), *argv[1:]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "warning" not in err
    assert not (tmp_path / "o").exists()


def test_bad_steps_fail_before_loading_anything(tmp_path, inputs, capsys):
    code, _, err = _run_cli(["sample", str(inputs), "-o", str(tmp_path / "o"), "--model",
                             str(tmp_path / "absent.safetensors"), "--steps", "0"], capsys)
    assert code == 2 and "--steps must be at least 1, got 0" in _one_error(err)


def test_wrong_role_names_the_command_to_use(tmp_path, model_files, inputs, capsys, monkeypatch):
    import oftsr.cli

    monkeypatch.setattr(oftsr.cli, "load_image", lambda *a: pytest.fail("an image was read before the role check"))
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[1])], capsys)
    line = _one_error(err)
    assert code == 2 and "this is a teacher model; use `oftsr sample`" in line and "sample()" not in line
    code, _, err = _run_cli(["sample", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[0])], capsys)
    line = _one_error(err)
    assert code == 2 and "this is a student model; use `oftsr upscale`" in line and "upscale()" not in line


def test_unwritable_output_is_reported_before_any_image_is_computed(tmp_path, model_files, inputs, capsys, monkeypatch):
    import oftsr.cli

    monkeypatch.setattr(oftsr.cli, "upscale", lambda *a, **k: pytest.fail("an image was computed"))
    (tmp_path / "plain_file").write_text("not a folder")
    for out in [tmp_path / "plain_file" / "x.png", tmp_path / "plain_file" / "folder"]:
        code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(out), "--model", str(model_files[0])],
                                capsys)
        assert code == 2 and "cannot write" in _one_error(err) and str(tmp_path / "plain_file") in err
    if Path("/proc").is_dir():
        code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", "/proc/x/out.png", "--model",
                                 str(model_files[0])], capsys)
        assert code == 2 and "cannot write" in _one_error(err)


def test_several_inputs_with_a_file_name_output_is_an_error(tmp_path, model_files, inputs, capsys):
    for args in [[str(inputs / "rgb.png"), str(inputs / "rgba.png")], [str(inputs)]]:
        code, _, err = _run_cli(["upscale", *args, "-o", str(tmp_path / "two.png"), "--model", str(model_files[0])],
                                capsys)
        assert code == 2 and "-o" in _one_error(err) and "folder" in err
        assert not (tmp_path / "two.png").exists()


def test_output_in_the_input_folder_needs_overwrite(tmp_path, model_files, inputs, capsys):
    before = {p: p.read_bytes() for p in inputs.rglob("*.png")}
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(inputs), "--model", str(model_files[0])], capsys)
    assert code == 2 and "--overwrite" in _one_error(err)
    assert {p: p.read_bytes() for p in inputs.rglob("*.png")} == before  # the photographs are untouched
    # a single file onto itself, by another spelling of the same path
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(inputs / "sub" / ".." / "rgb.png"),
                             "--model", str(model_files[0])], capsys)
    assert code == 2 and "--overwrite" in _one_error(err)
    assert main(["upscale", str(inputs), "-o", str(inputs), "--model", str(model_files[0]), "--overwrite", "-q"]) == 0
    assert load_image(inputs / "rgb.png")[0].shape == (1, 3, 48, 40)


KILL_DURING_SAVE = r"""
import os, signal, sys
import numpy as np
import png
import torch
from PIL import ImageFile
import png
from oftsr.images import save_image

def die(*args, **kwargs):  # the encoder has started writing: write a little more, then die as under kill -9
    fp = args[1]
    fp.write(b"partial data")
    getattr(fp, "flush", lambda: None)()
    os.kill(os.getpid(), signal.SIGKILL)

ImageFile._save = die
png.Writer.write = lambda self, f, rows: die(None, f)
save_image(torch.rand(3, 64, 64), sys.argv[1], bit_depth=int(sys.argv[2]))
"""


@pytest.mark.parametrize("name, depth", [("out.png", 16), ("out.jpg", 8)])  # the pypng and the Pillow writer
def test_killed_save_leaves_no_truncated_file(tmp_path, name, depth):
    dst = tmp_path / name
    res = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(dst), str(depth)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -9, res.stderr  # killed mid-write
    assert not dst.exists()  # nothing under the final name
    # an earlier output under the same name stays whole
    save_image(torch.full((3, 8, 8), 0.5), dst)
    old = dst.read_bytes()
    res = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(dst), str(depth)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -9 and dst.read_bytes() == old


def test_a_result_path_longer_than_windows_opens_is_refused_before_any_work(tmp_path, model_files, inputs, capsys,
                                                                           monkeypatch):
    """Windows without long paths opens at most 259 characters: the result (with atomic_write's
    temporary name) is checked before any image is computed, as the name's length is."""
    deep = tmp_path / ("d" * 40) / ("e" * 40)
    limit = len(str((deep / "rgb.png").resolve())) + oftsr.files.ATOMIC_NAME_EXTRA - 1
    monkeypatch.setattr(oftsr.output_paths, "windows_path_limit", lambda: limit)
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(deep / "rgb.png"), "--model",
                             str(model_files[0])], capsys)
    assert code == 2 and _one_error(err) == (
        f"error: {(deep / 'rgb.png').resolve()}: the path is longer than Windows opens ({limit} characters with the "
        f"temporary name's 14): choose a shorter -o folder, or enable long paths (LongPathsEnabled) in Windows")
    assert not (deep / "rgb.png").exists()
    monkeypatch.setattr(oftsr.output_paths, "windows_path_limit", lambda: limit + 1)  # one more character: it fits
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(deep / "rgb.png"), "--model", str(model_files[0]),
                 "-q"]) == 0
    monkeypatch.undo()
    assert oftsr.output_paths.windows_path_limit() is None  # not Windows: no limit of this kind


def test_a_result_open_in_another_program_is_waited_for_then_named(tmp_path, monkeypatch):
    """Windows refuses to replace a file that a viewer or a virus scanner holds open: the
    write waits briefly and tries again; if it is still held, the error names the file
    asked for (not the temporary one) and no temporary file is left."""
    import oftsr.files as files

    dst = tmp_path / "out.png"
    dst.write_bytes(b"old")
    real_replace, tries = os.replace, []

    def held(src, target, times):
        tries.append(Path(target).name)
        if len(tries) <= times:
            raise PermissionError(13, "Access is denied", str(src))
        real_replace(src, target)

    monkeypatch.setattr(files.time, "sleep", lambda s: None)
    monkeypatch.setattr(files, "REPLACE_WAITS", (0.05, 0.1, 0.2))
    monkeypatch.setattr(files.os, "replace", lambda a, b: held(a, b, 2))  # released after two tries
    with files.atomic_write(dst) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new" and tries == ["out.png"] * 3
    tries.clear()
    monkeypatch.setattr(files.os, "replace", lambda a, b: held(a, b, 99))  # held throughout
    with pytest.raises(PermissionError) as e:
        with files.atomic_write(dst) as tmp:
            tmp.write_bytes(b"newer")
    assert e.value.filename == str(dst) and e.value.strerror == "Access is denied (is it open in another program?)"
    assert len(tries) == 4 and dst.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an fd's file through /proc")
def test_atomic_write_syncs_the_file_before_it_takes_the_name_and_then_the_folder(tmp_path, monkeypatch):
    from oftsr import files

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append(("sync", target.name if target.is_dir() else target.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("rename", Path(b).name)), real_replace(a, b)))
    with files.atomic_write(tmp_path / "out.png") as tmp:
        tmp.write_bytes(b"whole")
    assert events == [("sync", b"whole"), ("rename", "out.png"), ("sync", tmp_path.name)]
    # a file system that cannot sync (EINVAL on some network ones) still gets its file
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(22, "Invalid argument")))
    with files.atomic_write(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"b")
    assert (tmp_path / "b.png").read_bytes() == b"b" and sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "out.png"]
    # nor does a finished file this user may not open again (read-only under a umask of 0222): a
    # read-only handle is enough to sync on POSIX, and a refused one leaves the file as written
    real_open, flags_seen = os.open, []

    def open_refusing_reopen(p, flags, *mode):
        flags_seen.append(flags)
        if not flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, flags, *mode)

    monkeypatch.setattr(files.os, "open", open_refusing_reopen)
    with files.atomic_write(tmp_path / "c.png") as tmp:
        tmp.write_bytes(b"c")
    assert (tmp_path / "c.png").read_bytes() == b"c" and sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "c.png", "out.png"]
    if os.name != "nt":
        assert flags_seen[1:] == [os.O_RDONLY, os.O_RDONLY]  # the file, then its folder


# --------------------------------------------------------------------------- defaults and channel/bit-depth round trips

def test_t_default_is_the_middle_of_the_trade_off_and_help_is_plain(capsys):
    from oftsr.cli import build_parser

    from oftsr.checks import parse_t_values

    assert parse_t_values(build_parser().parse_args(["upscale", "a.png", "-o", "b.png"]).t) == [0.5]
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "sp noise" not in help_text and "default 0.5" in help_text


def test_gray_alpha_in_gives_gray_alpha_out(tmp_path, model_files, capsys):
    la = np.stack([np.arange(48, dtype=np.uint8).reshape(6, 8) * 5, np.full((6, 8), 200, np.uint8)], axis=-1)
    Image.fromarray(la).save(tmp_path / "la.png")
    assert main(["upscale", str(tmp_path / "la.png"), "-o", str(tmp_path / "la_x4.png"), "--model",
                 str(model_files[0]), "-q"]) == 0
    with Image.open(tmp_path / "la_x4.png") as im:
        assert im.mode == "LA" and im.size == (32, 24)
        assert np.abs(np.asarray(im)[..., 1].astype(int) - 200).max() <= 1  # alpha upscaled, kept
        written = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None]
    student = oftsr.load_model(model_files[0])  # the file's gray + alpha go through the library as two channels
    expected = oftsr.upscale(student, load_image(tmp_path / "la.png")[0], t=0.5, out_dtype=torch.uint8)
    assert torch.equal(written, expected)


def test_16_bit_input_keeps_16_bits_in_tif_or_says_what_happens(tmp_path, model_files, capsys):
    gray = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1021 + 7)
    with open(tmp_path / "g16.png", "wb") as f:
        png.Writer(8, 8, greyscale=True, bitdepth=16).write(f, gray)
    assert main(["upscale", str(tmp_path / "g16.png"), "-o", str(tmp_path / "g16_x4.tif"), "--model",
                 str(model_files[0]), "-q"]) == 0
    out, depth = load_image(tmp_path / "g16_x4.tif")
    assert depth == 16 and out.shape == (1, 1, 32, 32)
    assert (out * 65535 % 257).abs().max() > 1  # not 8-bit values scaled up: the low byte carries information
    assert "warning" not in capsys.readouterr().err
    rgb = np.random.default_rng(0).integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    with open(tmp_path / "c16.png", "wb") as f:
        png.Writer(8, 8, greyscale=False, bitdepth=16).write(f, rgb.reshape(8, 24))
    assert main(["upscale", str(tmp_path / "c16.png"), "-o", str(tmp_path / "c16_x4.tif"), "--model",
                 str(model_files[0]), "-q"]) == 0
    assert "warning" not in capsys.readouterr().err  # colour TIFF keeps 16 bits too
    out, depth = load_image(tmp_path / "c16_x4.tif")
    assert depth == 16 and out.shape == (1, 3, 32, 32) and (out * 65535 % 257).abs().max() > 1
    assert main(["upscale", str(tmp_path / "g16.png"), "-o", str(tmp_path / "g16_x4.jpg"), "--model",
                 str(model_files[0]), "-q"]) == 0
    err = capsys.readouterr().err
    assert "g16_x4.jpg has 8 bits per channel, g16.png had 16 (.jpg holds 8); name the output .png or .tif" in err


def test_quick_start_offers_cpu_wheels_and_ignores_its_output():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    start = readme.index("## Quick start")
    quick_start = readme[start:readme.index("\n## ", start)]
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in quick_start and quick_start.index(cpu) < quick_start.rindex("pip install .")  # CPU torch first
    assert "-o out/" in quick_start and "minutes on 2 CPU cores" in quick_start  # how long the tests take
    ignored = {line.strip() for line in (root / ".gitignore").read_text().splitlines()}
    assert ignored & {"out/", "/out/"}  # the quick start's output folder is not picked up by git


def test_upscale_keeps_the_colour_profile_exif_and_dpi(tmp_path, model_files):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 12, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "photo.jpg", icc_profile=icc, exif=exif, dpi=(240, 240), quality=95)
    assert main(["upscale", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out.jpg"), "--model",
                 str(model_files[0]), "-q"]) == 0
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (32, 48)  # turned upright (orientation 6), then x4
        assert out.info["icc_profile"] == icc and out.info["dpi"] == pytest.approx((240, 240), abs=0.01)
        assert out.getexif()[0x0112] == 1  # already upright: a viewer must not turn it again
    # a --grid sheet keeps the profile, the colours its results are shown in; not the photo's EXIF or DPI
    assert main(["upscale", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "sweep"), "--t", "0,1", "--grid",
                 "--model", str(model_files[0]), "-q"]) == 0
    with Image.open(tmp_path / "sweep" / "photo_grid.png") as sheet:  # a folder gets PNG
        assert sheet.info["icc_profile"] == icc and "dpi" not in sheet.info and not sheet.getexif()


def test_linear_light_is_upscaled_as_its_srgb_encoding_and_written_back_linear(tmp_path, model_files):
    """A float TIFF under a gamma-1 profile (Photoshop's 32-bit mode) holds linear light: the
    network gets the same values as from the photograph's sRGB encoding, and the result is
    decoded again, so the kept profile still describes it."""
    import tifffile
    from test_icc import LINEAR, _rgb

    from oftsr.color import srgb_decode, srgb_encode

    photo = smooth_image(10, 12, seed=3)  # display values
    linear_icc = _rgb(LINEAR["gamma 1.0"])
    tifffile.imwrite(tmp_path / "linear.tif", srgb_decode(photo)[0].permute(1, 2, 0).numpy(), photometric="rgb",
                     iccprofile=linear_icc)
    tifffile.imwrite(tmp_path / "display.tif", photo[0].permute(1, 2, 0).numpy(), photometric="rgb")
    for name in ("linear", "display"):
        assert main(["upscale", str(tmp_path / f"{name}.tif"), "-o", str(tmp_path / f"{name}_x4.tif"), "--model",
                     str(model_files[0]), "--t", "0.5", "-q"]) == 0
    display = load_image(tmp_path / "display_x4.tif")[0]
    written = torch.from_numpy(tifffile.imread(tmp_path / "linear_x4.tif").astype(np.float32) / 65535)
    written = written.permute(2, 0, 1)[None]  # the file's own values: linear light
    with Image.open(tmp_path / "linear_x4.tif") as out:
        assert out.info["icc_profile"] == linear_icc
    # 16 bits of linear light: a level is up to 12.92 / 65535 once encoded
    assert (srgb_encode(written) - display).abs().max() < 5e-4
    assert (written - display).abs().max() > 0.1  # not display values under a linear profile
    assert (load_image(tmp_path / "linear_x4.tif")[0] - display).abs().max() < 5e-4  # read back as it is shown
    # Without the profile the same linear pixels are taken as display values, as they must be then.
    tifffile.imwrite(tmp_path / "bare.tif", srgb_decode(photo)[0].permute(1, 2, 0).numpy(), photometric="rgb")
    assert main(["upscale", str(tmp_path / "bare.tif"), "-o", str(tmp_path / "bare_x4.tif"), "--model",
                 str(model_files[0]), "--t", "0.5", "-q"]) == 0
    assert (load_image(tmp_path / "bare_x4.tif")[0] - written).abs().max() > 0.01


def test_cli_usage_errors_are_one_line(tmp_path, model_files, inputs, capsys):
    student = str(model_files[0])
    (tmp_path / "other").mkdir()
    shutil.copy(inputs / "rgb.png", tmp_path / "other" / "rgb.png")  # two files of one name (one file twice runs once)
    cases = [
        (["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "x.gif"), "--model", student],
         "cannot write '.gif' images; use one of .png"),
        (["upscale", str(inputs / "rgb.png"), str(tmp_path / "other" / "rgb.png"), "-o", str(tmp_path / "o"), "--model",
          student], "rgb.png would both write"),
        (["info", str(tmp_path)], "is a folder, not a model file"),  # reported in one line, no traceback
        # a mistyped image name for one input: not a new folder of that name
        (["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "x.pnj"), "--model", student],
         f"-o {tmp_path / 'x.pnj'}: '.pnj' is not an image type this writes (.png, .jpg, .jpeg, .webp, .bmp, .tif, "
         f".tiff); for a folder, make it first or name it without that suffix"),
        (["convert", student, str(tmp_path / "conv.pth")],  # a safetensors file under a pickle's name
         f"{tmp_path / 'conv.pth'}: the model file is written as safetensors; name it conv.safetensors"),
        (["create", str(tmp_path / "new.pt")], "name it new.safetensors"),
        # a mistyped data folder is said first and alone (not after the LPIPS notice), nothing written
        (["eval", "--model", student, "--data", str(tmp_path / "nowhere"), "-o", str(tmp_path / "ev")],
         f"no such file or folder: {tmp_path / 'nowhere'}"),
        (["eval", "--model", student, "--data", str(inputs), "--lr-dir", str(tmp_path / "nolr"), "--output",
          str(tmp_path / "ev")], f"no such file or folder: {tmp_path / 'nolr'}"),
        (["eval", "--model", student, "--data", str(inputs), "--out", str(inputs / "rgb.png")],  # a file as --out
         f"--out {inputs / 'rgb.png'} is a file, not a folder: name a folder for the results"),
    ]
    for argv, message in cases:
        code, _, err = _run_cli(argv, capsys)
        assert code == 2 and message in _one_error(err), argv
    assert not any((tmp_path / name).exists() for name in ("x.gif", "x.pnj", "conv.pth", "new.pt", "ev"))
    (tmp_path / "x.pnj").mkdir()  # a folder that exists, or a suffix with a digit ("run.v2"), is a folder
    for out in ("x.pnj", "run.v2"):
        assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / out), "--model", student, "-q"]) == 0
        assert (tmp_path / out / "rgb.png").is_file()
    with pytest.raises(SystemExit):  # sample has no --t; no abbreviation of --tile is guessed
        main(["sample", str(inputs / "rgb.png"), "-o", str(tmp_path / "o"), "--t", "0.5"])
    err = capsys.readouterr().err
    assert "oftsr sample: error: unrecognized arguments: --t 0.5" in err  # in the subcommand's words...
    assert "usage: oftsr sample" in err and "--steps" in err  # ...with its usage, which lists its options
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o"), "--tile", "16"], capsys)
    assert code == 2 and _one_error(err) == "error: --tile: tile must be at least 32 px (or 0 for no tiling), got 16"
    code, out, _ = _run_cli(["info", "x4-teacher"], capsys)  # bundled models by name, as --model takes them
    assert code == 0 and json.loads(out)["role"] == "teacher"
    # an original and its edited export side by side: the message says how to keep both
    Image.new("RGB", (8, 8)).save(tmp_path / "cam.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "cam.tif")
    code, _, err = _run_cli(["upscale", str(tmp_path / "cam.jpg"), str(tmp_path / "cam.tif"), "-o",
                             str(tmp_path / "o"), "--model", student], capsys)
    assert code == 2 and _one_error(err).endswith("; --format same keeps each one's own type")
    # two card folders of one camera, numbering restarted: the folder holding them mirrors both
    for card in ("100CANON", "101CANON"):
        (tmp_path / "DCIM" / card).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "DCIM" / card / "IMG_0001.jpg")
    code, _, err = _run_cli(["upscale", str(tmp_path / "DCIM" / "100CANON"), str(tmp_path / "DCIM" / "101CANON"),
                             "-o", str(tmp_path / "o"), "--model", student], capsys)
    assert code == 2 and _one_error(err).endswith(f"; or give the folder that holds them, {tmp_path / 'DCIM'}, whose "
                                                  f"sub-folders the output mirrors")
    # not offered where it would not help: folders far apart, or a clash inside one folder
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "deep" / "IMG_0001.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "DCIM" / "100CANON" / "IMG_0001.png")
    for folders in ([tmp_path / "DCIM" / "100CANON", tmp_path / "elsewhere" / "deep"],
                    [tmp_path / "DCIM" / "100CANON", tmp_path / "elsewhere"]):
        code, _, err = _run_cli(["upscale", *map(str, folders), "-o", str(tmp_path / "o"), "--model", student], capsys)
        assert code == 2 and "would both write" in err and "the folder that holds them" not in err
    (tmp_path / "DCIM" / "100CANON" / "IMG_0001.png").unlink()
    # -o naming a file that exists, for a folder of inputs: said as such
    (tmp_path / "afile").write_text("")
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "afile"), "--model", student], capsys)
    assert code == 2 and _one_error(err) == f"error: cannot write to {tmp_path / 'afile'}: {tmp_path / 'afile'} is a " \
                                            f"file, not a folder"


def test_overlap_0_is_taken_with_a_warning_about_seams(tmp_path, model_files, inputs, capsys):
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "a.png"), "--tile", "32",
                             "--overlap", "0", "--model", str(model_files[0]), "-q"], capsys)
    assert code == 0 and "warning: --overlap 0: neighbouring tiles are not blended" in err
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "b.png"), "--tile", "0",
                             "--overlap", "0", "--model", str(model_files[0]), "-q"], capsys)
    assert code == 0 and "overlap" not in err  # no tiles, nothing to blend


def test_cli_help_names_only_bundled_models_and_times_read_as_clocks(capsys):
    import oftsr.cli as cli

    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    shipped = oftsr.weights.shipped_model_names()
    assert f"a bundled model's name ({', '.join(shipped)}" in text
    assert shipped == ["x4", "x4-real"] and "not bundled" not in text  # both pairs ship
    assert [cli._clock(s) for s in (5, 65, 3599, 3600, 35231)] == ["0:05", "1:05", "59:59", "1:00:00", "9:47:11"]


def test_warnings_name_their_file_once_and_an_error_names_it_once(tmp_path, model_files, capsys, monkeypatch):
    import warnings

    import oftsr.cli as cli

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    real = cli.load_image

    def load(path):
        for _ in range(2):
            warnings.warn("Corrupt EXIF data", UserWarning)  # Pillow repeats its own
        return real(path)

    monkeypatch.setattr(cli, "load_image", load)
    code, _, err = _run_cli(["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "o"),
                             "--model", str(model_files[0]), "-q"], capsys)
    assert code == 1
    assert err.count(f"warning: {tmp_path / 'a.png'}: Corrupt EXIF data") == 1
    skipped = next(line for line in err.splitlines() if line.startswith("skipped"))
    assert skipped.startswith(f"skipped {tmp_path / 'b.png'}: cannot read") and skipped.count("b.png") == 1
    # at several t, an unreadable image is said (and counted) once, and not read again
    monkeypatch.setattr(cli, "load_image", lambda path: reads.append(Path(path).name) or real(path))
    reads = []
    code, _, err = _run_cli(["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "o2"),
                             "--t", "0,1", "--model", str(model_files[0]), "-q"], capsys)
    assert code == 1 and err.count("skipped") == 1 and "1 of 2 images failed" in err
    assert sorted(reads) == ["a.png", "a.png", "b.png"]
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["a_t0.png", "a_t1.png"]


def test_a_save_that_fails_for_its_metadata_is_written_without_it(tmp_path, model_files, capsys, monkeypatch):
    import oftsr.cli as cli

    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "in.png", dpi=(300, 300))
    real = cli.save_image

    def save(image, path, *, bit_depth=8, metadata=None, quality=95):
        if metadata:
            raise OSError("codec configuration error")
        return real(image, path, bit_depth=bit_depth, quality=quality)

    monkeypatch.setattr(cli, "save_image", save)
    code, _, err = _run_cli(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 0 and "written without the metadata of in.png: codec configuration error" in err
    assert Image.open(tmp_path / "out.png").size == (32, 32)


def test_warnings_for_dropped_alpha_and_overridden_metadata(tmp_path, model_files, inputs, capsys):
    code, _, err = _run_cli(["upscale", str(inputs / "rgba.png"), "-o", str(tmp_path / "out.jpg"), "--model",
                             str(model_files[0]), "-q", "--sigma-p", "0.5"], capsys)
    assert code == 0 and Image.open(tmp_path / "out.jpg").mode == "RGB"
    assert "out.jpg: JPEG has no transparency, so rgba.png is flattened onto white" in err
    assert "--sigma-p 0.5 overrides the 0.2 that student.safetensors records" in err
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code, _, err = _run_cli(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "anim.png"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 0 and "anim.gif is animated (3 frames): only its first is upscaled" in err
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:2])
    code, _, err = _run_cli(["upscale", str(tmp_path / "pages.tif"), "-o", str(tmp_path / "pages.png"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 0 and "pages.tif has 2 pages: only its first is upscaled" in err
    code, _, err = _run_cli(["upscale", str(inputs / "rgba.png"), "-o", str(tmp_path / "out.bmp"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert "out.bmp: BMP has no transparency, so rgba.png is flattened onto white" in err
    with Image.open(tmp_path / "out.bmp") as bmp:
        assert bmp.mode == "RGB" and bmp.size == (24, 32)
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o2.png"), "--model",
                             str(model_files[0]), "-q", "--sigma-p", "0.2", "--scale", "4"], capsys)
    assert code == 0 and "warning" not in err  # values that agree with the file say nothing


def test_an_evaluation_the_library_says_cannot_fit_is_retried_with_tiles(tmp_path, model_files, capsys, monkeypatch):
    """--tile 0 where the whole image's estimate is more than is free: the library refuses
    before any work (NotEnoughMemory) and the command goes on with tiles that fit."""
    import oftsr.inference

    model = oftsr.load_model(model_files[0])
    monkeypatch.setattr(oftsr.inference, "available_memory",
                        lambda device: oftsr.inference.activation_memory(model, 1, 200, 200))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 100, 3), np.uint8)).save(tmp_path / "in.png")
    code, _, err = _run_cli(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model",
                             str(model_files[0]), "-q", "--tile", "0"], capsys)
    assert code == 0, err
    assert "warning: out of memory with the whole image (400 px) on cpu; retrying with 200-pixel tiles" in err
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (400, 240)


def test_out_of_memory_retries_with_half_the_tile_down_to_the_smallest(tmp_path, model_files, capsys, monkeypatch):
    """As the nodes do: a tile that runs out of memory is halved and the image run again,
    each retry said, down to MIN_OOM_TILE; the result is the image's, whole."""
    import oftsr.cli as cli

    real, tiles = cli.upscale, []

    def upscale(model, image, *, tile, overlap, **kw):  # memory for 200-pixel tiles, not more
        tiles.append((tile, overlap))
        if tile is None or tile > 200:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, image, tile=tile, overlap=overlap, **kw)

    monkeypatch.setattr(cli, "upscale", upscale)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 100, 3), np.uint8)).save(tmp_path / "in.png")
    for flags, tried, said in (
            (["--tile", "0"], [(None, None), (200, None)], "with the whole image (400 px)"),  # then half of it
            ([], [(512, None), (200, None)], "with 400-pixel tiles"),  # 512 covers 400: the image is one tile
            (["--tile", "384", "--overlap", "96"], [(384, 96), (192, 48)], "with 384-pixel tiles")):  # overlap <= 1/4
        tiles.clear()
        out = tmp_path / f"out{len(flags)}.png"
        code, _, err = _run_cli(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--model", str(model_files[0]),
                                 "-q", *flags], capsys)
        assert code == 0 and tiles == tried, (flags, tiles)
        assert f"warning: out of memory {said} on cpu; retrying with {tried[1][0]}-pixel tiles" in err, err
        with Image.open(out) as im:
            assert im.size == (400, 240)
    # Never enough: the retries stop at MIN_OOM_TILE, and the image is skipped with advice
    monkeypatch.setattr(cli, "upscale", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("CUDA out of memory.")))
    code, _, err = _run_cli(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "none.png"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 1 and not (tmp_path / "none.png").exists()
    assert [line for line in err.splitlines() if "retrying" in line] == [
        "warning: out of memory with 400-pixel tiles on cpu; retrying with 200-pixel tiles",
        "warning: out of memory with 200-pixel tiles on cpu; retrying with 128-pixel tiles"]
    assert "out of memory on cpu even with 128-pixel tiles (CUDA out of memory.): upscale a smaller image" in err


def test_out_of_memory_on_one_image_skips_it_and_the_others_are_written(tmp_path, model_files, inputs, capsys,
                                                                          monkeypatch):
    import oftsr.cli as cli

    real = cli.upscale

    def upscale(model, image, **kw):  # what the CPU allocator raises for one too-big image
        if image.shape[-1] == 10:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes.")
        return real(model, image, **kw)

    monkeypatch.setattr(cli, "upscale", upscale)
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model_files[0]), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "skipped " + str(inputs / "rgb.png") + ": out of memory on cpu even with 48-pixel tiles " \
                         "(DefaultCPUAllocator: can't allocate memory" in err  # one tile, already below the retries'
    assert "upscale a smaller image or free memory held by other programs, or try --dtype bf16" in err
    assert "1 of 3 images failed" in err
    assert (tmp_path / "out" / "rgba.png").is_file() and (tmp_path / "out" / "sub" / "gray.png").is_file()

    def upscale(model, image, **kw):  # an error no check foresaw (a decoder's own exception type)
        if image.shape[-1] == 10:
            raise KeyError(262)
        return real(model, image, **kw)

    monkeypatch.setattr(cli, "upscale", upscale)
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "out2"), "--model", str(model_files[0]), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and f"skipped {inputs / 'rgb.png'}: unexpected KeyError: 262 (a file this tool should" in err
    assert "1 of 3 images failed" in err and (tmp_path / "out2" / "rgba.png").is_file()


def test_an_output_too_big_for_its_format_is_refused_before_it_is_computed(tmp_path, model_files, capsys,
                                                                             monkeypatch):
    import oftsr.cli as cli

    Image.fromarray(np.zeros((2, 4100, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    monkeypatch.setattr(cli, "upscale", lambda *a, **k: pytest.fail("computed an image that cannot be written"))
    code, _, err = _run_cli(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "wide.webp"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 1 and "wide.webp: .webp holds at most 16383 px a side, and the result is 16400x8" in err


def test_ctrl_c_ends_quietly_with_status_130(tmp_path, model_files, inputs, capsys, monkeypatch):
    import oftsr.cli as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "upscale", interrupted)
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model_files[0]),
                             "-q"], capsys)
    assert code == 130 and "interrupted: the images written so far are complete" in err and "Traceback" not in err
    # eval has no --skip-existing: it says where the scores so far are
    import oftsr.training.eval_command as eval_command

    monkeypatch.setattr(eval_command, "evaluate", interrupted)
    code, _, err = _run_cli(["eval", "--data", str(inputs), "--model", str(model_files[0]), "--out",
                             str(tmp_path / "ev"), "-q"], capsys)
    assert code == 130 and f"the scores so far are in {tmp_path / 'ev' / 'per_image.csv.partial'}" in err
    assert "--skip-existing" not in err


def test_format_quality_and_color_fix_options(tmp_path, model_files, inputs, capsys):
    from oftsr.color import color_fix

    model = ["--model", str(model_files[0]), "-q"]
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(inputs / "photo.jpg")
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "same"), "--format", "same", *model]) == 0
    assert sorted(p.relative_to(tmp_path / "same").as_posix() for p in (tmp_path / "same").rglob("*.*")) == \
        ["photo.jpg", "rgb.png", "rgba.png", "sub/gray.png"]
    for quality in (30, 95):
        assert main(["upscale", str(inputs / "photo.jpg"), "-o", str(tmp_path / f"q{quality}"), "--format", "jpg",
                     "--quality", str(quality), *model]) == 0
    assert (tmp_path / "q30" / "photo.jpg").stat().st_size < (tmp_path / "q95" / "photo.jpg").stat().st_size
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "x"), "--quality", "0", *model], capsys)
    assert code == 2 and "--quality must be 1 to 100, got 0" in err
    # --quality where nothing lossy is written: said, not silently ignored; the default says nothing
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "lossless"), "--format", "tif",
                             "--quality", "80", *model], capsys)
    assert code == 0 and "--quality 80 does nothing here" in err and "are TIFF, which is lossless" in err
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "lossy.webp"), "--quality",
                             "80", *model], capsys)
    assert code == 0 and "--quality" not in err
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "default.png"), *model], capsys)
    assert code == 0 and "--quality" not in err
    # --color-fix: the correction of the library, on the float result, then rounded as files are
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "plain.png"), *model]) == 0
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "fixed.png"), "--color-fix", "wavelet",
                 *model]) == 0
    source = load_image(inputs / "rgb.png")[0]
    student = oftsr.load_model(model_files[0])
    expected = color_fix(oftsr.upscale(student, source, seed=0, tile=512), source, "wavelet")
    fixed = load_image(tmp_path / "fixed.png")[0]
    assert (fixed - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert (fixed - load_image(tmp_path / "plain.png")[0]).abs().max() > 2 / 255  # it changed something
    # gray + alpha: the alpha channel is not "corrected"
    la = torch.stack([torch.rand(8, 8), torch.linspace(0, 1, 8).expand(8, 8)])[None]
    x = torch.rand(1, 2, 32, 32)
    out = color_fix(x, la, "wavelet")
    assert torch.equal(out[:, 1:], x[:, 1:]) and not torch.equal(out[:, :1], x[:, :1])


def test_tile_progress_shows_the_time_left_for_the_image(monkeypatch):
    import oftsr.cli as cli

    shown = []
    bar = type("Bar", (), {"set_postfix_str": lambda self, text, refresh: shown.append(text)})()
    clock = iter([100.0, 130.0, 130.0])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    show = cli._progress(bar)  # starts at 100 s
    show(3, 10)  # 30 s for 3 tiles: 70 s for the 7 left
    show(5, 0)  # an adaptive solver: evaluations, no total
    assert shown == ["3/10, 1:10 left", "nfe 5"]


def test_what_reading_or_writing_gave_up_is_printed_as_a_warning(tmp_path, model_files, capsys):
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b" " * 70_000 + b"</x:xmpmeta>"
    Image.new("RGB", (8, 8), (90, 60, 30)).save(tmp_path / "big_xmp.png", pnginfo=_xmp_info(xmp))
    code, _, err = _run_cli(["upscale", str(tmp_path / "big_xmp.png"), "-o", str(tmp_path / "o.jpg"), "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 0 and "warning: o.jpg: the source's XMP (70,048 bytes) is more than JPEG holds" in err
    assert "written without the metadata" not in err  # the rest of the metadata is kept


def _xmp_info(xmp: bytes):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def test_outscale_resizes_the_result_to_a_factor_of_the_input(tmp_path, model_files, inputs, capsys):
    from oftsr.resample import resize

    model = ["--model", str(model_files[0]), "-q"]
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "x2.png"), "--outscale", "2", *model]) == 0
    source = load_image(inputs / "rgb.png")[0]  # 10 x 12
    out = load_image(tmp_path / "x2.png")[0]
    assert out.shape == (1, 3, 24, 20)
    full = oftsr.upscale(oftsr.load_model(model_files[0]), source, seed=0, tile=512)
    assert (out - resize(full, (24, 20))).abs().max() <= 0.5 / 255 + 1e-6  # the model's x4, then antialiased down
    assert main(["upscale", str(inputs / "rgba.png"), "-o", str(tmp_path / "x1_5.png"), "--outscale", "1.5",
                 *model]) == 0
    assert load_image(tmp_path / "x1_5.png")[0].shape == (1, 4, 12, 9)  # alpha resized with the colour
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "x"), "--outscale", "0", *model], capsys)
    assert code == 2 and "--outscale must be more than 0 and finite, got 0" in err
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "x"), "--outscale", "inf", *model], capsys)
    assert code == 2 and "--outscale must be more than 0 and finite, got inf" in err
    # smaller than the input: said; less than a pixel (10 x 12 at 0.04: 0 x 0): that image refused, no 1 x 1 file
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "half.png"), "--outscale",
                             "0.5", *model], capsys)
    assert code == 0 and "--outscale 0.5 makes the results smaller than their inputs" in err
    assert load_image(tmp_path / "half.png")[0].shape == (1, 3, 6, 5)
    code, _, err = _run_cli(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "dot.png"), "--outscale",
                             "0.04", *model], capsys)
    assert code == 1 and "less than one pixel on a side; it needs more than 0.05 for this image" in err
    assert not (tmp_path / "dot.png").exists()


def test_several_t_write_each_image_once_per_t(tmp_path, model_files, inputs, capsys):
    out = tmp_path / "out"
    common = ["--model", str(model_files[0]), "--seed", "4", "--tile", "0", "-q"]
    assert main(["upscale", str(inputs), "-o", str(out), "--t", "0,0.25, 1", *common]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "rgb_t0.25.png", "rgb_t0.png", "rgb_t1.png", "rgba_t0.25.png", "rgba_t0.png", "rgba_t1.png",
        "sub/gray_t0.25.png", "sub/gray_t0.png", "sub/gray_t1.png"]
    for t in ("0", "1"):  # each is the single run at that t, with the same seed
        assert main(["upscale", "--t", t, str(inputs / "rgb.png"), "-o", str(tmp_path / f"one_{t}.png"), *common]) == 0
        assert torch.equal(load_image(out / f"rgb_t{t}.png")[0], load_image(tmp_path / f"one_{t}.png")[0])
    assert not torch.equal(load_image(out / "rgb_t0.png")[0], load_image(out / "rgb_t1.png")[0])
    # a single file named for -o gets the tags too, even the input's own name; --skip-existing counts each (image, t)
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "x4.jpg"), "--t", "0,0.5", *common]) == 0
    assert sorted(p.name for p in tmp_path.glob("x4_t*.jpg")) == ["x4_t0.5.jpg", "x4_t0.jpg"]
    (out / "rgb_t1.png").unlink()
    capsys.readouterr()
    assert main(["upscale", str(inputs), "-o", str(out), "--t", "0,0.25,1", "--skip-existing", *common]) == 0
    assert "skipping 8 of 9 results whose output exists" in capsys.readouterr().err
    assert (out / "rgb_t1.png").is_file()
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(inputs / "rgb.png"), "--t", "0,1", *common]) == 0
    assert sorted(p.name for p in inputs.glob("rgb_t*.png")) == ["rgb_t0.png", "rgb_t1.png"]


@pytest.mark.parametrize("t, message", [
    ("0.5,0.50", "--t entry 2 (0.50) repeats entry 1"),
    ("0.1234561,0.1234562", "values that agree to 6 digits would write the same file names (_t0.123456, _t0.123456)"),
    ("0,1.5", r"--t entry 2 (1.5) is outside [0, 1]"),
    ("0,,1", "--t entry 2 is empty"),
])
def test_bad_t_lists_are_refused_before_any_work(tmp_path, model_files, inputs, capsys, t, message):
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_files[0]),
                             "--t", t], capsys)
    assert code == 2 and message in _one_error(err) and not (tmp_path / "o").exists()


def test_a_tagged_result_never_replaces_another_input(tmp_path, model_files):
    """a.png's result at t = 0 is named a_t0.png: in a folder that holds an input a_t0.png,
    that input would be lost (and then read back as an upscale to upscale again)."""
    folder = tmp_path / "e"
    folder.mkdir()
    for name in ("a.png", "a_t0.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for extra in ([], ["--overwrite"]):
        code = main(["upscale", str(folder), "-o", str(folder), "--t", "0,1", "--model", str(model_files[0]), "-q",
                     *extra])
        assert code == 2
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_results_one_name_apart_on_macos_and_windows_are_refused(tmp_path, model_files, capsys):
    """a.png and A.PNG (or an accent in NFC and in NFD) are two files on Linux but one on
    APFS and NTFS: their results would overwrite each other there, so they are refused
    everywhere. A result that is an input under another name (what "A.png" is to "a.png"
    on those systems; a hard link here) is found by the file's identity, not its name."""
    folder = tmp_path / "cam"
    folder.mkdir()
    for name in ("a.png", "A.PNG", "caf\u00e9.png", "cafe\u0301.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    code, _, err = _run_cli(["upscale", str(folder), "-o", str(tmp_path / "o"), "--model", str(model_files[0])],
                            capsys)
    assert code == 2 and "(one file on macOS and Windows)" in err and "(one file on macOS)" in err  # case; accent
    assert not (tmp_path / "o").exists()
    code, _, err = _run_cli(["upscale", str(folder / "a.png"), str(folder / "A.PNG"), "-o", str(tmp_path / "o"),
                             "--model", str(model_files[0])], capsys)
    assert code == 2 and _one_error(err) == (
        f"error: {folder / 'a.png'} and {folder / 'A.PNG'} would both write {tmp_path / 'o' / 'a.png'} and A.png "
        f"(one file on macOS and Windows): give them distinct names (or give each once)")
    # the result of b.jpg, o/b.png, is the input x.png under another name
    (tmp_path / "in").mkdir()
    (tmp_path / "o").mkdir()
    for name in ("b.jpg", "x.png"):
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(tmp_path / "in" / name)
    os.link(tmp_path / "in" / "x.png", tmp_path / "o" / "b.png")
    before = (tmp_path / "in" / "x.png").read_bytes()
    code, _, err = _run_cli(["upscale", str(tmp_path / "in" / "b.jpg"), str(tmp_path / "in" / "x.png"), "-o",
                             str(tmp_path / "o"), "--model", str(model_files[0]), "--overwrite"], capsys)
    assert code == 2 and _one_error(err) == (f"error: -o {tmp_path / 'o'}: b.png, the result of b.jpg, would replace "
                                             f"the input image x.png; choose another output folder")
    assert (tmp_path / "in" / "x.png").read_bytes() == before
    # names that differ in more than case are two files everywhere; a folder holding one
    # photograph under two names (a link) is upscaled in place, each name to its own result
    for a, b in (("Straße.png", "strasse.png"), ("ﬁle.png", "file.png")):
        names = [tmp_path / "u" / a, tmp_path / "u" / b]
        assert oftsr.output_paths.output_paths([str(n) for n in names], names, tmp_path / "r") == [tmp_path / "r" / a,
                                                                                       tmp_path / "r" / b]
    (tmp_path / "linked").mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "linked" / "a.png")
    (tmp_path / "linked" / "latest.png").symlink_to("a.png")
    os.link(tmp_path / "linked" / "a.png", tmp_path / "linked" / "b.png")
    assert main(["upscale", str(tmp_path / "linked"), "-o", str(tmp_path / "linked"), "--overwrite",
                 "--model", str(model_files[0]), "-q"]) == 0


def test_grid_puts_each_images_results_side_by_side(tmp_path, model_files, inputs, capsys):
    from oftsr.grid import labelled_grid

    out = tmp_path / "out"
    common = ["--model", str(model_files[0]), "--seed", "4", "--tile", "0", "-q"]
    assert main(["upscale", str(inputs), "-o", str(out), "--t", "0,1", "--grid", *common]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_grid.png")) == [
        "rgb_grid.png", "rgba_grid.png", "sub/gray_grid.png"]
    results = [load_image(out / f"rgb_t{t}.png")[0][0] for t in (0, 1)]
    expected = labelled_grid(torch.stack(results)[None], ["t = 0", "t = 1"])
    sheet = load_image(out / "rgb_grid.png")[0][0]
    assert sheet.shape == expected.shape and (sheet - expected).abs().max() <= 0.5 / 255 + 1e-6
    gray = load_image(out / "sub" / "gray_grid.png")[0]
    # gray results as RGB cells, a gap between; 32 px cells are doubled to hold "t = 0" (5 characters x 8 px)
    assert gray.shape[1] == 3 and gray.shape[-1] == 2 * 64 + 2
    # with --skip-existing the results are not recomputed, and the sheets are made again
    (out / "rgb_grid.png").unlink()
    capsys.readouterr()
    assert main(["upscale", str(inputs), "-o", str(out), "--t", "0,1", "--grid", "--skip-existing", *common]) == 0
    assert "skipping 6 of 6 results whose output exists" in capsys.readouterr().err
    assert (out / "rgb_grid.png").is_file()
    # a result that no longer reads (damaged meanwhile) costs its own sheet only
    (out / "rgb_t1.png").write_bytes(b"\x89PNG\r\n\x1a\ndamaged")
    for sheet in out.rglob("*_grid.png"):
        sheet.unlink()
    assert main(["upscale", str(inputs), "-o", str(out), "--t", "0,1", "--grid", "--skip-existing", *common]) == 1
    assert "no rgb_grid.png: " in capsys.readouterr().err
    assert (out / "rgba_grid.png").is_file() and (out / "sub" / "gray_grid.png").is_file()
    assert not (out / "rgb_grid.png").exists()
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(out), "--grid", *common], capsys)
    assert code == 2 and "--grid puts several t side by side" in _one_error(err)


def test_grid_of_big_results_is_reduced_as_they_are_read(tmp_path, model_files, inputs, monkeypatch):
    import oftsr.grid

    monkeypatch.setattr(oftsr.grid, "MAX_GRID_SIDE", 60)  # rgb.png's results are 40 px wide: two do not fit
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "x.png"), "--t", "0,1", "--grid",
                 "--model", str(model_files[0]), "--tile", "0", "-q"]) == 0
    sheet = load_image(tmp_path / "x_grid.png")[0]
    assert sheet.shape[-1] <= 60 and sheet.shape[-1] >= 50  # two reduced cells and their gap


def test_bit_depth_chooses_the_results_bits(tmp_path, model_files, inputs, capsys):
    rgb = inputs / "rgb.png"  # 8-bit
    assert main(["upscale", str(rgb), "-o", str(tmp_path / "deep.png"), "--bit-depth", "16", "--model",
                 str(model_files[0]), "-q"]) == 0
    deep, depth = load_image(tmp_path / "deep.png")
    assert depth == 16 and deep.shape == (1, 3, 48, 40) and (deep * 65535 % 257).abs().max() > 1  # more than 8 bits
    assert main(["upscale", str(rgb), "-o", str(tmp_path / "flat.png"), "--model", str(model_files[0]), "-q"]) == 0
    flat, depth = load_image(tmp_path / "flat.png")
    assert depth == 8 and (flat - deep).abs().max() <= 0.5 / 255 + 1e-6  # the same result, rounded to 8 bits
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--format", "jpg", "--bit-depth", "16",
                             "--model", str(model_files[0])], capsys)
    assert code == 2 and "--bit-depth 16: " in _one_error(err) and "write PNG or TIFF" in err
    assert not (tmp_path / "o").exists()
    # a 16-bit source written at 8 bits when asked, without the "had 16 bits" warning
    with open(tmp_path / "g16.png", "wb") as f:
        png.Writer(4, 4, greyscale=True, bitdepth=16).write(f, np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    code, _, err = _run_cli(["upscale", str(tmp_path / "g16.png"), "-o", str(tmp_path / "g8.png"), "--bit-depth", "8",
                             "--model", str(model_files[0]), "-q"], capsys)
    assert code == 0 and load_image(tmp_path / "g8.png")[1] == 8 and "warning" not in err


def test_options_that_would_do_nothing_are_said(tmp_path, model_files, inputs, capsys):
    rgb, student = str(inputs / "rgb.png"), str(model_files[0])
    code, _, err = _run_cli(["upscale", rgb, "-o", str(tmp_path / "x.jpg"), "--format", "webp", "--model", student],
                            capsys)
    assert code == 2 and _one_error(err) == ("error: --format webp is for an output folder; -o x.jpg names the file, "
                                             "and its suffix sets its type: name it x.webp, or leave out --format")
    for fmt in ("jpg", "same"):  # agreeing with the name, or the input's: fine
        assert main(["upscale", rgb, "-o", str(tmp_path / "x.jpg"), "--format", fmt, "--model", student, "-q"]) == 0
    code, _, err = _run_cli(["upscale", rgb, "-o", str(tmp_path / "y.png"), "--tile", "0", "--overlap", "16",
                             "--model", student, "-q"], capsys)
    assert code == 0 and "warning: --overlap 16 does nothing with --tile 0" in err
    code, _, err = _run_cli(["info", "x4", "--sigma-p", "0.9"], capsys)
    assert code == 0 and "warning: --sigma-p left out: info shows what x4-student.safetensors records" in err
    assert '"sigma_p": "0.2"' in _run_cli(["info", "x4", "--sigma-p", "0.9"], capsys)[1]
    # --role naming the other command's model: said first, not as "this is a teacher model"
    code, _, err = _run_cli(["upscale", rgb, "-o", str(tmp_path / "z.png"), "--role", "teacher", "--model", student],
                            capsys)
    assert code == 2 and _one_error(err) == ("error: --role teacher: `oftsr upscale` runs a student; --role is for "
                                             "files that do not record theirs (use `oftsr sample` for a teacher)")


def test_an_old_torch_is_named_at_import():
    # torch 2.1 (an old ComfyUI's) failed with "module 'torch' has no attribute 'uint16'"
    for version in ("2.1.2+cu121", "2.3.1"):  # 2.3 lacks torch.library.custom_op
        code = f"import torch; torch.__version__ = '{version}'; import oftsr"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and res.stderr.strip().splitlines()[-1] == (
            f"ImportError: OFTSR needs torch 2.4 or newer; this Python has torch {version}: update it (in ComfyUI, "
            f"update ComfyUI and its requirements)")


def test_version():
    res = subprocess.run([sys.executable, "-m", "oftsr", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"oftsr {oftsr.__version__}"


def test_a_name_the_console_cannot_encode_is_escaped_not_an_error(tmp_path, model_files):
    # Windows' cp1252 console (or a redirect there): the file was written, then printing its name failed
    dst = tmp_path / "模型.safetensors"
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    res = subprocess.run([sys.executable, "-m", "oftsr", "convert", str(model_files[0]), str(dst)], capture_output=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr.decode("cp1252", "replace")
    assert dst.is_file() and "\\u6a21\\u578b.safetensors: student, x4" in res.stdout.decode("cp1252")


def test_warnings_name_the_option_that_keeps_what_was_lost(tmp_path, model_files, inputs, capsys):
    # a folder written as JPEG: the advice is --format, not a file name
    code, _, err = _run_cli(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--format", "jpg", "--model",
                             str(model_files[0]), "-q"], capsys)
    assert code == 0 and "rgba.jpg: JPEG has no transparency, so rgba.png is flattened onto white; write PNG " \
                         "(--format png) to keep its alpha" in err
    for extra in ([], ["--t", "0,1"]):  # one file named by -o, also when it is written once per t
        code, _, err = _run_cli(["upscale", str(inputs / "rgba.png"), "-o", str(tmp_path / "one.jpg"), "--model",
                                 str(model_files[0]), "-q", *extra], capsys)
        assert code == 0 and "name the output .png to keep its alpha" in err and "--format" not in err


def test_auto_dtype_is_bf16_on_cpus_with_native_bf16_but_not_for_evaluation(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    assert oftsr.cli.resolve_dtype("auto", cpu) == torch.float32  # (the suite's default: no native bf16)
    monkeypatch.setattr(oftsr.devices, "cpu_has_native_bf16", lambda: True)
    assert oftsr.load_model("x4", dtype="auto").dtype == torch.bfloat16  # the library's "auto" is the same choice
    assert oftsr.cli.resolve_dtype("auto", cpu) == torch.bfloat16
    assert oftsr.cli.resolve_dtype("auto", cpu, cpu_bf16=False) == torch.float32  # evaluation figures
    assert oftsr.cli.resolve_dtype("fp32", cpu) == torch.float32  # asked for: as asked
    assert oftsr.cli.resolve_dtype("auto", torch.device("mps")) == torch.float32
    # End to end: the bundled student in bf16 writes an image a few levels at most from float32's.
    rgb = (smooth_image(24, 20) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    Image.fromarray(rgb).save(tmp_path / "in.png")
    outs = {}
    for dtype in ("auto", "fp32"):
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / f"{dtype}.png"), "--dtype", dtype,
                     "--t", "0.5", "-q"]) == 0
        outs[dtype] = np.asarray(Image.open(tmp_path / f"{dtype}.png")).astype(float)
    difference = np.abs(outs["auto"] - outs["fp32"])
    assert outs["auto"].shape == (96, 80, 3) and 0 < difference.max() <= 4, difference.max()
    assert 10 * np.log10(255 ** 2 / np.mean(difference ** 2)) > 50


def test_camera_raw_files_are_refused_not_read_as_their_thumbnail(tmp_path, model_files, capsys):
    """A NEF or DNG is a TIFF whose first image is a small preview: Pillow opens that. Named,
    it is refused with what to do; in a folder, it is left out and said."""
    folder = tmp_path / "card"
    folder.mkdir()
    for name in ("DSC_0001.NEF", "IMG_0002.dng"):
        Image.new("RGB", (24, 16), (90, 120, 60)).save(folder / name, format="TIFF")  # the preview a raw holds first
    code = main(["upscale", str(folder / "DSC_0001.NEF"), "-o", str(tmp_path / "o.png"), "--model",
                 str(model_files[0]), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "DSC_0001.NEF is a camera raw file, whose sensor data needs developing: develop it in a " \
                         "raw converter and export a 16-bit TIFF" in err
    assert not (tmp_path / "o.png").exists()
    Image.new("RGB", (8, 8)).save(folder / "developed.jpg")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_files[0]), "-q"]) == 0
    assert "leaving out 2 camera raw file(s) (DNG, NEF): develop them in a raw converter" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["developed.png"]


def test_a_name_too_long_to_write_is_refused_before_any_work(tmp_path, model_files, capsys):
    folder = tmp_path / "names"
    folder.mkdir()
    long = "a" * 247 + ".png"  # 251 bytes: a valid name, but its temporary name would be 265
    Image.new("RGB", (8, 8)).save(folder / long)
    code, _, err = _run_cli(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_files[0])],
                            capsys)
    assert code == 2 and f"{long}: the name is too long to write in {tmp_path / 'out'} (251 bytes; at most 241)" in err
    assert not (tmp_path / "out").exists()  # nothing written, and the folder it made for it removed


def test_a_file_name_that_is_not_utf8_is_upscaled_under_its_own_bytes(tmp_path, model_files, capsys):
    """Linux names are bytes: one that no encoding reads (Python holds it with surrogates) is
    an image like the others, and its result keeps those bytes."""
    folder = tmp_path / "names"
    folder.mkdir()
    odd = os.fsdecode(b"bad\xff\xfe.png")
    try:
        Image.new("RGB", (8, 6), (200, 40, 10)).save(folder / odd)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    Image.new("RGB", (8, 6)).save(folder / "good.png")
    code, _, err = _run_cli(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_files[0]), "-q"],
                            capsys)
    assert code == 0, err
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == [b"bad\xff\xfe.png", b"good.png"]
    assert Image.open(tmp_path / "out" / odd).size == (32, 24)


def test_a_result_larger_than_the_free_memory_is_said_with_its_size(tmp_path, model_files, inputs, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(oftsr.cli, "available_memory", lambda device: 1000)  # bytes
    code = main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o.png"), "--model", str(model_files[0]),
                 "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "rgb.png: its result, 40x48, needs 0.0 GiB on its own, more than the 0.0 GiB of memory " \
                         "free: upscale a crop or a smaller copy" in err
    assert not (tmp_path / "o.png").exists()
    # with --outscale, the float32 resize too: 40x48x3 float32 + 60x72x3 float32 (rgb.png is 10x12)
    code = main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o.png"), "--model", str(model_files[0]),
                 "-q", "--outscale", "6"])
    assert code == 1 and "rgb.png: its result, 40x48 resized to 60x72 by --outscale, needs 0.0 GiB on its own, more " \
                         "than the 0.0 GiB of memory free: upscale a crop or a smaller copy of it or give a smaller " \
                         "--outscale" in capsys.readouterr().err
    monkeypatch.setattr(oftsr.cli, "available_memory", lambda device: (40 * 48 + 60 * 72) * 3 * 4)  # just enough
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o6.png"), "--model", str(model_files[0]),
                 "-q", "--outscale", "6"]) == 0
    monkeypatch.setattr(oftsr.cli, "available_memory", lambda device: 40 * 48 * 3)  # exactly the uint8 result
    assert main(["upscale", str(inputs / "rgb.png"), "-o", str(tmp_path / "o.png"), "--model", str(model_files[0]),
                 "-q"]) == 0
