from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import oftsr
import oftsr.cli
import oftsr.devices

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "official-unet-tiny"
DATA = SHARED / "data"


@pytest.fixture(autouse=True)
def float32_auto_on_cpus(monkeypatch):
    """`--dtype auto` picks bf16 on CPUs with native bf16: the tests that compare the command
    line's output with the library's exactly run it in float32 on every CPU (the bf16 choice
    has tests of its own, which patch this back)."""
    monkeypatch.setattr(oftsr.devices, "cpu_has_native_bf16", lambda: False)


# Where the shared folder is known to be there (CI), its absence fails the tests that use it
# instead of skipping them: a green run then means the fixture and photograph tests ran.
NEED_SHARED = os.environ.get("OFTSR_TESTS_NEED_SHARED", "") not in ("", "0")


def need(path: Path) -> Path:
    if not path.exists():
        message = f"{path} is not present (the shared fixtures/data folder sits beside the repository)"
        if NEED_SHARED:
            pytest.fail(f"{message}, and OFTSR_TESTS_NEED_SHARED is set")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return need(FIXTURE)


@pytest.fixture(scope="session")
def random_unet_weights() -> dict[str, torch.Tensor]:
    """Tiny UNet with every parameter random (ADM's zero-init would make outputs trivial)."""
    g = torch.Generator().manual_seed(0)
    unet = oftsr.UNet(oftsr.PRESETS["tiny"])
    return {k: torch.randn(v.shape, generator=g) * (0.5 / max(1, v[0].numel()) ** 0.5 if v.ndim > 1 else 0.1)
            for k, v in unet.state_dict().items()}


def make_model(weights: dict[str, torch.Tensor], role: str = "student", sigma_p: float = 0.2, scale: int = 4) -> oftsr.OFTSRModel:
    unet = oftsr.UNet(oftsr.PRESETS["tiny"])
    unet.load_state_dict(weights)
    return oftsr.OFTSRModel(unet, sigma_p=sigma_p, role=role, scale=scale).eval()


@pytest.fixture
def student(random_unet_weights) -> oftsr.OFTSRModel:
    return make_model(random_unet_weights, "student")


@pytest.fixture
def teacher(random_unet_weights) -> oftsr.OFTSRModel:
    return make_model(random_unet_weights, "teacher")


def smooth_image(h: int, w: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A photo-like test image: smooth colour fields plus edges, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, channels, max(2, h // 8), max(2, w // 8), generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = img + 0.3 * ((xx - 0.4) ** 2 + (yy - 0.5) ** 2 < 0.05).float()
    return img.clamp(0, 1)
