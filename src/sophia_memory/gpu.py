"""Detecting a usable GPU without ever failing because of CuPy.

CuPy is only imported when it is installed, and every error it raises while probing (no
driver, no device, CUDA runtime errors) becomes a reason string instead of an exception.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["GpuInfo", "detect_gpu"]


@dataclass(frozen=True)
class GpuInfo:
    """What the probe found: a usable device (with its name and memory) or why not."""

    available: bool
    reason: str
    name: str | None = None
    total_bytes: int | None = None
    cupy_version: str | None = None


def detect_gpu(device: int = 0) -> GpuInfo:
    """Probe GPU ``device`` through CuPy; never raises."""
    try:
        missing = importlib.util.find_spec("cupy") is None
    except (ImportError, ValueError):  # a module without a spec already in sys.modules
        missing = False
    if missing:
        return GpuInfo(False, "CuPy is not installed (pip install 'sophia-memory[gpu]')")
    try:
        import cupy
    except Exception as exc:  # a broken CuPy install must not break the library
        return GpuInfo(False, f"CuPy failed to import: {exc}")
    version: str | None = None
    try:
        version = str(getattr(cupy, "__version__", "unknown"))
        count = int(cupy.cuda.runtime.getDeviceCount())
        if count <= device:
            return GpuInfo(False, f"no CUDA device {device} (found {count})",
                           cupy_version=version)
        props = cupy.cuda.runtime.getDeviceProperties(device)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        with cupy.cuda.Device(device):
            _free, total = cupy.cuda.runtime.memGetInfo()
        return GpuInfo(True, "CUDA device found", name, int(total), version)
    except Exception as exc:  # CUDARuntimeError and friends when there is no usable GPU
        return GpuInfo(False, f"no usable CUDA device: {exc}", cupy_version=version)
