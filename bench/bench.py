#!/usr/bin/env python
"""OFTSR benchmarks: prints tables (Markdown) of speed, memory and accuracy of the fast path.

    python bench/bench.py                      # CPU-sized defaults
    python bench/bench.py --device cuda --full # small, div2k, imagenet at 256-1024 px (implied on CUDA)

Sections (choose with --only): throughput, student_vs_teacher, tiling, memory, fastpath, flops,
baselines (needs spandrel: `pip install 'oftsr[bench]'`), images (batched whole images per second),
train_memory (one training step with and without --gradient_checkpointing), profile (where a
forward's time goes, by part of the network; with --compile_mode, the compiled forward's too),
loader (training crops per second of one loader worker, from photographs and from their tiles),
files (reading and writing JPEG, PNG and TIFF, 8 and 16 bits, ms per megapixel),
kernels (launch settings of the Triton GroupNorm passes, on a GPU that runs them).
Weights are random (the speed of a network does not depend on its values); every
comparison uses identical weights and inputs. The memory section runs `oftsr upscale`
and `oftsr sample` with the bundled models, and with a stand-in network for photographs
too big for them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import oftsr  # noqa: E402
from oftsr import triton_groupnorm  # noqa: E402
from oftsr.devices import cpu_has_native_bf16  # noqa: E402
from oftsr.unet import count_parameters, reference_ops  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) for the model-FLOP-utilisation column.
GPU_BF16_PEAK = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def bf16_peak(device: torch.device) -> float | None:
    """The device's dense bf16 TFLOP/s (`GPU_BF16_PEAK`), or None when not listed (a CPU)."""
    return next((v for k, v in GPU_BF16_PEAK.items() if k in device_name(device)), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def back_to_back(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Seconds per call of `repeat` calls queued with no wait between them: the device's pace
    while the host keeps ahead of it (a stream of tiles), where `timed` gives one call's
    latency, the host's work before the device starts included."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def interleaved(variants: dict, device: torch.device, repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, {name: (setup, fn)}, timed in turns (A, B,
    A, B, ...) so that load from other processes on a shared machine falls on all alike.
    `setup` (untimed) puts the model into the variant's state before each call."""
    for setup, fn in variants.values():
        setup()
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, (setup, fn) in variants.items():
            setup()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def random_model(preset: str, role: str, device: torch.device, dtype: torch.dtype = torch.float32) -> oftsr.OFTSRModel:
    model = oftsr.create_model(preset, role=role, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # ADM's zero-init would make parts of the work trivial
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(device, dtype).eval()


def fastest_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def flops_per_forward(model: oftsr.OFTSRModel, size: int) -> int:
    """The network's nominal FLOPs, ADM's ops as the paper counts them (the CPU fast path's
    sub-pixel up-convolution does fewer), for the MFU column on every path. Counted on the
    meta device: shapes only, no arithmetic, so any preset is instant."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = oftsr.create_model(model.config, role=model.role)
    x = torch.zeros(1, 3, size, size, device="meta")
    with torch.inference_mode(), reference_ops(), FlopCounterMode(display=False) as counter:
        meta.velocity(x, x, 0.5)
    return counter.get_total_flops()


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


# --------------------------------------------------------------------------- sections

def bench_throughput(args, device) -> None:
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            for dtype in dict.fromkeys([torch.float32, fastest_dtype(device)]):
                model = random_model(preset, "student", device)
                model.optimize(autocast=None if dtype == torch.float32 else dtype)
                x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
                with torch.inference_mode():
                    sec = timed(lambda: model.velocity(x, x, 0.5), device, args.repeat)
                mpix = args.batch * size * size / 1e6
                flops = flops_per_forward(model, size) * args.batch
                util = ""
                peak = bf16_peak(device)
                if peak and dtype != torch.float32:
                    util = f"{flops / sec / 1e12 / peak * 100:.1f}%"
                rows.append([preset, f"{size}", str(dtype).replace("torch.", ""), f"{sec * 1e3:.1f}",
                             f"{mpix / sec:.3f}", f"{flops / sec / 1e12:.2f}", util])
    table(f"Forward throughput (batch {args.batch}, one network evaluation, output size = input size), "
          f"{device_name(device)}", ["preset", "px", "dtype", "ms / forward", "output MP/s", "TFLOP/s", "MFU"], rows)


def bench_student_vs_teacher(args, device) -> None:
    preset, size = args.presets[0], args.sizes[0]
    image = torch.rand(1, 3, size // 4, size // 4, device=device)
    student, teacher = (random_model(preset, role, device).optimize() for role in ("student", "teacher"))
    rows = []
    one = timed(lambda: oftsr.upscale(student, image, t=1.0), device, args.repeat)
    rows.append(["student, one step", "1", f"{one:.3f}", "1.0"])
    for solver, steps in [("euler", args.teacher_steps), ("midpoint", args.teacher_steps)]:
        info: dict = {}
        sec = timed(lambda: oftsr.sample(teacher, image, steps=steps, solver=solver, info=info), device, 1, warmup=0)
        rows.append([f"teacher, {solver} {steps} steps", str(info["nfe"]), f"{sec:.3f}", f"{sec / one:.1f}"])
    table(f"One-step student against the teacher ({preset}, {size}x{size} output), {device_name(device)}",
          ["method", "NFE", "s / image", "x student time"], rows)


def bench_tiling(args, device) -> None:
    preset, size = args.presets[0], args.tiling_size
    model = random_model(preset, "student", device).optimize()
    image = torch.rand(1, 3, size // 4, size // 4, device=device)
    whole = timed(lambda: oftsr.upscale(model, image), device, max(1, args.repeat // 2))
    rows = [["whole image", "-", "-", f"{whole:.2f}", "1.00"]]
    for tile, overlap, batch in [(512, 64, 1), (512, 32, 1), (544, 32, 1), (512, 32, 4)]:
        sec = timed(lambda: oftsr.upscale(model, image, tile=tile, overlap=overlap, tile_batch=batch), device,
                    max(1, args.repeat // 2))
        rows.append([f"tile {tile}", f"{overlap}", f"{batch}", f"{sec:.2f}", f"{sec / whole:.2f}"])
    table(f"Tiled against whole-image inference ({preset}, {size}x{size} output), {device_name(device)}",
          ["mode", "overlap", "tiles / forward", "s / image", "x whole"], rows)


def _peak_rss() -> int:
    """This process's resident-set high-water mark in bytes. VmHWM belongs to the address
    space made at exec, unlike ru_maxrss, which Linux carries over from the parent."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StandInNetwork(torch.nn.Module):
    """A 3x3 convolution with the UNet's interface, for memory rows where the real network
    would take hours on a CPU (a 12 MP photo at x4 is about 1000 tile forwards). Its
    per-tile memory is small and constant, as the real network's is for a fixed tile, so
    the rows measure what grows with the image: the result, the input and the bands."""

    config = SimpleNamespace(size_multiple=8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# The teacher's memory does not depend on the number of steps (the solver keeps the same
# few whole-image buffers throughout), so its rows take two midpoint steps (NFE 3).
SAMPLE_STEPS = 2


def _memory_child(command: str, network: str, src: str, dst: str, tile: int, device: str) -> None:
    """`oftsr upscale|sample src -o dst` in this fresh process, as a user runs it (the file
    is read, super-resolved and written); with the stand-in, only the network is replaced."""
    from oftsr import cli

    dev = torch.device(device)
    if network == "stand-in":
        torch.set_num_threads(1)  # a 3x3 convolution gains nothing from threads; on a shared CPU they only wait
        cli._load = lambda args, role: oftsr.OFTSRModel(StandInNetwork(), sigma_p=0.2, role=role,
                                                         scale=4).to(dev).eval()
    steps = ["--steps", str(SAMPLE_STEPS), "--solver", "midpoint"] if command == "sample" else []
    start = time.perf_counter()
    code = cli.main([command, src, "-o", dst, "--tile", str(tile), "--device", device, "-q", *steps])
    seconds = time.perf_counter() - start
    cuda = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    print(json.dumps({"code": code, "peak_rss": _peak_rss(), "cuda": cuda, "seconds": seconds}))


def _photo_size(megapixels: float) -> tuple[int, int]:
    """Width and height of a 4:3 photograph of about this many megapixels (multiples of 8)."""
    h = round((megapixels * 1e6 * 3 / 4) ** 0.5 / 24) * 24
    return h * 4 // 3, h


def bench_memory(args, device) -> None:
    """Peak memory of `oftsr upscale` and `oftsr sample` (x4) on photographs of 1, 4 and 12
    MP, each in a fresh process: the bundled model up to --memory_real_mp, a stand-in
    network for all sizes."""
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.memory_mp:
            w, h = _photo_size(mp)
            src, dst = Path(tmp) / f"in_{mp}.png", Path(tmp) / f"out_{mp}.png"
            rng = np.random.default_rng(0)  # smooth random colours: a photograph's content does not matter here
            Image.fromarray(rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC).save(src)
            runs = [(command, network) for command in args.memory_commands
                    for network in (["bundled", "stand-in"] if mp <= args.memory_real_mp else ["stand-in"])]
            for command, network in runs:
                out = subprocess.run([sys.executable, __file__, "--_memory_child", command, network, str(src), str(dst),
                                      str(args.memory_tile), str(device)], capture_output=True, text=True, timeout=7200)
                role = "student" if command == "upscale" else f"teacher, midpoint NFE {2 * SAMPLE_STEPS - 1}"
                name = f"bundled {role}" if network == "bundled" else f"stand-in ({role})"
                cells = [f"{w}x{h} ({w * h / 1e6:.1f} MP)", f"{4 * w}x{4 * h} ({16 * w * h / 1e6:.0f} MP)",
                         f"`{command}`", name]
                result = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"code": "?"}
                if result["code"] != 0:
                    rows.append(cells + ["failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:80], "", ""])
                    continue
                cuda = "" if result["cuda"] is None else f"{result['cuda'] / 2**20:.0f}"
                rows.append(cells + [f"{result['peak_rss'] / 2**20:.0f}", cuda, f"{result['seconds']:.0f}"])
    table(f"Peak memory of `oftsr upscale` and `oftsr sample` (x4, --tile {args.memory_tile}, 8-bit PNG in and out, "
          f"a fresh process each), {device_name(device)}",
          ["input", "output", "command", "network", "peak RSS (MiB)", "CUDA max allocated (MiB)", "s"], rows)


def compiled_variant(model: oftsr.OFTSRModel, mode: str | None, autocast: torch.dtype | None, call) -> tuple:
    """Compiles a copy of the model's network (in `mode`, None: torch's default), timing its first call, and
    returns (fn, first-call seconds), where fn runs `call(copy)`. A copy, because the other
    variants' `optimize()` calls move the shared weights between layouts: CUDA graphs
    (reduce-overhead) hold the weights' addresses and would re-record after every move."""
    model.optimize()  # drops any compiled network, so the copy starts without one
    twin = copy.deepcopy(model)
    start = time.perf_counter()
    twin.optimize(compile=mode or True, autocast=autocast)
    with torch.inference_mode():
        call(twin)
    return (lambda: call(twin)), time.perf_counter() - start


def graphed(fn, device: torch.device):
    """`fn` (its inputs fixed) recorded once into a CUDA graph, then replayed at each call:
    no guards, no per-call Python, one launch. The floor of a call's host time for a fixed
    tile shape, against which torch.compile's reduce-overhead mode (its CUDA graph trees
    check the graph's inputs at every call) is measured."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # off the capture: compiling, cuDNN's choices, the Triton kernels' checks
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out
    return replay


def compile_modes(args) -> list[str | None]:
    """The torch.compile modes asked for, each once (--compile alone: torch's default, None)."""
    return list(dict.fromkeys(args.compile_mode or [None])) if args.compile or args.compile_mode else []


def bench_fastpath(args, device) -> None:
    """The default path (what `load_model` returns) against the authors' network on the same
    weights: NCHW float32 with ADM's op-by-op ResBlocks and einsum attention."""
    half = fastest_dtype(device) if device.type == "cuda" else torch.bfloat16 if cpu_has_native_bf16() else None
    amp = "" if half is None else f" + autocast {str(half).removeprefix('torch.')}"
    rows = []
    for preset in args.presets:
        model = random_model(preset, "student", device)
        for size in args.sizes:
            x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1

            def reference_forward() -> torch.Tensor:
                with reference_ops():
                    return model.velocity(x, x, 0.5)

            transposed = oftsr.unet.UPSAMPLE_CONV_TRANSPOSED.get(device.type, False)
            multiple = oftsr.unet.CONV_CHANNEL_MULTIPLE.get(device.type)

            def variant(upsample_transposed: bool = transposed, pad_channels: int | None = multiple,
                        cudnn_benchmark: bool = torch.backends.cudnn.benchmark,
                        join_without_copy: bool = oftsr.unet.JOIN_WITHOUT_COPY,
                        skip_in_triton: bool = oftsr.unet.SKIP_MATMUL_IN_TRITON.get(device.type, False), **opts):
                def setup():
                    oftsr.unet.UPSAMPLE_CONV_TRANSPOSED[device.type] = upsample_transposed
                    oftsr.unet.CONV_CHANNEL_MULTIPLE[device.type] = pad_channels
                    oftsr.unet.JOIN_WITHOUT_COPY = join_without_copy
                    oftsr.unet.SKIP_MATMUL_IN_TRITON[device.type] = skip_in_triton
                    torch.backends.cudnn.benchmark = cudnn_benchmark
                    model.optimize(**opts)
                return (setup, lambda: model.velocity(x, x, 0.5))

            restore = variant()[0]  # the settings found, on the default path
            authors = "authors' network (NCHW fp32, ADM ops)"
            variants = {authors: (lambda: model.optimize(channels_last=False), reference_forward),
                        "default (load_model)": variant()}
            if args.fastpath_layouts:
                variants["fast ops, NCHW"] = variant(channels_last=False)
                variants["fast ops, channels_last"] = variant(channels_last=True)
            if half is not None:
                variants["default" + amp] = variant(autocast=half)
            # the up-sampling blocks the other way (ADM's up-sampling then conv, or one transposed
            # conv), in the precision the CLI and nodes run on the device (bf16 on a GPU)
            other = "ADM's up-sampling then conv" if transposed else "up-sampling conv as one transposed conv"
            gpu_half = half if device.type == "cuda" else None
            variants[f"default{amp if gpu_half else ''}, {other}"] = variant(not transposed, autocast=gpu_half)
            if device.type == "cuda" and triton_groupnorm.serves(device):
                # the default there (channels_last convolutions, no layout copies around the
                # norms), against the NCHW path with PyTorch's GroupNorm that it replaced
                variants["NCHW, PyTorch GroupNorm" + amp] = variant(channels_last=False, autocast=half)
                variants["channels_last + Triton GroupNorm" + amp] = variant(channels_last=True, autocast=half)
            if device.type == "cuda":
                # the first and last convs (6 channels) as they are, against padded to 8 (the default);
                # and cuDNN timing its algorithms per shape (a process-wide setting, off by default)
                other = "unpadded" if multiple else "padded to 8 channels"
                variants[f"default{amp}, first and last convs {other}"] = variant(
                    pad_channels=None if multiple else 8, autocast=half)
                variants[f"default{amp}, cudnn.benchmark"] = variant(cudnn_benchmark=True, autocast=half)
                # the decoder blocks' input joined with its skip in a copy, as before 0.17
                variants[f"default{amp}, decoder inputs joined by a copy"] = variant(join_without_copy=False,
                                                                                      autocast=half)
                # the 1x1 skip convolutions and their residual adds as one Triton kernel each, or
                # as cuBLAS's products then the add
                skip = oftsr.unet.SKIP_MATMUL_IN_TRITON.get(device.type, False)
                probe = torch.zeros(1, 32, 4, 4, device=device, dtype=half).contiguous(memory_format=torch.channels_last)
                with torch.no_grad():  # its one-time check passed
                    skip_serves = triton_groupnorm.skip_available(probe, probe)
                if skip or skip_serves:
                    variants[f"default{amp}, skip convs {'by cuBLAS' if skip else 'in the residual add (Triton)'}"] = \
                        variant(skip_in_triton=not skip, autocast=half)
                else:
                    print(f"(no row for the Triton skip convolution: it does not serve {half} on this GPU)")
            with torch.inference_mode():
                model.optimize(channels_last=False)
                reference = reference_forward()
                try:
                    secs = interleaved(variants, device, args.repeat)
                finally:
                    restore()
                def time_against_authors(name: str, fn, queued: str | None = None) -> None:
                    """A row timed in turns with the authors' network (the default settings, as
                    `fn` was made with); with `queued`, a second row of the same calls queued back
                    to back: the GPU's pace, not one call's latency."""
                    variants[name] = (restore, fn)
                    secs[name] = interleaved({authors: variants[authors], name: variants[name]}, device,
                                             args.repeat)[name]
                    if queued is not None:
                        variants[queued] = variants[name]
                        secs[queued] = back_to_back(fn, device, max(args.repeat, 10))

                for mode in compile_modes(args):  # on the device's default layout, as `oftsr --compile` runs it
                    amp_dtype = half if device.type == "cuda" else None
                    compiled, first = compiled_variant(model, mode, amp_dtype, lambda m: m.velocity(x, x, 0.5))
                    name = f"default{amp if amp_dtype else ''} + torch.compile {mode or 'default'} (first call {first:.0f} s)"
                    queued = name.replace(" (first call", ", calls back to back (first call")
                    time_against_authors(name, compiled, queued if device.type == "cuda" else None)
                if device.type == "cuda" and compile_modes(args):
                    # torch.compile's default mode inside one CUDA graph recorded by hand (t as a
                    # tensor: a float would be copied from the host, which a capture refuses)
                    t_half = torch.full((args.batch,), 0.5, device=device)
                    name = f"default{amp} + torch.compile default, one CUDA graph recorded by hand"
                    try:
                        compiled, _ = compiled_variant(model, None, half, lambda m: m.velocity(x, x, t_half))
                        replay = graphed(compiled, device)
                    except RuntimeError as e:  # a measurement to try, not the product's path: say why and go on
                        print(f"(no row for a CUDA graph recorded by hand: {str(e).splitlines()[0][:200]})")
                    else:
                        time_against_authors(name, replay, f"{name}, calls back to back")
                flops = flops_per_forward(model, size) * args.batch
                peak = bf16_peak(device)
                for name, (setup, fn) in variants.items():
                    setup()
                    diff = (fn() - reference).abs().max().item()
                    base = secs[authors]
                    # of the card's dense bf16 peak, for the rows that run in half precision
                    util = f"{flops / secs[name] / 1e12 / peak * 100:.1f}%" if peak and amp and amp in name else ""
                    rows.append([preset, f"{size}", name, f"{secs[name] * 1e3:.1f}", f"{base / secs[name]:.2f}", util,
                                 f"{diff:.1e}"])
                restore()
    table(f"Fast path against the authors' network, identical weights and inputs (batch {args.batch}, median of "
          f"{args.repeat} interleaved runs), {device_name(device)}",
          ["preset", "px", "path", "ms / forward", "speed-up", "MFU", "max |diff|"], rows)


def bench_baselines(args, device) -> None:
    """What ComfyUI users run instead, at the same output size: ESRGAN x4 (RRDBNet) and
    Real-ESRGAN's SRVGGNetCompact x4 (realesr-general-x4v3's shape), built with spandrel's
    architectures (random weights: speed does not depend on them) and run as spandrel runs
    them (NCHW float32), against the bundled-size `compact` student's whole `upscale` call."""
    try:
        from spandrel.architectures.Compact import Compact
        from spandrel.architectures.ESRGAN import ESRGAN
    except ImportError:
        print("\n(baselines skipped: spandrel is not installed; `pip install 'oftsr[bench]'`)")
        return
    student = random_model("compact", "student", device).optimize()
    others = {"ESRGAN x4 (RRDBNet)": ESRGAN(num_filters=64, num_blocks=23, scale=4),
              "Real-ESRGAN SRVGGNetCompact x4": Compact(num_feat=64, num_conv=32, upscale=4)}
    others = {name: net.to(device).eval() for name, net in others.items()}
    ours = {"OFTSR compact student, one step": student}
    if device.type == "cuda":  # what `oftsr upscale` and Load OFTSR Model run there by default (dtype auto)
        ours[f"OFTSR compact student, one step, {str(fastest_dtype(device)).removeprefix('torch.')} weights"] = (
            random_model("compact", "student", device, fastest_dtype(device)).optimize())
    rows = []
    for size in args.sizes:
        lr = torch.rand(1, 3, size // 4, size // 4, device=device)
        variants = {name: (lambda: None, lambda net=net: oftsr.upscale(net, lr)) for name, net in ours.items()}
        variants |= {name: (lambda: None, lambda net=net: net(lr)) for name, net in others.items()}
        with torch.inference_mode():
            secs = interleaved(variants, device, args.repeat)
        base = secs["OFTSR compact student, one step"]
        nets = {**ours, **others}
        rows += [[name, f"{count_parameters(nets[name]) / 1e6:.1f} M", f"{size}", f"{sec * 1e3:.0f}", f"{sec / base:.2f}"]
                 for name, sec in secs.items()]
    table(f"x4 networks ComfyUI users run instead, same output size (batch 1, median of {args.repeat} interleaved "
          f"runs), {device_name(device)}", ["network", "parameters", "output px", "ms / image", "x our time"], rows)


def bench_images(args, device) -> None:
    """Images per second of the one-step `compact` student (the bundled size) on a batch of
    whole images, `oftsr.upscale` end to end (noise, condition, network, output), against the
    same call with the authors' network: ADM's ops, NCHW, float32 as their code runs, and
    also under the same autocast as ours. With --compile, ours also compiled."""
    half = fastest_dtype(device) if device.type == "cuda" else None
    amp = "" if half is None else f" + autocast {str(half).removeprefix('torch.')}"
    size, batch = args.images_size or (1024 if device.type == "cuda" else 256), args.images_batch
    model = random_model("compact", "student", device)
    lr = torch.rand(batch, 3, size // 4, size // 4, device=device)

    def run(reference: bool):
        def fn() -> torch.Tensor:
            with reference_ops() if reference else contextlib.nullcontext():
                return oftsr.upscale(model, lr, tile=0)
        return fn

    variants = {"authors' network (NCHW fp32, ADM ops)": (lambda: model.optimize(channels_last=False), run(True)),
                "ours, default (load_model)": (lambda: model.optimize(), run(False))}
    if half is not None:
        variants["authors' network" + amp] = (lambda: model.optimize(channels_last=False, autocast=half), run(True))
        variants["ours" + amp] = (lambda: model.optimize(autocast=half), run(False))
        if device.type == "cuda" and triton_groupnorm.serves(device):
            variants["ours, NCHW, PyTorch GroupNorm" + amp] = (
                lambda: model.optimize(channels_last=False, autocast=half), run(False))
            variants["ours, channels_last + Triton GroupNorm" + amp] = (
                lambda: model.optimize(channels_last=True, autocast=half), run(False))
    for mode in compile_modes(args):
        compiled, _ = compiled_variant(model, mode, half, lambda m: oftsr.upscale(m, lr, tile=0))
        variants[f"ours{amp} + torch.compile {mode or 'default'}"] = (lambda: None, compiled)
    with torch.inference_mode():
        secs = interleaved(variants, device, args.repeat)
    base = secs["authors' network (NCHW fp32, ADM ops)"]
    rows = [[name, f"{sec * 1e3:.0f}", f"{batch / sec:.2f}", f"{base / sec:.2f}"] for name, sec in secs.items()]
    table(f"One-step compact student, {batch} images of {size // 4} px to {size} px per call (median of "
          f"{args.repeat} interleaved runs), {device_name(device)}",
          ["network", "ms / batch", "images / s", "x authors' fp32"], rows)


def _train_step_child(preset: str, size: int, batch: int, checkpointing: str, device: str, repeat: int) -> None:
    """One teacher training step (flow loss, backward, Adam) in this fresh process: its
    peak memory and median seconds. bf16 autocast on CUDA, as the recipe trains."""
    from oftsr.training.degradations import make_lr
    from oftsr.training.losses import sample_flow_time, teacher_loss

    dev = torch.device(device)
    model = oftsr.create_model(preset, role="teacher").to(dev).train()
    model.unet.gradient_checkpointing = checkpointing == "on"
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x1 = torch.rand(batch, 3, size, size, device=dev) * 2 - 1
    x_lr = make_lr(x1, 4, "bicubic")
    autocast = torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = teacher_loss(model, x1, x_lr, 0.2, torch.randn_like(x1), sample_flow_time(batch, dev))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _peak_rss()  # weights, inputs, libraries
    seconds = timed(step, dev, repeat)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss()
    print(json.dumps({"step": peak - before, "seconds": seconds}))


def bench_train_memory(args, device) -> None:
    """Memory and time of one teacher training step, with and without
    --gradient_checkpointing, each in a fresh process."""
    rows = []
    for preset in args.presets:
        for size in args.sizes:
            results = {}
            for mode in ("off", "on"):
                out = subprocess.run([sys.executable, __file__, "--_train_step_child", preset, str(size),
                                      str(args.train_batch), mode, str(device), str(args.repeat)],
                                     capture_output=True, text=True, timeout=7200)
                if out.returncode != 0:
                    results[mode] = "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:80]
                    continue
                results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            base = results["off"] if isinstance(results["off"], dict) else None
            for mode in ("off", "on"):
                r = results[mode]
                cells = [preset, str(size), str(args.train_batch), mode]
                if isinstance(r, str):
                    rows.append(cells + [r, "", "", ""])
                    continue
                rows.append(cells + [f"{r['step'] / 2**20:,.0f}", "" if base is None else f"{r['step'] / base['step']:.2f}",
                                     f"{r['seconds']:.2f}", "" if base is None else f"{r['seconds'] / base['seconds']:.2f}"])
    kind = "CUDA max allocated, bf16 autocast" if device.type == "cuda" else "peak RSS, float32"
    # memory: what the steps add to the peak over the weights, inputs and libraries before them (Adam's state included)
    table(f"One teacher training step (flow loss, backward, Adam), --gradient_checkpointing off and on, "
          f"{device_name(device)}", ["preset", "px", "batch", "checkpointing", f"step memory (MiB, {kind})", "x off",
                                     "s / step", "x off"], rows)


# Kernel or op names to the part of the network they serve, first match wins. CUDA kernel
# names come from cuDNN, cuBLAS, CUTLASS and our Triton norm; CPU names are aten ops.
PROFILE_CATEGORIES = [
    # torch.compile's generated kernels fuse several ops (their names list them): reductions
    # (a norm's statistics, with what inductor fused into them) and pointwise kernels
    ("compiled: reductions (norm statistics and what is fused in)", r"^triton_(red|per)_"),
    ("compiled: pointwise (norm apply, SiLU, adds, copies)", r"^triton_poi_"),
    ("attention", r"flash|fmha|attention|softmax|bmm"),
    ("GroupNorm", r"group_?norm|rowwisemoments|computefusedparams"),  # ours, and PyTorch's CUDA kernels
    ("layout and dtype copies", r"nchwtonhwc|nhwctonchw|transpose|permute|copy|contiguous|clone|_to_copy|\bcat\b|catarray"),
    ("convolution", r"conv|implicit_?gemm|xmma_fprop|fprop|winograd|cudnn|mkldnn"),
    ("matmul (linear)", r"gemm|matmul|addmm|linear|cublas|cutlass"),
    ("elementwise (SiLU, adds, scale-shift)", r"elementwise|vectorized|silu|add|mul|sigmoid|where|fill|triton"),
]


def profile_category(name: str) -> str:
    low = name.lower()
    for category, pattern in PROFILE_CATEGORIES:
        if re.search(pattern, low):
            return category
    return "other"


def bench_profile(args, device) -> None:
    """Where a forward's time goes on the default path (what `load_model` returns, with bf16
    autocast on a GPU), and compiled with each --compile_mode: torch.profiler's self time
    per kernel (GPU) or per op (CPU), summed by part of the network, and the kernels' busy
    share of the wall time (on a GPU, the rest is launch overhead that CUDA graphs remove)."""
    half = fastest_dtype(device) if device.type == "cuda" else None
    amp = f", autocast {str(half).removeprefix('torch.')}" if half else ""
    for preset in args.presets:
        model = random_model(preset, "student", device)
        for size in args.sizes:
            x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
            title = f"{preset} at {size} px, batch {args.batch}"
            model.optimize(autocast=half)  # again: compiling a copy resets the model's own settings
            profile_forward(args, device, lambda: model.velocity(x, x, 0.5), f"{title}, default path{amp}")
            for mode in compile_modes(args):
                compiled, _ = compiled_variant(model, mode, half, lambda m: m.velocity(x, x, 0.5))
                profile_forward(args, device, compiled, f"{title}, torch.compile {mode or 'default'}{amp}")


def kernel_times(fn, device, repeat: int) -> dict[str, float]:
    """Milliseconds per call of `fn` by kernel (GPU: each kernel's own time, whatever the
    launch gaps between them) or by op (CPU: self time), from torch.profiler over `repeat` calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        for _ in range(repeat):
            fn()
        sync(device)
    kernels: dict[str, float] = {}
    for evt in prof.key_averages():
        on_gpu = getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA
        if device.type == "cuda" and not on_gpu:
            continue
        if device.type != "cuda" and not evt.key.startswith("aten::"):  # (compiled CPU kernels: the busy gap)
            continue
        us = (getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
              if device.type == "cuda" else evt.self_cpu_time_total)
        if us > 0:
            kernels[evt.key] = kernels.get(evt.key, 0.0) + us / 1e3 / repeat
    return kernels


def profile_forward(args, device, fn, title: str) -> None:
    """Profiles `fn` (one forward) --repeat times and prints its parts and top kernels."""
    with torch.inference_mode():
        wall = timed(fn, device, args.repeat)
    kernels = kernel_times(fn, device, args.repeat)
    busy = sum(kernels.values())
    if not busy:
        print(f"\n(profile of {title}: the profiler recorded no kernel time)")
        return
    parts: dict[str, float] = {}
    for name, ms in kernels.items():
        category = profile_category(name)
        parts[category] = parts.get(category, 0.0) + ms
    unit = "GPU kernel" if device.type == "cuda" else "CPU op (self)"
    rows = [[c, f"{ms:.2f}", f"{100 * ms / busy:.1f}"] for c, ms in sorted(parts.items(), key=lambda kv: -kv[1])]
    rows.append([f"all ({unit} time; wall {wall * 1e3:.2f} ms, busy {100 * busy / (wall * 1e3):.0f}%)",
                 f"{busy:.2f}", "100.0"])
    table(f"Where the time goes: {title}, {device_name(device)}", ["part", "ms / forward", "%"], rows)
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:args.profile_top]
    table(f"Top {len(top)} {unit}s: {title}", ["name", "part", "ms / forward", "%"],
          [[n[:90].replace("|", "/"), profile_category(n), f"{ms:.2f}", f"{100 * ms / busy:.1f}"] for n, ms in top])


# What `--only kernels` tries for each Triton pass: blocks of pixels x channels, 4 or 8 warps,
# and the statistics pass's chunk of pixels.
LAUNCH_CANDIDATES = [dict(BLOCK_PIXELS=p, BLOCK_CHANNELS=c, num_warps=w)
                     for p, c in [(32, 64), (64, 64), (128, 64), (32, 128), (64, 128)] for w in (4, 8)]
CHUNK_CANDIDATES = [512, 1024, 2048, 4096]
# ... and for the skip convolution's kernel, its products' K step too
SKIP_CANDIDATES = [dict(BLOCK_PIXELS=p, BLOCK_CHANNELS=c, BLOCK_K=k, num_warps=w)
                   for p, c, k, w in [(64, 128, 32, 4), (64, 128, 64, 4), (64, 128, 32, 8), (128, 128, 32, 8),
                                      (64, 64, 32, 4), (128, 64, 32, 4), (32, 128, 32, 4)]]


def bench_kernels(args, device) -> None:
    """Launch settings of the Triton GroupNorm passes (`triton_groupnorm.LAUNCH_CONFIG`: block
    of pixels x channels and warps of the statistics, apply and residual-add passes, and the
    chunk of pixels that the statistics and residual-add passes sum over, and the skip
    convolution's kernel, switched on for its own rows), each tried on a whole bf16 forward
    and timed by the GPU time of that pass's kernels (torch.profiler), so that launch
    overhead on a slow host does not hide the differences; then the whole forward's GPU
    time with the fastest of each against the settings in the package."""
    if not triton_groupnorm.serves(device):
        print(f"\n(kernels skipped: the Triton GroupNorm does not run on {device_name(device)})")
        return
    preset, size, half = args.presets[0], args.sizes[0], fastest_dtype(device)
    model = random_model(preset, "student", device).optimize(autocast=half)
    x = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    found = {k: dict(v) for k, v in triton_groupnorm.LAUNCH_CONFIG.items()}
    found_chunk = triton_groupnorm._PIXELS_PER_CHUNK
    # the kernels each setting changes, by name
    timed_kernels = {"stats": ("_groupnorm_stats",), "apply": ("_groupnorm_apply",), "add": ("_residual_add",),
                     "chunk": ("_groupnorm_stats", "_groupnorm_finalize", "_residual_add", "_skip_matmul_add"),
                     "skip": ("_skip_matmul_add",)}
    skip_found = oftsr.unet.SKIP_MATMUL_IN_TRITON.get(device.type, False)

    def settle(kind: str | None = None, option=None) -> None:
        oftsr.unet.SKIP_MATMUL_IN_TRITON[device.type] = skip_found or kind == "skip"
        for k, v in found.items():
            triton_groupnorm.LAUNCH_CONFIG[k] = dict(v)
        triton_groupnorm._PIXELS_PER_CHUNK = option if kind == "chunk" else found_chunk
        if kind in found:
            triton_groupnorm.LAUNCH_CONFIG[kind] = dict(option)

    def label(kind: str, option) -> str:
        if kind == "chunk":
            return f"{option} pixels"
        k_step = f", K step {option['BLOCK_K']}" if "BLOCK_K" in option else ""
        return f"{option['BLOCK_PIXELS']}x{option['BLOCK_CHANNELS']}{k_step}, {option['num_warps']} warps"

    def fits(chunk: int, *configs: dict) -> bool:  # a block must not cross into the next chunk
        return all(chunk % config["BLOCK_PIXELS"] == 0 for config in configs)

    forward = lambda: model.velocity(x, x, 0.5)  # noqa: E731
    rows, best = [], {}
    try:
        with torch.inference_mode():
            for kind in ("stats", "apply", "add", "chunk", "skip"):
                in_package = found_chunk if kind == "chunk" else found[kind]  # always among those timed
                candidates = {"chunk": CHUNK_CANDIDATES, "skip": SKIP_CANDIDATES}.get(kind, LAUNCH_CANDIDATES)
                options = [in_package] + [o for o in candidates if o != in_package]
                if kind == "chunk":
                    options = [c for c in options if fits(c, found["stats"], found["add"], found["skip"])]
                elif kind in ("stats", "add", "skip"):
                    options = [o for o in options if fits(found_chunk, o)]
                current = label(kind, in_package)
                secs = {}
                for option in options:
                    try:
                        settle(kind, option)
                        forward()  # builds the kernels for these settings
                    except Exception as e:  # a block too large for the card's registers, say
                        rows.append([kind, label(kind, option), f"failed: {type(e).__name__}", ""])
                        continue
                    times = kernel_times(forward, device, args.repeat)
                    secs[label(kind, option)] = (sum(ms for name, ms in times.items()
                                                     if any(k in name for k in timed_kernels[kind])), option)
                best[kind] = min(secs.values(), key=lambda v: v[0])[1]
                for name, (ms, _) in secs.items():
                    mark = " (in the package)" if name == current else ""
                    ratio = f"{secs[current][0] / ms:.2f}" if current in secs and ms > 0 else ""
                    rows.append([kind, name + mark, f"{ms:.2f}", ratio])
            table(f"Triton GroupNorm launch settings: GPU time of each pass over every norm or residual add of one "
                  f"{preset} forward at {size} px, batch {args.batch}, {str(half).removeprefix('torch.')} "
                  f"(torch.profiler, {args.repeat} runs), {device_name(device)}",
                  ["pass", "block (pixels x channels), warps", "GPU ms / forward", "x package's"], rows)

            def fastest_of_each() -> None:
                settle()
                for kind in ("stats", "apply", "add", "skip"):
                    triton_groupnorm.LAUNCH_CONFIG[kind] = dict(best[kind])
                if fits(best["chunk"], best["stats"], best["add"], best["skip"]):
                    triton_groupnorm._PIXELS_PER_CHUNK = best["chunk"]

            settle()
            reference = forward()
            package = sum(kernel_times(forward, device, args.repeat).values())
            fastest_of_each()
            forward()
            fastest = sum(kernel_times(forward, device, args.repeat).values())
            diff = (forward() - reference).abs().max().item()
            chosen = "; ".join(f"{k} {label(k, best[k])}" for k in ("stats", "apply", "add") + ("skip",) * skip_found)
            chosen += f"; chunk {triton_groupnorm._PIXELS_PER_CHUNK} pixels"
            table(f"Whole forward, GPU time of all its kernels ({preset}, {size} px, batch {args.batch}, "
                  f"{str(half).removeprefix('torch.')}), {device_name(device)}",
                  ["launch settings", "GPU ms / forward", "max |diff|"],
                  [["in the package", f"{package:.2f}", "0"],
                   [f"fastest of each: {chosen}", f"{fastest:.2f}", f"{diff:.1e}"]])
    finally:
        settle()


def bench_flops(args, device) -> None:
    rows = []
    for preset in dict.fromkeys(["tiny", *args.presets, "div2k", "imagenet"]):
        with torch.device("meta"):
            model = oftsr.create_model(preset, role="student")
        rows.append([preset, f"{oftsr.unet.count_parameters(model):,}"] +
                    [f"{flops_per_forward(model, s) / 1e12:.3f}" for s in args.sizes])
    table("FLOPs per forward (TFLOP, one image at each output size, torch.utils.flop_counter)",
          ["preset", "parameters", *(f"{s} px" for s in args.sizes)], rows)


def _synthetic_photographs(folder: Path, count: int, width: int, height: int) -> None:
    """Photograph-like PNGs (smooth colour fields, edges and grain), as large as DIV2K's."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(count):
        base = torch.rand(1, 3, height // 64, width // 64, generator=g)
        img = torch.nn.functional.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)[0]
        img = (img + 0.04 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"photo{i}.png")


def bench_loader(args, device) -> None:
    """Training crops per second of one loader worker (one thread), from the photographs
    as they are and from their tiles (`trainer/make_tiles.py`), and the folder scan."""
    from oftsr.training.data import SRDataset, scan_image_sizes
    from oftsr.training.tiles import cut_tiles

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        with tempfile.TemporaryDirectory() as work:
            photos = Path(args.loader_data) if args.loader_data else Path(work) / "photos"
            if not args.loader_data:
                photos.mkdir()
                _synthetic_photographs(photos, 4, 2040, 1356)
            start = time.perf_counter()
            sizes = scan_image_sizes(photos)
            scan_ms = (time.perf_counter() - start) * 1e3 / len(sizes)
            tiles = Path(work) / "tiles"
            for path in sizes:
                cut_tiles(path, photos, tiles, args.loader_tile, args.loader_tile // 2)
            rows = []
            for source, folder in (("photographs", photos), (f"tiles of {args.loader_tile} px", tiles)):
                files = scan_image_sizes(folder)
                mp = sum(w * h for w, h in files.values()) / len(files) / 1e6
                for degradation in ("bicubic", "realesrgan"):
                    data = SRDataset(folder, resolution=args.loader_resolution, degradation=degradation,
                                     files=list(files))
                    n = max(4, args.repeat * 4)
                    start = time.perf_counter()
                    for i in range(n):
                        data[i % len(data)]
                    rows.append([source, f"{len(files)}", f"{mp:.2f}", degradation,
                                 f"{n / (time.perf_counter() - start):.1f}"])
    finally:
        torch.set_num_threads(threads)
    table(f"Training crops of {args.loader_resolution} px per second, one loader worker (one thread), "
          f"{platform.machine()} CPU; the scan reads {scan_ms:.2f} ms per file",
          ["source", "files", "MP each", "degradation", "crops / s"], rows)


def _photograph_levels(width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint16 levels of a photograph-like image (smooth colour fields and grain), as a
    raw converter's 16-bit export holds them."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, max(1, height // 64), max(1, width // 64), generator=g)
    img = torch.nn.functional.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)[0]
    img = (img + 0.01 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    return (img.permute(1, 2, 0) * 65535).round().to(torch.int32).contiguous().numpy().astype(np.uint16)


def bench_files(args, device) -> None:
    """Reading and writing the files photographs come in, as `oftsr upscale` does
    (`load_image`, `save_image`), in ms per megapixel; 16-bit PNGs as editors write them
    (libpng's adaptive row filters), and pypng's pure-Python reading of the same file for
    comparison (how they were read before version 0.19)."""
    import imagecodecs
    import png
    import tifffile
    from PIL import Image

    from oftsr.images import load_image, save_image

    width, height = args.files_size
    levels = _photograph_levels(width, height)
    image = torch.from_numpy(levels.astype(np.float32) / 65535).permute(2, 0, 1)
    mp = width * height / 1e6

    def per_mp(fn) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1e3 / mp

    def pypng_read(path: Path) -> None:
        rows = png.Reader(filename=str(path)).asDirect()[2]
        for _ in rows:
            pass

    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        eight = (levels >> 8).astype(np.uint8)
        # what an upscaler writes: smoother than a photograph (its detail at a quarter of the size, 4x bicubic)
        result = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(image[None], 4), size=(height, width),
                                                 mode="bicubic", align_corners=False)[0].clamp(0, 1)
        # name: (file, how it is made, bit depth, the image save_image writes for the write time)
        files = {"JPEG, 8-bit": ("photo.jpg", lambda p: Image.fromarray(eight).save(p, quality=95), 8, image),
                 "PNG, 8-bit": ("photo8.png", lambda p: Image.fromarray(eight).save(p), 8, image),
                 "PNG, 16-bit (libpng-filtered, as editors write)": (
                     "photo16.png", lambda p: p.write_bytes(imagecodecs.png_encode(levels)), 16, image),
                 "TIFF, 16-bit, deflate": ("zip.tif", lambda p: tifffile.imwrite(p, levels, compression="zlib",
                                                                                 predictor=True, photometric="rgb"),
                                           16, image),
                 "TIFF, 16-bit, LZW (Photoshop's choice)": (
                     "lzw.tif", lambda p: tifffile.imwrite(p, levels, compression="lzw", predictor=True,
                                                           photometric="rgb"), 16, image),
                 "PNG, 8-bit, an upscaled result (smooth)": ("result8.png", lambda p: save_image(result, p), 8, result)}
        for name, (file, write, depth, source) in files.items():
            path = folder / file
            write(path)
            got, got_depth = load_image(path)
            assert got.shape == (1, 3, height, width) and got_depth == depth, (name, got.shape, got_depth)
            read = per_mp(lambda path=path: load_image(path))
            out = folder / f"out_{file}"
            written = per_mp(lambda out=out, depth=depth, source=source: save_image(source, out, bit_depth=depth))
            rows.append([name, f"{path.stat().st_size / 1e6 / mp:.2f}", f"{read:.1f}", f"{written:.1f}"])
            if file == "photo16.png":
                rows.append(["PNG, 16-bit, read by pypng (before 0.19)", "", f"{per_mp(lambda: pypng_read(path)):.1f}",
                             ""])
    table(f"Image files, {width}x{height} ({mp:.1f} MP), ms per megapixel, {platform.machine()} CPU "
          f"(best of {args.repeat})", ["file", "MB per MP", "read (load_image)", "write (save_image)"], rows)


SECTIONS = {"throughput": bench_throughput, "student_vs_teacher": bench_student_vs_teacher, "tiling": bench_tiling,
            "memory": bench_memory, "fastpath": bench_fastpath, "flops": bench_flops, "baselines": bench_baselines,
            "images": bench_images, "train_memory": bench_train_memory, "profile": bench_profile,
            "loader": bench_loader, "kernels": bench_kernels, "files": bench_files}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory_child":
        _memory_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_train_step_child":
        _train_step_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=[s for s in SECTIONS if s not in ("profile", "kernels")],
                   help="sections to run (all but profile and kernels by default)")
    p.add_argument("--full", action="store_true", help="the small, div2k and imagenet presets at 256, 512 and 1024 px (implied on CUDA; give --presets compact for the bundled network); slow on a CPU")
    p.add_argument("--presets", nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--teacher_steps", type=int, default=16)
    p.add_argument("--tiling_size", type=int, default=2048)
    p.add_argument("--memory_mp", nargs="+", type=float, default=[1, 4, 12], help="input photo sizes (megapixels)")
    p.add_argument("--memory_real_mp", type=float, default=1,
                   help="largest input run with the bundled student in the memory table (the rest: a stand-in network)")
    p.add_argument("--memory_tile", type=int, default=512)
    p.add_argument("--memory_commands", nargs="+", choices=["upscale", "sample"], default=["upscale", "sample"],
                   help="what the memory table runs: the student's one step, the teacher's solver, or both")
    p.add_argument("--compile", action="store_true", help="include torch.compile in the fast-path table")
    p.add_argument("--compile_mode", nargs="+", choices=oftsr.model.COMPILE_MODES, default=None,
                   help="torch.compile modes, a row each (implies --compile), e.g. default reduce-overhead "
                        "(CUDA graphs); --compile alone: torch's default mode")
    p.add_argument("--images_size", type=int, default=None, help="output px of the images section (1024 on CUDA, 256 on CPU)")
    p.add_argument("--images_batch", type=int, default=8, help="images per call in the images section")
    p.add_argument("--train_batch", type=int, default=4, help="crops per step in the train_memory section")
    p.add_argument("--profile_top", type=int, default=15, help="kernels (ops on a CPU) listed in the profile section")
    p.add_argument("--fastpath_layouts", action="store_true", help="fast-path rows for each layout, not only the default")
    p.add_argument("--loader_data", default=None,
                   help="folder of photographs for the loader section (default: four synthetic 2040x1356 PNGs)")
    p.add_argument("--loader_resolution", type=int, default=256, help="crop size of the loader section")
    p.add_argument("--loader_tile", type=int, default=480, help="tile size of the loader section's tiles")
    p.add_argument("--files_size", type=int, nargs=2, default=[2048, 1365], metavar=("WIDTH", "HEIGHT"),
                   help="image size of the files section (default 2.8 MP)")
    args = p.parse_args()
    device = torch.device(args.device)
    full = args.full or device.type == "cuda"
    args.presets = args.presets or (["small", "div2k", "imagenet"] if full else ["small", "div2k"])
    args.sizes = args.sizes or ([256, 512, 1024] if full else [256, 512])
    print(f"oftsr {oftsr.__version__}, torch {torch.__version__}, {device_name(device)}, "
          f"{os.cpu_count()} CPUs visible")
    for name in args.only:
        SECTIONS[name](args, device)


if __name__ == "__main__":
    main()
