import copy
import warnings
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oftsr
from oftsr.color import bleed_colour
from oftsr.images import load_image
from oftsr.noise import region_noise
from oftsr.resample import upsample_lr, upsample_lr_region
from oftsr.tiling import feather, num_tiles, tile_layout

from conftest import DATA, make_model, need, smooth_image


@pytest.fixture(scope="module")
def strong_student():
    """Random weights with O(1) gain so the velocity clearly depends on context: tiling
    errors would show. (Untrained ADM init is zero at the output and hides everything.)"""
    g = torch.Generator().manual_seed(0)
    unet = oftsr.UNet(oftsr.PRESETS["tiny"])
    w = {k: torch.randn(v.shape, generator=g) * (1.0 / max(1, v[0].numel()) ** 0.5 if v.ndim > 1 else 0.1)
         for k, v in unet.state_dict().items()}
    return make_model(w, sigma_p=0.1)


@pytest.fixture(scope="module")
def photo_lr():
    """A 64x64 LR crop of a real photograph (Set5 'baby'), or a synthetic one without the data."""
    path = DATA / "val" / "Set5" / "baby.png"
    hr = load_image(path)[0][:, :, :256, :256] if path.exists() else smooth_image(256, 256)
    return F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)


def test_upscale_shape_range_and_seed(student):
    img = smooth_image(20, 28)
    out = oftsr.upscale(student, img, t=0.5, seed=3)
    assert out.shape == (1, 3, 80, 112) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, oftsr.upscale(student, img, t=0.5, seed=3))
    assert not torch.equal(out, oftsr.upscale(student, img, t=0.5, seed=4))
    assert not torch.equal(out, oftsr.upscale(student, img, t=0.0, seed=3))
    edge = oftsr.upscale(student, img, t=0.5, seed=2 ** 64 - 1)  # the largest seed, ComfyUI's widget's too
    assert not torch.equal(edge, out)
    for bad in (-1, 2 ** 64, [3, -2]):  # would wrap onto another seed's image
        with pytest.raises(ValueError, match=r"seed must be from 0 to 2\*\*64 - 1 \(18446744073709551615\), got -?\d+"):
            oftsr.upscale(student, torch.cat([img, img]), t=0.5, seed=bad)


def test_t_default_is_the_middle_of_the_trade_off_as_in_the_cli(strong_student):
    from oftsr.cli import build_parser

    img = smooth_image(12, 12)
    cli_t = float(build_parser().parse_args(["upscale", "a.png", "-o", "b.png"]).t)
    assert cli_t == 0.5 and torch.equal(oftsr.upscale(strong_student, img), oftsr.upscale(strong_student, img, t=cli_t))
    assert (oftsr.upscale(strong_student, img) - oftsr.upscale(strong_student, img, t=1.0)).abs().max() > 1e-3


def test_untrained_student_returns_noised_bicubic():
    # ADM init zeroes the output conv: v = 0, so x1 = x0 = sqrt(1-sp^2) x_lr + sp eps exactly.
    model = oftsr.create_model("tiny", role="student", sigma_p=0.0, seed=0)
    img = smooth_image(16, 16)
    expected = (F.interpolate(img * 2 - 1, scale_factor=4, mode="bicubic", antialias=True).clamp(-1, 1) + 1) / 2
    assert (oftsr.upscale(model, img) - expected).abs().max() < 1e-6


def test_batch_matches_single_images(student):
    a, b = smooth_image(16, 16, seed=1), smooth_image(16, 16, seed=2)
    batch = oftsr.upscale(student, torch.cat([a, b]), t=0.7, seed=0)
    # the noise of item 0 is the first draw of the seed, so item 0 equals the single run
    assert (batch[0] - oftsr.upscale(student, a, t=0.7, seed=0)[0]).abs().max() < 1e-5
    assert batch.shape == (2, 3, 64, 64)


def test_a_seed_per_image_gives_each_the_result_it_has_alone(strong_student, teacher):
    a, b = smooth_image(16, 16, seed=1), smooth_image(16, 16, seed=2)
    alone = [oftsr.upscale(strong_student, a, t=0.7, seed=3), oftsr.upscale(strong_student, b, t=0.7, seed=5)]
    batch = oftsr.upscale(strong_student, torch.cat([a, b]), t=0.7, seed=[3, 5])
    assert (batch - torch.cat(alone)).abs().max() < 1e-5
    one_seed = oftsr.upscale(strong_student, torch.cat([a, b]), t=0.7, seed=5)
    assert (one_seed[1] - alone[1][0]).abs().mean() > 1e-3  # one seed: image 1's noise depends on its place
    copies = oftsr.upscale(strong_student, torch.cat([a, a]), t=0.7, seed=[3, 3])
    assert (copies[0] - copies[1]).abs().max() < 1e-5
    sampled = oftsr.sample(teacher, torch.cat([a, b]), steps=2, seed=[3, 5])
    assert (sampled[1] - oftsr.sample(teacher, b, steps=2, seed=5)[0]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="seed: 1 seeds for a batch of 2 images"):
        oftsr.upscale(strong_student, torch.cat([a, b]), seed=[3])
    for seeds in (torch.tensor([3, 5]), np.array([3, 5]), (3, 5)):  # any 1-D run of integers
        assert torch.equal(oftsr.upscale(strong_student, torch.cat([a, b]), t=0.7, seed=seeds), batch)


def test_results_are_ordinary_tensors(student, teacher):
    """Not inference tensors: a caller may change them in place or use them in autograd."""
    img = smooth_image(8, 8)
    for out in (oftsr.upscale(student, img), oftsr.sample(teacher, img, steps=1)):
        assert not out.is_inference() and not out.requires_grad
        out.clamp_(0, 0.5)[..., 0, 0] = 0.25
        assert out.max() == 0.5 and out[0, 0, 0, 0] == 0.25
        weight = torch.ones(1, 3, 1, 1, requires_grad=True)
        F.conv2d(out, weight).sum().backward()
        assert torch.allclose(weight.grad[0, 0, 0, 0], out[:, 0].sum())


def test_argument_mistakes_are_named(student, teacher):
    img = smooth_image(8, 8)
    for kw, message in [({"seed": None}, "seed must be an integer, got None"),
                        ({"seed": 0.7}, "seed must be an integer, got 0.7"),
                        ({"seed": True}, "seed must be an integer, got True"),
                        ({"t": None}, r"t must be a number in \[0, 1\].*got None"),
                        ({"t": "0.5"}, r"t must be a number in \[0, 1\].*got '0.5'"),
                        ({"t": True}, r"t must be a number in \[0, 1\].*got True"),
                        ({"t": torch.tensor([0.0, 1.0])}, "t must be one number in .0, 1., got a tensor of 2"),
                        ({"tile": 64.5}, "tile must be an integer, got 64.5"),
                        ({"overlap": True}, "overlap must be an integer, got True"),
                        ({"tile_batch": 1.5}, "tile_batch must be an integer, got 1.5"),
                        ({"tile_batch": True}, "tile_batch must be an integer, got True"),
                        ({"tile_batch": 0}, "tile_batch must be at least 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            oftsr.upscale(student, img, **kw)
    for steps, message in ((2.7, "steps must be an integer, got 2.7"), (0, "steps must be at least 1, got 0")):
        with pytest.raises(ValueError, match=message):
            oftsr.sample(teacher, img, steps=steps)
    # numbers of other integer and 0-d tensor types are fine
    same = oftsr.upscale(student, img, t=torch.tensor(0.25), seed=torch.tensor(4), tile=torch.tensor(32))
    assert torch.equal(same, oftsr.upscale(student, img, t=0.25, seed=4, tile=32))
    assert torch.equal(same, oftsr.upscale(student, img, t=np.array([0.25]), seed=4, tile=32))  # one value, as a tensor
    with pytest.raises(ValueError, match="t must be one number in .0, 1., got an array of 2"):
        oftsr.upscale(student, img, t=np.array([0.0, 1.0]))


def test_grayscale_stays_grayscale(student):
    gray = smooth_image(16, 24, channels=1)
    out = oftsr.upscale(student, gray)
    assert out.shape == (1, 1, 64, 96)
    rgb = oftsr.upscale(student, gray.expand(1, 3, 16, 24))
    assert (out - rgb.mean(1, keepdim=True)).abs().max() < 1e-6


def test_rgba_keeps_alpha(student):
    img = smooth_image(16, 16)
    alpha = torch.zeros(1, 1, 16, 16)
    alpha[..., 4:12, 4:12] = 1.0
    out = oftsr.upscale(student, torch.cat([img, alpha], 1))
    assert out.shape == (1, 4, 64, 64)
    assert torch.equal(out[:, :3], oftsr.upscale(student, bleed_colour(img, alpha)))
    assert out[0, 3, 24:40, 24:40].min() == 1.0 and out[0, 3, :8, :8].max() == 0.0
    assert out[:, 3].min() >= 0 and out[:, 3].max() <= 1
    opaque = oftsr.upscale(student, torch.cat([img, torch.ones(1, 1, 16, 16)], 1))[:, 3]
    assert torch.equal(opaque, torch.ones_like(opaque))  # exactly 1, not 1 - 2e-7: `alpha == 1` holds


def test_the_colour_under_full_transparency_leaves_no_trace(student):
    # Editors leave black (or anything) under transparent pixels: the result must not depend on it.
    img, alpha = smooth_image(16, 16), torch.zeros(1, 1, 16, 16)
    alpha[..., 3:13, 5:11] = 1.0
    alpha[..., 3:13, 4] = 0.5  # a soft edge keeps its own colour
    black = torch.cat([img * (alpha > 0), alpha], 1)
    green = black.clone()
    green[:, 1] += (alpha[:, 0] == 0).float()
    assert torch.equal(oftsr.upscale(student, black, seed=0), oftsr.upscale(student, green, seed=0))
    filled = bleed_colour(black[:, :3], alpha)
    assert torch.equal(filled[..., 3:13, 4:11], black[:, :3, 3:13, 4:11])  # visible pixels are untouched
    visible = img[..., 3:13, 4:11].flatten(2)
    hidden = filled[..., alpha[0, 0] == 0]  # filled from the visible colours: within their range
    assert (hidden >= visible.amin(-1)[..., None] - 1e-6).all() and (hidden <= visible.amax(-1)[..., None] + 1e-6).all()
    assert torch.equal(bleed_colour(img, torch.ones(1, 1, 16, 16)), img)


def test_gray_alpha_stays_gray_alpha(student, teacher):
    # C = 2 directly: the gray result of the gray image, and the alpha the RGBA path up-samples
    gray, alpha = smooth_image(16, 16, channels=1), torch.zeros(1, 1, 16, 16)
    alpha[..., 4:12, 4:12] = 1.0
    out = oftsr.upscale(student, torch.cat([gray, alpha], 1), t=0.5)
    rgba = oftsr.upscale(student, torch.cat([gray.expand(1, 3, 16, 16), alpha], 1), t=0.5)
    assert out.shape == (1, 2, 64, 64)
    assert torch.equal(out[:, 1:], rgba[:, 3:])
    assert torch.equal(out[:, :1], oftsr.upscale(student, bleed_colour(gray, alpha), t=0.5))
    assert (out[:, :1] - rgba[:, :3].mean(1, keepdim=True)).abs().max() < 1e-6
    levels = oftsr.upscale(student, torch.cat([gray, alpha], 1), t=0.5, out_dtype=torch.uint8)
    assert levels.shape == (1, 2, 64, 64) and torch.equal(levels, (out * 255).round().to(torch.uint8))
    hq = oftsr.sample(teacher, torch.cat([gray, alpha], 1), steps=1, solver="euler")
    assert hq.shape == (1, 2, 64, 64) and torch.equal(hq[:, 1:], rgba[:, 3:])


@pytest.mark.parametrize("t", [-0.1, 1.01, math.nan, math.inf])
def test_out_of_range_t(student, t):
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        oftsr.upscale(student, smooth_image(8, 8), t=t)


def test_bad_images(student):
    with pytest.raises(ValueError, match="NaN"):
        oftsr.upscale(student, torch.full((1, 3, 8, 8), math.nan))
    with pytest.raises(ValueError, match="empty"):
        oftsr.upscale(student, torch.zeros(1, 3, 0, 8))
    with pytest.raises(ValueError, match="channels"):
        oftsr.upscale(student, torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor in \[0, 1\], got \(3, 8, 8\): add the batch axis"):
        oftsr.upscale(student, torch.zeros(3, 8, 8))


def test_the_usual_image_mix_ups_are_named_with_their_fix(student, tmp_path):
    from PIL import Image

    from oftsr.images import load_image

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    for image, message in [
            (torch.zeros(8, 6, 3), r"got \(8, 6, 3\): channels come first, image.permute\(2, 0, 1\)\[None\]"),
            (torch.zeros(1, 8, 6, 3), r"channels, got 8: channels come second, image.permute\(0, 3, 1, 2\)"),
            (np.zeros((8, 6, 3), np.uint8), r"got ndarray \(a numpy \(H, W, C\) array: "
                                             r"torch.from_numpy\(a\).permute\(2, 0, 1\)\[None\] / 255\)"),
            (np.zeros((1, 3, 8, 6), np.float32), r"got ndarray \(a numpy \(B, C, H, W\) array: torch.from_numpy\(a\)\)"),
            (np.zeros((1, 8, 6, 3), np.uint8), r"got ndarray \(a numpy \(B, H, W, C\) array: "
                                                r"torch.from_numpy\(a\).permute\(0, 3, 1, 2\) / 255\)"),
            (torch.full((1, 3, 8, 6), 65535.0), r"maximum is 65535: divide 16-bit levels \(0-65535\) by 65535"),
            (np.zeros((3, 8, 6), np.float32), r"\(a numpy \(C, H, W\) array: torch.from_numpy\(a\)\[None\]\)"),
            (np.zeros((8, 6), np.uint8), r"\(a numpy \(H, W\) gray array: torch.from_numpy\(a\)\[None\]\[None\] / 255\)"),
            (Image.open(tmp_path / "a.png"), r"got PngImageFile \(a Pillow image: torch.from_numpy\(numpy.asarray\("
                                             r"im.convert\('RGB'\)\)\).permute\(2, 0, 1\)\[None\] / 255, or read its "
                                             r"file with oftsr.images.load_image, which takes a path, bytes or an open"),
            (load_image(tmp_path / "a.png"), r"got tuple: load_image returns \(image, bit_depth\); unpack it")]:
        with pytest.raises(ValueError, match=message):
            oftsr.upscale(student, image)


def test_tiny_images(student):
    for h, w in [(1, 1), (1, 7), (2, 3)]:
        out = oftsr.upscale(student, smooth_image(h, w) if min(h, w) > 1 else torch.rand(1, 3, h, w))
        assert out.shape == (1, 3, 4 * h, 4 * w) and torch.isfinite(out).all()
    # The trained model keeps a tiny image's levels (padded to the network's multiple, not
    # with zeros, which would darken it): a flat level stays near itself, and two halves apart.
    x4 = oftsr.load_model("x4")
    for h, w in [(1, 1), (1, 7), (2, 3), (3, 1)]:
        for level in (0.2, 0.5, 0.8):
            out = oftsr.upscale(x4, torch.full((1, 3, h, w), level), t=0)
            assert out.shape == (1, 3, 4 * h, 4 * w) and 0 <= out.min() and out.max() <= 1
            assert abs(float(out.mean()) - level) < 0.07 and float((out - level).abs().max()) < 0.16, (h, w, level)
    halves = torch.cat([torch.full((1, 3, 2, 2), 0.2), torch.full((1, 3, 2, 2), 0.8)], dim=-1)
    out = oftsr.upscale(x4, halves, t=0)
    assert float(out[..., :6].mean()) < 0.3 and float(out[..., -6:].mean()) > 0.7


def test_role_mismatch_errors(student, teacher):
    with pytest.raises(ValueError, match="needs a student model, but this model is a teacher"):
        oftsr.upscale(teacher, smooth_image(8, 8))
    with pytest.raises(ValueError, match="needs a teacher model, but this model is a student"):
        oftsr.sample(student, smooth_image(8, 8), steps=2, solver="euler")


@pytest.mark.parametrize("solver,steps,nfe", [("euler", 3, 3), ("midpoint", 3, 5), ("heun", 2, 3)])
def test_teacher_sample_solvers(teacher, solver, steps, nfe):
    info = {}
    out = oftsr.sample(teacher, smooth_image(12, 12), steps=steps, solver=solver, seed=1, info=info)
    assert out.shape == (1, 3, 48, 48) and 0 <= out.min() and out.max() <= 1
    assert info["nfe"] == nfe


def test_teacher_sample_refuses_an_output_that_cannot_fit(teacher, monkeypatch):
    import psutil

    free = oftsr.devices.available_memory(torch.device("cpu"))  # told on every OS
    assert free is not None and 2**20 < free <= psutil.virtual_memory().total
    calls = []

    def scarce(device):
        calls.append(device)
        return 3 * 3 * 48 * 48 * 4 - 1  # one byte short of three float32 buffers of the 48x48 output

    monkeypatch.setattr(oftsr.inference, "available_memory", scarce)
    with pytest.raises(ValueError, match=r"whole 48x48 output .* at least 0\.0 GiB, but 0\.0 GiB is free on cpu: use "
                                         r"the one-step student"):
        oftsr.sample(teacher, smooth_image(12, 12), steps=1, solver="euler")
    assert calls == [torch.device("cpu")]
    monkeypatch.setattr(oftsr.inference, "available_memory", lambda device: 3 * 3 * 48 * 48 * 4)  # just enough
    with monkeypatch.context() as m:
        m.setattr(oftsr.inference, "_check_memory", lambda *a: None)  # the network's need: the test below
        assert oftsr.sample(teacher, smooth_image(12, 12), steps=1, solver="euler").shape == (1, 3, 48, 48)
    monkeypatch.setattr(oftsr.inference, "available_memory", lambda device: None)  # cannot be told: no check
    assert oftsr.sample(teacher, smooth_image(12, 12), steps=1, solver="euler").shape == (1, 3, 48, 48)


def test_a_network_evaluation_that_cannot_fit_is_refused_before_any_work(student, teacher, monkeypatch):
    """The estimate of one evaluation (`activation_memory`) against what is free: tile=None
    told to pass tile=512, a tile too big told to be smaller; an out-of-memory error, which
    the command line and the nodes retry with smaller tiles."""
    from oftsr.devices import is_out_of_memory
    from oftsr.inference import NotEnoughMemory, activation_memory

    whole = activation_memory(student, 1, 48, 48)
    assert whole == 48 * 48 * student.config.model_channels * 56  # float32: 56 bytes per pixel and channel
    assert activation_memory(student.to(torch.bfloat16), 1, 48, 48) == 48 * 48 * student.config.model_channels * 36
    student.float()
    calls = []
    monkeypatch.setattr(oftsr.inference, "available_memory", lambda device: calls.append(device) or whole - 1)
    img = smooth_image(12, 12)
    with pytest.raises(NotEnoughMemory, match=r"^upscale\(\): the whole 48x48 output at once need about 0\.0 GiB on "
                                              r"cpu, but 0\.0 GiB is free: pass tile=512 ") as caught:
        oftsr.upscale(student, img)
    assert isinstance(caught.value, MemoryError) and isinstance(caught.value, ValueError)
    assert is_out_of_memory(caught.value) and calls == [torch.device("cpu")]
    with pytest.raises(NotEnoughMemory, match=r"2 whole 48x48 outputs at once"):
        oftsr.upscale(student, img.repeat(2, 1, 1, 1))
    with pytest.raises(NotEnoughMemory, match=r"^sample\(\): the whole 48x48 output at once .* pass tile=512"):
        oftsr.sample(teacher, img, steps=1, solver="euler")

    tiled = oftsr.upscale(student, img, tile=32, overlap=8)  # a 32 px tile fits
    with pytest.raises(NotEnoughMemory, match=r"3 32x32 tiles at once need about .*: pass a smaller tile or tile_batch$"):
        oftsr.upscale(student, img, tile=32, overlap=8, tile_batch=3)
    monkeypatch.setattr(oftsr.inference, "available_memory", lambda device: activation_memory(student, 1, 32, 32) - 1)
    with pytest.raises(NotEnoughMemory, match=r"a 32x32 tile at once need about .*: pass a smaller tile$"):
        oftsr.upscale(student, img, tile=32, overlap=8)
    monkeypatch.setattr(oftsr.inference, "available_memory", lambda device: whole)  # just enough
    assert oftsr.upscale(student, img).shape == (1, 3, 48, 48)
    monkeypatch.setattr(oftsr.inference, "available_memory", lambda device: None)  # cannot be told: no check
    assert torch.equal(oftsr.upscale(student, img, tile=32, overlap=8), tiled)


def test_the_library_takes_only_its_own_models_and_says_how_to_load_one(student):
    img = smooth_image(8, 8)
    with pytest.raises(TypeError, match=r"^upscale\(\) needs an OFTSRModel, got str: load one with "
                                        r"oftsr.load_model\('x4'\)$"):
        oftsr.upscale("x4", img)
    with pytest.raises(TypeError, match=r"^sample\(\) needs an OFTSRModel, got Linear: load one with"):
        oftsr.sample(torch.nn.Linear(2, 2), img)
    with pytest.raises(TypeError, match=r"^load_model needs a bundled model's name .* got NoneType$"):
        oftsr.load_model(None)
    with pytest.raises(ValueError, match=r"^load_model: device meta: a meta tensor holds no values"):
        oftsr.load_model("x4", device="meta")


def test_available_memory_on_apple_gpus_is_metals_recommendation_less_what_is_held(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 12 * 2**30, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 5 * 2**30, raising=False)
    assert oftsr.devices.available_memory(torch.device("mps")) == 7 * 2**30
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 13 * 2**30, raising=False)
    assert oftsr.devices.available_memory(torch.device("mps")) == 0  # beyond the recommendation: nothing left
    assert oftsr.devices.available_memory(torch.device("meta")) is None  # cannot be told


def test_teacher_euler_one_step_equals_student_rule(random_unet_weights):
    # One Euler step from t=0.001 over 0.999 is exactly the student's update at t=0.001.
    teacher, student = make_model(random_unet_weights, "teacher"), make_model(random_unet_weights, "student")
    img = smooth_image(12, 12)
    a = oftsr.sample(teacher, img, steps=1, solver="euler", seed=5)
    b = oftsr.upscale(student, img, t=0.001, seed=5)
    assert (a - b).abs().max() < 1e-6


def test_teacher_adaptive_reports_nfe(teacher):
    info = {}
    oftsr.sample(teacher, smooth_image(8, 8), steps=1, solver="adaptive", info=info)
    assert info["nfe"] >= 6


def test_adaptive_solver_gives_each_image_of_a_batch_its_result_alone(strong_student):
    """dopri5 sizes its steps by one error norm over its state: a batch is integrated image
    by image, so an image's result does not depend on the others (solved together, the
    photo-like image below moved by about 0.01)."""
    teacher = oftsr.OFTSRModel(strong_student.unet, sigma_p=0.1, role="teacher", scale=4).eval()
    a, b = smooth_image(8, 8, seed=1), torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    alone, counts = [], []
    for image, seed in ((a, 3), (b, 5)):
        info = {}
        alone.append(oftsr.sample(teacher, image, solver="adaptive", seed=seed, info=info))
        counts.append(info["nfe"])
    info, ticks = {}, []
    batch = oftsr.sample(teacher, torch.cat([a, b]), solver="adaptive", seed=[3, 5], info=info,
                         callback=lambda i, n: ticks.append((i, n)))
    assert torch.equal(batch, torch.cat(alone))
    assert info["nfe"] == sum(counts) and ticks == [(i, 0) for i in range(1, sum(counts) + 1)]  # counted on


# ----------------------------------------------------------------------------- tiling

def test_tile_geometry():
    assert tile_layout(100, 100, 8) == (100, [0])
    assert tile_layout(300, 128, 32) == (128, [0, 86, 172])  # 3 tiles, evenly spread
    assert tile_layout(2048, 512, 64) == (464, [0, 396, 792, 1188, 1584])  # 5 tiles shrunk to 464, not 512
    for size, tile, overlap in [(300, 128, 32), (2048, 512, 32), (2048, 512, 64), (1000, 96, 24), (513, 512, 64)]:
        length, starts = tile_layout(size, tile, overlap)
        assert length <= tile and starts[0] == 0 and starts[-1] + length == size
        assert all(a + length - b >= overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    assert num_tiles(300, 100, 128, 32) == 3
    w = feather(10, 4, True, False)
    assert w[:4].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8]) and w[4:].tolist() == [1.0] * 6
    assert feather(10, 4, False, False).tolist() == [1.0] * 10


def test_start_point_does_not_depend_on_the_tiling():
    # With a zero-velocity model the output is x0: tiling must not change the noise or x_lr
    # (up to float rounding in the feathered blend, 1 ulp).
    model = oftsr.create_model("tiny", role="student", sigma_p=0.5, seed=0)
    img = smooth_image(40, 56)
    whole = oftsr.upscale(model, img, seed=11)
    for tile, overlap in [(64, 16), (96, 0), (48, 24)]:
        assert (oftsr.upscale(model, img, seed=11, tile=tile, overlap=overlap) - whole).abs().max() < 1e-6


def _seam_ratio(out: torch.Tensor, tile: int, overlap: int) -> float:
    """Gradient energy across the tile edges against everywhere else (both axes)."""
    ratios = []
    for dim in (-1, -2):
        n = out.shape[dim]
        grad = out.diff(dim=dim).pow(2)
        energy = grad.mean(dim=[d for d in range(4) if d != dim % 4])
        length, starts = tile_layout(n, tile, overlap)
        cuts = sorted({s - 1 for s in starts if s > 0} | {s + length - 1 for s in starts if s + length < n})
        mask = torch.zeros(n - 1, dtype=torch.bool)
        mask[cuts] = True
        ratios.append((energy[mask].mean() / energy[~mask].mean()).item())
    return max(ratios)


def test_tiled_output_is_seam_free_and_close_to_untiled(strong_student, photo_lr):
    whole = oftsr.upscale(strong_student, photo_lr, t=0.5)
    tiled = oftsr.upscale(strong_student, photo_lr, t=0.5, tile=128, overlap=32)
    diff = (tiled - whole).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15  # a random net with global attention context
    # Feathered tiles: no more gradient energy at the tile edges than the untiled image has there.
    assert _seam_ratio(tiled, 128, 32) < 1.05 * _seam_ratio(whole, 128, 32)
    # Control: hard-edged tiles (no overlap) do show seams under the same measure.
    hard = oftsr.upscale(strong_student, photo_lr, t=0.5, tile=64, overlap=0)
    assert _seam_ratio(hard, 64, 0) > 1.3 * _seam_ratio(whole, 64, 0)
    assert _seam_ratio(oftsr.upscale(strong_student, photo_lr, t=0.5, tile=64, overlap=16), 64, 16) \
        < 1.05 * _seam_ratio(whole, 64, 16)


# What docs/cli.md and the seed tooltip state for the bundled student (t = 0.5, seed 0): the
# start noise is the same for any tiling, the result differs by the network's context.
# Measured on a 144 px crop of Set5 "baby" upscaled to 576 px, as |diff| x 255:
TILING_DIFF_BOUNDS = {128: (3.0, 80.0), 512: (0.9, 16.0)}  # measured mean 2.53 / max 68.8, mean 0.75 / max 11.9


def test_bundled_student_tiled_against_whole_image_on_a_photo():
    model = oftsr.load_model(oftsr.default_model_path("student"))
    photo = load_image(need(DATA / "val" / "Set5" / "baby.png"))[0][..., 100:244, 100:244]
    whole = oftsr.upscale(model, photo, t=0.5, seed=0)
    for tile, (mean_bound, max_bound) in TILING_DIFF_BOUNDS.items():
        diff = (oftsr.upscale(model, photo, t=0.5, seed=0, tile=tile) - whole).abs() * 255
        assert diff.mean() < mean_bound and diff.max() < max_bound, (tile, diff.mean().item(), diff.max().item())
        assert diff.max() > 1  # not the same result: the network's context differs


def test_tile_batch_gives_same_result(strong_student):
    img = smooth_image(40, 40)
    one = oftsr.upscale(strong_student, img, tile=64, overlap=16)
    many = oftsr.upscale(strong_student, img, tile=64, overlap=16, tile_batch=4)
    assert (one - many).abs().max() < 1e-5


def test_tiled_teacher_and_progress(teacher):
    img = smooth_image(40, 40)
    calls = []
    out = oftsr.sample(teacher, img, steps=2, solver="midpoint", tile=64, overlap=16, callback=lambda i, n: calls.append(i))
    whole = oftsr.sample(teacher, img, steps=2, solver="midpoint")
    assert calls == [1, 2] and (out - whole).abs().mean() < 0.01


def test_teacher_progress_tile_by_tile(teacher):
    from oftsr.inference import tile_evaluation_progress
    from oftsr.sampling import evaluations

    assert [evaluations(s, 4) for s in ("euler", "midpoint", "heun", "adaptive")] == [4, 7, 7, None]
    img = smooth_image(40, 40)  # 160 px out, 64 px tiles overlapping 16: 3 x 3 tiles
    for solver, steps in (("euler", 2), ("midpoint", 2)):
        seen = []
        oftsr.sample(teacher, img, steps=steps, solver=solver, tile=64, overlap=16,
                     tile_callback=tile_evaluation_progress(lambda i, n: seen.append((i, n)), solver, steps))
        total = evaluations(solver, steps) * 9
        assert seen == [(i, total) for i in range(1, total + 1)]
    seen, info = [], {}
    oftsr.sample(teacher, img, solver="adaptive", tile=64, overlap=16, info=info,
                 tile_callback=tile_evaluation_progress(lambda i, n: seen.append((i, n)), "adaptive", 16))
    assert len(seen) == 9 * info["nfe"] and {n for _, n in seen} == {0}  # every tile; the total is not known
    assert [i for i, _ in seen] == sorted(i for i, _ in seen) and seen[-1][0] == info["nfe"]
    assert [i for i, _ in seen[:9]] == [0] * 8 + [1]  # evaluations finished


def test_inference_builds_no_autograd_graph(teacher, student):
    # the fixtures' parameters require grad, as a model being trained does
    assert all(p.requires_grad for p in teacher.parameters())
    img = smooth_image(8, 8)
    for out in (oftsr.sample(teacher, img, steps=2, solver="euler"), oftsr.sample(teacher, img, solver="adaptive"),
                oftsr.upscale(student, img)):
        assert not out.requires_grad and out.grad_fn is None


def test_tile_progress_callback(student):
    seen = []
    oftsr.upscale(student, smooth_image(40, 40), tile=64, overlap=16, callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 9), (2, 9), (3, 9), (4, 9), (5, 9), (6, 9), (7, 9), (8, 9), (9, 9)]


def test_bad_tiling_arguments(student):
    with pytest.raises(ValueError, match="tile must be at least"):
        oftsr.upscale(student, smooth_image(8, 8), tile=8)
    with pytest.raises(ValueError, match="overlap"):
        oftsr.upscale(student, smooth_image(32, 32), tile=64, overlap=40)


# ----------------------------------------------------------------------------- noise, condition and memory

def test_region_noise_is_the_crop_of_the_whole_image_noise():
    whole = region_noise(7, 2, 0, 0, 150, 130)
    assert whole.shape == (2, 3, 150, 130) and abs(whole.mean().item()) < 0.02 and abs(whole.std().item() - 1) < 0.02
    for top, left, h, w in [(0, 0, 64, 64), (1, 63, 65, 2), (100, 70, 50, 60), (149, 129, 1, 1)]:
        assert torch.equal(region_noise(7, 2, top, left, h, w), whole[..., top:top + h, left:left + w])
    assert not torch.equal(region_noise(8, 1, 0, 0, 150, 130), whole[:1])  # another seed
    assert not torch.equal(whole[0], whole[1])  # images of a batch get their own noise
    # the 64 px blocks are unrelated: no repeats across a block edge
    assert (whole[:, :, :64, :64] - whole[:, :, 64:128, :64]).abs().mean() > 1


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("degradation", ["bicubic", "noisy_avgpool", "realesrgan"])
def test_condition_of_a_region_equals_the_crop_of_the_whole(scale, degradation):
    lr = torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole = upsample_lr(lr, scale, degradation)
    h, w = whole.shape[-2:]
    # scale 3: 1/3 is not exact in float, and the kernel positions differ in the last bits
    tol = 1e-5 if scale == 3 else 1e-6
    for top, left, rh, rw in [(0, 0, h, w), (0, 0, 17, 23), (h - 13, w - 9, 13, 9), (5, 7, 50, 31), (h - 1, 0, 1, w),
                              (31, 2, 64, 64)]:
        rh, rw = min(rh, h - top), min(rw, w - left)
        region = upsample_lr_region(lr, scale, degradation, top, left, rh, rw)
        assert region.shape == (2, 3, rh, rw)
        assert (region - whole[..., top:top + rh, left:left + rw]).abs().max() < tol


def test_integer_outputs_are_the_rounded_float_output(strong_student):
    img = torch.cat([smooth_image(24, 20), torch.linspace(0, 1, 20).expand(1, 1, 24, 20)], dim=1)  # RGBA
    ref = oftsr.upscale(strong_student, img, t=0.5, tile=48, overlap=16)
    for dtype, peak in [(torch.uint8, 255), (torch.uint16, 65535)]:
        out = oftsr.upscale(strong_student, img, t=0.5, tile=48, overlap=16, out_dtype=dtype)
        assert out.dtype == dtype and out.shape == ref.shape == (1, 4, 96, 80)
        assert torch.equal(out.int(), (ref * peak).round().int())
    with pytest.raises(ValueError, match="out_dtype"):
        oftsr.upscale(strong_student, img, out_dtype=torch.float16)


MEMORY_CHILD = r"""
import sys
import torch
from torch import nn
import oftsr

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

class StandIn(nn.Module):
    # a cheap local network with the UNet's interface: the whole-image buffers dominate
    class config:
        size_multiple = 1
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 3, 3, padding=1)
    def forward(self, x, t):
        return self.conv(x)

model = oftsr.OFTSRModel(StandIn(), sigma_p=0.2, role="student", scale=4).eval()
image = torch.rand(1, 3, 2000, 250)
before = status("VmRSS")
out = oftsr.upscale(model, image, tile=256, overlap=32, out_dtype=getattr(torch, sys.argv[1]))
print(status("VmHWM") - before, out.numel() * out.element_size())
"""


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_memory_is_bounded_by_the_tile_not_the_image(dtype):
    # An 8000 x 1000 output (8 MP): before, noise, x_lr, x0, the velocity, the blend sums and the
    # result were whole-image float32 buffers (490 MiB above the start); now the output and
    # bands of 256 rows x 1000 px are (about 40 MiB besides the output).
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read the peak resident set size")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a cheap network: threads would only add contention
    run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, dtype], capture_output=True, text=True, timeout=300,
                         env=env, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    peak, output = map(int, run.stdout.split())
    assert output == 8000 * 1000 * 3 * (4 if dtype == "float32" else 1)
    assert peak < output + 64 * 2**20, f"peak {peak / 2**20:.0f} MiB over the start for a {output / 2**20:.0f} MiB result"


# ----------------------------------------------------------------------------- the default fast path

def test_load_model_returns_the_fast_path_matching_the_plain_path(random_unet_weights, tmp_path):
    from oftsr.unet import reference_ops

    oftsr.save_model(make_model(random_unet_weights), tmp_path / "m.safetensors")
    fast = oftsr.load_model(tmp_path / "m.safetensors")
    assert fast.channels_last and fast.layout_follows_device  # the CPU's faster layout, without optimize()
    assert fast.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = make_model(random_unet_weights)  # NCHW, as the constructor makes it
    assert not plain.channels_last
    x = torch.rand(2, 3, 40, 56) * 2 - 1
    with torch.inference_mode():
        with reference_ops():  # ADM's op order and einsum attention
            expected = plain.velocity(x, x.flip(1), 0.3)
        for batch in (1, 2):  # one image and a batch take different scale-shift paths
            v = fast.velocity(x[:batch], x.flip(1)[:batch], 0.3)
            assert (v - expected[:batch]).abs().max().item() < 1e-5  # tolerance: float32 reassociation only
    image = smooth_image(24, 32)
    with reference_ops():
        reference_image = oftsr.upscale(plain, image, t=1.0, seed=0)
    assert (oftsr.upscale(fast, image, t=1.0, seed=0) - reference_image).abs().max().item() < 1e-5


def test_layout_choice_follows_the_device_on_moves(random_unet_weights):
    model = make_model(random_unet_weights).optimize()
    model.double()  # another dtype, same device: the layout stays
    assert model.channels_last and model.unet.out[2].weight.is_contiguous(memory_format=torch.channels_last)
    pinned = make_model(random_unet_weights).optimize(channels_last=False)
    pinned.double()
    assert not pinned.channels_last and not pinned.layout_follows_device
    if torch.cuda.is_available():
        model.cuda()
        from oftsr import triton_groupnorm
        expected = (triton_groupnorm.installed() and torch.version.hip is None
                    and torch.cuda.get_device_capability() >= (8, 0))  # and the kernels work there
        assert model.channels_last is expected and model.unet.out[2].weight.is_contiguous(
            memory_format=torch.channels_last if expected else torch.contiguous_format)


@pytest.mark.parametrize("triton_installed, capability, expected", [
    (True, (9, 0), True), (True, (8, 0), True), (True, (7, 5), False), (False, (9, 0), False)])
def test_cuda_layout_is_channels_last_where_the_triton_group_norm_runs(monkeypatch, triton_installed, capability,
                                                                       expected):
    # channels_last on CUDA pays off only with the Triton GroupNorm (H100: 1.39x in bf16);
    # with PyTorch's NCHW-only GroupNorm it was 0.70x.
    from oftsr import triton_groupnorm
    monkeypatch.setattr(triton_groupnorm, "installed", lambda: triton_installed)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(triton_groupnorm, "kernels_work", lambda device: True)  # checked on the GPU itself
    monkeypatch.setattr(torch.version, "hip", None)
    triton_groupnorm._capable.cache_clear()
    try:
        assert oftsr.model.fastest_layout_is_channels_last(torch.device("cuda", 0)) is expected
        monkeypatch.setattr(torch.version, "hip", "6.2")  # AMD GPUs (not measured) keep NCHW
        triton_groupnorm._capable.cache_clear()
        assert oftsr.model.fastest_layout_is_channels_last(torch.device("cuda", 0)) is False
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(triton_groupnorm, "kernels_work", lambda device: False)  # a broken Triton: NCHW
        triton_groupnorm._capable.cache_clear()
        assert oftsr.model.fastest_layout_is_channels_last(torch.device("cuda", 0)) is False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no driver: no error, NCHW
        assert oftsr.model.fastest_layout_is_channels_last(torch.device("cuda")) is False
    finally:
        triton_groupnorm._capable.cache_clear()


def test_a_triton_group_norm_that_fails_or_is_wrong_is_not_used(monkeypatch):
    from oftsr import triton_groupnorm

    def reference(x, groups, weight=None, bias=None, eps=1e-5, silu=False, x_bias=None, resample=None, x2=None,
                  x_stats=None, x2_stats=None, pool=F.avg_pool2d, up="nearest", join=lambda a, b: torch.cat([a, b], 1)):
        # what the kernels compute, in PyTorch's ops: (C,) or per-image (N, C) affine
        x = x if x2 is None else join(x, x2)
        dtype, x = x.dtype, x.float()
        x = x if x_bias is None else x + x_bias[:, None, None]
        y = F.group_norm(x, groups, eps=eps)
        y = y if weight is None else y * weight.reshape(-1, x.shape[1], 1, 1)
        y = y if bias is None else y + bias.reshape(-1, x.shape[1], 1, 1)
        y = F.silu(y) if silu else y
        y = pool(y, 2) if resample == "down" else F.interpolate(y, scale_factor=2.0, mode=up) if resample == "up" else y
        return y.to(dtype)

    def add(h, skip, bias, skip_resample=None, up="nearest"):
        if skip_resample:
            skip = F.avg_pool2d(skip, 2) if skip_resample == "down" else F.interpolate(skip, scale_factor=2.0, mode=up)
        return h + skip + bias[:, None, None], None  # (the partial sums: None, the norm sums itself)

    def broken(*args, **kwargs):
        raise RuntimeError("failed to build the launcher")

    for norm, residual, works, warning in [
            (reference, add, True, None),
            (broken, add, False, "does not run on cpu .*failed to build the launcher"),
            (lambda *a, **k: reference(*a, **k) + 0.01, add, False, "is off on cpu by 0.01"),
            (reference, broken, False, "does not run on cpu .*failed to build the launcher"),  # every kernel is checked
            (reference, lambda h, s, b, r=None: (add(h, s, b, r)[0] + 0.5, None), False, "is off on cpu by 0.5"),
            # the up and down blocks' variants are checked too, each on its own
            (functools.partial(reference, pool=F.max_pool2d), add, False, "is off on cpu by"),
            (functools.partial(reference, up="bilinear"), add, False, "is off on cpu by"),
            (reference, functools.partial(add, up="bilinear"), False, "is off on cpu by"),
            # and the decoder blocks' input given as two tensors
            (functools.partial(reference, join=lambda a, b: torch.cat([b, a], 1)), add, False, "is off on cpu by"),
            (reference, lambda h, s, b, r=None: add(h, s, b, r and "up"), False, "does not run on cpu")]:
        monkeypatch.setattr(triton_groupnorm, "group_norm_nhwc", norm)
        monkeypatch.setattr(triton_groupnorm, "residual_add", residual)
        state = torch.get_rng_state()
        if warning is None:
            assert triton_groupnorm.kernels_work(torch.device("cpu")) is works
        else:
            with pytest.warns(RuntimeWarning, match=warning):
                assert triton_groupnorm.kernels_work(torch.device("cpu")) is works
        assert torch.equal(torch.get_rng_state(), state)  # the check draws no random numbers
    assert oftsr.model.fastest_layout_is_channels_last(torch.device("cpu")) is True

    # Each activation dtype is compiled apart, so checked apart: bf16 within its rounding,
    # and a kernel wrong only in bf16 is caught there.
    monkeypatch.setattr(triton_groupnorm, "group_norm_nhwc", reference)
    monkeypatch.setattr(triton_groupnorm, "residual_add", add)
    assert triton_groupnorm.kernels_work(torch.device("cpu"), torch.bfloat16) is True
    monkeypatch.setattr(triton_groupnorm, "group_norm_nhwc",
                        lambda x, *a, **k: reference(x, *a, **k) + (0.1 if x.dtype == torch.bfloat16 else 0))
    assert triton_groupnorm.kernels_work(torch.device("cpu")) is True
    with pytest.warns(RuntimeWarning, match=r"is off on cpu by 0.1\d* in torch.bfloat16"):
        assert triton_groupnorm.kernels_work(torch.device("cpu"), torch.bfloat16) is False
    # on a GPU: float32 is checked with the device, each half type when a tensor first has it
    checked = []
    monkeypatch.setattr(triton_groupnorm, "kernels_work", lambda device, dtype: checked.append(dtype) or dtype != torch.float16)
    triton_groupnorm._works_in.cache_clear()
    try:
        assert triton_groupnorm._works_in(0, torch.float32) and triton_groupnorm._works_in(0, torch.bfloat16)
        assert not triton_groupnorm._works_in(0, torch.float16) and not triton_groupnorm._works_in(0, torch.float16)
        assert checked == [torch.bfloat16, torch.float16]  # once each
    finally:
        triton_groupnorm._works_in.cache_clear()


def test_integer_or_0_255_input_is_refused():
    model = oftsr.create_model("tiny", role="student")
    levels = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="floating-point tensor in \\[0, 1\\], got torch.uint8: divide 8-bit"):
        oftsr.upscale(model, levels)
    with pytest.raises(ValueError, match="maximum is 255: divide 0-255 values by 255"):
        oftsr.upscale(model, torch.full((1, 3, 8, 8), 255.0))
    assert oftsr.upscale(model, torch.full((1, 3, 8, 8), 1.02)).shape == (1, 3, 32, 32)  # overshoot is clamped
    signed = smooth_image(8, 8) * 2 - 1  # the [-1, 1] of ML code would lose its darker half to the clamp
    with pytest.raises(ValueError, match=r"minimum is -0.\d+: map \[-1, 1\] values to \[0, 1\] with \(x \+ 1\) / 2"):
        oftsr.upscale(model, signed)
    assert oftsr.upscale(model, torch.full((1, 3, 8, 8), -0.04)).shape == (1, 3, 32, 32)  # undershoot is clamped


def test_a_large_share_of_values_beyond_0_and_1_is_clipped_with_a_warning_at_the_callers_line(tmp_path):
    from oftsr.images import save_image

    model = oftsr.create_model("tiny", role="student")
    image = smooth_image(16, 16)
    halo = image.clone()
    halo[..., 0, :2] = 1.4  # overshoot at a few edge pixels (under 1% of the values): clamped quietly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oftsr.upscale(model, halo)
        oftsr.upscale(model, image * 1.04)  # a little beyond 1 everywhere: within the slack
    bright = image * 0.5 + 0.6  # up to 1.1: a quarter or so of the values beyond 1.05
    share = float((bright > 1.05).float().mean())
    assert 0.01 < share < 1
    for call, what in ((lambda: oftsr.upscale(model, bright), "image"),
                       (lambda: save_image(bright[0], tmp_path / "b.png"), "the image to save")):
        with pytest.warns(UserWarning, match=rf"^{what}: {share:.1%} of its values lie outside \[0, 1\] \(from 0.6\d* "
                                             rf"to 1.1\d*\) and are clipped: scale it into \[0, 1\] first") as caught:
            call()
        assert [Path(w.filename).name for w in caught] == ["test_inference.py"]  # this file's line, not the library's


@pytest.mark.parametrize("mode", ["wavelet", "adain"])
def test_colour_correction_of_rgba_ignores_the_colour_under_transparency(mode):
    from oftsr.color import color_fix

    # An orange disc on black, transparent outside; the result as the model gives it: the
    # disc's colour, and the filled-in colour outside.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    alpha = (((yy - 16) ** 2 + (xx - 16) ** 2) < 10 ** 2).float()[None, None]
    orange = torch.tensor([0.7, 0.55, 0.3]).view(1, 3, 1, 1)
    reference = torch.cat([orange * alpha, alpha], 1)  # black under the transparent area
    up = F.interpolate(alpha, scale_factor=4, mode="bilinear", align_corners=False)
    result = torch.cat([orange.expand(1, 3, 128, 128), up], 1)
    fixed = color_fix(result, reference, mode)
    visible = up[0, 0] > 0.99
    assert torch.equal(fixed[:, 3:], result[:, 3:])
    # the subject keeps its colour: no darkening from the black (it was 35% darker, and a dark rim)
    assert (fixed[0, :3][:, visible] - orange.view(3, 1)).abs().max() < 2 / 255


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_sample_previews_the_straight_line_estimate_after_each_evaluation(teacher, solver):
    img = smooth_image(12, 20, 3)
    seen = []
    info = {}
    out = oftsr.sample(teacher, img, steps=3, solver=solver, seed=1, preview=seen.append, preview_size=40, info=info)
    assert len(seen) == info["nfe"] and all(p.shape == (1, 3, 24, 40) for p in seen)  # 48 x 80 reduced to 40 a side
    assert all(0 <= p.min() and p.max() <= 1 for p in seen)
    expected = torch.nn.functional.interpolate(out, size=(24, 40), mode="area")
    # the last step is Euler: its estimate is the result (reduced before it is clamped to [0, 1], so not
    # exactly where the result reaches past the range)
    assert (seen[-1] - expected).abs().mean() < 5e-3
    assert (seen[0] - seen[-1]).abs().max() > 1e-4  # each evaluation's own estimate, not one repeated
    whole = []
    oftsr.sample(teacher, img, steps=3, solver=solver, seed=1, preview=whole.append)  # 512: not reduced
    assert whole[-1].shape == (1, 3, 48, 80) and (whole[-1] - out).abs().max() < 1e-5


def test_sample_builds_no_autograd_graph_and_previews_gray_as_gray():
    """A model straight from create_model has trainable weights: sampling must still run
    without a graph (the solver's 2N - 1 evaluations would otherwise all be kept)."""
    teacher = oftsr.create_model("tiny", role="teacher", seed=0)
    assert next(teacher.parameters()).requires_grad
    seen = []
    out = oftsr.sample(teacher, smooth_image(8, 8, channels=1), steps=2, preview=seen.append)
    assert not out.requires_grad and out.shape == (1, 1, 32, 32)
    assert len(seen) == 3 and all(not p.requires_grad for p in seen)
    assert all(torch.equal(p[:, 0], p[:, 1]) and torch.equal(p[:, 1], p[:, 2]) for p in seen)  # gray, as the result


def test_black_and_white_saved_as_rgb_comes_back_without_colour(student, teacher):
    """Three equal channels (a B&W photo saved as RGB, or RGBA) give three equal channels,
    per image of a batch: the gray result; a colour image beside it keeps its colour."""
    gray = smooth_image(16, 24, channels=1, seed=3)
    colour = smooth_image(16, 24, seed=4)
    batch = torch.cat([gray.expand(1, 3, 16, 24), colour])
    out = oftsr.upscale(student, batch, t=1.0, seed=5)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    assert (out[0, :1] - oftsr.upscale(student, gray, t=1.0, seed=5)).abs().max() < 1e-6  # the gray path's result
    assert (out[1, 0] - out[1, 1]).abs().max() > 1e-2  # the colour image keeps its colour
    alpha = torch.ones(1, 1, 16, 24)
    rgba = oftsr.upscale(student, torch.cat([gray.expand(1, 3, 16, 24), alpha], 1), t=1.0, out_dtype=torch.uint8)
    assert rgba.shape == (1, 4, 64, 96) and torch.equal(rgba[0, 0], rgba[0, 2]) and torch.equal(rgba[0, 1], rgba[0, 2])
    seen: list[torch.Tensor] = []
    hq = oftsr.sample(teacher, batch, steps=2, solver="euler", preview=seen.append)
    assert torch.equal(hq[0, 0], hq[0, 1]) and torch.equal(hq[0, 1], hq[0, 2]) and (hq[1, 0] - hq[1, 1]).abs().max() > 1e-2
    assert len(seen) == 2 and all(torch.equal(p[0, 0], p[0, 2]) and not torch.equal(p[1, 0], p[1, 2]) for p in seen)


def test_gray_within_a_level_and_gray_under_coloured_transparency_stay_neutral(student):
    """A gray photo through a colour-managed round trip (channels a level apart here and
    there), and gray content over coloured fully transparent pixels, are still black and
    white: no colour noise. Two levels apart somewhere is colour."""
    gray = (smooth_image(16, 24, channels=1, seed=3) * 255).round() / 255
    g = torch.Generator().manual_seed(0)
    jitter = torch.randint(-1, 2, (1, 1, 16, 24), generator=g) * (torch.rand(1, 1, 16, 24, generator=g) < 0.25)
    near = gray.expand(1, 3, 16, 24).clone()
    near[:, :1] = (near[:, :1] + jitter / 255).clamp(0, 1)  # red a level off here and there
    assert (near[:, 0] != near[:, 2]).any()
    out = oftsr.upscale(student, near, t=1.0, seed=5)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    hidden = torch.cat([gray.expand(1, 3, 16, 24).clone(), torch.ones(1, 1, 16, 24)], 1)
    hidden[:, :3, :, :6] = torch.tensor([0.9, 0.1, 0.2]).view(1, 3, 1, 1)  # red under transparency
    hidden[:, 3, :, :6] = 0
    out = oftsr.upscale(student, hidden, t=1.0, seed=5)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    tinted = near.clone()
    tinted[0, 0, 5, 5] = (tinted[0, 1, 5, 5] + 2 / 255).clamp(max=1) if tinted[0, 1, 5, 5] < 0.99 else 0.0
    assert not torch.equal(*oftsr.upscale(student, tinted, t=1.0, seed=5)[0, :2])


def test_every_solver_has_its_memory_need():
    from oftsr.inference import _SAMPLE_MIN_BUFFERS, SAMPLE_BUFFERS
    from oftsr.sampling import SOLVERS

    assert set(SAMPLE_BUFFERS) == set(SOLVERS)
    assert min(SAMPLE_BUFFERS.values()) > _SAMPLE_MIN_BUFFERS and SAMPLE_BUFFERS["adaptive"] > SAMPLE_BUFFERS["midpoint"]


def test_the_noise_of_a_seed_never_changes():
    """A seed must give the same image in every version: pinned values of the start noise
    (image 0 and 1 of seed 7, a region across a block border)."""
    noise = region_noise(7, 2, 60, 3, 5, 4)
    assert noise[0, 0, 0].tolist() == pytest.approx([0.9001875, 0.3092400, -0.1619946, -0.1696593], abs=1e-6)
    assert noise[1, 2, 4].tolist() == pytest.approx([-1.5987842, -0.2323405, 0.4922798, -1.1594714], abs=1e-6)
    assert torch.equal(region_noise([7], 1, 60, 3, 5, 4), noise[:1])  # a seed per image: item 0's draw


def test_library_settings_that_would_fail_late_or_silently_are_said_at_once(student, teacher, monkeypatch):
    img = smooth_image(8, 8)
    evaluations = []
    real_velocity = teacher.velocity
    monkeypatch.setattr(teacher, "velocity", lambda *a: evaluations.append(1) or real_velocity(*a))
    for kw, message in [({"info": []}, "info must be a dict .* got list"),
                        ({"preview": "yes"}, "preview must be a function or None, got 'yes'"),
                        ({"preview": print, "preview_size": 0}, "preview_size must be at least 1, got 0"),
                        ({"preview": print, "preview_size": "256"}, "preview_size must be an integer, got '256'"),
                        ({"tile_callback": 3}, "tile_callback must be a function or None, got 3")]:
        with pytest.raises(ValueError, match=message):
            oftsr.sample(teacher, img, steps=2, **kw)
    assert evaluations == []  # refused before any network evaluation
    with pytest.raises(ValueError, match="callback must be a function or None"):
        oftsr.upscale(student, img, callback="no")
    # optimize(autocast=...) takes half types, by name too; anything else now, not at the first forward
    model = copy.deepcopy(student)
    assert model.optimize(autocast="bf16").autocast_dtype == torch.bfloat16
    for wrong in (torch.float32, "fp8", torch.float8_e4m3fn):
        with pytest.raises(ValueError, match="autocast must be None, torch.bfloat16 or torch.float16"):
            model.optimize(autocast=wrong)
    with pytest.raises(ValueError, match="dtype must be float32, float16, bfloat16 or float64, got torch.float8_e4m3fn"):
        oftsr.load_model("x4", dtype=torch.float8_e4m3fn)
    # float16 autocast on a CPU is emulated, as float16 weights are: said when it runs
    with pytest.warns(UserWarning, match="float16 on a CPU is emulated"):
        oftsr.upscale(model.optimize(autocast=torch.float16), img)
    # bfloat16 too, on a CPU without AVX512-bf16 or AMX (weights or autocast); on one with them, nothing is said
    for native in (False, True):
        monkeypatch.setattr(oftsr.devices, "cpu_has_native_bf16", lambda native=native: native)
        for bf16 in (copy.deepcopy(student).optimize(autocast=torch.bfloat16), copy.deepcopy(student).to(torch.bfloat16)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                oftsr.upscale(bf16, img)
            assert [str(w.message)[:48] for w in caught] == \
                ([] if native else ["bfloat16 on this CPU is emulated (it has neither"])
    # torch.compile(model) compiles forward, which upscale does not call: said, and the result is the model's
    compiled = torch.compile(student)
    with pytest.warns(UserWarning, match=r"torch.compile\(model\) compiles forward, which upscale and sample do not"):
        out = oftsr.upscale(compiled, img, seed=3)
    assert torch.equal(out, oftsr.upscale(student, img, seed=3))


def test_a_compile_that_cannot_build_falls_back_to_eager_once(student, monkeypatch):
    """Windows without MSVC, a GPU without Triton: torch.compile fails in the first forward.
    The model says so once and runs uncompiled (the CLI used to skip every image)."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/nonexistent/cl"))
    torch._dynamo.reset()
    model = copy.deepcopy(student).optimize(compile=True)
    img = smooth_image(8, 8, seed=2)
    with pytest.warns(UserWarning, match=r"^torch.compile does not work here \(.*C\+\+ compiler.*\): running "
                                         r"uncompiled\. It needs a C\+\+ compiler on the CPU and Triton") as caught:
        first = oftsr.upscale(model, img, t=0.5, seed=1)
        second = oftsr.upscale(model, img, t=0.5, seed=1)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1 and model.__dict__["_compiled"] is None
    eager = oftsr.upscale(copy.deepcopy(student).optimize(), img, t=0.5, seed=1)  # the same layout
    assert torch.equal(first, eager) and torch.equal(second, eager)
    torch._dynamo.reset()


def test_compile_is_static_for_the_first_size_then_shape_generic(student, monkeypatch):
    """dynamic=None: one graph per size would stall every new image size and stop compiling
    at dynamo's recompile limit (8 sizes)."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: seen.append(kw) or net)
    model = copy.deepcopy(student).optimize(compile=True)
    assert seen == [{"dynamic": None, "mode": None}] and model.__dict__["_compiled"] is not None
    assert model.optimize(autocast=torch.bfloat16).__dict__["_compiled"] is None  # each call sets all: as documented


def test_torchs_default_dtype_changes_neither_the_noise_nor_the_loaded_model(student):
    img = smooth_image(16, 16)
    expected = oftsr.upscale(student, img, seed=5, tile=32, overlap=8)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = oftsr.upscale(student, img, seed=5, tile=32, overlap=8)
        loaded = oftsr.load_model("x4")
    finally:
        torch.set_default_dtype(previous)
    assert loaded.dtype == torch.float32
    assert got.dtype == torch.float32 and (got - expected).abs().max() < 1e-5  # it moved by a whole seed's change
