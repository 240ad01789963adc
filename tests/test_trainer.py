import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import oftsr
from oftsr.training.data import SRDataset, scan_images, warn_image_sizes
from oftsr.training.degradations import make_lr
from oftsr.flow import noise_augment, student_step, time_grid
from oftsr.training.losses import distill_loss, teacher_loss
from oftsr.training.realesrgan import REALESRGAN_CONFIGS
from oftsr.sampling import sample_midpoint

from conftest import DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    """A few real photographs (or synthetic ones without the shared data), one small image,
    one JPEG under a .png name and one broken file."""
    folder = tmp_path_factory.mktemp("train")
    real = sorted((DATA / "train").glob("*.png"))[:4] if (DATA / "train").is_dir() else []
    for i, src in enumerate(real):
        shutil.copy(src, folder / f"img{i}.png")
    rng = np.random.default_rng(0)
    for i in range(len(real), 4):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "sub" / "small.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "jpeg_named.png", format="JPEG")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_dataset_items(train_dir, caplog):
    ds = SRDataset(train_dir, resolution=32, scale=4, seed=3)
    assert len(ds) == 6 and "broken.png" in caplog.text  # reported once, left out
    for i in range(len(ds)):
        item = ds[i]
        assert item["hr"].shape == item["lr"].shape == (3, 32, 32)
        assert item["hr"].min() >= -1 and item["hr"].max() <= 1
    # the LR is the bicubic degradation of the HR crop
    item = ds[0]
    assert torch.allclose(item["lr"], make_lr(item["hr"][None], 4, "bicubic")[0], atol=1e-6)
    # seeded by (seed, epoch, index)
    assert torch.equal(ds[2]["hr"], ds[2]["hr"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["hr"], SRDataset(train_dir, resolution=32, seed=3)[2]["hr"])


def test_images_smaller_than_the_crop_are_named_once(train_dir, caplog):
    files = SRDataset(train_dir, resolution=32, scale=4).files
    assert "smaller than" not in caplog.text  # a dataset alone (validation) says nothing
    warn_image_sizes(files, 20)
    assert "smaller than" not in caplog.text  # small.png is 24x20: it fits a 20 px crop
    warn_image_sizes(files, 32)
    assert "1 of 6 training images are smaller than the 32 px crop" in caplog.text
    assert "(smallest: small.png, 20 px)" in caplog.text
    fits = max(min(Image.open(f).size) for f in files)
    with pytest.raises(ValueError, match=rf"all 6 training images are smaller than the 1024 px crop \(the largest fits "
                                         rf"{fits} px\); .* use a --resolution of at most {fits}"):
        warn_image_sizes(files, 1024)
    # validation images: scored against blur, said with their own flag
    caplog.clear()
    warn_image_sizes(files, 32, purpose="validation")
    assert ("1 of 6 validation images are smaller than the 32 px crop and are scaled up to it, which would score the "
            "model against blur (smallest: small.png, 20 px); use a smaller --validation_resolution") in caplog.text
    with pytest.raises(ValueError, match=rf"all 6 validation images .* --validation_resolution of at most {fits}"):
        warn_image_sizes(files, 1024, purpose="validation")


def test_images_far_larger_than_the_crop_are_said_with_the_tiles_that_load_faster(tmp_path, caplog):
    for size in (1024, 256):
        (tmp_path / f"{size}").mkdir()
        for i in range(2):
            Image.new("RGB", (size, size), (40 * i, 90, 20)).save(tmp_path / f"{size}" / f"{i}.png")
    files = sorted((tmp_path / "1024").glob("*.png"))
    for resolution, said in ((128, "64 times a 128 px crop"), (256, "16 times a 256 px crop"), (512, None)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="oftsr.training.data"):
            warn_image_sizes(files, resolution)
        if said is None:
            assert "tiles" not in caplog.text
        else:
            assert f"the training images average 1.0 MP, {said}, and each crop decodes its whole image" in caplog.text
            assert "python trainer/make_tiles.py --input_dir ... --output_dir ..." in caplog.text
    # small images decode fast whatever the crop: 0.07 MP is 64 times a 32 px crop, and not said
    caplog.clear()
    with caplog.at_level("WARNING", logger="oftsr.training.data"):
        warn_image_sizes(sorted((tmp_path / "256").glob("*.png")), 32)
    assert "tiles" not in caplog.text


def test_a_training_folder_that_vanishes_stops_the_run_after_a_wait_in_one_message(tmp_path, caplog, monkeypatch):
    """A network share gone mid-run: not ten thousand "skipping" lines and a bare error, but
    a few lines, a wait for it to come back, and one message saying what to do."""
    import oftsr.training.data as data

    folder = tmp_path / "share"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 90, 20)).save(folder / f"{i:02d}.png")
    ds = SRDataset(folder, resolution=32, scale=4)
    waits = []
    monkeypatch.setattr(data.time, "sleep", waits.append)
    folder.rename(tmp_path / "away")
    with caplog.at_level("WARNING", logger="oftsr.training.data"):
        with pytest.raises(RuntimeError, match=rf"^training images are gone \(such as .*00.png\): is {folder} still "
                                               rf"there \(a network share, a removed disk\)\? The run stops; its "
                                               rf"newest checkpoint is kept"):
            ds[0]
    assert caplog.text.count("skipping unreadable training image") == 3 and waits == list(data.SHARE_WAITS)
    assert int(ds._unreadable.sum()) == 10  # ten tried in a row, then the wait: not every file of the folder
    # an item whose files another worker already flagged waits as well, rather than failing at once
    waits.clear()
    with pytest.raises(RuntimeError, match="training images are gone"):
        ds[0]
    assert waits == list(data.SHARE_WAITS)
    # files that are there but no longer images: nothing to wait for
    (tmp_path / "away").rename(folder)
    for f in folder.iterdir():
        f.write_bytes(b"junk")
    waits.clear()
    with pytest.raises(RuntimeError, match=rf"^none of the 12 training images in {folder} can be read any more$"):
        SRDataset(folder, resolution=32, scale=4, files=ds.files)[0]
    assert waits == []
    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 90, 20)).save(folder / f"{i:02d}.png")
    # back within the wait: the files are read again, and nothing is lost
    fresh = SRDataset(folder, resolution=32, scale=4)
    folder.rename(tmp_path / "away")
    monkeypatch.setattr(data.time, "sleep", lambda s: (tmp_path / "away").rename(folder))
    assert torch.equal(fresh[0]["hr"], SRDataset(folder, resolution=32, scale=4)[0]["hr"])
    assert not fresh._unreadable.any()


def test_dataset_realesrgan_config_reaches_the_degradation(train_dir):
    camera = REALESRGAN_CONFIGS["camera"]
    full = SRDataset(train_dir, resolution=32, scale=4, degradation="realesrgan", seed=3)
    mild = SRDataset(train_dir, resolution=32, scale=4, degradation="realesrgan", seed=3, realesrgan_config=camera)
    item = mild[1]
    assert torch.equal(item["hr"], full[1]["hr"])  # the same crop; only the LR differs
    assert not torch.equal(item["lr"], full[1]["lr"])
    # The LR is the camera chain's, drawn from the item's generator, as the dataset draws it.
    g = torch.Generator().manual_seed((3 * 1_000_003 + 0) * 1_000_003 + 1)
    mild._crop(mild._load(1), g)
    expected = make_lr(item["hr"][None], 4, "realesrgan", generator=g, realesrgan_config=camera)[0]
    assert torch.equal(item["lr"], expected)


def test_trainer_realesrgan_config_flag(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import train_teacher

    argv = ["--train_data_dir", "d", "--output_dir", "o", "--degradation", "realesrgan"]
    assert train_teacher.parse_args(argv).realesrgan_config == "full"
    assert train_teacher.parse_args(argv + ["--realesrgan_config", "camera"]).realesrgan_config == "camera"
    with pytest.raises(SystemExit):
        train_teacher.parse_args(argv + ["--realesrgan_config", "harsh"])
    assert "invalid choice" in capsys.readouterr().err
    import distill
    import make_pairs

    both = ["--train_data_dir", "d", "--output_dir", "o", "--teacher", "t.safetensors", "--realesrgan_config", "camera"]
    assert distill.parse_args(both).realesrgan_config == "camera"
    assert make_pairs.parse_args(both).realesrgan_config == "camera"


def test_realesrgan_config_is_recorded_and_checked_by_the_student(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import distill

    teacher = oftsr.create_model("tiny", role="teacher", seed=0, degradation="realesrgan")
    args = distill.parse_args(["--teacher", "t", "--train_data_dir", "d", "--output_dir", "o", "--realesrgan_config", "camera"])
    assert checkpoints.training_metadata(args, teacher) == {"realesrgan_config": "camera"}
    assert checkpoints.training_metadata(args, oftsr.create_model("tiny", role="teacher")) == {}  # bicubic: nothing to record
    info = checkpoints.model_info(teacher, step=7, metadata=checkpoints.training_metadata(args, teacher))
    assert json.loads(json.dumps(info))["metadata"] == {"realesrgan_config": "camera"}  # as a checkpoint's oftsr.json
    path = checkpoints.export_model(info, [p.detach() for p in teacher.unet.parameters()], tmp_path / "teacher.safetensors")
    assert oftsr.read_metadata(path)["realesrgan_config"] == "camera"

    argv = ["--teacher", str(path), "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    _, student = distill.build_models(distill.parse_args(argv + ["--realesrgan_config", "camera"]))
    assert student.degradation == "realesrgan"
    default = distill.parse_args(argv)
    distill.build_models(default)
    assert default.realesrgan_config == "camera"  # left out: the teacher's
    with pytest.raises(ValueError, match="pass --realesrgan_config camera"):
        distill.build_models(distill.parse_args(argv + ["--realesrgan_config", "full"]))

    # Resuming a run's checkpoint with other ranges is refused before anything is loaded.
    ckpt = tmp_path / "run" / "checkpoint-7"
    ckpt.mkdir(parents=True)
    (ckpt / checkpoints.MODEL_INFO).write_text(json.dumps(info))

    class NoLoad:
        process_index, num_processes = 0, 1  # one process

        def load_state(self, _path):
            raise AssertionError("must not load")

    args.output_dir, args.resume_from_checkpoint = str(tmp_path / "run"), "latest"
    with pytest.raises(ValueError, match="trained with --realesrgan_config camera, but this run has full"):
        checkpoints.resume(NoLoad(), args, {**info, "metadata": {"realesrgan_config": "full"}})
    with pytest.raises(AssertionError, match="must not load"):  # the same ranges: it goes on to load
        checkpoints.resume(NoLoad(), args, info)


def test_dataset_repeats_draws_more_crops_per_image(train_dir):
    once = SRDataset(train_dir, resolution=32, scale=4, seed=3)
    thrice = SRDataset(train_dir, resolution=32, scale=4, seed=3, repeats=3)
    assert len(thrice) == 3 * len(once) == 18
    assert torch.equal(thrice[0]["hr"], once[0]["hr"])  # the same (seed, epoch, index) gives the same item
    assert not torch.equal(thrice[6]["hr"], thrice[0]["hr"])  # the same photograph, another crop
    assert thrice[17]["hr"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="repeats must be 1 or more"):
        SRDataset(train_dir, resolution=32, repeats=0)


def test_training_folders_leave_out_hidden_files(tmp_path):
    Image.new("RGB", (40, 40), (90, 20, 20)).save(tmp_path / "a.png")
    (tmp_path / ".thumbnails").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / ".thumbnails" / "t.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # not an image: would be reported
    assert scan_images(tmp_path) == [tmp_path / "a.png"]


def test_a_link_to_a_training_image_listed_already_is_left_out(tmp_path, caplog):
    """Each file is trained on (and cut into tiles) once: a link to an image in the folder
    would weigh it twice. A link to a file from elsewhere is an image like any other."""
    Image.new("RGB", (40, 40), (90, 20, 20)).save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "a_link.png").symlink_to("b.png")  # sorts first: the file keeps its own name
    (tmp_path / "sub" / "c.png").symlink_to("../b.png")
    os.link(tmp_path / "b.png", tmp_path / "sub" / "e_hard.png")  # a hard link is the same file too
    outside = tmp_path.parent / f"{tmp_path.name}_elsewhere.png"
    Image.new("RGB", (40, 40)).save(outside)
    (tmp_path / "sub" / "d.png").symlink_to(outside)
    try:
        with caplog.at_level("INFO", logger="oftsr.training.data"):
            assert scan_images(tmp_path) == [tmp_path / "b.png", tmp_path / "sub" / "d.png"]
    finally:
        outside.unlink()
    assert f"left out 3 link(s) to images listed already in {tmp_path} (each file is trained on once): a_link.png; " \
           f"{Path('sub', 'c.png')}; {Path('sub', 'e_hard.png')}" in caplog.text


def test_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        SRDataset(tmp_path / "missing")
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable images"):
        scan_images(tmp_path)
    with pytest.raises(ValueError, match="multiple of the scale"):
        SRDataset(tmp_path, resolution=30, scale=4)


def test_a_training_file_that_changes_after_the_scan_is_skipped_and_reported_once(tmp_path, caplog):
    for i, colour in enumerate(((200, 0, 0), (0, 200, 0), (0, 0, 200))):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
    ds = SRDataset(tmp_path, resolution=32, scale=4)
    (tmp_path / "0.png").unlink()  # moved away mid-run (or a network share gone): OSError
    (tmp_path / "1.png").write_bytes(b"junk")  # overwritten: ValueError
    with caplog.at_level("WARNING", logger="oftsr.training.data"):
        for _ in range(2):
            hr = ds[0]["hr"]  # the next readable file instead: the blue one
            assert hr[2].mean() > hr[0].mean() + 0.5 and hr[2].mean() > hr[1].mean() + 0.5
    assert caplog.text.count("skipping unreadable training image") == 2 and "No such file" in caplog.text
    with pytest.raises(ValueError, match="unknown degradation 'bogus'; choose one of bicubic, noisy_avgpool"):
        SRDataset(tmp_path, resolution=32, degradation="bogus")  # at once, not in a DataLoader worker
    with pytest.raises(ValueError, match="scale must be a positive integer, got 4.0"):
        SRDataset(tmp_path, resolution=32, scale=4.0)
    for degradation in ("bicubic", "noisy_avgpool", "realesrgan"):  # none drops a remainder
        with pytest.raises(ValueError, match="HR size 30x30 is not divisible by the scale 4; crop it first"):
            make_lr(torch.zeros(1, 3, 30, 30), 4, degradation)


def test_training_folders_read_what_the_cli_reads_and_name_the_rest(tmp_path, caplog, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.CR2", "b.cr2", "a.xmp"):
        (raw / name).write_bytes(b"not for us")
    with pytest.raises(ValueError, match=r"no readable images \(png, jpg, .*jfif.*\) found under .*raw; it holds "
                                         r"\.cr2 \(2\), \.xmp \(1\): convert camera raw files to TIFF or PNG first"):
        scan_images(raw)
    nikon = tmp_path / "nikon"  # every raw type the CLI names gets the advice, not the common ones alone
    nikon.mkdir()
    (nikon / "DSC_0001.NRW").write_bytes(b"not for us")
    with pytest.raises(ValueError, match=r"\.nrw \(1\): convert camera raw files to TIFF or PNG first"):
        scan_images(nikon)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (40, 40), (90, 20, 20)).save(mixed / "a.jfif", format="JPEG")
    Image.new("RGB", (40, 30), (20, 90, 20)).save(mixed / "b.gif")
    (mixed / "notes.txt").write_text("x")
    (mixed / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    monkeypatch.setitem(__import__("sys").modules, "pillow_heif", None)  # as where it is not installed
    with caplog.at_level("INFO"):
        assert scan_images(mixed) == [mixed / "a.jfif", mixed / "b.gif"]
    assert "skipping 1 HEIC/HEIF file(s) in" in caplog.text and "need the pillow-heif package" in caplog.text
    assert "left out 1 file(s) of other types in" in caplog.text and ".txt (1)" in caplog.text
    item = SRDataset(mixed, resolution=24, scale=4)[1]  # the GIF, read like any other image: green
    assert item["hr"].shape == (3, 24, 24) and item["hr"][1].mean() > item["hr"][0].mean() + 0.5


def test_the_scan_decodes_as_the_loader_does(tmp_path, caplog):
    """A float colour TIFF, which only tifffile opens, is trained on as the CLI reads it; an HDR
    float TIFF, which Pillow opens but the loader refuses, is left out at the scan, not served
    as another photograph at every epoch."""
    import tifffile

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "float.tif", rng.random((20, 30, 3), dtype=np.float32), photometric="rgb")
    tifffile.imwrite(tmp_path / "hdr.tif", rng.random((40, 40), dtype=np.float32) * 2)
    with caplog.at_level("INFO"):
        assert scan_images(tmp_path) == [tmp_path / "a.png", tmp_path / "float.tif"]
        warn_image_sizes(scan_images(tmp_path), 24)
    assert "skipping 1 unreadable file(s)" in caplog.text and "hdr.tif (UnsupportedImage: " in caplog.text
    assert "1 of 2 training images are smaller than the 24 px crop" in caplog.text and "float.tif, 20 px" in caplog.text


def _fixed_batch():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    hr = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(32, 32), mode="bicubic") * 2 - 1
    hr = hr.clamp(-1, 1)
    return hr, make_lr(hr, 4, "bicubic"), torch.randn(hr.shape, generator=g)


@pytest.fixture(scope="module")
def overfit_teacher():
    hr, lr, noise = _fixed_batch()
    t = torch.tensor([0.3, 0.8])
    model = oftsr.create_model("tiny", role="teacher", seed=0).train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = teacher_loss(model, hr, lr, 0.2, noise, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval().requires_grad_(False), losses


def test_tiny_teacher_overfits_a_fixed_batch(overfit_teacher):
    _, losses = overfit_teacher
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def _psnr(a, b):
    return (10 * torch.log10(4 / ((a.clamp(-1, 1) - b) ** 2).mean())).item()


def test_tiny_distillation_beats_the_untrained_student(overfit_teacher):
    teacher, _ = overfit_teacher
    hr, lr, noise = _fixed_batch()
    x0 = noise_augment(lr, 0.2, noise)
    student = oftsr.OFTSRModel(oftsr.UNet(teacher.config), sigma_p=0.2, role="student", scale=4)
    student.unet.load_state_dict(teacher.unet.state_dict())

    def one_step():
        with torch.no_grad():
            return _psnr(student_step(x0, student.eval().velocity(x0, lr, 1.0)), hr)

    before = one_step()
    student.train().requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    for _ in range(40):
        out = distill_loss(student, teacher, x0, lr, torch.rand(2, generator=g) * 0.98 + 0.01)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = one_step()
    with torch.no_grad():
        teacher_psnr = _psnr(sample_midpoint(lambda x, t: teacher.velocity(x, lr, t), x0, time_grid(8)), hr)
    assert after > before + 0.5, (before, after, teacher_psnr)
    assert after < teacher_psnr + 1.0  # approaching the teacher, not beyond it by luck


# ----------------------------------------------------------------------------- the scripts

COMMON = ["--resolution", "32", "--train_batch_size", "2", "--dataloader_num_workers", "0", "--report_to", "none",
          "--lr_warmup_steps", "2", "--learning_rate", "1e-3", "--validation_steps", "1000"]


def _run(args, launcher=(sys.executable,), timeout=600, status=0):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    res = subprocess.run([*launcher, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    # status None: any failure (a multi-process launcher turns a worker's status into 1)
    assert res.returncode == status if status is not None else res.returncode != 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


EXIT_RESUMABLE = 75  # the documented status of a run stopped early with its checkpoint saved


def _checkpoints(out_dir):
    return sorted((p.name for p in out_dir.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


def _losses(out_dir, key="loss"):
    return {r["step"]: r[key] for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())}


def test_teacher_kill_and_resume_matches_an_uninterrupted_run(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "2", "--seed", "5"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run([*base, "--output_dir", full, "--max_train_steps", "4", "--checkpoints_total_limit", "1"])
    assert sorted(p.name for p in full.iterdir() if p.is_dir()) == ["checkpoint-4"]  # rotation kept the last one

    _run([*base, "--output_dir", cut, "--max_train_steps", "3"])
    # "killed" while saving step 3: its checkpoint is left as a half-written temporary folder
    # (must be ignored), and metrics.jsonl has a row for step 3 plus a line cut off mid-write
    (cut / "checkpoint-3").rename(cut / ".tmp-checkpoint-3")
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    _run([*base, "--output_dir", cut, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])

    a, b = _losses(full), _losses(cut)
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one row per step: the killed run's step 3 was dropped on resume
    assert not list(cut.glob(".tmp-*"))  # and its half-written save removed by the next complete one
    assert b[3] == pytest.approx(a[3], rel=1e-6) and b[4] == pytest.approx(a[4], rel=1e-6)
    opt_a = torch.load(full / "checkpoint-4" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(cut / "checkpoint-4" / "optimizer.bin", weights_only=True)
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"] == 4
    assert torch.allclose(opt_a["state"][0]["exp_avg"], opt_b["state"][0]["exp_avg"], atol=1e-6)
    ta, tb = oftsr.load_model(full / "teacher.safetensors"), oftsr.load_model(cut / "teacher.safetensors")
    assert ta.step == tb.step == 4 and ta.role == "teacher"
    for pa, pb in zip(ta.parameters(), tb.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)

    # export from a checkpoint folder gives the same file as the end-of-run export
    _run(["trainer/export.py", cut / "checkpoint-4", tmp_path / "exported.safetensors"])
    exported = oftsr.load_model(tmp_path / "exported.safetensors")
    assert exported.step == 4 and exported.sigma_p == 0.2
    # how it was trained travels with the file (shown by `oftsr info`), the data folder by its name only
    for path in (tmp_path / "exported.safetensors", cut / "teacher.safetensors"):
        record = json.loads(oftsr.read_metadata(path)["training"])
        assert record["step"] == 4 and record["train_data"] == Path(train_dir).name and record["oftsr_version"]
        assert record["learning_rate"] > 0 and record["train_batch_size"] == 2 and str(tmp_path) not in json.dumps(record)
    assert all(torch.equal(pa, pb) for pa, pb in zip(exported.parameters(), tb.parameters()))
    _run(["trainer/export.py", cut, tmp_path / "raw.safetensors", "--raw"])  # newest checkpoint, raw weights
    res = _run(["trainer/export.py", cut, tmp_path / "raw.pth"], status=2)  # safetensors under a .pth name: no
    assert "error: " in res.stderr and "written as safetensors; name it raw.safetensors" in res.stderr and not (tmp_path / "raw.pth").exists()
    assert oftsr.load_model(tmp_path / "raw.safetensors").config == oftsr.PRESETS["tiny"]
    assert oftsr.read_metadata(tmp_path / "raw.safetensors")["weights"] == "raw (not EMA)"
    assert "weights" not in oftsr.read_metadata(tmp_path / "exported.safetensors")
    # an existing file (maybe another run's model) is kept unless --overwrite
    before = (tmp_path / "raw.safetensors").read_bytes()
    res = _run(["trainer/export.py", cut, tmp_path / "raw.safetensors"], status=2)
    assert "raw.safetensors exists" in res.stderr and "--overwrite" in res.stderr
    assert (tmp_path / "raw.safetensors").read_bytes() == before
    _run(["trainer/export.py", cut, tmp_path / "raw.safetensors", "--overwrite"])  # EMA weights now
    damaged = tmp_path / "damaged"
    shutil.copytree(cut / "checkpoint-4", damaged)
    (damaged / "custom_checkpoint_0.pkl").write_bytes(b"")
    res = _run(["trainer/export.py", damaged, tmp_path / "d.safetensors"], status=2)
    assert "custom_checkpoint_0.pkl is empty; export another checkpoint of the run, or this one's raw weights " \
           "with --raw" in res.stderr and "Traceback" not in res.stderr
    whole = (cut / "checkpoint-4" / "custom_checkpoint_0.pkl").read_bytes()
    (damaged / "custom_checkpoint_0.pkl").write_bytes(whole[:len(whole) // 2])  # a copy cut short
    res = _run(["trainer/export.py", damaged, tmp_path / "d.safetensors"], status=2)
    assert "custom_checkpoint_0.pkl is cut short; export another checkpoint of the run, or this one's raw weights " \
           "with --raw" in res.stderr and "Traceback" not in res.stderr
    record = (damaged / "oftsr.json").read_text(encoding="utf-8")
    (damaged / "oftsr.json").write_text(record[:len(record) // 2], encoding="utf-8")  # cut short: which file, and why
    res = _run(["trainer/export.py", damaged, tmp_path / "d.safetensors"], status=2)
    assert f"{damaged / 'oftsr.json'} is unreadable (" in res.stderr and "Traceback" not in res.stderr
    assert "export another checkpoint of the run" in res.stderr and not (tmp_path / "d.safetensors").exists()
    assert all(torch.equal(pa, pb) for pa, pb in
               zip(oftsr.load_model(tmp_path / "raw.safetensors").parameters(), tb.parameters()))


# A trainer script run with Accelerate's optimizer reporting the update of the given optimizer
# steps (1 = the first) as skipped, as fp16's loss scaler does when the gradients overflow
# ("all": every one). The update itself still runs: what is checked is how the loop counts it.
FP16_SKIPS = """
import runpy, sys
from accelerate.optimizer import AcceleratedOptimizer
spec, sys.argv = sys.argv[1], sys.argv[2:]
step = AcceleratedOptimizer.step
def counted_step(self, closure=None):
    if self.gradient_state.sync_gradients:
        self.calls = getattr(self, "calls", 0) + 1
    return step(self, closure)
AcceleratedOptimizer.step = counted_step
AcceleratedOptimizer.step_was_skipped = property(
    lambda self: spec == "all" or str(getattr(self, "calls", 0)) in spec.split(","))
sys.path.insert(0, "trainer")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_an_fp16_update_the_scaler_skips_is_no_step_and_a_resume_goes_on_after_its_batch(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "2", "--seed", "5"]
    ref, full, cut = tmp_path / "ref", tmp_path / "full", tmp_path / "cut"
    _run([*base, "--output_dir", ref, "--max_train_steps", "4"])
    # the 2nd and 3rd updates skipped: four steps take six batches, and the schedule counts four
    res = _run([*base, "--output_dir", full, "--max_train_steps", "4"], launcher=(sys.executable, "-c", FP16_SKIPS, "2,3"))
    assert "fp16: the gradients overflowed the loss scale at step 2; that update is skipped" in res.stderr
    assert list(_losses(full)) == [1, 2, 3, 4] and _losses(full, "lr") == _losses(ref, "lr")
    assert _losses(full)[1] == pytest.approx(_losses(ref)[1], rel=1e-6)  # the same first batch
    state = torch.load(full / "checkpoint-4" / "custom_checkpoint_1.pkl", weights_only=True)
    assert state == {"step": 4, "skipped": 2}
    assert oftsr.load_model(full / "teacher.safetensors").step == 4
    # stopped at step 2 (after four batches) and resumed with no skips: steps 3 and 4 see the
    # 5th and 6th batches, as in the run that went through
    _run([*base, "--output_dir", cut, "--max_train_steps", "2"], launcher=(sys.executable, "-c", FP16_SKIPS, "2,3"))
    _run([*base, "--output_dir", cut, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])
    a, b = _losses(full), _losses(cut)
    assert b[3] == pytest.approx(a[3], rel=1e-6) and b[4] == pytest.approx(a[4], rel=1e-6)
    assert _losses(cut, "lr") == _losses(ref, "lr")
    # gradients that overflow at every update: the run stops as diverged instead of looping. A
    # resumed run says its first skip too, with the count its checkpoint brought
    before = _checkpoints(cut)
    res = _run([*base, "--output_dir", cut, "--max_train_steps", "100", "--resume_from_checkpoint", "latest"],
               launcher=(sys.executable, "-c", FP16_SKIPS, "all"), status=1)
    assert "fp16: the gradients overflowed the loss scale at step 5; that update is skipped and the scale lowered " \
           "(expected in the first steps; the run's count of skipped updates, 3 so far, is in its checkpoints)" \
           in " ".join(res.stderr.split())
    assert "error: training diverged: fp16 gradients overflowed at 40 optimizer steps in a row after step 4 " \
           "(--mixed_precision bf16 does not overflow)" in res.stderr and "Traceback" not in res.stderr
    assert _checkpoints(cut) == before


def test_set_up_errors_are_one_line_and_bundled_models_go_by_name(train_dir, tmp_path):
    for args, message in [
            (["trainer/train_teacher.py", "--train_data_dir", tmp_path / "absent", "--output_dir", tmp_path / "a"],
             f"error: --train_data_dir {tmp_path / 'absent'} does not exist"),
            (["trainer/train_teacher.py", "--train_data_dir", train_dir, "--validation_data_dir", tmp_path / "nope",
              "--output_dir", tmp_path / "a"], f"error: --validation_data_dir {tmp_path / 'nope'} does not exist"),
            (["trainer/distill.py", "--teacher", "x4-techer", "--train_data_dir", train_dir, "--output_dir",
              tmp_path / "b"], "error: --teacher x4-techer: no such file, and not a bundled model's name (x4"),
            (["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", tmp_path / "c" / "run",
              "--preset", "tiny", *COMMON, "--train_batch_size", "64"],
             "error: the training set is smaller than one batch: an epoch has 6 crops and a step takes 64; raise "
             "--repeats"),
            (["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", train_dir / "img0.png" / "run"],
             f"error: --output_dir {train_dir / 'img0.png' / 'run'}: {train_dir / 'img0.png'} is a file, not a folder")]:
        res = _run(args, status=2)
        assert res.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in res.stderr, res.stderr
    # the folders a failed set-up made (c/run, after its lock was taken) are removed again; in a
    # folder that was there, only the lock it made
    assert not (tmp_path / "c").exists()
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", tmp_path / "e", "--preset",
          "tiny", *COMMON, "--train_batch_size", "64"], status=2)
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["notes.txt"]
    # refused before the trackers start (tensorboard would leave its logs folder) and before a resume loads anything
    for refused in (["--train_batch_size", "64"], ["--validation_data_dir", train_dir, "--validation_resolution", "1024"]):
        res = _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", tmp_path / "f", "--preset",
                    "tiny", *COMMON, "--report_to", "tensorboard", *refused], status=2)
        assert not (tmp_path / "f").exists(), res.stderr
    assert "validation images are smaller than the 1024 px crop" in res.stderr
    # a bundled teacher by name: one distillation step from the shipped x4 teacher
    _run(["trainer/distill.py", "--teacher", "x4", "--train_data_dir", train_dir, "--output_dir", tmp_path / "d",
          *COMMON, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    student = oftsr.load_model(tmp_path / "d" / "student.safetensors")
    assert student.role == "student" and student.config == oftsr.load_model(oftsr.resolve_model("x4", "teacher")).config


def test_time_limit_stops_with_a_checkpoint_and_the_run_goes_on(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "100", "--seed", "5", "--output_dir", tmp_path, "--max_train_steps", "4"]
    res = _run([*base, "--max_train_minutes", "0"], status=EXIT_RESUMABLE)
    assert "stopped at step 1 of 4 (--max_train_minutes 0)" in res.stderr
    assert _checkpoints(tmp_path) == ["checkpoint-1"]  # saved though 1 % 100 != 0
    assert not (tmp_path / "teacher.safetensors").exists()  # the export is the finished model only
    # a longer warm-up on resume restarts it (the rate drops), which is said with its numbers
    res = _run([*base, "--resume_from_checkpoint", "latest", "--lr_warmup_steps", "8"])
    assert (f"resuming {tmp_path / 'checkpoint-1'} at step 1 with --lr_warmup_steps 8 where the run had 2: the rate "
            f"goes from 1 to 0.25 of --learning_rate, and is full from step 8") in res.stderr
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4]
    assert _checkpoints(tmp_path) == ["checkpoint-1", "checkpoint-4"]
    assert oftsr.load_model(tmp_path / "teacher.safetensors").step == 4


def test_sigterm_saves_the_step_it_stopped_at(train_dir, tmp_path):
    # What a scheduler does at a job's time limit or on pre-emption: SIGTERM, then SIGKILL
    # after a grace period. The run ends at the next step boundary with a checkpoint of it.
    # The signal goes to the whole process group, loader workers included, as a scheduler's does.
    args = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "100000", "--output_dir", tmp_path, "--max_train_steps", "100000",
            "--dataloader_num_workers", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        metrics = tmp_path / "metrics.jsonl"
        # Until a step has been logged: the handler is installed by then. On a loaded machine
        # start-up alone can take minutes, so wait by the clock, not a count of polls.
        deadline = time.monotonic() + 600
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader worker
                except ProcessLookupError:  # all gone already
                    pass
                pytest.fail(f"no step logged (exit status {proc.wait()}): {proc.communicate()[1][-3000:]}")
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_RESUMABLE, err[-3000:]
    last = max(_losses(tmp_path))
    assert last >= 2 and f"stopped at step {last} of 100000 (SIGTERM)" in err
    assert _checkpoints(tmp_path) == [f"checkpoint-{last}"]
    assert not (tmp_path / "teacher.safetensors").exists()


# train_teacher.py with its loss replaced at the step given: "raise" fails, "nan" diverges
FAILING_TEACHER = """
import math, sys
sys.path.insert(0, "trainer")
import train_teacher
from common import run_script

at, how = int(sys.argv[1]), sys.argv[2]
real_loss, calls = train_teacher.teacher_loss, [0]

def loss(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at and how == "raise":
        raise RuntimeError("a failure injected at step %d" % at)
    value = real_loss(*args, **kwargs)
    return value * math.nan if calls[0] >= at else value

train_teacher.teacher_loss = loss
sys.argv = ["train_teacher.py", *sys.argv[3:]]
run_script(train_teacher.main)
"""


@pytest.mark.parametrize("ends", ["returns", "diverges", "fails_its_setup"])
def test_run_script_leaves_the_process_group_on_every_exit(tmp_path, ends):
    # Left to the interpreter's exit, a gloo group that has run a collective aborted a
    # two-process make_pairs.py that had written every shard ("terminate called", SIGABRT).
    sys.path.insert(0, str(ROOT / "trainer"))
    from common import TrainingDiverged, run_script

    def main():
        torch.distributed.barrier()
        if ends == "diverges":
            raise TrainingDiverged("the loss is nan")
        if ends == "fails_its_setup":
            raise ValueError("--resolution 30 is not a multiple of 4")
        return 0

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as exit_:
            run_script(main)
        assert exit_.value.code == {"returns": 0, "diverges": 1, "fails_its_setup": 2}[ends]
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_a_failing_run_with_loader_workers_exits(train_dir, tmp_path):
    # The workers ignore SIGTERM (a scheduler's stop is the main process's to handle); left
    # to the interpreter's exit, which stops them with SIGTERM and waits, they hung the run.
    args = ["--train_data_dir", train_dir, "--preset", "tiny", *COMMON, "--output_dir", tmp_path,
            "--max_train_steps", "100", "--checkpointing_steps", "1000", "--dataloader_num_workers", "1"]
    res = _run(["-c", FAILING_TEACHER, 3, "raise", *args], timeout=300, status=1)
    assert "RuntimeError: a failure injected at step 3" in res.stderr


LOADER_FAILURE = """
import multiprocessing, sys, time
sys.path.insert(0, "trainer")
from common import ignore_stop_signals, run_script

def work():
    ignore_stop_signals()
    time.sleep(300)

def main():
    multiprocessing.get_context("fork").Process(target=work, daemon=True).start()
    raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly")

run_script(main)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the stand-in worker is forked")
def test_a_loader_error_with_workers_left_running_exits(tmp_path):
    # One worker killed (the system's OOM killer): the loader raises, and the other workers,
    # which ignore SIGTERM, made the interpreter's exit wait for them forever.
    res = _run(["-c", LOADER_FAILURE], timeout=120, status=1)  # not the worker's 300 s: it was killed
    assert "RuntimeError: DataLoader worker (pid(s) 123) exited unexpectedly" in res.stderr


def test_a_cpu_launch_that_starts_one_of_several_processes_says_so(monkeypatch, caplog):
    """`accelerate launch --cpu --num_processes 2` starts one process: said, with the launch
    that starts two. The launcher's options are read before the script, not the script's."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import launcher

    argv = ["/venv/bin/python", "-m", "accelerate.commands.launch", "--num-processes=2", "--cpu", "train.py", "--cpu",
            "--num_processes", "5"]
    assert (launcher.launcher_option(argv, "cpu"), launcher.launcher_option(argv, "num_processes")) == ("", "2")
    assert launcher.launcher_option(["accelerate", "launch", "--num_processes", "3", "t.py"], "num_processes") == "3"
    assert launcher.launcher_option(["accelerate", "launch", "t.py", "--cpu"], "cpu") is None
    monkeypatch.setattr(common, "LAUNCHER", 100)
    monkeypatch.setattr(common, "command_line", lambda pid: argv)
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
        common.warn_single_cpu_launch(1)
        common.warn_single_cpu_launch(2)  # two started: nothing to say
    assert caplog.text.count("accelerate launch --cpu starts one process whatever --num_processes 2 says: for 2 CPU "
                             "processes, launch with --multi_gpu --num_processes 2 (and without --cpu)") == 1
    caplog.clear()
    for line in (argv[:3] + ["--cpu", "train.py"], argv[:4] + ["train.py"]):  # one asked for, or not --cpu
        monkeypatch.setattr(common, "command_line", lambda pid, line=line: line)
        common.warn_single_cpu_launch(1)
    assert caplog.text == ""


def test_resume_from_a_checkpoint_that_is_not_there_says_where_it_looked(tmp_path):
    sys.path.insert(0, str(ROOT / "trainer"))
    from checkpoints import checkpoint_to_resume

    def refused(name: str, output_dir) -> str:
        with pytest.raises(FileNotFoundError) as e:
            checkpoint_to_resume(argparse.Namespace(resume_from_checkpoint=name, output_dir=str(output_dir)))
        return str(e.value)

    run = tmp_path / "run"
    assert refused("checkpoint-3", run) == (f"--resume_from_checkpoint checkpoint-3: no such folder, here or in "
                                            f"--output_dir {run}; {run} does not exist: check --output_dir")
    run.mkdir()
    assert refused("checkpoint-3", run).endswith(f"; {run} holds no checkpoint")
    for step in (1, 2):
        (run / f"checkpoint-{step}").mkdir()
    assert refused(str(tmp_path / "checkpoint-3"), run) == (
        f"--resume_from_checkpoint {tmp_path / 'checkpoint-3'}: no such folder; {run} holds checkpoint-1, "
        f"checkpoint-2 (or pass latest)")
    assert checkpoint_to_resume(argparse.Namespace(resume_from_checkpoint="checkpoint-2", output_dir=str(run))) == \
        run / "checkpoint-2"


def test_workers_whose_launcher_was_killed_stop_with_a_checkpoint(monkeypatch, caplog, tmp_path):
    """torchrun's workers outlive a launcher killed with SIGKILL (they are re-parented) and
    went on training unseen, into the folder a resume then shared with them: they stop as at
    a SIGTERM. Without torchrun (a plain `python`, whose shell may go) this is not looked at.
    And the output folder's lock refuses a second holder, naming the first."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import launcher
    import loop

    if sys.platform == "linux":  # /proc read for real: this process's own command line
        assert "pytest" in " ".join(launcher.command_line(os.getpid()))
    single = argparse.Namespace(num_processes=1)
    parents = iter([100, 100, 1])
    monkeypatch.setattr(loop.os, "getppid", lambda: next(parents))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setattr(launcher, "command_line", lambda pid: ["/usr/bin/python3", "/venv/bin/torchrun", "train.py"])
    stop = loop.StopRequest(None, launcher.launcher_process())
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
        assert stop.due(single) is False  # the launcher is there
        assert stop.due(single) is True and stop.reason == "the launcher has gone"
    assert "the launcher (process 100) has gone: stopping after this step with a checkpoint" in caplog.text
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(loop.os, "getppid", lambda: 1)
    assert loop.StopRequest(None, launcher.launcher_process()).launcher is None and loop.StopRequest(None, launcher.launcher_process()).due(single) is False  # plain python
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")  # a single-process `accelerate launch`'s child
    parents = iter([100, 1])
    monkeypatch.setattr(loop.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(launcher, "command_line", lambda pid: ["/venv/bin/python", "/venv/bin/accelerate", "launch"])
    stop = loop.StopRequest(None, launcher.launcher_process())
    assert stop.launcher == 100 and stop.due(single) is True and stop.reason == "the launcher has gone"
    # ACCELERATE_USE_CPU exported by the user, the run started by a shell: the shell may go
    monkeypatch.setattr(loop.os, "getppid", lambda: 100)
    for shell in (["-bash"], ["python", "/home/me/accelerate_runs/run.py"], ["python", "run.py", "torchrun"]):
        monkeypatch.setattr(launcher, "command_line", lambda pid, shell=shell: shell)  # a folder's name, an argument
        assert loop.StopRequest(None, launcher.launcher_process()).launcher is None
    for argv in (["python", "-u", "-m", "torch.distributed.run", "--nproc", "2"], ["/venv/bin/torchrun", "x.py"]):
        monkeypatch.setattr(launcher, "command_line", lambda pid, argv=argv: argv)
        assert loop.StopRequest(None, launcher.launcher_process()).launcher == 100
    monkeypatch.setattr(launcher, "command_line", lambda pid: None)  # no /proc: the environment decides
    assert loop.StopRequest(None, launcher.launcher_process()).launcher == 100

    held = common.lock_output_dir(str(tmp_path))
    try:
        with pytest.raises(common.RunningElsewhere, match=rf"^another run is writing to {tmp_path} \(process "
                                                          rf"{os.getpid()} on .+\): wait for it to end or stop it"):
            common.lock_output_dir(str(tmp_path))
    finally:
        held.close()
    common.lock_output_dir(str(tmp_path)).close()  # released with its file: the next run takes it
    if os.name != "nt":
        # A run that opened the lock file before the run holding it removed it (its set-up
        # failed) locks the file others can open, not the removed one
        held = common.lock_output_dir(str(tmp_path))
        opened_before = open(tmp_path / common.LOCK_NAME, "a+", encoding="utf-8")
        os.remove(tmp_path / common.LOCK_NAME)
        held.close()
        opens = iter([opened_before])
        monkeypatch.setattr(common, "open", lambda *a, **k: next(opens, None) or open(*a, **k), raising=False)
        lock = common.lock_output_dir(str(tmp_path))
        assert opened_before.closed and common._names_file(tmp_path / common.LOCK_NAME, lock)
        lock.close()


def test_a_diverging_run_stops_before_saving_nan(train_dir, tmp_path):
    args = ["--train_data_dir", train_dir, "--preset", "tiny", *COMMON, "--output_dir", tmp_path,
            "--max_train_steps", "100", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]
    res = _run(["-c", FAILING_TEACHER, 5, "nan", *args], timeout=300, status=1)
    assert ("error: training diverged: the loss is nan at step 5. Lower --learning_rate (it is 0.001)" in res.stderr
            and "checkpoint-4, the newest checkpoint, was saved before it: resume from it" in res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert _checkpoints(tmp_path) == ["checkpoint-4"] and not (tmp_path / "teacher.safetensors").exists()
    assert max(_losses(tmp_path)) == 4  # the diverged step is not logged either


def test_weights_that_overflowed_are_not_checkpointed(tmp_path, monkeypatch):
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    from common import TrainingDiverged
    from loop import check_finite_weights

    from oftsr.training.ema import EMA

    model = oftsr.create_model("tiny", role="teacher", seed=0)
    ema = EMA(model, decay=0.9)
    args = argparse.Namespace(output_dir=str(tmp_path), learning_rate=1e-3)
    check_finite_weights(args, model, ema, 7)  # finite: nothing to say
    with torch.no_grad():
        next(model.parameters())[0] = math.inf
    with pytest.raises(TrainingDiverged, match="the weights hold NaN or infinity after step 7.*no checkpoint was saved"):
        check_finite_weights(args, model, ema, 7)


def test_accelerate_launch_two_processes(train_dir, tmp_path):
    # On a machine without a GPU, `--multi_gpu` gives two gloo CPU processes (MULTI_CPU); the
    # `--cpu` flag of current accelerate launches a single process whatever --num_processes says.
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", teacher_dir, "--preset", "tiny",
          *COMMON, "--max_train_steps", "2", "--checkpointing_steps", "2", "--lr_warmup_steps", "4"], launcher)
    _run(["trainer/distill.py", "--teacher", teacher_dir / "teacher.safetensors", "--train_data_dir", train_dir,
          "--output_dir", student_dir, *COMMON, "--max_train_steps", "2", "--checkpointing_steps", "2"], launcher)
    for folder, role in [(teacher_dir, "teacher"), (student_dir, "student")]:
        ckpt = folder / "checkpoint-2"
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "optimizer.bin").is_file()
        assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
        model = oftsr.load_model(folder / f"{role}.safetensors")
        assert model.role == role and model.step == 2 and model.config == oftsr.PRESETS["tiny"]
    distill = _losses(student_dir, "loss")
    assert sorted(distill) == [1, 2] and all(np.isfinite(v) for v in distill.values())
    # Two processes warm up over the same optimizer steps as one (--lr_warmup_steps 4): a
    # quarter of the rate at step 1, half at step 2; the prepared scheduler steps once per process.
    assert _losses(teacher_dir, "lr") == {1: pytest.approx(2.5e-4), 2: pytest.approx(5e-4)}

    # A time limit stops both processes at the same step, with one checkpoint of it; each
    # exits with EXIT_RESUMABLE, which the launcher reports as a failed run
    res = _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", teacher_dir, "--preset",
                "tiny", *COMMON, "--max_train_steps", "6", "--checkpointing_steps", "2", "--lr_warmup_steps", "4",
                "--resume_from_checkpoint", "latest", "--max_train_minutes", "0"], launcher, status=None)
    assert res.stderr.count("stopped at step 3 of 6 (--max_train_minutes 0)") == 1  # said once, not per process
    assert res.stderr.count("***** training the teacher *****") == 1
    ckpt = teacher_dir / "checkpoint-3"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert json.loads((ckpt / "oftsr.json").read_text())["step"] == 3
    assert oftsr.load_model(teacher_dir / "teacher.safetensors").step == 2  # the finished run's export, untouched

    # Damage to another process's random states is refused like the main one's: Accelerate
    # says it could not read them on the main process only, and rank 1 went on with other noise
    with open(ckpt / "random_states_1.pkl", "r+b") as f:
        f.truncate(100)
    res = _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", teacher_dir, "--preset",
                "tiny", *COMMON, "--max_train_steps", "6", "--checkpointing_steps", "2", "--lr_warmup_steps", "4",
                "--resume_from_checkpoint", "latest"], launcher, status=None)
    assert f"could not load the checkpoint {ckpt} (its random states (random_states_*.pkl) could not be read)" \
        in res.stderr
    assert _checkpoints(teacher_dir) == ["checkpoint-2", "checkpoint-3"]  # nothing written

    # A second run into a folder that a run is writing to (here this test holds its lock) is refused by
    # every process, before any step, and the folder is left as it was
    sys.path.insert(0, str(ROOT / "trainer"))
    from common import lock_output_dir

    held = lock_output_dir(teacher_dir)
    try:
        res = _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", teacher_dir,
                    "--preset", "tiny", *COMMON, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"],
                   launcher, status=None)
    finally:
        held.close()
    assert f"error: another run is writing to {teacher_dir} (process {os.getpid()} on " in res.stderr
    assert "***** training the teacher *****" not in res.stderr
    assert _checkpoints(teacher_dir) == ["checkpoint-2", "checkpoint-3"]


PARTITION_PROBE = """
import argparse, json, os, sys
import torch
sys.path.insert(0, "trainer")
from common import make_accelerator, training_loader

args = argparse.Namespace(report_to="none", gradient_accumulation_steps=1, mixed_precision="no", output_dir=sys.argv[1],
                          logging_dir="logs", allow_tf32=False, seed=3, tracker_project_name=None,
                          train_batch_size=2, dataloader_num_workers=0)
accelerator = make_accelerator(args, "probe")
loader = accelerator.prepare(training_loader(args, torch.utils.data.TensorDataset(torch.arange(12))))
seen = []
for epoch in range(2):
    loader.set_epoch(epoch)
    seen.append([int(i) for (batch,) in loader for i in batch])
# a file per process: two processes printing to one pipe can interleave their lines
os.makedirs(sys.argv[1], exist_ok=True)
with open(f"{sys.argv[1]}/seen{accelerator.process_index}.json", "w") as f:
    json.dump(seen, f)
accelerator.end_training()  # leaves the process group, as a training script does
"""


def test_two_processes_split_each_epoch_between_them(tmp_path):
    """Each epoch's permutation is shared out: no crop drawn twice, none left out."""
    probe = tmp_path / "probe.py"
    probe.write_text(PARTITION_PROBE)
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    _run([probe, tmp_path / "out"], launcher)
    a, b = (json.loads((tmp_path / "out" / f"seen{rank}.json").read_text()) for rank in (0, 1))
    for epoch in range(2):
        assert len(a[epoch]) == len(b[epoch]) == 6 and sorted(a[epoch] + b[epoch]) == list(range(12))
    assert a[0] != a[1]  # a new permutation each epoch


def test_a_two_process_resume_matches_an_uninterrupted_run(train_dir, tmp_path):
    """Each process's data order and noise come back from its own random states: a run
    resumed from step 2 ends with the weights, optimizer state and losses of one that ran
    through (rank 1 drawing other noise would change the all-reduced gradients)."""
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    full, cut = tmp_path / "full", tmp_path / "cut"
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "2", "--seed", "5", "--max_train_steps", "4"]
    _run([*base, "--output_dir", full], launcher)
    # the run as a kill after checkpoint-2 leaves it: later steps' logs and files gone
    shutil.copytree(full, cut, ignore=shutil.ignore_patterns("checkpoint-4", "teacher.safetensors", "*.lock"))
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    res = _run([*base, "--output_dir", cut, "--resume_from_checkpoint", "latest"], launcher)
    assert res.stderr.count(f"resumed from {cut / 'checkpoint-2'}") == 1 and "resuming at step 2" in res.stderr

    a, b = _losses(full), _losses(cut)
    assert sorted(b) == [1, 2, 3, 4] and b[3] == pytest.approx(a[3], rel=1e-6) and b[4] == pytest.approx(a[4], rel=1e-6)
    opt_a, opt_b = (torch.load(d / "checkpoint-4" / "optimizer.bin", weights_only=True) for d in (full, cut))
    assert opt_a["state"][0]["step"] == opt_b["state"][0]["step"] == 4
    assert torch.allclose(opt_a["state"][0]["exp_avg_sq"], opt_b["state"][0]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    ta, tb = (oftsr.load_model(d / "teacher.safetensors") for d in (full, cut))
    assert ta.step == tb.step == 4
    assert max((pa - pb).abs().max().item() for pa, pb in zip(ta.parameters(), tb.parameters())) < 1e-6


def test_bf16_and_gradient_accumulation(train_dir, tmp_path, monkeypatch):
    out = tmp_path / "acc"
    # bf16 as `accelerate launch --mixed_precision bf16` asks for it, without the script's flag:
    # the file records the precision that ran, not the flag's default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", out, "--preset", "tiny", *COMMON,
          "--max_train_steps", "2", "--checkpointing_steps", "2",
          "--gradient_accumulation_steps", "2", "--allow_tf32"])
    assert json.loads(oftsr.checkpoint.read_metadata(out / "teacher.safetensors")["training"])["mixed_precision"] == "bf16"
    assert sorted(_losses(out)) == [1, 2]  # optimizer steps, each over two batches
    opt = torch.load(out / "checkpoint-2" / "optimizer.bin", weights_only=True)
    assert opt["state"][0]["step"] == 2
    model = oftsr.load_model(out / "teacher.safetensors")
    assert model.dtype == torch.float32 and model.step == 2  # mixed precision keeps float32 master weights


def test_gradient_accumulation_resume_with_an_odd_number_of_batches_per_epoch(train_dir, tmp_path):
    # Six training images at batch 2: three batches an epoch, so with accumulation 2 each
    # epoch ends on an optimizer step over one batch. The resumed run must find its place.
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "3", "--gradient_accumulation_steps", "2", "--seed", "2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run([*base, "--output_dir", full, "--max_train_steps", "6"])
    _run([*base, "--output_dir", cut, "--max_train_steps", "3"])
    _run([*base, "--output_dir", cut, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"])
    a, b = _losses(full), _losses(cut)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(b[k] == pytest.approx(a[k], rel=1e-6) for k in a)
    ta, tb = oftsr.load_model(full / "teacher.safetensors"), oftsr.load_model(cut / "teacher.safetensors")
    assert max((pa - pb).abs().max().item() for pa, pb in zip(ta.parameters(), tb.parameters())) < 1e-6


def test_validation_does_not_change_the_training_run(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--max_train_steps", "4", "--checkpointing_steps", "4"]
    _run([*base, "--output_dir", tmp_path / "plain"])
    _run([*base, "--output_dir", tmp_path / "val", "--validation_data_dir", train_dir, "--validation_steps", "2",
          "--validation_nfe_steps", "1", "--num_validation_images", "1"])
    validated = json.loads((tmp_path / "val" / "metrics.jsonl").read_text().splitlines()[1])
    assert "val/teacher_nfe1/psnr" in validated  # validation ran at step 2
    assert _losses(tmp_path / "val") == _losses(tmp_path / "plain")  # and steps 3 and 4 drew the same t and noise


def _save_teacher(path: Path, **kwargs) -> Path:
    oftsr.save_model(oftsr.create_model("tiny", role="teacher", seed=0, **kwargs), path)
    return path


def test_distill_and_make_pairs_take_the_teachers_recorded_settings(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import distill
    import make_pairs

    x2 = _save_teacher(tmp_path / "x2.safetensors", scale=2, sigma_p=0.1, degradation="noisy_avgpool")
    argv = ["--teacher", str(x2), "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    args = distill.parse_args(argv)
    teacher, student = distill.build_models(args)
    assert (student.scale, student.sigma_p, student.degradation) == (2, 0.1, "noisy_avgpool")
    assert (args.scale, args.sigma_p, args.degradation) == (2, 0.1, "noisy_avgpool")  # the data follows the teacher
    for flag, value in [("--scale", "4"), ("--sigma_p", "0.2"), ("--degradation", "bicubic")]:
        with pytest.raises(ValueError, match=f"trained with {flag} .*, but this run has {flag} {value}"):
            distill.build_models(distill.parse_args(argv + [flag, value]))
        with pytest.raises(ValueError, match=f"trained with {flag} "):
            common.load_teacher(make_pairs.parse_args(argv + [flag, value]))
    assert distill.build_models(distill.parse_args(argv + ["--scale", "2"]))[1].scale == 2  # agreeing flags are fine

    # A file that records nothing (a state dict under an unhelpful name) takes the flags, and says which are needed.
    torch.save(oftsr.create_model("tiny", role="teacher").unet.state_dict(), tmp_path / "plain.pth")
    bare = ["--teacher", str(tmp_path / "plain.pth"), "--train_data_dir", "d", "--output_dir", "o"]
    with pytest.raises(ValueError, match="plain.pth does not say its sigma_p, scale: pass --sigma_p ... --scale ..."):
        distill.build_models(distill.parse_args(bare))
    assert distill.build_models(distill.parse_args(bare + ["--sigma_p", "0.1", "--scale", "2"]))[1].scale == 2

    real = _save_teacher(tmp_path / "real.safetensors", degradation="realesrgan")
    oftsr.save_model(oftsr.load_model(real), real, realesrgan_config="camera")
    args = make_pairs.parse_args(["--teacher", str(real), "--train_data_dir", "d", "--output_dir", "o"])
    assert common.load_teacher(args).degradation == "realesrgan" and args.realesrgan_config == "camera"
    with pytest.raises(ValueError, match="pass --realesrgan_config camera"):
        common.load_teacher(make_pairs.parse_args(["--teacher", str(real), "--train_data_dir", "d", "--output_dir",
                                                   "o", "--realesrgan_config", "full"]))


def test_fluxsr_pairs_must_come_from_the_teachers_degradation_ranges(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill
    from oftsr.training.pairs import write_manifest

    real = _save_teacher(tmp_path / "real.safetensors", degradation="realesrgan")
    oftsr.save_model(oftsr.load_model(real), real, realesrgan_config="camera")
    made = {"teacher": "real.safetensors", "sigma_p": 0.2, "scale": 4, "degradation": "realesrgan", "resolution": 32,
            "solver": "midpoint", "steps": 2, "num_pairs": 0, "shard_size": 2}
    write_manifest(tmp_path / "full", made)  # a folder made with the full chain records no realesrgan_config
    write_manifest(tmp_path / "camera", {**made, "realesrgan_config": "camera"})
    for folder in ("full", "camera"):
        args = distill.parse_args(["--teacher", str(real), "--objective", "fluxsr", "--output_dir", "o",
                                   "--train_data_dir", str(tmp_path / folder)])
        teacher, _ = distill.build_models(args)
        if folder == "full":
            with pytest.raises(ValueError, match="made with realesrgan_config = full, the teacher has camera"):
                distill.make_pair_dataloader(args, teacher)
        else:  # the check passes; an empty folder then stops at the loader
            with pytest.raises(ValueError, match="num_samples"):
                distill.make_pair_dataloader(args, teacher)
            assert args.resolution == 32  # the pairs' crop size: recorded and validated at it


def test_fluxsr_pairs_must_come_from_this_teacher_and_set_the_resolution(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill
    from oftsr.checkpoint import network_digest
    from oftsr.training.pairs import write_manifest

    a, b = _save_teacher(tmp_path / "a.safetensors"), tmp_path / "b.safetensors"
    oftsr.save_model(oftsr.create_model("tiny", role="teacher", seed=1), b)  # the same settings, other weights
    made = {"teacher": "a.safetensors", "teacher_step": 0, "teacher_digest": network_digest(oftsr.load_model(a)),
            "sigma_p": 0.2, "scale": 4, "degradation": "bicubic", "resolution": 32, "solver": "midpoint", "steps": 2,
            "num_pairs": 0, "shard_size": 2}
    write_manifest(tmp_path / "pairs", made)
    for teacher, error in [(b, "were made by another teacher \\(a.safetensors, step 0, digest"), (a, "num_samples")]:
        args = distill.parse_args(["--teacher", str(teacher), "--objective", "fluxsr", "--output_dir", "o",
                                   "--train_data_dir", str(tmp_path / "pairs")])
        with pytest.raises(ValueError, match=error):
            distill.make_pair_dataloader(args, distill.build_models(args)[0])
    assert args.resolution == 32  # the pairs' crop size: trained, validated and recorded at it
    with pytest.raises(SystemExit):
        distill.parse_args(["--teacher", str(a), "--objective", "fluxsr", "--output_dir", "o", "--train_data_dir",
                            str(tmp_path / "pairs"), "--resolution", "64"])
    assert "--resolution 64: the pairs in" in capsys.readouterr().err
    # left out: settled once the teacher's scale is known (main's settle_resolution: 256 at x4, 255 at x3)
    assert distill.parse_args(["--teacher", "x4", "--train_data_dir", "d", "--output_dir", "o"]).resolution is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pairs.json").write_text('{"format": "oftsr-pairs", "resol')  # cut short
    with pytest.raises(ValueError, match=r"broken/pairs.json is unreadable .*make the pairs again"):
        distill.parse_args(["--teacher", "x4", "--objective", "fluxsr", "--train_data_dir", str(tmp_path / "broken"),
                            "--output_dir", "o"])
    # a folder made before the digest and sigma_y were recorded still resumes with make_pairs
    old = {k: v for k, v in made.items() if k != "teacher_digest"}
    write_manifest(tmp_path / "old", old)
    write_manifest(tmp_path / "old", {**old, "teacher_digest": "abc"})
    noisy = {**old, "degradation": "noisy_avgpool"}
    write_manifest(tmp_path / "old_noisy", noisy)
    write_manifest(tmp_path / "old_noisy", {**noisy, "teacher_digest": "abc", "sigma_y": "0.05"})  # the default it had
    with pytest.raises(ValueError, match="other settings {'sigma_y': \\('0.05', '0.1'\\)}"):
        write_manifest(tmp_path / "old_noisy", {**noisy, "sigma_y": "0.1"})


def test_a_noisy_avgpool_teachers_measurement_noise_goes_on_to_its_student(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import common
    import distill
    import make_pairs

    noisy = tmp_path / "noisy.safetensors"
    oftsr.save_model(oftsr.create_model("tiny", role="teacher", degradation="noisy_avgpool"), noisy, sigma_y="0.1")
    argv = ["--teacher", str(noisy), "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    for parse in (distill.parse_args, make_pairs.parse_args):
        args = parse(argv)
        teacher = common.load_teacher(args)
        assert args.sigma_y == 0.1
        with pytest.raises(ValueError, match="the teacher was trained with --sigma_y 0.1, but this run has 0.05: pass "
                                             "--sigma_y 0.1"):
            common.load_teacher(parse(argv + ["--sigma_y", "0.05"]))
    assert checkpoints.training_metadata(args, teacher) == {"sigma_y": "0.1"}  # and the student records it
    old = _save_teacher(tmp_path / "old.safetensors", degradation="noisy_avgpool")  # recorded before sigma_y was
    args = distill.parse_args(["--teacher", str(old), "--train_data_dir", "d", "--output_dir", "o"])
    common.load_teacher(args)
    assert args.sigma_y == 0.05
    teacher_args = __import__("train_teacher").parse_args(["--train_data_dir", "d", "--output_dir", "o",
                                                            "--sigma_y", "0.02"])
    assert teacher_args.sigma_y == 0.02 and distill.parse_args(argv).sigma_y is None  # None: the teacher's


def test_resume_refuses_another_model_and_a_new_run_refuses_a_used_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import train_teacher

    model = oftsr.create_model("tiny", role="teacher", sigma_p=0.2)
    info = checkpoints.model_info(model, step=3)
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-3" / checkpoints.MODEL_INFO).write_text(json.dumps(info))

    class NoLoad:
        process_index, num_processes = 0, 1  # one process

        def load_state(self, _path):
            raise AssertionError("must not load")

    args = train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", str(tmp_path / "run"),
                                     "--resume_from_checkpoint", "latest"])
    other = [checkpoints.model_info(oftsr.create_model("tiny", role="teacher", sigma_p=0.5), 0),
             checkpoints.model_info(oftsr.create_model("tiny", role="teacher", degradation="noisy_avgpool"), 0),
             checkpoints.model_info(oftsr.create_model("compact", role="teacher"), 0),
             checkpoints.model_info(oftsr.create_model("tiny", role="teacher", scale=2), 0)]
    for ours, message in zip(other, ["sigma_p 0.2, but this run has 0.5", "degradation bicubic, but this run has "
                                     "noisy_avgpool", "architecture model_channels 32.*--preset", "scale 4, but"]):
        with pytest.raises(ValueError, match=message):
            checkpoints.resume(NoLoad(), args, ours)
    with pytest.raises(AssertionError, match="must not load"):  # the same model: it goes on to load
        checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0))
    # Other data settings are allowed, with a warning naming them.
    data = checkpoints.data_settings(args, 1)
    (tmp_path / "run" / "checkpoint-3" / checkpoints.MODEL_INFO).write_text(json.dumps({**info, "data": data}))
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"), pytest.raises(AssertionError, match="must not load"):
        checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0), {**data, "train_batch_size": 8, "resolution": 128})
    assert "(resolution 256 -> 128, train_batch_size 32 -> 8)" in caplog.text

    # Files added to or removed from the training folder since the checkpoint: warned too.
    (tmp_path / "run" / "checkpoint-3" / checkpoints.MODEL_INFO).write_text(
        json.dumps({**info, "data": checkpoints.data_settings(args, 1, train_items=241)}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"), pytest.raises(AssertionError, match="must not load"):
        checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0), checkpoints.data_settings(args, 1, 240))
    assert "(train_items 241 -> 240)" in caplog.text

    args.resume_from_checkpoint = None  # a new run would rotate the old run's checkpoints and delete its own
    with pytest.raises(ValueError, match="already holds checkpoint-3 .* --resume_from_checkpoint latest"):
        checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0))
    args.output_dir = str(tmp_path / "empty")
    checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0))  # nothing there: a new run starts
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1}\n')  # a run killed before its first checkpoint
    checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0))
    # An earlier run's exported model, its checkpoints removed: a new run would overwrite it, resumed or not.
    for name in checkpoints.EXPORTED_MODELS:
        (tmp_path / "empty" / name).write_bytes(b"model")
        for resume_from in (None, "latest"):
            args.resume_from_checkpoint = resume_from
            with pytest.raises(ValueError, match=f"holds {name} of an earlier run and no checkpoint .* another "
                                                 f"--output_dir"):
                checkpoints.resume(NoLoad(), args, checkpoints.model_info(model, 0))
        (tmp_path / "empty" / name).unlink()


def test_a_damaged_checkpoint_names_its_empty_files_and_the_one_before(tmp_path, monkeypatch):
    """A checkpoint whose files were cut short (a full disk, a copy that stopped) is not a
    traceback: the message names the empty files and says how to go on from the one before."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import train_teacher
    from safetensors.torch import load_file

    run = tmp_path / "run"
    info = checkpoints.model_info(oftsr.create_model("tiny", role="teacher"), 0)
    for step in (2, 4):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / checkpoints.MODEL_INFO).write_text(json.dumps({**info, "step": step}))
    (run / "checkpoint-4" / "model.safetensors").write_bytes(b"")

    class Accelerator:  # loads the model file as Accelerate does
        process_index, num_processes = 0, 1  # one process

        def load_state(self, path):
            load_file(Path(path) / "model.safetensors")

    args = train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", str(run),
                                     "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match=r"could not load the checkpoint .*checkpoint-4 \(empty files\); these "
                                         r"files are empty: model.safetensors; move checkpoint-4 out of .* run again "
                                         r"with --resume_from_checkpoint latest to go on from checkpoint-2"):
        checkpoints.resume(Accelerator(), args, info)

    class LostRandomStates:  # Accelerate goes on without them, saying so only at INFO, which the trainer hides
        process_index, num_processes = 0, 1  # one process

        def load_state(self, path):
            logging.getLogger("accelerate.checkpointing").info("Could not load random states")

    (run / "checkpoint-4" / "model.safetensors").write_bytes(b"x" * 64)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
    with pytest.raises(ValueError, match=r"checkpoint-4 \(its random states \(random_states_\*.pkl\) could not be "
                                         r"read\); model.safetensors is cut short: move checkpoint-4 out of .* from "
                                         r"checkpoint-2"):
        checkpoints.resume(LostRandomStates(), args, info)
    assert logging.getLogger("accelerate.checkpointing").level == logging.WARNING  # its quiet level is restored
    from safetensors.torch import save_file

    class LoadsAll:  # reads every file as Accelerate does: the model's safetensors, torch.save's zips
        process_index, num_processes = 0, 1  # one process

        def load_state(self, path):
            load_file(Path(path) / "model.safetensors")
            for name in ("optimizer.bin", "random_states_0.pkl"):
                torch.load(Path(path) / name, weights_only=True)

    save_file({"w": torch.zeros(4096)}, run / "checkpoint-4" / "model.safetensors")
    for name in ("optimizer.bin", "random_states_0.pkl"):
        torch.save({"state": torch.zeros(4096)}, run / "checkpoint-4" / name)
    with open(run / "checkpoint-4" / "optimizer.bin", "r+b") as f:  # cut short, not empty
        f.truncate(9000)
    with pytest.raises(ValueError, match=r"checkpoint-4 \(OSError: .*\); optimizer.bin is cut short: move "
                                         r"checkpoint-4 out of"):
        checkpoints.resume(LoadsAll(), args, info)
    with open(run / "checkpoint-4" / "model.safetensors", "r+b") as f:
        f.truncate(9000)
    with pytest.raises(ValueError, match=r"\(SafetensorError: .*\); model.safetensors, optimizer.bin are cut short"):
        checkpoints.resume(LoadsAll(), args, info)
    for name in ("optimizer.bin", "random_states_0.pkl"):
        (run / "checkpoint-4" / name).unlink()

    class Mismatch:  # not damage: a model that changed; its own error, unchanged
        process_index, num_processes = 0, 1  # one process

        def load_state(self, path):
            raise RuntimeError("Error(s) in loading state_dict for UNet: size mismatch for input_blocks.0.0.weight")

    save_file({"w": torch.zeros(4096)}, run / "checkpoint-4" / "model.safetensors")  # whole: what it says stands
    with pytest.raises(RuntimeError, match="^Error\\(s\\) in loading state_dict"):
        checkpoints.resume(Mismatch(), args, info)
    # a copy that left files out: Accelerate misses one by name, or counts too few custom_checkpoint_*.pkl
    class Missing:
        process_index, num_processes = 0, 1  # one process

        def __init__(self, error):
            self.error = error

        def load_state(self, path):
            raise self.error

    for error in (FileNotFoundError(2, "No such file or directory", str(run / "checkpoint-4" / "optimizer.bin")),
                  RuntimeError("Number of custom checkpoints in folder checkpoint-4 does not match the number of "
                               "registered objects: Found checkpoints: 1 Registered objects: 2")):
        with pytest.raises(ValueError, match=r"could not load the checkpoint .*checkpoint-4 \((FileNotFound|Runtime)"
                                             r"Error: .*\); a file in it is missing: move checkpoint-4 out of .* to "
                                             r"go on from checkpoint-2"):
            checkpoints.resume(Missing(error), args, info)
    (run / "checkpoint-4" / checkpoints.MODEL_INFO).write_text("{")  # cut short too
    with pytest.raises(ValueError, match="oftsr.json is unreadable .* move checkpoint-4 out of"):
        checkpoints.resume(Accelerator(), args, info)

    # a run branched from another run's checkpoint: the hint names that run's other checkpoints
    (run / "checkpoint-4" / checkpoints.MODEL_INFO).write_text(json.dumps({**info, "step": 4}))
    (run / "checkpoint-4" / "model.safetensors").write_bytes(b"")
    branch = train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", str(tmp_path / "branch"),
                                       "--resume_from_checkpoint", str(run / "checkpoint-4")])
    with pytest.raises(ValueError, match=r"files are empty: model.safetensors; resume from another checkpoint of "
                                         r".*run \(checkpoint-2\) with --resume_from_checkpoint .*checkpoint-2$"):
        checkpoints.resume(Accelerator(), branch, info)
    shutil.rmtree(run / "checkpoint-2")
    with pytest.raises(ValueError, match=r"model.safetensors; start the run without --resume_from_checkpoint$"):
        checkpoints.resume(Accelerator(), branch, info)


def test_resolution_left_out_fits_the_scale_and_a_given_one_must(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import flags
    import train_teacher

    base = ["--train_data_dir", "d", "--output_dir", "o"]
    assert train_teacher.parse_args(base).resolution == 256
    assert train_teacher.parse_args([*base, "--scale", "3"]).resolution == 255  # the multiple just below 256
    assert train_teacher.parse_args([*base, "--scale", "3", "--resolution", "96"]).resolution == 96
    with pytest.raises(ValueError, match=r"^--resolution 100 is not a multiple of --scale 3: pass --resolution 99$"):
        train_teacher.parse_args([*base, "--scale", "3", "--resolution", "100"])
    args = SimpleNamespace(resolution=None, scale=300)  # a scale above 256: one crop of its own size
    flags.settle_resolution(args, "the teacher's scale")
    assert args.resolution == 300
    with pytest.raises(ValueError, match=r"--resolution 2 is not a multiple of the teacher's scale 3: pass "
                                         r"--resolution 3"):
        flags.settle_resolution(SimpleNamespace(resolution=2, scale=3), "the teacher's scale")


def test_a_flowsr_resume_names_a_discriminator_added_or_left_out(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill

    plain, gan = tmp_path / "checkpoint-3", tmp_path / "checkpoint-6"
    for folder in (plain, gan):
        folder.mkdir()
        (folder / "optimizer.bin").write_bytes(b"x")
    (gan / "optimizer_1.bin").write_bytes(b"x")  # Accelerate's name for the second optimizer: the discriminator's
    distill.check_discriminator(plain, False)
    distill.check_discriminator(gan, True)
    with pytest.raises(ValueError, match=r"checkpoint-3 is a run without a discriminator \(--lambda_adv 0\): pass "
                                         r"--lambda_adv 0 to go on with it"):
        distill.check_discriminator(plain, True)
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
        distill.check_discriminator(gan, False)
    assert "trained a discriminator, with --lambda_adv 0: its GAN loss stops from here" in caplog.text


def test_a_gan_with_fp16_and_gradient_accumulation_is_refused(monkeypatch):
    # fp16 has one loss scaler for both optimizers: the discriminator's update of it would
    # fall between the student's micro-batches
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill

    fp16, bf16 = SimpleNamespace(scaler=object()), SimpleNamespace(scaler=None)
    args = SimpleNamespace(objective="flowsr", lambda_adv=0.1, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"--lambda_adv with --mixed_precision fp16 and --gradient_accumulation_steps "
                                         r"2: the discriminator and the student share fp16's loss scaler"):
        distill.check_one_loss_scaler(args, fp16)
    distill.check_one_loss_scaler(args, bf16)
    for ok in ({"gradient_accumulation_steps": 1}, {"lambda_adv": 0.0}, {"objective": "oftsr"}):
        distill.check_one_loss_scaler(SimpleNamespace(**{**vars(args), **ok}), fp16)


def test_diffusers_flag_names_and_the_run_summary(caplog, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import flags
    import loop
    import train_teacher

    args = train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", "o", "--lr_scheduler",
                                     "constant_with_warmup", "--adam_epsilon", "1e-6", "--train_batch_size", "4",
                                     "--gradient_accumulation_steps", "2", "--max_train_steps", "100"])
    assert args.lr_scheduler == "constant"  # diffusers' name for a warm-up then a constant rate: ours
    optimizer = flags.make_optimizer(args, torch.nn.Linear(2, 2).parameters())
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.9, 0.999)
    with caplog.at_level(logging.INFO, logger="oftsr.trainer"):
        loop.log_run_summary(args, "teacher", 241, 482, 2, 0, steps_per_epoch=30)  # 60 full batches a process
    assert "training images: 241 in d (482 crops per epoch)" in caplog.text
    assert "batch per process: 4; processes: 2; gradient accumulation: 2 -> 16 crops per optimizer step" in caplog.text
    assert "optimizer steps: 100, about 3.3 epochs" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="oftsr.trainer"):  # 7 crops, batch 4: one full batch an epoch
        loop.log_run_summary(args, "teacher", 7, 7, 1, 0, steps_per_epoch=1)
    assert "optimizer steps: 100, about 100.0 epochs" in caplog.text
    caplog.clear()
    args.objective = "fluxsr"  # a make_pairs.py folder: pairs, not images
    with caplog.at_level(logging.INFO, logger="oftsr.trainer"):
        loop.log_run_summary(args, "student (fluxsr)", 16, 16, 1, 0, steps_per_epoch=4)
    assert "teacher-made pairs: 16 in d (16 per epoch)" in caplog.text and "training images" not in caplog.text
    del args.objective
    assert "restarts" not in caplog.text  # no loader workers
    # Windows and macOS start workers as new interpreters, at every epoch: a short epoch is said
    args.dataloader_num_workers = 2
    for method, said in (("spawn", True), ("fork", False)):
        monkeypatch.setattr(loop.multiprocessing, "get_start_method", lambda allow_none=False: method)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="oftsr.trainer"):
            loop.log_run_summary(args, "teacher", 7, 7, 1, 0, steps_per_epoch=3)
        assert ("an epoch is 3 optimizer step(s), and each restarts the 2 loader workers, which the 'spawn' start "
                "method makes slow: --repeats 17 draws more crops per image and epoch" in caplog.text) == said


def test_a_resume_takes_this_runs_adam_flags(monkeypatch, caplog):
    """Loading the optimizer's state brings back the old run's betas, eps and weight decay:
    this run's flags are put back, and said."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import flags
    import loop
    import train_teacher

    net = torch.nn.Linear(2, 2)
    old = torch.optim.Adam(net.parameters(), lr=1e-3)
    args = train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", "o", "--adam_epsilon", "1e-6",
                                     "--adam_beta2", "0.99"])
    new = flags.make_optimizer(args, net.parameters())
    new.load_state_dict(old.state_dict())
    assert new.param_groups[0]["eps"] == 1e-8  # what load_state_dict does
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
        loop.restore_optimizer_flags(new, args)
    group = new.param_groups[0]
    assert group["eps"] == 1e-6 and tuple(group["betas"]) == (0.9, 0.99) and group["weight_decay"] == 0.0
    assert "--adam_epsilon 1e-06: the checkpoint's run had 1e-08" in caplog.text
    assert "--adam_beta1/--adam_beta2 (0.9, 0.99): the checkpoint's run had (0.9, 0.999)" in caplog.text
    assert "weight_decay" not in caplog.text


def test_report_to_takes_several_trackers_and_leaves_out_missing_ones(monkeypatch, caplog):
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
        assert common.trackers("tensorboard, wandb") == ["tensorboard"]
    assert "wandb is not installed: scalars are not logged to it (pip install wandb)" in caplog.text
    assert common.trackers("wandb") is None and common.trackers("none") is None and common.trackers("all") == "all"
    with pytest.raises(ValueError, match="--report_to tensorbord: unknown tracker tensorbord; choose from tensorboard"):
        common.trackers("tensorbord")


def test_validation_images_reach_tensorboard_and_wandb(monkeypatch):
    import types

    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import validation

    logged = {}
    wandb = types.ModuleType("wandb")
    wandb.Image = lambda array: ("image", array.shape, array.dtype.name, int(array.max()))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    board = types.SimpleNamespace(name="tensorboard", writer=types.SimpleNamespace(
        add_images=lambda name, images, step: logged.__setitem__("tensorboard", (name, images, step))))
    run = types.SimpleNamespace(name="wandb", log=lambda values, step: logged.__setitem__("wandb", (values, step)))
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
    validation.log_images(types.SimpleNamespace(trackers=[board, run]), "val/lr_sample_hr", images, 7)
    name, shown, step = logged["tensorboard"]
    assert (name, step) == ("val/lr_sample_hr", 7) and torch.equal(shown, (images + 1) / 2)
    values, step = logged["wandb"]
    pictures = values["val/lr_sample_hr"]
    assert step == 7 and [p[:3] for p in pictures] == [("image", (4, 6, 3), "uint8")] * 2 and pictures[1][3] == 255


def test_ema_resume_keeps_this_runs_decay():
    from oftsr.training.ema import EMA

    net = torch.nn.Linear(2, 2)
    old = EMA(net, 0.9)
    old.update(net)
    new = EMA(net, 0.999)
    new.load_state_dict(old.state_dict())
    assert new.decay == 0.999 and new.num_updates == 1


def test_allow_tf32_sets_float32_matmul_precision(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import train_teacher

    assert train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", "o"]).allow_tf32 is False
    assert train_teacher.parse_args(["--train_data_dir", "d", "--output_dir", "o", "--allow_tf32"]).allow_tf32 is True
    before, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        common.enable_tf32()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = cudnn


def test_undecodable_image_is_reported_once_in_total(tmp_path, caplog):
    """A JPEG cut short passes the scan, which reads headers (decoding every photograph would
    take hours on a large folder), and fails in the loader: reported once by the worker that
    met it, then skipped by every worker in every epoch without a new attempt (shared flags)."""
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"good{i}.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cut.jpg", quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.jpg") as im:
        im.verify()  # the header check alone lets it through
    log_file = tmp_path / "log.txt"
    handler = logging.FileHandler(log_file)  # collects what the forked loader workers log as well
    logger = logging.getLogger("oftsr.training.data")
    logger.addHandler(handler)
    try:
        ds = SRDataset(tmp_path, resolution=32, scale=4)
        assert [p.name for p in ds.files] == ["cut.jpg", "good0.png", "good1.png"]
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, persistent_workers=False)
        for epoch in range(2):
            ds.set_epoch(epoch)
            batches = [batch["hr"] for batch in loader]
            assert len(batches) == 3  # the cut file's items are crops of the next image
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert log_file.read_text().count("cut.jpg") == 1
    assert ds._unreadable.tolist() == [True, False, False]  # what the workers found, in the main process too


def test_the_colour_under_transparency_of_a_training_image_is_not_learnt(tmp_path):
    rng = np.random.default_rng(2)
    rgba = np.concatenate([rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), np.zeros((40, 40, 1), np.uint8)], -1)
    rgba[8:32, 8:32, 3] = 255  # visible in the middle only
    for name, hidden in (("black", (0, 0, 0)), ("green", (0, 255, 0))):
        (tmp_path / name).mkdir()
        img = rgba.copy()
        img[rgba[..., 3] == 0, :3] = hidden
        Image.fromarray(img).save(tmp_path / name / "cutout.png")
    black, green = (SRDataset(tmp_path / n, resolution=32, scale=4, seed=1)[0] for n in ("black", "green"))
    assert torch.equal(black["hr"], green["hr"]) and torch.equal(black["lr"], green["lr"])


def test_gray_alpha_training_image_gives_gray_rgb_crops(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(np.stack([gray, np.full_like(gray, 128)], axis=-1)).save(tmp_path / "la.png")
    hr = SRDataset(tmp_path, resolution=32, scale=4)[0]["hr"]
    assert hr.shape == (3, 32, 32) and torch.equal(hr[0], hr[1]) and torch.equal(hr[1], hr[2])


def test_a_student_given_as_the_teacher_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill
    from common import load_teacher

    oftsr.save_model(oftsr.create_model("tiny", role="student"), tmp_path / "student.safetensors")
    args = distill.parse_args(["--teacher", str(tmp_path / "student.safetensors"), "--train_data_dir", str(tmp_path),
                               "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--teacher student.safetensors is a one-step student; the student learns "
                                         "from a teacher"):
        load_teacher(args)


def test_init_weights_keep_what_their_file_records(tmp_path, monkeypatch):
    """--init_from / --init_student take only the weights: the run's flags fill in what a
    file does not say, and contradict nothing (no OverrideWarning about flags never given)."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    from common import load_init_weights
    from safetensors.torch import save_file

    teacher = oftsr.create_model("tiny", role="teacher", sigma_p=0.1, seed=0)
    oftsr.save_model(teacher, tmp_path / "teacher.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init = load_init_weights(str(tmp_path / "teacher.safetensors"), "teacher", "--init_from", sigma_p=0.2,
                                 role="teacher", scale=4)
        assert (init.sigma_p, init.role) == (0.1, "teacher")
        student_file = tmp_path / "student.safetensors"
        oftsr.save_model(oftsr.create_model("tiny", role="student", seed=1), student_file)
        assert load_init_weights(str(student_file), "teacher", "--init_from", sigma_p=0.2, role="teacher",
                                 scale=4).role == "student"
    bare = tmp_path / "bare.safetensors"  # weights only, as a file of another tool: the flags are what it has
    save_file({k: v.contiguous() for k, v in teacher.unet.state_dict().items()}, bare)
    init = load_init_weights(str(bare), "teacher", "--init_from", sigma_p=0.2, role="teacher", scale=4)
    assert (init.sigma_p, init.role, init.scale) == (0.2, "teacher", 4)
    assert torch.equal(next(init.unet.parameters()), next(teacher.unet.parameters()))


def test_distill_init_student_starts_from_the_given_weights(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill

    teacher = oftsr.create_model("tiny", role="teacher", seed=0)
    other = oftsr.create_model("tiny", role="student", seed=1)
    oftsr.save_model(teacher, tmp_path / "teacher.safetensors")
    oftsr.save_model(other, tmp_path / "student.safetensors")
    oftsr.save_model(oftsr.create_model("compact", role="student", seed=1), tmp_path / "compact.safetensors")
    argv = ["--teacher", tmp_path / "teacher.safetensors", "--train_data_dir", tmp_path, "--output_dir", tmp_path / "o"]

    _, student = distill.build_models(distill.parse_args(list(map(str, argv))))
    assert torch.equal(student.unet.input_blocks[0][0].weight, teacher.unet.input_blocks[0][0].weight)
    _, student = distill.build_models(distill.parse_args(list(map(str, argv + ["--init_student", tmp_path / "student.safetensors"]))))
    first = student.unet.input_blocks[0][0].weight
    assert torch.equal(first, other.unet.input_blocks[0][0].weight)
    assert not torch.equal(first, teacher.unet.input_blocks[0][0].weight)
    assert student.role == "student" and student.training and first.requires_grad
    with pytest.raises(ValueError, match="--init_student has architecture"):
        distill.build_models(distill.parse_args(list(map(str, argv + ["--init_student", tmp_path / "compact.safetensors"]))))
    # A teacher's weights are where the student starts anyway: as --init_student, a likely mix-up
    with pytest.raises(ValueError, match="--init_student .*teacher.safetensors is a teacher; the student starts from "
                                         "--teacher's weights without the flag"):
        distill.build_models(distill.parse_args(list(map(str, argv + ["--init_student", tmp_path / "teacher.safetensors"]))))


def test_init_from_gives_the_model_flags_left_out_what_its_file_records(tmp_path, monkeypatch, caplog):
    """A fine-tune goes on with the model it starts from: --init_from x4-real trains the
    realesrgan degradation with its camera ranges, not the bicubic default; a flag given
    says otherwise on purpose and is logged."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import train_teacher

    base = ["--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    args = train_teacher.parse_args([*base, "--init_from", "x4-real"])
    assert (args.preset, args.scale, args.sigma_p, args.degradation, args.realesrgan_config) == \
        (None, 4, 0.2, "realesrgan", "camera")  # the preset is read off the weights
    assert args.init_changes == {}
    model = train_teacher.build_model(args)
    assert (model.degradation, model.config, args.preset) == ("realesrgan", oftsr.PRESETS["compact"], "compact")
    # Another degradation: taken, said, and without the file's ranges of the one it leaves
    args = train_teacher.parse_args([*base, "--init_from", "x4-real", "--degradation", "bicubic", "--scale", "2"])
    assert (args.degradation, args.scale, args.realesrgan_config) == ("bicubic", 2, "full")
    assert args.init_changes == {"degradation": ("realesrgan", "bicubic"), "scale": (4, 2)}
    with caplog.at_level(logging.INFO, logger="oftsr.trainer"):
        model = train_teacher.build_model(args)
    assert "--init_from x4-real: fine-tuning it with --scale 2 (it has 4), --degradation bicubic (it has realesrgan)" \
        in caplog.text
    assert (model.scale, model.degradation) == (2, "bicubic")
    # Its own degradation with other ranges: the flag wins
    args = train_teacher.parse_args([*base, "--init_from", "x4-real", "--realesrgan_config", "full"])
    assert (args.degradation, args.realesrgan_config) == ("realesrgan", "full")
    assert args.init_changes == {"realesrgan_config": ("camera", "full")}
    # An own file with a noisy_avgpool degradation and another sigma_p, sigma_y
    teacher = oftsr.create_model("tiny", role="teacher", sigma_p=0.1, degradation="noisy_avgpool")
    oftsr.save_model(teacher, tmp_path / "t.safetensors", sigma_y="0.02")
    args = train_teacher.parse_args([*base, "--init_from", str(tmp_path / "t.safetensors")])
    assert (args.sigma_p, args.degradation, args.sigma_y) == (0.1, "noisy_avgpool", 0.02)
    assert train_teacher.build_model(args).config == oftsr.PRESETS["tiny"] and args.preset == "tiny"
    # An authors' .pth records no architecture: its weights show it (the tiny preset, or one of no preset's)
    torch.save(oftsr.create_model("tiny", role="teacher").unet.state_dict(), tmp_path / "weights.pth")
    args = train_teacher.parse_args([*base, "--init_from", str(tmp_path / "weights.pth")])
    with caplog.at_level(logging.INFO, logger="oftsr.trainer"):
        model = train_teacher.build_model(args)
    assert (model.config, args.preset) == (oftsr.PRESETS["tiny"], "tiny")
    assert "weights.pth: its architecture is the tiny preset" in caplog.text
    odd = dataclasses.replace(oftsr.PRESETS["tiny"], channel_mult=(1, 2, 2))
    torch.save(oftsr.create_model(odd, role="teacher").unet.state_dict(), tmp_path / "odd.pth")
    model = train_teacher.build_model(train_teacher.parse_args([*base, "--init_from", str(tmp_path / "odd.pth")]))
    assert model.config == odd
    with pytest.raises(ValueError, match=r"odd.pth is architecture .*channel_mult=\(1, 2, 2\).*, not --preset tiny's: leave "
                                         r"--preset out to fine-tune its own"):
        train_teacher.build_model(train_teacher.parse_args([*base, "--init_from", str(tmp_path / "odd.pth"),
                                                            "--preset", "tiny"]))
    # Without --init_from: the defaults
    args = train_teacher.parse_args(base)
    assert (args.preset, args.scale, args.sigma_p, args.degradation, args.realesrgan_config, args.resolution) == \
        ("div2k", 4, 0.2, "bicubic", "full", 256)
    with pytest.raises(SystemExit):
        train_teacher.parse_args([*base, "--dropout", "1"])


def test_x4_recipe_runs_end_to_end_with_a_fixed_time_for_the_teacher(train_dir, tmp_path):
    # scripts/train_x4_models.sh at tiny sizes: the teacher ends on its time (TEACHER_MINUTES),
    # is exported from its newest checkpoint, and the chain goes on to distil and convert.
    data = tmp_path / "data"
    (data / "val" / "Set5").mkdir(parents=True)
    shutil.copytree(train_dir, data / "train")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "val" / "Set5" / "v.png")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", DATA=str(data), PRESET="tiny",
               RESOLUTION="32", BATCH="2", TEACHER_STEPS="1000", STUDENT_STEPS="2", STUDENT_RESOLUTION="32",
               CHECKPOINT_STEPS="500", WORKERS="0", REPEATS="2", EVAL="0", MIXED_PRECISION="no",
               WEIGHTS_DIR=str(tmp_path / "weights"), TEACHER_MINUTES="0.001",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    script = ["bash", str(ROOT / "scripts" / "train_x4_models.sh"), "x4-real", str(tmp_path / "run")]
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    teacher = oftsr.load_model(tmp_path / "weights" / "x4-real-teacher.safetensors")
    student = oftsr.load_model(tmp_path / "weights" / "x4-real-student.safetensors")
    assert teacher.step == 1  # the first step came after its time: saved, exported, and the chain went on
    assert student.step == 2 and student.degradation == "realesrgan" and student.role == "student"
    record = json.loads(oftsr.read_metadata(tmp_path / "weights" / "x4-real-teacher.safetensors")["training"])
    assert record["max_train_minutes"] == 0.001 and record["step"] == 1  # why it stopped short of 1000 steps
    from safetensors import safe_open
    with safe_open(tmp_path / "weights" / "x4-real-student.safetensors", "pt") as f:  # shipped in half precision
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert "the stage had its" not in res.stdout and "teacher: " in res.stderr  # the teacher's progress bar
    # Run again: the teacher had its time and is not trained further; the student resumes at its end.
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0 and "teacher.safetensors exists: the stage had its 0.001 minutes" in res.stdout
    assert oftsr.load_model(tmp_path / "weights" / "x4-real-teacher.safetensors").step == 1
    # The time a timed stage used is kept: stopped before its export and run again, it is
    # exported at once rather than given its minutes again.
    ledger = tmp_path / "run" / "teacher" / "seconds_used"
    assert int(ledger.read_text()) >= 0
    ledger.write_text("120\n")
    (tmp_path / "run" / "teacher" / "teacher.safetensors").unlink()
    trained = sorted(p.name for p in (tmp_path / "run" / "teacher").iterdir())
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "the stage has used 2.0 of its 0.001 minutes: 0.000 left" in res.stdout
    assert sorted(p.name for p in (tmp_path / "run" / "teacher").iterdir()) == trained + ["teacher.safetensors"]
    assert "teacher: " not in res.stderr and "oftsr student: " in res.stderr  # only the student's progress bar
    assert oftsr.load_model(tmp_path / "run" / "teacher" / "teacher.safetensors").step == 1
    assert ledger.read_text().strip() == "120"  # nothing ran, nothing added
    # A teacher trained further since its student was distilled: said, not shipped beside the old student
    teacher_file = tmp_path / "run" / "teacher" / "teacher.safetensors"
    trained_teacher = teacher_file.read_bytes()
    further = oftsr.load_model(teacher_file)
    with torch.no_grad():
        next(further.parameters()).add_(0.01)
    oftsr.save_model(further, teacher_file)
    shipped_student = (tmp_path / "weights" / "x4-real-student.safetensors").read_bytes()
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and "holds a student distilled from another state of the teacher" in res.stderr
    assert (tmp_path / "weights" / "x4-real-student.safetensors").read_bytes() == shipped_student  # nothing replaced
    teacher_file.write_bytes(trained_teacher)
    ledger.write_text("12.5\n")  # not what the script writes: said, not guessed at
    (tmp_path / "run" / "teacher" / "teacher.safetensors").unlink()
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 2 and "should hold the whole seconds the stage has used, not '12.5'" in res.stderr
    ledger.write_text("120\n")
    # MAX_MINUTES (stop, resume later) and a stage's own time exclude each other
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(env, MAX_MINUTES="5"))
    assert res.returncode == 2 and "exclude each other" in res.stderr

    # TEACHER: distil from an existing teacher, with no teacher stage. Given the shipped file
    # itself, that file stays as it is and only the student is written; the student's
    # degradation settings come from the teacher's record.
    shipped = tmp_path / "weights" / "x4-real-teacher.safetensors"
    before = shipped.read_bytes()
    env = {k: v for k, v in env.items() if k != "TEACHER_MINUTES"}
    env.update(TEACHER=str(shipped), INIT_STUDENT=str(tmp_path / "weights" / "x4-real-student.safetensors"),
               STUDENT_STEPS="1")
    script[-1] = str(tmp_path / "run2")
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"distilling from {shipped} (TEACHER): no teacher training" in res.stdout
    assert "teacher: " not in res.stderr and not (tmp_path / "run2" / "teacher").exists()
    assert shipped.read_bytes() == before
    student = oftsr.load_model(tmp_path / "weights" / "x4-real-student.safetensors")
    assert student.step == 1 and student.degradation == "realesrgan"
    record = json.loads(oftsr.read_metadata(tmp_path / "weights" / "x4-real-student.safetensors")["training"])
    assert record["init_student"].endswith("x4-real-student.safetensors")
    # a teacher's own training settings do not apply, and a wrong name stops before any work
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(env, TEACHER_MINUTES="1"))
    assert res.returncode == 2 and "INIT_TEACHER and TEACHER_MINUTES do not apply with it" in res.stderr
    res = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(env, TEACHER=str(tmp_path / "missing.safetensors")))
    assert res.returncode == 2 and res.stderr.startswith(f"error: TEACHER {tmp_path / 'missing.safetensors'}: no such file")


def test_default_models_recipe_writes_and_evaluates_the_pair_in_weights_dir(tmp_path):
    # scripts/train_default_models.sh with a PYTHON that only records its commands: the two
    # converted files go to WEIGHTS_DIR (not over the shipped pair) and the evaluation scores
    # those files, not the bundled ones
    log = tmp_path / "commands.txt"
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n')
    python.chmod(0o755)
    weights = tmp_path / "weights"
    env = dict(os.environ, DATA=str(tmp_path / "data"), PYTHON=str(python), WEIGHTS_DIR=str(weights))
    out = subprocess.run(["bash", str(ROOT / "scripts" / "train_default_models.sh"), str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    commands = log.read_text().splitlines()
    assert [c.split()[0].rsplit("/", 1)[-1] for c in commands[:2]] == ["train_teacher.py", "distill.py"]
    converts = [c for c in commands if c.startswith("-m oftsr convert")]
    assert [c.split()[4] for c in converts] == [str(weights / "x4-teacher.safetensors"),
                                                 str(weights / "x4-student.safetensors")]
    evals = [c for c in commands if c.startswith("-m oftsr eval")]
    assert len(evals) == 2 and all(f"--model {weights}/x4-student.safetensors {weights}/x4-teacher.safetensors" in c
                                   for c in evals)
    assert weights.is_dir() and not list(weights.iterdir())  # made for the files; the stub wrote none


def test_resume_from_an_earlier_checkpoint_by_name_and_with_a_new_learning_rate(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "2", "--output_dir", tmp_path / "run"]
    _run([*base, "--max_train_steps", "4"])
    assert _checkpoints(tmp_path / "run") == ["checkpoint-2", "checkpoint-4"]
    # Going on from checkpoint-2 in the same folder would mix two runs (and, with a limit,
    # rotate away the new checkpoints while keeping the old checkpoint-4): refused.
    res = _run([*base, "--max_train_steps", "6", "--checkpoints_total_limit", "2", "--resume_from_checkpoint",
                "checkpoint-2"], status=2)
    assert ("error: " + str(tmp_path / "run") + " holds checkpoint-4, later than checkpoint-2: going on from "
            "checkpoint-2 there would mix two runs") in res.stderr
    assert _checkpoints(tmp_path / "run") == ["checkpoint-2", "checkpoint-4"]  # nothing lost
    # A branch in another folder; the name alone (diffusers' form) is looked up in --output_dir.
    branch = [*base[:-1], tmp_path / "branch"]
    shutil.copytree(tmp_path / "run" / "checkpoint-2", tmp_path / "branch" / "checkpoint-2")
    res = _run([*branch, "--max_train_steps", "3", "--resume_from_checkpoint", "checkpoint-2",
                "--learning_rate", "1e-5"])
    assert "--learning_rate 1e-05: the checkpoint's run had 0.001; the new rate applies from here on" in res.stderr
    assert _losses(tmp_path / "branch", "lr") == {3: pytest.approx(1e-5)}  # warm-up (2 steps) is over


def test_resumed_warm_up_follows_the_step_not_the_process_count(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    from loop import lr_schedule, restore_schedule

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    two = lr_schedule(opt, "constant", 10, 100, num_processes=2)
    for _ in range(3 * 2):  # three optimizer steps of a two-process run: six scheduler steps
        opt.step()
        two.step()
    state = two.state_dict()
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    one = lr_schedule(opt, "constant", 10, 100, num_processes=1)
    one.load_state_dict(state)
    assert one.last_epoch == 6  # as loaded: in the two processes' units, 6 // 1 + 1 = 7 tenths of warm-up
    restore_schedule(one, opt, 1e-3, step=3, num_processes=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 4 / 10)  # the fourth step of a 10-step warm-up
    opt.step()
    one.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 5 / 10)


def test_the_short_accumulation_at_an_epoch_end_is_weighted_to_a_full_mean(monkeypatch):
    # 9 batches an epoch and accumulation 4: steps of 4, 4 and 1 batches. Accelerate divides
    # every loss by 4; the last step's batch weighs 4, so each step's gradient is a mean.
    from accelerate import Accelerator

    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    from loop import train_batches

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 9

        def __getitem__(self, i):
            return torch.tensor([float(i)])

        def set_epoch(self, epoch):
            pass

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
    net = torch.nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    net, opt, loader = accelerator.prepare(net, opt, torch.utils.data.DataLoader(Items(), batch_size=1))
    batches = train_batches(accelerator, loader, 0, 4)
    grads, weights = [], []
    for _ in range(9 + 4):  # an epoch and the next step
        batch, weight = next(batches)
        weights.append(weight)
        with accelerator.accumulate(net):
            accelerator.backward(net.weight.sum() * weight)  # a gradient of 1 per batch, before the weight
            if accelerator.sync_gradients:
                grads.append(net.weight.grad.item())
                opt.zero_grad()
    assert weights == [1.0] * 8 + [4.0] + [1.0] * 4
    assert grads == pytest.approx([1.0, 1.0, 1.0, 1.0])  # without the weight the third would be 0.25
    resumed = train_batches(accelerator, loader, 2, 4)  # positioned at the short step
    assert next(resumed)[1] == 4.0


def test_distillation_resumes_only_with_its_teacher(train_dir, tmp_path):
    teacher = _save_teacher(tmp_path / "teacher.safetensors")
    other = tmp_path / "other.safetensors"
    oftsr.save_model(oftsr.create_model("tiny", role="teacher", seed=1), other)
    base = ["trainer/distill.py", "--train_data_dir", train_dir, *COMMON, "--checkpointing_steps", "1",
            "--output_dir", tmp_path / "s"]
    _run([*base, "--teacher", teacher, "--max_train_steps", "1"])
    recorded = oftsr.read_metadata(tmp_path / "s" / "student.safetensors")
    from oftsr.checkpoint import network_digest
    digest = network_digest(oftsr.load_model(teacher))
    assert recorded["teacher_digest"] == digest  # the student names its teacher
    res = _run([*base, "--teacher", other, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"], status=2)
    assert "was distilled from another teacher (digest " + digest[:12] in res.stderr
    # The same teacher elsewhere, written again (other bytes: safetensors orders metadata as
    # it likes) or in half precision, is the same teacher.
    oftsr.save_model(oftsr.load_model(teacher), tmp_path / "again.safetensors", dtype=torch.float16)
    _run([*base, "--teacher", tmp_path / "again.safetensors", "--max_train_steps", "2", "--resume_from_checkpoint",
          "latest"])
    # Made longer, the run keeps its warm-up (a tenth of 2 steps: 1) over: the tenth of the
    # new length (4 steps) would have dropped the rate to 3/4 at step 3 and warmed up again
    res = _run([*base, "--teacher", teacher, "--max_train_steps", "40", "--lr_warmup_steps", "10",
                "--max_train_minutes", "0", "--resume_from_checkpoint", "latest"], status=EXIT_RESUMABLE)
    assert _losses(tmp_path / "s", "lr")[3] == pytest.approx(1e-3)
    assert "keeping the resumed run's warm-up of 1 steps, which is over" in res.stderr


def test_logging_dir_and_tracker_project_name(train_dir, tmp_path):
    """diffusers' flags: tensorboard's events go to --output_dir/--logging_dir/<project>."""
    out = tmp_path / "run"
    _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", out, "--preset", "tiny",
          "--resolution", "32", "--train_batch_size", "2", "--dataloader_num_workers", "0", "--max_train_steps", "1",
          "--report_to", "tensorboard", "--logging_dir", "tb", "--tracker_project_name", "my-sr"])
    assert list((out / "tb" / "my-sr").glob("events.out.tfevents.*")), sorted(p.relative_to(out) for p in out.rglob("*"))
    assert not (out / "logs").exists()


def test_a_cpu_run_is_warned_of_emulated_bf16_and_one_thread(monkeypatch, caplog):
    """fp16 runs in float32 on a CPU; bf16 is kept but warned of where the CPU emulates it;
    `accelerate launch`'s OMP_NUM_THREADS=1 is warned of where a process could have more cores."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common

    one = SimpleNamespace(num_processes=1, is_main_process=True)
    monkeypatch.setattr(common, "cpu_cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for native in (False, True):
        monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="oftsr.trainer"):
            assert common.check_cpu_training(one, "bf16") == "bf16" and common.check_cpu_training(one, "fp16") == "no"
            assert common.check_cpu_training(one, "no") == "no"
        said = [r.getMessage() for r in caplog.records]
        assert ("--mixed_precision bf16: this CPU has no native bf16 (AVX512-bf16 or AMX), so it is emulated, many "
                "times slower than float32: train with --mixed_precision no" in said) is not native
        fp16 = [m for m in said if m.startswith("--mixed_precision fp16 needs a GPU: this run trains in float32")]
        assert len(fp16) == 1 and ("--mixed_precision bf16 is faster" in fp16[0]) is native
        threads = [m for m in said if m.startswith("training on the CPU with one thread per process, on 4 cores")]
        assert len(threads) == 3 and all(m.endswith("--num_cpu_threads_per_process 4") for m in threads)

    caplog.clear()
    with caplog.at_level("WARNING", logger="oftsr.trainer"):
        common.check_cpu_training(SimpleNamespace(num_processes=4, is_main_process=True), "no")  # a core each
        common.check_cpu_training(SimpleNamespace(num_processes=2, is_main_process=False), "no")  # said once, by rank 0
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        common.check_cpu_training(one, "no")  # as --num_cpu_threads_per_process 2 sets it
    assert caplog.records == []
    caplog.clear()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with caplog.at_level("WARNING", logger="oftsr.trainer"):
        common.check_cpu_training(SimpleNamespace(num_processes=2, is_main_process=True), "no")
    assert caplog.records[0].getMessage().endswith("--num_cpu_threads_per_process 2")


def test_rotating_checkpoints_renames_before_it_removes(tmp_path, monkeypatch):
    """A run killed while it removes a checkpoint beyond --checkpoints_total_limit leaves a
    .tmp- folder (removed at the next save), never a checkpoint-N with files missing."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints

    class Accelerator:  # one process; writes a state of two files as Accelerate would
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, path):
            for name in ("model.safetensors", "custom_checkpoint_0.pkl"):
                (Path(path) / name).write_bytes(b"x")

    model = oftsr.create_model("tiny", role="teacher")
    run = tmp_path / "run"
    for step in (1, 2):
        checkpoints.save_checkpoint(Accelerator(), str(run), step, 2, model)
    real_rmtree, removed = shutil.rmtree, []

    def killed_while_removing(path, ignore_errors=False):
        path = Path(path)
        if path.name.startswith(".tmp-checkpoint-") and path.is_dir():
            (path / "custom_checkpoint_0.pkl").unlink()  # one file gone, then the process is killed
            removed.append(path.name)
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_while_removing)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(Accelerator(), str(run), 3, 2, model)
    assert removed == [".tmp-checkpoint-1"]
    assert [p.name for p in checkpoints.list_checkpoints(str(run))] == ["checkpoint-2", "checkpoint-3"]
    assert all(sorted(f.name for f in p.iterdir()) == ["custom_checkpoint_0.pkl", "model.safetensors", "oftsr.json"]
               for p in checkpoints.list_checkpoints(str(run)))  # every checkpoint-N whole
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real_rmtree)
    checkpoints.save_checkpoint(Accelerator(), str(run), 4, 2, model)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-4"]  # the half-removed one too
    # The same step saved again (a stop at a step just checkpointed): the old one is renamed
    # away before it is removed, so a kill while removing it leaves the new one whole
    def killed_removing_any(path, ignore_errors=False):
        if Path(path).is_dir():
            (Path(path) / "custom_checkpoint_0.pkl").unlink()
            removed.append(Path(path).name)
            raise KeyboardInterrupt

    removed.clear()
    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_removing_any)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(Accelerator(), str(run), 4, 2, model)
    assert removed == [".tmp-checkpoint-4-replaced"]
    assert [p.name for p in checkpoints.list_checkpoints(str(run))] == ["checkpoint-3", "checkpoint-4"]
    assert all(sorted(f.name for f in p.iterdir()) == ["custom_checkpoint_0.pkl", "model.safetensors", "oftsr.json"]
               for p in checkpoints.list_checkpoints(str(run)))
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real_rmtree)
    checkpoints.save_checkpoint(Accelerator(), str(run), 5, 2, model)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-4", "checkpoint-5"]


def test_flags_are_checked_and_silent_no_ops_are_said(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", tmp_path / "o", "--preset", "tiny"]
    for flag in ("--checkpointing_steps", "--validation_steps", "--checkpoints_total_limit",
                 "--gradient_accumulation_steps"):
        res = _run([*base, flag, "0"], status=2)
        assert f"argument {flag}: must be 1 or more, got 0" in res.stderr
    res = _run([*base, "--resolution", "32", "--train_batch_size", "2", "--dataloader_num_workers", "0",
                "--max_train_steps", "1", "--mixed_precision", "fp16", "--report_to", "wandb", "--max_grad_norm", "0",
                "--validation_data_dir", train_dir, "--num_validation_images", "1"])
    assert "--mixed_precision fp16 needs a GPU: this run trains in float32" in res.stderr
    record = json.loads(oftsr.checkpoint.read_metadata(tmp_path / "o" / "teacher.safetensors")["training"])
    assert record["mixed_precision"] == "no"  # what ran
    assert "wandb is not installed: scalars are not logged to it (pip install wandb)" in res.stderr
    assert "--lr_warmup_steps 1000 is longer than the run (--max_train_steps 1): the learning rate ends at 0.1% of" \
           in res.stderr
    row = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and any(k.startswith("val/") for k in row)  # validated at the last step
    # --max_grad_norm 0: no clipping (a clip to norm 0 zeroed every gradient, and Adam's first moment with it)
    opt = torch.load(tmp_path / "o" / "checkpoint-1" / "optimizer.bin", weights_only=True)
    assert any(state["exp_avg"].abs().max() > 0 for state in opt["state"].values())
    res = _run([*base, "--resolution", "32", "--train_batch_size", "2", "--dataloader_num_workers", "0",
                "--max_train_steps", "1", "--report_to", "none", "--resume_from_checkpoint", "latest"])
    assert "the checkpoint is at step 1, not before --max_train_steps 1: nothing to train" in res.stderr
    help_text = _run(["trainer/train_teacher.py", "--help"]).stdout
    assert "default: 100000" in help_text and "default: 5000" in help_text  # flags without help show defaults too
    assert "--seed SEED           default: 0" in help_text  # a default of 0 is a default
    assert "runs/teacher \\\n" in help_text  # the usage example's line break is kept
    res = _run([*base, "--init_from", "x4", *COMMON], status=2)
    assert "error: --init_from x4 is the compact preset, not --preset tiny's: leave --preset out to fine-tune its " \
           "own (another size cannot take its weights)" in res.stderr
    res = _run([*base, "--init_from", "x4-student", "--preset", "compact", *COMMON], status=2)
    assert "error: --init_from x4-student is a one-step student; a teacher starts from a teacher's weights" in res.stderr


def test_a_resume_with_other_loss_settings_is_warned_and_they_are_recorded(tmp_path, monkeypatch, caplog):
    """distill's weights and step shape what the student learns: the checkpoints and the
    exported file record them, and a resume that changes them says so, with the flags that
    go on as the run started."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import distill
    import loop

    run = tmp_path / "run"
    base = ["--teacher", "x4", "--train_data_dir", "d", "--output_dir", str(run), "--resume_from_checkpoint", "latest"]
    started = distill.loss_settings(distill.parse_args(base))
    assert started == {"dt": 0.05, "teacher_solver": "midpoint", "lambda_align": 0.01, "lambda_bc": 0.1}
    assert list(distill.loss_settings(distill.parse_args([*base, "--objective", "fluxsr"]))) == \
        ["lambda_lpips", "tv_gamma", "lambda_adl"]
    info = checkpoints.model_info(oftsr.create_model("tiny", role="student"), 3)
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "checkpoint-3" / checkpoints.MODEL_INFO).write_text(json.dumps({**info, "training": {"loss": started}}))
    monkeypatch.setattr(checkpoints, "_load_state", lambda *a: None)
    for flags, said in (([], None),
                        (["--dt", "0.3", "--lambda_bc", "0"], "with other loss settings (dt 0.05 -> 0.3, lambda_bc 0.1 "
                         "-> 0.0): the run learns another objective from here on; pass --dt 0.05 --lambda_bc 0.1 to go "
                         "on as it started")):
        args = distill.parse_args([*base, *flags])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
            checkpoints.resume(None, args, info, None, distill.loss_settings(args))
        assert (said in caplog.text) if said else "loss settings" not in caplog.text
        record = loop.training_record(args, checkpoints.data_settings(args, 1), distill.loss_settings(args))
        assert record["loss"] == distill.loss_settings(args)
    # A checkpoint of an earlier version, which recorded none: nothing to compare
    (run / "checkpoint-3" / checkpoints.MODEL_INFO).write_text(json.dumps({**info, "training": {}}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oftsr.trainer"):
        checkpoints.resume(None, args, info, None, distill.loss_settings(args))
    assert "loss settings" not in caplog.text


def test_out_of_range_weights_and_rates_are_refused_by_flag(monkeypatch, capsys):
    """A negative loss weight (a loss that rewards error), a step past t = 1, a beta of 1 or
    more: refused by the flag's name before anything loads, not trained on or left to torch."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill
    import train_teacher

    base = ["--train_data_dir", "d", "--output_dir", "o"]
    for parse, flag, value, wording in (
            (distill.parse_args, "--lambda_align", "-1", "must be 0 or more, got -1"),
            (distill.parse_args, "--lambda_bc", "-5", "must be 0 or more, got -5"),
            (distill.parse_args, "--lambda_adv", "-0.1", "must be 0 or more, got -0.1"),
            (distill.parse_args, "--lambda_lpips", "-1", "must be 0 or more, got -1"),
            (distill.parse_args, "--dt", "1.5", "must be more than 0 and below 1, got 1.5"),
            (distill.parse_args, "--dt", "0", "must be more than 0 and below 1, got 0"),
            (distill.parse_args, "--sigma_p", "1.5", "must be between 0 and 1, got 1.5"),
            (distill.parse_args, "--disc_learning_rate", "0", "must be more than 0, got 0"),
            (train_teacher.parse_args, "--sigma_p", "-0.2", "must be between 0 and 1, got -0.2"),
            (train_teacher.parse_args, "--adam_beta1", "1.5", "must be 0 or more and below 1, got 1.5"),
            (train_teacher.parse_args, "--adam_beta2", "1", "must be 0 or more and below 1, got 1"),
            (train_teacher.parse_args, "--adam_weight_decay", "-0.01", "must be 0 or more, got -0.01")):
        extra = ["--teacher", "x4"] if parse is distill.parse_args else []
        with pytest.raises(SystemExit):
            parse([*base, *extra, f"{flag}={value}"])
        assert f"argument {flag}: {wording}" in capsys.readouterr().err, (flag, value)
    args = distill.parse_args([*base, "--teacher", "x4", "--lambda_align", "0", "--dt", "0.3"])  # the edges that work
    assert (args.lambda_align, args.dt) == (0.0, 0.3)


def test_a_fine_tune_is_validated_before_its_first_step_and_warned_of_small_crops(train_dir, tmp_path, monkeypatch,
                                                                                  caplog):
    """A fine-tune logs its starting weights' scores as step 0 (what it must beat), takes
    its architecture from --init_from, validates on --validation_resolution crops, and is
    warned when it trains on much smaller crops than its weights learnt on."""
    start = tmp_path / "start.safetensors"
    oftsr.save_model(oftsr.create_model("tiny", role="teacher", seed=0), start, training='{"resolution": 64}')
    out = tmp_path / "o"
    res = _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", out, "--init_from", start,
                "--validation_data_dir", train_dir, "--num_validation_images", "1", "--validation_resolution", "40",
                "--max_train_steps", "1", "--validation_nfe_steps", "2", *COMMON])
    assert ("--init_from %s learnt on 64 px crops and this run trains on 32 px ones" % start) in res.stderr
    assert "--validation_resolution 64" in res.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    assert rows[0]["val/teacher_nfe3/psnr"] > 10 and "loss" not in rows[0]  # scored, not trained
    assert "step 0 (--init_from" in res.stderr
    assert oftsr.load_model(out / "teacher.safetensors").config == oftsr.PRESETS["tiny"]  # no --preset given

    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import loop
    import train_teacher
    from validation import validation_batch

    # run again as a new run (killed before its first checkpoint): its step 0 is logged anew, not twice
    loop.trim_metrics(str(out), 0)
    assert (out / "metrics.jsonl").read_text() == ""

    base = ["--train_data_dir", str(train_dir), "--output_dir", str(out), "--validation_data_dir", str(train_dir),
            "--num_validation_images", "1", "--resolution", "32"]
    batch = validation_batch(train_teacher.parse_args([*base, "--validation_resolution", "40"]), "cpu")
    assert batch["hr"].shape == (1, 3, 40, 40) and batch["lr"].shape == (1, 3, 40, 40)  # LR upsampled to HR size
    assert validation_batch(train_teacher.parse_args(base), "cpu")["hr"].shape == (1, 3, 32, 32)  # as --resolution
    with pytest.raises(ValueError, match="--validation_resolution 42 is not a multiple of --scale 4: pass "
                                         "--validation_resolution 40"):
        train_teacher.parse_args([*base, "--validation_resolution", "42"])

    # validation on the training images themselves is said to overstate
    with caplog.at_level("WARNING", logger="oftsr.trainer"):
        validation_batch(train_teacher.parse_args(base), "cpu")
    assert f"--validation_data_dir {train_dir} overlaps --train_data_dir {train_dir}: its scores are on images the " \
           "model trains on" in caplog.text
    caplog.clear()

    # A validation image whose body is damaged (it passed the header scan) is named as one, and
    # the batch holds the next readable images, each once
    val = tmp_path / "val"
    val.mkdir()
    pixels = [np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8) for i in range(3)]
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(val / f"{i}.png")
    (val / "0.png").write_bytes((val / "0.png").read_bytes()[:200])
    args = train_teacher.parse_args([*base[:4], "--validation_data_dir", str(val), "--num_validation_images", "2",
                                     "--resolution", "32"])
    with caplog.at_level("INFO"):
        hr = validation_batch(args, "cpu")["hr"]
    centre = [torch.from_numpy(p[8:40, 8:40]).permute(2, 0, 1) / 127.5 - 1 for p in pixels[1:]]
    assert hr.shape == (2, 3, 32, 32) and torch.allclose(hr, torch.stack(centre), atol=1e-6)
    assert "skipping unreadable validation image" in caplog.text and "training image" not in caplog.text
    assert f"validation: 2 of the 3 images in {val} (32 px centre crops): 1.png, 2.png" in caplog.text
    assert "overlaps" not in caplog.text


def test_init_from_an_authors_student_file_is_refused_as_a_student(tmp_path, monkeypatch):
    """An authors' .pth records nothing inside, but its name says "distil": a student, not
    the teacher the flag's fallback would have made it (its weights map to one step)."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    from common import load_init_weights

    student = tmp_path / "sr_bicubic-sf4-guided_unet-sigma0.2-distil-v_boot-DIV2K_DIS-checkpoint_5.pth"
    torch.save(oftsr.create_model("tiny", role="student").unet.state_dict(), student)
    fallback = dict(sigma_p=0.2, role="teacher", scale=4)
    assert load_init_weights(str(student), "teacher", "--init_from", **fallback).role == "student"
    teacher = tmp_path / "sr_bicubic-sf4-guided_unet-sigma0.2-DIV2K-checkpoint_4.pth"
    torch.save(oftsr.create_model("tiny", role="teacher").unet.state_dict(), teacher)
    assert load_init_weights(str(teacher), "teacher", "--init_from", **fallback).role == "teacher"
    plain = tmp_path / "weights.pth"  # a name that says nothing: the flag's fallback stands
    torch.save(oftsr.create_model("tiny", role="teacher").unet.state_dict(), plain)
    assert load_init_weights(str(plain), "teacher", "--init_from", **fallback).role == "teacher"
    # a safetensors file that is not ours (metadata of its own) is read by its name too, as load_model reads it
    from safetensors.torch import save_file

    foreign = tmp_path / "sr_bicubic-sf4-guided_unet-sigma0.2-distil-v_boot-DIV2K_DIS-checkpoint_6.safetensors"
    save_file(oftsr.create_model("tiny", role="student").unet.state_dict(), foreign, metadata={"format": "pt"})
    assert load_init_weights(str(foreign), "teacher", "--init_from", **fallback).role == "student"
    # --teacher such a student is refused, as a student file of ours is
    import argparse

    from common import load_teacher

    args = argparse.Namespace(teacher=str(student), scale=None, sigma_p=None, degradation=None, realesrgan_config=None,
                              sigma_y=None)
    with pytest.raises(ValueError, match="is a one-step student; the student learns from a teacher"):
        load_teacher(args)


def test_a_teacher_file_named_like_a_bundled_model_is_that_file(tmp_path, monkeypatch):
    # "./x4" must stay the user's file on its way through load_teacher (as a string it read "x4": the bundled one)
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import distill

    monkeypatch.chdir(tmp_path)
    oftsr.save_model(oftsr.create_model("tiny", role="teacher", sigma_p=0.1), tmp_path / "x4")
    args = distill.parse_args(["--teacher", "./x4", "--train_data_dir", "d", "--output_dir", "o"])
    teacher = common.load_teacher(args)
    assert teacher.sigma_p == 0.1 and teacher.config == oftsr.PRESETS["tiny"]
    assert args.teacher == str(tmp_path / "x4")


@pytest.mark.parametrize("script", ["teacher", "distill"])
def test_gradient_checkpointing_trains_the_same_run(train_dir, tmp_path, script, monkeypatch):
    """--gradient_checkpointing changes memory, not the run: the same losses step by step
    and the same exported weights (dropout on, so its masks must be drawn again alike).
    The flag reaches the network that trains (the frozen teacher needs none)."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import distill
    import train_teacher

    teacher_file = _save_teacher(tmp_path / "teacher.safetensors")
    argv = ["--train_data_dir", "d", "--output_dir", "o"]
    assert train_teacher.build_model(train_teacher.parse_args(argv + ["--preset", "tiny", "--gradient_checkpointing"])
                                     ).unet.gradient_checkpointing is True
    assert train_teacher.build_model(train_teacher.parse_args(argv + ["--preset", "tiny"])).unet.gradient_checkpointing \
        is False
    frozen, student = distill.build_models(distill.parse_args(argv + ["--teacher", str(teacher_file),
                                                                     "--gradient_checkpointing"]))
    assert student.unet.gradient_checkpointing is True and frozen.unet.gradient_checkpointing is False
    if script == "teacher":
        base = ["trainer/train_teacher.py", "--preset", "tiny", "--dropout", "0.1"]
    else:
        base = ["trainer/distill.py", "--teacher", teacher_file, "--dropout", "0.1"]
    base += ["--train_data_dir", train_dir, *COMMON, "--max_train_steps", "3", "--seed", "3"]
    _run([*base, "--output_dir", tmp_path / "plain"])
    _run([*base, "--output_dir", tmp_path / "ckpt", "--gradient_checkpointing"])
    plain, ckpt = _losses(tmp_path / "plain"), _losses(tmp_path / "ckpt")
    assert sorted(plain) == [1, 2, 3] and plain == pytest.approx(ckpt, rel=1e-5, abs=1e-7)
    name = "teacher.safetensors" if script == "teacher" else "student.safetensors"
    a, b = oftsr.load_model(tmp_path / "plain" / name), oftsr.load_model(tmp_path / "ckpt" / name)
    for (k, p), q in zip(a.unet.state_dict().items(), b.unet.state_dict().values(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), k


def test_lr_schedules_after_the_warm_up(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    from loop import lr_schedule

    def lrs(name: str, processes: int = 1) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, seen = lr_schedule(opt, name, 4, 12, num_processes=processes), []
        for _ in range(13):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            for _ in range(processes):  # Accelerate steps it once per process per optimizer step
                sched.step()
        return seen

    warm = [0.25, 0.5, 0.75, 1.0]
    assert lrs("constant") == pytest.approx(warm + [1.0] * 9)
    assert lrs("linear") == pytest.approx(warm + [1 - k / 8 for k in range(9)])
    assert lrs("cosine") == pytest.approx(warm + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)])
    assert lrs("cosine", processes=2) == pytest.approx(lrs("cosine"))
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "step", 0, 10)
    with pytest.raises(ValueError, match="--lr_warmup_steps 1000 is not shorter than --max_train_steps 500"):
        lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "cosine", 1000, 500)
    lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "constant", 1000, 500)  # no decay: fine


def test_cosine_schedule_in_a_run_and_on_resume(train_dir, tmp_path):
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--max_train_steps", "6", "--lr_scheduler", "cosine", "--checkpointing_steps", "3"]
    _run([*base, "--output_dir", tmp_path / "full"])
    full = _losses(tmp_path / "full", "lr")
    assert full[1] == pytest.approx(5e-4) and full[2] == pytest.approx(1e-3)  # warm-up over 2 steps
    assert [full[s] for s in range(3, 7)] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * k / 4))
                                                           for k in range(4)])
    _run([*base, "--output_dir", tmp_path / "cut", "--max_train_minutes", "0"], status=EXIT_RESUMABLE)
    res = _run([*base, "--output_dir", tmp_path / "cut", "--resume_from_checkpoint", "latest"])
    assert _losses(tmp_path / "cut", "lr") == pytest.approx(full)
    assert "resuming at step 1 with learning rate 0.001" in res.stderr  # the second step's rate: warm-up over
    assert "another learning-rate schedule" not in res.stderr
    res = _run([*base, "--output_dir", tmp_path / "cut", "--resume_from_checkpoint", "latest", "--max_train_steps", "8"])
    assert "with another learning-rate schedule (max_train_steps 6 -> 8): the rate follows this run's" in res.stderr
    constant = [a if a != "cosine" else "constant" for a in base]
    _run([*constant, "--output_dir", tmp_path / "k"])
    res = _run([*constant, "--output_dir", tmp_path / "k", "--resume_from_checkpoint", "latest", "--max_train_steps",
                "8"])  # training longer at a constant rate: nothing to say
    assert "another learning-rate schedule" not in res.stderr and "other data settings" not in res.stderr
    res = _run([*base[:-2], "--lr_warmup_steps", "6", "--output_dir", tmp_path / "w"], status=2)
    assert "error: --lr_scheduler cosine decays after the warm-up, but --lr_warmup_steps 6 is not shorter" in res.stderr


def test_num_train_epochs_counts_optimizer_steps_as_the_loader_draws_them(train_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import distill
    import train_teacher

    class Loader:  # 50 full batches, as len() of a drop_last loader counts them
        def __len__(self):
            return 50

    base = ["--train_data_dir", "d", "--output_dir", "o"]
    for argv, processes, steps in [([], 1, 100_000), (["--num_train_epochs", "3"], 1, 150),
                                   (["--num_train_epochs", "3", "--gradient_accumulation_steps", "4"], 1, 39),
                                   (["--num_train_epochs", "2"], 3, 32),  # 16 batches each: the 50th is left
                                   (["--num_train_epochs", "2", "--max_train_steps", "7"], 1, 7)]:
        args = train_teacher.parse_args(base + argv)
        common.resolve_train_steps(args, Loader(), processes)
        assert args.max_train_steps == steps, argv
    assert "--max_train_steps 7 and --num_train_epochs 2: training for 7 steps" in caplog.text
    args = distill.parse_args(["--teacher", "x4"] + base)
    common.resolve_train_steps(args, Loader(), 1)
    assert args.max_train_steps == 20_000  # distill.py's own default
    # a real run: six images at batch 2 are three steps an epoch
    out = tmp_path / "epochs"
    _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", out, "--preset", "tiny", *COMMON,
          "--num_train_epochs", "2", "--checkpointing_steps", "100"])
    assert sorted(_losses(out)) == [1, 2, 3, 4, 5, 6] and oftsr.load_model(out / "teacher.safetensors").step == 6
    res = _run(["trainer/train_teacher.py", "--train_data_dir", train_dir, "--output_dir", out, "--preset", "tiny",
                *COMMON, "--num_train_epochs", "3", "--checkpointing_steps", "100", "--resume_from_checkpoint",
                "latest"])
    assert "--num_train_epochs 3 makes 9 steps here (processes, data and batch as now), where the run was to end at " \
           "step 6; pass --max_train_steps 6 to end it as started" in res.stderr
    assert oftsr.load_model(out / "teacher.safetensors").step == 9


def test_the_trackers_get_the_values_the_run_uses(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import common
    import distill

    class Accelerator:
        is_main_process, log_with, oftsr_project = True, ["tensorboard"], "oftsr-distill"

        def init_trackers(self, project, config, init_kwargs):
            self.project, self.config, self.init_kwargs = project, config, init_kwargs

    args = distill.parse_args(["--teacher", "x4", "--train_data_dir", "d", "--output_dir", "o", "--num_train_epochs",
                               "2"])

    class Loader:
        def __len__(self):
            return 40

    common.resolve_train_steps(args, Loader(), 1)
    accelerator = Accelerator()
    common.start_trackers(accelerator, args)
    assert accelerator.project == "oftsr-distill" and accelerator.config["max_train_steps"] == 80
    assert accelerator.config["num_train_epochs"] == 2 and "default_train_steps" not in accelerator.config
    # tensorboard drops what a killed run logged past the checkpoint resumed (a new run: all of it)
    assert accelerator.init_kwargs == {"tensorboard": {"purge_step": 0}}
    common.start_trackers(accelerator, args, 40)
    assert accelerator.init_kwargs == {"tensorboard": {"purge_step": 41}}


def test_random_flip_is_on_and_can_be_turned_off(train_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import common
    import train_teacher

    base = ["--train_data_dir", str(train_dir), "--output_dir", "o", "--resolution", "32", "--train_batch_size", "2",
            "--dataloader_num_workers", "0"]
    for extra, flip in [([], True), (["--random_flip"], True), (["--no_random_flip"], False)]:
        args = train_teacher.parse_args(base + extra)
        assert args.random_flip is flip and common.make_dataloader(args, train_dir).dataset.random_flip is flip
        assert checkpoints.data_settings(args, 1)["random_flip"] is flip  # a resume that changes it is warned
    unflipped = common.make_dataloader(train_teacher.parse_args(base + ["--no_random_flip"]), train_dir).dataset
    flipped = common.make_dataloader(train_teacher.parse_args(base), train_dir).dataset
    same = [torch.equal(unflipped[i]["hr"], flipped[i]["hr"]) for i in range(len(flipped))]
    assert any(same) and not all(same)  # the same crops, some of them mirrored


def test_max_train_samples_and_scale_lr(train_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    import common
    import flags
    import distill
    import train_teacher

    base = ["--train_data_dir", str(train_dir), "--output_dir", str(tmp_path / "o"), "--resolution", "32",
            "--train_batch_size", "2", "--dataloader_num_workers", "0", "--report_to", "none"]
    every = common.make_dataloader(train_teacher.parse_args(base), train_dir).dataset.files
    some = [common.make_dataloader(train_teacher.parse_args(base + ["--max_train_samples", "3"]), train_dir).dataset.files
            for _ in range(2)]
    assert len(every) == 6 and len(some[0]) == 3 and some[0] == some[1] and set(some[0]) < set(every)
    other = common.make_dataloader(train_teacher.parse_args(base + ["--max_train_samples", "3", "--seed", "1"]),
                                   train_dir).dataset.files
    assert other != some[0]  # drawn with --seed, not the first names
    args = train_teacher.parse_args(base + ["--scale_lr", "--gradient_accumulation_steps", "3"])
    common.make_accelerator(args, "probe")
    assert args.learning_rate == pytest.approx(1e-4 * 2 * 3)  # one process: batch 2 x accumulation 3
    assert flags.make_optimizer(args, torch.nn.Linear(2, 2).parameters()).defaults["lr"] == pytest.approx(6e-4)
    found = common.make_dataloader(train_teacher.parse_args(base + ["--max_train_samples", "3"]), train_dir).dataset
    assert found.found == 6 and len(found.files) == 3  # a checkpoint records the folder's 6 and the 3 drawn from them
    assert checkpoints.data_settings(train_teacher.parse_args(base + ["--max_train_samples", "3"]), 1, 6)[
        "max_train_samples"] == 3
    for flag, message in [("--max_train_samples", "--max_train_samples is for a folder of images; make fewer pairs"),
                          ("--no_random_flip", "--no_random_flip does not reach teacher-made pairs"),
                          ("--random_flip", "--random_flip does not reach teacher-made pairs")]:
        with pytest.raises(SystemExit):
            distill.parse_args(["--teacher", "x4", "--objective", "fluxsr", flag, *(["3"] if flag.startswith(
                "--max") else []), *base])
        assert message in capsys.readouterr().err


def test_training_record_names_the_start_weights_and_the_time_limit(monkeypatch, tmp_path):
    # A fine-tune's file says what it started from (no paths) and that a time limit ended it.
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import loop
    import distill
    import train_teacher

    base = ["--train_data_dir", str(tmp_path / "photos"), "--output_dir", str(tmp_path / "run")]
    (tmp_path / "runs").mkdir()
    oftsr.save_model(oftsr.create_model("tiny", role="teacher"), tmp_path / "runs" / "teacher.safetensors")
    args = train_teacher.parse_args([*base, "--init_from", str(tmp_path / "runs" / "teacher.safetensors"),
                                     "--max_train_minutes", "4.5", "--dropout", "0.2"])
    record = loop.training_record(args, {"train_data_dir": str(tmp_path / "photos"), "seed": 0})
    assert (record["init_from"], record["max_train_minutes"], record["train_data"]) == ("teacher.safetensors", 4.5, "photos")
    assert record["dropout"] == 0.2
    assert "init_student" not in record and str(tmp_path) not in json.dumps(record)
    args = distill.parse_args([*base, "--teacher", "x4-real-teacher", "--init_student", "x4-real"])
    record = loop.training_record(args, {})
    assert record["init_student"] == "x4-real" and "init_from" not in record and "max_train_minutes" not in record
    plain = loop.training_record(train_teacher.parse_args(base), {})
    assert not {"init_from", "init_student", "max_train_minutes"} & plain.keys()


def test_building_the_validation_lpips_leaves_the_restored_rng_alone(monkeypatch):
    """A resumed run restores the RNG, then builds the validation LPIPS: its initialisation
    must not move the generator, or the run draws other t and noise than an uninterrupted one."""
    import functools

    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import validation

    from oftsr.training.metrics import LPIPS

    monkeypatch.setattr(validation, "LPIPS", functools.partial(LPIPS, random_backbone=True))  # no weights here
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert validation.make_validation_lpips() is not None
    assert torch.equal(torch.rand(4), expected)


class _RunsCode:  # a pickle payload: loading it would create the marker file
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_resume_refuses_a_checkpoint_file_that_would_run_code(train_dir, tmp_path):
    """Accelerate reads the registered states (EMA, step) with weights_only=False: a
    checkpoint-N/custom_checkpoint_*.pkl swapped for a pickle that names code is refused
    before that, and the code does not run."""
    out, marker = tmp_path / "run", tmp_path / "ran"
    base = ["trainer/train_teacher.py", "--train_data_dir", train_dir, "--preset", "tiny", *COMMON,
            "--checkpointing_steps", "1", "--output_dir", out]
    _run([*base, "--max_train_steps", "1"])
    state = out / "checkpoint-1" / "custom_checkpoint_1.pkl"
    assert torch.load(state, weights_only=True) == {"step": 1, "skipped": 0}  # what the trainer itself writes: plain values
    torch.save({"step": 1, "payload": _RunsCode(marker)}, state)
    res = _run([*base, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"], status=2)
    assert "custom_checkpoint_1.pkl holds more than tensors and numbers, and loading it could run code: the resume " \
           "is refused" in res.stderr
    assert not marker.exists() and "Traceback" not in res.stderr


def test_the_scan_keeps_a_png_whose_text_chunks_pillow_refuses(tmp_path):
    """A PNG with a text chunk past Pillow's limit: load_image (and upscale) read it without
    the chunk, so the trainer's scan keeps it too (it dropped it as unreadable)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "big_text.png", pnginfo=info)
    Image.new("RGB", (40, 40)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError):
        Image.open(tmp_path / "big_text.png")  # Pillow's own refusal
    assert [p.name for p in scan_images(tmp_path)] == ["big_text.png", "plain.png"]


def test_checkpoint_files_are_flushed_through_a_handle_windows_accepts(tmp_path, monkeypatch):
    """fsync of a read-only handle fails on Windows (and was silently skipped there): files
    are opened for writing on Windows, read-only elsewhere; folders are flushed where they can be."""
    monkeypatch.syspath_prepend(str(ROOT / "trainer"))
    import checkpoints
    from oftsr import files

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"x")
    real_open = os.open
    for windows, file_flags in ((True, os.O_RDWR), (False, os.O_RDONLY)):
        opened, synced = [], []
        monkeypatch.setattr(files, "FLUSH_NEEDS_WRITE", windows)
        monkeypatch.setattr(files.os, "open", lambda p, flags: opened.append((Path(p).name, flags)) or real_open(p, flags))
        monkeypatch.setattr(files.os, "fsync", synced.append)
        checkpoints._sync_to_disk(tmp_path)
        assert opened == [("model.safetensors", file_flags), (tmp_path.name, os.O_RDONLY)] and len(synced) == 2


def test_tiles_cover_every_pixel_and_read_back_as_the_photograph(tmp_path):
    """make_tiles.py: tiles spread evenly from edge to edge, at most `step` apart, none a
    near copy of another; each tile is the photograph's region as the loader reads it
    (upright, 16 bits kept); a rerun keeps what is there, one with other sizes, or into a
    folder of tiles placed otherwise, is refused; an unreadable photograph is said and the
    others are cut."""
    from oftsr.images import load_image, save_image
    from oftsr.training.tiles import tile_starts

    assert tile_starts(1000, 480, 240) == [0, 173, 347, 520] and tile_starts(480, 480, 240) == [0]
    assert tile_starts(100, 480, 240) == [0] and tile_starts(961, 480, 480) == [0, 240, 481]
    assert tile_starts(600, 480, 240) == [0, 120] and tile_starts(2040, 480, 240)[-1] == 1560
    assert tile_starts(481, 480, 240) == [0] and tile_starts(581, 480, 240) == [50]  # BSD68's 481: one tile, not two
    for length in range(1, 3000, 7):  # every start in range, at most a step apart, at least half a step apart
        starts = tile_starts(length, 480, 240)
        gaps = np.diff(starts)
        assert starts[0] >= 0 and starts[-1] + 480 <= max(length, 480) and ((gaps <= 240) & (2 * gaps >= 240)).all()
        assert len(starts) == 1 or (starts[0] == 0 and starts[-1] == length - 480)  # every pixel in a tile
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    save_image(torch.from_numpy(rng.integers(0, 65536, (3, 70, 90), dtype=np.uint16).astype(np.float32) / 65535),
               photos / "sub" / "deep.png", bit_depth=16)
    turned = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: 40 wide, 60 high
    turned.save(photos / "turned.png", exif=exif)
    (photos / "cut.png").write_bytes((photos / "turned.png").read_bytes()[:200])
    Image.new("RGB", (32, 32), (255, 255, 255)).save(photos / "sub" / "deep.jpg")  # beside deep.png: its own tiles
    out = tmp_path / "tiles"
    res = _run(["trainer/make_tiles.py", "--input_dir", photos, "--output_dir", out, "--tile_size", "32", "--step",
                "24", "--workers", "1"], status=1)
    assert "could not be read and have no tiles: cut.png" in res.stderr
    deep, depth = load_image(photos / "sub" / "deep.png")
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    # deep.png, 70x90: rows at 0, 19, 38, columns at 0, 19, 39, 58; turned, 40 wide: one column, centred
    assert len(names) == 3 * 4 + 3 * 1 + 1 and "sub/deep.jpg_y0_x0.png" in names and "sub/deep.png_y19_x39.png" in names
    assert "turned.png_y28_x4.png" in names
    tile, tile_depth = load_image(out / "sub" / "deep.png_y38_x58.png")
    assert tile_depth == depth == 16 and torch.equal(tile, deep[..., 38:70, 58:90])
    upright = load_image(photos / "turned.png")[0]
    assert upright.shape[-2:] == (60, 40) and torch.equal(load_image(out / "turned.png_y28_x4.png")[0], upright[..., 28:60, 4:36])
    assert json.loads((out / ".tiles.json").read_text()) == {"tile_size": 32, "step": 24, "layout": "even"}
    before = (out / "turned.png_y28_x4.png").stat().st_mtime_ns
    (out / "turned.png_y0_x4.png").unlink()  # a run cut short: what is there is kept, the rest made
    res = _run(["trainer/make_tiles.py", "--input_dir", photos, "--output_dir", out, "--tile_size", "32", "--step",
                "24", "--workers", "2"], status=1)
    assert "(1 written now" in res.stderr and (out / "turned.png_y0_x4.png").is_file()
    assert (out / "turned.png_y28_x4.png").stat().st_mtime_ns == before
    res = _run(["trainer/make_tiles.py", "--input_dir", photos, "--output_dir", out, "--tile_size", "32", "--step",
                "16"], status=2)
    assert "holds tiles cut with --tile_size 32 --step 24 (layout 'even'); this run's would sit beside them" in res.stderr
    (out / ".tiles.json").unlink()  # as a folder of an earlier make_tiles.py
    res = _run(["trainer/make_tiles.py", "--input_dir", photos, "--output_dir", out, "--tile_size", "32", "--step",
                "24"], status=2)
    assert "holds PNGs but no .tiles.json" in res.stderr and len(list(out.rglob("*.png"))) == len(names)
    res = _run(["trainer/make_tiles.py", "--input_dir", photos, "--output_dir", photos / "tiles"], status=2)
    assert "is inside --input_dir: the tiles would be read as photographs next time" in res.stderr
