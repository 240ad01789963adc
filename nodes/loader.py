"""Load OFTSR Model: the bundled default models, then the files of the `oftsr` model
folder (models/oftsr plus any extra_model_paths.yaml entries), our .safetensors or the
authors' .pth."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..oftsr import BUNDLED_MODELS, bundled_model_path, load_model
from ..oftsr.weights import BUNDLED_ROLES, shipped_model_names
from ..oftsr.checkpoint import CheckpointError, MissingInfoError, contradicted_metadata
from ..oftsr.model import DTYPES, MAX_SCALE
from .widgets import CATEGORY, OFTSR_MODEL, check_options

FOLDER_KEY = "oftsr"
FROM_FILE = "from file"
ROLE_OPTIONS = [FROM_FILE, "teacher", "student"]
# Combo names of the models shipped inside the package ("x4 student", "x4 teacher",
# "x4-real student", ...). They have no file extension and the model folder lists only
# files with a model extension, so they never shadow a file.
BUNDLED = {f"{name} {role}": (name, role) for name in BUNDLED_MODELS for role in BUNDLED_ROLES}
# Names saved workflows used before the models had names; still accepted (not listed).
OLD_NAMES = {"(bundled) oftsr-x4-student": "x4 student", "(bundled) oftsr-x4-teacher": "x4 teacher"}


def register_model_folder() -> None:
    """Register models/oftsr (made if missing) under the key "oftsr" with ComfyUI's model extensions,
    keeping (and listing after it) folders a user's extra_model_paths.yaml added, which
    ComfyUI applies before packs load. Idempotent."""
    default = os.path.join(folder_paths.models_dir, FOLDER_KEY)
    try:  # there to be found: where a user looks for the folder the loader lists
        os.makedirs(default, exist_ok=True)
    except OSError:  # a read-only installation: listed all the same
        pass
    paths, extensions = [default], set(folder_paths.supported_pt_extensions)
    existing = folder_paths.folder_names_and_paths.get(FOLDER_KEY)
    if existing is not None:
        old_paths, old_extensions = existing
        paths += [p for p in old_paths if p != default]
        extensions |= set(old_extensions)  # an empty set (from add_model_folder_path) adds nothing
    folder_paths.folder_names_and_paths[FOLDER_KEY] = (paths, extensions)


register_model_folder()


def model_options() -> list[str]:
    """The bundled models this installation ships first ("x4 student", the default, leads),
    then the model folder's files."""
    bundled = [label for label, (name, role) in BUNDLED.items() if BUNDLED_MODELS[name].path(role).is_file()]
    return bundled + folder_paths.get_filename_list(FOLDER_KEY)


# What each bundled model is for, in the loader's tooltip (those this installation ships).
def model_tooltip() -> str:
    shipped = shipped_model_names()
    uses = "; ".join(f"'{name} student' / '{name} teacher' are {BUNDLED_MODELS[name].purpose}" for name in shipped)
    return (f"A bundled model by name ({uses}): the student for OFTSR Upscale, the teacher for OFTSR Teacher "
            f"Sampler. Or a checkpoint placed by hand in models/oftsr (not models/upscale_models, which is for "
            f"ComfyUI's Load Upscale Model); nothing is downloaded.")


def model_path(model_name: str) -> str:
    model_name = OLD_NAMES.get(model_name, model_name)
    if model_name in BUNDLED:
        return str(bundled_model_path(*BUNDLED[model_name]))
    return folder_paths.get_full_path_or_raise(FOLDER_KEY, model_name)


def comfy_dtype(name: str, device: torch.device) -> torch.dtype:
    """The widget's dtype (checked by `check_options` before); auto is what ComfyUI would
    run its own models in on `device`."""
    if name != "auto":
        return DTYPES[name]
    if mm.should_use_bf16(device):
        return torch.bfloat16
    if mm.should_use_fp16(device):
        return torch.float16
    return torch.float32


class LoadOFTSRModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_model_folder()
        return io.Schema(
            node_id="OFTSRModelLoader",
            display_name="Load OFTSR Model",
            category=CATEGORY,
            description="Loads an OFTSR teacher or one-step student: a bundled model by name, or a file from "
                        "models/oftsr (or an extra_model_paths.yaml 'oftsr:' folder): our .safetensors, or the "
                        "authors' .pth files (read weights-only). The model stays on the offload device until a "
                        "sampling node runs.",
            inputs=[
                io.Combo.Input("model_name", options=model_options(),
                               tooltip=model_tooltip()),
                io.Combo.Input("dtype", options=["auto", *DTYPES], default="auto",
                               tooltip="Weight precision. auto: bf16 or fp16 where ComfyUI judges the device fast "
                                       "with it, else fp32."),
                io.Float.Input("sigma_p", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Start-point noise level the model was trained with; 0 = use the file's value "
                                       "(needed only for files without metadata or a 'sigma0.2'-style name; a value "
                                       "other than the one our files record is refused)."),
                io.Combo.Input("role", options=ROLE_OPTIONS, default=FROM_FILE,
                               tooltip="teacher (multi-step) or student (one step); 'from file' = what the file says "
                                       "(another value is for files that do not record it, such as the authors' .pth)."),
                io.Int.Input("scale", default=0, min=0, max=MAX_SCALE,
                             tooltip="Upscaling factor; 0 = use the file's value (a value other than the one our "
                                     "files record is refused)."),
            ],
            outputs=[OFTSR_MODEL.Output(display_name="model",
                                        tooltip="The loaded teacher or student, for the OFTSR sampling nodes.")],
        )

    @classmethod
    def validate_inputs(cls, model_name: str | None = None) -> bool | str:
        """The model list, checked before the prompt runs (model_name alone: ComfyUI files
        the error under every input this takes); it also accepts the names older saved
        workflows used for the bundled models."""
        if isinstance(model_name, str) and OLD_NAMES.get(model_name, model_name) not in model_options():
            return (f"model_name {model_name!r} is not available; choose one of the list (bundled models, or files in "
                    f"models/oftsr)")
        return True

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto", sigma_p: float = 0.0, role: str = FROM_FILE,
                scale: int = 0) -> io.NodeOutput:
        check_options(dtype=(dtype, ["auto", *DTYPES]), role=(role, ROLE_OPTIONS))
        path = model_path(model_name)
        # 0 and "from file" keep what the file says
        overrides = {"sigma_p": float(sigma_p) if sigma_p > 0 else None, "scale": int(scale) if scale > 0 else None,
                     "role": None if role == FROM_FILE else role}
        try:
            # A value the file records wins over these widgets, which are for files that do not say.
            for key, (recorded, value) in contradicted_metadata(path, **overrides).items():
                keep = f"set {key} to 'from file'" if key == "role" else f"set {key} to 0"
                shown = value if isinstance(value, str) else f"{value:g}"
                raise ValueError(f"{model_name} records {key} {recorded}, and running it with {key} {shown} "
                                 f"would give a wrong image: {keep} on Load OFTSR Model to use the file's "
                                 f"value (other values are for files that do not record it)")
            model = load_model(path, device=mm.unet_offload_device(),
                               dtype=comfy_dtype(dtype, mm.get_torch_device()), **overrides)
        except MissingInfoError as e:
            raise ValueError(f"{model_name}: the file does not say its {', '.join(e.missing)}; set them on this "
                             f"Load OFTSR Model node (0 / 'from file' keep the file's values).") from e
        except CheckpointError as e:  # shown as a plain error, not as the pack's module path
            message = str(e) if Path(path).name in str(e) else f"{model_name}: {e}"
            if "not an OFTSR checkpoint" in message:
                message += ("; an ESRGAN-type upscaler loads with ComfyUI's Load Upscale Model, from "
                            "models/upscale_models")
            raise ValueError(message) from e
        return io.NodeOutput(model)
