"""Training losses of OFTSR (Stage 1: teacher flow; Stage 2: same-trajectory distillation).

`ConditionalVelocityFn(x, x_lr, t)` is a model's velocity call (an `OFTSRModel`, or the same model
wrapped by DDP/FSDP); t is a (B,) tensor in [0, 1]. Images are in [-1, 1].
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..flow import T_EPS, interpolate, noise_augment, per_sample, velocity_target

ConditionalVelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

T_MIN, T_MAX, T_BOUNDARY = 0.01, 0.99, 0.01  # distillation's time range and boundary time


def sample_flow_time(batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U[0.001, 1] for the teacher's flow loss."""
    return torch.rand(batch, device=device, generator=generator) * (1 - T_EPS) + T_EPS


def teacher_loss(model: ConditionalVelocityFn, x1: torch.Tensor, x_lr: torch.Tensor, sigma_p: float, noise: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """Conditional rectified-flow loss: L1 between v(x_t, x_lr, t) and x1 - x0 (L1 beat L2)."""
    x0 = noise_augment(x_lr, sigma_p, noise)
    return F.l1_loss(model(interpolate(x0, x1, t), x_lr, t), velocity_target(x0, x1))


def teacher_step_euler(teacher: ConditionalVelocityFn, x_t: torch.Tensor, x_lr: torch.Tensor, t: torch.Tensor,
                       dt: torch.Tensor) -> torch.Tensor:
    """The teacher's velocity over [t, t + dt] by the Euler rule: v(x_t, t)."""
    return teacher(x_t, x_lr, t)


def teacher_step_midpoint(teacher: ConditionalVelocityFn, x_t: torch.Tensor, x_lr: torch.Tensor, t: torch.Tensor,
                          dt: torch.Tensor) -> torch.Tensor:
    """The teacher's velocity over [t, t + dt] by the midpoint rule: v(x_t + dt/2 v(x_t, t), t + dt/2)."""
    x_mid = x_t + 0.5 * per_sample(dt, x_t) * teacher(x_t, x_lr, t)
    return teacher(x_mid, x_lr, t + 0.5 * dt)


TEACHER_STEPS = {"euler": teacher_step_euler, "midpoint": teacher_step_midpoint}


def distill_loss(student: ConditionalVelocityFn, teacher: ConditionalVelocityFn, x0: torch.Tensor, x_lr: torch.Tensor,
                 t: torch.Tensor, *, dt: float = 0.05, teacher_solver: str = "midpoint", lambda_align: float = 0.01,
                 lambda_bc: float = 0.1) -> dict[str, torch.Tensor]:
    """Same-trajectory distillation. The student sees x0 and t; its implied state is
    x_t = x0 + t v_phi(x0, t). One teacher step from there to s = min(t + dt, 0.99) gives
    v_T, and the student at s must reach the same point:
        distill  = || v_phi(x0, s) - SG[v_t + ((s-t)/s)(v_T - v_t)] ||^2  (gradient through s)
        align    = (1 - t)^2 || v_t - v_T ||^2                          (gradient through v_t)
        boundary = || v_phi(x0, 0.01) - v_theta(x0, 0.01) ||^2
    Returns the three terms and `loss`, their weighted sum. The three student evaluations
    run as one batched forward pass; the teacher is evaluated without gradients."""
    if teacher_solver not in TEACHER_STEPS:
        raise ValueError(f"teacher_solver must be one of {list(TEACHER_STEPS)}, got {teacher_solver!r}")
    b = x0.shape[0]
    s = (t + dt).clamp(max=T_MAX)
    step = s - t
    t_bc = torch.full_like(t, T_BOUNDARY)

    v_t, v_s, v_bc = student(x0.repeat(3, 1, 1, 1), x_lr.repeat(3, 1, 1, 1), torch.cat([t, s, t_bc])).split(b)
    with torch.no_grad():
        x_t = x0 + per_sample(t, x0) * v_t.detach()
        v_T = TEACHER_STEPS[teacher_solver](teacher, x_t, x_lr, t, step)
        v_bc_teacher = teacher(x0, x_lr, t_bc)
        target = v_t.detach() + per_sample(step / s, v_t) * (v_T - v_t.detach())

    distill = F.mse_loss(v_s, target)
    align = (per_sample(1 - t, v_t) ** 2 * (v_t - v_T) ** 2).mean()
    boundary = F.mse_loss(v_bc, v_bc_teacher)
    total = distill + lambda_align * align + lambda_bc * boundary
    return {"loss": total, "distill": distill, "align": align, "boundary": boundary}


def sample_distill_time(batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U[0.01, 0.99] for distillation."""
    return torch.rand(batch, device=device, generator=generator) * (T_MAX - T_MIN) + T_MIN
