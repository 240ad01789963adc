"""OFTSR: one-step flow image super-resolution with a tunable fidelity-realism trade-off.

Pure PyTorch; no ComfyUI import. Images are float tensors (B, C, H, W) in [0, 1].
"""

import torch as _torch

from .devices import torch_version as _torch_version

# torch.uint16 and torch.compiler came in 2.3, torch.library.custom_op in 2.4: an older
# torch (an old ComfyUI's, which installing this pack leaves alone) would fail at import
# with an AttributeError
if _torch_version() < (2, 4):
    raise ImportError(f"OFTSR needs torch 2.4 or newer; this Python has torch {_torch.__version__}: update it "
                      f"(in ComfyUI, update ComfyUI and its requirements)")

from .checkpoint import CheckpointError, OverrideWarning, load_model, read_metadata, save_model  # noqa: E402
from .inference import sample, upscale  # noqa: E402
from .model import OFTSRModel, RunWarning  # noqa: E402
from .unet import PRESETS, UNet, UNetConfig  # noqa: E402
from .weights import (BUNDLED_MODELS, bundled_model_path, create_model, default_model_path,  # noqa: E402
                      existing_model_path, resolve_model)

__version__ = "0.30.0"  # as in pyproject.toml, where the Comfy registry reads it; a test keeps them equal

__all__ = [
    "BUNDLED_MODELS", "CheckpointError", "OFTSRModel", "OverrideWarning", "PRESETS", "RunWarning", "UNet",
    "UNetConfig", "bundled_model_path",
    "create_model", "default_model_path", "existing_model_path", "load_model", "read_metadata", "resolve_model",
    "sample", "save_model", "upscale",
]
