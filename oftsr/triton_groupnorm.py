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

The bias of the convolution before a norm rides in its statistics (`x_bias`), and a ResBlock's
two output biases in its residual add (`residual_add`): PyTorch adds a convolution's bias
after cuDNN's kernel, in a broadcast pass of its own, which took a sixth of a bf16 div2k
forward on an H200.

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
}


@functools.lru_cache(maxsize=1)
def _kernels():
    """The compiled kernels, or None when Triton is not installed (or its install is broken:
    a failed import must not stop a model from loading; PyTorch's kernel takes over)."""
    try:
        import triton
        import triton.language as tl
    except Exception as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "triton":  # not installed (CPU-only PyTorch, macOS)
            return None
        # installed but broken (a missing libcuda is an ImportError too): said once, as it costs speed
        warnings.warn(f"Triton is installed but does not import ({type(e).__name__}: {e}); using PyTorch's "
                      f"GroupNorm", stacklevel=2)
        return None

    @triton.jit
    def _groupnorm_stats(x_ptr, partial_ptr, hw, channels, chunks,
                         PIXELS_PER_CHUNK: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
        # partial[n, chunk, 0 | 1, c]: the chunk's sum and sum of squares of channel c
        chunk = tl.program_id(0)  # the large count on axis 0: axes 1 and 2 stop at 65,535
        cblock = tl.program_id(1)
        n = tl.program_id(2)
        c = cblock * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
        c_ok = c < channels
        # Element-wise accumulators, reduced across pixels once at the end: a reduction per
        # loaded block would serialise the loop on cross-thread shuffles.
        total = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        total_sq = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        base = x_ptr + n.to(tl.int64) * hw * channels
        for start in range(0, PIXELS_PER_CHUNK, BLOCK_PIXELS):
            p = chunk * PIXELS_PER_CHUNK + start + tl.arange(0, BLOCK_PIXELS)
            mask = (p < hw)[:, None] & c_ok[None, :]
            v = tl.load(base + p[:, None].to(tl.int64) * channels + c[None, :], mask=mask, other=0.0).to(tl.float32)
            total += v
            total_sq += v * v
        out = partial_ptr + ((n * chunks + chunk) * 2) * channels + c
        tl.store(out, tl.sum(total, axis=0), mask=c_ok)
        tl.store(out + channels, tl.sum(total_sq, axis=0), mask=c_ok)

    @triton.jit
    def _groupnorm_finalize(partial_ptr, partial2_ptr, weight_ptr, bias_ptr, x_bias_ptr, gain_ptr, offset_ptr, chunks,
                            channels, split, per_group, hw, count, eps, weight_stride, bias_stride,
                            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_X_BIAS: tl.constexpr,
                            BLOCK_CHUNKS: tl.constexpr, BLOCK_GROUP: tl.constexpr):
        # One program per (group, image): the chunks' sums to the group's mean and 1/std,
        # folded with the affine parameters into the per-channel gain and offset that
        # `_groupnorm_apply` uses (one launch where a dozen small torch ops would be). Channels
        # below `split` are summed in `partial` (split channels wide), the rest in `partial2`
        # (a decoder block's input and skip: a group may straddle the two).
        group = tl.program_id(0)
        n = tl.program_id(1)
        c = group * per_group + tl.arange(0, BLOCK_GROUP)
        c_ok = tl.arange(0, BLOCK_GROUP) < per_group
        first = (c < split)[None, :]
        wide2 = channels - split
        total = tl.zeros((BLOCK_CHUNKS, BLOCK_GROUP), dtype=tl.float32)
        total_sq = tl.zeros((BLOCK_CHUNKS, BLOCK_GROUP), dtype=tl.float32)
        for start in range(0, chunks, BLOCK_CHUNKS):
            k = start + tl.arange(0, BLOCK_CHUNKS)
            mask = (k < chunks)[:, None] & c_ok[None, :]
            row = (n * chunks + k[:, None]).to(tl.int64) * 2
            rows = partial_ptr + row * split + c[None, :]
            rows2 = partial2_ptr + row * wide2 + (c[None, :] - split)
            total += (tl.load(rows, mask=mask & first, other=0.0)
                      + tl.load(rows2, mask=mask & ~first, other=0.0))
            total_sq += (tl.load(rows + split, mask=mask & first, other=0.0)
                         + tl.load(rows2 + wide2, mask=mask & ~first, other=0.0))
        s1 = tl.sum(total, axis=0)  # per channel
        s2 = tl.sum(total_sq, axis=0)
        xb = tl.zeros((BLOCK_GROUP,), dtype=tl.float32)
        if HAS_X_BIAS:
            xb = tl.load(x_bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        # the statistics of x + b from those of x: sum (x + b)^2 = sum x^2 + 2b sum x + hw b^2
        s2 += 2.0 * xb * s1 + hw * xb * xb
        s1 += hw * xb
        mean = tl.sum(s1, axis=0) / count
        var = tl.maximum(tl.sum(s2, axis=0) / count - mean * mean, 0.0)
        rstd = 1.0 / tl.sqrt(var + eps)
        gain = tl.zeros((BLOCK_GROUP,), dtype=tl.float32) + rstd
        if HAS_WEIGHT:
            gain = gain * tl.load(weight_ptr + n * weight_stride + c, mask=c_ok, other=0.0).to(tl.float32)
        offset = -mean * gain
        if HAS_BIAS:
            offset = offset + tl.load(bias_ptr + n * bias_stride + c, mask=c_ok, other=0.0).to(tl.float32)
        offset = offset + xb * gain  # (x + b) * gain + offset = x * gain + (offset + b * gain)
        tl.store(gain_ptr + n * channels + c, gain, mask=c_ok)
        tl.store(offset_ptr + n * channels + c, offset, mask=c_ok)

    @triton.jit
    def _groupnorm_apply(x_ptr, y_ptr, a_ptr, b_ptr, hw_out, w_out, hw_in, w_in, x_channels, c_offset, channels,
                         SILU: tl.constexpr,
                         RESAMPLE: tl.constexpr, TAPS: tl.constexpr, BLOCK_PIXELS: tl.constexpr,
                         BLOCK_CHANNELS: tl.constexpr):
        # One program per block of output pixels and channels of an image. With RESAMPLE the
        # output is the normalised input nearest up-sampled 2x (1) or 2x2 average-pooled (2):
        # ADM's up and down blocks resample right after this norm and SiLU, and writing the
        # resampled result saves a pass over the activations at the larger size. x holds the
        # channels c_offset .. c_offset + x_channels of y (as in `_groupnorm_stats`).
        pblock = tl.program_id(0)
        cblock = tl.program_id(1)
        n = tl.program_id(2)
        p = pblock * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
        c = cblock * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
        c_ok = c < x_channels
        mask = (p < hw_out)[:, None] & c_ok[None, :]
        a = tl.load(a_ptr + n * channels + c_offset + c, mask=c_ok, other=0.0)[None, :]
        b = tl.load(b_ptr + n * channels + c_offset + c, mask=c_ok, other=0.0)[None, :]
        source = x_ptr + n.to(tl.int64) * hw_in * x_channels + c[None, :]
        q = p  # the input pixel an output pixel reads (the top-left of its window when pooling)
        if RESAMPLE != 0:
            oy = p // w_out
            ox = p - oy * w_out
            if RESAMPLE == 1:
                q = (oy // 2) * w_in + ox // 2
            else:
                q = (2 * oy) * w_in + 2 * ox
        q = q[:, None].to(tl.int64) * x_channels
        y = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        for tap in tl.static_range(TAPS):  # a pooling window's four pixels, else the one
            v = tl.load(source + q + ((tap // 2) * w_in + tap % 2) * x_channels, mask=mask, other=0.0).to(tl.float32)
            v = v * a + b
            if SILU:
                v = v * tl.sigmoid(v)
            y += v
        if RESAMPLE == 2:
            y = y * 0.25
        out = y_ptr + n.to(tl.int64) * hw_out * channels + p[:, None].to(tl.int64) * channels + c_offset + c[None, :]
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _residual_add(h_ptr, skip_ptr, bias_ptr, out_ptr, partial_ptr, hw, w, hw_skip, w_skip, channels, chunks,
                      RESAMPLE: tl.constexpr, TAPS: tl.constexpr, PIXELS_PER_CHUNK: tl.constexpr,
                      BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr):
        # out = h + skip + bias[c] over channels_last memory, a chunk of an image's pixels per
        # program (as `_groupnorm_stats`), whose sums and sums of squares of out it writes in
        # that pass's layout: the next norm, which reads out, then skips its statistics pass.
        # With RESAMPLE the skip is read at its own size, nearest up-sampled (1) or 2x2
        # average-pooled (2) on the way, as ADM's up and down blocks resample it.
        chunk = tl.program_id(0)
        cblock = tl.program_id(1)
        n = tl.program_id(2)
        c = cblock * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
        c_ok = c < channels
        b = tl.load(bias_ptr + c, mask=c_ok, other=0.0)[None, :]
        image = n.to(tl.int64) * hw * channels
        skip_image = skip_ptr + n.to(tl.int64) * hw_skip * channels + c[None, :]
        total = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        total_sq = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        for start in range(0, PIXELS_PER_CHUNK, BLOCK_PIXELS):
            p = chunk * PIXELS_PER_CHUNK + start + tl.arange(0, BLOCK_PIXELS)
            mask = (p < hw)[:, None] & c_ok[None, :]
            offsets = image + p[:, None].to(tl.int64) * channels + c[None, :]
            h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if RESAMPLE == 0:
                skip = tl.load(skip_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            else:
                oy = p // w
                ox = p - oy * w
                if RESAMPLE == 1:
                    q = (oy // 2) * w_skip + ox // 2
                else:
                    q = (2 * oy) * w_skip + 2 * ox
                source = skip_image + q[:, None].to(tl.int64) * channels
                skip = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
                for tap in tl.static_range(TAPS):
                    skip += tl.load(source + ((tap // 2) * w_skip + tap % 2) * channels, mask=mask,
                                    other=0.0).to(tl.float32)
                if RESAMPLE == 2:
                    skip = skip * 0.25
            y = (h + skip + b).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + offsets, y, mask=mask)
            v = tl.where(mask, y.to(tl.float32), 0.0)  # the stored values, as the norm would read them
            total += v
            total_sq += v * v
        out = partial_ptr + ((n * chunks + chunk) * 2) * channels + c
        tl.store(out, tl.sum(total, axis=0), mask=c_ok)
        tl.store(out + channels, tl.sum(total_sq, axis=0), mask=c_ok)

    return triton, _groupnorm_stats, _groupnorm_finalize, _groupnorm_apply, _residual_add


def installed() -> bool:
    """Whether Triton is importable, so that the kernels can be built."""
    return _kernels() is not None


def kernels_work(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Run every kernel variant the network uses once on `device`, on `dtype` activations,
    against PyTorch's ops: False, with a warning, when they fail (a Triton that cannot build
    its launcher, say) or disagree, so that a broken install costs speed, never an image.
    Each dtype is compiled apart, so each is checked apart."""
    # A fixed pattern, not random draws: checking must leave the caller's RNG where it was.
    x = torch.arange(2 * 64 * 9 * 7, device=device).mul(0.7).sin().mul(2).add(1).reshape(2, 64, 9, 7)  # mean 1, std 1.4
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
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


@torch.compiler.assume_constant_result
def _serves_dtype(index: int, dtype: torch.dtype) -> bool:
    # Under torch.compile this runs once while the graph is traced, its answer baked into
    # the graph, instead of being traced (it launches the one-time checks' kernels).
    return installed() and _capable(index) and _works_in(index, dtype)


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


def _stats_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
    """The shape of x's partial sums: (N, chunks of pixels, sum | sum of squares, C)."""
    n, channels, h, w = x.shape
    return n, -(-h * w // _PIXELS_PER_CHUNK), 2, channels


def _group_norm_launch(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float, silu: bool, x_bias: torch.Tensor | None, resample: str | None,
                       x2: torch.Tensor | None, x_stats: torch.Tensor | None = None,
                       x2_stats: torch.Tensor | None = None) -> torch.Tensor:
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("group_norm_nhwc needs the `triton` package; use torch.nn.functional.group_norm")
    triton, stats_kernel, finalize_kernel, apply_kernel, _ = kernels
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
    config = LAUNCH_CONFIG["stats"]
    if _PIXELS_PER_CHUNK % config["BLOCK_PIXELS"]:  # a block would cross into the next chunk's pixels
        raise ValueError(f"the statistics' chunk ({_PIXELS_PER_CHUNK} pixels) must be a multiple of its block "
                         f"({config['BLOCK_PIXELS']})")
    hw = h * w
    stats = []
    for part, given in zip(parts, (x_stats, x2_stats)):
        shape = _stats_shape(part)
        if given is None:
            given = torch.empty(shape, dtype=torch.float32, device=x.device)
            stats_kernel[(shape[1], triton.cdiv(part.shape[1], config["BLOCK_CHANNELS"]), n)](
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
    finalize_kernel[(num_groups, n)](  # an absent weight, bias or second part: any pointer, never read
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
        apply_kernel[grid](part, y, gain, offset, out_h * out_w, out_w, hw, w, part.shape[1], c_offset, channels,
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
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("residual_add needs the `triton` package")
    triton, *_, add_kernel = kernels
    n, channels, height, width = h.shape
    # the skip's size is h's with the resampling undone ("up": h's height and width must be even)
    undone = {"up": "down", "down": "up"}.get(skip_resample, skip_resample)
    expected = (n, channels, *_resampled_size(height, width, undone))
    if tuple(skip.shape) != expected or not (h.is_contiguous(memory_format=torch.channels_last)
                                             and skip.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"residual_add with skip_resample {skip_resample} needs channels_last h and skip of "
                         f"shape {expected}, got {tuple(h.shape)} and {tuple(skip.shape)}")
    config = LAUNCH_CONFIG["add"]
    if _PIXELS_PER_CHUNK % config["BLOCK_PIXELS"]:
        raise ValueError(f"the residual add's chunk ({_PIXELS_PER_CHUNK} pixels) must be a multiple of its block "
                         f"({config['BLOCK_PIXELS']})")
    out = torch.empty_like(h, memory_format=torch.channels_last)
    stats = torch.empty(_stats_shape(h), dtype=torch.float32, device=h.device)
    add_kernel[(stats.shape[1], triton.cdiv(channels, config["BLOCK_CHANNELS"]), n)](
        h, skip, bias.float().contiguous(), out, stats, height * width, width, skip.shape[2] * skip.shape[3],
        skip.shape[3], channels, stats.shape[1], PIXELS_PER_CHUNK=_PIXELS_PER_CHUNK, **_RESAMPLE[skip_resample],
        **config)
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
    return (torch.empty_like(h, memory_format=torch.channels_last),
            torch.empty(_stats_shape(h), dtype=torch.float32, device=h.device))
