"""GroupNorm (+ per-image scale-shift, + SiLU) for channels_last CUDA tensors, in Triton.

PyTorch's CUDA group_norm kernel works on NCHW: given channels_last activations it copies
them to NCHW and back, so a channels_last network pays two layout transposes per norm,
which is why the CUDA fast path stays NCHW where these kernels do not run. These two kernels read and write
(N, H, W, C) memory directly:

1. `_stats`: per image, per channel, float32 sum and sum of squares over a chunk of pixels
   (one program per (chunk, channel block, image)); a few (N, C)-sized torch ops reduce the
   chunks and the group's channels to mean and 1/std.
2. `_apply`: y = x * a[n, c] + b[n, c], then SiLU if asked, where a and b fold the
   statistics, the norm's affine parameters and ADM's time-embedding scale-shift, so the
   activations are read twice and written once.

Sum and sum of squares (not Welford), as TensorRT's GroupNorm plugin does: exact enough
while |mean| / std of a group stays below about 100, far beyond UNet activations.

`triton` is imported lazily; without it (CPU-only installs, macOS) `available()` is False
and callers keep PyTorch's kernel. Set TRITON_INTERPRET=1 before the import to run the
kernels on CPU tensors (slowly), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

# Pixels per program of the statistics pass: enough chunks to fill a GPU at 512 px
# (262,144 pixels, 256 chunks per image), few enough that the chunk reduction is cheap.
_PIXELS_PER_CHUNK = 1024
_BLOCK_PIXELS = 32
_BLOCK_CHANNELS = 64


@functools.lru_cache(maxsize=1)
def _kernels():
    """The compiled kernels, or None when Triton is not installed (or its install is broken:
    a failed import must not stop a model from loading; PyTorch's kernel takes over)."""
    try:
        import triton
        import triton.language as tl
    except Exception:
        return None

    @triton.jit
    def _stats(x_ptr, partial_ptr, hw, channels, chunks,
               PIXELS_PER_CHUNK: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
        chunk = tl.program_id(0)  # the large count on axis 0: axes 1 and 2 stop at 65,535
        cblock = tl.program_id(1)
        n = tl.program_id(2)
        c = cblock * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
        c_ok = c < channels
        total = tl.zeros((BLOCK_CHANNELS,), dtype=tl.float32)
        total_sq = tl.zeros((BLOCK_CHANNELS,), dtype=tl.float32)
        base = x_ptr + n.to(tl.int64) * hw * channels
        for start in range(0, PIXELS_PER_CHUNK, BLOCK_PIXELS):
            p = chunk * PIXELS_PER_CHUNK + start + tl.arange(0, BLOCK_PIXELS)
            mask = (p < hw)[:, None] & c_ok[None, :]
            v = tl.load(base + p[:, None].to(tl.int64) * channels + c[None, :], mask=mask, other=0.0).to(tl.float32)
            total += tl.sum(v, axis=0)
            total_sq += tl.sum(v * v, axis=0)
        out = partial_ptr + ((n * chunks + chunk) * 2) * channels + c
        tl.store(out, total, mask=c_ok)
        tl.store(out + channels, total_sq, mask=c_ok)

    @triton.jit
    def _apply(x_ptr, y_ptr, a_ptr, b_ptr, hw, channels,
               SILU: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
        pblock = tl.program_id(0)
        cblock = tl.program_id(1)
        n = tl.program_id(2)
        p = pblock * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
        c = cblock * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
        c_ok = c < channels
        mask = (p < hw)[:, None] & c_ok[None, :]
        offsets = n.to(tl.int64) * hw * channels + p[:, None].to(tl.int64) * channels + c[None, :]
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + n * channels + c, mask=c_ok, other=0.0)
        b = tl.load(b_ptr + n * channels + c, mask=c_ok, other=0.0)
        y = v * a[None, :] + b[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)

    return triton, _stats, _apply


def installed() -> bool:
    """Whether Triton is importable, so that the kernels can be built."""
    return _kernels() is not None


def kernels_work(device: torch.device) -> bool:
    """Run the kernels once on `device` against `F.group_norm`: False, with a warning, when
    they fail (a Triton that cannot build its launcher, say) or disagree, so that a broken
    install costs speed, never an image."""
    # A fixed pattern, not random draws: checking must leave the caller's RNG where it was.
    x = torch.arange(2 * 64 * 9 * 7, device=device).mul(0.7).sin().mul(2).add(1).reshape(2, 64, 9, 7)  # mean 1, std 1.4
    x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.linspace(0.5, 1.5, 64, device=device), torch.linspace(-1, 1, 64, device=device)
    try:
        with torch.no_grad():
            error = (group_norm_nhwc(x, 32, weight, bias) - F.group_norm(x, 32, weight, bias)).abs().max().item()
    except Exception as e:  # whatever Triton raises while building or launching
        warnings.warn(f"the Triton GroupNorm does not run on {device} ({type(e).__name__}: {e}); "
                      f"using PyTorch's GroupNorm there", RuntimeWarning, stacklevel=2)
        return False
    if not error < 1e-3:
        warnings.warn(f"the Triton GroupNorm is off on {device} by {error:.2g}; using PyTorch's GroupNorm there",
                      RuntimeWarning, stacklevel=2)
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


def available(x: torch.Tensor) -> bool:
    """Whether `group_norm_nhwc` serves this tensor: not inside torch.compile (whose own
    generated kernels fuse the norm in any layout), no autograd (the kernels have no
    backward), channels_last, float, on a GPU that `serves`."""
    # `serves` without its driver check: a CUDA tensor has its device index (called per norm)
    return (not torch.compiler.is_compiling() and x.is_cuda and not torch.is_grad_enabled() and x.ndim == 4
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and x.is_contiguous(memory_format=torch.channels_last) and installed() and _capable(x.device.index))


def group_norm_nhwc(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5, silu: bool = False) -> torch.Tensor:
    """`F.group_norm(x, num_groups, weight, bias, eps)`, then SiLU if `silu`, for a
    channels_last (N, C, H, W) tensor; statistics in float32, the result in x's dtype and
    layout. `weight` and `bias` may be (C,) or per image (N, C), which is how a time-embedding
    scale-shift rides along: weight * (1 + scale), bias * (1 + scale) + shift."""
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("group_norm_nhwc needs the `triton` package; use torch.nn.functional.group_norm")
    triton, stats_kernel, apply_kernel = kernels
    n, channels, h, w = x.shape
    if channels % num_groups:
        raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("group_norm_nhwc needs a channels_last tensor")
    hw = h * w
    chunks = triton.cdiv(hw, _PIXELS_PER_CHUNK)
    partial = torch.empty((n, chunks, 2, channels), dtype=torch.float32, device=x.device)
    cblocks = triton.cdiv(channels, _BLOCK_CHANNELS)
    stats_kernel[(chunks, cblocks, n)](x, partial, hw, channels, chunks, PIXELS_PER_CHUNK=_PIXELS_PER_CHUNK,
                                       BLOCK_PIXELS=_BLOCK_PIXELS, BLOCK_CHANNELS=_BLOCK_CHANNELS)
    sums = partial.sum(1).view(n, 2, num_groups, channels // num_groups).sum(-1)  # (N, 2, G)
    count = hw * (channels // num_groups)
    mean = sums[:, 0] / count
    var = (sums[:, 1] / count - mean * mean).clamp_min_(0.0)
    rstd = torch.rsqrt(var + eps)
    per_channel = channels // num_groups
    mean_c = mean.repeat_interleave(per_channel, dim=1)  # (N, C)
    rstd_c = rstd.repeat_interleave(per_channel, dim=1)
    gain = rstd_c if weight is None else rstd_c * weight.float().expand(n, channels)
    offset = -mean_c * gain
    if bias is not None:
        offset = offset + bias.float().expand(n, channels)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    apply_kernel[(triton.cdiv(hw, _BLOCK_PIXELS), cblocks, n)](
        x, y, gain.contiguous(), offset.contiguous(), hw, channels, SILU=silu,
        BLOCK_PIXELS=_BLOCK_PIXELS, BLOCK_CHANNELS=_BLOCK_CHANNELS)
    return y
