"""`OFTSRModel`: the UNet plus what is needed to use it (sigma_p, role, scale, degradation,
objective), and the velocity call in the method's conventions."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import triton_groupnorm
from .unet import UNet, UNetConfig

ROLES = ("teacher", "student")
DEGRADATIONS = ("bicubic", "noisy_avgpool", "realesrgan")
# How a student was distilled. OFTSR students take t (fidelity-realism); FlowSR and FluxSR
# students are fixed-point maps x0 -> x1, evaluated at the start time whatever t is asked.
OBJECTIVES = ("oftsr", "flowsr", "fluxsr")
FIXED_POINT_OBJECTIVES = ("flowsr", "fluxsr")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class RunWarning(UserWarning):
    """A word on how the model runs (its dtype on this device, compilation), not on an
    image: a program that runs many images says it once."""


MAX_SCALE = 16  # beyond any SR model; the loader node's scale widget stops here too

# Weight precisions by the short names the CLI and the nodes offer (load_model takes them too,
# and torch's names of them).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {**DTYPES, "float32": torch.float32, "float": torch.float32, "float16": torch.float16,
               "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64,
               "double": torch.float64}
# What `optimize(autocast=...)` takes: the half-precision types among them.
AUTOCAST_DTYPES = {name: dtype for name, dtype in DTYPE_NAMES.items() if dtype in (torch.float16, torch.bfloat16)}


def as_time_tensor(t: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """t as a (B,) float32 tensor; a float is broadcast over the batch."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a float or a ({batch},) tensor, got shape {tuple(t.shape)}")
    return t


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right up to a multiple: reflect where the image is large
    enough for it, replicate otherwise (reflect needs pad < size)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def _is_compile_failure(e: BaseException) -> bool:
    """torch.compile's backend failing to build the graph (no C++ compiler, no Triton), not
    an error of the network it runs."""
    dynamo = getattr(torch, "_dynamo", None)
    failed = getattr(getattr(dynamo, "exc", None), "BackendCompilerFailed", None)
    return failed is not None and isinstance(e, failed)


def fastest_layout_is_channels_last(device: torch.device) -> bool:
    """The memory layout of the faster inference forward on `device` (bench/bench.py, the
    fast-path table): channels_last on CPUs (oneDNN convolutions; the attention's
    token-major view is free) and other non-CUDA devices, and on the CUDA GPUs the
    channels_last Triton GroupNorm serves (an H100, div2k at 512 px, batch 8: 1.39x under
    bf16 autocast, 1.44x in float32); NCHW on other CUDA devices (older NVIDIA GPUs, ROCm,
    no Triton), where PyTorch's GroupNorm copies channels_last input to NCHW and back
    (0.70x there)."""
    return device.type != "cuda" or triton_groupnorm.serves(device)


# What a model is beyond its network (`OFTSRModel.settings()`), in the order files record it.
SETTINGS = ("role", "scale", "sigma_p", "degradation", "step", "objective")


class OFTSRModel(nn.Module):
    """A teacher (conditional rectified flow) or a one-step student.

    `velocity(x_t, x_lr, t)`: states and conditions in [-1, 1] at HR size, t in [0, 1]
    (a float or a (B,) tensor); returns the 3 velocity channels, float32.
    """

    def __init__(self, unet: UNet, *, sigma_p: float, role: str, scale: int,
                 degradation: str = "bicubic", step: int = 0, objective: str = "oftsr") -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        if not 0.0 <= float(sigma_p) <= 1.0:
            raise ValueError(f"sigma_p must be in [0, 1], got {sigma_p}")
        if not 1 <= int(scale) <= MAX_SCALE:  # beyond it a file's scale is damage: the result would not fit memory
            raise ValueError(f"scale must be an integer from 1 to {MAX_SCALE}, got {scale}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.unet = unet
        self.sigma_p = float(sigma_p)
        self.role = role
        self.scale = int(scale)
        self.degradation = degradation
        self.step = int(step)
        self.objective = objective
        self.stored_dtype = torch.float32  # the weights' dtype in the file it was loaded from (`oftsr convert` keeps it)
        self.channels_last = False
        self.layout_follows_device = False  # set by optimize(channels_last=None)
        self.autocast_dtype: torch.dtype | None = None
        self.__dict__["_compiled"] = None  # kept out of the module tree, so state dicts stay clean

    def optimize(self, *, channels_last: bool | None = None, autocast: torch.dtype | str | None = None,
                 compile: bool | str = False) -> "OFTSRModel":
        """The inference fast path: the memory layout that is faster on the model's device,
        autocast of float32 weights to bf16/fp16 (GroupNorm statistics stay float32), and,
        opt-in, `torch.compile` of the UNet (`True`, or one of its modes by name:
        "reduce-overhead" replays CUDA graphs, which suits the fixed tile shape of tiled
        upscaling). `load_model` returns models already through `optimize()`; `create_model`
        and the constructor give the plain NCHW model. Each call sets all three: a setting
        left out takes its default (compile off), so give every one wanted in one call.

        The compiled network is specialised to the first input size it sees; the second
        and third sizes (a new width, a new height) compile it once more into a graph for
        any size, so a service with varied image sizes pays three compilations, not one per
        size. Where compiling cannot work (no C++ compiler for the CPU, no Triton for the
        GPU) the first forward warns once and the model runs uncompiled. `torch.compile(model)`
        instead compiles `forward`, which `upscale` and `sample` do not call: they say so.

        With `channels_last=True` on a GPU that `triton_groupnorm.serves` (NVIDIA, Ampere on,
        Triton installed and working), GroupNorm, the time embedding's scale-shift and SiLU
        run as one channels_last kernel (`oftsr/triton_groupnorm.py`) instead of PyTorch's
        NCHW-only one, compiled or not (a compiled graph calls the kernels as custom
        operators).

        `channels_last=None` picks `fastest_layout_is_channels_last(device)`, and picks
        again whenever the model moves to another device."""
        self.layout_follows_device = channels_last is None
        self._set_layout(fastest_layout_is_channels_last(self.device) if channels_last is None else channels_last)
        dtype = AUTOCAST_DTYPES.get(autocast, autocast) if isinstance(autocast, str) else autocast
        if dtype is not None and dtype not in (torch.bfloat16, torch.float16):  # else it fails in the first forward
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16 (or 'bf16', 'fp16'), got "
                             f"{autocast!r}")
        self.autocast_dtype = dtype
        if isinstance(compile, str) and compile not in COMPILE_MODES:
            raise ValueError(f"compile must be True, False or one of {COMPILE_MODES}, got {compile!r}")
        mode = compile if isinstance(compile, str) else None
        # dynamic=None: static for the first size, shape-generic from the next (recompiling per size
        # would stall every new image size and stop at dynamo's recompile limit)
        self.__dict__["_compiled"] = torch.compile(self.unet, dynamic=None, mode=mode) if compile else None
        return self

    def _set_layout(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        self.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # Every .to(), .cuda(), .float() ends here: a model whose layout was chosen for its
        # device takes the new device's layout (`fastest_layout_is_channels_last`).
        super()._apply(fn, recurse)
        if self.layout_follows_device and fastest_layout_is_channels_last(self.device) != self.channels_last:
            self._set_layout(not self.channels_last)
        return self

    @property
    def ignores_t(self) -> bool:
        """A FlowSR or FluxSR student: one fixed output per input, no fidelity-realism slider."""
        return self.role == "student" and self.objective in FIXED_POINT_OBJECTIVES

    def ignores_t_note(self, t_name: str = "t") -> str:
        """The warning the CLI and the nodes give for such a student, naming their t input."""
        return (f"this student was distilled with {self.objective}, a fixed-point one-step map: it ignores {t_name} "
                f"(every t gives the same image)")

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def velocity(self, x_t: torch.Tensor, x_lr: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        if x_t.shape != x_lr.shape or x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t and x_lr must both be (B, 3, H, W), got {tuple(x_t.shape)} and {tuple(x_lr.shape)}")
        t = as_time_tensor(t, x_t.shape[0], x_t.device)
        x, (h, w) = pad_to_multiple(torch.cat([x_t, x_lr], dim=1), self.config.size_multiple)
        x = x.to(self.dtype, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        compiled = self.__dict__["_compiled"]
        if compiled is None:
            out = self._run(self.unet, x, t)
        else:
            try:
                out = self._run(compiled, x, t)
            except Exception as e:
                if not _is_compile_failure(e):
                    raise
                # No C++ compiler for the CPU (Windows without MSVC), no Triton for the GPU: the
                # network is the same uncompiled, only slower; failing every image would not help.
                reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
                warnings.warn(f"torch.compile does not work here ({reason[:200]}): running uncompiled. It needs a "
                              f"C++ compiler on the CPU and Triton on NVIDIA GPUs", RunWarning, stacklevel=2)
                self.__dict__["_compiled"] = None
                out = self._run(self.unet, x, t)
        # A copy, always: CUDA-graph replays ("reduce-overhead") reuse the output's memory.
        return out[:, :3, :h, :w].to(torch.float32, copy=True)

    def _run(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return net(x, t * 999)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return net(x, t * 999)

    forward = velocity

    def settings(self) -> dict[str, object]:
        """What the model is beyond its network: the constructor's keywords (and the
        metadata a file records), so `OFTSRModel(UNet(m.config), **m.settings())` is its twin."""
        return {key: getattr(self, key) for key in SETTINGS}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings().items())
