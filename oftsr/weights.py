"""Creating models from presets, and the bundled default models."""

from __future__ import annotations

from pathlib import Path

import torch

from .model import OFTSRModel
from .unet import PRESETS, UNet, UNetConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"


def create_model(preset: str | UNetConfig, *, role: str = "teacher", scale: int = 4, sigma_p: float = 0.2,
                 degradation: str = "bicubic", dropout: float = 0.0, seed: int | None = None) -> OFTSRModel:
    """A freshly initialised model (ADM init: residual branches and output start at zero)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet(preset, dropout=dropout)
    else:
        unet = UNet(preset, dropout=dropout)
    return OFTSRModel(unet, sigma_p=sigma_p, role=role, scale=scale, degradation=degradation)


def default_model_path(role: str) -> Path:
    """The bundled `<role>.safetensors`, or a clear error while none is bundled."""
    path = WEIGHTS_DIR / f"{role}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"no bundled {role} model in this installation ({path.name}); pass --model PATH with a checkpoint "
            f"(our .safetensors, or an authors' .pth converted with 'oftsr convert')"
        )
    return path
