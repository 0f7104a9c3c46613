"""Where a number came from: the hardware and software fingerprint stored beside every
result, and the device a stage runs on."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from datetime import datetime, timezone


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo, e.g. "AMD EPYC"), None where it is not known."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return None


def fingerprint(device: str | None = None) -> dict:
    """Hardware and software versions, stored beside every number."""
    import numpy
    import torch

    info = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    # The installed version, without importing torch-fidelity (seconds of start-up per job).
    try:
        info["torch_fidelity"] = importlib.metadata.version("torch-fidelity")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a hard dependency
        info["torch_fidelity"] = None
    if device is not None:
        info["device"] = str(device)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
            info["cuda"] = torch.version.cuda
        else:
            model = f"{info['cpu_model']}, " if info["cpu_model"] else ""
            info["device_name"] = f"CPU ({model}{info['cpu']}, {info['cpu_count']} cores)"
    return info


def resolve_device(device: str) -> str:
    """`auto` means CUDA when present, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device
