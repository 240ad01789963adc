import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import oftsr
from oftsr.unet import GroupNorm32, UNet, count_parameters, reference_ops, upsample_conv3x3


@pytest.mark.parametrize("preset,count", [("ffhq", 93_567_366), ("div2k", 93_567_366), ("imagenet", 552_820_998),
                                          ("tiny", 3_163_686), ("compact", 3_707_302)])
def test_preset_parameter_counts(preset, count):
    with torch.device("meta"):
        unet = UNet(oftsr.PRESETS[preset])
    assert count_parameters(unet) == count


def test_names_shapes_order_match_authors_manifest(fixture_dir):
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    ours = [[n, list(p.shape)] for n, p in UNet(oftsr.PRESETS["tiny"]).named_parameters()]
    assert ours == manifest["parameters_in_order"]
    assert sum(p.numel() for p in UNet(oftsr.PRESETS["tiny"]).parameters()) == manifest["n_params"]


def test_reproduces_authors_outputs(fixture_dir):
    model = oftsr.load_model(fixture_dir / "official_format_ema.pth", sigma_p=0.2, role="teacher", scale=4)
    io = load_file(fixture_dir / "io.safetensors")
    with torch.no_grad():
        v6 = model.unet(torch.cat([io["x_t"], io["x_lr"]], 1), io["t"] * 999)
        v = model.velocity(io["x_t"], io["x_lr"], io["t"])
    assert (v6 - io["expected_v6"]).abs().max().item() < 1e-5
    assert (v - io["expected_v6"][:, :3]).abs().max().item() < 1e-5


@pytest.mark.parametrize("batch", [1, 2])  # one image folds the scale-shift into the norm; a batch does not
@pytest.mark.parametrize("channels_last", [False, True])
def test_default_ops_match_reference_ops(random_unet_weights, batch, channels_last):
    unet = UNet(oftsr.PRESETS["tiny"])
    unet.load_state_dict(random_unet_weights)
    x, t = torch.randn(batch, 6, 32, 64), torch.tensor([10.0, 900.0][:batch])
    with torch.no_grad():
        with reference_ops():  # ADM's einsum attention and op-by-op ResBlocks, NCHW
            legacy = unet(x, t)
        if channels_last:
            unet, x = unet.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        fast = unet(x, t)
    assert fast.abs().mean() > 1e-2  # attention contributes (weights are random, not zero-init)
    assert (fast - legacy).abs().max().item() < 1e-5  # tolerance: float32 reassociation only


def test_reference_ops_stay_in_their_own_thread(monkeypatch):
    """`reference_ops()` in one thread must not switch a model running in another thread
    (a ComfyUI server runs nodes off the main thread) to the slow path."""
    import threading

    from oftsr.unet import legacy_qkv_attention

    calls = []
    monkeypatch.setattr("oftsr.unet.legacy_qkv_attention", lambda *a: calls.append(1) or legacy_qkv_attention(*a))
    net = UNet(oftsr.PRESETS["tiny"]).eval()
    x, t = torch.randn(1, 6, 32, 32), torch.tensor([500.0])
    with reference_ops():
        worker = threading.Thread(target=lambda: net(x, t))
        worker.start()
        worker.join()
        assert calls == []  # the other thread kept the default attention
        net(x, t)
    assert len(calls) > 0  # this thread took the reference path


def test_default_ops_train_like_reference_ops(random_unet_weights):
    # With gradients on, nothing runs in place, and the gradients are ADM's.
    unet = UNet(oftsr.PRESETS["tiny"])
    unet.load_state_dict(random_unet_weights)
    x, t = torch.randn(2, 6, 16, 16), torch.tensor([10.0, 900.0])
    grads = []
    for reference in (True, False):
        unet.zero_grad()
        with reference_ops() if reference else contextlib.nullcontext():
            unet(x, t).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    assert grads[0].abs().max() > 1e-3
    assert (grads[0] - grads[1]).abs().max().item() < 1e-5 * grads[0].abs().max().item() + 1e-7


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_upsample_conv3x3_equals_upsample_then_conv(memory_format):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 7, generator=g).contiguous(memory_format=memory_format)
    w, b = torch.randn(4, 8, 3, 3, generator=g), torch.randn(4, generator=g)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    out = upsample_conv3x3(x, w, b)
    assert out.shape == (2, 4, 10, 14) and out.is_contiguous(memory_format=memory_format)
    # tolerance: float32 sums of up to 72 products of unit normals (|y| ~ 10), taps summed first
    assert (out - expected).abs().max().item() < 3e-5


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_outer_convs_with_padded_channels_equal_the_plain_convs(monkeypatch, memory_format):
    # The first and last convolutions (6 channels) zero-padded to 8 for tensor cores: the
    # same sums, the result the conv's own channels (a channels_last view when x is)
    from oftsr import unet as unet_module
    g = torch.Generator().manual_seed(0)
    for cin, cout in [(6, 32), (32, 6), (6, 6)]:
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        x = torch.randn(2, cin, 9, 7, generator=g).contiguous(memory_format=memory_format)
        with torch.no_grad():
            out = unet_module.conv3x3_padded_channels(conv, x, 8)
            assert out.shape == (2, cout, 9, 7)
            assert (out - conv(x)).abs().max().item() < 1e-5
    # the whole network with the padding on the CPU: the plain network's output
    model = oftsr.create_model("tiny", role="teacher", seed=0).eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised output conv
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.optimize(channels_last=memory_format == torch.channels_last)
    x, t = torch.rand(2, 6, 32, 32, generator=g) * 2 - 1, torch.tensor([300.0, 800.0])
    with torch.inference_mode():
        plain = model.unet(x, t)
        monkeypatch.setitem(unet_module.CONV_CHANNEL_MULTIPLE, "cpu", 8)
        calls = []
        padded_conv = unet_module.conv3x3_padded_channels
        monkeypatch.setattr(unet_module, "conv3x3_padded_channels", lambda *a: calls.append(1) or padded_conv(*a))
        padded = model.unet(x, t)
    assert len(calls) == 2  # the first conv and the last
    assert plain.shape == padded.shape == (2, 6, 32, 32) and plain.abs().max() > 0.1
    assert (padded - plain).abs().max().item() < 1e-5


def test_padded_first_conv_in_half_precision_carries_its_bias_in_the_padding(monkeypatch):
    # bf16 (or autocast): the padding channels are ones and the bias sits on a centre tap, so
    # the conv runs without a bias argument (torch.compile would split that off into an add
    # written over the whole output) and gives the conv's result to bf16 rounding, at the
    # image's border too; float32 keeps the bias argument.
    from oftsr import unet as unet_module
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 32, 3, padding=1)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(32, generator=g))  # large enough to be missed if dropped
    x = torch.randn(2, 6, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    bf16 = torch.nn.Conv2d(6, 32, 3, padding=1).to(torch.bfloat16)
    with torch.no_grad():
        bf16.load_state_dict(conv.state_dict())
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
        plain_bf16 = F.conv2d(x.bfloat16(), bf16.weight, bf16.bias, padding=1).float()
    biases = []
    conv2d = F.conv2d
    monkeypatch.setattr(unet_module.F, "conv2d", lambda x, w, b=None, **k: biases.append(b) or conv2d(x, w, b, **k))
    padded = unet_module.conv3x3_padded_channels
    with torch.no_grad():
        outs = {"bf16": padded(bf16, x.bfloat16(), 8).float()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs["autocast"] = padded(conv, x, 8).float()
        float32 = padded(conv, x, 8)
    assert biases[0] is None and biases[1] is None and biases[2] is not None
    for name, out in outs.items():
        assert out.shape == (2, 32, 9, 7), name
        # bf16 sums of 54 products (|y| up to about 8): off by its rounding, as the plain conv is
        assert (out - ref).abs().max().item() < 0.1, name
        assert (out - ref).abs().max().item() <= 2 * (plain_bf16 - ref).abs().max().item() + 1e-3, name
    assert (float32 - ref).abs().max().item() < 1e-5


def _padded_by_hand(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Bottom/right padding to a multiple by index lists: mirrored without the edge row
    where the image is large enough for it, else the edge repeated."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph < h and pw < w:
        rows, cols = [*range(h), *(h - 2 - i for i in range(ph))], [*range(w), *(w - 2 - i for i in range(pw))]
    else:
        rows, cols = [*range(h), *[h - 1] * ph], [*range(w), *[w - 1] * pw]
    return x[..., rows, :][..., cols]


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (33, 17), (64, 96)])
def test_velocity_any_size_pads_and_crops(student, h, w):
    x = torch.rand(2, 3, h, w) * 2 - 1
    v = student.velocity(x, x.flip(1), 500 / 999)
    assert v.shape == (2, 3, h, w) and v.dtype == torch.float32
    # the network on the input padded by hand, cropped back (64x96 is aligned: nothing padded)
    padded = _padded_by_hand(torch.cat([x, x.flip(1)], 1), student.config.size_multiple)
    assert padded.shape[-1] % student.config.size_multiple == 0 and padded.shape[-2] % student.config.size_multiple == 0
    with torch.no_grad():
        expected = student.unet(padded, torch.tensor([500.0, 500.0]))[:, :3, :h, :w]
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=0)


def test_velocity_crop_equals_unpadded_when_already_aligned(student):
    # On an aligned size nothing is padded: the velocity is the raw network output.
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        raw = student.unet(torch.cat([x, x], 1), torch.tensor([500.0]))[:, :3]
    assert torch.equal(student.velocity(x, x, 500 / 999), raw)


def test_time_enters_as_t_times_999(student):
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert not torch.allclose(student.velocity(x, x, 0.1), student.velocity(x, x, 0.9))
    assert torch.equal(student.velocity(x, x, torch.tensor([0.3])), student.velocity(x, x, 0.3))


# ----------------------------------------------------------------------------- fast path drift

def _strong_model(random_unet_weights):
    from conftest import make_model

    return make_model(random_unet_weights)


def test_channels_last_matches_plain(random_unet_weights):
    model = _strong_model(random_unet_weights)
    x = torch.rand(2, 3, 40, 56) * 2 - 1
    with torch.inference_mode():
        plain = model.velocity(x, x.flip(1), 0.3)
        fast = model.optimize(channels_last=True).velocity(x, x.flip(1), 0.3)
    assert (fast - plain).abs().max().item() < 1e-5  # tolerance: float32 reassociation only


def test_optimize_picks_channels_last_on_cpu(random_unet_weights):
    model = _strong_model(random_unet_weights)
    assert model.optimize().channels_last is True  # NCHW is chosen only for CUDA models
    assert model.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.optimize(channels_last=False).channels_last is False


def test_bf16_autocast_drift_is_small(random_unet_weights):
    model = _strong_model(random_unet_weights)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        plain = model.velocity(x, x, 0.7)
        fast = model.optimize(channels_last=True, autocast=torch.bfloat16).velocity(x, x, 0.7)
    assert fast.dtype == torch.float32
    # tolerance: bf16 keeps 8 bits of mantissa; relative drift of the output under 3%
    assert (fast - plain).abs().max().item() < 0.03 * plain.abs().max().item()
    assert model.unet.input_blocks[0][0].weight.dtype == torch.float32  # weights untouched


def test_optimize_keeps_state_dict_names(random_unet_weights, tmp_path):
    model = _strong_model(random_unet_weights).optimize(channels_last=True)
    model.__dict__["_compiled"] = object()  # stands for a compiled module: must stay out of the state dict
    assert list(model.unet.state_dict()) == list(random_unet_weights)
    assert all(not k.startswith("_compiled") for k in model.state_dict())
    model.__dict__["_compiled"] = None


def test_optimize_rejects_an_unknown_compile_mode(random_unet_weights):
    model = _strong_model(random_unet_weights)
    with pytest.raises(ValueError, match="reduce-overhead"):
        model.optimize(compile="fastest")
    assert model.__dict__["_compiled"] is None


def test_velocity_returns_a_copy_not_the_networks_output_buffer(random_unet_weights):
    # CUDA-graph replays reuse the network's output memory: the result must not alias it.
    model = _strong_model(random_unet_weights)
    outputs = []
    model.unet.register_forward_hook(lambda module, args, out: outputs.append(out))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        v = model.velocity(x, x, 0.5)
    assert v.untyped_storage().data_ptr() != outputs[0].untyped_storage().data_ptr()


@pytest.mark.skipif(not __import__("os").environ.get("OFTSR_TEST_COMPILE"),
                    reason="torch.compile takes minutes on a small CPU; set OFTSR_TEST_COMPILE=1 to run")
def test_torch_compile_matches_eager(random_unet_weights):
    model = _strong_model(random_unet_weights)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        plain = model.velocity(x, x, 0.5)
        fast = model.optimize(channels_last=False, compile=True).velocity(x, x, 0.5)
    assert (fast - plain).abs().max().item() < 1e-5  # tolerance: float32 kernel fusion only


def test_the_whole_unet_traces_as_one_graph(monkeypatch):
    # A graph break inside every block (torch < 2.14 could not trace the reference-ops
    # switch, a context variable) made torch.compile recompile per resolution, then run
    # those blocks eagerly. The switch is made to break the graph the way old torch did,
    # so that this fails on any torch if compiled code reads it.
    class BreaksTheGraph:
        def get(self) -> bool:
            torch._dynamo.graph_break()
            return False

    monkeypatch.setattr(oftsr.unet, "_REFERENCE_OPS", BreaksTheGraph())
    unet = UNet(oftsr.PRESETS["tiny"]).eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(unet)(torch.randn(1, 6, 64, 64), torch.full((1,), 500.0))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()


def test_half_precision_group_norm_keeps_float32_statistics():
    from oftsr.unet import GroupNorm32

    norm = GroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    # a mean far above the spread: statistics accumulated in bf16 would lose the spread
    x = (torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 100).bfloat16()
    reference = torch.nn.functional.group_norm(x.float(), 32, norm.weight, norm.bias, norm.eps).detach()
    with torch.inference_mode():
        fast = norm(x)  # the half-precision inference path
    assert fast.dtype == torch.bfloat16
    # tolerance: bf16 rounding of the output (|y| < 4, spacing 2^-6) and of weight and bias
    assert (fast.float() - reference).abs().max().item() < 0.03
    trained = norm(x.clone().requires_grad_(True))  # the training path: float32 inside
    trained.float().sum().backward()
    assert trained.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
    assert (trained.float() - reference).abs().max().item() < 0.02


def test_gradient_checkpointing_gives_the_same_gradients_and_frees_activations(monkeypatch):
    """Recomputing each block in the backward pass (dropout included: the same masks) gives
    the gradients of the plain pass; it keeps fewer tensors for backward; it is off outside
    training and without gradients."""
    torch.manual_seed(0)
    net = UNet(oftsr.PRESETS["tiny"], dropout=0.1).train()
    x, t = torch.randn(2, 6, 32, 32), torch.tensor([100.0, 900.0])

    def grads_and_saved(checkpointing: bool) -> tuple[list[torch.Tensor], int]:
        net.gradient_checkpointing = checkpointing
        net.zero_grad()
        saved = []
        torch.manual_seed(1)  # the dropout masks
        with torch.autograd.graph.saved_tensors_hooks(lambda a: saved.append(a.numel()) or a, lambda a: a):
            out = net(x, t)
        out.square().mean().backward()
        return [p.grad.clone() for p in net.parameters()], sum(saved)

    plain, plain_saved = grads_and_saved(False)
    checkpointed, checkpointed_saved = grads_and_saved(True)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, checkpointed, strict=True))
    assert checkpointed_saved < 0.25 * plain_saved  # block inputs only, not every activation
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: pytest.fail("checkpointed"))
    net.gradient_checkpointing = True
    net.eval()(x, t)  # evaluation (validation, EMA copies): the plain path
    with torch.no_grad():
        net.train()(x, t)


def test_group_norm_of_x_plus_a_bias_left_out():
    # `x_bias`: the norm of x + b, for a conv that left its bias out (PyTorch's ops here)
    torch.manual_seed(0)
    norm = GroupNorm32(32, 64)
    x, b = torch.randn(2, 64, 5, 6), torch.randn(64) * 3
    w, shift = torch.randn(64), torch.randn(64)
    with torch.no_grad():
        out = norm.normalize(x, w, shift, silu=True, x_bias=b)
        ref = F.silu(F.group_norm(x + b[:, None, None], 32, w, shift))
    assert (out - ref).abs().max() < 1e-5 and ref.abs().max() > 1
