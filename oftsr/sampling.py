"""ODE samplers for the teacher flow, k-diffusion style: pure functions of
`(velocity_fn, x, ts)` where `velocity_fn(x, t: float) -> v` and `ts` is the time grid.
Each returns the state at ts[-1]. Wrap velocity_fn in `CountNFE` to count evaluations.
"""

from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, int], None]  # progress: callback(done, total)
Stage = Callable[[VelocityFn, torch.Tensor, float, float, torch.Tensor], torch.Tensor]  # an RK2 step: (fn, x, t, h, v)


class CountNFE:
    """Counts network (function) evaluations of a velocity function."""

    def __init__(self, fn: VelocityFn) -> None:
        self.fn, self.nfe = fn, 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.nfe += 1
        return self.fn(x, t)


def _tick(callback: Callback | None, i: int, n: int) -> None:
    if callback is not None:
        callback(i + 1, n)


def sample_euler(fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """First order; NFE = N."""
    n = len(ts) - 1
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        x = x + (t_next - t) * fn(x, t)
        _tick(callback, i, n)
    return x


def _rk2(fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, stage: Stage, callback: Callback | None) -> torch.Tensor:
    # The last step is Euler, as in the paper: NFE = 2N - 1.
    n = len(ts) - 1
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        v = fn(x, t)
        x = x + h * v if i == n - 1 else stage(fn, x, t, h, v)
        _tick(callback, i, n)
    return x


def _midpoint_stage(fn: VelocityFn, x: torch.Tensor, t: float, h: float, v: torch.Tensor) -> torch.Tensor:
    return x + h * fn(x + 0.5 * h * v, t + 0.5 * h)


def _heun_stage(fn: VelocityFn, x: torch.Tensor, t: float, h: float, v: torch.Tensor) -> torch.Tensor:
    return x + 0.5 * h * (v + fn(x + h * v, t + h))


def sample_midpoint(fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """Explicit midpoint (RK2), last step Euler; NFE = 2N - 1."""
    return _rk2(fn, x, ts, _midpoint_stage, callback)


def sample_heun(fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """Heun's method (trapezoidal RK2), last step Euler; NFE = 2N - 1."""
    return _rk2(fn, x, ts, _heun_stage, callback)


def sample_adaptive(fn: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None,
                    rtol: float = 1e-3, atol: float = 1e-3) -> torch.Tensor:
    """Dormand-Prince RK45 with step-size control (torchdiffeq), from ts[0] to ts[-1];
    only the end points of `ts` matter. The callback gets (nfe, 0): the total is unknown."""
    try:
        from torchdiffeq import odeint
    except ImportError as e:  # installed without its requirements (a ComfyUI pack copied by hand)
        raise ImportError("the adaptive solver needs torchdiffeq, which is not installed: pip install torchdiffeq "
                          "(in ComfyUI's Python: pip install -r custom_nodes/oftsr/requirements.txt), or choose the "
                          "euler, midpoint or heun solver") from e

    calls = 0

    # The solver's state and time in float32 at least (the velocity in the state's own dtype):
    # in half precision its error estimates and first step round to 0.
    solver_dtype = torch.promote_types(x.dtype, torch.float32)

    def rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if callback is not None:
            callback(calls, 0)
        return fn(y.to(x.dtype), float(t)).to(solver_dtype)

    span = torch.tensor([float(ts[0]), float(ts[-1])], dtype=solver_dtype)
    return odeint(rhs, x.to(solver_dtype), span, rtol=rtol, atol=atol, method="dopri5",
                  options=adaptive_options(x.device))[-1].to(x.dtype)


def adaptive_options(device: torch.device) -> dict:
    """dopri5's step-size control runs in float64 (torchdiffeq's default), on the state's
    device; MPS has no float64, so there it runs in float32."""
    return {"dtype": torch.float32} if device.type == "mps" else {}


SAMPLERS = {"euler": sample_euler, "midpoint": sample_midpoint, "heun": sample_heun, "adaptive": sample_adaptive}
SOLVERS = tuple(SAMPLERS)


def get_sampler(solver: str) -> Callable[..., torch.Tensor]:
    if solver not in SAMPLERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return SAMPLERS[solver]


def evaluations(solver: str, steps: int) -> int | None:
    """The network evaluations `solver` makes over `steps` steps (NFE); None for the
    adaptive solver, whose count depends on the image."""
    get_sampler(solver)
    return None if solver == "adaptive" else steps if solver == "euler" else 2 * steps - 1
