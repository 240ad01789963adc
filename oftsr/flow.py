"""Flow math of OFTSR as plain functions (images in [-1, 1], NCHW).

Time runs 0 -> 1 from the noised LR image x0 to the HR image x1 along straight lines.
"""

from __future__ import annotations

import torch

from .checks import check_int

T_EPS = 0.001  # time floor: training draws t ~ U[T_EPS, 1]; sampling starts there


def noise_augment(x_lr: torch.Tensor, sigma_p: float, noise: torch.Tensor) -> torch.Tensor:
    """Variance-preserving start point x0 = sqrt(1 - sp^2) * x_lr + sp * eps."""
    return (1.0 - sigma_p**2) ** 0.5 * x_lr + sigma_p * noise


def per_sample(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """A (B,) time tensor shaped to broadcast over x's other dims; a float or a 0-d tensor
    (which may stay on the CPU beside a CUDA x) as it is."""
    return t.reshape(-1, *([1] * (x.ndim - 1))) if isinstance(t, torch.Tensor) and t.ndim else t


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = t * x1 + (1 - t) * x0; t a float or (B,)."""
    t = per_sample(t, x0)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The constant velocity of the straight path: v = x1 - x0."""
    return x1 - x0


def endpoint_estimate(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The HR image reached from x at time t in a straight line: x + (1 - t) v (FlowSR's
    consistency function f; the teacher's step previews)."""
    return x + (1 - per_sample(t, x)) * v


def student_step(x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One-step student: x1 = x0 + (1 - T_EPS) * v_phi(x0, t), the endpoint from the start."""
    return endpoint_estimate(x0, v, T_EPS)


def time_grid(steps: int, eps: float = T_EPS) -> torch.Tensor:
    """Sampling grid t_i = i/N * (1 - eps) + eps, i = 0..N (float64 for exact steps)."""
    steps = check_int(steps, "steps", 1)  # 2.5 steps would make a grid that misses t = 1
    return torch.arange(steps + 1, dtype=torch.float64) / steps * (1 - eps) + eps
