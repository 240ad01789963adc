"""Devices by name (which this machine has, and `auto`, for the CLI and `load_model`) and
their memory: how much is free, and whether an error is running out of it."""

from __future__ import annotations

import torch


def torch_version() -> tuple[int, ...]:
    """torch's (major, minor), from its version string ("2.6.0+cu124", "2.7.0a0")."""
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())


def available_devices() -> list[str]:
    """The devices this machine has, by name, CPU first."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += [f"xpu:{i}" for i in range(xpu.device_count())]
    return names


def resolve_device(name: str | torch.device, what: str = "--device") -> torch.device:
    """`auto` (CUDA, then MPS, else CPU) or a device this machine has. A CPU, CUDA, MPS or
    XPU device it lacks, or a name torch does not know, is a ValueError that lists the
    devices there are (instead of torch's "Found no NVIDIA driver" at the first tensor);
    other backends' devices (DirectML's privateuseone) are passed on as they are."""
    if str(name) != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:  # not a device type torch knows
            device = None
        if device is not None and device.type == "meta":
            raise ValueError(f"{what} meta: a meta tensor holds no values to compute with; available: "
                             f"{', '.join(available_devices())} (or auto)")
        if device is not None and device.type not in ("cpu", "cuda", "mps", "xpu"):
            return device
        if device is not None and device.type in ("cuda", "xpu"):
            present = f"{device.type}:{device.index or 0}"
        elif device is not None and device.index:  # one CPU, one Apple GPU: cpu:3 names nothing
            present = str(device)
        else:
            present = device.type if device is not None else ""
        if present not in available_devices():
            raise ValueError(f"{what} {name}: this machine has no such device; available: "
                             f"{', '.join(available_devices())} (or auto)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-bf16 or AMX, as oneDNN reports it).
    Without them oneDNN emulates bf16, at about half float32's speed."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def auto_dtype(device: torch.device, cpu_bf16: bool = True) -> torch.dtype:
    """The weights' dtype for "auto": half precision where it is fast and its output
    indistinguishable (CUDA; CPUs with native bf16 unless `cpu_bf16` is False, as for
    evaluation figures that must not depend on the CPU), else float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16():
        # Measured on an AMD EPYC with AVX512-bf16: the bundled student 1.8x faster, its
        # output 60.5 dB PSNR from float32's; Set5 Y-PSNR within 0.01 dB at every t.
        return torch.bfloat16
    return torch.float32  # emulated bf16 and fp16 are slower on CPUs, and MPS lacks some bf16 kernels


# "CUDA out of memory", "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
# (Linux, macOS), "... not enough memory: ..." (Windows): out of memory, which every back-end
# raises as a RuntimeError.
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(e: BaseException) -> bool:
    """torch's out-of-memory errors (CPU allocator, CUDA, MPS), and Python's own (numpy)."""
    return isinstance(e, MemoryError) or isinstance(e, RuntimeError) and any(s in str(e).lower() for s in OOM_MESSAGES)


def error_summary(e: BaseException) -> str:
    """An error's first line, at most 200 characters (torch's out-of-memory messages go on
    for lines), or its type where it has no message."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def available_memory(device: torch.device) -> int | None:
    """Bytes that new tensors on `device` can still take, or None where it cannot be told.
    The CPU's from the system (psutil: Linux, Windows, macOS); Apple's MPS, whose memory the
    CPU shares, by what Metal recommends this process keep to, less what it holds."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):  # torch 2.5+
        return max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return None
