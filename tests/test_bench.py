"""bench/bench.py still runs: its cheap sections on the smallest sizes, in a subprocess as
users run it, print their tables with a row per variant (no timing is asserted)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    """bench/bench.py imported as a module (it is a script, not in a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_module", ROOT / "bench" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_sections_print_their_tables():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "fastpath",
                          "images", "--presets", "tiny", "--sizes", "64", "--images_size", "64",
                          "--images_batch", "2", "--repeat", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    fast = [line for line in text.splitlines() if line.startswith("| tiny | 64 |")]
    assert fast[0].split("|")[3].strip().startswith("authors' network") and len(fast) >= 2
    for row in fast:  # speed-up and max |diff| are numbers; the default path matches the authors' to 1e-4
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[4]) > 0 and float(cells[6]) < (1e-2 if "autocast" in cells[2] else 1e-4)
        assert cells[5] == ""  # MFU: of a GPU's bf16 peak only
    images = re.findall(r"^\| (authors' network \(NCHW fp32, ADM ops\)|ours, default \(load_model\)) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$",
                        text, flags=re.M)
    assert [name for name, *_ in images] == ["authors' network (NCHW fp32, ADM ops)", "ours, default (load_model)"]
    assert images[0][3] == "1.00" and all(float(per_s) > 0 for _, _, per_s, _ in images)


def test_bench_flops_at_the_sizes_asked_for():
    # FLOPs per forward: the nominal (ADM) count, the README's, e.g. 2.241 TFLOP for the paper's ImageNet network
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "flops",
                          "--presets", "tiny", "--sizes", "256", "512", "64"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "| preset | parameters | 256 px | 512 px | 64 px |" in text
    assert re.search(r"^\| tiny \| 3,163,686 \| 0\.093 \| 0\.785 \| 0\.\d{3} \|$", text, flags=re.M)
    assert re.search(r"^\| imagenet \| 552,820,998 \| 2\.241 \| 9\.108 \| 0\.\d{3} \|$", text, flags=re.M)


def test_bench_memory_rows_for_upscale_and_sample():
    # A stand-in network on a tiny photo: one fresh process per command, each with its peak RSS.
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "memory",
                          "--memory_mp", "0.02", "--memory_real_mp", "0", "--memory_tile", "64"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^\| \d+x\d+ \(0\.0 MP\) \| \d+x\d+ \(0 MP\) \| `(upscale|sample)` \| (stand-in \([^)]+\)) \| (\d+) \| +\| (\d+) \|$",
                      out.stdout, flags=re.M)
    assert [(c, n) for c, n, *_ in rows] == [("upscale", "stand-in (student)"),
                                             ("sample", "stand-in (teacher, midpoint NFE 3)")], out.stdout
    assert all(200 < int(rss) < 8000 for *_, rss, _ in rows)  # MiB: torch alone is about 0.5 GiB


def test_bench_train_memory_rows_with_and_without_gradient_checkpointing():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "train_memory",
                          "--presets", "tiny", "--sizes", "64", "--train_batch", "2", "--repeat", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^\| tiny \| 64 \| 2 \| (off|on) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                      out.stdout, flags=re.M)
    assert [mode for mode, *_ in rows] == ["off", "on"], out.stdout
    assert rows[0][2] == "1.00" and rows[0][4] == "1.00"
    assert int(rows[0][1].replace(",", "")) > 0
    assert float(rows[1][2]) < 0.9  # the child really checkpoints: about 0.7 of the step memory measured here


def test_compiled_variant_runs_a_copy_that_other_variants_leave_alone(monkeypatch):
    # CUDA graphs hold the weights' addresses: the compiled variant keeps weights of its own,
    # which the other variants' optimize() calls (moving the shared model between layouts)
    # leave where they are.
    import torch

    import oftsr

    bench = _bench_module()
    compiled_with = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled_with.append(kw) or net)  # no inductor run here
    model = oftsr.create_model("tiny", role="student").eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    called_on = []

    def call(m):
        called_on.append(m)
        return m.velocity(x, x, 0.5)

    fn, first = bench.compiled_variant(model, "reduce-overhead", None, call)
    twin = called_on[0]
    assert compiled_with == [{"dynamic": None, "mode": "reduce-overhead"}] and first >= 0
    assert twin is not model and twin.__dict__["_compiled"] is not None and model.__dict__["_compiled"] is None
    addresses = [p.data_ptr() for p in twin.parameters()]
    with torch.inference_mode():
        before = fn()
        for layout in (False, True, False):  # what the interleaved variants' set-ups do
            model.optimize(channels_last=layout)
            after = fn()
        expected = model.velocity(x, x, 0.5)
    assert [p.data_ptr() for p in twin.parameters()] == addresses and set(addresses).isdisjoint(
        p.data_ptr() for p in model.parameters())
    assert called_on[1:] == [twin] * 4 and torch.equal(after, before) and torch.allclose(after, expected, atol=1e-5)


def test_bench_profile_sums_the_parts_of_a_forward():
    # the parts add up to the whole, every part is a known one, and on a CPU the
    # convolutions (most of a UNet's FLOPs) take the largest share
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "profile",
                          "--presets", "tiny", "--sizes", "64", "--repeat", "1", "--profile_top", "5"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    parts = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \|$", text, flags=re.M)
    total = [p for p in parts if p[0].startswith("all (")]
    parts = [p for p in parts if not p[0].startswith("all (")]
    assert len(total) == 1 and total[0][2] == "100.0"
    assert sum(float(ms) for _, ms, _ in parts) == pytest.approx(float(total[0][1]), abs=0.01 * len(parts))
    assert sum(float(pc) for *_, pc in parts) == pytest.approx(100, abs=0.1 * len(parts))
    assert {name for name, *_ in parts} <= {"attention", "GroupNorm", "layout and dtype copies", "convolution",
                                            "matmul (linear)", "elementwise (SiLU, adds, scale-shift)", "other"}
    assert parts[0][0] == "convolution" and float(parts[0][2]) > 30
    top = re.findall(r"^\| (aten::\w+) \| ([^|]+) \| ([\d.]+) \| ([\d.]+) \|$", text, flags=re.M)
    assert len(top) == 5 and top[0][1] == "convolution"  # oneDNN's or PyTorch's own, by build


def test_profile_categories_of_gpu_kernel_names():
    bench = _bench_module()
    names = {"sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
             "_groupnorm_apply": "GroupNorm", "_groupnorm_stats": "GroupNorm",
             "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "layout and dtype copies",
             "void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda>": "layout and dtype copies",
             "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>": "attention",
             "void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add<c10::BFloat16>>":
                 "elementwise (SiLU, adds, scale-shift)",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64": "matmul (linear)",
             "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>": "GroupNorm",
             "aten::upsample_nearest2d": "other",
             # torch.compile's kernels: named by what they fuse, counted as compiled work
             "triton_red_fused_convolution_native_group_norm_0": "compiled: reductions (norm statistics and what "
                                                                  "is fused in)",
             "triton_poi_fused_add_convolution_silu_3": "compiled: pointwise (norm apply, SiLU, adds, copies)"}
    assert {n: bench.profile_category(n) for n in names} == names


def test_back_to_back_times_queued_calls_per_call():
    # The compiled rows' second timing: `repeat` calls after the warm-up, one wait at the
    # end, the time divided by the calls
    bench = _bench_module()
    clock, calls = [0.0], []

    def call():  # each call takes one second of a clock the bench reads
        calls.append(1)
        clock[0] += 1.0

    bench.time = type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])})
    per_call = bench.back_to_back(call, bench.torch.device("cpu"), repeat=5, warmup=2)
    assert len(calls) == 7 and per_call == 1.0


def test_bench_loader_rows_for_photographs_and_their_tiles(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (128, 96), (60 * i, 90, 30)).save(tmp_path / f"p{i}.png")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "loader",
                          "--loader_data", str(tmp_path), "--loader_resolution", "32", "--loader_tile", "64",
                          "--repeat", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^\| (photographs|tiles of 64 px) \| (\d+) \| ([\d.]+) \| (bicubic|realesrgan) \| ([\d.]+) \|$",
                      out.stdout, flags=re.M)
    # 128 x 96 in 64 px tiles 32 apart: 3 x 2 tiles each
    assert [(s, n, d) for s, n, _, d, _ in rows] == [("photographs", "2", "bicubic"), ("photographs", "2", "realesrgan"),
                                                     ("tiles of 64 px", "12", "bicubic"),
                                                     ("tiles of 64 px", "12", "realesrgan")], out.stdout
    assert all(float(per_s) > 0 for *_, per_s in rows) and "the scan reads" in out.stdout


def test_bench_files_rows_for_each_format():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "files",
                          "--files_size", "96", "64", "--repeat", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^\| ([^|]+?) \| ([\d.]*) \| ([\d.]+) \| ([\d.]*) \|$", out.stdout, flags=re.M)
    assert [r[0].split(",")[0] for r in rows] == ["JPEG", "PNG", "PNG", "PNG", "TIFF", "TIFF", "PNG"], out.stdout
    # every format read and written (pypng's row: read only); 16 bits take more bytes than 8
    assert all(float(r[2]) > 0 for r in rows) and sum(bool(r[3]) for r in rows) == 6
    size = {r[0]: float(r[1]) for r in rows if r[1]}
    assert size["PNG, 16-bit (libpng-filtered, as editors write)"] > size["PNG, 8-bit"] > size["JPEG, 8-bit"]
    assert "96x64 (0.0 MP)" in out.stdout


def test_bench_kernels_is_skipped_where_the_triton_kernels_do_not_run():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--device", "cpu", "--only", "kernels"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(kernels skipped: the Triton GroupNorm does not run on" in out.stdout


def test_bench_kernels_times_each_launch_setting_and_restores_the_package_settings():
    # The section's bookkeeping, on a CPU: the kernels' launchers replaced by PyTorch's ops
    # (the kernels themselves are checked in test_triton_groupnorm.py) and the wall time
    # standing in for the profiler's GPU time. A row per setting tried, the package's among
    # them and marked, the whole forward with the fastest of each, the settings restored.
    code = f"""
import json, sys, time, torch
import torch.nn.functional as F
sys.argv = ["bench.py", "--device", "cpu", "--only", "kernels", "--presets", "tiny", "--sizes", "32", "--repeat", "1"]
sys.path.insert(0, {str(ROOT / "bench")!r})
import bench
from oftsr import triton_groupnorm
from oftsr import unet
state = lambda: json.dumps([triton_groupnorm.LAUNCH_CONFIG, triton_groupnorm._PIXELS_PER_CHUNK,
                            unet.SKIP_MATMUL_IN_TRITON.get("cpu", False)])
before = state()
seen = set()
def resampled(y, mode):
    return y if mode is None else F.interpolate(y, scale_factor=2.0) if mode == "up" else F.avg_pool2d(y, 2)
def norm(x, groups, weight, bias, eps, silu, x_bias, resample, x2, x_stats, x2_stats):
    seen.add(json.dumps([triton_groupnorm.LAUNCH_CONFIG, triton_groupnorm._PIXELS_PER_CHUNK]))
    x = (x if x2 is None else torch.cat([x, x2], 1)).float()
    x = x if x_bias is None else x + x_bias.float()[:, None, None]
    y = F.group_norm(x, groups, eps=eps)
    y = y if weight is None else y * weight.float().reshape(-1, x.shape[1])[..., None, None]
    y = y if bias is None else y + bias.float().reshape(-1, x.shape[1])[..., None, None]
    y = resampled(F.silu(y) if silu else y, resample)
    return y.to(x2.dtype if x2 is not None else torch.bfloat16).contiguous(memory_format=torch.channels_last)
def add(h, skip, bias, skip_resample):
    return h + resampled(skip.float(), skip_resample).to(h.dtype) + bias.to(h.dtype)[:, None, None], None
skips = []
def skip_add(h, x, weight, bias, x2):
    skips.append(json.dumps(triton_groupnorm.LAUNCH_CONFIG["skip"]))
    joined = x if x2 is None else torch.cat([x, x2], 1)
    return h + F.conv2d(joined, weight.to(h.dtype)) + bias.to(h.dtype)[:, None, None], None
triton_groupnorm._group_norm_launch, triton_groupnorm._residual_add_launch = norm, add
triton_groupnorm._skip_matmul_add_launch = skip_add
triton_groupnorm._serves_skip = lambda index, dtype: True
triton_groupnorm.serves = lambda device: True
triton_groupnorm.available = lambda x: (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
                                        and not torch.is_grad_enabled())
bench.fastest_dtype = lambda device: torch.bfloat16
bench.LAUNCH_CANDIDATES = [dict(BLOCK_PIXELS=32, BLOCK_CHANNELS=64, num_warps=4),
                           dict(BLOCK_PIXELS=16, BLOCK_CHANNELS=32, num_warps=2)]
bench.CHUNK_CANDIDATES = [1024, 96]  # 96: not a multiple of the statistics' block, never tried
bench.SKIP_CANDIDATES = [dict(BLOCK_PIXELS=32, BLOCK_CHANNELS=64, BLOCK_K=16, num_warps=4)]
def wall_times(fn, device, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    ms = (time.perf_counter() - start) * 1e3 / repeat
    return {{"_groupnorm_stats _groupnorm_finalize _groupnorm_apply _residual_add _skip_matmul_add": ms}}
bench.kernel_times = wall_times
bench.main()
print(json.dumps({{"restored": before == state(), "settings_seen": len(seen), "skip_settings": len(set(skips)),
                  "skip_calls": len(skips)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["restored"]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("| ")]
    passes = [r for r in rows if r[0] in ("stats", "apply", "add", "chunk", "skip")]
    # each pass: the package's setting first, then the candidates that differ from it
    assert [r[0] for r in passes] == ["stats"] * 3 + ["apply"] * 3 + ["add"] * 3 + ["chunk"] * 2 + ["skip"] * 2, passes
    package = [r for r in passes if r[1].endswith("(in the package)")]
    assert [r[0] for r in package] == ["stats", "apply", "add", "chunk", "skip"] and all(r[3] == "1.00" for r in package)
    # the skip kernel (off in the package) ran for its own rows only, under both its settings
    assert result["skip_settings"] == 2 and result["skip_calls"] > 0, result
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in passes)
    assert "96 pixels" not in out.stdout
    # the norm ran under each stats/apply setting and chunk tried (the adds' settings do not reach it)
    assert result["settings_seen"] >= 3 + 2 + 1 + 1
    whole = [r for r in rows if r[0] == "in the package" or r[0].startswith("fastest of each")]
    assert len(whole) == 2 and float(whole[1][2]) < 1e-2  # max |diff| of the output, bf16
