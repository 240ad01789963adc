"""Stand-ins for the parts of ComfyUI the OFTSR nodes use, so the nodes can be tested
without ComfyUI: `comfy_api.latest` (ComfyExtension, io), `comfy.model_management`,
`comfy.utils`, `comfy.cli_args` and `folder_paths`.

The `io` stand-in keeps the real V3 API's shape (class names, constructor parameters in
the same order, NumberDisplay, Custom types, Schema validation, NodeOutput) and nothing
else. `install(monkeypatch, models_dir)` puts the modules into sys.modules; monkeypatch
takes them out again.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from abc import ABC, abstractmethod
from collections import Counter
from enum import Enum
from typing import Any

import torch

# --------------------------------------------------------------------------- comfy_api.latest.io


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class Input:
    Parent: Any = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None, raw_link: bool = None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}
        self.raw_link = raw_link

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None, raw_link: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input


class Output:
    Parent: Any = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class ComfyTypeIO:
    io_type: str = None
    Input = Input
    Output = Output


def comfytype(io_type: str):
    """Bind io_type, and give the type its own Input/Output subclasses pointing back at it."""

    def decorate(cls):
        cls.io_type = io_type
        cls.Input = type("Input", (cls.Input,), {"Parent": cls})
        cls.Output = type("Output", (cls.Output,), {"Parent": cls})
        return cls

    return decorate


def Custom(io_type: str) -> type[ComfyTypeIO]:
    @comfytype(io_type)
    class CustomComfyType(ComfyTypeIO):
        pass

    return CustomComfyType


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: bool = None, label_on: str = None, label_off: str = None, socketless: bool = None,
                     force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.label_on, self.label_off = label_on, label_off


@comfytype("INT")
class Int(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: int = None, min: int = None, max: int = None, step: int = None,
                     control_after_generate: bool = None, display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: float = None, min: float = None, max: float = None, step: float = None,
                     round: float = None, display_mode: NumberDisplay = None, socketless: bool = None,
                     force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode


@comfytype("STRING")
class String(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    class Input(WidgetInput):
        def __init__(self, id: str, options: list = None, display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: Any = None, control_after_generate: bool = None, upload=None,
                     image_folder=None, remote=None, socketless: bool = None, extra_dict=None, raw_link: bool = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None, extra_dict,
                             raw_link)
            self.options, self.control_after_generate = options, control_after_generate
            self.upload, self.image_folder, self.remote = upload, image_folder, remote


@comfytype("IMAGE")
class Image(ComfyTypeIO):
    pass


@comfytype("MASK")
class Mask(ComfyTypeIO):
    pass


@comfytype("UPSCALE_MODEL")
class UpscaleModel(ComfyTypeIO):
    pass


@dataclasses.dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)
    hidden: list = dataclasses.field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        ids_in, ids_out = [i.id for i in self.inputs], [o.id for o in self.outputs if o.id is not None]
        issues = [f"duplicate ids {[k for k, n in Counter(ids).items() if n > 1]}" for ids in (ids_in, ids_out)
                  if len(set(ids)) != len(ids)]
        if set(ids_in) & set(ids_out):
            issues.append(f"ids shared by inputs and outputs: {set(ids_in) & set(ids_out)}")
        if issues:
            raise ValueError("\n".join(issues))


class ComfyNode:
    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs) -> "NodeOutput":
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list[type[ComfyNode]]:
        ...


def _io_module() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    for obj in (NumberDisplay, Input, WidgetInput, Output, ComfyTypeIO, comfytype, Custom, Boolean, Int, Float, String,
                Combo, Image, Mask, UpscaleModel, Schema, ComfyNode, NodeOutput):
        setattr(io, obj.__name__, obj)
    return io


# --------------------------------------------------------------------------- comfy.model_management, comfy.utils


class InterruptProcessingException(Exception):
    pass


class ModelManagement(types.ModuleType):
    """comfy.model_management on a CPU-only machine, recording what the nodes ask of it."""

    InterruptProcessingException = InterruptProcessingException
    OOM_EXCEPTION = torch.cuda.OutOfMemoryError

    def __init__(self) -> None:
        super().__init__("comfy.model_management")
        self.interrupt_processing = False
        self.interrupt_checks = 0
        self.freed: list[tuple[int, torch.device]] = []
        self.empty_cache_calls = 0
        self.fp16 = self.bf16 = False

    def get_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def unet_offload_device(self) -> torch.device:
        return torch.device("cpu")

    def intermediate_device(self) -> torch.device:
        return torch.device("cpu")

    def free_memory(self, memory_required, device, keep_loaded=()) -> None:
        self.freed.append((int(memory_required), device))

    def soft_empty_cache(self, force=False) -> None:
        self.empty_cache_calls += 1

    def module_size(self, module: torch.nn.Module) -> int:
        return sum(t.nelement() * t.element_size() for t in module.state_dict().values())

    def should_use_fp16(self, device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
        return self.fp16

    def should_use_bf16(self, device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
        return self.bf16

    def interrupt_current_processing(self, value=True) -> None:
        self.interrupt_processing = value

    def processing_interrupted(self) -> bool:
        return self.interrupt_processing

    def throw_exception_if_processing_interrupted(self) -> None:
        self.interrupt_checks += 1
        if self.interrupt_processing:
            self.interrupt_processing = False
            raise InterruptProcessingException()


class ProgressBar:
    """comfy.utils.ProgressBar: every update is recorded and passed to PROGRESS_BAR_HOOK."""

    instances: list["ProgressBar"] = []

    def __init__(self, total, node_id=None):
        self.total, self.current, self.updates, self.previews = total, 0, [], []
        ProgressBar.instances.append(self)

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        value = min(value, self.total)
        self.current = value
        self.updates.append((value, self.total))
        self.previews.append(preview)
        hook = sys.modules["comfy.utils"].PROGRESS_BAR_HOOK
        if hook is not None:
            hook(value, self.total, preview)

    def update(self, value):
        self.update_absolute(self.current + value)


class LatentPreviewMethod(str, Enum):
    """comfy.cli_args.LatentPreviewMethod."""
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


def _cli_args() -> types.ModuleType:
    """comfy.cli_args: `args` as parsed, with previews on (`--preview-method auto`;
    ComfyUI's own default is none) at ComfyUI's default size."""
    module = types.ModuleType("comfy.cli_args")
    module.LatentPreviewMethod = LatentPreviewMethod
    module.args = types.SimpleNamespace(preview_method=LatentPreviewMethod.Auto, preview_size=512)
    return module


# --------------------------------------------------------------------------- folder_paths


def _folder_paths(models_dir: str) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = models_dir
    fp.supported_pt_extensions = {".ckpt", ".pt", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {"upscale_models": ([os.path.join(models_dir, "upscale_models")], fp.supported_pt_extensions)}

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[folder_name][0]
            if is_default:
                paths.insert(0, full_folder_path)
            else:
                paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_folder_paths(folder_name):
        return fp.folder_names_and_paths[folder_name][0][:]

    def get_filename_list(folder_name):
        paths, extensions = fp.folder_names_and_paths[folder_name]
        found = set()
        for root in paths:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d != ".git"]
                for name in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    if not extensions or os.path.splitext(rel)[1].lower() in extensions:
                        found.add(rel)
        return sorted(found)

    def get_full_path(folder_name, filename):
        if folder_name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for root in fp.folder_names_and_paths[folder_name][0]:
            path = os.path.join(root, filename)
            if os.path.isfile(path):
                return path
        return None

    def get_full_path_or_raise(folder_name, filename):
        path = get_full_path(folder_name, filename)
        if path is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return path

    for f in (add_model_folder_path, get_folder_paths, get_filename_list, get_full_path, get_full_path_or_raise):
        setattr(fp, f.__name__, f)
    return fp


# --------------------------------------------------------------------------- installing


@dataclasses.dataclass
class Stubs:
    model_management: ModelManagement
    utils: types.ModuleType
    cli_args: types.ModuleType
    folder_paths: types.ModuleType
    io: types.ModuleType

    @property
    def progress_bars(self) -> list[ProgressBar]:
        return ProgressBar.instances


def install(monkeypatch, models_dir: str | os.PathLike) -> Stubs:
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = ModelManagement()
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    utils.PROGRESS_BAR_HOOK = None
    cli_args = _cli_args()
    comfy.model_management, comfy.utils, comfy.cli_args = mm, utils, cli_args
    ProgressBar.instances = []

    api = types.ModuleType("comfy_api")
    api.__path__ = []
    latest = types.ModuleType("comfy_api.latest")
    latest.io = _io_module()
    latest.ComfyExtension = ComfyExtension
    api.latest = latest

    fp = _folder_paths(str(models_dir))
    for name, module in {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils,
                         "comfy.cli_args": cli_args, "comfy_api": api, "comfy_api.latest": latest,
                         "folder_paths": fp}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return Stubs(mm, utils, cli_args, fp, latest.io)
