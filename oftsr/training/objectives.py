"""The one-step objectives that sit beside OFTSR's same-trajectory distillation, on our
own flow teacher (time 0 = noised LR x0, time 1 = HR x1; images in [-1, 1]).

FlowSR (consistency rectified flow)
    The student is a consistency function f(x, t) = x + (1 - t) v(x, t), so f(x, 1) = x.
    From x_a on the straight x0 -> x1 path, one teacher ODE step reaches the adjacent time
    b; the student at a must agree with an EMA copy of itself at b (stop-gradient), and
    the student at the teacher-stepped point is pulled to the true HR image. Adjacent
    times come from a fast (few steps) or a slow (many steps) grid. Optional adversarial
    loss with a small conditional patch discriminator.

FluxSR (flow trajectory distillation)
    The teacher's multi-step sampler makes (start noise, end point, LR) pairs; the
    one-step student maps each start point x0 to the teacher's end point. Losses: MSE,
    TV-LPIPS = LPIPS(x, y) + gamma * LPIPS(TV(x), TV(y)), and the attention
    diversification loss (ADL) on the UNet's attention blocks.

Fixed-point students (both) are evaluated at the start time T_EPS:
x1 = x0 + (1 - T_EPS) v(x0, T_EPS) = f(x0, T_EPS), the OFTSR student's formula at t = T_EPS.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..flow import T_EPS, endpoint_estimate, interpolate, per_sample, student_step
from ..unet import AttentionBlock
from .ema import ema_step_
from .losses import TEACHER_STEPS, ConditionalVelocityFn

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTANCES: dict[str, Distance] = {"mse": F.mse_loss, "l1": F.l1_loss}


# ----------------------------------------------------------------------------- FlowSR

def fast_slow_times(batch: int, *, fast_steps: int = 4, slow_steps: int = 1000, p_fast: float = 0.5,
                    device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacent times (t_a, t_b) of the sampling grid t_i = i/N (1 - T_EPS) + T_EPS, per
    sample N = fast_steps with probability p_fast (large jumps), else N = slow_steps
    (fine alignment); i uniform in 0..N-1, t_b = t_{i+1}."""
    if fast_steps < 1 or slow_steps < 1:
        raise ValueError(f"fast_steps and slow_steps must be >= 1, got {fast_steps} and {slow_steps}")
    if not 0.0 <= p_fast <= 1.0:
        raise ValueError(f"p_fast must be in [0, 1], got {p_fast}")
    fast = torch.rand(batch, generator=generator) < p_fast
    n = torch.where(fast, fast_steps, slow_steps).double()
    i = (torch.rand(batch, generator=generator, dtype=torch.float64) * n).floor().clamp(max=n - 1)
    t_a, t_b = i / n * (1 - T_EPS) + T_EPS, (i + 1) / n * (1 - T_EPS) + T_EPS
    return t_a.float().to(device), t_b.float().to(device)


def flowsr_loss(student: ConditionalVelocityFn, target: ConditionalVelocityFn, teacher: ConditionalVelocityFn,
                x0: torch.Tensor, x1: torch.Tensor, x_lr: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor, *,
                teacher_solver: str = "midpoint", lambda_hr: float = 1.0,
                distance: str = "mse") -> dict[str, torch.Tensor]:
    """Consistency distillation with HR regularisation.

        x_a = (1 - t_a) x0 + t_a x1,  x_b = x_a + (t_b - t_a) v_teacher   (one teacher step)
        consistency = d( f_phi(x_a, t_a),  SG f_target(x_b, t_b) ),  f(x, t) = x + (1 - t) v(x, t)
        hr          = d( f_phi(x_b, t_b),  x1 )
        loss        = consistency + lambda_hr * hr

    `target` is the EMA copy of the student (evaluated without gradients). Returns the
    terms, `loss`, and `estimate` = f_phi(x_a, t_a) (for an adversarial loss)."""
    if teacher_solver not in TEACHER_STEPS:
        raise ValueError(f"teacher_solver must be one of {list(TEACHER_STEPS)}, got {teacher_solver!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    d = DISTANCES[distance]
    b = x0.shape[0]
    x_a = interpolate(x0, x1, t_a)
    with torch.no_grad():
        step = t_b - t_a
        x_b = x_a + per_sample(step, x_a) * TEACHER_STEPS[teacher_solver](teacher, x_a, x_lr, t_a, step)
        f_target = endpoint_estimate(x_b, target(x_b, x_lr, t_b), t_b)
    v_a, v_b = student(torch.cat([x_a, x_b]), x_lr.repeat(2, 1, 1, 1), torch.cat([t_a, t_b])).split(b)
    f_a = endpoint_estimate(x_a, v_a, t_a)
    consistency = d(f_a, f_target)
    hr = d(endpoint_estimate(x_b, v_b, t_b), x1)
    return {"loss": consistency + lambda_hr * hr, "consistency": consistency, "hr": hr, "estimate": f_a}


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, parameter by parameter."""
    ema_step_(list(target.parameters()), online.parameters(), decay)


class PatchDiscriminator(nn.Module):
    """A small conditional PatchGAN: (image, x_lr) -> a map of real/fake logits, one per
    38 x 38 px receptive field (with the default 3 layers). Spectral norm on every conv keeps hinge training
    stable without a gradient penalty."""

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        blocks: list[nn.Module] = []
        ch = 6  # image + LR condition
        for i in range(layers):
            out = width * 2 ** min(i, 3)
            blocks += [sn(nn.Conv2d(ch, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            ch = out
        blocks.append(sn(nn.Conv2d(ch, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, x_lr], dim=1))


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean D(fake)."""
    return -fake_logits.mean()


# ----------------------------------------------------------------------------- FluxSR

def one_step(student: ConditionalVelocityFn, x0: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
    """A fixed-point student's output: x0 + (1 - T_EPS) v(x0, T_EPS)."""
    t = torch.full((x0.shape[0],), T_EPS, device=x0.device)
    return student_step(x0, student(x0, x_lr, t))


def tv_map(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel gradient magnitude |dh| + |dw| (forward differences, 0 at the last
    row/column), mapped from its range [0, 4] for images in [-1, 1] onto LPIPS's input
    range [-1, 1] (linear, no clamping)."""
    dh = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
    dw = F.pad((x[..., :, 1:] - x[..., :, :-1]).abs(), (0, 1, 0, 0))
    return (dh + dw) / 2 - 1


def tv_lpips(lpips_fn: Distance, x: torch.Tensor, y: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """LPIPS(x, y) + gamma * LPIPS(TV(x), TV(y)); `lpips_fn` takes [-1, 1] images and
    returns per-image distances (any shape; averaged)."""
    return lpips_fn(x, y).mean() + gamma * lpips_fn(tv_map(x), tv_map(y)).mean()


def attention_diversity(outputs: list[torch.Tensor]) -> torch.Tensor:
    """ADL: for each attention output (B, C, H, W), the mean over tokens (pixels) of the
    cosine similarity between each token and the layer's mean token, averaged over the
    batch and then over layers. 1 = all tokens alike (the cause of periodic artifacts)."""
    if not outputs:
        raise ValueError("no attention outputs were captured: the network has no attention blocks")
    sims = []
    for out in outputs:
        tokens = out.float().flatten(2)  # (B, C, L)
        mean = tokens.mean(dim=2, keepdim=True)
        sims.append(F.cosine_similarity(tokens, mean.expand_as(tokens), dim=1).mean())
    return torch.stack(sims).mean()


@contextlib.contextmanager
def capture_attention(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the attention output of every `AttentionBlock` in `module` during the
    forward passes run inside the block (gradients flow through the captured tensors).
    That is the block's output less its input: the block adds its input back (a
    residual), and ADL measures how alike the attention makes the tokens, not the input."""
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, inputs, out: captured.append(out - inputs[0]))
             for m in module.modules() if isinstance(m, AttentionBlock)]
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def fluxsr_loss(student: ConditionalVelocityFn, x0: torch.Tensor, x_lr: torch.Tensor, teacher_end: torch.Tensor,
                lpips_fn: Distance | None, *, network: nn.Module | None = None, lambda_lpips: float = 1.0,
                gamma: float = 1.0, lambda_adl: float = 0.0) -> dict[str, torch.Tensor]:
    """Flow trajectory distillation on teacher-made pairs: the one-step output from x0 is
    pulled to the teacher's end point.

        loss = MSE + lambda_lpips * TV-LPIPS + lambda_adl * ADL

    `network` is the module whose attention blocks ADL reads (the student's UNet);
    `lpips_fn` may be None when lambda_lpips is 0."""
    if lambda_lpips and lpips_fn is None:
        raise ValueError("lambda_lpips > 0 needs an LPIPS function")
    if lambda_adl and network is None:
        raise ValueError("lambda_adl > 0 needs the network whose attention blocks it reads")
    with capture_attention(network) if lambda_adl else contextlib.nullcontext([]) as attention:
        pred = one_step(student, x0, x_lr)
    zero = pred.new_zeros(())
    mse = F.mse_loss(pred, teacher_end)
    perceptual = tv_lpips(lpips_fn, pred, teacher_end, gamma) if lambda_lpips else zero
    adl = attention_diversity(attention) if lambda_adl else zero
    total = mse + lambda_lpips * perceptual + lambda_adl * adl
    return {"loss": total, "mse": mse, "tv_lpips": perceptual, "adl": adl}


def make_training_lpips(device: torch.device | str) -> tuple[Distance, str]:
    """A frozen AlexNet LPIPS for losses (gradients flow to the inputs), on [-1, 1]
    images. The pretrained trunk when its weights are present here (never downloaded),
    else a random trunk; the second value says which, for the run log."""
    from .metrics import LPIPS, LPIPSUnavailable

    try:
        net, note = LPIPS(device).net, "pretrained AlexNet trunk"
    except LPIPSUnavailable as e:
        with torch.random.fork_rng(devices=[]):  # the same random trunk in every process and run
            torch.manual_seed(0)
            net = LPIPS(device, random_backbone=True).net
        note = f"RANDOM AlexNet trunk (pretrained {str(e).removeprefix('n/a: ')})"
    net.eval().requires_grad_(False)
    return (lambda x, y: net(x, y)), note
