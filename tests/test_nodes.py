"""The ComfyUI nodes, run against stand-ins for ComfyUI (tests/comfy_stubs.py).

The pack is loaded as ComfyUI loads it: the repository folder as a package, entered
through `comfy_entrypoint`. Models are tiny UNets with random weights, saved into a
temporary models folder registered in the stand-in folder_paths.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import comfy_stubs
import oftsr
from conftest import make_model, smooth_image
from oftsr.grid import labelled_grid

ROOT = Path(__file__).resolve().parents[1]
PACK = "oftsr_comfy_pack_under_test"
NODE_IDS = ["OFTSRModelLoader", "OFTSRUpscale", "OFTSRTeacherSampler", "OFTSRTSweep", "OFTSRRegionalTradeoff",
            "OFTSRAsUpscaleModel"]
AUTHORS_NAME = "sr_bicubic-sf4-guided_unet-sigma0.2-bs128-DIV2K-checkpoint_4.pth"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: threads only add overhead (and contention on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(random_unet_weights) -> dict[str, torch.Tensor]:
    """conftest's random tiny UNet with a stronger time embedding, so that t visibly matters."""
    return {k: v * 10 if k.startswith("time_embed") or "emb_layers" in k else v for k, v in random_unet_weights.items()}


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    return comfy_stubs.install(monkeypatch, tmp_path / "models")


@pytest.fixture
def load_pack(comfy):
    def load():
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
        extension = asyncio.run(module.comfy_entrypoint())
        classes = asyncio.run(extension.get_node_list())
        return SimpleNamespace(
            module=module, extension=extension, classes=classes,
            nodes={cls.define_schema().node_id: cls for cls in classes},
            lib=sys.modules[f"{PACK}.oftsr"], widgets=sys.modules[f"{PACK}.nodes.widgets"],
            memory=sys.modules[f"{PACK}.nodes.memory"], progress=sys.modules[f"{PACK}.nodes.progress"],
            color=sys.modules[f"{PACK}.oftsr.color"], sweep=sys.modules[f"{PACK}.nodes.sweep"],
        )

    yield load
    for name in [n for n in sys.modules if n == PACK or n.startswith(PACK + ".")]:
        del sys.modules[name]


@pytest.fixture
def pack(load_pack):
    return load_pack()


@pytest.fixture
def model_dir(comfy) -> Path:
    path = Path(comfy.folder_paths.models_dir) / "oftsr"
    path.mkdir(parents=True, exist_ok=True)  # the pack makes it as it loads
    return path


@pytest.fixture(scope="module")
def model_files(weights, tmp_path_factory) -> dict[str, tuple[oftsr.OFTSRModel, Path]]:
    folder = tmp_path_factory.mktemp("saved")
    files = {}
    for role in ("student", "teacher"):
        model = make_model(weights, role)
        oftsr.save_model(model, folder / f"tiny-{role}.safetensors")
        files[role] = model, folder / f"tiny-{role}.safetensors"
    return files


@pytest.fixture
def saved(model_dir, model_files) -> dict[str, oftsr.OFTSRModel]:
    """Our student and teacher files (sigma_p 0.2, x4) in models/oftsr."""
    for model, path in model_files.values():
        shutil.copy(path, model_dir / path.name)
    return {role: model for role, (model, _) in model_files.items()}


def load(pack, name: str, **kw):
    return pack.nodes["OFTSRModelLoader"].execute(model_name=name, **kw)[0]


@pytest.fixture
def student(pack, saved):
    return load(pack, "tiny-student.safetensors")


@pytest.fixture
def teacher(pack, saved):
    return load(pack, "tiny-teacher.safetensors")


def image(b: int = 1, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C]."""
    return torch.cat([smooth_image(h, w, seed + i, c) for i in range(b)]).movedim(1, -1).contiguous()


def run_outputs(pack, node_id: str, **inputs) -> tuple:
    """Every output of a node, as many as its schema declares."""
    node = pack.nodes[node_id]
    out = node.execute(**inputs)
    assert isinstance(out, comfy_stubs.NodeOutput) and len(out.args) == len(node.define_schema().outputs)
    return out.args


def run(pack, node_id: str, **inputs) -> torch.Tensor:
    return run_outputs(pack, node_id, **inputs)[0]


def bars(comfy) -> list[comfy_stubs.ProgressBar]:
    return comfy.progress_bars


# --------------------------------------------------------------------------- registration and schemas


def test_entrypoint_registers_every_node(pack):
    assert not hasattr(pack.module, "NODE_CLASS_MAPPINGS")
    assert isinstance(pack.extension, comfy_stubs.ComfyExtension)
    assert list(pack.nodes) == NODE_IDS
    for cls in pack.classes:
        assert issubclass(cls, comfy_stubs.ComfyNode)
        schema = cls.define_schema()
        schema.validate()
        assert schema.category == "image/upscaling/OFTSR" and schema.display_name and schema.description
        assert [o.io_type for o in schema.outputs] == (["OFTSR_MODEL"] if cls is pack.nodes["OFTSRModelLoader"]
                                                           else ["IMAGE", "IMAGE"] if cls is pack.nodes["OFTSRTSweep"]
                                                           else ["UPSCALE_MODEL"] if cls is pack.nodes["OFTSRAsUpscaleModel"]
                                                           else ["IMAGE"])
        assert all(o.tooltip for o in schema.outputs)  # every output says what it is


def inputs_of(pack, node_id: str) -> dict:
    return {i.id: i for i in pack.nodes[node_id].define_schema().inputs}


def test_sampling_node_schemas(pack):
    expected = {
        "OFTSRUpscale": ["model", "image", "t", "seed", "tile", "overlap", "color_fix"],
        "OFTSRTeacherSampler": ["model", "image", "steps", "solver", "seed", "tile", "overlap", "color_fix"],
        "OFTSRTSweep": ["model", "image", "t_values", "seed", "tile", "overlap", "color_fix"],
        "OFTSRRegionalTradeoff": ["model", "image", "mask", "t_inside", "t_outside", "seed", "tile", "overlap", "color_fix"],
    }
    for node_id, names in expected.items():
        inputs = inputs_of(pack, node_id)
        assert list(inputs) == names, node_id
        assert inputs["model"].io_type == "OFTSR_MODEL" and inputs["image"].io_type == "IMAGE"
        seed = inputs["seed"]
        assert seed.io_type == "INT" and seed.control_after_generate is True  # this ComfyUI: no choice of default
        assert (seed.default, seed.min, seed.max) == (0, 0, 2**64 - 1)
        tile = inputs["tile"]
        assert (tile.default, tile.min, inputs["overlap"].default) == (512, 0, 64)
        # every size the widget steps to from 0 runs: none of 1 to 31, which are refused
        assert all(pack.widgets.check_tile(v) is True for v in range(tile.min, tile.max + 1, tile.step))
        assert tile.default % tile.step == 0 and tile.max % tile.step == 0
        assert inputs["color_fix"].io_type == "COMBO"
        assert (inputs["color_fix"].options, inputs["color_fix"].default) == (["none", "wavelet", "adain"], "none")

    sliders = {("OFTSRUpscale", "t"): 0.5, ("OFTSRRegionalTradeoff", "t_inside"): 1.0,
               ("OFTSRRegionalTradeoff", "t_outside"): 0.0}
    for (node_id, name), default in sliders.items():
        t = inputs_of(pack, node_id)[name]
        assert t.io_type == "FLOAT" and t.display_mode is comfy_stubs.NumberDisplay.slider
        assert (t.default, t.min, t.max, t.step) == (default, 0.0, 1.0, 0.01)
    t = inputs_of(pack, "OFTSRUpscale")["t"]
    assert "0 = fidelity" in t.tooltip and "1 = realism" in t.tooltip

    teacher = inputs_of(pack, "OFTSRTeacherSampler")
    assert (teacher["steps"].default, teacher["steps"].min) == (16, 1)
    assert teacher["solver"].options == ["euler", "midpoint", "heun", "adaptive"] and teacher["solver"].default == "midpoint"
    sweep = inputs_of(pack, "OFTSRTSweep")
    assert sweep["t_values"].io_type == "STRING" and sweep["t_values"].default == "0, 0.25, 0.5, 0.75, 1"
    assert inputs_of(pack, "OFTSRRegionalTradeoff")["mask"].io_type == "MASK"


BUNDLED = ["x4 student", "x4 teacher", "x4-real student", "x4-real teacher"]  # the bundled models, x4 first


def test_loader_schema_lists_the_model_folder(comfy, pack, saved):
    inputs = inputs_of(pack, "OFTSRModelLoader")
    assert list(inputs) == ["model_name", "dtype", "sigma_p", "role", "scale"]
    assert inputs["model_name"].options == [*BUNDLED, "tiny-student.safetensors", "tiny-teacher.safetensors"]
    assert inputs["dtype"].options == ["auto", "fp32", "fp16", "bf16"] and inputs["dtype"].default == "auto"
    assert (inputs["sigma_p"].default, inputs["sigma_p"].min, inputs["sigma_p"].max) == (0.0, 0.0, 1.0)
    assert inputs["role"].options == ["from file", "teacher", "student"] and inputs["role"].default == "from file"
    assert (inputs["scale"].default, inputs["scale"].min) == (0, 0)


def test_the_model_folder_is_made_for_a_user_to_find(comfy, load_pack):
    folder = Path(comfy.folder_paths.models_dir) / "oftsr"
    assert not folder.exists()
    pack = load_pack()
    assert folder.is_dir() and inputs_of(pack, "OFTSRModelLoader")["model_name"].options == BUNDLED


def test_model_folder_merges_extra_model_paths(comfy, load_pack, tmp_path, random_unet_weights):
    fp = comfy.folder_paths
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    fp.add_model_folder_path("oftsr", str(extra))  # what extra_model_paths.yaml does before packs load
    assert fp.folder_names_and_paths["oftsr"][1] == set()  # a new key matches every file...
    (extra / "readme.txt").write_text("not a model")
    oftsr.save_model(make_model(random_unet_weights), extra / "far.safetensors")
    default = Path(fp.models_dir) / "oftsr"
    (default / "sub").mkdir(parents=True)
    oftsr.save_model(make_model(random_unet_weights), default / "sub" / "near.safetensors")

    pack = load_pack()
    paths, extensions = fp.folder_names_and_paths["oftsr"]
    assert paths == [str(default), str(extra)]
    assert extensions == fp.supported_pt_extensions  # ...until the pack registers the model extensions
    assert fp.get_filename_list("oftsr") == ["far.safetensors", "sub/near.safetensors"]
    assert inputs_of(pack, "OFTSRModelLoader")["model_name"].options == [*BUNDLED, "far.safetensors", "sub/near.safetensors"]
    assert load(pack, "far.safetensors").role == "student"
    inputs_of(pack, "OFTSRModelLoader")  # registering again (define_schema runs on every object_info)...
    assert fp.folder_names_and_paths["oftsr"] == ([str(default), str(extra)], fp.supported_pt_extensions)  # ...is a no-op


# --------------------------------------------------------------------------- loader


def test_loader_loads_ours(comfy, pack, saved):
    model = load(pack, "tiny-student.safetensors")
    assert isinstance(model, pack.lib.OFTSRModel)
    assert (model.role, model.sigma_p, model.scale) == ("student", 0.2, 4)
    assert model.device.type == "cpu" and model.dtype == torch.float32  # auto on the CPU: fp32, on the offload device
    assert not model.training
    for (k, v), w in zip(model.unet.state_dict().items(), saved["student"].unet.state_dict().values()):
        assert torch.equal(v, w), k


def test_loader_loads_the_bundled_models(comfy, pack, monkeypatch, tmp_path):
    for name, degradation in (("x4", "bicubic"), ("x4-real", "realesrgan")):
        student, teacher = load(pack, f"{name} student"), load(pack, f"{name} teacher")
        assert (student.role, teacher.role) == ("student", "teacher")
        assert student.config == teacher.config == pack.lib.PRESETS["compact"]
        assert (student.scale, student.sigma_p) == (teacher.scale, teacher.sigma_p) == (4, 0.2)
        assert student.degradation == teacher.degradation == degradation
    # An installation without the bundled files lists only the model folder.
    monkeypatch.setattr(sys.modules[f"{PACK}.oftsr.weights"], "WEIGHTS_DIR", tmp_path)
    assert inputs_of(pack, "OFTSRModelLoader")["model_name"].options == []
    with pytest.raises(FileNotFoundError, match="x4 student .* is not bundled in this version"):
        load(pack, BUNDLED[0])


def test_loader_lists_every_bundled_file_by_name(comfy, pack, monkeypatch, tmp_path):
    # x4-real is listed, after x4, as soon as its files are there (here copies of the x4 pair).
    weights = sys.modules[f"{PACK}.oftsr.weights"]
    for name in ("x4", "x4-real"):
        for role in ("student", "teacher"):
            (tmp_path / f"{name}-{role}.safetensors").write_bytes(weights.bundled_model_path("x4", role).read_bytes())
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    assert inputs_of(pack, "OFTSRModelLoader")["model_name"].options == [
        "x4 student", "x4 teacher", "x4-real student", "x4-real teacher"]
    assert load(pack, "x4-real teacher").role == "teacher"
    (tmp_path / "x4-real-teacher.safetensors").unlink()  # a pair is listed file by file
    assert inputs_of(pack, "OFTSRModelLoader")["model_name"].options == ["x4 student", "x4 teacher", "x4-real student"]


def test_loader_accepts_the_names_of_older_workflows(comfy, pack, saved):
    loader = pack.nodes["OFTSRModelLoader"]
    for old, new in {"(bundled) oftsr-x4-student": "x4 student", "(bundled) oftsr-x4-teacher": "x4 teacher"}.items():
        assert old not in inputs_of(pack, "OFTSRModelLoader")["model_name"].options  # not listed twice...
        assert loader.validate_inputs(model_name=old) is True  # ...but a saved workflow still validates
        a, b = load(pack, old), load(pack, new)
        assert a.role == b.role and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    for name in [*BUNDLED, "tiny-student.safetensors"]:
        assert loader.validate_inputs(model_name=name) is True
    # With ComfyUI's own list check off for model_name, the node makes it.
    for absent in ("x2 student", "absent.safetensors", "(bundled) oftsr-x2-student"):
        message = loader.validate_inputs(model_name=absent)
        assert isinstance(message, str) and repr(absent) in message and "not available" in message
    assert loader.validate_inputs(model_name=None) is True  # a linked value is checked when the node runs


def test_loader_loads_authors_pth_and_applies_overrides(comfy, pack, model_dir, random_unet_weights):
    source = make_model(random_unet_weights, "teacher")
    torch.save({"ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": [p.detach().clone() for p in source.parameters()]},
                "step": 1}, model_dir / AUTHORS_NAME)
    model = load(pack, AUTHORS_NAME)
    assert (model.role, model.sigma_p, model.scale, model.step) == ("teacher", 0.2, 4, 1)
    assert model.config.to_dict() == source.config.to_dict()
    for p, q in zip(model.parameters(), source.parameters()):
        assert torch.equal(p, q)

    model = load(pack, AUTHORS_NAME, sigma_p=0.5, role="student", scale=2)
    assert (model.role, model.sigma_p, model.scale) == ("student", 0.5, 2)
    model = load(pack, AUTHORS_NAME, sigma_p=0.0, role="from file", scale=0)  # sentinels keep the file's values
    assert (model.role, model.sigma_p, model.scale) == ("teacher", 0.2, 4)


def test_loader_dtype(comfy, pack, saved):
    assert load(pack, "tiny-student.safetensors", dtype="fp16").dtype == torch.float16
    assert load(pack, "tiny-student.safetensors", dtype="bf16").dtype == torch.bfloat16
    comfy.model_management.fp16 = True
    assert load(pack, "tiny-student.safetensors").dtype == torch.float16
    comfy.model_management.bf16 = True  # bf16 is preferred where both are fast
    assert load(pack, "tiny-student.safetensors").dtype == torch.bfloat16


def test_loader_errors(comfy, pack, model_dir, random_unet_weights):
    torch.save({"ema": {"shadow_params": list(make_model(random_unet_weights).parameters())}, "step": 1},
               model_dir / "mystery.pth")
    with pytest.raises(ValueError, match=r"does not say its sigma_p, role, scale; set them on this Load OFTSR Model node"):
        load(pack, "mystery.pth")
    assert load(pack, "mystery.pth", sigma_p=0.1, role="student", scale=4).sigma_p == 0.1
    (model_dir / "broken.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="empty or truncated"):
        load(pack, "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        load(pack, "absent.safetensors")
    # A checkpoint of another model names the file and says so; the error is a plain ValueError,
    # which ComfyUI shows by its class name rather than by the pack's module path.
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, model_dir / "sdlike.safetensors")
    for name, message in [("sdlike.safetensors", "sdlike.safetensors: not an OFTSR checkpoint"),
                          ("broken.safetensors", "broken.safetensors: file is empty or truncated")]:
        with pytest.raises(ValueError, match=message) as e:
            load(pack, name)
        assert type(e.value) is ValueError
    with pytest.raises(ValueError, match="an ESRGAN-type upscaler loads with ComfyUI's Load Upscale Model"):
        load(pack, "sdlike.safetensors")
    # Real-ESRGAN's own .pth files wrap their state dict in BasicSR's "params_ema" / "params"
    for key in ("params_ema", "params"):
        torch.save({key: {"conv_first.weight": torch.zeros(64, 3, 3, 3)}}, model_dir / f"RealESRGAN_{key}.pth")
        with pytest.raises(ValueError, match=rf"^RealESRGAN_{key}.pth: not an OFTSR checkpoint: parameter "
                                             r"'conv_first.weight' .*; an ESRGAN-type upscaler loads with ComfyUI's "
                                             r"Load Upscale Model, from models/upscale_models$"):
            load(pack, f"RealESRGAN_{key}.pth")


def test_image_errors_speak_in_comfyuis_layout(comfy, pack, student):
    common = dict(model=student, t=0.5, seed=0, tile=0, overlap=0, color_fix="none")
    with pytest.raises(ValueError, match=re.escape("image is empty: IMAGE [batch, height, width, channels] [0, 8, 8, 3]")):
        run(pack, "OFTSRUpscale", image=image()[:0], **common)
    with pytest.raises(ValueError, match="got \\(1, 8, 8\\) \\(a MASK.*Convert Mask to Image"):
        run(pack, "OFTSRUpscale", image=torch.ones(1, 8, 8), **common)


def test_seed_defaults_to_fixed_where_comfyui_lets_a_node_choose(comfy, load_pack):
    """ComfyUI from 2026 on has io.ControlAfterGenerate: a fresh node's seed is then fixed,
    so its upscale stays cached from one Queue to the next (randomize recomputed it)."""
    from enum import Enum

    class ControlAfterGenerate(str, Enum):
        fixed = "fixed"
        increment = "increment"
        decrement = "decrement"
        randomize = "randomize"

    comfy.io.ControlAfterGenerate = ControlAfterGenerate
    pack = load_pack()
    for node_id in ("OFTSRUpscale", "OFTSRTSweep", "OFTSRTeacherSampler", "OFTSRRegionalTradeoff"):
        assert inputs_of(pack, node_id)["seed"].control_after_generate is ControlAfterGenerate.fixed, node_id


def test_loader_tooltip_names_only_the_bundled_models_there_are(comfy, pack):
    tooltip = inputs_of(pack, "OFTSRModelLoader")["model_name"].tooltip
    assert "'x4 student' / 'x4 teacher' are x4, bicubic degradation: clean and AI-generated images" in tooltip
    for name in oftsr.BUNDLED_MODELS:
        shipped = all((Path(oftsr.__file__).parent / "weights" / f"{name}-{role}.safetensors").is_file()
                      for role in ("student", "teacher"))
        assert (f"'{name} student' / '{name} teacher' are " in tooltip) == shipped, name
    assert "not models/upscale_models" in tooltip


def test_loader_refuses_overrides_that_contradict_the_file(comfy, pack, saved):
    with pytest.raises(ValueError, match="records sigma_p 0.2, and running it with sigma_p 1 would give a wrong image"):
        load(pack, "tiny-student.safetensors", sigma_p=1.0)
    with pytest.raises(ValueError, match="records scale 4, .* set scale to 0"):
        load(pack, "tiny-student.safetensors", scale=2)
    model = load(pack, "tiny-student.safetensors", sigma_p=0.2, scale=4)  # agreeing values are fine
    assert (model.sigma_p, model.scale) == (0.2, 4)
    # a teacher run as a student gives a wrong image (8 dB under bicubic at t = 1): the role
    # override is for files that do not record one (test_loader_loads_authors_pth_and_applies_overrides)
    with pytest.raises(ValueError, match="records role student, .* set role to 'from file'"):
        load(pack, "tiny-student.safetensors", role="teacher")
    assert load(pack, "tiny-student.safetensors", role="student").role == "student"


def test_validate_inputs_refuse_bad_values_before_the_run(pack):
    for node_id in ["OFTSRUpscale", "OFTSRRegionalTradeoff", "OFTSRTeacherSampler", "OFTSRAsUpscaleModel"]:
        check = pack.nodes[node_id].validate_inputs
        for tile in (0, 32, 512, 8192, None):
            assert check(tile=tile) is True
        for tile in (8, 31, 8193):  # taking tile turns ComfyUI's own range check off: made here
            assert check(tile=tile) == f"tile must be 0 (the whole image at once) or 32 to 8192 pixels, got {tile}"
    # ComfyUI files a validate_inputs error under every input the method takes: one each
    takes = {node_id: list(inspect.signature(node.validate_inputs).parameters) for node_id, node in pack.nodes.items()}
    assert takes == {"OFTSRModelLoader": ["model_name"], "OFTSRUpscale": ["tile"], "OFTSRTSweep": ["t_values"],
                     "OFTSRRegionalTradeoff": ["tile"], "OFTSRTeacherSampler": ["tile"], "OFTSRAsUpscaleModel": ["tile"]}


def test_combo_values_are_checked_before_anything_runs(comfy, pack, student, teacher):
    """ComfyUI (0.3.6x) does not check these nodes' combo options: a value from an API
    prompt or another version's workflow stops the node before any work."""
    common = dict(image=image(), seed=0, tile=0, overlap=0, color_fix="Wavelet")
    message = "color_fix must be one of none, wavelet, adain; got 'Wavelet'"
    for node_id, model, extra in [
            ("OFTSRUpscale", student, {"t": 0.5}), ("OFTSRTSweep", student, {"t_values": "0, 1"}),
            ("OFTSRRegionalTradeoff", student, {"mask": torch.ones(8, 8), "t_inside": 1.0, "t_outside": 0.0}),
            ("OFTSRTeacherSampler", teacher, {"steps": 2, "solver": "euler"})]:
        with pytest.raises(ValueError, match=re.escape(message)):
            run(pack, node_id, model=model, **common, **extra)
    with pytest.raises(ValueError, match=re.escape("solver must be one of euler, midpoint, heun, adaptive; got 'rk4'")):
        run(pack, "OFTSRTeacherSampler", model=teacher, steps=2, solver="rk4", **{**common, "color_fix": "none"})
    with pytest.raises(ValueError, match=re.escape("tile must be 0 (the whole image at once) or 32 to 8192 pixels")):
        run(pack, "OFTSRTSweep", model=student, t_values="0, 1", **{**common, "color_fix": "none", "tile": 8})
    with pytest.raises(ValueError, match=re.escape("dtype must be one of auto, fp32, fp16, bf16; got 'fp8'")):
        load(pack, "tiny-student.safetensors", dtype="fp8")
    with pytest.raises(ValueError, match=re.escape("role must be one of from file, teacher, student; got 'both'")):
        load(pack, "tiny-student.safetensors", role="both")
    assert bars(comfy) == [] and comfy.model_management.freed == []  # nothing ran


# --------------------------------------------------------------------------- OFTSR Upscale


def test_upscale_batch_shapes_values_and_devices(comfy, pack, student):
    img = image(b=2, h=8, w=12)
    kw = dict(model=student, image=img, tile=0, overlap=64, color_fix="none")
    out = run(pack, "OFTSRUpscale", t=0.5, seed=3, **kw)
    assert out.shape == (2, 32, 48, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.is_contiguous() and 0 <= out.min() and out.max() <= 1
    expected = pack.lib.upscale(student, img.movedim(-1, 1), t=0.5, seed=3).movedim(1, -1)
    assert torch.equal(out, expected)
    assert (out[0] - out[1]).abs().mean() > 0.05  # two different images stay two images
    # a super-resolution of the input: near its bicubic upsample (a random model adds the start-point noise)
    bicubic = F.interpolate(img.movedim(-1, 1), scale_factor=4, mode="bicubic").movedim(1, -1).clamp(0, 1)
    assert 0.01 < (out - bicubic).abs().mean() < 0.2

    other_t = run(pack, "OFTSRUpscale", t=1.0, seed=3, **kw)
    other_seed = run(pack, "OFTSRUpscale", t=0.5, seed=4, **kw)
    assert (other_t - out).abs().mean() > 1e-3 and (other_seed - out).abs().mean() > 1e-2
    assert torch.equal(run(pack, "OFTSRUpscale", t=0.5, seed=3, **kw), out)  # deterministic

    mm = comfy.model_management
    assert len(mm.freed) == 4 and all(d.type == "cpu" for _, d in mm.freed)  # room made before each run
    assert mm.freed[0][0] > mm.module_size(student)
    assert student.device.type == "cpu"
    assert student.channels_last  # the run chose the faster layout for the CPU


def test_the_librarys_word_on_a_run_is_logged_as_the_nodes(comfy, pack, student, caplog, recwarn):
    """float16 on a CPU: the library's RunWarning comes out as the node's log line (each
    run, once), not as Python's warning with its source line."""
    import logging

    half = student.half()
    kw = dict(model=half, image=image(b=1, h=8, w=8), t=0.5, seed=0, tile=0, overlap=0, color_fix="none")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            run(pack, "OFTSRUpscale", **kw)
    said = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert said == ["OFTSR Upscale: float16 on a CPU is emulated: about 10x slower than float32 (bfloat16 is fast on "
                    "CPUs with AVX512-bf16 or AMX); float16 is for GPUs"] * 2
    assert not [w for w in recwarn if issubclass(w.category, oftsr.model.RunWarning)]


def test_tiling_matches_the_library(comfy, pack, student):
    img = image(h=12, w=12)
    out = run(pack, "OFTSRUpscale", model=student, image=img, t=0.7, seed=1, tile=32, overlap=8, color_fix="none")
    expected = pack.lib.upscale(student, img.movedim(-1, 1), t=0.7, seed=1, tile=32, overlap=8).movedim(1, -1)
    assert torch.equal(out, expected)
    whole = run(pack, "OFTSRUpscale", model=student, image=img, t=0.7, seed=1, tile=0, overlap=8, color_fix="none")
    assert (out - whole).abs().mean() < 0.05  # same noise; tiles only see less context
    # overlap above half the tile is capped rather than refused
    capped = run(pack, "OFTSRUpscale", model=student, image=img, t=0.7, seed=1, tile=32, overlap=64, color_fix="none")
    assert torch.equal(capped, pack.lib.upscale(student, img.movedim(-1, 1), t=0.7, seed=1, tile=32, overlap=16).movedim(1, -1))


# --------------------------------------------------------------------------- OFTSR as Upscale Model


def upscale_with_model(comfy, upscale_model, img: torch.Tensor, tile: int) -> torch.Tensor:
    """What core Upscale Image (using Model) does with an UPSCALE_MODEL: move it, call it
    image by image on (1, C, h, w) tiles of `tile` input pixels (no overlap here), stitch
    into three channels, clamp, move it back."""
    upscale_model.to(comfy.model_management.get_torch_device())
    x, s = img.movedim(-1, 1), upscale_model.scale
    out = torch.zeros(x.shape[0], 3, x.shape[2] * s, x.shape[3] * s)
    for b in range(x.shape[0]):
        for y in range(0, x.shape[2], tile):
            for x0 in range(0, x.shape[3], tile):
                part = upscale_model(x[b:b + 1, :, y:y + tile, x0:x0 + tile])
                out[b:b + 1, :, y * s:y * s + part.shape[2], x0 * s:x0 * s + part.shape[3]] = part
    upscale_model.to("cpu")
    return out.clamp(0, 1).movedim(1, -1)


def test_as_upscale_model_schema(pack):
    inputs = inputs_of(pack, "OFTSRAsUpscaleModel")
    assert list(inputs) == ["model", "t", "seed", "tile", "overlap"]
    assert inputs["seed"].control_after_generate is False  # a model node that re-rolled would redo all downstream
    assert inputs["model"].io_type == "OFTSR_MODEL" and inputs["t"].display_mode is comfy_stubs.NumberDisplay.slider
    assert (inputs["t"].default, inputs["tile"].default, inputs["overlap"].default) == (0.5, 512, 64)


@pytest.mark.filterwarnings("ignore:float16 on a CPU is emulated")  # half(), as other nodes call it
def test_as_upscale_model_runs_the_student_where_upscale_image_calls_it(comfy, pack, student):
    node = pack.nodes["OFTSRAsUpscaleModel"]
    wrapped = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.7, seed=5, tile=0, overlap=64)
    assert (wrapped.scale, wrapped.model, wrapped.input_channels, wrapped.output_channels) == (4, student, 3, 3)
    assert comfy.model_management.module_size(wrapped.model) == comfy.model_management.module_size(student)

    img = image(b=2, h=8, w=12)
    out = upscale_with_model(comfy, wrapped, img, tile=64)  # one consumer tile: the whole image
    expected = torch.cat([run(pack, "OFTSRUpscale", model=student, image=img[i:i + 1], t=0.7, seed=5, tile=0,
                              overlap=64, color_fix="none") for i in range(2)])  # image by image: the same noise
    assert out.shape == (2, 32, 48, 3) and torch.allclose(out, expected, atol=1e-6)
    assert (out - run(pack, "OFTSRUpscale", model=student, image=img, t=0.0, seed=5, tile=0, overlap=64,
                      color_fix="none")).abs().mean() > 1e-3  # its t is the one it was made with

    # the consumer's own tiles: each is one library call (the noise restarts per tile)
    tiles = upscale_with_model(comfy, wrapped, img, tile=4)
    assert tiles.shape == out.shape and (tiles - out).abs().mean() > 1e-3
    assert torch.allclose(tiles[:, :16, :16], upscale_with_model(comfy, wrapped, img[:, :4, :4], tile=4), atol=1e-6)

    # the channels and dtypes consumers pass
    x = img[:1].movedim(-1, 1)
    rgb = wrapped(x)
    assert rgb.shape == (1, 3, 32, 48) and rgb.dtype == torch.float32
    alpha = torch.full_like(x[:, :1], 0.5)
    assert torch.allclose(wrapped(torch.cat([x, alpha], 1)), rgb, atol=1e-6)  # RGBA: its RGB, 3 channels back
    gray = wrapped(x[:, :1])
    assert gray.shape == (1, 3, 32, 48) and torch.equal(gray[:, 0], gray[:, 2])
    assert torch.equal(wrapped(torch.cat([x[:, :1], alpha], 1)), gray)  # gray + alpha: its gray, 3 channels back
    half = wrapped(x.half())
    assert half.dtype == torch.float16 and (half.float() - rgb).abs().max() < 2e-3
    # what other UPSCALE_MODEL nodes call: half() / float() set the network's precision
    assert wrapped.supports_half and wrapped.half() is wrapped and wrapped.dtype == torch.float16
    assert (wrapped(x) - rgb).abs().max() < 0.02
    assert wrapped.float() is wrapped and wrapped.dtype == torch.float32  # (the weights keep their fp16 rounding)
    assert (wrapped(x) - rgb).abs().max() < 0.02

    # what it refuses, before anything runs
    with pytest.raises(ValueError, match="needs a one-step student model, but this model is a teacher"):
        node.execute(model=load(pack, "tiny-teacher.safetensors"), t=0.5, seed=0, tile=512, overlap=64)
    with pytest.raises(ValueError, match="t must be"):
        node.execute(model=student, t=1.5, seed=0, tile=512, overlap=64)
    with pytest.raises(ValueError, match="tile must be 0"):
        node.execute(model=student, t=0.5, seed=0, tile=16, overlap=64)
    # an overlap above half the tile is capped, as in the other nodes, not refused inside the consumer
    capped = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.7, seed=5, tile=32, overlap=64)
    assert (capped.tile, capped.overlap) == (32, 16)
    assert torch.equal(capped(x), pack.lib.upscale(student, x, t=0.7, seed=5, tile=32, overlap=16))


def test_as_upscale_model_halves_its_tile_when_memory_runs_out(comfy, pack, student, monkeypatch):
    """On out-of-memory the call is retried with the inner tile halved, down to 128 px, as
    OFTSR Upscale does (the consumer's own retry only shrinks its tile); the smaller tile
    is kept for the next calls."""
    wrapped = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.5, seed=0, tile=512, overlap=64)
    module = sys.modules[f"{PACK}.nodes.upscale_model"]
    library_upscale, tried = module.upscale, []

    def fits_256(model, image, *, tile, **kwargs):
        tried.append(tile)
        if tile is None or tile > 256:  # None: the whole image at once
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return library_upscale(model, image, tile=tile, **kwargs)

    monkeypatch.setattr(module, "upscale", fits_256)
    x = image(h=256, w=256).movedim(-1, 1)  # 1024 px of output
    out = wrapped(x)
    assert tried == [512, 256] and (wrapped.tile, wrapped.overlap) == (256, 64)
    assert torch.equal(out, library_upscale(student, x, t=0.5, seed=0, tile=256, overlap=64))
    assert comfy.model_management.empty_cache_calls >= 1

    def never_fits(model, image, *, tile, **kwargs):
        tried.append(tile)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    tried.clear()
    monkeypatch.setattr(module, "upscale", never_fits)
    with pytest.raises(RuntimeError, match="out of memory"):
        wrapped(x)
    assert tried == [256, 128] and (wrapped.tile, wrapped.overlap) == (128, 32)
    # from no tiling: the widget's overlap, not none (seams)
    tried.clear()
    monkeypatch.setattr(module, "upscale", fits_256)
    whole = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.5, seed=0, tile=0, overlap=48)
    out = whole(image(h=128, w=128).movedim(-1, 1))  # 512 px: once whole, then 256 px tiles
    assert tried == [None, 256] and (whole.tile, whole.overlap) == (256, 48)
    assert torch.equal(out, library_upscale(student, image(h=128, w=128).movedim(-1, 1), t=0.5, seed=0, tile=256,
                                            overlap=48))
    monkeypatch.setattr(module, "upscale", lambda *a, **k: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(ValueError, match="not memory"):
        wrapped(x)


def test_as_upscale_model_stops_on_cancel(comfy, pack, student):
    wrapped = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.5, seed=0, tile=32, overlap=8)
    comfy.model_management.interrupt_processing = True
    with pytest.raises(comfy_stubs.InterruptProcessingException):
        wrapped(image(h=16, w=16).movedim(-1, 1))


def test_rgba_keeps_alpha(comfy, pack, student):
    rgb = image()
    alpha = torch.linspace(0.2, 0.9, 8).view(1, 1, 8, 1).expand(1, 8, 8, 1)
    kw = dict(model=student, t=0.5, seed=0, tile=0, overlap=64, color_fix="wavelet")
    out = run(pack, "OFTSRUpscale", image=torch.cat([rgb, alpha], -1), **kw)
    assert out.shape == (1, 32, 32, 4)
    up = F.interpolate(alpha.movedim(-1, 1), size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out[..., 3:], up, atol=1e-6)
    assert (out[..., 3].mean(dim=(0, 2)) - 0.55).abs().max() < 0.01  # the gradient runs down the rows
    rgb_only = run(pack, "OFTSRUpscale", image=rgb, **kw)
    assert torch.allclose(out[..., :3], rgb_only, atol=1e-6)  # alpha does not leak into the colours


def test_progress_counts_tiles(comfy, pack, student):
    run(pack, "OFTSRUpscale", model=student, image=image(h=12, w=12), t=0.5, seed=0, tile=32, overlap=8,
        color_fix="none")
    (bar,) = bars(comfy)  # 48 px output, 32 px tiles overlapping 8: 2 x 2 tiles
    assert bar.total == 4 and bar.updates == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert comfy.model_management.interrupt_checks >= 4  # Cancel is checked at every tile


def test_a_batch_of_frames_is_computed_frame_by_frame(comfy, pack, student):
    """A video's frames: progress counts every frame's tiles, Cancel stops within the first
    frame (the whole batch went through each tile at once, so Cancel came after all of
    it), one frame's tile is in memory at a time, and the result is the batch's result."""
    frames = image(b=4, h=12, w=12)
    calls, velocity = [], student.velocity
    student.velocity = lambda x, x_lr, t: (calls.append(x.shape[0]), velocity(x, x_lr, t))[1]
    kw = dict(model=student, t=0.5, seed=7, tile=32, overlap=8, color_fix="none")
    out = run(pack, "OFTSRUpscale", image=frames, **kw)
    (bar,) = bars(comfy)  # 4 frames of 2 x 2 tiles
    assert bar.total == 16 and bar.updates == [(i, 16) for i in range(1, 17)] and calls == [1] * 16
    whole = pack.lib.upscale(student, frames.movedim(-1, 1), t=0.5, seed=7, tile=32, overlap=8).movedim(1, -1)
    assert torch.equal(out, whole)
    alone = pack.lib.upscale(student, frames[:1].movedim(-1, 1), t=0.5, seed=7, tile=32, overlap=8).movedim(1, -1)
    assert torch.allclose(out[:1], alone, atol=1e-6)  # frame 0 is what it is alone; frame i draws (seed, i)
    mm = comfy.model_management
    comfy.utils.PROGRESS_BAR_HOOK = lambda value, total, preview: value == 2 and mm.interrupt_current_processing()
    calls.clear()
    with pytest.raises(comfy_stubs.InterruptProcessingException):
        run(pack, "OFTSRUpscale", image=frames, **kw)
    assert calls == [1, 1, 1]  # pressed at tile 2, seen at the next: within the first frame, not after all 16
    memory = sys.modules[f"{PACK}.nodes.memory"]
    assert memory.estimate_memory(student, 4, 48, 48, 32, per_image=True) < memory.estimate_memory(student, 4, 48, 48, 32)
    # small frames share a network evaluation, as many as one tile's pixels hold: 4 of 32 x 32 in a 64 px tile
    comfy.utils.PROGRESS_BAR_HOOK = None
    calls.clear()
    small = image(b=8, h=8, w=8)
    out = run(pack, "OFTSRUpscale", image=small, **{**kw, "tile": 64})
    assert calls == [4, 4] and bars(comfy)[-1].updates == [(1, 2), (2, 2)]
    whole = pack.lib.upscale(student, small.movedim(-1, 1), t=0.5, seed=7, tile=None).movedim(1, -1)  # all at once
    assert torch.allclose(out, whole, atol=1e-5)


def test_cancel_stops_a_whole_image_within_its_network_evaluation(comfy, pack, student):
    """tile 0: the whole image is one evaluation (minutes on a CPU): Cancel is seen at the
    next block of the network, and the checks are taken off the model afterwards."""
    mm, unet = comfy.model_management, student.unet
    press = unet.time_embed.register_forward_hook(lambda *_: mm.interrupt_current_processing())  # at its start
    checks = mm.interrupt_checks
    try:
        with pytest.raises(comfy_stubs.InterruptProcessingException):
            run(pack, "OFTSRUpscale", model=student, image=image(h=12, w=12), t=0.5, seed=0, tile=0, overlap=0,
                color_fix="none")
    finally:
        press.remove()
    blocks = len(unet.input_blocks) - 1 + 1 + len(unet.output_blocks)  # the first conv is no block
    assert mm.interrupt_checks - checks == 2  # the node's start, then the first block: not after the evaluation
    assert unet.before_block is None  # the check taken off
    checks = mm.interrupt_checks
    run(pack, "OFTSRUpscale", model=student, image=image(h=12, w=12), t=0.5, seed=0, tile=0, overlap=0,
        color_fix="none")
    assert mm.interrupt_checks - checks >= blocks and unet.before_block is None  # every block of the evaluation
    checks = mm.interrupt_checks
    run(pack, "OFTSRUpscale", model=student, image=image(h=12, w=12), t=0.5, seed=0, tile=32, overlap=8,
        color_fix="none")
    assert mm.interrupt_checks - checks < blocks  # tiles: Cancel at every tile, as before


def test_interrupt_propagates_and_unloads(comfy, pack, student):
    mm = comfy.model_management
    comfy.utils.PROGRESS_BAR_HOOK = lambda value, total, preview: mm.interrupt_current_processing()  # Cancel pressed
    moves = []
    original_to = student.to
    student.to = lambda *a, **k: (moves.append(str(a[0] if a else k)), original_to(*a, **k))[1]
    with pytest.raises(comfy_stubs.InterruptProcessingException):
        run(pack, "OFTSRUpscale", model=student, image=image(h=12, w=12), t=0.5, seed=0, tile=32, overlap=8,
            color_fix="none")
    (bar,) = bars(comfy)  # stopped right after the first tile, and not retried
    assert bar.updates == [(1, 4)]
    assert moves == ["cpu", "cpu"]  # to the torch device, then back to the offload device


# --------------------------------------------------------------------------- out of memory


def fail_above(model, limit: int, calls: list, error=None) -> None:
    """A stand-in velocity: raises `error` (default CUDA's out-of-memory error) for crops
    larger than `limit`, else returns a cheap function of its inputs."""

    def velocity(x, x_lr, t):
        calls.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > limit:
            raise error or torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[-1]} MiB")
        return (x_lr - x) * (1 + t) + 0.1 * torch.tanh(3 * x)

    model.velocity = velocity


def test_oom_halves_the_tile_and_retries(comfy, pack, student):
    img = image(h=64, w=64)  # 256 px output
    calls = []
    fail_above(student, 128, calls)
    out = run(pack, "OFTSRUpscale", model=student, image=img, t=0.5, seed=2, tile=512, overlap=64, color_fix="none")
    # tile 512 covers the image; next is tile 128: three even tiles of 112 per side (see oftsr.tiling.tile_layout)
    assert calls[0] == (256, 256) and set(calls[1:]) == {(112, 112)}
    # the retry is the run with tile 128 (the overlap capped at a quarter of the tile)
    expected = pack.lib.upscale(student, img.movedim(-1, 1), t=0.5, seed=2, tile=128, overlap=32).movedim(1, -1)
    assert torch.equal(out, expected) and out.shape == (1, 256, 256, 3)
    first, second = bars(comfy)
    assert first.total == 1 and first.updates == []
    assert second.total == 9 and second.updates == [(i, 9) for i in range(1, 10)]  # 3 x 3 tiles of at most 128
    mm = comfy.model_management
    assert mm.empty_cache_calls == 1 and len(mm.freed) == 2 and mm.freed[1][0] < mm.freed[0][0]
    assert student.device.type == "cpu"

    calls.clear()
    out = run(pack, "OFTSRUpscale", model=student, image=img, t=0.5, seed=2, tile=0, overlap=64, color_fix="none")
    # no tiling: the whole image, then tile 128 with the widget's overlap (a quarter of the tile), not none: no seams
    assert calls[0] == (256, 256) and set(calls[1:]) == {(112, 112)}
    assert torch.equal(out, expected)


@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "68719476736 bytes. Error code 12 (Cannot allocate memory)",
    "[enforce fail at C:\\actions-runner\\alloc_cpu.cpp:72] data. DefaultCPUAllocator: not enough memory: you "
    "tried to allocate 68719476736 bytes."])
def test_the_cpu_allocators_out_of_memory_is_retried_too(comfy, pack, student, message):
    calls = []
    fail_above(student, 128, calls, RuntimeError(message))
    out = run(pack, "OFTSRUpscale", model=student, image=image(h=64, w=64), t=0.5, seed=2, tile=0, overlap=16,
              color_fix="none")
    assert out.shape == (1, 256, 256, 3)
    assert calls[0] == (256, 256) and set(calls[1:]) == {(96, 96)}  # whole image, then tile 128: 3 x 3 of 96
    expected = pack.lib.upscale(student, image(h=64, w=64).movedim(-1, 1), t=0.5, seed=2, tile=128, overlap=16)
    assert torch.equal(out, expected.movedim(1, -1))  # the widget's overlap kept


def test_oom_below_the_minimum_tile_is_a_clear_error(comfy, pack, student):
    calls = []
    fail_above(student, 64, calls)
    with pytest.raises(ValueError) as e:
        run(pack, "OFTSRUpscale", model=student, image=image(h=64, w=64), t=0.5, seed=0, tile=512, overlap=64,
            color_fix="none")
    message = str(e.value)
    assert message.startswith("OFTSR Upscale: out of memory") and "128-pixel tiles" in message
    assert "smaller batch" in message and "fp16" in message and "--lowvram" in message
    assert calls == [(256, 256), (112, 112)]  # the whole image, then one tile of the 128 layout; never below 128
    assert len(bars(comfy)) == 2 and comfy.model_management.empty_cache_calls == 2


def test_oom_tries_the_smallest_tile_before_giving_up(comfy, pack, student):
    calls = []
    fail_above(student, 150, calls)  # 400 px output: the whole image fails, then the 200 px layout (168 px tiles)
    out = run(pack, "OFTSRUpscale", model=student, image=image(h=100, w=100), t=0.5, seed=0, tile=512, overlap=64,
              color_fix="none")
    assert out.shape == (1, 400, 400, 3)
    assert calls[0] == (400, 400) and calls[1] == (168, 168) and max(max(c) for c in calls[2:]) <= 128


def test_a_tile_more_than_is_free_starts_smaller(comfy, pack, student, monkeypatch, caplog):
    """With less free than the whole image needs (estimate_memory, beyond the weights), the
    run starts at the tile an out-of-memory would have led to, with no failed try first: on a
    CPU a run past the free memory swaps or is killed by the system rather than failing."""
    img = image(h=64, w=64)  # 256 px output
    memory, calls = pack.memory, []
    fail_above(student, 10_000, calls)  # never out of memory: only the estimate decides
    weights = comfy.model_management.module_size(student)
    need = {t: memory.estimate_memory(student, 1, 256, 256, t, per_image=True) - weights for t in (None, 128)}
    assert need[128] < need[None]
    monkeypatch.setattr(memory, "available_memory", lambda device: need[128])
    with caplog.at_level("WARNING"):
        out = run(pack, "OFTSRUpscale", model=student, image=img, t=0.5, seed=2, tile=0, overlap=64,
                  color_fix="none")
    assert set(calls) == {(112, 112)}  # 3 x 3 tiles of the 128 layout from the start, the overlap a quarter
    expected = pack.lib.upscale(student, img.movedim(-1, 1), t=0.5, seed=2, tile=128, overlap=32).movedim(1, -1)
    assert torch.equal(out, expected)
    assert "OFTSR Upscale: the whole image need about" in caplog.text and "starting with 128-pixel tiles" in caplog.text
    assert comfy.model_management.empty_cache_calls == 0 and len(bars(comfy)) == 1

    calls.clear()
    caplog.clear()
    monkeypatch.setattr(memory, "available_memory", lambda device: need[None])  # enough: the widgets' tiling
    run(pack, "OFTSRUpscale", model=student, image=img, t=0.5, seed=2, tile=0, overlap=64, color_fix="none")
    assert calls == [(256, 256)] and "starting with" not in caplog.text

    calls.clear()
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)  # nothing fits: the smallest tile is tried
    out = run(pack, "OFTSRUpscale", model=student, image=image(h=100, w=100), t=0.5, seed=2, tile=512, overlap=64,
              color_fix="none")
    assert out.shape == (1, 400, 400, 3) and max(max(c) for c in calls) <= 128


def test_as_upscale_model_starts_smaller_where_less_is_free(comfy, pack, student, monkeypatch, caplog):
    wrapped = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.5, seed=0, tile=512, overlap=64)
    module, tried = sys.modules[f"{PACK}.nodes.upscale_model"], []
    library_upscale = module.upscale

    def recording(model, image, *, tile, **kwargs):
        tried.append(tile)
        return library_upscale(model, image, tile=tile, **kwargs)

    monkeypatch.setattr(module, "upscale", recording)
    monkeypatch.setattr(pack.memory, "available_memory", lambda device: 1)
    x = image(h=64, w=64).movedim(-1, 1)  # 256 px of output: 512 covers it, then 128 (the smallest)
    with caplog.at_level("WARNING"):
        assert torch.equal(wrapped(x), library_upscale(student, x, t=0.5, seed=0, tile=128, overlap=32))
        wrapped(x)  # the consumer's next tile starts where the last one did: said once
    assert tried == [128, 128] and (wrapped.tile, wrapped.overlap) == (128, 32)
    assert caplog.text.count("OFTSR as Upscale Model: 512-pixel tiles need about") == 1

    fresh = run(pack, "OFTSRAsUpscaleModel", model=student, t=0.5, seed=0, tile=512, overlap=64)
    monkeypatch.setattr(pack.memory, "available_memory", lambda device: None)  # cannot be told: as the widgets say
    fresh(x)
    assert tried == [128, 128, 512]


def test_oom_with_frames_sharing_a_tile_takes_fewer_frames_at_once(comfy, pack, student):
    """16 frames of 128 px output share one 512 px tile: out of memory there, the halved
    tile takes 4 at a time (the frames alone, each smaller than the tile, gave up at once)."""
    calls, velocity = [], student.velocity

    def limited(x, x_lr, t):
        calls.append(x.shape[0])
        if x.shape[0] * x.shape[-2] * x.shape[-1] > 256 * 256:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return velocity(x, x_lr, t)

    student.velocity = limited
    frames = image(b=16, h=32, w=32)
    out = run(pack, "OFTSRUpscale", model=student, image=frames, t=0.5, seed=2, tile=512, overlap=64,
              color_fix="none")
    assert calls == [16, 4, 4, 4, 4]
    expected = pack.lib.upscale(student, frames.movedim(-1, 1), t=0.5, seed=2, tile=256, overlap=64).movedim(1, -1)
    assert torch.equal(out, expected)


def test_a_linked_tile_out_of_range_is_refused_by_every_node(comfy, pack, student, teacher):
    """A tile from a link is not in `validate_inputs`' hands (it arrives as None there):
    each node refuses it when it runs, with the widget's message, before any evaluation."""
    img, mask = image(), torch.ones(8, 8)
    for node_id, model, extra in [("OFTSRUpscale", student, {"t": 0.5}), ("OFTSRTSweep", student, {"t_values": "0, 1"}),
                                  ("OFTSRTeacherSampler", teacher, {"steps": 2, "solver": "euler"}),
                                  ("OFTSRRegionalTradeoff", student, {"mask": mask, "t_inside": 1.0, "t_outside": 0.0})]:
        for tile in (16, 9000):
            with pytest.raises(ValueError, match=f"tile must be 0 .* or 32 to 8192 pixels, got {tile}"):
                run(pack, node_id, model=model, image=img, seed=0, tile=tile, overlap=8, color_fix="none", **extra)
    assert bars(comfy) == []


def test_other_errors_are_not_retried(comfy, pack, student):
    def broken(x, x_lr, t):
        raise RuntimeError("some other failure")

    student.velocity = broken
    with pytest.raises(RuntimeError, match="some other failure"):
        run(pack, "OFTSRUpscale", model=student, image=image(), t=0.5, seed=0, tile=512, overlap=64, color_fix="none")
    assert len(bars(comfy)) == 1


# --------------------------------------------------------------------------- roles


def test_wrong_role_is_a_clear_error(comfy, pack, student, teacher):
    common = dict(image=image(), seed=0, tile=0, overlap=0, color_fix="none")
    for node_id, extra in [("OFTSRUpscale", {"t": 0.5}), ("OFTSRTSweep", {"t_values": "0, 1"}),
                           ("OFTSRRegionalTradeoff", {"mask": torch.ones(8, 8), "t_inside": 1.0, "t_outside": 0.0})]:
        with pytest.raises(ValueError, match="needs a one-step student model, but this model is a teacher.*Teacher Sampler"):
            run(pack, node_id, model=teacher, **common, **extra)
    with pytest.raises(ValueError, match="needs a teacher model, but this model is a one-step student.*OFTSR Upscale"):
        run(pack, "OFTSRTeacherSampler", model=student, steps=2, solver="euler", **common)
    with pytest.raises(ValueError, match="OFTSR_MODEL from the Load OFTSR Model node"):
        run(pack, "OFTSRUpscale", model="not a model", t=0.5, **common)
    assert bars(comfy) == [] and comfy.model_management.freed == []  # nothing ran
    # the library's own check also reaches the user (a role changed after loading)
    teacher.role = "student"
    with pytest.raises(ValueError, match="needs a teacher model"):
        run(pack, "OFTSRTeacherSampler", model=teacher, steps=2, solver="euler", **common)


# --------------------------------------------------------------------------- teacher


def test_teacher_sampler(comfy, pack, teacher):
    img = image(b=2)
    out = run(pack, "OFTSRTeacherSampler", model=teacher, image=img, steps=3, solver="euler", seed=5, tile=0, overlap=0,
              color_fix="none")
    assert out.shape == (2, 32, 32, 3) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    expected = pack.lib.sample(teacher, img.movedim(-1, 1), steps=3, solver="euler", seed=5)
    assert torch.equal(out, expected.movedim(1, -1))
    (bar,) = bars(comfy)
    assert bar.updates == [(1, 3), (2, 3), (3, 3), (3, 3)]  # a tick per evaluation (one tile), then the last preview
    assert bar.previews[-1] is not None
    one_step = pack.lib.upscale(pack.lib.OFTSRModel(teacher.unet, sigma_p=0.2, role="student", scale=4), img.movedim(-1, 1),
                                t=0.0, seed=5).movedim(1, -1)
    assert (out - one_step).abs().mean() > 1e-3  # three steps are not one

    calls = []
    fail_above(teacher, 10_000, calls)  # a cheap smooth field for the adaptive solver
    run(pack, "OFTSRTeacherSampler", model=teacher, image=image(), steps=2, solver="adaptive", seed=0, tile=0,
        overlap=0, color_fix="none")
    bar = bars(comfy)[-1]
    values = [v for v, _ in bar.updates]
    assert bar.total == 100 and values == sorted(values) and bar.updates[-1] == (100, 100)
    assert len(values) == len(calls) + 1  # one tick per evaluation, then the end


def test_teacher_progress_moves_tile_by_tile(comfy, pack, teacher):
    """A step of a big image is many tiles: the bar moves at every tile of every network
    evaluation (midpoint, 2 steps: 3 evaluations of 2 x 2 tiles), not once per step."""
    run(pack, "OFTSRTeacherSampler", model=teacher, image=image(h=12, w=12), steps=2, solver="midpoint", seed=0,
        tile=32, overlap=8, color_fix="none")
    (bar,) = bars(comfy)
    assert bar.total == 12 and bar.updates[:12] == [(i, 12) for i in range(1, 13)]
    assert set(bar.updates[12:]) <= {(12, 12)}  # at most the last preview after them


def test_the_adaptive_solvers_bar_keeps_moving(comfy, pack):
    """Its length is unknown: the bar rises with every evaluation of a long run (70 here),
    never reaching the end before the run does."""
    progress = pack.progress.Progress(1, pack.progress.ADAPTIVE_PROGRESS_UNITS)
    tick = progress.callback()
    for i in range(1, 71):
        tick(i, 0)
    values = [v for v, _ in bars(comfy)[-1].updates]
    assert values[29] < values[44] < values[59] < 100 and values[59] >= 85  # after 30, 45 and 60 evaluations
    assert max(values) == values[-1] < 100
    progress.finish()
    assert bars(comfy)[-1].updates[-1] == (100, 100)


def test_teacher_sampler_shows_a_preview_at_each_step(comfy, pack, teacher):
    img = image(b=2, h=8, w=12)
    out = run(pack, "OFTSRTeacherSampler", model=teacher, image=img, steps=3, solver="midpoint", seed=2, tile=32,
              overlap=8, color_fix="none")
    (bar,) = bars(comfy)  # 5 evaluations of 2 tiles; each evaluation's preview comes with the next tick
    with_preview = [k for k, p in enumerate(bar.previews) if p is not None]
    assert len(bar.previews) == 11 and with_preview == [2, 4, 6, 8, 10]  # the last, the result's, when the run ends
    kind, picture, size = bar.previews[-1]
    assert kind == "JPEG" and size == 512 and picture.size == (48, 32) and picture.mode == "RGB"
    # the last evaluation's straight-line estimate is the result (the last step is Euler), of the first image
    shown = torch.from_numpy(np.array(picture)).float() / 255
    assert (shown - out[0]).abs().max() <= 0.5 / 255 + 1e-6
    first = torch.from_numpy(np.array(bar.previews[with_preview[0]][1])).float() / 255
    assert (first - out[0]).abs().mean() > 1e-3  # the first evaluation's estimate is not yet the result


def test_teacher_previews_follow_comfyuis_preview_settings(comfy, pack, teacher):
    """`--preview-method none` (ComfyUI's default, or the frontend's per-prompt setting)
    turns the previews off, as for ComfyUI's samplers; `--preview-size` sizes them."""
    args = comfy.cli_args.args
    args.preview_method = comfy.cli_args.LatentPreviewMethod.NoPreviews
    out_off = run(pack, "OFTSRTeacherSampler", model=teacher, image=image(h=40, w=60), steps=2, solver="euler", seed=1,
                  tile=0, overlap=0, color_fix="none")
    bar = bars(comfy)[-1]
    assert bar.previews == [None, None] and bar.updates == [(1, 2), (2, 2)]  # progress still ticks

    args.preview_method, args.preview_size = comfy.cli_args.LatentPreviewMethod.Latent2RGB, 64
    out_on = run(pack, "OFTSRTeacherSampler", model=teacher, image=image(h=40, w=60), steps=2, solver="euler", seed=1,
                 tile=0, overlap=0, color_fix="none")
    shown = [p for p in bars(comfy)[-1].previews if p is not None]
    assert len(shown) == 2 and all(size == 64 and picture.size == (64, 43) for _, picture, size in shown)
    assert torch.equal(out_off, out_on)  # previews only watch


def test_teacher_cancel_stops_between_the_tiles_of_a_step(comfy, pack, teacher):
    mm = comfy.model_management
    calls = []
    fail_above(teacher, 10_000, calls)
    inner = teacher.velocity

    def velocity(x, x_lr, t):  # Cancel pressed during the first tile
        mm.interrupt_current_processing()
        return inner(x, x_lr, t)

    teacher.velocity = velocity
    with pytest.raises(comfy_stubs.InterruptProcessingException):
        run(pack, "OFTSRTeacherSampler", model=teacher, image=image(h=12, w=12), steps=4, solver="midpoint", seed=0,
            tile=32, overlap=8, color_fix="none")
    assert len(calls) == 1  # not the step's other three tiles


# --------------------------------------------------------------------------- t-sweep


def test_t_sweep_parsing(pack):
    parse = pack.sweep.parse_t_values
    assert parse("0, 0.25, 0.5, 0.75, 1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse(" 0.5 ") == [0.5]
    assert parse("1e-1,.5,\n1.\n0") == [0.1, 0.5, 1.0, 0.0]
    assert parse("0, 1 ,") == parse("0, 1,\n") == [0.0, 1.0]  # a comma at the end, as typed
    bad = {
        "": "empty", "   ": "empty", "0,,1": "entry 2 is empty", "0, 1,,": "entry 3 is empty", ",": "entry 1 is empty",
        "0, abc": r"entry 2 \('abc'\) is not a number", "0.5 1": r"entry 1 \('0.5 1'\) is not a number",
        "nan": "not a number", "inf": "not a number", "1_0": "not a number", "0x1": "not a number",
        "0, 1.5": r"entry 2 \(1.5\) is outside \[0, 1\]", "-0.1": "outside",
        ",".join(str(k / 100) for k in range(65)): "at most 64", "0.5, 1, 0.50": r"entry 3 \(0.50\) repeats entry 1",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            parse(text)
    node = pack.nodes["OFTSRTSweep"]
    assert node.validate_inputs(t_values="0, 1") is True
    assert node.validate_inputs(t_values=None) is True  # linked: checked at run time
    assert "outside [0, 1]" in node.validate_inputs(t_values="0, 2")


def test_t_sweep_grid_is_the_labelled_sheet_of_its_images(pack, student):
    img = image(b=2, h=10, w=16)
    out, grid = run_outputs(pack, "OFTSRTSweep", model=student, image=img, t_values="0, 0.5, 1", seed=3, tile=0,
                            overlap=0, color_fix="none")
    assert out.shape == (6, 40, 64, 3)
    expected = labelled_grid(out.movedim(-1, 1).unflatten(0, (2, 3)), ["t = 0", "t = 0.5", "t = 1"])
    assert grid.shape == (1, *expected.movedim(0, -1).shape) and grid.dtype == torch.float32
    assert torch.equal(grid[0], expected.movedim(0, -1).to(grid.device))
    # row 1 (the second input), column 2 (t = 1) holds that upscale, below the label band
    gap, band = 2, grid.shape[1] - 2 * 40 - 2
    assert torch.equal(grid[0, band + 40 + gap:band + 80 + gap, 2 * (64 + gap):2 * (64 + gap) + 64], out[5])


def test_t_sweep_returns_one_image_per_t(comfy, pack, student):
    img = image(b=2, h=12, w=12)
    out = run(pack, "OFTSRTSweep", model=student, image=img, t_values="0.25,\n1", seed=7, tile=32, overlap=8,
              color_fix="none")
    assert out.shape == (4, 48, 48, 3) and out.dtype == torch.float32
    assert bars(comfy)[0].total == 16 and bars(comfy)[0].updates[-1] == (16, 16)  # 2 passes x 2 images x 4 tiles
    for k, t in enumerate([0.25, 1.0]):
        single = pack.lib.upscale(student, img.movedim(-1, 1), t=t, seed=7, tile=32, overlap=8).movedim(1, -1)
        assert torch.equal(out[k], single[0]) and torch.equal(out[2 + k], single[1])  # image-major order
    assert (out[0] - out[1]).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="entry 2"):
        run(pack, "OFTSRTSweep", model=student, image=img, t_values="0, 1.5", seed=7, tile=0, overlap=0,
            color_fix="none")


# --------------------------------------------------------------------------- regional trade-off


def test_regional_tradeoff_blends_the_two_ends(comfy, pack, student):
    img = image(h=12, w=12)
    mask = torch.zeros(12, 12)
    mask[:, :6] = 1  # left half: realism
    kw = dict(model=student, image=img, seed=9, tile=32, overlap=8, color_fix="none")
    out = run(pack, "OFTSRRegionalTradeoff", mask=mask, t_inside=1.0, t_outside=0.0, **kw)
    assert out.shape == (1, 48, 48, 3)
    assert bars(comfy)[0].total == 8 and bars(comfy)[0].updates[-1] == (8, 8)  # two passes x 4 tiles
    x = img.movedim(-1, 1)
    real = pack.lib.upscale(student, x, t=1.0, seed=9, tile=32, overlap=8).movedim(1, -1)
    faithful = pack.lib.upscale(student, x, t=0.0, seed=9, tile=32, overlap=8).movedim(1, -1)
    assert (real - faithful).abs().mean() > 1e-3
    assert torch.equal(out[:, :, :20], real[:, :, :20])  # mask 1 (resized bilinearly: exact away from the edge)
    assert torch.equal(out[:, :, 28:], faithful[:, :, 28:])  # mask 0
    lo, hi = torch.minimum(real, faithful), torch.maximum(real, faithful)
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()  # a per-pixel blend in between

    # [B, H, W] at another size: a mask at output size is used as it is
    big = torch.zeros(1, 48, 48)
    big[..., :24] = 1
    out_big = run(pack, "OFTSRRegionalTradeoff", mask=big, t_inside=1.0, t_outside=0.0, **kw)
    assert torch.equal(out_big[:, :, :24], real[:, :, :24]) and torch.equal(out_big[:, :, 24:], faithful[:, :, 24:])
    kw.update(image=image(), tile=0)
    uniform = run(pack, "OFTSRRegionalTradeoff", mask=torch.ones(1, 5, 7), t_inside=0.3, t_outside=0.9, **kw)
    assert torch.equal(uniform, run(pack, "OFTSRUpscale", t=0.3, **kw))


def test_regional_mask_errors(comfy, pack, student):
    kw = dict(model=student, image=image(b=2), seed=0, tile=0, overlap=0, color_fix="none", t_inside=1.0, t_outside=0.0)
    with pytest.raises(ValueError, match="mask batch 3 must be 1 or the image batch 2"):
        run(pack, "OFTSRRegionalTradeoff", mask=torch.ones(3, 8, 8), **kw)
    with pytest.raises(ValueError, match="mask must be"):
        run(pack, "OFTSRRegionalTradeoff", mask=torch.ones(8), **kw)
    per_image = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])
    out = run(pack, "OFTSRRegionalTradeoff", mask=per_image, **kw)
    x = kw["image"].movedim(-1, 1)
    assert torch.equal(out[0], pack.lib.upscale(student, x, t=1.0, seed=0)[0].movedim(0, -1))
    assert torch.equal(out[1], pack.lib.upscale(student, x, t=0.0, seed=0)[1].movedim(0, -1))


def test_regional_mask_of_another_aspect_is_stretched_with_a_warning(comfy, pack, student, caplog):
    kw = dict(model=student, image=image(h=8, w=8), seed=0, tile=0, overlap=0, color_fix="none", t_inside=1.0,
              t_outside=0.0)
    with caplog.at_level("WARNING"):
        run(pack, "OFTSRRegionalTradeoff", mask=torch.ones(1, 5, 5), **kw)  # same aspect, another size: quiet
    assert "aspect" not in caplog.text
    # a constant mask, and bands or a ramp (the shipped workflow's mask), mean the same stretched: quiet
    bands = torch.zeros(1, 40, 64)
    bands[:, 24:] = 1  # realism in the bottom rows
    ramp = torch.linspace(0, 1, 64).expand(1, 8, 64)
    for mask in (torch.ones(1, 8, 64), torch.zeros(1, 64, 64)[:, :8], bands, ramp):
        with caplog.at_level("WARNING"):
            out = run(pack, "OFTSRRegionalTradeoff", mask=mask, **kw)
        assert "aspect" not in caplog.text and out.shape == (1, 32, 32, 3)
    shape = torch.zeros(1, 8, 64)
    shape[:, 2:6, 20:40] = 1  # a painted patch would come out squashed: said
    with caplog.at_level("WARNING"):
        out = run(pack, "OFTSRRegionalTradeoff", mask=shape, **kw)
    assert "the mask (64x8) has another aspect ratio than the output (32x32)" in caplog.text
    assert out.shape == (1, 32, 32, 3)


def test_a_one_channel_image_comes_back_as_three_for_save_image(comfy, pack, student, teacher):
    """ComfyUI's IMAGE is RGB: a one-channel IMAGE from another node gives three equal
    channels (Save Image cannot take one), the gray result."""
    gray = image(seed=3, c=1)
    out = run(pack, "OFTSRUpscale", model=student, image=gray, t=1.0, seed=0, tile=0, overlap=0, color_fix="none")
    assert out.shape == (1, 32, 32, 3) and torch.equal(out[..., 0], out[..., 2])
    lib = pack.lib.upscale(student, gray.movedim(-1, 1), t=1.0, seed=0)
    assert torch.equal(out[..., 0], lib[:, 0])
    sweep, grid = run_outputs(pack, "OFTSRTSweep", model=student, image=gray, t_values="0, 1", seed=0, tile=0,
                              overlap=0, color_fix="none")
    assert sweep.shape == (2, 32, 32, 3) and grid.shape[-1] == 3
    hq = run(pack, "OFTSRTeacherSampler", model=teacher, image=gray, steps=1, solver="euler", seed=0, tile=0,
             overlap=0, color_fix="none")
    assert hq.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("objective", ["flowsr", "fluxsr"])
def test_t_nodes_refuse_a_fixed_point_student(comfy, pack, student, objective):
    # inside and outside (or every t of a sweep) would be the same image: say so instead
    fixed = pack.lib.OFTSRModel(student.unet, sigma_p=0.2, role="student", scale=4, objective=objective)
    kw = dict(model=fixed, image=image(), seed=0, tile=0, overlap=0, color_fix="none")
    message = f"needs an OFTSR student with a t slider, but this student was distilled with {objective}"
    with pytest.raises(ValueError, match=f"OFTSR Regional Trade-off {message}.*Use OFTSR Upscale"):
        run(pack, "OFTSRRegionalTradeoff", mask=torch.ones(8, 8), t_inside=1.0, t_outside=0.0, **kw)
    with pytest.raises(ValueError, match=f"OFTSR t-Sweep {message}.*Use OFTSR Upscale"):
        run(pack, "OFTSRTSweep", t_values="0, 1", **kw)
    assert bars(comfy) == []  # refused before any work


# --------------------------------------------------------------------------- colour correction


def test_colour_functions_restore_the_reference_colour(pack):
    color = pack.color
    ref = 0.2 + 0.6 * smooth_image(16, 16, seed=3)  # away from 0 and 1, where clamping would move the mean
    detail = 0.05 * torch.sin(torch.arange(64.0) * 2.5).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    target = F.interpolate(ref, scale_factor=4, mode="bicubic")
    shifted = (target * 0.6 + 0.3 + detail).clamp(0, 1)
    shifted[:, 0] *= 0.7  # a colour cast
    for mode, tol in [("adain", 2e-3), ("wavelet", 5e-3)]:
        fixed = color.color_fix(shifted, ref, mode)
        assert fixed.shape == shifted.shape and 0 <= fixed.min() and fixed.max() <= 1
        assert (fixed.mean((0, 2, 3)) - target.mean((0, 2, 3))).abs().max() < tol, mode
        assert (shifted.mean((0, 2, 3)) - target.mean((0, 2, 3))).abs().max() > 0.05
    # the wavelet fix keeps the detail: its high-frequency band is the image's
    fixed = color.wavelet_color_fix(shifted, ref)
    assert torch.allclose(fixed - color.wavelet_lowpass(target), shifted - color.wavelet_lowpass(shifted), atol=1e-5)
    assert torch.equal(color.color_fix(shifted, ref, "none"), shifted)
    rgba = torch.cat([shifted, torch.full((1, 1, 64, 64), 0.4)], 1)
    assert torch.equal(color.color_fix(rgba, torch.cat([ref, torch.ones(1, 1, 16, 16)], 1), "adain")[:, 3:], rgba[:, 3:])
    with pytest.raises(ValueError, match="unknown colour correction"):
        color.color_fix(shifted, ref, "histogram")


def mean_colour(x: torch.Tensor) -> torch.Tensor:
    return x[..., :3].mean(dim=(0, 1, 2))


def test_colour_correction_keeps_the_input_mean(comfy, pack, student):
    img = image(b=2, seed=4)
    kw = dict(model=student, image=img, t=1.0, seed=0, tile=0, overlap=0)
    plain = run(pack, "OFTSRUpscale", color_fix="none", **kw)
    for mode, tol in [("adain", 5e-3), ("wavelet", 1e-2)]:
        out = run(pack, "OFTSRUpscale", color_fix=mode, **kw)
        for b in range(2):
            assert (mean_colour(out[b:b + 1]) - mean_colour(img[b:b + 1])).abs().max() < tol, mode
        assert (out - plain).abs().mean() > 1e-3
    sweep = run(pack, "OFTSRTSweep", model=student, image=img, t_values="0, 1", seed=0, tile=0, overlap=0, color_fix="adain")
    for k in range(4):
        assert (mean_colour(sweep[k:k + 1]) - mean_colour(img[k // 2:k // 2 + 1])).abs().max() < 5e-3


def test_a_gray_photo_comes_back_gray_from_every_node(comfy, pack, student, teacher):
    # LoadImage gives a gray PNG three equal channels; the library's gray path keeps them equal.
    gray = image(seed=7, c=1).expand(-1, -1, -1, 3).contiguous()
    outs = [run(pack, "OFTSRUpscale", model=student, image=gray, t=1.0, seed=0, tile=0, overlap=0, color_fix="none"),
            run(pack, "OFTSRTSweep", model=student, image=gray, t_values="0, 1", seed=0, tile=0, overlap=0,
                color_fix="wavelet"),
            run(pack, "OFTSRRegionalTradeoff", model=student, image=gray, mask=torch.ones(1, 8, 8), t_inside=1.0,
                t_outside=0.0, seed=0, tile=0, overlap=0, color_fix="none"),
            run(pack, "OFTSRTeacherSampler", model=teacher, image=gray, steps=2, solver="euler", seed=0, tile=0,
                overlap=0, color_fix="none")]
    for out in outs:
        assert out.shape[-1] == 3 and out.shape[1:3] == (32, 32)
        assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])
    colour = run(pack, "OFTSRUpscale", model=student, image=image(seed=7), t=1.0, seed=0, tile=0, overlap=0,
                 color_fix="none")
    assert not torch.equal(colour[..., 0], colour[..., 1])  # a colour photo keeps its colour path
