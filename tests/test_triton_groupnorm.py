"""The channels_last Triton GroupNorm, checked without a GPU: Triton's interpreter
(TRITON_INTERPRET=1, read when the kernels are defined) runs the same kernels on CPU
tensors, so each check runs in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import oftsr
from oftsr import triton_groupnorm
from oftsr.unet import ResBlock

triton = pytest.importorskip("triton", reason="the Triton GroupNorm needs the `triton` package")
TINY = oftsr.create_model("tiny", role="teacher", seed=0)


# The start of the whole-network checks: the tiny network with random weights (no
# zero-initialised branches) in channels_last, and its inputs x and t.
_TINY_NETWORK = """
        import json, torch
        import oftsr
        from oftsr import triton_groupnorm, unet
        model = oftsr.create_model("tiny", role="teacher", seed=0).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        model.optimize(channels_last=True)
        x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        t = torch.tensor([0.3, 0.8])
"""
# ... and the kernels forced on, as the interpreter's tensors are on the CPU
_FORCED = """
        triton_groupnorm.available = lambda x: (x.is_contiguous(memory_format=torch.channels_last)
                                                and not torch.is_grad_enabled())
"""


def _interpret(code: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernel_matches_group_norm_with_affine_scale_shift_and_silu():
    result = _interpret("""
        import json, torch, torch.nn.functional as F
        from oftsr.triton_groupnorm import group_norm_nhwc
        torch.manual_seed(0)
        errors = {}
        # odd sizes (masks), several chunks of the statistics pass (40*33 > 1024 pixels),
        # more channels than one block, a mean far from 0
        for n, c, h, w in [(2, 64, 8, 8), (1, 96, 5, 7), (2, 160, 40, 33)]:
            x = (torch.randn(n, c, h, w) * 2 + 3).contiguous(memory_format=torch.channels_last)
            weight, bias = torch.randn(c), torch.randn(c)
            gain, offset = torch.randn(n, c), torch.randn(n, c)
            key = f"{n}x{c}x{h}x{w}"
            y = group_norm_nhwc(x, 32, weight, bias, silu=True)
            errors[key + " affine silu"] = (y - F.silu(F.group_norm(x, 32, weight, bias))).abs().max().item()
            errors[key + " channels_last"] = float(not y.is_contiguous(memory_format=torch.channels_last))
            y = group_norm_nhwc(x, 32)
            errors[key + " plain"] = (y - F.group_norm(x, 32)).abs().max().item()
            y = group_norm_nhwc(x, 32, gain, offset)
            ref = F.group_norm(x, 32) * gain[..., None, None] + offset[..., None, None]
            errors[key + " per-image"] = (y - ref).abs().max().item()
            xb = x.bfloat16()
            y = group_norm_nhwc(xb, 32, gain, offset, silu=True)
            ref = F.silu(F.group_norm(xb.float(), 32) * gain[..., None, None] + offset[..., None, None])
            errors[key + " bf16 rel"] = ((y.float() - ref).abs() / (ref.abs() + 1)).max().item()
            errors[key + " bf16 dtype"] = float(y.dtype != torch.bfloat16)
        print(json.dumps(errors))
    """)
    for key, err in result.items():
        bound = 2 ** -7 if "bf16 rel" in key else 0.0 if key.endswith(("dtype", "channels_last")) else 2e-5
        assert err <= bound, (key, err)



def test_kernel_on_a_large_image_against_float64():
    # 260x258 pixels: 66 chunks of the statistics pass, more than the finalize pass sums in
    # one step (64); a (1, C) scale-shift; a mean 4 std from 0. Against float64, since
    # PyTorch's own float32 CPU GroupNorm is off by 5.5e-4 here: ten times closer.
    result = _interpret("""
        import json, torch, torch.nn.functional as F
        from oftsr.triton_groupnorm import group_norm_nhwc
        torch.manual_seed(0)
        x = (torch.randn(1, 64, 260, 258) * 0.5 - 2).contiguous(memory_format=torch.channels_last)
        gain, offset = torch.randn(1, 64), torch.randn(1, 64)
        y = group_norm_nhwc(x, 32, gain, offset)
        ref = F.group_norm(x.double(), 32) * gain.double()[..., None, None] + offset.double()[..., None, None]
        print(json.dumps({"error": (y.double() - ref).abs().max().item(), "scale": ref.abs().max().item()}))
    """)
    assert result["error"] < 5.5e-5 and result["scale"] > 5


def test_conv_biases_ride_in_the_norm_and_the_residual_add():
    # x_bias: the norm of x + b without forming it (the statistics shift with b); the
    # residual add: h + skip + b in one pass, bf16 h with a float32 skip, into a new tensor,
    # with its output's partial sums, which the next norm takes in place of its own pass
    # (several chunks of pixels, a last one partly filled, channels that fill no block)
    result = _interpret("""
        import json, torch, torch.nn.functional as F
        from oftsr import triton_groupnorm
        from oftsr.triton_groupnorm import group_norm_nhwc, residual_add
        torch.manual_seed(0)
        x = torch.randn(2, 96, 9, 11).contiguous(memory_format=torch.channels_last)
        b = torch.randn(96) * 3
        gain, offset = torch.randn(2, 96), torch.randn(2, 96)
        y = group_norm_nhwc(x, 32, gain, offset, silu=True, x_bias=b)
        ref = F.silu(F.group_norm(x + b[:, None, None], 32) * gain[..., None, None] + offset[..., None, None])
        errors = {"norm": (y - ref).abs().max().item(), "norm scale": ref.abs().max().item()}
        h = torch.randn(2, 96, 9, 11).bfloat16().contiguous(memory_format=torch.channels_last)
        skip = torch.randn(2, 96, 9, 11).contiguous(memory_format=torch.channels_last)
        ref = h.float() + skip + b[:, None, None]
        before = h.clone()
        out, stats = residual_add(h, skip, b)
        errors["add rel"] = ((out.float() - ref).abs() / (ref.abs() + 1)).max().item()
        errors["add layout"] = float(out.dtype != torch.bfloat16 or not out.is_contiguous(memory_format=torch.channels_last)
                                     or out.data_ptr() == h.data_ptr() or not torch.equal(h, before))
        # the partial sums: per image, chunk of pixels and channel, of the stored (bf16) output
        triton_groupnorm._PIXELS_PER_CHUNK = 64  # 99 pixels: chunks of 64 and 35
        h, skip = (torch.randn(2, 96, 9, 11) * 2 + 1).contiguous(memory_format=torch.channels_last), skip.float()
        out, stats = residual_add(h, skip, b)
        flat = out.double().permute(0, 2, 3, 1).reshape(2, 99, 96)
        chunks = torch.nn.functional.pad(flat, (0, 0, 0, 128 - 99)).reshape(2, 2, 64, 96)
        sums = torch.stack([chunks.sum(2), (chunks ** 2).sum(2)], dim=2)
        errors["stats shape"] = float(tuple(stats.shape) != (2, 2, 2, 96) or stats.dtype != torch.float32)
        errors["stats rel"] = ((stats.double() - sums).abs() / (sums.abs() + 1)).max().item()
        gain, offset = torch.randn(96), torch.randn(96)
        y = group_norm_nhwc(out, 32, gain, offset, silu=True, x_stats=stats)
        errors["norm given sums"] = (y - group_norm_nhwc(out, 32, gain, offset, silu=True)).abs().max().item()
        refused = 0
        for call in [lambda: residual_add(h, skip.contiguous(), b),  # NCHW
                     lambda: group_norm_nhwc(out, 32, x_stats=stats[:, :1].contiguous()),  # sums of another size
                     lambda: group_norm_nhwc(out, 32, x_stats=stats.double())]:
            try:
                call()
            except ValueError:
                refused += 1
        errors["refused"] = 3 - refused
        print(json.dumps(errors))
    """)
    assert result["norm"] < 2e-5 and result["norm scale"] > 1
    assert result["add rel"] <= 2 ** -7 and result["add layout"] == 0
    assert result["stats shape"] == 0 and result["stats rel"] < 1e-5
    assert result["norm given sums"] < 1e-5 and result["refused"] == 0


def test_resblock_adds_the_biases_it_left_out_where_a_later_op_falls_back():
    # The block input passes the kernels' test, so its convs leave out their biases; no
    # later tensor does, so the norm after the first conv and the residual add fall back
    # to PyTorch's ops and must add those biases themselves (identity and conv skips).
    result = _interpret("""
        import json, torch
        from oftsr import triton_groupnorm, unet
        from oftsr.unet import ResBlock
        torch.manual_seed(0)
        errors = {}
        for cin, cout, up, down, transposed in [(64, 64, False, False, True), (64, 96, False, False, True),
                                                (64, 64, True, False, True), (64, 64, True, False, False),
                                                (64, 64, False, True, True)]:
            unet.UPSAMPLE_CONV_TRANSPOSED["cpu"] = transposed
            block = ResBlock(cin, 128, cout, up=up, down=down).eval()
            with torch.no_grad():
                for p in block.parameters():
                    p.copy_(torch.randn(p.shape) * 0.3)
            x = torch.randn(2, cin, 8, 8).contiguous(memory_format=torch.channels_last)
            emb = torch.randn(2, 128)
            with torch.inference_mode():
                ref = block(x, emb)
                triton_groupnorm.available = lambda t: t is x
                out = block(x, emb)
                triton_groupnorm.available = lambda t: False
            key = f"{cin}->{cout}" + (" up" if up else " down" if down else "") + ("" if transposed else " adm")
            errors[key] = (out - ref).abs().max().item()
            errors[key + " scale"] = ref.abs().max().item()
        print(json.dumps(errors))
    """)
    # the up and down blocks: their norm wrote h resampled, and the skip is resampled by PyTorch
    for key in ("64->64", "64->96", "64->64 up", "64->64 up adm", "64->64 down"):
        assert result[key] < 1e-4 and result[key + " scale"] > 1, result

@pytest.mark.parametrize("transposed", [True, False], ids=["transposed up-sampling conv", "norm writes up-sampled"])
def test_unet_with_fused_norms_matches_default_path(transposed):
    # The whole network with every GroupNorm(+scale-shift+SiLU) through the kernels (forced
    # on, as the interpreter's tensors are on the CPU), against the default CPU path; the
    # up-sampling blocks either way (the norm writes h up-sampled, or the conv is transposed).
    result = _interpret(_TINY_NETWORK + f"""
        unet.UPSAMPLE_CONV_TRANSPOSED["cpu"] = {transposed}
        with torch.inference_mode():
            ref = model.velocity(x, x.flip(-1), t)
            calls = []
            def forced(x):
                calls.append(1)
                return x.is_contiguous(memory_format=torch.channels_last) and not torch.is_grad_enabled()
            triton_groupnorm.available = forced
            adds = []
            residual_add = triton_groupnorm.residual_add
            triton_groupnorm.residual_add = lambda *a: adds.append(a[3]) or residual_add(*a)
            joined, given = [], []
            group_norm_nhwc = triton_groupnorm.group_norm_nhwc
            def norm(*a, **k):
                joined.append(k.get("x2") is not None)
                given.append((k.get("x_stats") is not None) + (k.get("x2_stats") is not None))
                return group_norm_nhwc(*a, **k)
            triton_groupnorm.group_norm_nhwc = norm
            cats = []
            cat = torch.cat
            torch.cat = lambda tensors, *a, **k: cats.append(tensors[0].ndim) or cat(tensors, *a, **k)
            fused = model.velocity(x, x.flip(-1), t)
            torch.cat = cat
        print(json.dumps({{"diff": (fused - ref).abs().max().item(), "scale": ref.abs().max().item(),
                          "calls": len(calls), "adds": adds, "joined": sum(joined), "cats": cats,
                          "given": sum(given)}}))
    """)
    # every decoder block's input was normalised as two tensors, never joined into a copy
    # (the only joins left: the model's input pair and the time embedding's halves)
    assert result["joined"] == len(TINY.unet.output_blocks) and 4 not in result["cats"][1:], result
    # every ResBlock's biases rode in its norm and residual add, and
    # the up and down blocks' skips were resampled there
    blocks = [m for m in TINY.modules() if isinstance(m, ResBlock)]
    assert result["calls"] > 10 and len(result["adds"]) == len(blocks)
    assert sorted(map(str, result["adds"])) == sorted(str(b.resample) for b in blocks)
    assert {"up", "down"} <= set(result["adds"])
    # each ResBlock's output reached the norms that read it with its partial sums: of the
    # tiny preset's 15 ResBlocks, 11 are followed by a ResBlock or the output norm (4 by an
    # attention block, whose output the norm sums itself), and 4 encoder blocks' outputs are
    # skips too (the input conv's and an attention block's are the other 2)
    assert len(blocks) == 15 and result["given"] == 11 + 4, result
    assert result["scale"] > 0.1
    assert result["diff"] < 1e-4 * result["scale"] + 1e-5


def test_compiled_network_keeps_the_kernels_as_operators():
    # Under torch.compile the kernels are custom operators: the whole network traces into one
    # graph (fullgraph: no break), the graph calls them rather than PyTorch's group_norm, and
    # gives the eager result. So are the decoder blocks' joined 1x1 skip convs, whose in-place
    # accumulate a traced graph would turn into a copy and an out-of-place addmm.
    result = _interpret(_TINY_NETWORK + _FORCED + """
        targets, matmuls = [], []
        def recording(gm, inputs):
            targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
            matmuls.extend(n for n in gm.graph.nodes if n.op in ("call_function", "call_method")
                           and getattr(n.target, "__name__", n.target) in ("mm", "addmm", "addmm_", "matmul"))
            return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)
        with torch.inference_mode():
            eager = model.velocity(x, x.flip(-1), t)
            compiled = torch.compile(model.velocity, backend=recording, fullgraph=True)(x, x.flip(-1), t)
        print(json.dumps({"diff": (compiled - eager).abs().max().item(), "scale": eager.abs().max().item(),
                          "norms": sum("oftsr.group_norm_nhwc" in n for n in targets),
                          "adds": sum("oftsr.residual_add" in n for n in targets),
                          "joined_convs": sum("oftsr.conv1x1_joined" in n for n in targets),
                          "matmuls": len(matmuls),
                          "torch_norms": sum("group_norm" in n and "oftsr" not in n for n in targets)}))
    """)
    blocks = [m for m in TINY.modules() if isinstance(m, ResBlock)]
    assert result["adds"] == len(blocks) and result["norms"] >= 2 * len(blocks), result
    # the tiny preset's 6 decoder blocks that join their skip (as the skip-kernel test counts)
    assert result["joined_convs"] == 6 and result["matmuls"] == 0, result
    assert result["torch_norms"] == 0, result
    assert result["scale"] > 0.1 and result["diff"] < 1e-5 * result["scale"], result


def test_kernels_serve_inside_torch_compile_without_a_graph_break(monkeypatch):
    # `available` traces (on this CPU its answer is no, and PyTorch's norm is traced)
    x = torch.randn(1, 32, 4, 4).contiguous(memory_format=torch.channels_last)
    fn = torch.compile(lambda x: x * 2 if triton_groupnorm.available(x) else x + 1, backend="eager", fullgraph=True)
    assert torch.equal(fn(x), x + 1)


def test_the_constant_mark_is_torch_compilers_own_and_importing_the_library_leaves_dynamo_out():
    def probe(index, dtype):
        return True

    assert vars(torch.compiler.assume_constant_result(probe)) == vars(triton_groupnorm._serves_dtype) \
        == vars(triton_groupnorm._serves_skip) == {"_dynamo_marked_constant": True}
    # what the CLI and ComfyUI import: torch._dynamo only when something compiles
    res = subprocess.run([sys.executable, "-c", "import sys, oftsr, oftsr.inference, oftsr.checkpoint, oftsr.cli; "
                          "print('torch._dynamo' in sys.modules)"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False", res.stderr


def test_the_kernels_check_runs_once_outside_a_compiled_graph(monkeypatch):
    # The one-time GPU checks behind `available` run while the graph is traced, their answer
    # a constant in it: a compiled forward never repeats them (traced through, they would
    # run again at every call)
    calls = []
    monkeypatch.setattr(triton_groupnorm, "installed", lambda: calls.append(1) or True)
    monkeypatch.setattr(triton_groupnorm, "_capable", lambda index: True)
    monkeypatch.setattr(triton_groupnorm, "_works_in", lambda index, dtype: True)
    fn = torch.compile(lambda x: x * 2 if triton_groupnorm._serves_dtype(0, x.dtype) else x + 1, backend="eager",
                       fullgraph=True)
    x = torch.ones(3)
    assert torch.equal(fn(x), x * 2) and torch.equal(fn(x), x * 2)
    assert calls == [1]


def test_norm_and_residual_add_resample_as_the_up_and_down_blocks_do():
    # The norm written nearest up-sampled or 2x2 pooled (with a folded conv bias, per-image
    # affine and SiLU), and the residual add reading its skip at half or twice h's size;
    # odd sizes and channel counts that fill no block exactly
    result = _interpret("""
        import json, torch, torch.nn.functional as F
        from oftsr.triton_groupnorm import group_norm_nhwc, residual_add
        torch.manual_seed(0)
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")
        errors = {}
        for n, c, h, w in [(2, 96, 6, 10), (1, 70, 34, 40)]:
            key, groups = f"{n}x{c}x{h}x{w}", 2 if c == 70 else 32
            cl = lambda *shape: torch.randn(*shape).contiguous(memory_format=torch.channels_last)
            x = cl(n, c, h, w) * 2 + 1
            gain, offset, b = torch.randn(n, c), torch.randn(n, c), torch.randn(c)
            ref = F.silu(F.group_norm(x + b[:, None, None], groups) * gain[..., None, None] + offset[..., None, None])
            for mode, resample in [("down", lambda t: F.avg_pool2d(t, 2)), ("up", up)]:
                y = group_norm_nhwc(x, groups, gain, offset, silu=True, x_bias=b, resample=mode)
                errors[f"{key} norm {mode}"] = (y - resample(ref)).abs().max().item()
                errors[f"{key} norm {mode} layout"] = float(not y.is_contiguous(memory_format=torch.channels_last))
            small, hb = cl(n, c, h // 2, w // 2), cl(n, c, h, w).bfloat16()
            expected = hb.float() + up(small) + b[:, None, None]
            out = residual_add(hb, small, b, "up")[0]
            errors[f"{key} add up rel"] = ((out.float() - expected) / (expected.abs() + 1)).abs().max().item()
            hs = cl(n, c, h // 2, w // 2)
            expected = hs + F.avg_pool2d(x, 2) + b[:, None, None]
            out, stats = residual_add(hs, x, b, "down")
            errors[f"{key} add down"] = (out - expected).abs().max().item()
            errors[f"{key} add down sums"] = (stats[:, :, 0].sum(1) - expected.sum((2, 3))).abs().max().item() / hs.numel()
        refused = 0
        x = torch.randn(1, 32, 5, 6).contiguous(memory_format=torch.channels_last)
        for call in [lambda: group_norm_nhwc(x, 32, resample="down"),  # odd height: no 2x2 windows
                     lambda: group_norm_nhwc(x, 32, resample="left"),
                     lambda: residual_add(x, x, torch.zeros(32), "up"),  # the skip must be half h's size
                     lambda: residual_add(torch.randn(1, 32, 4, 6).contiguous(memory_format=torch.channels_last),
                                           x, torch.zeros(32), "down")]:
            try:
                call()
            except ValueError:
                refused += 1
        errors["refused"] = refused
        print(json.dumps(errors))
    """)
    assert result.pop("refused") == 4
    for key, err in result.items():
        bound = 2 ** -7 if key.endswith("rel") else 0.0 if key.endswith("layout") else 1e-5
        assert err <= bound, (key, err)


def test_the_one_time_check_passes_the_real_kernels_in_every_dtype():
    # kernels_work runs every variant against PyTorch's ops; the real kernels pass it in
    # float32 and in both half types (each compiled apart), without a warning
    result = _interpret("""
        import json, warnings, torch
        from oftsr.triton_groupnorm import kernels_work, skip_kernel_works
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = {str(d): kernels_work(torch.device("cpu"), d) for d in (torch.float32, torch.bfloat16, torch.float16)}
            # float16 only: the interpreter cannot run a bf16 dot (test_skip_convolution_and_residual_add_in_one_kernel)
            result["skip float16"] = skip_kernel_works(torch.device("cpu"), torch.float16)
            print(json.dumps(result))
    """)
    assert result == {"torch.float32": True, "torch.bfloat16": True, "torch.float16": True, "skip float16": True}


def test_kernel_path_is_off_on_cpu_and_refuses_nchw():
    x = torch.randn(1, 32, 4, 4).contiguous(memory_format=torch.channels_last)
    assert not triton_groupnorm.available(x)  # CPU tensor: PyTorch's kernel
    with pytest.raises(ValueError, match="channels_last"):
        triton_groupnorm.group_norm_nhwc(torch.randn(1, 32, 4, 4), 32)


@pytest.mark.parametrize("error, warned", [(ModuleNotFoundError("No module named 'triton'", name="triton"), False),
                                           (ImportError("libcuda.so cannot be found"), True),
                                           (RuntimeError("libcuda.so cannot be found"), True)])
def test_a_broken_triton_is_said_once_and_a_missing_one_is_not(monkeypatch, error, warned):
    import builtins
    import warnings

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name.startswith("triton"):
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing)
    # the kernels' module imports triton when it is first imported: as if it never had been
    monkeypatch.delitem(sys.modules, "oftsr.triton_kernels", raising=False)
    monkeypatch.delattr(oftsr, "triton_kernels", raising=False)
    triton_groupnorm._kernels.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert triton_groupnorm._kernels() is None and triton_groupnorm._kernels() is None
    finally:
        monkeypatch.undo()
        triton_groupnorm._kernels.cache_clear()
    said = [str(w.message) for w in caught if "Triton" in str(w.message)]
    assert said == ([f"Triton is installed but does not import ({type(error).__name__}: libcuda.so cannot be found); "
                     f"using PyTorch's GroupNorm"] if warned else [])


def test_skip_convolution_and_residual_add_in_one_kernel():
    # h + conv1x1([x | x2]) + b and its output's partial sums, against PyTorch's conv: with
    # and without a second tensor, channel counts that fill no block (nor the products'
    # K step), several chunks of pixels. float16: the interpreter's dot multiplies bf16's
    # bit patterns as integers (a GPU runs bf16 for real; `skip_kernel_works` checks it there).
    result = _interpret("""
        import json, torch, torch.nn.functional as F
        from oftsr import triton_groupnorm
        from oftsr.triton_groupnorm import group_norm_nhwc, skip_matmul_add
        torch.manual_seed(0)
        triton_groupnorm._PIXELS_PER_CHUNK = 64
        cl = lambda *shape: torch.randn(*shape).half().contiguous(memory_format=torch.channels_last)
        errors = {}
        for n, cout, c1, c2, h, w in [(2, 96, 40, 25, 9, 11), (1, 64, 64, 0, 8, 8), (2, 130, 70, 70, 5, 7)]:
            key = f"{n}x{cout} from {c1}+{c2}"
            hh, x, x2 = cl(n, cout, h, w), cl(n, c1, h, w), cl(n, c2, h, w) if c2 else None
            weight, b = torch.randn(cout, c1 + c2, 1, 1) * 0.2, torch.randn(cout)
            joined = x if x2 is None else torch.cat([x, x2], 1)
            ref = hh.float() + F.conv2d(joined.float(), weight.half().float()) + b[:, None, None]
            out, stats = skip_matmul_add(hh, x, weight, b, x2)
            errors[key + " rel"] = ((out.float() - ref).abs() / (ref.abs() + 1)).max().item()
            errors[key + " layout"] = float(out.dtype != torch.float16
                                            or not out.is_contiguous(memory_format=torch.channels_last))
            flat = out.double().permute(0, 2, 3, 1).reshape(n, h * w, cout)
            chunks = -(-h * w // 64)
            flat = F.pad(flat, (0, 0, 0, chunks * 64 - h * w)).reshape(n, chunks, 64, cout)
            sums = torch.stack([flat.sum(2), (flat ** 2).sum(2)], dim=2)
            errors[key + " sums rel"] = ((stats.double() - sums).abs() / (sums.abs() + 1)).max().item()
            y = group_norm_nhwc(out, 2, x_stats=stats)
            errors[key + " norm"] = (y.float() - F.group_norm(out.float(), 2)).abs().max().item()
        refused = 0
        hh, x = cl(1, 64, 8, 8), cl(1, 64, 8, 8)
        for call in [lambda: skip_matmul_add(hh.float(), x.float(), torch.randn(64, 64, 1, 1), torch.zeros(64)),
                     lambda: skip_matmul_add(hh, x[..., :4].contiguous(memory_format=torch.channels_last),
                                             torch.randn(64, 64, 1, 1), torch.zeros(64)),
                     lambda: skip_matmul_add(hh, x, torch.randn(64, 32, 1, 1), torch.zeros(64)),
                     lambda: skip_matmul_add(hh, x.contiguous(), torch.randn(64, 64, 1, 1), torch.zeros(64))]:
            try:
                call()
            except ValueError:
                refused += 1
        errors["refused"] = 4 - refused
        print(json.dumps(errors))
    """)
    assert result.pop("refused") == 0
    for key, err in result.items():
        bound = {"rel": 2 ** -9, "layout": 0.0, "sums rel": 2e-4, "norm": 4e-3}[key.split(" ", 3)[-1]]
        assert err <= bound, (key, err)


def test_unet_with_the_skip_kernel_matches_the_products_it_replaces():
    # A float16 network with the kernels forced on: every ResBlock with a 1x1 skip conv runs
    # it and its residual add in the one kernel, and the output matches the same network
    # with cuBLAS's products and the residual add
    result = _interpret(_TINY_NETWORK + _FORCED + """
        model = model.half()
        model.optimize(channels_last=True)
        x = x.half()
        triton_groupnorm._serves_skip = lambda index, dtype: True
        calls = []
        skip_matmul_add = triton_groupnorm.skip_matmul_add
        triton_groupnorm.skip_matmul_add = lambda *a: calls.append(a[4] is not None) or skip_matmul_add(*a)
        with torch.inference_mode():
            unet.SKIP_MATMUL_IN_TRITON["cpu"] = False
            ref = model.velocity(x, x.flip(-1), t).float()
            unet.SKIP_MATMUL_IN_TRITON["cpu"] = True
            out = model.velocity(x, x.flip(-1), t).float()
        print(json.dumps({"diff": (out - ref).abs().max().item(), "scale": ref.abs().max().item(),
                          "joined": sum(calls), "alone": len(calls) - sum(calls)}))
    """)
    skips = [m for m in TINY.modules() if isinstance(m, ResBlock) and not isinstance(m.skip_connection, torch.nn.Identity)]
    # the tiny preset: 6 decoder blocks join their skip, 2 encoder blocks widen the channels
    assert len(skips) == 8 and (result["joined"], result["alone"]) == (6, 2), result
    assert result["scale"] > 0.05 and result["diff"] < 2e-3 * result["scale"] + 1e-3, result


def test_a_skip_kernel_that_fails_or_is_wrong_is_not_used(monkeypatch):
    import torch.nn.functional as F

    def reference(h, x, weight, bias, x2=None):
        joined = x if x2 is None else torch.cat([x, x2], 1)
        return (h.float() + F.conv2d(joined.float(), weight.float()) + bias[:, None, None]).to(h.dtype), None

    def broken(*a):
        raise RuntimeError("out of shared memory")

    monkeypatch.setattr(triton_groupnorm, "group_norm_nhwc",
                        lambda x, groups, x_stats=None: F.group_norm(x.float(), groups).to(x.dtype))
    # a right kernel passes in both half dtypes: its output rounded to bf16 is off the float32
    # reference by up to 2^-6 (the check's outputs are under 8; at 20 they once failed it)
    for kernel, dtype, works, warning in [
            (reference, torch.float16, True, None), (reference, torch.bfloat16, True, None),
            (broken, torch.float16, False, "does not run on cpu in torch.float16 .*out of shared memory"),
            (lambda *a: (reference(*a)[0] + 0.1, None), torch.float16, False, "is off on cpu by 0.1")]:
        monkeypatch.setattr(triton_groupnorm, "skip_matmul_add", kernel)
        state = torch.get_rng_state()
        if warning is None:
            assert triton_groupnorm.skip_kernel_works(torch.device("cpu"), dtype) is works
        else:
            with pytest.warns(RuntimeWarning, match=warning):
                assert triton_groupnorm.skip_kernel_works(torch.device("cpu"), dtype) is works
        assert torch.equal(torch.get_rng_state(), state)
    *_, ref = triton_groupnorm._skip_check_case(torch.device("cpu"), torch.bfloat16)
    assert 4 < ref.abs().max().item() < 8
    # the norms do not depend on it: a CPU tensor is served by neither
    x = torch.randn(1, 32, 4, 4, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    assert not triton_groupnorm.skip_available(x, x)


@pytest.mark.parametrize("arch", [90, 80], ids=["Hopper", "Ampere"])
def test_every_kernel_variant_compiles_for_the_gpus_it_serves(arch):
    # Triton's compiler needs no GPU: each kernel, in each variant the launchers use (dtype,
    # resampling, SiLU, the package's launch settings), compiled down to a cubin here. The
    # interpreter runs the kernels' arithmetic; this catches what only the compiler checks
    # (types, block shapes of the products, shared memory).
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from oftsr import triton_kernels

    activations = {"x_ptr", "y_ptr", "h_ptr", "skip_ptr", "out_ptr", "x2_ptr", "w_ptr"}

    def compiled(kernel, dtype: str, config: dict, **constants):
        config = dict(config)
        num_warps = config.pop("num_warps", 4)
        signature = {name: "constexpr" if name.isupper() else (f"*{dtype}" if name in activations else "*fp32")
                     if name.endswith("_ptr") else "fp32" if name == "eps" else "i32"
                     for name in inspect.signature(kernel.fn).parameters}
        try:
            source = ASTSource(fn=kernel, signature=signature, constexprs={**config, **constants})
        except TypeError:  # Triton 3.2 and before call them constants
            source = ASTSource(fn=kernel, signature=signature, constants={**config, **constants})
        return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})

    config, chunk = triton_groupnorm.LAUNCH_CONFIG, triton_groupnorm._PIXELS_PER_CHUNK
    built, skips = [], []
    for dtype in ("bf16", "fp16", "fp32"):
        built.append(compiled(triton_kernels._groupnorm_stats, dtype, config["stats"], PIXELS_PER_CHUNK=chunk))
        built.append(compiled(triton_kernels._groupnorm_finalize, dtype, {}, HAS_WEIGHT=True, HAS_BIAS=True,
                              HAS_X_BIAS=True, BLOCK_CHUNKS=triton_groupnorm._BLOCK_CHUNKS, BLOCK_GROUP=8))
        for resample in triton_groupnorm._RESAMPLE.values():
            for silu in (True, False):
                built.append(compiled(triton_kernels._groupnorm_apply, dtype, config["apply"], SILU=silu, **resample))
            built.append(compiled(triton_kernels._residual_add, dtype, config["add"], PIXELS_PER_CHUNK=chunk, **resample))
        if dtype != "fp32":
            skips.append(compiled(triton_kernels._skip_matmul_add, dtype, config["skip"], PIXELS_PER_CHUNK=chunk))
    assert len(built) == 3 * 2 + 3 * 3 * 3 and len(skips) == 2
    assert all(b.asm.get("cubin") and f"sm_{arch}" in b.asm["ptx"] for b in built + skips)
    # the skip kernel's products stage their tiles in shared memory, within any such GPU's 100 KB
    assert all(0 < b.metadata.shared <= 100 * 1024 for b in skips)
