"""Checkpoints: our single-file `.safetensors` format, and the authors' `.pth` files.

Our format: the UNet's state dict (ADM names) plus string metadata that carries
everything needed to run it (architecture, role, scale, sigma_p, degradation,
objective, step, format version). The authors' files carry no config: the architecture is inferred from
the tensor shapes and verified by rebuilding the full parameter list; sigma_p, role
and scale come from their file-name pattern or from the caller.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .devices import auto_dtype, resolve_device, torch_version
from .files import atomic_write
from .model import DTYPE_NAMES, OBJECTIVES, OFTSRModel
from .unet import UNet, UNetConfig

FORMAT_NAME = "oftsr"
TRAINING_CHECKPOINT_INFO = "oftsr.json"  # what the trainer writes into each checkpoint-N folder
EXPORT_COMMAND = "python trainer/export.py"
FORMAT_VERSION = 1

__all__ = ["load_model", "save_model", "read_metadata", "infer_config", "parse_authors_filename", "recorded_settings",
           "network_digest", "CheckpointError", "MissingInfoError"]


class CheckpointError(ValueError):
    """A file that is not a usable OFTSR checkpoint; the message says what was expected and found."""


class MissingInfoError(CheckpointError):
    """Valid weights, but sigma_p, role or scale is neither in the file nor given. `.missing` names them."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


# --------------------------------------------------------------------------- saving

def model_metadata(model: OFTSRModel, **extra: str) -> dict[str, str]:
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "architecture": json.dumps(model.config.to_dict()),
        **{k: str(v) for k, v in model.settings().items()},
    }
    clashes = {k: v for k, v in extra.items() if k in meta and str(v) != meta[k]}
    if clashes:  # the file would say it is another model than it holds
        raise ValueError(f"metadata {', '.join(f'{k}={v!r}' for k, v in clashes.items())} would contradict the "
                         f"model's own ({', '.join(f'{k}={meta[k]!r}' for k in clashes)}); set them on the model "
                         f"(OFTSRModel attributes) or record them under other names")
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")


def save_model(model: OFTSRModel, path: str | os.PathLike, *, dtype: torch.dtype | None = None, **extra: str) -> None:
    """Write `model` as one `.safetensors` file, atomically (temporary name, then rename),
    so a crash never leaves a half-written checkpoint under the final name. `extra` adds
    text metadata (how it was trained); a key that would contradict what the file says
    of the model itself (role, scale, format, ...) is refused, and so is a name that says
    pickle (`.pth`, `.pt`, `.ckpt`, `.bin`, `.pkl`): tools that pick a loader by the name
    would take the file for one."""
    if not isinstance(model, OFTSRModel):
        raise TypeError(f"save_model needs an OFTSRModel, got {type(model).__name__} (oftsr.create_model or "
                        f"oftsr.load_model makes one)")
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: the model is written as safetensors; name it {path.with_suffix('.safetensors').name}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the model file's name, such as "
                                f"{path / 'model.safetensors'}")
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.unet.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata=model_metadata(model, **extra))
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Rewrites a `.safetensors` file's header with its metadata in key order, in place.
    safetensors writes the metadata in the random order of a Rust hash map, so the same
    model saved twice would give two files (safetensors issue 584); in key order the bytes
    are a function of the model alone. Only the order changes, so the header keeps its
    length (spaces pad it, as safetensors pads it to 8 bytes) and the tensors stay where
    they are."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # escaped otherwise than safetensors escaped it: left in its order
            return
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


# What the network digest covers, spelled out: files record their teacher's digest, so a new
# setting must not change the digest of existing networks.
DIGEST_KEYS = ("architecture", "role", "scale", "sigma_p", "degradation", "objective")


def network_digest(model: OFTSRModel) -> str:
    """The sha256 of what makes a network: its architecture, role, scale, sigma_p,
    degradation and objective, and its weights rounded to half precision. The same network
    saved twice, or the fp16 copy that is shipped, has the same digest (the fp16 copy's
    file bytes differ; two saves of one network are byte-identical, their metadata sorted)."""
    digest = hashlib.sha256()
    meta = model_metadata(model)
    for key in DIGEST_KEYS:
        digest.update(f"{key}={meta[key]}\n".encode())
    for name, tensor in sorted(model.unet.state_dict().items()):
        half = tensor.detach().to("cpu", torch.float16).contiguous()
        digest.update(f"{name}{tuple(half.shape)}\n".encode())
        digest.update(half.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- inference of the architecture

def _block_sequence(shapes: list[tuple[int, ...]]) -> tuple[list[tuple[str, int, int]], int]:
    """Split the ordered parameter shapes of the body (after the time embedding and input
    conv, before the output head) into ('res', in, out) and ('attn', c, c) blocks.
    Returns the blocks and the number of shapes they used."""
    blocks, i = [], 0
    n = len(shapes)
    while i + 4 < n:  # the last 4 shapes are the output head (norm w, b, conv w, b)
        if len(shapes[i]) != 1 or len(shapes[i + 1]) != 1 or i + 2 >= n:
            raise CheckpointError(f"unexpected tensor shape {shapes[i]} at position {i} of the network body")
        c = shapes[i][0]
        third = shapes[i + 2]
        if len(third) == 4:  # ResBlock: norm, conv, emb linear, norm, conv [, skip]
            o = third[0]
            i += 10
            if i < n and len(shapes[i]) == 4 and shapes[i][:2] == (o, c):
                i += 2
            blocks.append(("res", c, o))
        elif len(third) == 3:  # attention: norm, qkv (3c, c, 1), proj_out (c, c, 1)
            i += 6
            blocks.append(("attn", c, c))
        else:
            raise CheckpointError(f"unexpected tensor shape {third} at position {i + 2} of the network body")
    return blocks, i


def _candidates(blocks: list[tuple[str, int, int]], mc: int) -> list[UNetConfig]:
    """Configs consistent with the block sequence: ResBlocks number L*(2r+3) for L levels
    and r res blocks per level; channel widths and attention placement are read off the
    input half for each (L, r)."""
    n_res = sum(1 for kind, *_ in blocks if kind == "res")
    found = []
    for levels in range(1, 9):
        for r in range(1, 9):
            if levels * (2 * r + 3) != n_res:
                continue
            mults, attn, ds = [], set(), 1
            pos = 0
            try:
                for level in range(levels):
                    for _ in range(r):
                        kind, _, out = blocks[pos]
                        if kind != "res" or out % mc:
                            raise IndexError
                        pos += 1
                        if pos < len(blocks) and blocks[pos][0] == "attn":
                            attn.add(ds)
                            pos += 1
                    mults.append(out // mc)
                    if level != levels - 1:
                        pos += 1  # the down-sampling ResBlock
                        ds *= 2
            except IndexError:
                continue
            found.append(UNetConfig(mc, tuple(mults), r, tuple(sorted(attn))))
    return found


def param_shapes(config: UNetConfig) -> list[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        unet = UNet(config)
    return [(k, tuple(v.shape)) for k, v in unet.state_dict().items()]


def infer_config(shapes: list[tuple[int, ...]]) -> UNetConfig:
    """The UNet config whose parameter list (in `parameters()` order) has exactly these shapes."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if len(shapes) < 10 or len(shapes[0]) != 2 or len(shapes[4]) != 4:
        raise CheckpointError(
            f"expected an ADM UNet parameter list starting with time_embed.0.weight (4C, C) and the input conv (C, 6, 3, 3); "
            f"found {len(shapes)} tensors starting with {shapes[:5]}"
        )
    mc = shapes[0][1]
    in_ch = shapes[4][1]
    out_ch = shapes[-2][0]
    blocks, used = _block_sequence(shapes[6:])
    if used + 4 != len(shapes) - 6:
        raise CheckpointError(f"could not parse the network body: {len(shapes) - 6 - used} trailing tensors")
    for cand in _candidates(blocks, mc):
        try:
            cand = UNetConfig(cand.model_channels, cand.channel_mult, cand.num_res_blocks, cand.attention_ds, in_ch,
                              out_ch)
        except ValueError as e:  # sizes beyond any ADM network's
            raise CheckpointError(f"not an ADM UNet of a size this loads: {e}") from None
        if [s for _, s in param_shapes(cand)] == shapes:
            return cand
    raise CheckpointError(
        f"the {len(shapes)} tensors do not form an ADM UNet with scale-shift norm and ResBlock up/down-sampling "
        f"(model_channels {mc}, {sum(b[0] == 'res' for b in blocks)} ResBlocks, "
        f"{sum(b[0] == 'attn' for b in blocks)} attention blocks)"
    )


# --------------------------------------------------------------------------- reading files

_SECTION_ORDER = {"time_embed": 0, "input_blocks": 1, "middle_block": 2, "output_blocks": 3, "out": 4}
_LAYER_ORDER = {"in_layers": 0, "emb_layers": 1, "out_layers": 2, "skip_connection": 3, "norm": 0, "qkv": 1,
                "proj_out": 2, "weight": 0, "bias": 1}


def _registration_key(name: str, source: str = "") -> tuple:
    """Sort key reproducing ADM's parameter registration order from a name alone."""
    parts = name.split(".")
    if parts[0] not in _SECTION_ORDER:
        raise CheckpointError(f"{source or 'checkpoint'}: not an OFTSR checkpoint: parameter {name!r} is not part of "
                              f"an ADM UNet (a checkpoint of another model?)")
    key: list = [_SECTION_ORDER[parts[0]]]
    for p in parts[1:]:
        key.append((0, int(p)) if p.isdigit() else (1, _LAYER_ORDER.get(p, 9), p))
    return tuple(key)


def canonical_state_dict(state: dict[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
    """Strip DDP/compile prefixes and put the tensors in registration order. `source`
    names the file in the error for a parameter that is not the UNet's."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod.", "unet."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return dict(sorted(out.items(), key=lambda kv: _registration_key(kv[0], source)))


def _is_tensor_dict(d: object) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _weights_from_torch_object(obj: object, path: Path) -> tuple[list[torch.Tensor] | dict[str, torch.Tensor], int]:
    """EMA shadow list (preferred: it is what the authors sample with), a training
    snapshot's model, or a plain state dict. Returns weights and training step."""
    step = 0
    if isinstance(obj, dict):
        if isinstance(obj.get("step"), (int, float)):
            step = int(obj["step"])
        ema = obj.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("shadow_params"), (list, tuple)):
            params = list(ema["shadow_params"])
            if params and all(isinstance(p, torch.Tensor) for p in params):
                return params, step
        # ... and BasicSR's "params_ema" / "params" (Real-ESRGAN, SwinIR): named as another model's below
        for key in ("model", "state_dict", "model_state_dict", "params_ema", "params"):
            if _is_tensor_dict(obj.get(key)):
                return canonical_state_dict(obj[key], path.name), step
        if _is_tensor_dict(obj):
            return canonical_state_dict(obj, path.name), step
    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
    raise CheckpointError(
        f"{path.name}: expected an OFTSR checkpoint (a dict with 'ema': {{'shadow_params': [...]}}, a 'model' "
        f"state dict, or a plain state dict of tensors); found a {kind}{keys}"
    )


# torch.save stores its zip entries uncompressed; weights compress poorly in any case. An
# entry that claims far more than the file holds is a zip bomb.
MAX_ZIP_INFLATION = 16


def _check_tensors(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Weights a file really holds, before any is copied: floating point (bool, integer or
    complex weights would make a black image, or a cast warning), and no more values than
    their storage holds (a tensor expanded with stride 0 declares gigabytes in a few bytes
    of file: copying it would allocate them)."""
    for name, t in weights.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{path.name}: tensor {name} is stored as {str(t.dtype).removeprefix('torch.')}; "
                                  f"network weights are floating point (a file of another kind of model?)")
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise CheckpointError(f"{path.name}: tensor {name} declares {t.numel():,} values but its file holds "
                                  f"{t.untyped_storage().nbytes() // t.element_size():,}: not a saved network "
                                  f"(a crafted file?)")


def _check_zip_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose entries would inflate to more than MAX_ZIP_INFLATION
    times the file, before torch inflates any of them."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # not a zip (torch's legacy format), or a broken one: torch says
        return
    if declared > MAX_ZIP_INFLATION * max(path.stat().st_size, 1):
        raise CheckpointError(f"{path.name}: its entries would inflate to {declared:,} bytes from a file of "
                              f"{path.stat().st_size:,}: not a checkpoint torch.save wrote (a zip bomb?); refused")


def _torch_load_error(path: Path, error: Exception) -> str:
    """Our message for a torch file that `torch.load(weights_only=True)` refused. torch's own
    text is not passed on when it mentions weights_only: it offers turning the check off,
    which would let the file run code."""
    text = str(error)
    if "weightsunpickler" in text.lower() or "unsupported global" in text.lower():  # torch words it two ways
        refused = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
        named = f" ({', '.join(refused)})" if refused else ""
        return (f"{path.name}: refused: the file holds Python objects other than tensors{named}, and loading those "
                f"can run arbitrary code, so oftsr never does. Use a checkpoint that holds only tensors (a state dict "
                f"or the authors' EMA file) or a .safetensors file")
    first = text.splitlines()[0] if text else ""
    if len(first) > 200:  # cut at a word, and say so
        first = first[:200].rsplit(" ", 1)[0] + " ..."
    detail = "" if "weights_only" in text else f" ({type(error).__name__}: {first})"
    return f"{path.name}: cannot load as a torch checkpoint; it is truncated, corrupt, or not a checkpoint{detail}"


# torch.save's legacy format begins with its magic number 0x1950a86a20f9469cfc6c, pickled (protocol 2)
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _file_kind(path: Path) -> str:
    if path.exists() and not path.is_file():  # a pipe or a device: reading it may never end
        raise CheckpointError(f"{path.name}: not a regular file (a pipe or a device?); a model is a .safetensors "
                              f"or .pth file")
    with open(path, "rb") as f:
        head = f.read(200)  # the magic numbers; for a file that is no checkpoint, what it is instead
    if len(head) < 8:
        raise CheckpointError(f"{path.name}: file is empty or truncated ({path.stat().st_size} bytes)")
    # safetensors first: its header length is any 8 bytes, and one whose low byte is 0x80 is
    # no pickle (a legacy torch.save file has no "{" at byte 8)
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < header_len < 100_000_000:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:14] == _LEGACY_TORCH_MAGIC:
        return "torch"  # legacy (non-zip) torch.save
    if head[:1] == b"\x80":
        raise CheckpointError(f"{path.name}: a plain Python pickle, not a checkpoint: torch.save writes a zip archive "
                              f"(or, before PyTorch 1.6, a pickle that starts with its magic number); a pickle can run "
                              f"arbitrary code, so oftsr never opens one")
    raise CheckpointError(f"{path.name}: not a checkpoint: expected a .safetensors file or a torch .pth/.pt file; "
                          f"{_what_it_starts_with(head)}")


def _what_it_starts_with(head: bytes) -> str:
    """What the first bytes of a file that is no checkpoint say, for the error: the text
    of a Git LFS pointer or a web page (what a failed clone or download leaves) by name."""
    text = head.decode("utf-8", "replace").strip()
    if text.startswith("version ") and "git-lfs" in text.split("\n", 1)[0]:
        return "it is a Git LFS pointer, not the file: fetch it with `git lfs pull` (or download the file itself)"
    if text.lower().startswith(("<!doctype html", "<html")):
        return "it is a web page: a download saved the page instead of the file; download the file itself"
    if text and all(c.isprintable() or c.isspace() for c in text):
        first = text.splitlines()[0][:60]
        return f"it is text, beginning {first!r}"
    return "its first bytes match neither format: it is damaged or another kind of file"


def _read_safetensors(path: Path, *, header_only: bool = False) -> tuple[dict[str, object], dict[str, str]]:
    """Tensors by name and the metadata; with `header_only`, the tensors' shapes instead
    (read from the header, no tensor data touched)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            if header_only:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, meta
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path.name}: cannot read safetensors file; it is truncated or corrupt ({e})") from e
    return tensors, meta


def _check_shapes(found: dict[str, tuple[int, ...]] | list[tuple[int, ...]], config: UNetConfig, path: Path) -> None:
    """The file's tensor shapes (by name, or in parameter order) against the architecture,
    built on the meta device: a file whose metadata claims a bigger network than its
    tensors hold is rejected before any real memory is allocated for it."""
    shapes = list(found.values()) if isinstance(found, dict) else found
    in_file = f"the file holds {len(shapes)} tensors ({sum(map(math.prod, shapes)):,} parameters)"
    # Every ResBlock has at least 10 tensors and there are levels * (2 r + 3) of them: bound
    # the network by the file before even building it on the meta device.
    at_least = 10 * len(config.channel_mult) * (2 * config.num_res_blocks + 3)
    if at_least > len(shapes):
        raise CheckpointError(f"{path.name}: the tensors do not match the architecture {config}: {in_file}, the "
                              f"architecture needs at least {at_least} tensors")
    expected = param_shapes(config)
    same = list(found.items()) == expected if isinstance(found, dict) else shapes == [s for _, s in expected]
    if not same:
        names = dict(expected)
        detail = ""
        if isinstance(found, dict):
            missing = [k for k in names if k not in found][:5]
            extra = [k for k in found if k not in names][:5]
            wrong = [f"{k} {found[k]} (expected {s})" for k, s in expected if k in found and tuple(found[k]) != s][:3]
            detail = f"; missing {missing}, unexpected {extra}, other shape {wrong}"
        raise CheckpointError(
            f"{path.name}: the tensors do not match the architecture {config}: {in_file}, the architecture needs "
            f"{len(expected)} ({sum(math.prod(s) for _, s in expected):,} parameters){detail}")


def read_metadata(path: str | os.PathLike, role: str | None = None) -> dict[str, str]:
    """The metadata of one of our checkpoints (empty for files without it), tensors not loaded.
    A string may name a bundled model, as for `load_model`: "x4" is its `role` file (default
    the student), "x4-teacher" its teacher."""
    if isinstance(path, str):
        from .weights import existing_model_path

        path = existing_model_path(path, role or "student", option="read_metadata:")
    path = Path(path)
    if _file_kind(path) != "safetensors":
        return {}
    return _read_safetensors(path, header_only=True)[1]


def recorded_settings(path: str | os.PathLike) -> dict[str, object]:
    """What a model file says of itself, as `load_model` reads it: its metadata where it is
    one of ours, else what its name says in the authors' naming (`parse_authors_filename`)."""
    meta = read_metadata(path)
    return dict(meta) if meta.get("format") == FORMAT_NAME else parse_authors_filename(Path(path).name)


def contradicted_metadata(path: str | os.PathLike, **given: object) -> dict[str, tuple[str, object]]:
    """The `given` values (sigma_p, scale, role, degradation; None = not given) that differ
    from what our file at `path` records, as {name: (recorded, given)}. A file that records
    nothing (an authors' .pth) contradicts nothing: `load_model`'s overrides are what it has."""
    return _contradictions(read_metadata(path, given.get("role")), given)


class OverrideWarning(UserWarning):
    """A `load_model` override that contradicts what our file records: most likely a mistake
    (a x4 network run at x2, a teacher's weights run in one step)."""


def _contradictions(recorded: dict, given: dict[str, object]) -> dict[str, tuple[str, object]]:
    found = {}
    for key, value in given.items():
        if value is None or key not in recorded:
            continue
        same = math.isclose(float(recorded[key]), float(value), abs_tol=1e-6) if key in ("sigma_p", "scale") \
            else recorded[key] == str(value)
        if not same:
            found[key] = (recorded[key], value)
    return found


_AUTHORS_SIGMA = re.compile(r"sigma(?:_p)?([0-9]*\.?[0-9]+)")
_AUTHORS_SCALE = re.compile(r"(?:^|[-_])(?:sf|x)([0-9]+)(?:[-_.]|$)")


def parse_authors_filename(name: str) -> dict[str, object]:
    """sigma_p, role, scale and degradation from the authors' naming, e.g.
    `sr_bicubic-sf4-guided_unet-sigma0.2-...-DIV2K-checkpoint_4.pth` (teacher) or
    `...-distil-v_boot-...-DIV2K_DIS-checkpoint_5.pth` (student). Only what is present."""
    name = Path(name).name
    found: dict[str, object] = {}
    if m := _AUTHORS_SIGMA.search(name):
        found["sigma_p"] = float(m.group(1))
    if m := _AUTHORS_SCALE.search(name):
        found["scale"] = int(m.group(1))
    lower = name.lower()
    if "distil" in lower or "_dis-" in lower or lower.endswith("_dis.pth"):
        found["role"] = "student"
    elif "sigma" in lower and "checkpoint" in lower:
        found["role"] = "teacher"
    if "bicubic" in lower:
        found["degradation"] = "bicubic"
    elif "pool" in lower:
        found["degradation"] = "noisy_avgpool"
    elif "realesrgan" in lower or "real_sr" in lower or "realsr" in lower:
        found["degradation"] = "realesrgan"
    return found


def _parse_ours(meta: dict[str, str], path: Path) -> dict[str, object]:
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path.name}: OFTSR metadata is malformed (format_version "
                              f"{meta.get('format_version')!r})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path.name}: format version {version} is newer than this oftsr ({FORMAT_VERSION}); "
                              f"upgrade oftsr")
    try:
        return {
            "config": UNetConfig.from_dict(json.loads(meta["architecture"])),
            "role": meta["role"],
            "scale": int(meta["scale"]),
            "sigma_p": float(meta["sigma_p"]),
            "degradation": meta.get("degradation", "bicubic"),
            "step": int(meta.get("step", "0")),
            "objective": meta.get("objective", "oftsr"),  # files from before objectives existed: OFTSR
        }
    except (KeyError, ValueError, TypeError, RecursionError) as e:  # RecursionError: JSON nested past Python's stack
        raise CheckpointError(f"{path.name}: OFTSR metadata is incomplete or malformed ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e


def _export_advice(checkpoint: Path) -> str:
    return (f"export its EMA weights as a model file with `{EXPORT_COMMAND} {checkpoint} model.safetensors` "
            f"(the end of a run writes one: teacher.safetensors or student.safetensors in --output_dir), and load that")


# The model files a training run exports into its folder, the student first (the upscaler).
EXPORTED_MODELS = ("student.safetensors", "teacher.safetensors")


def folder_message(path: Path, role: str | None = None) -> str:
    """What a folder given as a model is, and what to load instead (the model of `role`
    first, where it holds both)."""
    exported = [path / name for name in EXPORTED_MODELS if (path / name).is_file()]
    exported.sort(key=lambda file: file.name != f"{role}.safetensors")
    if exported:  # a finished run's folder (or one that holds its files): the model is right there
        return f"{path} is a folder, not a model file: give the model file in it, " + " or ".join(map(str, exported))
    if (path / TRAINING_CHECKPOINT_INFO).is_file() or any(path.glob(f"checkpoint-*/{TRAINING_CHECKPOINT_INFO}")):
        return f"{path} is a training folder, not a model file: {_export_advice(path)}"
    return f"{path} is a folder, not a model file (.safetensors, or an authors' .pth)"


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None,
               sigma_p: float | None = None, role: str | None = None, scale: int | None = None,
               degradation: str | None = None, compile: bool | str = False) -> OFTSRModel:
    """Load our `.safetensors` or an authors' `.pth` (never unpickles arbitrary objects).
    Keyword overrides win over what the file says; one that contradicts what our file
    records warns (`OverrideWarning`: they are for files that do not say, such as an
    authors' `.pth`). A name that is neither a file nor a bundled model raises
    FileNotFoundError naming the closest bundled name. Returns the model frozen for
    inference (eval mode, `requires_grad` off: `.requires_grad_(True).train()` to fine-tune)
    on the inference fast path for its device (`OFTSRModel.optimize()`: the layout of
    `fastest_layout_is_channels_last`, again after a move to another device); `compile=True` (or a mode name,
    see `OFTSRModel.optimize`) adds `torch.compile`.
    A `path` given as a string may be a bundled model's name ("x4" is its student,
    "x4-teacher"; a name wins over a file of that name, as in `resolve_model`: ./x4 for
    the file), `dtype` a short name ("bf16", or torch's "bfloat16") or "auto" (half precision
    where it is fast: CUDA, CPUs with native bf16; `devices.auto_dtype`, as the command
    line's), and `device` "auto" (CUDA, then MPS, else CPU)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_model needs a bundled model's name (such as 'x4') or a file's path, got "
                        f"{type(path).__name__}")
    dtype, device = _load_dtype_and_device(dtype, device)
    if isinstance(path, str) and not path.strip():  # Path("") is the current folder
        raise ValueError("load_model: the model path is empty: give a bundled model's name (such as x4) or a file")
    if isinstance(path, str):  # a bundled model's name ("x4" = its student, "x4-teacher") or a path, as everywhere
        from .weights import existing_model_path

        path = existing_model_path(path, role or "student", option="load_model:")
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(folder_message(path, role))
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    overrides = {"sigma_p": sigma_p, "role": role, "scale": scale, "degradation": degradation}
    kind = _file_kind(path)  # a pipe or a device refused
    if kind == "safetensors":
        found, weights, info = _read_safetensors_model(path, overrides)
    else:
        found, weights, info = _read_torch_model(path)
    try:
        config = info.get("config") or infer_config(list(found.values()) if isinstance(found, dict) else found)
    except CheckpointError as e:  # infer_config knows the shapes, not the file: named here
        raise CheckpointError(f"{path.name}: {e}") from None
    if config.in_channels != 6 or config.out_channels < 3:
        raise CheckpointError(
            f"{path.name}: expected an OFTSR network with 6 input channels (state + LR condition) and at least 3 "
            f"output channels; found {config.in_channels} in, {config.out_channels} out (a checkpoint of another model?)"
        )
    _check_shapes(found, config, path)  # before the network takes real memory
    if weights is None:  # a safetensors file: its tensors read now that their shapes fit
        weights = canonical_state_dict(_read_safetensors(path)[0], path.name)
    unet, stored = _unet_with_weights(config, weights, path)
    info.update({k: v for k, v in overrides.items() if v is not None})
    model = _model_from_info(unet, info, path)
    model.stored_dtype = stored
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model.optimize(compile=compile)  # the faster memory layout for its device


def _load_dtype_and_device(dtype: torch.dtype | str | None, device: str | torch.device | None
                           ) -> tuple[torch.dtype | None, torch.device | None]:
    """`load_model`'s dtype (a torch dtype, a short name, "auto") and device checked and
    resolved: a device the machine lacks is said now, with the ones it has."""
    if isinstance(dtype, str) and dtype != "auto":
        if dtype.removeprefix("torch.") not in DTYPE_NAMES:
            raise ValueError(f"dtype must be a torch dtype, auto or one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        dtype = DTYPE_NAMES[dtype.removeprefix("torch.")]
    if dtype is not None and dtype != "auto" and dtype not in DTYPE_NAMES.values():  # float8, integers: fail late
        raise ValueError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
    if device is not None:
        device = resolve_device(device, "load_model: device")
    if dtype == "auto":  # as the command line's --dtype auto
        dtype = auto_dtype(device if device is not None else torch.device("cpu"))
    return dtype, device


def _read_safetensors_model(path: Path, overrides: dict[str, object]) -> tuple[dict, None, dict[str, object]]:
    """A .safetensors file's tensor shapes (its header only: the tensors are read once they
    fit) and what it says of its model: our metadata, with a warning for each override
    that contradicts it, else what an authors' file name says."""
    shapes_by_name, meta = _read_safetensors(path, header_only=True)
    if meta.get("format") != FORMAT_NAME and (path.parent / TRAINING_CHECKPOINT_INFO).is_file():
        raise CheckpointError(f"{path} is the raw state of the training checkpoint {path.parent}, not a model "
                              f"file: {_export_advice(path.parent)}")
    if meta.get("format") != FORMAT_NAME:
        return canonical_state_dict(shapes_by_name, path.name), None, parse_authors_filename(path.name)
    for key, (recorded, value) in _contradictions(meta, overrides).items():
        warnings.warn(f"{path.name} records {key} {recorded}; {key}={value!r} overrides it, which most likely "
                      f"gives a wrong image (the overrides are for files that do not say)", OverrideWarning,
                      stacklevel=3)
    return canonical_state_dict(shapes_by_name, path.name), None, _parse_ours(meta, path)


# torch.load(weights_only=True) of older torch could be made to run code (CVE-2025-32434)
SAFE_TORCH_LOAD = (2, 6)


def check_safe_torch_load(what: str, advice: str = "update torch") -> None:
    """Refuse to read the .pth file `what` names with a torch whose `weights_only` loader
    is not safe."""
    if torch_version() < SAFE_TORCH_LOAD:
        raise CheckpointError(f"{what}: reading a .pth file safely needs torch {'.'.join(map(str, SAFE_TORCH_LOAD))} "
                              f"or newer (torch {torch.__version__.split('+')[0]} can be made to run code hidden in "
                              f"one): {advice}")


def _read_torch_model(path: Path) -> tuple[dict | list, dict | list, dict[str, object]]:
    """An authors' .pth read without unpickling objects (`weights_only`): its tensor
    shapes, its weights (a state dict, or the EMA's positional list) and what its file
    name and training step say."""
    check_safe_torch_load(path.name, "update torch, or convert the file once with `oftsr convert` where torch is newer")
    _check_zip_sizes(path)
    try:
        with warnings.catch_warnings():  # a file saved with another pickle protocol: torch's note is not ours
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with open(path, "rb") as f:  # by content: torch takes a .safetensors name for that format
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, EOF, refused globals: all mean "not a clean tensor file"
        raise CheckpointError(_torch_load_error(path, e)) from e
    weights, step = _weights_from_torch_object(obj, path)
    info = {**parse_authors_filename(path.name), "step": step}
    found = {k: tuple(v.shape) for k, v in weights.items()} if isinstance(weights, dict) else \
        [tuple(t.shape) for t in weights]
    return found, weights, info


def _unet_with_weights(config: UNetConfig, weights: dict | list, path: Path) -> tuple[UNet, torch.dtype]:
    """The network of `config` holding `weights` in float32, and the dtype the file stored."""
    with torch.device("meta"):  # no random init to replace (nor a global random state to touch): the file's tensors
        unet = UNet(config)
    if not isinstance(weights, dict):  # the authors' positional list: in the order of the parameters
        weights = dict(zip((name for name, _ in unet.named_parameters()), weights, strict=True))
    _check_tensors(weights, path)
    # Fresh float32 memory for each tensor (fp16/bf16 files up-cast): a file's tensors lie at any
    # offset, and kernels on unaligned weights round differently. float32 whatever
    # torch.set_default_dtype says: `dtype` is the one way to ask for another.
    stored = collections.Counter(v.dtype for v in weights.values()).most_common(1)[0][0]  # the file's dtype
    tensors = {k: torch.empty(v.shape, dtype=torch.float32).copy_(v) for k, v in weights.items()}
    # a sum is NaN or infinite where a value is: one fast pass (a finite sum past float32's range is looked at again)
    broken = [k for k, v in tensors.items() if not math.isfinite(v.sum().item()) and not torch.isfinite(v).all()]
    if broken:  # it would make black or noise images without a word
        raise CheckpointError(f"{path.name}: {len(broken)} of its {len(tensors)} tensors hold NaN or infinity (first: "
                              f"{broken[0]}): the training run that wrote it diverged, or the file is damaged; use "
                              f"an earlier checkpoint")
    try:
        unet.load_state_dict(tensors, assign=True)
    except RuntimeError as e:  # checked against its header before: the file changed while it was read
        raise CheckpointError(f"{path.name}: its tensors do not fit the network its header describes "
                              f"({str(e).splitlines()[0]} ...): was it replaced while it was read? Load it again"
                              ) from None
    return unet, stored


def _model_from_info(unet: UNet, info: dict[str, object], path: Path) -> OFTSRModel:
    """The OFTSRModel around `unet` with what the file (and the overrides) say: sigma_p,
    role and scale are needed, from metadata, an authors' file name or the caller."""
    missing = [k for k in ("sigma_p", "role", "scale") if k not in info]
    if missing:
        flags = ", ".join(f"{k}=... (CLI: --{k.replace('_', '-')})" for k in missing)
        raise MissingInfoError(
            f"{path.name}: the file does not say its {', '.join(missing)} (no OFTSR metadata and no authors' file-name "
            f"pattern such as '...-sf4-...-sigma0.2-...-checkpoint_4.pth' for a teacher or '...-distil-...' for a "
            f"student); pass {flags}", missing
        )
    if info.get("objective", "oftsr") not in OBJECTIVES:  # OFTSRModel checks the others (and this, without the hint)
        raise CheckpointError(f"{path.name}: objective must be one of {OBJECTIVES}, got {info['objective']!r} "
                              f"(a file from a newer oftsr?)")
    try:
        return OFTSRModel(unet, sigma_p=float(info["sigma_p"]), role=str(info["role"]), scale=int(info["scale"]),
                          degradation=str(info.get("degradation", "bicubic")), step=int(info.get("step", 0)),
                          objective=str(info.get("objective", "oftsr")))
    except ValueError as e:  # a value out of range, from the file or an override
        raise CheckpointError(f"{path.name}: {e}") from None
