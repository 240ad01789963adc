"""FlowSR and FluxSR objectives: hand-computed losses, gradient paths, the pair
generator, tiny overfit runs."""

import json
import math
import re
import sys

import pytest
import torch

import oftsr
from oftsr.flow import T_EPS, endpoint_estimate, noise_augment, time_grid
from oftsr.sampling import sample_midpoint
from oftsr.training.data import SRDataset
from oftsr.training.objectives import (PatchDiscriminator, attention_diversity, capture_attention,
                                       discriminator_hinge_loss, ema_update_, fast_slow_times, flowsr_loss,
                                       fluxsr_loss, generator_hinge_loss, one_step, tv_lpips, tv_map)
from oftsr.training.pairs import PairDataset, make_pairs, pair_inputs, write_manifest

from conftest import make_model


def const(value):
    return lambda x, c, t: torch.full_like(x, value)


# ----------------------------------------------------------------------------- FlowSR

def test_endpoint_estimate_hand_value_and_boundary():
    x, v = torch.full((2, 1, 1, 1), 0.5), torch.full((2, 1, 1, 1), 2.0)
    t = torch.tensor([0.25, 1.0])
    assert endpoint_estimate(x, v, t).flatten().tolist() == pytest.approx([0.5 + 0.75 * 2, 0.5])  # f(x, 1) = x


def test_fast_slow_times_are_adjacent_grid_points():
    g = torch.Generator().manual_seed(0)
    fast_grid = time_grid(4).float()
    t_a, t_b = fast_slow_times(400, fast_steps=4, slow_steps=1000, p_fast=1.0, generator=g)
    assert torch.allclose(t_b - t_a, torch.full_like(t_a, 0.999 / 4))
    assert set(t_a.tolist()) == set(fast_grid[:-1].tolist())  # every step of the 4-step grid drawn, none past 1
    t_a, t_b = fast_slow_times(400, fast_steps=4, slow_steps=1000, p_fast=0.0, generator=g)
    assert torch.allclose(t_b - t_a, torch.full_like(t_a, 0.999 / 1000), atol=1e-6)
    assert t_a.min() >= T_EPS and t_b.max() <= 1.0 + 1e-6
    t_a, t_b = fast_slow_times(4000, fast_steps=4, slow_steps=1000, p_fast=0.3, generator=g)
    assert ((t_b - t_a) > 0.1).float().mean().item() == pytest.approx(0.3, abs=0.03)
    with pytest.raises(ValueError, match="p_fast"):
        fast_slow_times(2, p_fast=1.5)


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_flowsr_constant_teacher_known_answer(solver):
    # Teacher velocity c everywhere and x1 = x0 + c: the LR-HR path is the teacher's own
    # straight trajectory, so x_b stays on it. Student velocity a, target velocity a_T:
    #   f_a = x0 + t_a c + (1 - t_a) a,  f_T = x0 + t_b c + (1 - t_b) a_T,  f_b = x0 + t_b c + (1 - t_b) a
    c, a, a_target = 0.7, 0.2, 0.5
    x0 = torch.randn(3, 3, 4, 4)
    x1 = x0 + c
    t_a, t_b = torch.tensor([0.001, 0.3, 0.75]), torch.tensor([0.25, 0.301, 1.0])
    exact = flowsr_loss(const(c), const(c), const(c), x0, x1, x0, t_a, t_b, teacher_solver=solver)
    assert exact["consistency"].item() == pytest.approx(0, abs=1e-12) and exact["hr"].item() == pytest.approx(0, abs=1e-12)
    out = flowsr_loss(const(a), const(a_target), const(c), x0, x1, x0, t_a, t_b, teacher_solver=solver, lambda_hr=0.5)
    consistency = ((t_a * c + (1 - t_a) * a - t_b * c - (1 - t_b) * a_target) ** 2).mean()
    hr = ((t_b * c + (1 - t_b) * a - c) ** 2).mean()
    assert out["consistency"].item() == pytest.approx(consistency.item(), rel=1e-5)
    assert out["hr"].item() == pytest.approx(hr.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((consistency + 0.5 * hr).item(), rel=1e-5)
    l1 = flowsr_loss(const(a), const(a_target), const(c), x0, x1, x0, t_a, t_b, distance="l1")
    assert l1["hr"].item() == pytest.approx((t_b * c + (1 - t_b) * a - c).abs().mean().item(), rel=1e-5)


def test_flowsr_linear_teacher_euler_step():
    # v(x) = -x: one Euler step gives x_b = (1 - dt) x_a; with zero student and target,
    # f_a = x_a, f_T = x_b, so consistency = mean((dt x_a)^2) and hr = mean((x_b - x1)^2).
    x0, x1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t_a, t_b = torch.tensor([0.2, 0.5]), torch.tensor([0.45, 0.75])
    out = flowsr_loss(const(0.0), const(0.0), lambda x, c, t: -x, x0, x1, x0, t_a, t_b, teacher_solver="euler")
    x_a = (1 - t_a.view(-1, 1, 1, 1)) * x0 + t_a.view(-1, 1, 1, 1) * x1
    x_b = 0.75 * x_a
    assert out["consistency"].item() == pytest.approx(((0.25 * x_a) ** 2).mean().item(), rel=1e-5)
    assert out["hr"].item() == pytest.approx(((x_b - x1) ** 2).mean().item(), rel=1e-5)


def test_flowsr_gradient_paths():
    # consistency: gradient only through the student at t_a; hr: only at t_b; never into
    # the target (EMA copy) or the teacher.
    w = torch.zeros(2, requires_grad=True)  # student: w[0] at t_a, w[1] at t_b
    target_w = torch.zeros(1, requires_grad=True)
    teacher_w = torch.ones(1, requires_grad=True)
    t_a, t_b = torch.tensor([0.3]), torch.tensor([0.55])

    def student(x, c, t):
        return torch.where(t == 0.3, w[0], w[1]).view(-1, 1, 1, 1).expand_as(x)

    target = lambda x, c, t: (target_w * 0.5).expand_as(x)  # noqa: E731
    teacher = lambda x, c, t: teacher_w.expand_as(x)  # noqa: E731
    x0, x1 = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    out = flowsr_loss(student, target, teacher, x0, x1, x0, t_a, t_b)
    assert out["loss"].grad_fn is not None
    g_c = torch.autograd.grad(out["consistency"], [w, target_w, teacher_w], retain_graph=True, allow_unused=True)
    g_h = torch.autograd.grad(out["hr"], [w, target_w, teacher_w], allow_unused=True)
    assert g_c[0][0] != 0 and g_c[0][1] == 0 and g_c[1] is None and g_c[2] is None
    assert g_h[0][0] == 0 and g_h[0][1] != 0 and g_h[1] is None and g_h[2] is None


def test_ema_update_and_hinge_losses():
    a, b = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(a.weight, 1.0)
    torch.nn.init.constant_(b.weight, 3.0)
    ema_update_(a, b, 0.75)
    assert a.weight.item() == pytest.approx(1.5)
    ema_update_(a, b, 0.0)  # decay 0: the target is the online model itself
    assert a.weight.item() == pytest.approx(3.0)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_hinge_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert generator_hinge_loss(fake).item() == pytest.approx(1.0)
    disc = PatchDiscriminator(width=8)
    assert disc(torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64)).shape == (2, 1, 8, 8)


# ----------------------------------------------------------------------------- FluxSR

def test_tv_map_hand_value():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.0]]]])
    # |dh| + |dw| = [[0.5 + 1, 1 + 0], [0 + 0.5, 0]], then / 2 - 1 onto [-1, 1]
    assert tv_map(x).flatten().tolist() == pytest.approx([-0.25, -0.5, -0.75, -1.0])
    assert tv_map(torch.zeros(1, 3, 4, 4)).eq(-1).all()
    checker = (torch.arange(4).view(1, 4) + torch.arange(4).view(4, 1)) % 2 * 2 - 1.0  # +-1 checkerboard
    assert tv_map(checker[None, None])[0, 0, :3, :3].eq(1).all()  # the largest gradient maps to 1


def test_tv_lpips_with_a_known_distance():
    l1 = lambda x, y: (x - y).abs().flatten(1).mean(1)  # noqa: E731  (a stand-in LPIPS, per image)
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.0]]]])
    y = torch.zeros_like(x)
    # LPIPS part: mean |x| = 0.375; TV part: mean |tv(x) - (-1)| = mean([0.75, 0.5, 0.25, 0]) = 0.375
    assert tv_lpips(l1, x, y, gamma=2.0).item() == pytest.approx(0.375 + 2 * 0.375)


def test_attention_diversity_hand_values():
    same = torch.ones(1, 2, 2, 2)  # every token (1, 1): similarity 1
    axes = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 2, 1)  # tokens (1,0), (0,1); mean (.5,.5)
    assert attention_diversity([same]).item() == pytest.approx(1.0)
    assert attention_diversity([axes]).item() == pytest.approx(1 / math.sqrt(2))
    assert attention_diversity([same, axes]).item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    with pytest.raises(ValueError, match="no attention outputs"):
        attention_diversity([])


def test_capture_attention_gives_gradients_to_the_attention_layers(random_unet_weights):
    model = make_model(random_unet_weights).requires_grad_(True)
    n_blocks = sum(isinstance(m, oftsr.unet.AttentionBlock) for m in model.modules())
    x = torch.randn(1, 3, 16, 16)
    with capture_attention(model.unet) as outs:
        model.velocity(x, x, 0.5)
    assert len(outs) == n_blocks == 4  # tiny preset: 1 input, 1 middle and 2 output blocks
    # The attention branch, without the residual: the middle block's own computation.
    block = model.unet.middle_block[1]
    seen = []
    handle = block.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0], out)))
    with capture_attention(model.unet) as branch:
        model.velocity(x, x, 0.5)
    handle.remove()
    (inp, out), = seen
    assert torch.allclose(branch[1], out - inp) and branch[1].abs().max() > 1e-3
    zero = oftsr.unet.AttentionBlock(inp.shape[1], inp.shape[1])  # ADM zero-initialises proj_out
    with capture_attention(zero) as none:
        zero(inp)
    assert none[0].abs().max() == 0
    with capture_attention(model.unet) as after:
        pass
    model.velocity(x, x, 0.5)
    assert after == []  # hooks removed on exit
    adl = attention_diversity(outs)
    adl.backward()
    assert 0 < adl.item() <= 1
    assert model.unet.middle_block[1].qkv.weight.grad.abs().sum() > 0
    assert model.unet.out[2].weight.grad is None  # layers after the last attention block: untouched


def test_fluxsr_loss_hand_value_and_gradients(random_unet_weights):
    x0, lr = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    end = torch.full((2, 3, 8, 8), 0.5)
    out = fluxsr_loss(const(0.25), x0, lr, end, None, lambda_lpips=0.0)
    assert out["mse"].item() == pytest.approx((0.5 - 0.999 * 0.25) ** 2)  # one step at T_EPS
    assert out["loss"].item() == out["mse"].item() and out["adl"].item() == 0

    model = make_model(random_unet_weights).requires_grad_(True)
    judge = torch.nn.Conv2d(3, 1, 1)  # a stand-in LPIPS network, frozen as the real one is
    judge.requires_grad_(False)
    lp = lambda a, b: (judge(a) - judge(b)).abs().flatten(1).mean(1)  # noqa: E731
    x0 = torch.randn(2, 3, 16, 16)
    out = fluxsr_loss(model, x0, x0, torch.randn(2, 3, 16, 16), lp, network=model.unet, lambda_lpips=1.0,
                      gamma=0.5, lambda_adl=0.1)
    assert out["loss"].item() == pytest.approx((out["mse"] + out["tv_lpips"] + 0.1 * out["adl"]).item(), rel=1e-6)
    assert 0 < out["adl"].item() <= 1 and out["tv_lpips"].item() > 0
    out["loss"].backward()
    assert model.unet.out[2].weight.grad.abs().sum() > 0 and judge.weight.grad is None
    with pytest.raises(ValueError, match="needs the network"):
        fluxsr_loss(model, x0, x0, x0, None, lambda_lpips=0.0, lambda_adl=0.1)


# ----------------------------------------------------------------------------- pairs

SETTINGS = {"teacher": "t", "num_pairs": 5, "shard_size": 2}


def _make(teacher, data, out, seed, **kw):
    write_manifest(out, {**SETTINGS, "seed": seed})
    return make_pairs(teacher, data, out, num_pairs=5, shard_size=2, seed=seed, steps=2, solver="midpoint",
                      batch_size=2, log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def pair_setup(tmp_path_factory, random_unet_weights):
    from PIL import Image
    import numpy as np

    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    teacher = make_model(random_unet_weights, role="teacher")
    return teacher, SRDataset(folder, resolution=16, seed=0), tmp_path_factory.mktemp("pairs")


def test_pairs_deterministic_per_seed_resumable_and_teacher_made(pair_setup):
    teacher, data, root = pair_setup
    a, b, c = root / "a", root / "b", root / "c"
    assert _make(teacher, data, a, seed=1) == 3  # 5 pairs in shards of 2
    # b: "interrupted" after its first shard (and a temporary file left behind), then resumed
    assert _make(teacher, data, b, seed=1, shards=lambda i: i == 0) == 1
    (b / ".shard-00001.safetensors.x.tmp").write_bytes(b"half")
    with pytest.raises(ValueError, match="incomplete: 2 of 3 shards missing"):
        PairDataset(b)
    assert _make(teacher, data, b, seed=1) == 2  # only the missing shards
    _make(teacher, data, c, seed=2)
    da, db, dc = PairDataset(a), PairDataset(b), PairDataset(c)
    assert len(da) == 5 and da[4]["noise"].shape == (3, 16, 16)
    for i in range(5):
        for k in ("noise", "lr", "target"):
            assert torch.equal(da[i][k], db[i][k])
        assert not torch.equal(da[i]["noise"], dc[i]["noise"])
    assert torch.equal(da[3]["lr"], dc[3]["lr"])  # the data set's crops follow its own seed, the noise ours
    # pair 3 is item 0 of epoch 1 of the 3-image data set; the target is the teacher's sample
    noise, lr = pair_inputs(data, 1, 3)
    assert torch.equal(da[3]["noise"], noise) and torch.equal(da[3]["lr"], lr)
    x0 = noise_augment(lr[None], teacher.sigma_p, noise[None])
    with torch.no_grad():
        expected = sample_midpoint(lambda x, t: teacher.velocity(x, lr[None], t), x0, time_grid(2))
    assert torch.allclose(da[3]["target"], expected[0], atol=1e-5)
    assert not torch.allclose(da[3]["target"], x0[0], atol=1e-2)
    with pytest.raises(ValueError, match="other settings"):
        write_manifest(a, {**SETTINGS, "seed": 3})
    assert json.loads((a / "pairs.json").read_text())["seed"] == 1
    with pytest.raises(FileNotFoundError, match="not a pairs folder"):
        PairDataset(root)


# ----------------------------------------------------------------------------- tiny overfit runs

def _student(weights):
    return make_model(weights).train().requires_grad_(True)


def test_flowsr_overfit_reduces_the_loss(random_unet_weights):
    teacher, target = make_model(random_unet_weights, role="teacher"), make_model(random_unet_weights)
    student = _student(random_unet_weights)
    g = torch.Generator().manual_seed(0)
    x1, x_lr = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    x0 = noise_augment(x_lr, 0.2, torch.randn(2, 3, 8, 8, generator=g))
    t_a, t_b = torch.tensor([0.001, 0.5]), torch.tensor([0.25075, 0.50099])
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = flowsr_loss(student, target, teacher, x0, x1, x_lr, t_a, t_b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        ema_update_(target, student, 0.5)
        losses.append(out["loss"].item())
    assert losses[-1] < 0.6 * losses[0], losses[::5]


def test_fluxsr_overfit_reduces_the_loss(random_unet_weights):
    student = _student(random_unet_weights)
    g = torch.Generator().manual_seed(0)
    x0, lr = torch.randn(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    end = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    judge = torch.nn.Conv2d(3, 4, 3).requires_grad_(False)
    lp = lambda a, b: (judge(a) - judge(b)).pow(2).flatten(1).mean(1)  # noqa: E731
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = fluxsr_loss(student, x0, lr, end, lp, network=student.unet, lambda_adl=0.01)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.6 * losses[0], losses[::5]
    with torch.no_grad():
        assert ((one_step(student, x0, lr) - end) ** 2).mean() < out["mse"] * 1.5


# ----------------------------------------------------------------------------- the scripts, two processes

from test_trainer import COMMON, _losses, _run, train_dir  # noqa: E402,F401  (train_dir is a fixture)


def test_two_process_runs_of_flowsr_and_fluxsr(train_dir, tmp_path, random_unet_weights):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    teacher = tmp_path / "teacher.safetensors"
    oftsr.save_model(make_model(random_unet_weights, role="teacher"), teacher)
    pairs = tmp_path / "pairs"
    res = _run(["trainer/make_pairs.py", "--teacher", teacher, "--train_data_dir", train_dir, "--output_dir", pairs,
                "--num_pairs", "8", "--shard_size", "2", "--resolution", "32", "--steps", "2"], launcher)
    assert len(PairDataset(pairs)) == 8
    log = res.stdout + res.stderr  # the two processes wrote two shards each, each shard once
    written = sorted(re.findall(r"process (\d): wrote (shard-\d+)", log))
    assert [p for p, _ in written] == ["0", "0", "1", "1"] and len({s for _, s in written}) == 4, log[-3000:]
    assert "4 shard(s) written now" in log  # counted over both processes
    from oftsr.checkpoint import network_digest

    assert PairDataset(pairs).manifest["teacher_digest"] == network_digest(oftsr.load_model(teacher))
    runs = {"flowsr": ["--train_data_dir", train_dir, "--lambda_adv", "0.1", "--disc_width", "8"],
            "fluxsr": ["--train_data_dir", pairs, "--lambda_adl", "0.1"]}
    for objective, extra in runs.items():
        out = tmp_path / objective
        _run(["trainer/distill.py", "--objective", objective, "--teacher", teacher, "--output_dir", out, *COMMON,
              *extra, "--max_train_steps", "2", "--checkpointing_steps", "2"], launcher)
        student = oftsr.load_model(out / "student.safetensors")
        assert student.objective == objective and student.ignores_t and student.step == 2
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
        terms = {"flowsr": ("consistency", "hr", "adv", "disc"), "fluxsr": ("mse", "tv_lpips", "adl")}[objective]
        assert all(k in rows[-1] for k in terms) and rows[-1]["loss"] > 0
    # the discriminator and the consistency target are checkpointed with the run
    ckpt = tmp_path / "flowsr" / "checkpoint-2"
    assert (ckpt / "model_1.safetensors").is_file() and (ckpt / "optimizer_1.bin").is_file()
    assert (ckpt / "custom_checkpoint_2.pkl").is_file()


# ----------------------------------------------------------------------------- in the product

def test_objective_metadata_round_trip(tmp_path, random_unet_weights):
    for objective in ("oftsr", "flowsr", "fluxsr"):
        model = make_model(random_unet_weights)
        model.objective = objective
        oftsr.save_model(model, tmp_path / f"{objective}.safetensors")
        assert oftsr.read_metadata(tmp_path / f"{objective}.safetensors")["objective"] == objective
        loaded = oftsr.load_model(tmp_path / f"{objective}.safetensors")
        assert loaded.objective == objective and loaded.ignores_t == (objective != "oftsr")
    teacher = make_model(random_unet_weights, role="teacher")
    assert teacher.objective == "oftsr" and not teacher.ignores_t
    with pytest.raises(ValueError, match="objective must be one of"):
        oftsr.OFTSRModel(oftsr.UNet(oftsr.PRESETS["tiny"]), sigma_p=0.2, role="student", scale=4, objective="gan")
    # a file written before objectives existed loads as OFTSR; an unknown objective is refused
    from safetensors.torch import load_file, save_file
    from oftsr.checkpoint import model_metadata
    meta = model_metadata(make_model(random_unet_weights))
    tensors = load_file(tmp_path / "oftsr.safetensors")
    save_file(tensors, tmp_path / "old.safetensors", metadata={k: v for k, v in meta.items() if k != "objective"})
    assert oftsr.load_model(tmp_path / "old.safetensors").objective == "oftsr"
    save_file(tensors, tmp_path / "new.safetensors", metadata={**meta, "objective": "sd-turbo"})
    with pytest.raises(oftsr.CheckpointError, match="new.safetensors: objective must be one of .* newer oftsr"):
        oftsr.load_model(tmp_path / "new.safetensors")
    for key, value in (("role", "both"), ("degradation", "jpeg")):  # each refusal names the file
        save_file(tensors, tmp_path / "odd.safetensors", metadata={**meta, key: value})
        with pytest.raises(oftsr.CheckpointError, match=f"odd.safetensors: {key} must be one of .*got '{value}'"):
            oftsr.load_model(tmp_path / "odd.safetensors")


@pytest.fixture
def fixed_point_files(tmp_path, random_unet_weights):
    """The same tiny weights saved as an OFTSR and as a FlowSR student (t visibly matters)."""
    weights = {k: v * 10 if k.startswith("time_embed") or "emb_layers" in k else v for k, v in random_unet_weights.items()}
    files = {}
    for objective in ("oftsr", "flowsr"):
        model = make_model(weights)
        model.objective = objective
        files[objective] = tmp_path / f"tiny-{objective}.safetensors"
        oftsr.save_model(model, files[objective])
    return files


def test_fixed_point_student_ignores_t(fixed_point_files):
    img = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    flow, ours = (oftsr.load_model(fixed_point_files[k]) for k in ("flowsr", "oftsr"))
    at = {t: oftsr.upscale(flow, img, t=t, seed=3) for t in (0.0, 1.0)}
    assert torch.equal(at[0.0], at[1.0])
    assert torch.allclose(at[1.0], oftsr.upscale(ours, img, t=T_EPS, seed=3), atol=1e-6)  # x1 = f(x0, T_EPS)
    assert not torch.allclose(oftsr.upscale(ours, img, t=0.0, seed=3), oftsr.upscale(ours, img, t=1.0, seed=3))
    with pytest.raises(ValueError, match="t must be in"):
        oftsr.upscale(flow, img, t=2.0)


def test_cli_warns_once_and_info_shows_the_objective(fixed_point_files, tmp_path, capsys):
    from PIL import Image
    from oftsr.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(folder / f"{i}.png")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(fixed_point_files["flowsr"]),
                 "--t", "0.3", "--tile", "0", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: this student was distilled with flowsr") == 1 and "ignores --t" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    main(["upscale", str(folder), "-o", str(tmp_path / "out2"), "--model", str(fixed_point_files["oftsr"]), "-q",
          "--tile", "0"])
    assert "warning" not in capsys.readouterr().err
    assert main(["info", str(fixed_point_files["flowsr"])]) == 0
    assert json.loads(capsys.readouterr().out)["objective"] == "flowsr"


from test_nodes import comfy, load_pack, model_dir, pack  # noqa: E402,F401  (fixtures)
from test_nodes import image as comfy_image, load as load_node_model, run as run_node  # noqa: E402


def test_nodes_load_all_objectives_warn_once_and_sweep_refuses(pack, model_dir, fixed_point_files, caplog):
    import shutil

    for path in fixed_point_files.values():
        shutil.copy(path, model_dir / path.name)
    flow = load_node_model(pack, "tiny-flowsr.safetensors")
    assert flow.objective == "flowsr" and load_node_model(pack, "tiny-oftsr.safetensors").objective == "oftsr"
    img = comfy_image()
    with caplog.at_level("WARNING"):
        a = run_node(pack, "OFTSRUpscale", model=flow, image=img, t=0.0, seed=1, tile=0, overlap=0)
        b = run_node(pack, "OFTSRUpscale", model=flow, image=img, t=1.0, seed=1, tile=0, overlap=0)
    assert torch.equal(a, b)
    assert [r.getMessage().count("ignores t") for r in caplog.records if "distilled with flowsr" in r.getMessage()] == [1]
    with pytest.raises(ValueError, match="fixed-point map .* Use OFTSR Upscale"):
        run_node(pack, "OFTSRTSweep", model=flow, image=img, t_values="0, 1", seed=0, tile=0, overlap=0)


def test_flowsr_resume_matches_an_uninterrupted_run(train_dir, tmp_path, random_unet_weights):
    # the consistency target and the discriminator come back with the rest of the state
    teacher = tmp_path / "teacher.safetensors"
    oftsr.save_model(make_model(random_unet_weights, role="teacher"), teacher)
    base = ["trainer/distill.py", "--objective", "flowsr", "--teacher", teacher, "--train_data_dir", train_dir, *COMMON,
            "--checkpointing_steps", "1", "--lambda_adv", "0.1", "--disc_width", "8", "--seed", "2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run([*base, "--output_dir", full, "--max_train_steps", "2"])
    _run([*base, "--output_dir", cut, "--max_train_steps", "1"])
    _run([*base, "--output_dir", cut, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])
    a, b = _losses(full), _losses(cut)
    assert b[2] == pytest.approx(a[2], rel=1e-5) and a[2] != a[1]
    assert _losses(cut, "disc")[2] == pytest.approx(_losses(full, "disc")[2], rel=1e-5)
    sa, sb = oftsr.load_model(full / "student.safetensors"), oftsr.load_model(cut / "student.safetensors")
    assert all(torch.allclose(pa, pb, atol=1e-6) for pa, pb in zip(sa.parameters(), sb.parameters()))
    # with accumulation the discriminator steps with the student, once per step (as documented)
    _run([*base, "--output_dir", tmp_path / "acc", "--max_train_steps", "1", "--gradient_accumulation_steps", "2"])
    for name in ("optimizer.bin", "optimizer_1.bin"):  # the student's, the discriminator's
        state = torch.load(tmp_path / "acc" / "checkpoint-1" / name, weights_only=True)["state"]
        assert {int(s["step"]) for s in state.values()} == {1}, name


def test_the_discriminator_steps_on_every_micro_batch_of_an_accumulated_step(monkeypatch):
    """With --gradient_accumulation_steps 2 the discriminator's one step follows the mean
    gradient of both micro-batches (zeroing before the backward kept only the last's)."""
    import copy
    from pathlib import Path

    from accelerate import Accelerator

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "trainer"))
    from distill import discriminator_step

    class Critic(torch.nn.Module):  # (image, LR condition) -> logits, as PatchDiscriminator; no spectral norm state
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(6, 1, 3, padding=1)

        def forward(self, x, cond):
            return self.conv(torch.cat([x, cond], 1))

    torch.manual_seed(0)
    disc = Critic()
    reference = copy.deepcopy(disc)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    student = torch.nn.Linear(1, 1)
    student, disc, opt = accelerator.prepare(student, disc, torch.optim.SGD(disc.parameters(), lr=1.0))
    batches = [tuple(torch.rand(2, 3, 8, 8) for _ in range(3)) for _ in range(2)]
    no_sync, unsynced = accelerator.no_sync, []
    monkeypatch.setattr(accelerator, "no_sync", lambda model: unsynced.append(model is disc) or no_sync(model))
    for hr, estimate, x_lr in batches:
        with accelerator.accumulate(student):
            loss = discriminator_step(accelerator, disc, opt, hr, estimate, x_lr)
    assert loss.requires_grad is False
    assert unsynced.count(True) == 1  # processes sum the discriminator's gradients once, at the last micro-batch
    mean = sum(discriminator_hinge_loss(*reference(torch.cat([hr, est]), x_lr.repeat(2, 1, 1, 1)).chunk(2))
               for hr, est, x_lr in batches) / 2
    mean.backward()
    assert reference.conv.weight.grad.abs().max() > 1e-3
    for moved, start in zip(accelerator.unwrap_model(disc).parameters(), reference.parameters()):
        assert torch.allclose(moved, start - start.grad, atol=1e-6)  # SGD at lr 1: one step down the mean gradient
        assert moved.grad is None  # zeroed after its step
