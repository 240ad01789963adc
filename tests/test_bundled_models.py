"""The default models shipped inside the package: present, small, loadable by every
entry point, and as good on real photographs as the README says."""

from __future__ import annotations

import pytest

import oftsr
from oftsr.training.evaluate import baseline_upsample, degrade_image, evaluate

from conftest import DATA, need

# Set5, x4 bicubic, Y-PSNR with border crop 4, seed 0, whole images, outputs scored as
# 8-bit images, realism SWD of 4096 patches per image (the README's table).
SET5_BICUBIC_Y = 28.43
SET5_STUDENT_T0_Y = 31.05
SET5_STUDENT_T1_Y, SET5_STUDENT_T1_SWD = 29.16, 8.77
SET5_TEACHER_Y, SET5_TEACHER_SWD = 28.75, 9.26  # 16 midpoint steps (NFE 31): 2 minutes, too slow for every run


# RealSR-Canon's first five pairs (the real camera LR as given), the x4-real student, seed 0,
# scored as the README's table is (its rows are the mean over all 25 pairs).
CANON5_BICUBIC_Y, CANON5_BICUBIC_SWD = 25.73, 29.97
CANON5_REAL_T0_Y = 26.51
CANON5_REAL_T1_Y, CANON5_REAL_T1_SWD = 26.00, 13.64


@pytest.fixture(scope="module")
def bundled() -> dict[str, oftsr.OFTSRModel]:
    return {role: oftsr.load_model(oftsr.default_model_path(role)) for role in ("student", "teacher")}


def test_bundled_files_are_small_and_described(bundled):
    for role, model in bundled.items():
        path = oftsr.default_model_path(role)
        assert path.stat().st_size <= 20 * 2**20, f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB"
        assert model.role == role
        assert (model.scale, model.sigma_p, model.degradation) == (4, 0.2, "bicubic")
        assert model.config == oftsr.PRESETS["compact"]
        assert model.step > 0


def test_real_world_pair_is_small_and_described():
    for role in ("student", "teacher"):
        path = oftsr.bundled_model_path("x4-real", role)
        assert path.stat().st_size <= 20 * 2**20, f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB"
        model = oftsr.load_model(path)
        assert (model.role, model.scale, model.sigma_p, model.degradation) == (role, 4, 0.2, "realesrgan")
        assert model.config == oftsr.PRESETS["compact"] and model.step > 0


def test_real_world_student_on_camera_photographs(tmp_path):
    canon = need(DATA / "val" / "RealSR-Canon")
    for folder in ("HR", "LR"):
        (tmp_path / folder).mkdir()
        for i in range(1, 6):
            (tmp_path / folder / f"Canon_00{i}.png").symlink_to(canon / folder / f"Canon_00{i}.png")
    real = evaluate([oftsr.load_model("x4-real")], tmp_path, ts=[0.0, 1.0], log=lambda s: None)
    bicubic, t0, t1 = (r.mean("psnr_y") for r in real)
    assert (bicubic, real[0].mean("swd")) == (pytest.approx(CANON5_BICUBIC_Y, abs=0.01),
                                               pytest.approx(CANON5_BICUBIC_SWD, abs=0.02))
    assert t0 == pytest.approx(CANON5_REAL_T0_Y, abs=0.02)
    assert (t1, real[2].mean("swd")) == (pytest.approx(CANON5_REAL_T1_Y, abs=0.02),
                                         pytest.approx(CANON5_REAL_T1_SWD, abs=0.02))
    assert t1 < t0 and real[2].mean("swd") < real[1].mean("swd") < real[0].mean("swd")  # the trade-off
    # On camera photographs it beats the bicubic pair at both ends: more faithful at t = 0,
    # more realistic at t = 1.
    clean = evaluate([oftsr.load_model("x4")], tmp_path, ts=[0.0, 1.0], log=lambda s: None)
    assert t0 > clean[1].mean("psnr_y") + 0.2 and real[2].mean("swd") < 0.9 * clean[2].mean("swd")


def test_bundled_student_on_set5(bundled):
    rows = evaluate([bundled["student"]], need(DATA / "val" / "Set5"), ts=[0.0, 1.0], log=lambda s: None)
    bicubic, t0, t1 = (r.mean("psnr_y") for r in rows)
    swd0, swd1 = rows[1].mean("swd"), rows[2].mean("swd")
    assert bicubic == pytest.approx(SET5_BICUBIC_Y, abs=0.01)
    assert t0 - bicubic >= 1.0  # the fidelity end: at least +1 dB over bicubic
    assert t0 == pytest.approx(SET5_STUDENT_T0_Y, abs=0.02)
    assert t1 < t0 and swd1 < swd0  # the trade-off: t = 1 gives up PSNR for realism
    assert t1 == pytest.approx(SET5_STUDENT_T1_Y, abs=0.02) and swd1 == pytest.approx(SET5_STUDENT_T1_SWD, abs=0.02)
    # the distillation gap against the teacher's figures: the student at t = 1 is no more than
    # 0.5 dB below its teacher, and no less realistic than 1.1x (it is above it in both)
    assert t1 >= SET5_TEACHER_Y - 0.5 and swd1 <= 1.1 * SET5_TEACHER_SWD


def test_cli_uses_the_bundled_models_by_default(tmp_path):
    from oftsr.cli import main
    from oftsr.images import load_image, save_image
    from oftsr.training.metrics import psnr_y

    hr, _ = load_image(need(DATA / "val" / "Set5" / "baby.png"))
    hr = hr[..., 160:288, 160:288]  # a 128 px crop: the face
    lr = degrade_image(hr, 4)
    save_image(lr, tmp_path / "lr.png", bit_depth=16)
    bicubic = psnr_y(baseline_upsample(lr, 4), hr, border=4)
    assert main(["upscale", str(tmp_path / "lr.png"), "-o", str(tmp_path / "student.png"), "--t", "0", "-q"]) == 0
    assert main(["sample", str(tmp_path / "lr.png"), "-o", str(tmp_path / "teacher.png"), "--steps", "2", "-q"]) == 0
    for name in ("student", "teacher"):
        out, depth = load_image(tmp_path / f"{name}.png")
        assert out.shape == hr.shape and depth == 16
        assert psnr_y(out, hr, border=4) > bicubic + 0.3, name


def test_eval_uses_the_bundled_student_and_teacher_by_default(tmp_path):
    from oftsr.cli import main
    from oftsr.training.evaluate import read_table
    from oftsr.images import load_image, save_image

    hr, _ = load_image(need(DATA / "val" / "Set5" / "baby.png"))
    (tmp_path / "hr").mkdir()
    save_image(hr[..., 160:224, 160:224], tmp_path / "hr" / "face.png", bit_depth=16)  # 64 px: quick for the teacher
    assert main(["eval", "--data", str(tmp_path / "hr"), "--t", "0", "--steps", "2", "--out", str(tmp_path / "ev"),
                 "-q"]) == 0
    bicubic, student, teacher = read_table(tmp_path / "ev" / "results.csv")
    assert [r.method for r in (bicubic, student, teacher)] == ["bicubic", "student", "teacher (midpoint)"]
    assert (student.t, student.nfe, teacher.nfe) == (0.0, 1, 3)
    assert student.mean("psnr_y") > bicubic.mean("psnr_y") + 0.3
