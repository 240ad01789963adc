"""The ADM (guided-diffusion) UNet that OFTSR uses, with the same parameter names,
shapes and registration order as the authors' network, so their checkpoints load
as plain state dicts.

Fixed choices of the method: scale-shift norm, ResBlock up/down-sampling, GroupNorm(32)
with float32 statistics, 64 channels per attention head, 6 input channels
(state + condition) and 6 output channels of which the first 3 are the velocity.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import triton_groupnorm

__all__ = ["UNetConfig", "UNet", "PRESETS", "timestep_embedding", "count_parameters", "reference_ops"]


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the UNet. Everything here changes parameter shapes except
    `num_head_channels`, which changes how attention splits channels into heads."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_ds: tuple[int, ...]  # down-sampling factors with self-attention
    in_channels: int = 6
    out_channels: int = 6
    num_head_channels: int = 64

    def __post_init__(self) -> None:
        # A file's metadata builds this: every field is checked, with bounds far beyond the
        # paper's ImageNet network, so a forged one fails here with its name, not in torch.
        for name, high in (("model_channels", 4096), ("num_res_blocks", 64), ("in_channels", 4096),
                           ("out_channels", 4096), ("num_head_channels", 4096)):
            _check_int(name, getattr(self, name), 1, high)
        for name, high in (("channel_mult", 64), ("attention_ds", 2**12)):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or len(values) > 12:
                raise ValueError(f"{name} must be a list of at most 12 integers, got {values!r}")
            for v in values:
                _check_int(f"{name} entries", v, 1, high)
        # Accept lists (from JSON) but store tuples so configs hash and compare.
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_ds", tuple(sorted(self.attention_ds)))
        if self.model_channels % 32:
            raise ValueError(f"model_channels must be a positive multiple of 32 (GroupNorm(32)), got {self.model_channels}")
        if not self.channel_mult:
            raise ValueError(f"need at least one level, got {self}")
        # Attention (at the attention_ds levels and in the middle) splits its channels into
        # channels // num_head_channels heads of equal width.
        levels = [(2**i, m * self.model_channels) for i, m in enumerate(self.channel_mult)]
        for where, ch in [(f"at 1/{ds}", ch) for ds, ch in levels if ds in self.attention_ds] + [("in the middle", levels[-1][1])]:
            heads = max(1, ch // self.num_head_channels)
            if ch % heads:
                raise ValueError(f"num_head_channels {self.num_head_channels} gives the attention {where} {heads} heads "
                                 f"({ch} // {self.num_head_channels}), which do not split its {ch} channels evenly: "
                                 f"use a divisor of {ch}")

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (one halving per level boundary)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**d)


PRESETS: dict[str, UNetConfig] = {
    # The paper's networks.
    "ffhq": UNetConfig(128, (1, 1, 2, 2, 4, 4), 1, (16,)),
    "div2k": UNetConfig(128, (1, 1, 2, 2, 4, 4), 1, (16,)),
    "imagenet": UNetConfig(256, (1, 1, 2, 2, 4, 4), 2, (8, 16, 32)),
    # Small networks for CPU training and tests.
    "small": UNetConfig(64, (1, 2, 2, 4), 1, (8,)),
    "tiny": UNetConfig(32, (1, 2, 4), 1, (4,)),
    # The bundled default models: four levels with attention only at 1/8 resolution, so
    # a CPU trains it fast and large tiles stay cheap (attention cost grows as tokens^2).
    "compact": UNetConfig(32, (1, 2, 2, 4), 1, (8,)),
}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, [cos | sin] halves, as in ADM. `timesteps` is (B,) float."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 mean and variance whatever the activation dtype (bf16/fp16
    statistics drift)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x, self.weight, self.bias)

    def normalize(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  silu: bool = False, x_bias: torch.Tensor | None = None, resample: str | None = None,
                  x2: torch.Tensor | None = None, x_stats: torch.Tensor | None = None,
                  x2_stats: torch.Tensor | None = None) -> torch.Tensor:
        """The norm with other affine parameters (None: none), so that a per-image
        scale-shift can ride in the same pass over the activations, then SiLU if `silu`.
        `weight` and `bias` are (C,), or (N, C) per image where `triton_groupnorm.available(x)`.
        `x_bias` (C,): normalise x + x_bias (a convolution's bias not yet added). `resample`
        "up" or "down": the result resampled as ADM's up and down blocks do (`resample`).
        `x2`: normalise `torch.cat([x, x2], 1)`, without forming it where the kernels serve.
        `x_stats`, `x2_stats`: their partial sums from the residual add that made them, used
        where the kernels serve (`triton_groupnorm.group_norm_nhwc`)."""
        if triton_groupnorm.available(x) and (x2 is None or triton_groupnorm.available(x2)):
            return triton_groupnorm.group_norm_nhwc(x, self.num_groups, weight, bias, self.eps, silu=silu,
                                                    x_bias=x_bias, resample=resample, x2=x2, x_stats=x_stats,
                                                    x2_stats=x2_stats)
        if x2 is not None:
            x = torch.cat([x, x2], dim=1)
        if x_bias is not None:
            x = x + x_bias.to(x.dtype)[:, None, None]
        y = self._group_norm(x, weight, bias)
        y = F.silu(y, inplace=not torch.is_grad_enabled()) if silu else y
        return y if resample is None else _resample_2x(y, resample)

    def _group_norm(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.dtype in (torch.float16, torch.bfloat16) and x.device.type in ("cuda", "cpu")
                and not torch.is_grad_enabled()):
            # Half-precision inference: the CUDA and CPU group_norm kernels accumulate mean and
            # variance in float32 themselves, and skipping the float32 copies of input and
            # output makes a bf16 forward 1.17x faster on an H100 (div2k, 512 px). Training
            # keeps the explicit float32 path below for the affine parameters' gradients.
            with torch.autocast("cuda", enabled=False) if x.is_cuda else contextlib.nullcontext():
                return F.group_norm(x, self.num_groups, _cast(weight, x.dtype), _cast(bias, x.dtype), self.eps)
        return F.group_norm(x.float(), self.num_groups, _cast(weight, torch.float32), _cast(bias, torch.float32),
                            self.eps).to(x.dtype)


def _resample_2x(x: torch.Tensor, resample: str) -> torch.Tensor:
    """ADM's resampling in its up and down blocks: nearest 2x up-sampling, or 2x2 average pooling."""
    if resample == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if resample == "down":
        return F.avg_pool2d(x, 2)
    raise ValueError(f"resample must be 'up' or 'down', got {resample!r}")


def _cast(p: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if p is None else p.to(dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


# Set inside `reference_ops()`; a context variable, so other threads keep the default ops.
_REFERENCE_OPS: contextvars.ContextVar[bool] = contextvars.ContextVar("oftsr_reference_ops", default=False)


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Inside this block every UNet runs op for op as ADM's (the authors') code does:
    channel-major einsum attention, nearest up-sampling before the 3x3 conv, and norm,
    scale, shift, SiLU and residual add as separate out-of-place ops. Same weights and
    maths as the default ops, which reorder them for speed; for parity checks and as the
    baseline of bench/bench.py. Eager only: code compiled by torch.compile keeps the
    default ops."""
    token = _REFERENCE_OPS.set(True)
    try:
        yield
    finally:
        _REFERENCE_OPS.reset(token)


def _reference_ops_on() -> bool:
    # torch.compile never traces reference ops; and before torch 2.14 reading a context
    # variable broke its graph at every block (recompiled per resolution, then left eager).
    return not torch.compiler.is_compiling() and _REFERENCE_OPS.get()


# Device types whose up-sampling blocks run their conv as one transposed conv
# (`upsample_conv3x3`) instead of ADM's up-sampling then conv: measured on CPUs (that
# layer 0.9x to 1.7x by shape, the whole forward within the noise, 0.44x the FLOPs). On an
# H200 in bf16 the two ways are within 2% of each other (div2k, 512 px, batch 8: 39.4
# against 38.7 ms), so CUDA keeps ADM's (`bench.py --only fastpath` times both).
UPSAMPLE_CONV_TRANSPOSED = {"cpu": True, "cuda": False}


# Device types whose first and last convolutions (6 image channels in, 6 out) run with
# their channels zero-padded to a multiple of this: cuDNN's tensor-core kernels want
# multiples of 8, and on an H200 those two convs ran in a generic kernel at about 16
# TFLOP/s (1.8 ms of a 40 ms bf16 div2k forward at 512 px, batch 8). Padded, the forward's
# convolutions took 1.4 ms less GPU time there (17.3 against 18.7 ms; compiled with CUDA
# graphs 34.7 against 36.7 ms wall); CPUs keep 6.
CONV_CHANNEL_MULTIPLE = {"cuda": 8}


def conv3x3_padded_channels(conv: nn.Conv2d, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """`conv(x)` (3x3, padding 1) computed with input and output channels zero-padded to a
    multiple of `multiple`, the result sliced back: the same sums, in a kernel that tensor
    cores run. The result is a channels_last view when x is channels_last.

    In half precision (bf16 or float16 input, or autocast on) with input channels padded,
    the bias rides in the padding: those channels are ones, and the first one's centre tap
    (which never reads the conv's zero border) holds the bias, so the conv's sums include
    it. torch.compile otherwise splits a conv's bias off into an add of its own, which it
    wrote out twice over the first conv's whole output (0.77 ms of a 34 ms compiled bf16
    div2k forward on an H200, 512 px, batch 8). float32 keeps the bias apart, as a TF32
    conv would round it."""
    pad_in, pad_out = -conv.in_channels % multiple, -conv.out_channels % multiple
    weight = F.pad(conv.weight, (0, 0, 0, 0, 0, pad_in, 0, pad_out))
    bias = None if conv.bias is None else F.pad(conv.bias, (0, pad_out))
    if pad_in:
        layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        bias_in_padding = bias is not None and (x.dtype in (torch.bfloat16, torch.float16)
                                                or torch.is_autocast_enabled(x.device.type))
        if bias_in_padding:
            weight = weight.clone()
            weight[:, conv.in_channels, 1, 1] = bias
            bias = None
        x = F.pad(x, (0, 0, 0, 0, 0, pad_in), value=1.0 if bias_in_padding else 0.0).contiguous(memory_format=layout)
        weight = weight.contiguous(memory_format=layout)
    return F.conv2d(x, weight, bias, padding=1)[:, :conv.out_channels]


def _outer_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The network's first or last convolution, channel-padded where `CONV_CHANNEL_MULTIPLE`
    says (inference only: training keeps the plain conv)."""
    multiple = CONV_CHANNEL_MULTIPLE.get(x.device.type)
    if (multiple and not torch.is_grad_enabled() and not _reference_ops_on()
            and (conv.in_channels % multiple or conv.out_channels % multiple)):
        return conv3x3_padded_channels(conv, x, multiple)
    return conv(x)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv3x3(nearest_upsample_2x(x))` (padding 1) without the up-sampled tensor: one
    stride-2 transposed conv with 4x4 taps, 16 per input pixel instead of 36.

    Along one axis, output pixel 2i sees input pixels (i - 1, i) with taps (w0, w1 + w2),
    and 2i + 1 sees (i, i + 1) with taps (w0 + w1, w2). A stride-2 transposed conv with
    padding 1 gives output 2i + a from input i with tap 1 + a and from input i -/+ 1 with
    tap 3 - a (a = 0, 1), so its taps are (w2, w1 + w2, w0 + w1, w0): one op in place of
    four phase convs and a scatter of their outputs, 0.9x to 1.7x their speed on a 2-core
    CPU in channels_last, by shape."""
    def along_last(w: torch.Tensor) -> torch.Tensor:
        return torch.stack([w[..., 2], w[..., 1] + w[..., 2], w[..., 0] + w[..., 1], w[..., 0]], dim=-1)

    taps = along_last(along_last(weight).transpose(-1, -2)).transpose(-1, -2)  # (out, in, 4, 4)
    taps = taps.transpose(0, 1).contiguous(
        memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
    return F.conv_transpose2d(x, taps, bias, stride=2, padding=1)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _conv(conv: nn.Conv2d, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """`conv(x)`, without its bias when `bias` is False."""
    return conv(x) if bias else conv._conv_forward(x, conv.weight, None)


# Whether decoder blocks take their input and encoder skip as two tensors where the Triton
# kernels serve (`ResBlock.forward`), instead of joining them in a copy first: 38.7 against
# 40.8 ms for a bf16 div2k forward on an H200 (512 px, batch 8; `bench.py --only fastpath`).
JOIN_WITHOUT_COPY = True


# Device types where a ResBlock's 1x1 skip convolution and its residual add run as one Triton
# kernel (`triton_groupnorm.skip_matmul_add`, bf16 and float16 only) instead of cuBLAS's
# products, whose result the residual add reads back: 6.4 against 12.6 GB moved per bf16
# div2k forward at 512 px, batch 8. Off: on an H200 it took 0.5 ms less GPU time there
# (31.56 against 32.03 ms) but the compiled forward no less wall time (34.49 against 34.51
# ms); `bench.py --only fastpath` times it both ways.
SKIP_MATMUL_IN_TRITON = {"cuda": False}


def conv1x1_joined(weight: torch.Tensor, x: torch.Tensor, joined: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv (no bias) of `torch.cat([x, joined], 1)` for channels_last x and joined,
    without the joined copy: channels_last activations are (pixels, channels) matrices, so
    it is x @ W1^T, then joined @ W2^T accumulated into that product in place. The result
    is channels_last, in x's dtype.

    Inside torch.compile it is a custom operator: traced through, the in-place accumulate
    became an out-of-place addmm, which copies the first product before adding to it (1.1
    ms of device copies in a 34 ms compiled bf16 div2k forward on an H200)."""
    if torch.compiler.is_compiling():
        return torch.ops.oftsr.conv1x1_joined(weight, x, joined)
    return _conv1x1_joined(weight, x, joined)


@torch.library.custom_op("oftsr::conv1x1_joined", mutates_args=(),
                         schema="(Tensor weight, Tensor x, Tensor joined) -> Tensor")
def _conv1x1_joined_op(weight: torch.Tensor, x: torch.Tensor, joined: torch.Tensor) -> torch.Tensor:
    return _conv1x1_joined(weight, x, joined)


@_conv1x1_joined_op.register_fake
def _(weight, x, joined):
    return torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _conv1x1_joined(weight: torch.Tensor, x: torch.Tensor, joined: torch.Tensor) -> torch.Tensor:
    n, c1, height, width = x.shape
    w = weight[:, :, 0, 0].to(x.dtype)  # (out, c1 + c2)
    with torch.autocast(x.device.type, enabled=False):  # x's dtype, as the operator's fake says
        out = torch.mm(x.permute(0, 2, 3, 1).reshape(-1, c1), w[:, :c1].t())
        out.addmm_(joined.permute(0, 2, 3, 1).reshape(-1, joined.shape[1]).to(x.dtype), w[:, c1:].t())
    return out.view(n, height, width, -1).permute(0, 3, 1, 2)


def _zero(module: nn.Module) -> nn.Module:
    # ADM zero-initialises the last conv of each residual branch and the output conv.
    for p in module.parameters():
        nn.init.zeros_(p)
    module.zero_init = True  # for `initialise`, which draws every layer's default first
    return module


def initialise(unet: nn.Module, generator: torch.Generator) -> None:
    """The weights `UNet(config)` is made with after `torch.manual_seed(s)`, drawn from a
    `generator` seeded with s instead, so that torch's global random state (which other
    threads draw from too) is not touched: each conv and linear layer's default init in
    the order the layers were made, then ADM's zeros."""
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):  # their reset_parameters, with a generator
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = nn.init._calculate_fan_in_and_fan_out(m.weight)[0]
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in unet.modules():
            if getattr(m, "zero_init", False):
                for p in m.parameters():
                    nn.init.zeros_(p)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.up, self.down = up, down
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    @property
    def resample(self) -> str | None:
        return "up" if self.up else "down" if self.down else None

    def _scale_shift_norm(self, h: torch.Tensor, emb: torch.Tensor, h_bias: torch.Tensor | None = None) -> torch.Tensor:
        """SiLU of ADM's `norm(h + h_bias) * (1 + scale) + shift`, with scale and shift from the
        time embedding (`h_bias`: the bias of the conv that made h, when it left it out)."""
        norm = self.out_layers[0]
        scale, shift = self.emb_layers(emb).float().chunk(2, dim=1)  # (B, C) each
        gain, offset = norm.weight * (1 + scale), norm.bias * (1 + scale) + shift
        if triton_groupnorm.available(h):
            return norm.normalize(h, gain, offset, silu=True, x_bias=h_bias)  # per-image affine, one fused kernel
        if h.shape[0] == 1:
            # One image: the scale-shift folds into the norm's affine parameters (two fewer
            # passes over the activations, 1.1x for the whole CPU forward).
            return norm.normalize(h, gain[0], offset[0], silu=True, x_bias=h_bias)
        h = norm.normalize(h, None, None, x_bias=h_bias)
        h = torch.addcmul(offset.to(h.dtype)[..., None, None], h, gain.to(h.dtype)[..., None, None])
        return F.silu(h, inplace=not torch.is_grad_enabled())

    def forward(self, x: torch.Tensor, emb: torch.Tensor, joined: torch.Tensor | None = None) -> torch.Tensor:
        """The block on x, or on `torch.cat([x, joined], 1)` (a decoder block's input and its
        encoder skip), which is not formed where the Triton kernels serve: the first norm
        reads both tensors and the skip's 1x1 conv is two matrix products (the copy took a
        tenth of a bf16 div2k forward on an H200)."""
        return self.forward_with_stats(x, emb, joined)[0]

    def forward_with_stats(self, x: torch.Tensor, emb: torch.Tensor, joined: torch.Tensor | None = None,
                           x_stats: torch.Tensor | None = None, joined_stats: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward`, given the partial sums of x and joined where a Triton residual add made
        them (None: the first norm sums them itself), and returning its output with the
        output's partial sums where its own residual add ran in Triton (else None)."""
        skip_conv = None if isinstance(self.skip_connection, nn.Identity) else self.skip_connection
        # float32 on a GPU keeps the copy: its matrix products would run without the TF32
        # that cuDNN's convolutions use by default
        if joined is not None and (not JOIN_WITHOUT_COPY or _reference_ops_on() or skip_conv is None
                                   or self.resample is not None or (x.is_cuda and x.dtype == torch.float32)
                                   or not triton_groupnorm.available(x) or not triton_groupnorm.available(joined)):
            x, joined, x_stats, joined_stats = torch.cat([x, joined], dim=1), None, None, None
        if _reference_ops_on():
            return self._reference_forward(x, emb), None
        inplace = not torch.is_grad_enabled()  # autograd may need the tensors that in-place ops would overwrite
        # Where the Triton kernels serve, the convolutions leave out their biases: PyTorch adds
        # a bias after cuDNN's kernel in a broadcast pass of its own, while the norm after the
        # first conv and the residual add after the last one take them at no cost.
        fused = triton_groupnorm.available(x)
        norm, conv = self.in_layers[0], self.in_layers[2]  # in_layers = norm, SiLU, conv
        resample = self.resample
        # ADM resamples after norm+SiLU and before the conv, on both branches. The Triton norm
        # writes h resampled, or an up-sampling conv takes h as it is (`upsample_conv3x3`);
        # the residual add reads an identity skip resampled.
        transposed = self.up and UPSAMPLE_CONV_TRANSPOSED.get(x.device.type, False)
        h = norm.normalize(x, norm.weight, norm.bias, silu=True, resample=None if transposed else resample, x2=joined,
                           x_stats=x_stats, x2_stats=joined_stats)
        h = upsample_conv3x3(h, conv.weight, None if fused else conv.bias) if transposed else _conv(conv, h, not fused)
        skip_resample = resample if fused and skip_conv is None else None
        if resample and not skip_resample:
            x = _resample_2x(x, resample)
        h = self._scale_shift_norm(h, emb, conv.bias if fused else None)  # out_layers = norm, SiLU, dropout, conv
        out_conv = self.out_layers[3]
        h = _conv(out_conv, self.out_layers[2](h), not fused)
        if fused:  # the biases the convs left out, carried by whichever add comes next
            bias = out_conv.bias.float() if skip_conv is None else out_conv.bias.float() + skip_conv.bias.float()
        if (fused and skip_conv is not None and SKIP_MATMUL_IN_TRITON.get(x.device.type, False)
                and triton_groupnorm.skip_available(h, x, joined)):
            return triton_groupnorm.skip_matmul_add(h, x, skip_conv.weight, bias, joined)
        if joined is not None:
            skip = conv1x1_joined(skip_conv.weight, x, joined)
        else:
            skip = x if skip_conv is None else _conv(skip_conv, x, not fused)
        if fused and triton_groupnorm.available(h) and triton_groupnorm.available(skip):
            return triton_groupnorm.residual_add(h, skip, bias, skip_resample)
        if skip_resample:
            skip = _resample_2x(skip, skip_resample)
        if fused:  # not both channels_last after all: the biases the convs left out, as ADM adds them
            h = h + out_conv.bias.to(h.dtype)[:, None, None]
            if skip_conv is not None:
                skip = skip + skip_conv.bias.to(skip.dtype)[:, None, None]
        return (h.add_(skip) if inplace else h + skip), None

    def _reference_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            h = _resample_2x(self.in_layers[:-1](x), self.resample)
            x = _resample_2x(x, self.resample)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


def legacy_qkv_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reference attention in ADM's legacy layout (per head: q, k, v stacked on channels).
    Used inside `reference_ops()`; the network's default is SDPA on token-major q, k, v."""
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = qkv.reshape(b * num_heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_head_channels: int = 64) -> None:
        super().__init__()
        self.num_heads = max(1, channels // num_head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if _reference_ops_on():
            flat = x.reshape(b, c, h * w)
            a = legacy_qkv_attention(self.qkv(self.norm(flat)), self.num_heads)
            return (flat + self.proj_out(a)).reshape(b, c, h, w)
        # Token-major, (B, H*W, C): a view of channels_last activations, and q, k, v whose head
        # dimension has unit stride, which SDPA's flash kernels need (with channel-major q/k/v
        # it falls back to its math path: the whole score matrix in memory, 1.4x slower overall).
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        qkv = F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias)
        # The legacy channel order is (head, q/k/v, head_dim).
        q, k, v = qkv.view(b, h * w, self.num_heads, 3, c // self.num_heads).transpose(1, 2).unbind(3)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = F.linear(a, self.proj_out.weight[..., 0], self.proj_out.bias).view(b, h, w, c).permute(0, 3, 1, 2)
        return x + out


class TimestepSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor,  # type: ignore[override]
                joined: torch.Tensor | None = None) -> torch.Tensor:
        """The layers on x, or on `torch.cat([x, joined], 1)` (a decoder block's input), which
        a first ResBlock takes as the two tensors."""
        return self.forward_with_stats(x, emb, joined)[0]

    def forward_with_stats(self, x: torch.Tensor, emb: torch.Tensor, joined: torch.Tensor | None = None,
                           x_stats: torch.Tensor | None = None, joined_stats: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` with the inputs' and output's partial sums (`ResBlock.forward_with_stats`)."""
        stats = x_stats
        for layer in self:
            if isinstance(layer, ResBlock):
                x, stats = layer.forward_with_stats(x, emb, joined, stats, joined_stats)
            else:
                x, stats = layer(x if joined is None else torch.cat([x, joined], dim=1)), None
            joined = joined_stats = None
        return x, stats


class UNet(nn.Module):
    """ADM UNet. `forward(x, timesteps)`: x is (B, in_channels, H, W) with H, W multiples of
    `config.size_multiple`; timesteps (B,) on the 0..999 scale."""

    def __init__(self, config: UNetConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        # Called before each block when set: a caller's Cancel check within one long
        # evaluation (a whole image on a CPU). Left unset under torch.compile.
        self.before_block: Callable[[], None] | None = None
        mc, heads = config.model_channels, config.num_head_channels
        emb_ch = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_chans, ch, ds = [mc], mc, 1
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mult * mc, dropout)]
                ch = mult * mc
                if ds in config.attention_ds:
                    layers.append(AttentionBlock(ch, heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != last:
                self.input_blocks.append(TimestepSequential(ResBlock(ch, emb_ch, ch, dropout, down=True)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_ch, ch, dropout), AttentionBlock(ch, heads), ResBlock(ch, emb_ch, ch, dropout)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_ch, mult * mc, dropout)]
                ch = mult * mc
                if ds in config.attention_ds:
                    layers.append(AttentionBlock(ch, heads))
                if level and i == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, dropout, up=True))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, config.out_channels, 3, padding=1)))
        # Training only: keep each block's input, not its activations, and run the block
        # again in the backward pass (less memory for about a third more compute).
        self.gradient_checkpointing = False

    def _block(self, block: TimestepSequential, h: torch.Tensor, emb: torch.Tensor, h_stats: torch.Tensor | None,
               skip: torch.Tensor | None = None, skip_stats: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One block, on `h` or on `h` joined with its `skip` (the join inside, so that
        checkpointing keeps no joined copy), with partial sums in and out where the Triton
        residual add made them (`ResBlock.forward_with_stats`)."""
        if self.before_block is not None:
            self.before_block()
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # non-reentrant, with the RNG state kept: dropout draws the same masks again (and
            # with autograd on the kernels do not run: there are no partial sums)
            return torch.utils.checkpoint.checkpoint(block.forward_with_stats, h, emb, skip, use_reentrant=False)
        return block.forward_with_stats(h, emb, skip, h_stats, skip_stats)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        m = self.config.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"UNet input H and W must be multiples of {m}, got {tuple(x.shape[-2:])}; pad first")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(self.time_embed[0].weight.dtype))
        h = _outer_conv(self.input_blocks[0][0], x)  # input_blocks[0] is the one conv
        # Each activation travels with its partial sums where a Triton residual add made it
        # (else None): the norms that read it, in the next block and in the decoder block it
        # skips to, then skip their statistics pass.
        stats = None
        skips = [(h, stats)]
        for block in self.input_blocks[1:]:
            h, stats = self._block(block, h, emb, stats)
            skips.append((h, stats))
        h, stats = self._block(self.middle_block, h, emb, stats)
        for block in self.output_blocks:
            h, stats = self._block(block, h, emb, stats, *skips.pop())
        if _reference_ops_on():
            return self.out(h)
        norm = self.out[0]  # out = norm, SiLU, conv
        return _outer_conv(self.out[2], norm.normalize(h, norm.weight, norm.bias, silu=True, x_stats=stats))
