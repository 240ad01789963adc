"""Creating models from presets, and the bundled models by name (`x4`, `x4-real`)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import OFTSRModel
from .unet import PRESETS, UNet, UNetConfig, initialise

WEIGHTS_DIR = Path(__file__).parent / "weights"


def create_model(preset: str | UNetConfig, *, role: str = "teacher", scale: int = 4, sigma_p: float = 0.2,
                 degradation: str = "bicubic", dropout: float = 0.0, seed: int | None = None) -> OFTSRModel:
    """A freshly initialised model (ADM init: residual branches and output start at zero).
    With `seed`, the same weights for the same seed, whatever other threads draw meanwhile."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if isinstance(seed, bool) or not (seed is None or isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    if seed is not None:  # the init torch.manual_seed(seed) would give, the global random state untouched
        with torch.device("meta"):
            unet = UNet(preset, dropout=dropout)
        unet = unet.to_empty(device="cpu")
        initialise(unet, torch.Generator().manual_seed(seed))
    else:
        unet = UNet(preset, dropout=dropout)
    return OFTSRModel(unet, sigma_p=sigma_p, role=role, scale=scale, degradation=degradation)


@dataclass(frozen=True)
class BundledModel:
    """A named teacher + student pair that can ship inside the package."""

    name: str
    purpose: str
    recipe: str  # how to make the files where a version does not ship them

    def path(self, role: str) -> Path:
        return WEIGHTS_DIR / f"{self.name}-{role}.safetensors"


BUNDLED_MODELS = {
    "x4": BundledModel("x4", "x4, bicubic degradation: clean and AI-generated images",
                       "DATA=path/to/data bash scripts/train_x4_models.sh x4"),
    "x4-real": BundledModel("x4-real", "x4, Real-ESRGAN degradation: real camera photographs (noise, blur, JPEG)",
                            "DATA=path/to/data bash scripts/train_x4_models.sh x4-real"),
}
DEFAULT_MODEL = "x4"
BUNDLED_ROLES = ("student", "teacher")


def bundled_model_path(name: str, role: str) -> Path:
    """The file of a bundled model's `role` ("student" or "teacher"), or a clear error
    saying how to make it when this installation does not ship it."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown model name {name!r}; bundled names are {', '.join(BUNDLED_MODELS)}")
    if role not in BUNDLED_ROLES:
        raise ValueError(f"role must be student or teacher, got {role!r}")
    model = BUNDLED_MODELS[name]
    path = model.path(role)
    if not path.is_file():
        raise FileNotFoundError(
            f"the {name} {role} ({model.purpose}) is not bundled in this version of oftsr ({path.name} is missing). "
            f"Train it on a GPU with the OFTSR repository's recipe, `{model.recipe}`, then give the path of the "
            f"{role}.safetensors it writes instead of the name, or any other checkpoint (our .safetensors, or an "
            f"authors' .pth)"
        )
    return path


def shipped_model_names() -> list[str]:
    """The bundled pairs this installation has both files of."""
    return [name for name, model in BUNDLED_MODELS.items() if all(model.path(r).is_file() for r in BUNDLED_ROLES)]


def model_name_help() -> str:
    """The bundled names for a --model help: those shipped, and those this version lacks."""
    shipped = shipped_model_names()
    missing = [name for name in BUNDLED_MODELS if name not in shipped]
    return ", ".join(shipped) + (f"; {', '.join(missing)}: not bundled in this version" if missing else "")


def default_model_path(role: str) -> Path:
    """The bundled default model's `role` file (the x4 pair)."""
    return bundled_model_path(DEFAULT_MODEL, role)


def split_model_name(spec: str) -> tuple[str, str | None] | None:
    """("x4", None) for "x4", ("x4", "teacher") for "x4-teacher"; None when `spec` is not
    a bundled model's name (then it is a path)."""
    if spec in BUNDLED_MODELS:
        return spec, None
    for role in BUNDLED_ROLES:
        name = spec.removesuffix(f"-{role}")
        if name != spec and name in BUNDLED_MODELS:
            return name, role
    return None


def resolve_model(spec: str | Path | None, role: str) -> Path:
    """What a `--model` value means: nothing = the default bundled model, a name ("x4",
    "x4-real") = that pair's `role` file, a name with a role ("x4-teacher") = that file,
    anything else = a checkpoint path. Names win over same-named files; write ./x4 for those."""
    if spec is None:
        return default_model_path(role)
    named = split_model_name(str(spec)) if not isinstance(spec, Path) else None
    if named is None:
        return Path(spec).expanduser()
    name, explicit_role = named
    return bundled_model_path(name, explicit_role or role)


def existing_model_path(spec: str | Path | None, role: str, option: str = "--model") -> Path:
    """`resolve_model` for a file that must be there: a path that is not says what
    `option` takes instead."""
    path = resolve_model(spec, role)
    if path.is_dir():
        from .checkpoint import CheckpointError, folder_message

        raise CheckpointError(f"{option} {folder_message(path, role)}")
    if not path.exists():
        if path.is_symlink():
            where = "which is not there"
            try:
                path.resolve(strict=True)
            except FileNotFoundError:
                pass
            except (OSError, RuntimeError):  # ELOOP (RuntimeError before Python 3.13)
                where = "a loop of links that leads back to itself"
            raise FileNotFoundError(f"{option} {spec}: a link to {os.readlink(path)}, {where}")
        names = [*BUNDLED_MODELS, *(f"{n}-{r}" for n in BUNDLED_MODELS for r in BUNDLED_ROLES)]
        close = difflib.get_close_matches(str(spec).lower(), names, n=1, cutoff=0.75) if spec else []
        hint = f"; did you mean {close[0]}?" if close else ""
        raise FileNotFoundError(f"{option} {spec or path}: no such file, and not a bundled model's name "
                                f"({', '.join(BUNDLED_MODELS)}; with a role: {DEFAULT_MODEL}-{role}){hint}")
    return path
