"""OFTSR: one-step flow image super-resolution with a tunable fidelity-realism trade-off.

Pure PyTorch; no ComfyUI import. Images are float tensors (B, C, H, W) in [0, 1].
"""

from .checkpoint import CheckpointError, load_model, read_metadata, save_model
from .inference import sample, upscale
from .model import OFTSRModel
from .unet import PRESETS, UNet, UNetConfig
from .weights import (BUNDLED_MODELS, bundled_model_path, create_model, default_model_path, existing_model_path,
                      resolve_model)

__version__ = "0.16.0"  # as in pyproject.toml, where the Comfy registry reads it; a test keeps them equal

__all__ = [
    "BUNDLED_MODELS", "CheckpointError", "OFTSRModel", "PRESETS", "UNet", "UNetConfig", "bundled_model_path",
    "create_model", "default_model_path", "existing_model_path", "load_model", "read_metadata", "resolve_model",
    "sample", "save_model", "upscale",
]
