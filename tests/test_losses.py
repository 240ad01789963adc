import pytest
import torch

from oftsr.flow import noise_augment
from oftsr.training.losses import (distill_loss, sample_distill_time, sample_flow_time, teacher_loss, teacher_step_euler,
                          teacher_step_midpoint)


def test_teacher_loss_hand_value():
    # model returns zeros: loss = mean |x1 - x0| with x0 = sqrt(1 - sp^2) x_lr + sp eps
    x1 = torch.full((1, 1, 1, 2), 0.5)
    x_lr = torch.tensor([[[[0.1, -0.3]]]])
    noise = torch.tensor([[[[1.0, -1.0]]]])
    zero = lambda x, c, t: torch.zeros_like(x)  # noqa: E731
    sp = 0.6
    x0 = 0.8 * x_lr + sp * noise  # sqrt(1 - 0.36) = 0.8
    expected = (x1 - x0).abs().mean()
    assert teacher_loss(zero, x1, x_lr, sp, noise, torch.tensor([0.3])).item() == pytest.approx(expected.item())
    # the exact velocity gives zero loss whatever t
    exact = lambda x, c, t: x1 - noise_augment(x_lr, sp, noise)  # noqa: E731
    assert teacher_loss(exact, x1, x_lr, sp, noise, torch.tensor([0.9])).item() == 0.0


def test_time_samplers_ranges():
    g = torch.Generator().manual_seed(0)
    t = sample_flow_time(10000, "cpu", g)
    assert t.min() >= 0.001 and t.max() <= 1.0 and abs(t.mean().item() - 0.5005) < 0.01
    t = sample_distill_time(10000, "cpu", g)
    assert t.min() >= 0.01 and t.max() <= 0.99


def test_teacher_steps_on_a_known_field():
    # v(x, t) = t: Euler gives t, midpoint gives t + dt/2
    fn = lambda x, c, t: t.view(-1, 1, 1, 1).expand_as(x)  # noqa: E731
    x = torch.zeros(2, 1, 1, 1)
    t, dt = torch.tensor([0.2, 0.5]), torch.tensor([0.05, 0.1])
    assert teacher_step_euler(fn, x, x, t, dt).flatten().tolist() == pytest.approx([0.2, 0.5])
    assert teacher_step_midpoint(fn, x, x, t, dt).flatten().tolist() == pytest.approx([0.225, 0.55])


def const(value):
    return lambda x, c, t: torch.full_like(x, value)


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_distill_linear_teacher_known_answer(solver):
    # A teacher whose flow is exactly linear (constant velocity c): the ideal student
    # predicts c at every t, and every loss term is zero.
    x0, x_lr, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0.1, 0.4, 0.95, 0.5])
    out = distill_loss(const(0.7), const(0.7), x0, x_lr, t, teacher_solver=solver)
    assert all(v.item() == pytest.approx(0.0, abs=1e-12) for v in out.values())
    # A student stuck at a: target = a + (dt/s)(c - a); terms follow by hand.
    a, c = 0.2, 0.7
    out = distill_loss(const(a), const(c), x0, x_lr, t, teacher_solver=solver)
    s = (t + 0.05).clamp(max=0.99)
    dt = s - t
    distill = ((dt / s) ** 2 * (c - a) ** 2).mean()
    align = ((1 - t) ** 2 * (a - c) ** 2).mean()
    boundary = (a - c) ** 2
    assert out["distill"].item() == pytest.approx(distill.item(), rel=1e-5)
    assert out["align"].item() == pytest.approx(align.item(), rel=1e-5)
    assert out["boundary"].item() == pytest.approx(boundary, rel=1e-5)
    assert out["loss"].item() == pytest.approx((distill + 0.01 * align + 0.1 * boundary).item(), rel=1e-5)


def test_distill_teacher_steps_from_the_students_implied_state():
    """A teacher whose velocity depends on the state, dx/dt = a x (so x_t = x0 e^(a t)),
    and its exact one-step student v(x0, t) = x0 (e^(a t) - 1) / t: the teacher's step from
    the student's implied state x0 + t v lands where the student at s says, so the distill
    term is zero up to the midpoint step's error. A step from anywhere else (x0, say) or a
    student that ignores t is far off."""
    a = 1.3
    teacher = lambda x, c, t: a * x  # noqa: E731
    exact = lambda x, c, t: x * torch.expm1(a * t.view(-1, 1, 1, 1)) / t.view(-1, 1, 1, 1)  # noqa: E731
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    assert distill_loss(exact, teacher, x0, x0, t)["distill"].item() < 1e-6  # midpoint: 5e-8
    assert distill_loss(exact, teacher, x0, x0, t, teacher_solver="euler")["distill"].item() > 1e-5  # Euler: O(dt^2)
    ignores_t = lambda x, c, t: x * a  # noqa: E731
    assert distill_loss(ignores_t, teacher, x0, x0, t)["distill"].item() > 1e-3


def test_distill_gradient_paths():
    # distill gets gradient only through the s branch, align only through v_t.
    w = torch.zeros(3, requires_grad=True)  # one scalar per branch, selected by t
    def student(x, c, t):
        branch = torch.where(t == 0.01, 2, torch.where(t == 0.3, 0, 1))
        return w[branch].view(-1, 1, 1, 1).expand_as(x)
    x0 = torch.zeros(1, 1, 2, 2)
    out = distill_loss(student, const(1.0), x0, x0, torch.tensor([0.3]))
    (g_distill,) = torch.autograd.grad(out["distill"], w, retain_graph=True)
    (g_align,) = torch.autograd.grad(out["align"], w, retain_graph=True)
    (g_bc,) = torch.autograd.grad(out["boundary"], w)
    assert g_distill[0] == 0 and g_distill[1] != 0 and g_distill[2] == 0
    assert g_align[0] != 0 and g_align[1] == 0 and g_align[2] == 0
    assert g_bc[0] == 0 and g_bc[1] == 0 and g_bc[2] != 0


def test_distill_unknown_solver():
    with pytest.raises(ValueError, match="teacher_solver"):
        distill_loss(const(0), const(0), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([0.5]),
                     teacher_solver="rk4")
