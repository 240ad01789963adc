"""GroupNorm (+ per-image scale-shift, + SiLU) for channels_last CUDA tensors, in Triton.

PyTorch's CUDA group_norm kernel works on NCHW: given channels_last activations it copies
them to NCHW and back, so a channels_last network pays two layout transposes per norm,
which is why the CUDA fast path stays NCHW where these kernels do not run. These kernels read and write
(N, H, W, C) memory directly:

1. `_groupnorm_stats`: per image, per channel, float32 sum and sum of squares over a chunk of pixels
   (one program per (chunk, channel block, image)).
2. `_groupnorm_finalize`: per image and group, the chunks' sums to mean and 1/std, folded
   with the affine parameters into a per-channel gain and offset (one small launch).
3. `_groupnorm_apply`: y = x * a[n, c] + b[n, c], then SiLU if asked, where a and b fold the
   statistics, the norm's affine parameters and ADM's time-embedding scale-shift, so the
   activations are read twice and written once; in ADM's up and down blocks it writes y
   nearest up-sampled or 2x2 average-pooled, as those blocks resample right after.
4. `_residual_add`: out = h + skip + bias, the skip read up-sampled or pooled in those blocks,
   so neither resampled tensor is ever written out; it also sums out as the statistics pass
   would, so the norm that reads out next (every ResBlock's output is normalised next) skips
   that pass.
5. `_skip_matmul_add`: out = h + [x | x2] @ W^T + bias, a ResBlock's 1x1 skip convolution
   (of a decoder block's input and encoder skip as two tensors) and its residual add in
   one pass, with the same sums (`unet.SKIP_MATMUL_IN_TRITON` says where it runs).

The bias of the convolution before a norm rides in its statistics (`x_bias`), and a ResBlock's
two output biases in its residual add (`residual_add`): PyTorch adds a convolution's bias
after cuDNN's kernel, in a broadcast pass of its own, which took a sixth of a bf16 div2k
forward on an H200.

Sum and sum of squares (not Welford), as TensorRT's GroupNorm plugin does: exact enough
while |mean| / std of a group stays below about 100, far beyond UNet activations.

The kernels are in `triton_kernels`, imported lazily: without `triton` (CPU-only installs,
macOS) `available()` is False and callers keep PyTorch's kernel. Set TRITON_INTERPRET=1 before the import to run the
kernels on CPU tensors (slowly), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Pixels per program of the statistics pass: many chunks fill a GPU (512 per image at 512
# px), and the chunk reduction stays cheap. Block shape (pixels x channels) and warps of
# each pass over the activations: the passes are bound by memory traffic, and the block
# decides how many loads are in flight. Chosen by `bench.py --only kernels` on an H200
# (div2k, 512 px, batch 8, bf16: GPU time of the statistics pass 4.14 -> 2.97 ms, apply
# 4.76 -> 4.55, residual add 2.53 -> 2.41, chunks of 1,024 -> 512 pixels 4.29 -> 3.87 ms
# with the finalize pass; every kernel of the forward 32.62 -> 31.47 ms).
_PIXELS_PER_CHUNK = 512
_BLOCK_CHUNKS = 64  # chunks summed per step of the finalize pass
LAUNCH_CONFIG = {
    "stats": dict(BLOCK_PIXELS=64, BLOCK_CHANNELS=64, num_warps=4),
    "apply": dict(BLOCK_PIXELS=64, BLOCK_CHANNELS=128, num_warps=8),
    "add": dict(BLOCK_PIXELS=32, BLOCK_CHANNELS=128, num_warps=4),
    # not yet timed on a GPU: a usual tensor-core tile for a product this thin
    "skip": dict(BLOCK_PIXELS=64, BLOCK_CHANNELS=128, BLOCK_K=32, num_warps=4),
}


@functools.lru_cache(maxsize=1)
def _kernels():
    """The kernels' module (`triton_kernels`), or None when Triton is not installed (or its
    install is broken: a failed import must not stop a model from loading; PyTorch's kernel
    takes over)."""
    try:
        from . import triton_kernels
    except Exception as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "triton":  # not installed (CPU-only PyTorch, macOS)
            return None
        # installed but broken (a missing libcuda is an ImportError too): said once, as it costs speed
        warnings.warn(f"Triton is installed but does not import ({type(e).__name__}: {e}); using PyTorch's "
                      f"GroupNorm", stacklevel=2)
        return None
    return triton_kernels


def _require_kernels(what: str, instead: str = ""):
    """The kernels' module, for a launcher that cannot run without it."""
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError(f"{what} needs the `triton` package{instead}")
    return kernels


def installed() -> bool:
    """Whether Triton is importable, so that the kernels can be built."""
    return _kernels() is not None


def _check_pattern(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The one-time checks' input, (2, 64, 9, 7) channels_last, mean 1 and std 1.4: a fixed
    pattern, not random draws, as checking must leave the caller's RNG where it was."""
    x = torch.arange(2 * 64 * 9 * 7, device=device).mul(0.7).sin().mul(2).add(1).reshape(2, 64, 9, 7)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def kernels_work(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Run every kernel variant the network uses once on `device`, on `dtype` activations,
    against PyTorch's ops: False, with a warning, when they fail (a Triton that cannot build
    its launcher, say) or disagree, so that a broken install costs speed, never an image.
    Each dtype is compiled apart, so each is checked apart. (The skip convolution's kernel
    is checked on its own: `skip_kernel_works`.)"""
    x = _check_pattern(device, dtype)
    weight, bias = torch.linspace(0.5, 1.5, 64, device=device), torch.linspace(-1, 1, 64, device=device)
    per_image = torch.stack([weight, weight.flip(0)])  # (N, C): a time-embedding scale-shift
    big = x[..., :8, :6].contiguous(memory_format=torch.channels_last)  # even: the down blocks' pooling
    small = F.avg_pool2d(big, 2).contiguous(memory_format=torch.channels_last)

    def off(out: torch.Tensor, ref: torch.Tensor) -> float:
        return (out.float() - ref).abs().max().item()

    try:
        with torch.no_grad():
            xf, bigf, smallf = x.float(), big.float(), small.float()  # the references, in float32
            error = off(group_norm_nhwc(x, 32, weight, bias), F.group_norm(xf, 32, weight, bias))
            # the variants the network runs: per-image affine with a conv bias folded in, SiLU,
            # and the residual add that carries the output biases
            ref = F.silu(F.group_norm(xf + bias[:, None, None], 32) * per_image[..., None, None] + bias[:, None, None])
            error = max(error, off(group_norm_nhwc(x, 32, per_image, bias.expand(2, 64), silu=True, x_bias=bias), ref))
            added, stats = residual_add(x.mul(0.5), x, bias)
            ref = xf.mul(0.5).to(dtype).float() + xf + bias[:, None, None]
            error = max(error, off(added, ref))
            # the add's sums of its output stand in for the norm's statistics pass
            error = max(error, off(group_norm_nhwc(added, 32, weight, bias, x_stats=stats),
                                   F.group_norm(added.float(), 32, weight, bias)))
            # the up and down blocks' variants: the norm written resampled, the skip read resampled
            ref = F.silu(F.group_norm(bigf, 32, weight, bias))
            error = max(error, off(group_norm_nhwc(big, 32, weight, bias, silu=True, resample="down"),
                                   F.avg_pool2d(ref, 2)))
            error = max(error, off(group_norm_nhwc(big, 32, weight, bias, silu=True, resample="up"),
                                   F.interpolate(ref, scale_factor=2.0, mode="nearest")))
            ref = bigf * 0.5 + F.interpolate(smallf, scale_factor=2.0, mode="nearest") + bias[:, None, None]
            error = max(error, off(residual_add(big.mul(0.5), small, bias, "up")[0], ref))
            ref = smallf * 0.5 + F.avg_pool2d(bigf, 2) + bias[:, None, None]
            error = max(error, off(residual_add(small.mul(0.5), big, bias, "down")[0], ref))
            # a decoder block's input and skip as two tensors (a group straddling them)
            first, second = (part.contiguous(memory_format=torch.channels_last) for part in (x[:, :25], x[:, 25:]))
            error = max(error, off(group_norm_nhwc(first, 32, weight, bias, silu=True, x2=second),
                                   F.silu(F.group_norm(xf, 32, weight, bias))))
            # ... with the second's sums from a residual add (a skip that a ResBlock wrote)
            second, stats = residual_add(second, torch.zeros_like(second), torch.zeros(39, device=device))
            error = max(error, off(group_norm_nhwc(first, 32, weight, bias, x2=second, x2_stats=stats),
                                   F.group_norm(xf, 32, weight, bias)))

    except Exception as e:  # whatever Triton raises while building or launching
        warnings.warn(f"the Triton GroupNorm does not run on {device} in {dtype} ({type(e).__name__}: {e}); "
                      f"using PyTorch's GroupNorm there", RuntimeWarning, stacklevel=2)
        return False
    # float32 to its rounding; half precision to its own (outputs up to about 5: 2^-7 of that)
    if not error < (1e-3 if dtype == torch.float32 else 0.05):
        warnings.warn(f"the Triton GroupNorm is off on {device} by {error:.2g} in {dtype}; using PyTorch's GroupNorm "
                      f"there", RuntimeWarning, stacklevel=2)
        return False
    return True


def _skip_check_case(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """`skip_kernel_works`'s inputs (h = x; x split into the block input and the joined skip
    at channel 25), 1x1 weight, bias and float32 reference. The weights change from one
    input channel to the next, so that reading the second input's weights from a wrong
    column is off by 0.2 or more, and keep the outputs under 8, where bf16 rounds by at most
    2^-6, well inside the check's tolerance (outputs of 20 once failed a right kernel)."""
    x = _check_pattern(device, dtype)
    first, second = (part.contiguous(memory_format=torch.channels_last) for part in (x[:, :25], x[:, 25:]))
    w = torch.arange(64 * 64, device=device).mul(0.37).sin().mul(0.1).reshape(64, 64, 1, 1).to(dtype)
    bias = torch.linspace(-1, 1, 64, device=device)
    with torch.no_grad():
        ref = x.float() + F.conv2d(x.float(), w.float()) + bias[:, None, None]
    return x, first, second, w, bias, ref


def skip_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    """`kernels_work` for `skip_matmul_add` (bf16 and float16 only), checked apart: a
    failure costs that kernel (cuBLAS and the residual add take over), not the norms."""
    x, first, second, w, bias, ref = _skip_check_case(device, dtype)
    try:
        with torch.no_grad():
            added, stats = skip_matmul_add(x, first, w, bias, second)
            error = (added.float() - ref).abs().max().item()
            norm = group_norm_nhwc(added, 32, x_stats=stats)  # its sums stand in for the norm's own
            error = max(error, (norm.float() - F.group_norm(added.float(), 32)).abs().max().item())
    except Exception as e:
        warnings.warn(f"the Triton skip convolution does not run on {device} in {dtype} ({type(e).__name__}: {e}); "
                      f"using PyTorch's there", RuntimeWarning, stacklevel=2)
        return False
    if not error < 0.05:  # outputs under 8 (`_skip_check_case`), in half precision
        warnings.warn(f"the Triton skip convolution is off on {device} by {error:.2g} in {dtype}; using PyTorch's "
                      f"there", RuntimeWarning, stacklevel=2)
        return False
    return True


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    # Measured on Hopper; Triton's bf16 support and these kernels are on safe ground from
    # Ampere (compute capability 8.0) on. Older GPUs, and AMD's (ROCm reports its GPUs as
    # "cuda"; not measured), keep PyTorch's kernel.
    return (torch.version.hip is None and torch.cuda.get_device_capability(index) >= (8, 0)
            and kernels_work(torch.device("cuda", index)))


def serves(device: torch.device) -> bool:
    """Whether the kernels run on `device`: an NVIDIA GPU of compute capability 8.0 or newer
    (Ampere on), with Triton installed and its kernels checked once on that GPU."""
    if device.type != "cuda" or not installed() or not torch.cuda.is_available():
        return False
    return _capable(torch.cuda.current_device() if device.index is None else device.index)


@functools.lru_cache(maxsize=None)
def _works_in(index: int, dtype: torch.dtype) -> bool:
    # float32 is checked with the device (`_capable`); the half types when first used
    return dtype == torch.float32 or kernels_work(torch.device("cuda", index), dtype)


def _constant_under_compile(fn: Callable) -> Callable:
    """`torch.compiler.assume_constant_result`, whose call imports torch._dynamo (2.6 s on
    a 2-core CPU, at every start of the CLI and of ComfyUI) to set the one mark it sets:
    set here, and read by dynamo when it traces a call (a test checks it is that mark)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def _serves_dtype(index: int, dtype: torch.dtype) -> bool:
    # Under torch.compile this runs once while the graph is traced, its answer baked into
    # the graph, instead of being traced (it launches the one-time checks' kernels).
    return installed() and _capable(index) and _works_in(index, dtype)


@functools.lru_cache(maxsize=None)
def _skip_works_in(index: int, dtype: torch.dtype) -> bool:
    return skip_kernel_works(torch.device("cuda", index), dtype)


@_constant_under_compile
def _serves_skip(index: int, dtype: torch.dtype) -> bool:
    return _serves_dtype(index, dtype) and _skip_works_in(index, dtype)


def skip_available(h: torch.Tensor, x: torch.Tensor, x2: torch.Tensor | None = None) -> bool:
    """Whether `skip_matmul_add(h, x, ..., x2)` serves these tensors: each one that
    `available` serves, all bf16 or all float16, and the kernel checked once on that GPU."""
    tensors = [h, x] if x2 is None else [h, x, x2]
    return (h.dtype in (torch.bfloat16, torch.float16) and all(t.dtype == h.dtype and available(t) for t in tensors)
            and _serves_skip(h.device.index, h.dtype))


def available(x: torch.Tensor) -> bool:
    """Whether `group_norm_nhwc` serves this tensor: no autograd (the kernels have no
    backward), channels_last, float, on a GPU that `serves`. Inside torch.compile too: the
    kernels are custom operators there, which the compiled graph calls as they are (the
    norm inductor generates instead took 1.4x the eager kernels' time: docs/performance.md)."""
    # `serves` without its driver check: a CUDA tensor has its device index (called per norm)
    return (x.is_cuda and not torch.is_grad_enabled() and x.ndim == 4
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and x.is_contiguous(memory_format=torch.channels_last) and _serves_dtype(x.device.index, x.dtype))


def _per_image(p: torch.Tensor | None, n: int, channels: int) -> tuple[torch.Tensor | None, int]:
    """A (C,), (1, C) or (N, C) affine parameter as contiguous float32 and its row stride
    (0: shared by every image)."""
    if p is None:
        return None, 0
    if p.shape not in ((channels,), (1, channels), (n, channels)):
        raise ValueError(f"weight and bias must be ({channels},) or ({n}, {channels}), got {tuple(p.shape)}")
    return p.float().contiguous(), channels if p.ndim == 2 and p.shape[0] == n and n > 1 else 0


# What a `resample` argument names, as the kernels take it (their RESAMPLE code, and TAPS:
# the input pixels read per output pixel): ADM's up and down blocks.
_RESAMPLE = {None: dict(RESAMPLE=0, TAPS=1), "up": dict(RESAMPLE=1, TAPS=1), "down": dict(RESAMPLE=2, TAPS=4)}


def _resampled_size(h: int, w: int, resample: str | None) -> tuple[int, int]:
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
    if resample == "down" and (h % 2 or w % 2):
        raise ValueError(f"2x2 pooling needs an even height and width, got {h}x{w}")
    return (2 * h, 2 * w) if resample == "up" else (h // 2, w // 2) if resample == "down" else (h, w)


def group_norm_nhwc(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5, silu: bool = False,
                    x_bias: torch.Tensor | None = None, resample: str | None = None,
                    x2: torch.Tensor | None = None, x_stats: torch.Tensor | None = None,
                    x2_stats: torch.Tensor | None = None) -> torch.Tensor:
    """`F.group_norm(x, num_groups, weight, bias, eps)`, then SiLU if `silu`, for a
    channels_last (N, C, H, W) tensor; statistics in float32, the result in x's dtype and
    layout. `weight` and `bias` may be (C,) or per image (N, C), which is how a time-embedding
    scale-shift rides along: weight * (1 + scale), bias * (1 + scale) + shift. `x_bias` (C,)
    normalises x + x_bias without forming it: the bias of the convolution before the norm,
    which PyTorch would otherwise add after cuDNN's convolution, in a pass of its own.
    `resample` "up" or "down": the result nearest up-sampled 2x or 2x2 average-pooled
    (H and W even), written at that size in the same pass. `x2`: a second channels_last
    tensor of x's batch, height and width, normalised as `torch.cat([x, x2], 1)` without
    forming that copy (a decoder block's input joined with its encoder skip); C, weight,
    bias and x_bias then count the channels of both. `x_stats`, `x2_stats`: x's or x2's
    partial sums as `residual_add` returns them with its output, in place of the
    statistics pass over that tensor."""
    if torch.compiler.is_compiling():
        return torch.ops.oftsr.group_norm_nhwc(x, num_groups, weight, bias, eps, silu, x_bias, resample, x2,
                                               x_stats, x2_stats)
    return _group_norm_launch(x, num_groups, weight, bias, eps, silu, x_bias, resample, x2, x_stats, x2_stats)


def _chunked_config(kind: str) -> dict:
    """`LAUNCH_CONFIG[kind]` of a pass that sums chunks of `_PIXELS_PER_CHUNK` pixels, whose
    block of pixels must not cross into the next chunk."""
    config = LAUNCH_CONFIG[kind]
    if _PIXELS_PER_CHUNK % config["BLOCK_PIXELS"]:
        raise ValueError(f"the {kind} pass's chunk ({_PIXELS_PER_CHUNK} pixels) must be a multiple of its block "
                         f"({config['BLOCK_PIXELS']} pixels)")
    return config


def _stats_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
    """The shape of x's partial sums: (N, chunks of pixels, sum | sum of squares, C)."""
    n, channels, h, w = x.shape
    return n, -(-h * w // _PIXELS_PER_CHUNK), 2, channels


def _output_and_sums(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty tensors for a kernel that writes h's shape and that output's partial sums."""
    return (torch.empty_like(h, memory_format=torch.channels_last),
            torch.empty(_stats_shape(h), dtype=torch.float32, device=h.device))


def _group_norm_launch(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float, silu: bool, x_bias: torch.Tensor | None, resample: str | None,
                       x2: torch.Tensor | None, x_stats: torch.Tensor | None = None,
                       x2_stats: torch.Tensor | None = None) -> torch.Tensor:
    kernels = _require_kernels("group_norm_nhwc", "; use torch.nn.functional.group_norm")
    triton = kernels.triton
    parts = [x] if x2 is None else [x, x2]
    n, _, h, w = x.shape
    if any(not part.is_contiguous(memory_format=torch.channels_last) for part in parts):
        raise ValueError("group_norm_nhwc needs channels_last tensors")
    if x2 is not None and (x2.ndim != 4 or (x2.shape[0], *x2.shape[2:]) != (n, h, w) or x2.dtype != x.dtype):
        raise ValueError(f"x2 must match x's batch, height, width and dtype: got {tuple(x2.shape)} {x2.dtype} "
                         f"for x {tuple(x.shape)} {x.dtype}")
    channels = sum(part.shape[1] for part in parts)
    if channels % num_groups:
        raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    out_h, out_w = _resampled_size(h, w, resample)
    config = _chunked_config("stats")
    hw = h * w
    stats = []
    for part, given in zip(parts, (x_stats, x2_stats)):
        shape = _stats_shape(part)
        if given is None:
            given = torch.empty(shape, dtype=torch.float32, device=x.device)
            kernels._groupnorm_stats[(shape[1], triton.cdiv(part.shape[1], config["BLOCK_CHANNELS"]), n)](
                part, given, hw, part.shape[1], shape[1], PIXELS_PER_CHUNK=_PIXELS_PER_CHUNK, **config)
        elif given.shape != shape or given.dtype != torch.float32 or given.device != x.device or not given.is_contiguous():
            raise ValueError(f"partial sums for a {tuple(part.shape)} tensor must be contiguous float32 {shape} on "
                             f"{x.device}, got {given.dtype} {tuple(given.shape)} on {given.device}")
        stats.append(given)
    per_group = channels // num_groups
    weight, weight_stride = _per_image(weight, n, channels)
    bias, bias_stride = _per_image(bias, n, channels)
    gain = torch.empty((n, channels), dtype=torch.float32, device=x.device)
    offset = torch.empty_like(gain)
    if x_bias is not None:
        x_bias = x_bias.float().contiguous()
    kernels._groupnorm_finalize[(num_groups, n)](  # an absent weight, bias or second part: any pointer, never read
        stats[0], stats[-1], gain if weight is None else weight, gain if bias is None else bias,
        gain if x_bias is None else x_bias, gain, offset,
        stats[0].shape[1], channels, x.shape[1], per_group, hw, hw * per_group, eps, weight_stride, bias_stride,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_X_BIAS=x_bias is not None,
        BLOCK_CHUNKS=_BLOCK_CHUNKS, BLOCK_GROUP=triton.next_power_of_2(per_group))
    y = torch.empty((n, channels, out_h, out_w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    config = LAUNCH_CONFIG["apply"]
    for part, c_offset in zip(parts, (0, x.shape[1])):  # where each part's channels start
        grid = (triton.cdiv(out_h * out_w, config["BLOCK_PIXELS"]), triton.cdiv(part.shape[1], config["BLOCK_CHANNELS"]),
                n)
        kernels._groupnorm_apply[grid](part, y, gain, offset, out_h * out_w, out_w, hw, w, part.shape[1], c_offset, channels,
                           SILU=silu, **_RESAMPLE[resample], **config)
    return y


def residual_add(h: torch.Tensor, skip: torch.Tensor, bias: torch.Tensor,
                 skip_resample: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """h + skip + bias[None, :, None, None] in one pass, for channels_last h and skip, and
    the partial sums of that output which `group_norm_nhwc` takes as `x_stats` (every
    ResBlock's output is normalised next, by the next block or the decoder block it skips
    to, which then need not read it once more for its statistics). A residual add that
    also carries the biases of the convolutions that made h and skip (PyTorch adds a bias
    after cuDNN's convolution, in a broadcast pass of its own). `skip_resample` "up" or
    "down": skip has half or twice h's height and width and is read nearest up-sampled or
    2x2 average-pooled, so the resampled skip is never written. Out of place, so that a
    compiled graph has no input to copy before the kernel may write it."""
    if torch.compiler.is_compiling():
        return torch.ops.oftsr.residual_add(h, skip, bias, skip_resample)
    return _residual_add_launch(h, skip, bias, skip_resample)


def _residual_add_launch(h: torch.Tensor, skip: torch.Tensor, bias: torch.Tensor,
                         skip_resample: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    kernels = _require_kernels("residual_add")
    triton = kernels.triton
    n, channels, height, width = h.shape
    # the skip's size is h's with the resampling undone ("up": h's height and width must be even)
    undone = {"up": "down", "down": "up"}.get(skip_resample, skip_resample)
    expected = (n, channels, *_resampled_size(height, width, undone))
    if tuple(skip.shape) != expected or not (h.is_contiguous(memory_format=torch.channels_last)
                                             and skip.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"residual_add with skip_resample {skip_resample} needs channels_last h and skip of "
                         f"shape {expected}, got {tuple(h.shape)} and {tuple(skip.shape)}")
    config = _chunked_config("add")
    out, stats = _output_and_sums(h)
    kernels._residual_add[(stats.shape[1], triton.cdiv(channels, config["BLOCK_CHANNELS"]), n)](
        h, skip, bias.float().contiguous(), out, stats, height * width, width, skip.shape[2] * skip.shape[3],
        skip.shape[3], channels, stats.shape[1], PIXELS_PER_CHUNK=_PIXELS_PER_CHUNK, **_RESAMPLE[skip_resample],
        **config)
    return out, stats


def skip_matmul_add(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    x2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """h + conv1x1(torch.cat([x, x2], 1), weight) + bias in one pass, for channels_last bf16
    or float16 tensors of one batch, height and width: a ResBlock's 1x1 skip convolution
    (`weight` (C, C1 [+ C2], 1, 1), without its bias) and residual add, where cuBLAS or cuDNN
    would write the skip's product and the residual add read it back; x2 (a decoder block's
    encoder skip) is read where it lies, never joined to x in a copy. Returns the output and
    its partial sums, as `residual_add` does."""
    if torch.compiler.is_compiling():
        return torch.ops.oftsr.skip_matmul_add(h, x, weight, bias, x2)
    return _skip_matmul_add_launch(h, x, weight, bias, x2)


def _skip_matmul_add_launch(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            x2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    kernels = _require_kernels("skip_matmul_add")
    triton = kernels.triton
    n, channels, height, width = h.shape
    parts = [h, x] if x2 is None else [h, x, x2]
    c1, c2 = x.shape[1], 0 if x2 is None else x2.shape[1]
    if (any(p.ndim != 4 or (p.shape[0], *p.shape[2:]) != (n, height, width) or p.dtype != h.dtype
            or not p.is_contiguous(memory_format=torch.channels_last) for p in parts)
            or h.dtype not in (torch.bfloat16, torch.float16)):
        raise ValueError(f"skip_matmul_add needs channels_last bf16 or float16 h, x (and x2) of one batch, height and "
                         f"width, got {[(tuple(p.shape), p.dtype) for p in parts]}")
    if weight.numel() != channels * (c1 + c2) or weight.shape[0] != channels:
        raise ValueError(f"a 1x1 convolution from {c1 + c2} to {channels} channels needs a ({channels}, {c1 + c2}, 1, 1) "
                         f"weight, got {tuple(weight.shape)}")
    config = _chunked_config("skip")
    w = weight.reshape(channels, c1 + c2).to(h.dtype).contiguous()
    out, stats = _output_and_sums(h)
    kernels._skip_matmul_add[(stats.shape[1], triton.cdiv(channels, config["BLOCK_CHANNELS"]), n)](
        h, x, x if x2 is None else x2, w, bias.float().contiguous(), out, stats, height * width, c1, c2, channels,
        stats.shape[1], PIXELS_PER_CHUNK=_PIXELS_PER_CHUNK, **config)
    return out, stats


# The kernels as custom operators, which torch.compile keeps as calls in its graph (and CUDA
# graphs capture): traced through, they would launch on fake tensors. Eager calls go to the
# launchers directly, without the operator dispatch's cost per call. The schemas are given:
# torch 2.4 cannot infer one from this module's postponed (string) annotations.
@torch.library.custom_op("oftsr::group_norm_nhwc", mutates_args=(), schema=(
    "(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, bool silu, Tensor? x_bias, str? resample, "
    "Tensor? x2, Tensor? x_stats, Tensor? x2_stats) -> Tensor"))
def _group_norm_op(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, silu: bool, x_bias: torch.Tensor | None, resample: str | None,
                   x2: torch.Tensor | None, x_stats: torch.Tensor | None, x2_stats: torch.Tensor | None) -> torch.Tensor:
    return _group_norm_launch(x, num_groups, weight, bias, eps, silu, x_bias, resample, x2, x_stats, x2_stats)


@_group_norm_op.register_fake
def _(x, num_groups, weight, bias, eps, silu, x_bias, resample, x2, x_stats, x2_stats):
    n, channels, h, w = x.shape
    channels += 0 if x2 is None else x2.shape[1]
    return torch.empty((n, channels, *_resampled_size(h, w, resample)), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("oftsr::residual_add", mutates_args=(),
                         schema="(Tensor h, Tensor skip, Tensor bias, str? skip_resample) -> (Tensor, Tensor)")
def _residual_add_op(h: torch.Tensor, skip: torch.Tensor, bias: torch.Tensor,
                     skip_resample: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _residual_add_launch(h, skip, bias, skip_resample)


@_residual_add_op.register_fake
def _(h, skip, bias, skip_resample):
    return _output_and_sums(h)


@torch.library.custom_op("oftsr::skip_matmul_add", mutates_args=(),
                         schema="(Tensor h, Tensor x, Tensor weight, Tensor bias, Tensor? x2) -> (Tensor, Tensor)")
def _skip_matmul_add_op(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        x2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _skip_matmul_add_launch(h, x, weight, bias, x2)


@_skip_matmul_add_op.register_fake
def _(h, x, weight, bias, x2):
    return _output_and_sums(h)
