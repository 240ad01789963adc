import json
import math
import os
import pickle
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import oftsr
from oftsr.checkpoint import (CheckpointError, OverrideWarning, infer_config, network_digest, param_shapes,
                              parse_authors_filename)

from conftest import make_model

TEACHER_NAME = "sr_bicubic-sf4-guided_unet-sigma0.2-bs128-lr1e-4-DIV2K-checkpoint_4.pth"
STUDENT_NAME = "sr_bicubic-sf4-guided_unet-sigma0.2-distil-v_boot-solver_rk2_0.5-dt0.05-DIV2K_DIS-checkpoint_5.pth"


def _outputs(model):
    # In one layout (load_model's default is the device's faster one): equal weights, bit-equal outputs.
    model.optimize(channels_last=False)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    return model.velocity(x, x.flip(-1), 0.7)


@pytest.mark.parametrize("preset", ["tiny", "small", "ffhq", "imagenet"])
def test_infer_config_from_shapes_of_each_preset(preset):
    config = oftsr.PRESETS[preset]
    assert infer_config([s for _, s in param_shapes(config)]) == config


def test_infer_config_of_unusual_layouts():
    for config in [oftsr.UNetConfig(64, (1, 1, 2), 2, ()), oftsr.UNetConfig(32, (1, 2, 2, 2), 3, (1, 8)),
                   oftsr.UNetConfig(96, (2,), 1, (1,))]:
        assert infer_config([s for _, s in param_shapes(config)]) == config


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path, student):
    student.step = 1234
    path = tmp_path / "m.safetensors"
    oftsr.save_model(student, path)
    meta = oftsr.read_metadata(path)
    assert meta["format"] == "oftsr" and meta["format_version"] == "1"
    assert meta["role"] == "student" and meta["scale"] == "4" and float(meta["sigma_p"]) == 0.2
    assert meta["degradation"] == "bicubic" and meta["step"] == "1234"
    assert json.loads(meta["architecture"])["channel_mult"] == [1, 2, 4]
    loaded = oftsr.load_model(path)
    assert (loaded.role, loaded.scale, loaded.sigma_p, loaded.step, loaded.config) == ("student", 4, 0.2, 1234, student.config)
    assert torch.equal(_outputs(loaded), _outputs(student))
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away
    for clash in ({"role": "teacher"}, {"format": "other"}, {"scale": 2}):  # the file would lie about the model
        with pytest.raises(ValueError, match=f"metadata {next(iter(clash))}=.* would contradict the model's own"):
            oftsr.save_model(student, tmp_path / "bad.safetensors", **clash)
    assert not (tmp_path / "bad.safetensors").exists()
    oftsr.save_model(student, tmp_path / "same.safetensors", role="student", note="kept")  # agreeing keys are fine
    assert oftsr.read_metadata(tmp_path / "same.safetensors")["note"] == "kept"
    old = os.umask(0o022)
    try:
        oftsr.save_model(student, path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable like any file, not private like a temp file


def test_save_model_refuses_a_pickle_name_a_folder_and_what_is_not_a_model(tmp_path, student):
    for name in ("m.pth", "m.PT", "m.ckpt", "m.bin"):
        with pytest.raises(ValueError, match=rf"{name}: the model is written as safetensors; name it m.safetensors$"):
            oftsr.save_model(student, tmp_path / name)
    with pytest.raises(IsADirectoryError, match=r"is a folder: give the model file's name, such as .*model.safetensors"):
        oftsr.save_model(student, tmp_path)
    with pytest.raises(TypeError, match=r"^save_model needs an OFTSRModel, got UNet"):
        oftsr.save_model(student.unet, tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary file left
    oftsr.save_model(student, tmp_path / "x4")  # no suffix: as a bundled model's name in a folder of models
    assert oftsr.load_model(tmp_path / "x4").role == "student"


SOURCE = 'fotó "1"\n\t\x00 🙂.safetensors'  # JSON escapes, and characters beyond ASCII


def test_the_same_model_saved_twice_gives_the_same_bytes(tmp_path, student):
    # safetensors alone writes the metadata in a random order per save; ours is in key order.
    for i in range(6):
        oftsr.save_model(student, tmp_path / f"{i}.safetensors", dtype=torch.float16, source=SOURCE)
    data = [(tmp_path / f"{i}.safetensors").read_bytes() for i in range(6)]
    assert all(d == data[0] for d in data[1:])
    size = int.from_bytes(data[0][:8], "little")
    assert size % 8 == 0 and len(data[0]) == 8 + size + sum(v.numel() * 2 for v in student.unet.state_dict().values())
    header = json.loads(data[0][8:8 + size])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"]) and header["__metadata__"]["step"] == "0"
    loaded = oftsr.load_model(tmp_path / "0.safetensors")
    assert oftsr.read_metadata(tmp_path / "0.safetensors")["source"] == SOURCE
    half = {k: v.half() for k, v in student.unet.state_dict().items()}
    assert all(torch.equal(v.half(), half[k]) for k, v in loaded.unet.state_dict().items())


def test_overrides_win_over_metadata(tmp_path, student):
    oftsr.save_model(student, tmp_path / "m.safetensors")
    with pytest.warns(OverrideWarning) as caught:  # ... and say that they contradict the file
        m = oftsr.load_model(tmp_path / "m.safetensors", sigma_p=0.5, role="teacher", scale=2)
    assert (m.sigma_p, m.role, m.scale) == (0.5, "teacher", 2)
    assert sorted(str(w.message).split(" records ")[1].split(";")[0] for w in caught) == [
        "role student", "scale 4", f"sigma_p {student.sigma_p:g}"]
    assert all(w.filename == __file__ for w in caught)  # pointed at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # values the file records are no override
        oftsr.load_model(tmp_path / "m.safetensors", sigma_p=student.sigma_p, role="student", scale=4)


def test_loading_leaves_the_callers_random_state_alone(tmp_path, student):
    oftsr.save_model(student, tmp_path / "m.safetensors")
    torch.manual_seed(123)
    expected = torch.randn(4)
    torch.manual_seed(123)
    oftsr.load_model(tmp_path / "m.safetensors")
    assert torch.equal(torch.randn(4), expected)


def test_a_mistyped_model_name_gets_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for typed, meant in [("X4", "x4"), ("x4-studnet", "x4-student"), ("x4real", "x4-real")]:
        with pytest.raises(FileNotFoundError, match=f"{typed}: no such file, and not a bundled model's name "
                                                    f".*did you mean {meant}\\?$"):
            oftsr.load_model(typed)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        oftsr.load_model("~/m.safetensors")
    oftsr.save_model(oftsr.create_model("tiny", role="student"), tmp_path / "home" / "m.safetensors")
    assert oftsr.load_model("~/m.safetensors").role == "student"  # ~ is the home folder


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_a_broken_link_and_a_loop_of_links_are_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.safetensors").symlink_to("b.safetensors")
    (tmp_path / "b.safetensors").symlink_to("a.safetensors")
    (tmp_path / "c.safetensors").symlink_to("gone.safetensors")
    with pytest.raises(FileNotFoundError, match=r"^load_model: a.safetensors: a link to b.safetensors, a loop of links that leads "
                                                r"back to itself$"):
        oftsr.load_model("a.safetensors")
    with pytest.raises(FileNotFoundError, match=r"^load_model: c.safetensors: a link to gone.safetensors, which is not there$"):
        oftsr.load_model("c.safetensors")


def test_large_finite_weights_are_not_called_nan_and_a_file_replaced_mid_read_is_said(tmp_path, student, monkeypatch):
    import oftsr.checkpoint as checkpoint

    oftsr.save_model(student, tmp_path / "m.safetensors")
    tensors, meta = load_file(tmp_path / "m.safetensors"), oftsr.read_metadata(tmp_path / "m.safetensors")
    name = next(k for k, v in tensors.items() if v.numel() > 4)
    big = {**tensors, name: torch.full_like(tensors[name], 3e38)}  # finite; only their sum overflows
    save_file(big, tmp_path / "big.safetensors", metadata=meta)
    assert torch.equal(dict(oftsr.load_model(tmp_path / "big.safetensors").unet.named_parameters())[name],
                       big[name])
    big[name][0] = float("nan")
    save_file(big, tmp_path / "nan.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=rf"1 of its \d+ tensors hold NaN or infinity \(first: {re.escape(name)}\)"):
        oftsr.load_model(tmp_path / "nan.safetensors")
    # the tensors read after the header was checked are another network's
    read = checkpoint._read_safetensors

    def replaced(path, header_only=False):
        tensors, meta = read(path, header_only=header_only)
        return (tensors if header_only else {k: v for k, v in tensors.items() if k != name}), meta

    monkeypatch.setattr(checkpoint, "_read_safetensors", replaced)
    with pytest.raises(CheckpointError, match=r"m.safetensors: its tensors do not fit the network its header describes "
                                              r"\(Error\(s\) in loading state_dict .*was it replaced while it was read"):
        oftsr.load_model(tmp_path / "m.safetensors")


def test_authors_ema_shadow_list(tmp_path, random_unet_weights):
    model = make_model(random_unet_weights)
    path = tmp_path / STUDENT_NAME
    torch.save({"ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [p.clone() for p in model.unet.parameters()]},
                "step": 42}, path)
    loaded = oftsr.load_model(path)
    assert (loaded.role, loaded.scale, loaded.sigma_p, loaded.step) == ("student", 4, 0.2, 42)
    assert loaded.config == oftsr.PRESETS["tiny"]
    assert torch.equal(_outputs(loaded), _outputs(model))


@pytest.mark.parametrize("prefix", ["", "module."])
def test_authors_plain_state_dict_and_snapshot(tmp_path, random_unet_weights, prefix):
    model = make_model(random_unet_weights)
    state = {prefix + k: v for k, v in model.unet.state_dict().items()}
    torch.save(state, tmp_path / TEACHER_NAME)
    assert torch.equal(_outputs(oftsr.load_model(tmp_path / TEACHER_NAME, role="student")), _outputs(model))
    # A full training snapshot: the EMA (what the authors sample with) wins over the raw model.
    ema = [p + 1.0 for p in model.unet.parameters()]
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "step": 9,
                "ema": {"decay": 0.9999, "num_updates": 9, "shadow_params": ema}}, tmp_path / "snap-sigma0.2-sf4.pth")
    snap = oftsr.load_model(tmp_path / "snap-sigma0.2-sf4.pth", role="teacher")
    assert torch.equal(next(snap.unet.parameters()), ema[0]) and snap.step == 9


def test_reversed_state_dict_order_is_fine(tmp_path, random_unet_weights):
    model = make_model(random_unet_weights)
    state = dict(reversed(list(model.unet.state_dict().items())))
    torch.save(state, tmp_path / "w.pth")
    loaded = oftsr.load_model(tmp_path / "w.pth", sigma_p=0.2, role="student", scale=4)
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_fixture_pth_loads_with_inferred_architecture(fixture_dir):
    m = oftsr.load_model(fixture_dir / "official_format_ema.pth", sigma_p=0.1, role="teacher", scale=4)
    assert m.config == oftsr.PRESETS["tiny"] and m.step == 1234
    # torch's weights_only loader could be made to run code before 2.6: such a torch refuses the file
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "__version__", "2.5.1+cu124")
        with pytest.raises(oftsr.CheckpointError, match=r"^official_format_ema.pth: reading a .pth file safely needs "
                           r"torch 2.6 or newer \(torch 2.5.1 can be made to run code hidden in one\): update torch"):
            oftsr.load_model(fixture_dir / "official_format_ema.pth", sigma_p=0.1, role="teacher", scale=4)


def test_parse_authors_filename():
    assert parse_authors_filename(TEACHER_NAME) == {"sigma_p": 0.2, "scale": 4, "role": "teacher", "degradation": "bicubic"}
    assert parse_authors_filename(STUDENT_NAME)["role"] == "student"
    assert parse_authors_filename("weights.pth") == {}


def test_missing_fields_say_how_to_provide_them(tmp_path, random_unet_weights):
    torch.save(make_model(random_unet_weights).unet.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=r"sigma_p, role, scale.*--sigma-p"):
        oftsr.load_model(tmp_path / "weights.pth")


def test_a_training_folder_given_as_a_model_says_to_export_it(tmp_path, student, teacher):
    """`--model runs/student/checkpoint-4` (or its model.safetensors, the raw weights) is
    not a model file: the message gives the export command instead of "Is a directory"."""
    ckpt = tmp_path / "run" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "oftsr.json").write_text("{}")
    oftsr.save_model(student, ckpt / "model.safetensors")
    for path in (ckpt, tmp_path / "run"):
        with pytest.raises(CheckpointError, match=rf"{path} is a training folder, not a model file: export its EMA "
                                                  rf"weights .* `python trainer/export.py {path} model.safetensors`"):
            oftsr.load_model(path)
    raw = ckpt / "model.safetensors"
    raw.write_bytes(b"")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in student.unet.state_dict().items()}, raw)  # Accelerate's: no metadata
    with pytest.raises(CheckpointError, match="is the raw state of the training checkpoint .* `python trainer/export.py"):
        oftsr.load_model(raw)
    oftsr.save_model(student, ckpt / "student.safetensors")  # an exported model kept beside it loads
    assert oftsr.load_model(ckpt / "student.safetensors").role == "student"
    with pytest.raises(CheckpointError, match=r"is a folder, not a model file \(.safetensors"):
        oftsr.load_model(tmp_path)
    oftsr.save_model(student, tmp_path / "run" / "student.safetensors")  # a finished run: its export is named
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'run'} is a folder, not a model file: give the model file "
                                              rf"in it, {tmp_path / 'run' / 'student.safetensors'}$"):
        oftsr.load_model(tmp_path / "run")
    oftsr.save_model(teacher, tmp_path / "run" / "teacher.safetensors")  # both: the one asked for first
    with pytest.raises(CheckpointError, match=rf"^--teacher {tmp_path / 'run'} is a folder, .* in it, "
                                              rf"{tmp_path / 'run' / 'teacher.safetensors'} or "):
        oftsr.existing_model_path(tmp_path / "run", "teacher", "--teacher")
    with pytest.raises(CheckpointError, match=rf"in it, {tmp_path / 'run' / 'student.safetensors'} or "):
        oftsr.load_model(tmp_path / "run")


def test_truncated_safetensors(tmp_path, student):
    path = tmp_path / "m.safetensors"
    oftsr.save_model(student, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        oftsr.load_model(path)


def test_truncated_pth(tmp_path, random_unet_weights):
    path = tmp_path / TEACHER_NAME
    torch.save(make_model(random_unet_weights).unet.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        oftsr.load_model(path)


def test_weights_with_nan_are_refused(tmp_path, random_unet_weights):
    # what a diverged training run exports: every image it makes is black or noise
    model = make_model(random_unet_weights, role="teacher")
    with torch.no_grad():
        model.unet.out[2].bias[1] = math.nan
    oftsr.save_model(model, tmp_path / "diverged.safetensors")
    with pytest.raises(CheckpointError, match=r"diverged.safetensors: 1 of its \d+ tensors hold NaN or infinity "
                                              r"\(first: out.2.bias\): the training run that wrote it diverged"):
        oftsr.load_model(tmp_path / "diverged.safetensors")
    torch.save({k: v.clone() for k, v in model.unet.state_dict().items()}, tmp_path / TEACHER_NAME)
    with pytest.raises(CheckpointError, match="hold NaN or infinity"):
        oftsr.load_model(tmp_path / TEACHER_NAME)


def test_crafted_tensors_are_refused_before_any_copy(tmp_path, random_unet_weights):
    """A few bytes of .pth can declare gigabytes (a tensor expanded with stride 0): refused
    before the loader copies it. Weights that are not floating point (a black image) too."""
    model = make_model(random_unet_weights, role="teacher")
    state = model.unet.state_dict()
    expanded = {k: torch.zeros(1).expand(*v.shape) for k, v in state.items()}
    torch.save(expanded, tmp_path / TEACHER_NAME)
    assert (tmp_path / TEACHER_NAME).stat().st_size < 200_000
    with pytest.raises(CheckpointError, match=r"declares [\d,]+ values but its file holds 1: not a saved network"):
        oftsr.load_model(tmp_path / TEACHER_NAME)
    for dtype in (torch.bool, torch.int64, torch.complex64):
        odd = dict(state)
        odd["out.2.bias"] = state["out.2.bias"].to(dtype)
        save_file(odd, tmp_path / "odd.safetensors", metadata={k: v for k, v in
                                                               oftsr.checkpoint.model_metadata(model).items()})
        with pytest.raises(CheckpointError, match=f"tensor out.2.bias is stored as {str(dtype)[6:]}; network weights "
                                                  f"are floating point"):
            oftsr.load_model(tmp_path / "odd.safetensors")
    # a torch file named .safetensors is read by its content
    torch.save(state, tmp_path / "really_torch.safetensors")
    loaded = oftsr.load_model(tmp_path / "really_torch.safetensors", role="teacher", sigma_p=0.2, scale=4)
    assert torch.equal(loaded.unet.out[2].bias, model.unet.out[2].bias)


def test_empty_and_garbage_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        oftsr.load_model(tmp_path / "empty.pth")
    (tmp_path / "notes.safetensors").write_text("hello, this is not a model at all\nsecond line")
    with pytest.raises(CheckpointError, match="not a checkpoint: .*; it is text, beginning 'hello, this is not a model "
                                              "at all'$"):
        oftsr.load_model(tmp_path / "notes.safetensors")
    # what a clone without Git LFS, or a download that saved a web page, leaves under a model's name
    (tmp_path / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 7404\n")
    with pytest.raises(CheckpointError, match=r"lfs.safetensors: .*a Git LFS pointer, not the file: fetch it with `git lfs"):
        oftsr.load_model(tmp_path / "lfs.safetensors")
    (tmp_path / "page.pth").write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>")
    with pytest.raises(CheckpointError, match="page.pth: .*it is a web page: a download saved the page instead"):
        oftsr.load_model(tmp_path / "page.pth")
    (tmp_path / "noise.pth").write_bytes(bytes(range(7, 200)))
    with pytest.raises(CheckpointError, match="noise.pth: .*its first bytes match neither format"):
        oftsr.load_model(tmp_path / "noise.pth")
    with pytest.raises(FileNotFoundError):
        oftsr.load_model(tmp_path / "absent.safetensors")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


class Shell:
    def __reduce__(self):
        return (os.system, ("echo unpickled",))


def test_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"ema": Evil()}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        oftsr.load_model(path)
    torch.save({"ema": Shell()}, path)  # torch words a blocked module otherwise: "unsupported GLOBAL os.system"
    with pytest.raises(CheckpointError, match=r"evil.pth: refused: .*objects other than tensors \((posix|nt|os).system\)"):
        oftsr.load_model(path)
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="evil.pth: a plain Python pickle, not a checkpoint: .* never opens one"):
        oftsr.load_model(path)
    # torch's legacy (pre-1.6) format still loads, as tensors only
    torch.save({"weight": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="'weight' is not part of an ADM UNet"):  # read, then judged
        oftsr.load_model(path)


def test_checkpoint_of_another_model(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 3, 3))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not part of an ADM UNet"):
        oftsr.load_model(tmp_path / "other.safetensors", sigma_p=0.2, role="student", scale=4)
    torch.save({"weights": [torch.zeros(3, 3)] * 20}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected an OFTSR checkpoint"):
        oftsr.load_model(tmp_path / "list.pth")
    torch.save({"ema": {"shadow_params": [torch.zeros(5, 5)] * 30}}, tmp_path / "shadow.pth")
    with pytest.raises(CheckpointError, match="ADM UNet"):
        oftsr.load_model(tmp_path / "shadow.pth")


def test_wrong_tensor_shapes_with_right_names(tmp_path, random_unet_weights):
    state = dict(random_unet_weights)
    state["out.2.weight"] = torch.zeros(6, 32, 5, 5)
    torch.save(state, tmp_path / "bad-sigma0.2-sf4.pth")
    with pytest.raises(CheckpointError):
        oftsr.load_model(tmp_path / "bad-sigma0.2-sf4.pth", role="student")


def test_image_model_with_wrong_input_channels(tmp_path):
    config = oftsr.UNetConfig(32, (1, 2), 1, (), in_channels=3, out_channels=3)
    save_file(oftsr.UNet(config).state_dict(), tmp_path / "uncond.safetensors")
    with pytest.raises(CheckpointError, match="6 input channels"):
        oftsr.load_model(tmp_path / "uncond.safetensors", sigma_p=0.2, role="student", scale=4)


def test_load_to_dtype(tmp_path, student):
    oftsr.save_model(student, tmp_path / "m.safetensors")
    m = oftsr.load_model(tmp_path / "m.safetensors", dtype=torch.bfloat16)
    assert m.dtype == torch.bfloat16
    assert oftsr.load_model(tmp_path / "m.safetensors", dtype="fp64").dtype == torch.float64  # as fp32, fp16, bf16
    with pytest.raises(ValueError, match="^load_model: the model path is empty: give a bundled model's name"):
        oftsr.load_model("")
    v = _outputs(m)
    assert v.dtype == torch.float32
    assert (v - _outputs(student)).abs().max() < 0.1 * _outputs(student).abs().max()


def test_refused_pickle_message_is_ours_and_never_suggests_the_unsafe_path(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"ema": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        oftsr.load_model(path)
    message = str(info.value)
    assert "weights_only" not in message and "trust" not in message and "\x1b" not in message
    assert "print" in message and "arbitrary code" in message  # names what was refused, and why


@pytest.mark.parametrize("architecture", [
    {"model_channels": 4096, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 4, "attention_ds": [8]},  # ~60 GB
    {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1_000_000, "attention_ds": []},  # 10^6 blocks
])
def test_small_file_claiming_a_huge_architecture_fails_before_allocating(tmp_path, monkeypatch, architecture):
    tensors = {"time_embed.0.weight": torch.zeros(4, 4), "out.2.bias": torch.zeros(6)}
    meta = {"format": "oftsr", "format_version": "1", "architecture": json.dumps(architecture), "role": "student",
            "scale": "4", "sigma_p": "0.2"}
    path = tmp_path / "huge.safetensors"
    save_file(tensors, path, metadata=meta)
    assert path.stat().st_size < 1000
    built = []
    real_unet = oftsr.checkpoint.UNet

    def spy(config):  # every network built while loading must be on the meta device (no real memory)
        on_meta = torch.empty(0).device.type == "meta"
        built.append(on_meta)
        assert on_meta, "a network was built in real memory before the file's tensors were checked"
        return real_unet(config)

    monkeypatch.setattr(oftsr.checkpoint, "UNet", spy)
    with pytest.raises(CheckpointError, match=r"huge.safetensors: .*(2 tensors|parameters|num_res_blocks must be)"):
        oftsr.load_model(path)
    assert len(built) <= 1


def test_header_shapes_are_checked_before_the_tensors_are_read(tmp_path, student, monkeypatch):
    path = tmp_path / "m.safetensors"
    oftsr.save_model(student, path, )
    meta = oftsr.read_metadata(path)
    arch = json.loads(meta["architecture"])
    arch["model_channels"] = 64  # claims twice the width of the stored tensors

    save_file(load_file(path), path, metadata={**meta, "architecture": json.dumps(arch)})
    with pytest.raises(CheckpointError, match=r"m.safetensors: the tensors do not match the architecture .*parameters"):
        oftsr.load_model(path)


def test_network_digest_names_the_network_not_the_file(tmp_path):
    """The same weights and settings give the same digest however they are stored (a
    re-export, the fp16 copy); other weights, another sigma_p or role do not."""

    model = oftsr.create_model("tiny", role="teacher", seed=0)
    digest = network_digest(model)
    assert len(digest) == 64 and digest == network_digest(model)
    oftsr.save_model(model, tmp_path / "a.safetensors")
    oftsr.save_model(model, tmp_path / "b.safetensors", dtype=torch.float16, source="a.safetensors")
    assert network_digest(oftsr.load_model(tmp_path / "a.safetensors")) == digest
    assert network_digest(oftsr.load_model(tmp_path / "b.safetensors")) == digest
    assert network_digest(oftsr.create_model("tiny", role="teacher", seed=1)) != digest
    with pytest.warns(OverrideWarning):
        assert network_digest(oftsr.load_model(tmp_path / "a.safetensors", sigma_p=0.1)) != digest
        assert network_digest(oftsr.load_model(tmp_path / "a.safetensors", role="student")) != digest
    with torch.no_grad():
        next(model.unet.parameters()).view(-1)[0] += 0.01  # one weight, visibly changed
    assert network_digest(model) != digest


def test_a_safetensors_header_whose_length_ends_in_0x80_is_not_taken_for_a_pickle(tmp_path, student):
    """The first byte of a safetensors file is the low byte of its header's length; 0x80 is
    also how a legacy torch.save pickle starts. One file in 256 of ours was refused."""
    path = tmp_path / "m.safetensors"
    for pad in range(256):
        oftsr.save_model(student, path, note="x" * pad)
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80" and path.read_bytes()[8:9] == b"{"
    assert oftsr.load_model(path).role == "student"
    legacy = tmp_path / "legacy.pth"
    torch.save(student.unet.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80"
    assert oftsr.load_model(legacy, sigma_p=0.2, role="student", scale=4).role == "student"  # still read as torch


def test_the_network_digest_of_a_network_never_changes():
    """Files record their teacher's digest and a resumed run compares them: the digest of a
    fixed network is pinned."""
    model = oftsr.create_model("tiny", role="student", sigma_p=0.2, scale=4)
    with torch.no_grad():
        for i, p in enumerate(model.unet.parameters()):
            p.copy_(torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.37 + i).view_as(p).float())
    assert network_digest(model) == "18d781606c87f1082dbf58fdf34fcef967719e3d62cdb26a9ecc92df1d9a79f4"


def test_loading_and_seeded_creation_never_touch_the_global_random_state(tmp_path, student):
    """Other threads draw from torch's global generator: saving and restoring it around a
    random init (fork_rng) would hand them repeated numbers. load_model builds on the meta
    device (no init at all) and create_model(seed=) draws from a generator of its own, the
    same weights as torch.manual_seed(seed) before UNet(config)."""
    oftsr.save_model(student, tmp_path / "m.safetensors")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    oftsr.load_model(tmp_path / "m.safetensors")
    oftsr.load_model("x4")
    seeded = {name: oftsr.create_model(name, seed=5) for name in ("tiny", "compact")}
    assert torch.equal(torch.get_rng_state(), state)
    for name, model in seeded.items():
        torch.manual_seed(5)
        reference = oftsr.UNet(oftsr.PRESETS[name])
        pairs = list(zip(reference.state_dict().items(), model.unet.state_dict().items(), strict=True))
        assert all(k == j and torch.equal(a, b) for (k, a), (j, b) in pairs), name
        assert sum(int(b.abs().sum() == 0) for _, (_, b) in pairs) >= 10  # ADM's zero-initialised layers too


def test_forged_architecture_and_zip_bombs_are_refused_before_any_work(tmp_path, student):
    """A file's metadata builds the network: each field is checked (a 0 head width divided
    by zero, a negative level made a negative dimension), and JSON nested past Python's
    stack is malformed metadata. A .pth zip that would inflate far beyond its size is
    refused before torch inflates it."""
    import zipfile

    oftsr.save_model(student, tmp_path / "m.safetensors")
    tensors, meta = load_file(tmp_path / "m.safetensors"), oftsr.read_metadata(tmp_path / "m.safetensors")
    arch = json.loads(meta["architecture"])
    for forged, message in [({"num_head_channels": 0}, "num_head_channels must be an integer from 1 to 4096, got 0"),
                            ({"channel_mult": [-1]}, "channel_mult entries must be an integer from 1 to 64, got -1"),
                            ({"model_channels": 32.0}, "model_channels must be an integer from 1 to 4096, got 32.0"),
                            ({"num_res_blocks": True}, "num_res_blocks must be an integer from 1 to 64, got True"),
                            # heads of unequal width: refused as the file's, not a reshape error at the first image
                            ({"num_head_channels": 7}, "num_head_channels 7 gives the attention at 1/4 18 heads (128 // 7), which do "
                                                       "not split its 128 channels evenly: use a divisor of 128")]:
        save_file(tensors, tmp_path / "f.safetensors", metadata={**meta, "architecture": json.dumps({**arch, **forged})})
        with pytest.raises(CheckpointError, match=rf"f.safetensors: OFTSR metadata is incomplete or malformed "
                                                  rf"\(ValueError: {re.escape(message)}\)"):
            oftsr.load_model(tmp_path / "f.safetensors")
    save_file(tensors, tmp_path / "f.safetensors", metadata={**meta, "architecture": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(CheckpointError, match=r"OFTSR metadata is incomplete or malformed \(RecursionError"):
        oftsr.load_model(tmp_path / "f.safetensors")
    torch.save({"model": {"time_embed.0.weight": torch.zeros(1 << 22)}}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as z, zipfile.ZipFile(tmp_path / "bomb.pth", "w") as bomb:
        for entry in z.infolist():
            bomb.writestr(entry.filename, z.read(entry.filename), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=r"bomb.pth: its entries would inflate to 16,777,\d+ bytes from a file "
                                              r"of [\d,]+: not a checkpoint torch.save wrote \(a zip bomb\?\); refused"):
        oftsr.load_model(tmp_path / "bomb.pth", sigma_p=0.2, role="student", scale=4)
    with pytest.raises(CheckpointError, match="plain.pth: expected an ADM UNet"):  # the same, stored: read, then judged
        oftsr.load_model(tmp_path / "plain.pth", sigma_p=0.2, role="student", scale=4)


def test_a_wider_adm_network_and_bundled_names_by_role(tmp_path):
    """A network with 128 input channels is another model, said as such (its size is within
    what loads); a bundled name reads the file of the role asked, as load_model does."""
    config = oftsr.UNetConfig(32, (1, 2), 1, (), in_channels=128, out_channels=6)
    save_file(oftsr.UNet(config).state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors: expected an OFTSR network with 6 input channels"):
        oftsr.load_model(tmp_path / "other.safetensors", sigma_p=0.2, role="student", scale=4)
    assert oftsr.read_metadata("x4")["role"] == "student" and oftsr.read_metadata("x4", role="teacher")["role"] == "teacher"
    assert oftsr.checkpoint.contradicted_metadata("x4", role="teacher") == {}
    with pytest.raises(ValueError, match="seed must be an integer or None, got True"):
        oftsr.create_model("tiny", seed=True)


def test_an_absurd_recorded_scale_is_refused_at_load(tmp_path, random_unet_weights):
    model = make_model(random_unet_weights, role="student")
    metadata = {**oftsr.checkpoint.model_metadata(model), "scale": "100000"}
    save_file(model.unet.state_dict(), tmp_path / "huge.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match="huge.safetensors: scale must be an integer from 1 to 16, got 100000"):
        oftsr.load_model(tmp_path / "huge.safetensors")  # not an out-of-memory at the first image


def test_a_pipe_as_a_model_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    for load in (oftsr.load_model, oftsr.read_metadata):
        with pytest.raises(CheckpointError, match="model.safetensors: not a regular file"):
            load(tmp_path / "model.safetensors")
