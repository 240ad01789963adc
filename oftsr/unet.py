"""The ADM (guided-diffusion) UNet that OFTSR uses, with the same parameter names,
shapes and registration order as the authors' network, so their checkpoints load
as plain state dicts.

Fixed choices of the method: scale-shift norm, ResBlock up/down-sampling, GroupNorm(32)
with float32 statistics, 64 channels per attention head, 6 input channels
(state + condition) and 6 output channels of which the first 3 are the velocity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["UNetConfig", "UNet", "PRESETS", "timestep_embedding", "count_parameters"]


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
        # Accept lists (from JSON) but store tuples so configs hash and compare.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_ds", tuple(sorted(int(d) for d in self.attention_ds)))
        if self.model_channels % 32 or self.model_channels <= 0:
            raise ValueError(f"model_channels must be a positive multiple of 32 (GroupNorm(32)), got {self.model_channels}")
        if not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError(f"need at least one level and one res block, got {self}")

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
        if (x.dtype in (torch.float16, torch.bfloat16) and x.device.type in ("cuda", "cpu")
                and not torch.is_grad_enabled()):
            # Half-precision inference: the CUDA and CPU group_norm kernels accumulate mean and
            # variance in float32 themselves, and skipping the float32 copies of input and
            # output makes a bf16 forward 1.17x faster on an H100 (div2k, 512 px). Training
            # keeps the explicit float32 path below for the affine parameters' gradients.
            with torch.autocast("cuda", enabled=False) if x.is_cuda else contextlib.nullcontext():
                return F.group_norm(x, self.num_groups, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps)
        return F.group_norm(x.float(), self.num_groups, _cast(self.weight, torch.float32), _cast(self.bias, torch.float32),
                            self.eps).to(x.dtype)


def _cast(p: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if p is None else p.to(dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zero(module: nn.Module) -> nn.Module:
    # ADM zero-initialises the last conv of each residual branch and the output conv.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


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

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            # ADM resamples after norm+SiLU and before the conv, on both branches.
            h = self._resample(self.in_layers[:-1](x))
            x = self._resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


def legacy_qkv_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reference attention in ADM's legacy layout (per head: q, k, v stacked on channels).
    Kept for parity checks and the float32 baseline; the network uses SDPA."""
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = qkv.reshape(b * num_heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


class AttentionBlock(nn.Module):
    # Switched off to compare against the legacy einsum path (same weights, same math).
    use_sdpa: bool = True

    def __init__(self, channels: int, num_head_channels: int = 64) -> None:
        super().__init__()
        self.num_heads = max(1, channels // num_head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        qkv = self.qkv(self.norm(flat))
        if self.use_sdpa:
            # The legacy channel order is (head, q/k/v, head_dim).
            q, k, v = rearrange(qkv, "b (heads qkv d) l -> qkv b heads l d", heads=self.num_heads, qkv=3)
            a = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads l d -> b (heads d) l")
        else:
            a = legacy_qkv_attention(qkv, self.num_heads)
        return (flat + self.proj_out(a)).reshape(b, c, h, w)


class TimestepSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """ADM UNet. `forward(x, timesteps)`: x is (B, in_channels, H, W) with H, W multiples of
    `config.size_multiple`; timesteps (B,) on the 0..999 scale."""

    def __init__(self, config: UNetConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
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

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        m = self.config.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"UNet input H and W must be multiples of {m}, got {tuple(x.shape[-2:])}; pad first")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(self.time_embed[0].weight.dtype))
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
