"""The Triton kernels behind `triton_groupnorm` (which documents them and imports this
module lazily: it needs the `triton` package). Module-level functions, so that the names a
kernel uses are the module's globals: Triton 3.0 to 3.3 (torch 2.4 to 2.7) look nowhere
else when they compile one, and the interpreter runs a kernel without its closure."""

import triton
import triton.language as tl


@triton.jit
def _store_sums(partial_ptr, n, chunks, chunk, channels, c, c_ok, total, total_sq):
    # a chunk's per-channel sum and sum of squares at partial[n, chunk, 0 | 1, c]
    out = partial_ptr + ((n * chunks + chunk) * 2) * channels + c
    tl.store(out, total, mask=c_ok)
    tl.store(out + channels, total_sq, mask=c_ok)


@triton.jit
def _store_output(out_ptr, offsets, y, mask):
    # writes y in out's dtype; returns the stored values as float32 (0 where masked): the
    # norm that reads them next sums them as they are stored
    y = y.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offsets, y, mask=mask)
    return tl.where(mask, y.to(tl.float32), 0.0)


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
    _store_sums(partial_ptr, n, chunks, chunk, channels, c, c_ok, tl.sum(total, axis=0), tl.sum(total_sq, axis=0))


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
        v = _store_output(out_ptr, offsets, h + skip + b, mask)
        total += v
        total_sq += v * v
    _store_sums(partial_ptr, n, chunks, chunk, channels, c, c_ok, tl.sum(total, axis=0), tl.sum(total_sq, axis=0))


@triton.jit
def _skip_matmul_add(h_ptr, x_ptr, x2_ptr, w_ptr, bias_ptr, out_ptr, partial_ptr, hw, c1, c2, channels, chunks,
                     PIXELS_PER_CHUNK: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    # out = h + [x | x2] @ w^T + bias: a ResBlock's 1x1 skip convolution (w: (C, c1 + c2))
    # of its input, or of a decoder block's input and encoder skip as two tensors, and its
    # residual add in one pass, with out's partial sums as `_residual_add` writes them.
    # Channels_last activations are (pixels, channels) matrices: x and x2 are read once,
    # and the skip's product never goes to memory.
    chunk = tl.program_id(0)
    cblock = tl.program_id(1)
    n = tl.program_id(2)
    o = cblock * BLOCK_CHANNELS + tl.arange(0, BLOCK_CHANNELS)
    o_ok = o < channels
    b = tl.load(bias_ptr + o, mask=o_ok, other=0.0)[None, :]
    k = tl.arange(0, BLOCK_K)
    total = tl.zeros((BLOCK_CHANNELS,), dtype=tl.float32)
    total_sq = tl.zeros((BLOCK_CHANNELS,), dtype=tl.float32)
    for start in range(0, PIXELS_PER_CHUNK, BLOCK_PIXELS):
        p = chunk * PIXELS_PER_CHUNK + start + tl.arange(0, BLOCK_PIXELS)
        p_ok = p < hw
        rows = n.to(tl.int64) * hw + p.to(tl.int64)
        acc = tl.zeros((BLOCK_PIXELS, BLOCK_CHANNELS), dtype=tl.float32)
        for k0 in range(0, c1, BLOCK_K):
            a = tl.load(x_ptr + rows[:, None] * c1 + (k0 + k)[None, :],
                        mask=p_ok[:, None] & (k0 + k < c1)[None, :], other=0.0)
            wt = tl.load(w_ptr + o[None, :] * (c1 + c2) + (k0 + k)[:, None],
                         mask=(k0 + k < c1)[:, None] & o_ok[None, :], other=0.0)
            acc = tl.dot(a, wt, acc)
        for k0 in range(0, c2, BLOCK_K):  # c2 = 0: no second tensor
            a = tl.load(x2_ptr + rows[:, None] * c2 + (k0 + k)[None, :],
                        mask=p_ok[:, None] & (k0 + k < c2)[None, :], other=0.0)
            wt = tl.load(w_ptr + o[None, :] * (c1 + c2) + c1 + (k0 + k)[:, None],
                         mask=(k0 + k < c2)[:, None] & o_ok[None, :], other=0.0)
            acc = tl.dot(a, wt, acc)
        mask = p_ok[:, None] & o_ok[None, :]
        offsets = rows[:, None] * channels + o[None, :]
        h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        v = _store_output(out_ptr, offsets, acc + h + b, mask)
        total += tl.sum(v, axis=0)  # per step: a full-tile accumulator would not fit the registers
        total_sq += tl.sum(v * v, axis=0)
    _store_sums(partial_ptr, n, chunks, chunk, channels, o, o_ok, total, total_sq)
