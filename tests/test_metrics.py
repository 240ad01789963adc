import csv
import os
import hashlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import oftsr
from oftsr.cli import main
from oftsr.training.evaluate import images_sha256
from oftsr.training.metrics import LPIPS, LPIPSUnavailable, psnr, psnr_y, realism_swd, rgb_to_y, ssim, ssim_y

from conftest import DATA, make_model, need, smooth_image


def test_psnr_hand_values():
    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert psnr(x + 0.01, x) == pytest.approx(40.0, abs=1e-3)


def test_measures_refuse_what_they_would_score_wrongly():
    x = torch.rand(1, 3, 32, 32)
    for a, b, message in [(x[0], x[0], r"x must be a floating-point \(B, C, H, W\) image .* got torch.float32 of "
                                       r"shape \(3, 32, 32\) \(one image: image\[None\]"),
                          ((x * 255).byte(), x, r"x must be a floating-point .* got torch.uint8 .* levels / 255"),
                          (x, x[..., :16], r"x and y must have one shape, got \(1, 3, 32, 32\) and \(1, 3, 32, 16\)")]:
        for measure in (psnr, psnr_y, ssim, ssim_y, realism_swd):
            with pytest.raises(ValueError, match=message):
                measure(a, b)
    with pytest.raises(ValueError, match="a border of 16 px leaves nothing of a 32x32 image to score"):
        psnr_y(x, x, border=16)


def test_luma_and_border():
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert rgb_to_y(white).flatten()[0].item() == pytest.approx(235 / 255, abs=1e-4)
    assert rgb_to_y(black).flatten()[0].item() == pytest.approx(16 / 255, abs=1e-6)
    x, y = torch.zeros(1, 3, 12, 12), torch.zeros(1, 3, 12, 12)
    x[..., :2, :] = 1.0  # differs only inside a 4-px border
    assert psnr_y(x, y, border=4) > 100 and psnr_y(x, y, border=0) < 20


def test_ssim_is_the_reference_protocol():
    """Wang et al.'s SSIM averages the map over the positions where the 11 px window fits;
    torchmetrics' default pads and averages the border too (up to 0.004 off on Set5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    img = smooth_image(40, 56)
    noisy = (img + 0.1 * torch.randn_like(img)).clamp(0, 1)
    a, b = rgb_to_y(noisy.double()), rgb_to_y(img.double())
    _, full = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True)
    assert ssim_y(noisy, img) == pytest.approx(full[..., 5:-5, 5:-5].mean().item(), abs=1e-9)
    assert ssim_y(noisy, img) != pytest.approx(structural_similarity_index_measure(a, b, data_range=1.0).item(),
                                               abs=1e-4)
    with pytest.raises(ValueError, match="smaller than the 11 px SSIM window"):
        ssim_y(img[..., :8, :8], img[..., :8, :8])


def test_ssim():
    img = smooth_image(48, 48)
    assert ssim_y(img, img) == pytest.approx(1.0, abs=1e-6)
    noisy = (img + 0.1 * torch.randn_like(img)).clamp(0, 1)
    assert 0 < ssim_y(noisy, img) < 0.9


def _photo():
    path = DATA / "val" / "Set14" / "baboon.png"
    if path.exists():
        from oftsr.images import load_image
        return load_image(path)[0][:, :3, :192, :192]
    g = torch.Generator().manual_seed(0)
    return (smooth_image(192, 192) + 0.2 * torch.rand(1, 3, 192, 192, generator=g)).clamp(0, 1)


def test_realism_swd_orders_degradations():
    hr = _photo()
    blurry = F.interpolate(F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True), scale_factor=4,
                           mode="bicubic").clamp(0, 1)
    slightly = (hr + 0.01 * torch.randn_like(hr)).clamp(0, 1)
    assert realism_swd(hr, hr) == 0.0
    s_blur, s_slight = realism_swd(blurry, hr), realism_swd(slightly, hr)
    assert s_blur > 5 * s_slight > 0  # the blurry upsample is far less realistic
    assert realism_swd(blurry, hr, seed=1) == pytest.approx(s_blur, rel=0.25)  # stable across seeds
    assert realism_swd(blurry, hr) == s_blur  # deterministic
    with pytest.raises(ValueError, match="too small"):
        realism_swd(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_eval_names_models_by_their_files_and_every_unreadable_image(tmp_path, random_unet_weights, capsys):
    """Two students of two runs are two rows named by their folders; models that cannot be
    scored together are named with their scales; every unreadable image is named at once,
    before any model runs, and nothing is written."""
    from oftsr.training.evaluate import model_labels

    assert model_labels(["runs/a/student.safetensors", "runs/b/student.safetensors", "x4-real-student.safetensors"]) \
        == ["a/student", "b/student", "x4-real-student"]
    assert model_labels(["s.safetensors", "s.safetensors"]) == ["s (1)", "s (2)"]
    # as many folders as tell files apart; one file twice numbered among its own; another row's name avoided
    assert model_labels(["r1/ft/student.safetensors", "r2/ft/student.safetensors"]) == ["r1/ft/student",
                                                                                        "r2/ft/student"]
    assert model_labels(["a/s.safetensors", "b/t.safetensors", "a/s.safetensors"]) == ["s (1)", "t", "s (2)"]
    assert model_labels(["x/bicubic.safetensors", "y/s.safetensors"], reserved=["bicubic"]) == ["x/bicubic", "s"]
    if os.name != "nt":  # a link goes by its own name; one file under two names is one file
        (tmp_path / "runs" / "x").mkdir(parents=True)
        (tmp_path / "runs" / "x" / "student.safetensors").write_bytes(b"")
        (tmp_path / "latest.safetensors").symlink_to(tmp_path / "runs" / "x" / "student.safetensors")
        assert model_labels([tmp_path / "latest.safetensors", tmp_path / "y" / "student.safetensors"]) == ["latest",
                                                                                                          "student"]
        assert model_labels([tmp_path / "runs" / "x" / "student.safetensors",
                             tmp_path / "runs" / "x" / ".." / "x" / "student.safetensors"]) == ["student (1)",
                                                                                                "student (2)"]
    data = tmp_path / "hr"
    data.mkdir()
    from oftsr.images import save_image
    for i in range(2):
        save_image(smooth_image(48, 52, seed=i), data / f"{i}.png")
    paths = [tmp_path / name / "student.safetensors" for name in ("a", "b")]
    for seed, path in enumerate(paths):
        path.parent.mkdir()
        oftsr.save_model(make_model(random_unet_weights, "student"), path)
    out = tmp_path / "eval"
    assert main(["eval", "--model", *map(str, paths), "--data", str(data), "--t", "0", "--out", str(out), "-q"]) == 0
    assert [r["method"] for r in csv.DictReader(open(out / "results.csv"))] == ["bicubic", "a/student", "b/student"]
    assert {r["method"] for r in csv.DictReader(open(out / "per_image.csv"))} == {"bicubic", "a/student", "b/student"}
    capsys.readouterr()

    x2 = tmp_path / "x2.safetensors"
    oftsr.save_model(make_model(random_unet_weights, "student", scale=2), x2)
    assert main(["eval", "--model", str(paths[0]), str(x2), "--data", str(data), "--out", str(tmp_path / "m"), "-q"]) == 2
    assert "must share scale and degradation, and these do not: student x4 bicubic, x2 x2 bicubic" \
        in capsys.readouterr().err

    (data / "broken.png").write_bytes((data / "0.png").read_bytes()[:60])  # cut short
    (data / "notes.png").write_text("not an image")
    before = (out / "per_image.csv").read_bytes()
    assert main(["eval", "--model", str(paths[0]), "--data", str(data), "--t", "0", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "2 of the 4 images in" in err and "broken.png (" in err and "notes.png (" in err
    assert "Repair them or move them out of the folder" in err
    assert (out / "per_image.csv").read_bytes() == before  # the earlier run's results stand
    # real pairs: the unreadable files of both folders in one message
    pairs = tmp_path / "pairs"
    for sub, size in (("HR", 48), ("LR", 12)):
        (pairs / sub).mkdir(parents=True)
        for i in range(2):
            save_image(smooth_image(size, size, seed=i), pairs / sub / f"{i}.png")
    (pairs / "HR" / "0.png").write_text("not an image")
    (pairs / "LR" / "1.png").write_bytes((pairs / "LR" / "0.png").read_bytes()[:60])
    assert main(["eval", "--model", str(paths[0]), "--data", str(pairs), "--t", "0", "--out", str(tmp_path / "p"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert f"2 of the 4 images in {pairs / 'HR'} and {pairs / 'LR'} could not be read: HR/0.png (" in err
    assert "; LR/1.png (" in err


def test_lpips_with_random_backbone_and_missing_weights_message(monkeypatch, tmp_path):
    lp = LPIPS(random_backbone=True)  # offline: random AlexNet trunk, real linear heads
    img = smooth_image(64, 64)
    assert lp(img, img) == pytest.approx(0.0, abs=1e-6)
    assert lp((img + 0.2 * torch.randn_like(img)).clamp(0, 1), img) > 0
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(LPIPSUnavailable, match="n/a: weights missing"):
        LPIPS()
    (tmp_path / "checkpoints").mkdir()
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth")
    with pytest.raises(LPIPSUnavailable, match="n/a: wrong weights .* is not torchvision's AlexNet"):
        LPIPS()  # a file under the name is not trusted: random weights gave plausible-looking scores


def test_eval_command_writes_tables_and_plot(tmp_path, random_unet_weights, capsys):
    data = tmp_path / "hr"
    data.mkdir()
    from oftsr.images import save_image
    for i in range(2):
        save_image(smooth_image(48, 52, seed=i), data / f"{i}.png")
    student, teacher = tmp_path / "s.safetensors", tmp_path / "t.safetensors"
    oftsr.save_model(make_model(random_unet_weights, "student"), student)
    oftsr.save_model(make_model(random_unet_weights, "teacher"), teacher)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(student), str(teacher), "--data", str(data), "--t", "0", "1", "--steps", "2",
                 "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(student), "--data", str(data), "--t", "0,1", "--out", str(tmp_path / "c"),
                 "--steps", "4", "-q"]) == 0  # commas, as `upscale --t` takes them
    assert "warning: --steps does nothing here: only a teacher samples in steps (a student takes one)" \
        in capsys.readouterr().err
    only_students = json.loads((tmp_path / "c" / "run.json").read_text())
    assert only_students["t"] == [0.0, 1.0] and (only_students["steps"], only_students["solver"]) == (None, None)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["bicubic", "student", "student", "teacher (midpoint)"]
    assert [r["t"] for r in rows] == ["", "0", "1", ""] and rows[3]["NFE"] == "3"
    for r in rows:
        assert 10 < float(r["PSNR RGB"]) < 60 and 0 < float(r["SSIM Y"]) <= 1 and float(r["realism SWD"]) >= 0
        assert r["LPIPS"].startswith("n/a") or float(r["LPIPS"]) >= 0
    assert (out / "curve.png").stat().st_size > 5000
    assert "| bicubic |" in (out / "results.md").read_text()
    run = json.loads((out / "run.json").read_text())  # how the numbers were made
    assert run["seed"] == 0 and (run["steps"], run["solver"]) == (2, "midpoint") and run["t"] == [0.0, 1.0]
    assert run["lr"] == "made (bicubic)"
    assert [m["role"] for m in run["models"]] == ["student", "teacher"]
    assert run["models"][0]["sha256"] == hashlib.sha256(student.read_bytes()).hexdigest()
    assert run["data_sha256"] == images_sha256(data, out) and run["lr_sha256"] is None and run["baselines"] == []
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(per_image) == 2 * 4 and not (out / "per_image.csv.partial").exists()
    for method, t in (("student", "0"), ("teacher (midpoint)", "")):  # results.csv: the full-precision means
        mean = float(next(r for r in rows if r["method"] == method and r["t"] == t)["PSNR Y"])
        values = [float(r["PSNR Y"]) for r in per_image if r["method"] == method and r["t"] == t]
        assert mean == pytest.approx(sum(values) / 2, abs=1e-9)

    # --out inside --data, run twice: the images the first run left there are not data, and a
    # run that fails (a bad t) stops before any image and leaves the complete files alone
    inner = data / "eval"
    args = ["eval", "--model", str(student), str(student), "--data", str(data), "--t", "0", "--out", str(inner), "-q"]
    assert main(args) == 0
    (inner / "extra.png").write_bytes((data / "0.png").read_bytes())
    before = (inner / "per_image.csv").read_bytes()
    code = main([*args[:-3], "1.5", *args[-3:]])
    assert code == 2 and "--t entry 2 (1.5) is outside [0, 1]" in capsys.readouterr().err
    assert (inner / "per_image.csv").read_bytes() == before
    assert main(args) == 0
    assert [r["method"] for r in csv.DictReader(open(inner / "results.csv"))] == ["bicubic", "s (1)", "s (2)"]
    assert {r["image"] for r in csv.DictReader(open(inner / "per_image.csv"))} == {"0.png", "1.png"}
    # an --out that holds the data leaves nothing out
    assert main(["eval", "--model", str(student), "--data", str(data), "--t", "0", "--out", str(tmp_path), "-q"]) == 0
    assert {r["image"] for r in csv.DictReader(open(tmp_path / "per_image.csv"))} >= {"0.png", "1.png"}
    # --out the data folder itself: its curve.png would be scored by the next run; refused before any image
    code = main(["eval", "--model", str(student), "--data", str(data), "--t", "0", "--out", str(data), "-q"])
    assert code == 2 and "the output folder is the data folder" in capsys.readouterr().err
    assert not (data / "curve.png").exists()
    # a stopped run's scores are kept by the next run there; a tiled run says so in its title
    stopped = "image,method,t\n0.png,bicubic,\n"
    (inner / "per_image.csv.partial").write_text(stopped)
    assert main([*args, "--tile", "32"]) == 0
    assert (inner / "per_image.stopped.csv").read_text() == stopped and not (inner / "per_image.csv.partial").exists()
    assert (inner / "results.md").read_text().startswith("### hr, x4 bicubic, cpu, models in 32 px tiles")


def test_eval_says_when_a_ground_truth_has_transparency(tmp_path, capsys):
    from oftsr.training.evaluate import _rgb

    rgba = np.full((40, 40, 4), 200, np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _rgb(tmp_path / "opaque.png").shape == (1, 3, 40, 40)  # opaque alpha: nothing to say
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    with pytest.warns(UserWarning, match="cut.png has transparent pixels: scored on its colour with them filled"):
        _rgb(tmp_path / "cut.png")
    # the command says it in its own words, once, as its other notices
    (tmp_path / "opaque.png").unlink()
    assert main(["eval", "--model", "x4-student", "--data", str(tmp_path), "--t", "0", "-o", str(tmp_path / "ev"),
                 "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: cut.png has transparent pixels: scored on its colour with them filled" in err
    assert "UserWarning" not in err and err.count("transparent pixels") == 1


def test_eval_scores_8_bit_images_and_seeds_each_lr_by_its_name(tmp_path, random_unet_weights):
    from oftsr.images import save_image
    from oftsr.training.evaluate import evaluate, image_seed, quantize
    for folder, names in (("both", ("a.png", "b.png")), ("alone", ("b.png",))):
        (tmp_path / folder).mkdir()
        for name in names:
            save_image(smooth_image(48, 52, seed=ord(name[0])), tmp_path / folder / name)
    model = make_model(random_unet_weights, "student")
    model.degradation = "noisy_avgpool"  # a random degradation: the LR depends on its seed
    both = evaluate([model], tmp_path / "both", ts=[0.0], log=lambda s: None, per_image_csv=tmp_path / "both.csv")
    alone = evaluate([model], tmp_path / "alone", ts=[0.0], log=lambda s: None)
    assert both[0].scores["psnr_y"][1] == alone[0].scores["psnr_y"][0]  # b.png's LR is b.png's, whatever the folder
    # the first row is named for what it is: average pooling's LR is brought back by block replication
    assert [r.method for r in both] == ["nearest", "student"] and both[0].is_interpolation
    assert not both[1].is_interpolation
    assert image_seed(0, "b.png") != image_seed(0, "a.png") and image_seed(1, "b.png") != image_seed(0, "b.png")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(quantize(x) * 255, (quantize(x) * 255).round()) and (quantize(x) - x).abs().max() <= 0.5 / 255
    (tmp_path / "tiny").mkdir()
    save_image(smooth_image(16, 16), tmp_path / "tiny" / "t.png")
    with pytest.raises(ValueError, match=r"smaller than 32 px on a side cannot be scored: t.png \(16x16\)"):
        evaluate([model], tmp_path / "tiny", ts=[0.0], log=lambda s: None)
    save_image(smooth_image(3, 40), tmp_path / "tiny" / "u.png")  # under the scale: no LR at all, named as it is
    with pytest.raises(ValueError, match=r"cannot be scored: t.png \(16x16\), u.png \(40x3\)$"):
        evaluate([model], tmp_path / "tiny", ts=[0.0], log=lambda s: None)


def test_eval_names_images_by_their_path_under_the_data_folder(tmp_path, random_unet_weights):
    import csv

    from oftsr.images import save_image
    from oftsr.training.evaluate import evaluate
    for sub, seed in (("day", 1), ("night", 2)):  # the same file name in two subfolders
        (tmp_path / "data" / sub).mkdir(parents=True)
        save_image(smooth_image(48, 48, seed=seed), tmp_path / "data" / sub / "a.png")
    save_image(smooth_image(48, 48, seed=3), tmp_path / "data" / "top.png")
    model = make_model(random_unet_weights, "student")
    evaluate([model], tmp_path / "data", ts=[0.0], log=lambda s: None, per_image_csv=tmp_path / "p.csv")
    records = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert sorted({r["image"] for r in records}) == ["day/a.png", "night/a.png", "top.png"]
    bicubic = {r["image"]: float(r["PSNR Y"]) for r in records if r["method"] == "bicubic"}
    assert bicubic["day/a.png"] != bicubic["night/a.png"]  # two images, not one written twice


def test_eval_bicubic_row_matches_published_anchor(tmp_path):
    # Bicubic x4 Y-PSNR on Set5 is 28.42 dB in the literature (e.g. the RCAN paper's table): our degradation,
    # luma and border crop reproduce it.
    set5 = need(DATA / "val" / "Set5")
    from oftsr.training.evaluate import evaluate
    model = oftsr.create_model("tiny", role="student", seed=0)
    rows = evaluate([model], set5, ts=[], log=lambda s: None)
    assert rows[0].mean("psnr_y") == pytest.approx(28.42, abs=0.05)
    assert not math.isnan(rows[0].mean("ssim"))


def test_eval_table_round_trip(tmp_path, monkeypatch):
    from oftsr.training.evaluate import Row, plot_curve, read_table, write_tables
    rows = [Row("bicubic"), Row("student", t=0.0, nfe=1), Row("student", t=1.0, nfe=1), Row("teacher (midpoint)", nfe=31)]
    for i, row in enumerate(rows):
        for key in ("psnr", "psnr_y", "ssim", "swd", "sec")[:4 if row.is_interpolation else 5]:  # as evaluate: bicubic
            row.scores[key] = [20.0 + i, 21.0 + i + 1 / 3]  # runs no network, so it has no time
    _, csv_path = write_tables(rows, tmp_path, "n/a: weights missing", "test")
    back = read_table(csv_path)
    assert [(r.method, r.t, r.nfe) for r in back] == [(r.method, r.t, r.nfe) for r in rows]
    for a, b in zip(rows, back):
        assert b.mean("psnr_y") == a.mean("psnr_y") and b.mean("swd") == a.mean("swd")  # full precision
        assert math.isnan(b.mean("lpips"))  # the note is not a number
    assert math.isnan(back[0].mean("sec"))  # bicubic has no time
    md, _ = write_tables(rows, tmp_path / "no_lpips", None, "test")  # evaluate(..., lpips=None) from the library
    assert "nan" not in md.read_text() and "| student | 0 | 1 | 21.67 | 21.67 | 21.6667 |  | 21.67 |" in md.read_text()
    import matplotlib.colors
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig) or close(fig))
    assert plot_curve(back, tmp_path / "curve.png", "test").stat().st_size > 1000
    # every row its own colour, bicubic grey: markers and lines draw from one cycle
    (ax,) = figures[0].axes
    colours = [matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in ax.collections]  # bicubic, teacher
    colours += [matplotlib.colors.to_hex(line.get_color()) for line in ax.lines]  # the student
    assert colours[0] == "#737373" and len(set(colours)) == 3
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an `oftsr eval` results.csv"):
        read_table(tmp_path / "other.csv")


def test_plot_script_keeps_two_students_apart_and_checks_its_inputs(tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from oftsr.training.evaluate import Row, write_tables

    spec = importlib.util.spec_from_file_location("plot_eval_curves",
                                                  Path(__file__).parents[1] / "scripts" / "plot_eval_curves.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    drawn = {}
    monkeypatch.setattr(script, "plot_curve", lambda rows, path, title: drawn.setdefault("rows", rows) and path)
    for folder, bicubic in (("old", 28.0), ("new", 28.5)):
        rows = [Row("bicubic"), Row("student", t=0.0, nfe=1), Row("student", t=1.0, nfe=1)]
        for i, row in enumerate(rows):
            for key in ("psnr", "psnr_y", "ssim", "swd", "sec"):
                row.scores[key] = [bicubic + i]
        write_tables(rows, tmp_path / folder, None, folder)
    script.main([str(tmp_path / "old" / "results.csv"), str(tmp_path / "new" / "results.csv"),
                 "-o", str(tmp_path / "plots" / "curve.png")])
    assert [(r.method, r.t) for r in drawn["rows"]] == [
        ("bicubic", None), ("student", 0.0), ("student", 1.0), ("student (new)", 0.0), ("student (new)", 1.0)]
    assert "its bicubic row differs from the first file's" in capsys.readouterr().err
    # three runs whose folders share the default name (a/eval, b/eval, c/eval): three curves
    for run in "abc":
        rows = [Row("bicubic"), Row("student", t=0.0, nfe=1)]
        for row in rows:
            for key in ("psnr", "psnr_y", "ssim", "swd", "sec"):
                row.scores[key] = [28.0]
        write_tables(rows, tmp_path / run / "eval", None, run)
    drawn.clear()
    paths = [str(tmp_path / run / "eval" / "results.csv") for run in "abc"]
    script.main([*paths, "-o", str(tmp_path / "c3.png")])
    assert [r.method for r in drawn["rows"]] == ["bicubic", "student", "student (eval)", f"student ({paths[2]})"]
    # two students of one file ("s (1)", "s (2)") stay two curves too
    rows = [Row("bicubic"), Row("student 1", t=0.0, nfe=1), Row("student 2", t=0.0, nfe=1)]
    for row in rows:
        for key in ("psnr", "psnr_y", "ssim", "swd", "sec"):
            row.scores[key] = [28.0]
    write_tables(rows, tmp_path / "two", None, "two")
    drawn.clear()
    script.main([str(tmp_path / "two" / "results.csv"), "-o", str(tmp_path / "c2.png")])
    assert [r.method for r in drawn["rows"]] == ["bicubic", "student 1", "student 2"]
    # runs of other seeds agree on bicubic but not on the students: said from their run.json
    import json

    for run, seed in zip("abc", (0, 0, 7)):
        (tmp_path / run / "eval" / "run.json").write_text(json.dumps({"seed": seed, "data_sha256": "d", "lr": "given"}))
    capsys.readouterr()
    script.main([*paths[:2], "-o", str(tmp_path / "c4.png")])
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "b" / "eval" / "run.json").write_text("{not json")  # unreadable: nothing to compare
    script.main([*paths, "-o", str(tmp_path / "c5.png")])
    assert f"warning: {paths[2]}: its run differs from the first file's in seed (run.json)" in capsys.readouterr().err
    # version 0.14 wrote "made (realesrgan)" for what is now "made (realesrgan full chain)": the same LR
    (tmp_path / "a" / "eval" / "run.json").write_text(json.dumps({"seed": 0, "lr": "made (realesrgan)"}))
    (tmp_path / "b" / "eval" / "run.json").write_text(json.dumps({"seed": 0, "lr": "made (realesrgan full chain)"}))
    script.main([*paths[:2], "-o", str(tmp_path / "c6.png")])
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "a" / "eval" / "run.json").unlink()  # the first file has none: nothing to compare with
    script.main([*paths, "-o", str(tmp_path / "c7.png")])
    assert "run.json" not in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no row of .* matches 'teacher'"):
        script.main([str(tmp_path / "old" / "results.csv") + ":teacher", "-o", str(tmp_path / "c.png")])


def test_flat_region_grain_script_finds_the_flat_window_and_the_added_grain(tmp_path):
    # scripts/flat_region_grain.py as users run it: an "upscale" that adds noise scores above
    # the HR in the flattest window; one equal to the HR scores the same.
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    hr = np.full((128, 192, 3), 120, np.uint8)
    hr[:, :64] = rng.integers(0, 256, (128, 64, 3))  # texture on the left, flat paint on the right
    (tmp_path / "HR").mkdir()
    (tmp_path / "same").mkdir()
    (tmp_path / "grainy").mkdir()
    Image.fromarray(hr).save(tmp_path / "HR" / "p.png")
    Image.fromarray(hr).save(tmp_path / "same" / "p_t1.png")
    noisy = np.clip(hr.astype(np.float64) + rng.normal(0, 4, hr.shape), 0, 255).round().astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "grainy" / "p_t1.png")
    script = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "flat_region_grain.py"), "--hr",
              str(tmp_path / "HR"), "--sr", str(tmp_path / "same" / "{stem}_t1.png"), "--sr",
              str(tmp_path / "grainy" / "{stem}_t1.png"), "--save", str(tmp_path / "crops.png")]
    out = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    values = [float(line.split("mean ")[1].split(",")[0]) for line in out.stdout.splitlines() if "mean " in line]
    assert values[0] == values[1] == 0.0 and values[2] > 4.0, out.stdout  # the flat half found; grain ~ 4 * sqrt(20)
    assert Image.open(tmp_path / "crops.png").size == (3 * 192, 192)
    (tmp_path / "grainy" / "p_t1.png").unlink()
    out = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "p_t1.png is missing" in out.stderr
