from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oftsr.training.degradations import bicubic_downsample
from oftsr.training.realesrgan import (
    REALESRGAN_CONFIGS,
    RealESRGANConfig,
    degrade_realesrgan,
    fit_gaussian_blur,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    random_kernel,
    sinc_kernel,
)

from conftest import DATA, need, smooth_image

DEFAULT = RealESRGANConfig()


def config(stage1: dict | None = None, stage2: dict | None = None, **top) -> RealESRGANConfig:
    """The default config with some fields of each stage (and of the top level) replaced."""
    return dataclasses.replace(
        DEFAULT,
        stage1=dataclasses.replace(DEFAULT.stage1, **(stage1 or {})),
        stage2=dataclasses.replace(DEFAULT.stage2, **(stage2 or {})),
        **top,
    )


# Everything off except what a test switches back on.
SILENT = dict(blur_prob=0.0, resize_probs=(0.0, 0.0, 1.0), noise_prob=0.0, jpeg_prob=0.0)
NO_FINAL = dict(final_sinc_prob=0.0, final_jpeg_prob=0.0)


def j1_series(x: float) -> float:
    """Bessel J1 from its power series, independent of torch.special."""
    return sum((-1) ** m * (x / 2) ** (2 * m + 1) / (math.factorial(m) * math.factorial(m + 1)) for m in range(20))


# ----------------------------------------------------------------------------- kernels


def test_iso_gaussian_matches_hand_value():
    k = gaussian_kernel(3, 1.0)
    total = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1.0)  # centre, 4 edges (d^2=1), 4 corners (d^2=2)
    assert k[1, 1].item() == pytest.approx(1 / total, abs=1e-6)
    assert k[0, 1].item() == pytest.approx(math.exp(-0.5) / total, abs=1e-6)
    assert k[0, 0].item() == pytest.approx(math.exp(-1.0) / total, abs=1e-6)


def test_plateau_matches_hand_value():
    k = plateau_kernel(3, 1.0, beta=1.0)  # 1 / (1 + d^2): 1, 1/2, 1/3
    total = 1 + 4 / 2 + 4 / 3
    assert k[1, 1].item() == pytest.approx(1 / total, abs=1e-6)
    assert k[0, 0].item() == pytest.approx((1 / 3) / total, abs=1e-6)


def test_sinc_matches_bessel_ratio():
    omega = math.pi / 2
    k = sinc_kernel(21, omega)
    # Before normalisation: centre omega^2/(4 pi), at r=1 omega J1(omega)/(2 pi); ratio 2 J1(w)/w.
    assert (k[10, 11] / k[10, 10]).item() == pytest.approx(2 * j1_series(omega) / omega, rel=1e-5)
    assert sinc_kernel(21, math.pi / 4).min().item() < -1e-4  # truncated sinc has negative lobes


@pytest.mark.parametrize(
    "kernel",
    [
        gaussian_kernel(21, 2.5),
        generalized_gaussian_kernel(15, 1.7, beta=0.6),
        plateau_kernel(9, 1.2, beta=1.5),
        sinc_kernel(13, 1.1),
    ],
    ids=["gaussian", "generalized", "plateau", "sinc"],
)
def test_isotropic_kernels_sum_to_one_and_are_symmetric(kernel):
    assert kernel.dtype == torch.float32
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(kernel, kernel.T, atol=1e-8)
    assert torch.allclose(kernel, kernel.flip(0), atol=1e-8)
    assert torch.allclose(kernel, kernel.flip(1), atol=1e-8)
    assert kernel.argmax().item() == kernel.numel() // 2  # peak at the centre


def test_anisotropic_kernels_rotate():
    for build in (gaussian_kernel, generalized_gaussian_kernel, plateau_kernel):
        k0 = build(15, 3.0, 1.0, 0.0)  # wide along x
        k90 = build(15, 3.0, 1.0, math.pi / 2)
        k30 = build(15, 3.0, 1.0, math.pi / 6)
        assert k0.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert k0[7, 10] > 2 * k0[10, 7]  # spreads along the long axis
        assert torch.allclose(k90, k0.T, atol=1e-7)  # a quarter turn swaps the axes
        assert torch.allclose(k30, k30.flip(0, 1), atol=1e-8)  # point symmetric...
        assert not torch.allclose(k30, k30.T, atol=1e-4)  # ...but not mirror symmetric
    assert torch.allclose(generalized_gaussian_kernel(11, 2.0, 1.3, 0.4, beta=1.0), gaussian_kernel(11, 2.0, 1.3, 0.4), atol=1e-7)


def test_random_kernels_are_normalized_odd_and_in_range():
    rng = np.random.default_rng(0)
    sizes = set()
    for stage in (DEFAULT.stage1, DEFAULT.stage2, dataclasses.replace(DEFAULT.stage1, sinc_prob=1.0)):
        for _ in range(60):
            k = random_kernel(rng, stage)
            assert k.ndim == 2 and k.shape[0] == k.shape[1]
            assert k.shape[0] % 2 == 1 and 7 <= k.shape[0] <= 21
            assert k.sum().item() == pytest.approx(1.0, abs=1e-5)
            assert torch.allclose(k, k.flip(0, 1), atol=1e-7)  # every kernel type is point symmetric
            sizes.add(k.shape[0])
    assert sizes == set(range(7, 22, 2))


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)
    with pytest.raises(ValueError, match="omega"):
        sinc_kernel(7, 4.0)


# ----------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("scale,h,w", [(2, 64, 64), (4, 64, 96), (8, 48, 80)])
def test_shapes_range_and_8bit(scale, h, w):
    hr = smooth_image(h, w, seed=scale)[0]
    for seed in range(4):
        lr = degrade_realesrgan(hr, scale, seed)
        assert lr.shape == (3, h // scale, w // scale)
        assert lr.dtype == torch.float32
        assert lr.min().item() >= 0.0 and lr.max().item() <= 1.0
        assert (lr * 255 - (lr * 255).round()).abs().max().item() < 1e-4


def test_batched_input_matches_one_by_one():
    hr = torch.cat([smooth_image(64, 64, seed=1), smooth_image(64, 64, seed=2)])
    lr = degrade_realesrgan(hr, 4, 5)
    assert lr.shape == (2, 3, 16, 16)
    rng = np.random.default_rng(5)  # batch items draw in turn from one generator
    assert torch.equal(lr[0], degrade_realesrgan(hr[0], 4, rng))
    assert torch.equal(lr[1], degrade_realesrgan(hr[1], 4, rng))


def test_seeded_and_dtype_preserved():
    hr = smooth_image(64, 64, seed=3)[0]
    a = degrade_realesrgan(hr, 4, 123)
    assert torch.equal(a, degrade_realesrgan(hr, 4, 123))
    assert torch.equal(a, degrade_realesrgan(hr, 4, np.random.default_rng(123)))
    others = [degrade_realesrgan(hr, 4, s) for s in (124, 125, 126)]
    assert all((a - o).abs().mean().item() > 1e-3 for o in others)
    assert degrade_realesrgan(hr.double(), 4, 123).dtype == torch.float64


def test_tiny_images_survive_strong_downscaling():
    # 16 px at x8 with a 0.15 stage-1 resize gives 2 px; reflect padding is impossible there.
    hr = smooth_image(16, 16, seed=4)[0]
    for seed in range(10):
        assert degrade_realesrgan(hr, 8, seed).shape == (3, 2, 2)


def test_constant_image_stays_constant_without_noise_and_jpeg():
    gray = torch.full((3, 64, 64), 0.4)
    quiet = config(dict(noise_prob=0.0, jpeg_prob=0.0), dict(noise_prob=0.0, jpeg_prob=0.0), final_jpeg_prob=0.0)
    target = round(0.4 * 255) / 255
    for scale in (2, 4, 8):
        for seed in range(5):
            lr = degrade_realesrgan(gray, scale, seed, quiet)
            assert (lr - target).abs().max().item() < 1e-6
    # With the defaults the same image picks up noise on most seeds.
    noisy = [degrade_realesrgan(gray, 4, seed).std().item() for seed in range(8)]
    assert sum(s > 1 / 255 for s in noisy) >= 6


def test_gaussian_noise_level_and_gray_noise():
    gray = torch.full((3, 128, 128), 0.5)
    noise = dict(SILENT, noise_prob=1.0, gaussian_noise_prob=1.0, noise_range=(20.0, 20.0))
    color = config(dict(noise, gray_noise_prob=0.0), second_stage_prob=0.0, **NO_FINAL)
    lr = degrade_realesrgan(gray, 1, 0, color)
    assert lr.std().item() == pytest.approx(20 / 255, rel=0.05)
    assert (lr[0] - lr[1]).abs().mean().item() > 0.05  # independent per channel
    mono = config(dict(noise, gray_noise_prob=1.0), second_stage_prob=0.0, **NO_FINAL)
    lr = degrade_realesrgan(gray, 1, 0, mono)
    assert lr.std().item() == pytest.approx(20 / 255, rel=0.05)
    assert torch.equal(lr[0], lr[1]) and torch.equal(lr[1], lr[2])  # one field for R, G, B


def test_poisson_noise_level():
    # 256 distinct levels -> counts are x * 256, so the noise variance is mean(x) / 256.
    ramp = torch.linspace(0, 1, 256).repeat(3, 256, 1)
    noise = dict(SILENT, noise_prob=1.0, gaussian_noise_prob=0.0, gray_noise_prob=0.0, poisson_scale_range=(1.0, 1.0))
    lr = degrade_realesrgan(ramp, 1, 0, config(noise, second_stage_prob=0.0, **NO_FINAL))
    expected = math.sqrt(ramp.mean().item() / 256)
    assert (lr - ramp).std().item() == pytest.approx(expected, rel=0.1)


def test_second_stage_probability_is_honoured():
    gray = torch.full((3, 64, 64), 0.5)
    noise2 = dict(SILENT, noise_prob=1.0, gaussian_noise_prob=1.0, noise_range=(20.0, 20.0))
    for prob, noisy in ((0.0, False), (1.0, True)):
        cfg = config(SILENT, noise2, second_stage_prob=prob, **NO_FINAL)
        assert (degrade_realesrgan(gray, 1, 0, cfg).std().item() > 0.05) == noisy


def _photo_crop(size: int = 256) -> torch.Tensor:
    folder = need(DATA / "train")  # the blur test needs a real photo
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for path in files:
        with Image.open(path) as im:
            if min(im.size) >= size:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                break
    else:
        pytest.skip(f"no image of at least {size}x{size} in {folder}")
    h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return torch.from_numpy(arr[top : top + size, left : left + size].copy()).permute(2, 0, 1)


def _high_freq_energy(x: torch.Tensor) -> float:
    g = x.mean(-3)  # luminance-ish
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return lap.pow(2).mean().item()


def test_degraded_photo_is_blurrier_than_bicubic():
    hr = _photo_crop()
    reference = _high_freq_energy(bicubic_downsample(hr[None], 4)[0])

    def ratios(cfg: RealESRGANConfig) -> np.ndarray:
        return np.array([_high_freq_energy(degrade_realesrgan(hr, 4, s, cfg)) / reference for s in range(12)])

    # The blur/resize/JPEG chain alone removes detail on every seed.
    quiet = ratios(config(dict(noise_prob=0.0), dict(noise_prob=0.0)))
    assert quiet.mean() < 0.6 and (quiet < 1.0).all(), quiet
    # With noise some seeds gain high-frequency energy (strong noise is meant to), but the
    # typical degraded image is still much softer than the bicubic one.
    full = ratios(DEFAULT)
    assert np.median(full) < 0.6 and (full < 1.0).sum() >= 8, full


def test_camera_config_is_one_stage_with_mild_noise_and_a_lens_blur():
    assert REALESRGAN_CONFIGS["full"] == DEFAULT
    camera = REALESRGAN_CONFIGS["camera"]
    # a lens's point spread, 0.25 to 0.65 LR pixels at x4, no resampling before, and pixels
    # that integrate over their area (the final reduction)
    assert camera.second_stage_prob == 0.0 and camera.stage1.blur_sigma == (1.0, 2.6)
    assert camera.resize_modes == ("area",) and DEFAULT.resize_modes == ("area", "bilinear", "bicubic")
    assert camera.stage1.resize_probs == (0.0, 0.0, 1.0) and camera.final_sinc_prob == 0.1
    # What it adds to a smooth ramp (blur leaves a ramp as it is) stays under 12 levels on
    # every seed; the published chain passes 15 on some. A ramp, not a flat image: the
    # Poisson noise is scaled by the image's number of distinct levels, as Real-ESRGAN's is.
    ramp = torch.linspace(0.1, 0.9, 128).repeat(3, 128, 1)
    clean = bicubic_downsample(ramp[None], 4)[0][:, 6:-6, 6:-6]

    def added(cfg: RealESRGANConfig) -> np.ndarray:
        return np.array([(degrade_realesrgan(ramp, 4, s, cfg)[:, 6:-6, 6:-6] - clean).std().item() * 255
                         for s in range(24)])

    mild, full = added(camera), added(DEFAULT)
    assert mild.max() < 12, mild  # its noise range ends at 10 levels; JPEG adds a little
    assert full.max() > 15 and full.mean() > 2.5 * mild.mean(), (full, mild)


def _fitted_blur(hr: torch.Tensor, lr: torch.Tensor) -> float:
    fits = fit_gaussian_blur(hr, lr)
    return max(fits, key=fits.get)


def test_camera_config_blurs_as_a_camera_does():
    # Fitted on the LR it makes (noise and JPEG off, which a fit would read as sharpness), the
    # camera chain's blur mostly sits in a lens's range: 1.0 to 3.0 HR pixels (real Canon LR
    # fit 1.75 to 2.75). The full chain's, with its random resizes, spreads wider; so did the
    # earlier camera chains (version 0.8's, full blur range and resizes: 59% of these 32 draws
    # in range; version 0.10's, with non-antialiased bilinear and bicubic final reductions,
    # whose aliasing reads as sharpness: 81%, 5 of 32 under 1 HR pixel).
    hr = _photo_crop(128)

    def in_range(cfg: RealESRGANConfig) -> float:
        quiet = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, noise_prob=0.0, jpeg_prob=0.0),
                                    final_jpeg_prob=0.0)
        fits = np.array([_fitted_blur(hr, degrade_realesrgan(hr, 4, s, quiet)) for s in range(32)])
        return float(((fits >= 1.0) & (fits <= 3.0)).mean())

    camera, full = in_range(REALESRGAN_CONFIGS["camera"]), in_range(DEFAULT)
    assert camera >= 0.75 and full < 0.55, (camera, full)  # measured 0.84 (3 of 32 under 1) and 0.44


def test_camera_config_keeps_more_of_a_photo_than_the_full_chain():
    hr = _photo_crop(128)
    reference = bicubic_downsample(hr[None], 4)[0]

    def error(cfg: RealESRGANConfig) -> float:
        return float(np.mean([(degrade_realesrgan(hr, 4, s, cfg) - reference).abs().mean().item() for s in range(16)]))

    # Both blur (the camera one as a lens does) but the camera LR stays closer to
    # the clean bicubic LR: no second stage, no 0.15x resizes, less noise and compression.
    camera, full = error(REALESRGAN_CONFIGS["camera"]), error(DEFAULT)
    assert 0.005 < camera < 0.8 * full, (camera, full)


# ----------------------------------------------------------------------------- inputs and helper


@pytest.mark.parametrize(
    "hr,scale,message",
    [
        (torch.rand(1, 64, 64), 4, "RGB"),
        (torch.rand(2, 4, 64, 64), 4, "RGB"),
        (torch.rand(64, 64), 4, "RGB"),
        (torch.rand(3, 66, 64), 4, "not divisible"),
        (torch.rand(3, 64, 60), 8, "not divisible"),
        (torch.rand(3, 64, 64), 0, "positive integer"),
        (torch.rand(3, 64, 64), 2.0, "positive integer"),
        (torch.zeros(3, 64, 64, dtype=torch.uint8), 4, "floating-point"),
        (torch.rand(3, 64, 64) * 2 - 1, 4, r"\[0, 1\]"),
    ],
)
def test_bad_input_raises(hr, scale, message):
    with pytest.raises(ValueError, match=message):
        degrade_realesrgan(hr, scale, 0)


def test_upsample_helper_is_bicubic_without_antialias():
    from oftsr.resample import upsample_lr

    def upsample_realesrgan_lr(x, scale):
        return upsample_lr(x[None], scale, "realesrgan")[0] if x.ndim == 3 else upsample_lr(x, scale, "realesrgan")

    lr = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    up = upsample_realesrgan_lr(lr, 4)
    assert up.shape == (2, 3, 32, 48)
    assert torch.equal(up, F.interpolate(lr, size=(32, 48), mode="bicubic", align_corners=False, antialias=False))
    antialiased = F.interpolate(lr, size=(32, 48), mode="bicubic", align_corners=False, antialias=True)
    assert (up - antialiased).abs().max().item() > 1e-3  # the two kernels really differ
    assert torch.equal(upsample_realesrgan_lr(lr[0], 4), up[0])
    assert torch.allclose(upsample_realesrgan_lr(torch.full((3, 4, 4), 0.3), 2), torch.full((3, 8, 8), 0.3), atol=1e-6)


def test_fit_gaussian_blur_finds_the_blur_that_made_an_lr():
    hr = _photo_crop(128)
    for sigma in (0.0, 1.5, 2.5):
        blurred = hr if sigma == 0 else F.conv2d(F.pad(hr[None], (10,) * 4, mode="reflect"),
                                                 gaussian_kernel(21, sigma).float().expand(3, 1, 21, 21), groups=3)[0]
        lr = F.interpolate(blurred[None], scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)[0]
        fits = fit_gaussian_blur(hr, lr)
        assert max(fits, key=fits.get) == sigma and fits[sigma] > 60, fits  # exact up to float rounding
        assert min(fits.values()) < fits[sigma] - 10
    with pytest.raises(ValueError, match="same channels"):
        fit_gaussian_blur(hr, hr[:1])


def test_fit_lr_blur_script_on_pairs_and_on_a_chain(tmp_path):
    # scripts/fit_lr_blur.py as users run it: pairs made with a known blur give that blur back
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hr = _photo_crop(128)
    blurred = F.conv2d(F.pad(hr[None], (10,) * 4, mode="reflect"), gaussian_kernel(21, 2.0).float().expand(3, 1, 21, 21),
                       groups=3)
    lr = F.interpolate(blurred, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)[0]
    for sub, image in (("HR", hr), ("LR", lr)):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        for name in ("a.png", "b.png"):
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "pairs" / sub / name)
    script = [sys.executable, str(root / "scripts" / "fit_lr_blur.py")]
    out = subprocess.run([*script, "--pairs", str(tmp_path / "pairs"), "--verbose"], capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "a.png: 2\n" in out.stdout and "percentile 2 / 2 / 2, 100% between 1 and 3" in out.stdout, out.stdout
    (tmp_path / "pairs" / "LR" / "b.png").unlink()
    out = subprocess.run([*script, "--pairs", str(tmp_path / "pairs")], capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 1 and "error: 1 image(s) without a partner of the same name" in out.stderr
    assert "b.png (HR)" in out.stderr  # matched as `oftsr eval` matches pairs
    out = subprocess.run([*script, "--hr", str(tmp_path / "pairs" / "HR"), "--draws", "2"], capture_output=True,
                         text=True, timeout=300, cwd=root)
    assert out.returncode == 0 and out.stdout.startswith("4 LR images: "), out.stdout + out.stderr
