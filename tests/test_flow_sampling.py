import math
import sys

import pytest
import torch

from oftsr.flow import T_EPS, interpolate, noise_augment, student_step, time_grid, velocity_target
from oftsr.sampling import CountNFE, get_sampler, sample_adaptive, sample_euler, sample_heun, sample_midpoint


def test_noise_augment_is_variance_preserving():
    g = torch.Generator().manual_seed(0)
    x_lr = torch.randn(4, 3, 64, 64, generator=g)
    eps = torch.randn(4, 3, 64, 64, generator=g)
    for sp in (0.0, 0.2, 0.5, 1.0):
        x0 = noise_augment(x_lr, sp, eps)
        assert torch.allclose(x0, math.sqrt(1 - sp * sp) * x_lr + sp * eps)
        assert abs(x0.var().item() - 1.0) < 0.03
    assert torch.equal(noise_augment(x_lr, 0.0, eps), x_lr)


def test_interpolation_and_target_hand_values():
    x0 = torch.tensor([[1.0, -1.0]]).reshape(2, 1, 1, 1)
    x1 = torch.tensor([[3.0, 1.0]]).reshape(2, 1, 1, 1)
    t = torch.tensor([0.25, 0.5])
    assert interpolate(x0, x1, t).flatten().tolist() == [1.5, 0.0]
    assert velocity_target(x0, x1).flatten().tolist() == [2.0, 2.0]
    assert interpolate(x0, x1, 1.0).flatten().tolist() == [3.0, 1.0]
    # the student with the exact straight-line velocity lands (1 - eps) of the way
    assert torch.allclose(student_step(x0, velocity_target(x0, x1)), x0 + (1 - T_EPS) * (x1 - x0))


def test_time_grid():
    ts = time_grid(4)
    assert ts.tolist() == pytest.approx([0.001, 0.25075, 0.5005, 0.75025, 1.0])
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        time_grid(0)
    with pytest.raises(ValueError, match="steps must be an integer, got 2.5"):
        time_grid(2.5)  # arange would make a grid that stops short of t = 1


SAMPLERS = [sample_euler, sample_midpoint, sample_heun]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_exact_on_straight_flows(sampler):
    # A rectified flow with straight paths has constant velocity: every rule is exact.
    x0, v = torch.randn(3, 5), torch.randn(3, 5)
    ts = time_grid(7)
    out = sampler(lambda x, t: v, x0, ts)
    assert torch.allclose(out, x0 + (1 - T_EPS) * v, atol=1e-6)


@pytest.mark.parametrize("sampler", [sample_midpoint, sample_heun])
def test_rk2_exact_for_time_affine_velocity_except_last_euler_step(sampler):
    # v(t) = a + b t is integrated exactly by both RK2 rules; the final Euler step
    # (as in the paper) leaves exactly its local error b h^2 / 2.
    a, b = torch.tensor([0.3]), torch.tensor([2.0])
    ts = time_grid(5)
    h = float(ts[-1] - ts[-2])
    out = sampler(lambda x, t: a + b * t, torch.zeros(1), ts)
    exact = a * (1 - T_EPS) + b * (1 - T_EPS**2) / 2
    assert out.item() == pytest.approx((exact - b * h * h / 2).item(), abs=1e-9)


def _error(sampler, n):
    # dx/dt = x cos(t): x(t) = x(t0) exp(sin t - sin t0)
    ts = time_grid(n)
    x0 = torch.tensor([1.0], dtype=torch.float64)
    out = sampler(lambda x, t: x * math.cos(t), x0, ts)
    exact = math.exp(math.sin(1.0) - math.sin(T_EPS))
    return abs(out.item() - exact)


@pytest.mark.parametrize("sampler,order", [(sample_euler, 1), (sample_midpoint, 2), (sample_heun, 2)])
def test_convergence_order(sampler, order):
    errors = [_error(sampler, n) for n in (32, 64, 128, 256)]
    observed = [math.log2(e1 / e2) for e1, e2 in zip(errors, errors[1:])]
    assert all(abs(o - order) < 0.2 for o in observed), observed
    assert abs(observed[-1] - order) < 0.1, observed


@pytest.mark.parametrize("solver,steps,nfe", [("euler", 10, 10), ("midpoint", 10, 19), ("heun", 10, 19), ("euler", 1, 1),
                                              ("midpoint", 1, 1)])
def test_nfe_counts(solver, steps, nfe):
    fn = CountNFE(lambda x, t: -x)
    get_sampler(solver)(fn, torch.ones(2), time_grid(steps))
    assert fn.nfe == nfe


def test_adaptive_solver_accuracy_and_nfe():
    fn = CountNFE(lambda x, t: x * math.cos(t))
    x0 = torch.tensor([1.0], dtype=torch.float64)
    out = sample_adaptive(fn, x0, time_grid(1))
    exact = math.exp(math.sin(1.0) - math.sin(T_EPS))
    assert abs(out.item() - exact) < 3 * (1e-3 + 1e-3 * exact)  # within a few tolerances of the controller
    assert abs(out.item() - exact) < _error(sample_euler, 8)  # and better than a coarse fixed-step run
    assert 6 <= fn.nfe < 100  # dopri5 uses 6 evaluations per accepted step plus the first
    straight = CountNFE(lambda x, t: torch.ones_like(x))
    assert torch.allclose(sample_adaptive(straight, torch.zeros(3), time_grid(1)), torch.full((3,), 1 - T_EPS))
    # a half-precision state: the velocity sees its dtype, the solver steps in float32 (in
    # float16 its first step rounded to 0 and it stopped with "underflow in dt")
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        seen = set()
        out = sample_adaptive(lambda x, t: seen.add(x.dtype) or x * math.cos(t), x0.to(dtype), time_grid(1))
        assert out.dtype == dtype and seen == {dtype} and abs(out.item() - exact) < tol * exact


def test_adaptive_solver_on_mps_controls_its_steps_in_float32(monkeypatch):
    """MPS has no float64, in which torchdiffeq controls dopri5's step size by default: there
    the control runs in float32 (simulated on the CPU: no float64 tensor on the state's device)."""
    import oftsr.sampling

    assert oftsr.sampling.adaptive_options(torch.device("mps")) == {"dtype": torch.float32}
    assert oftsr.sampling.adaptive_options(torch.device("cpu")) == {}
    monkeypatch.setattr(oftsr.sampling, "adaptive_options", lambda device: {"dtype": torch.float32})
    made, as_tensor = [], torch.as_tensor
    monkeypatch.setattr(torch, "as_tensor", lambda data, *a, **kw: made.append(kw.get("dtype")) or as_tensor(data, *a, **kw))
    fn = CountNFE(lambda x, t: x * math.cos(t))
    out = sample_adaptive(fn, torch.tensor([1.0]), time_grid(1))
    exact = math.exp(math.sin(1.0) - math.sin(T_EPS))
    assert abs(out.item() - exact) < 3 * (1e-3 + 1e-3 * exact) and 6 <= fn.nfe < 100
    assert torch.float32 in made and torch.float64 not in made


def test_adaptive_solver_without_torchdiffeq_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # what an install without requirements.txt has
    with pytest.raises(ImportError, match=r"^the adaptive solver needs torchdiffeq, which is not installed: pip install "
                                          r"torchdiffeq \(in ComfyUI's Python: pip install -r custom_nodes/oftsr/"
                                          r"requirements.txt\), or choose the euler, midpoint or heun solver$"):
        sample_adaptive(lambda x, t: x, torch.zeros(2), time_grid(1))


def test_unknown_solver():
    with pytest.raises(ValueError, match="choose one of euler, midpoint, heun, adaptive"):
        get_sampler("rk4")


def test_callback_reports_each_step():
    seen = []
    sample_midpoint(lambda x, t: x, torch.ones(1), time_grid(4), callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
