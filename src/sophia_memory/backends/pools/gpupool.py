"""L0 pools in GPU memory through CuPy (``cupy://<device>``).

The pool logic (budgets, per-pool LRU, out-of-memory -> evict -> free -> retry, spill) is
:class:`~.hostpool.PoolBackend`, the same code the host pools run; this module adds only the
allocator:

* one ``cupy.cuda.MemoryPool`` per named pool, hard-limited with ``set_limit(size=budget)``;
  every allocation of an item runs under ``cupy.cuda.using_allocator(pool.malloc)``, so a full
  pool raises CuPy's ``OutOfMemoryError`` (turned into :class:`PoolOutOfMemory`);
* NumPy values are staged through pinned host memory and copied on a non-blocking stream
  (synchronised before ``put`` returns, so the item is readable and the staging buffer free);
* torch tensors travel through DLPack both ways: a ``get`` returns a CUDA torch tensor whose
  memory is the pool's (no copy); dtypes CuPy lacks (bfloat16, float8) are moved as integers
  of the same width and viewed back;
* ``get`` of a resident item returns the device array itself (CuPy for NumPy and CuPy input);
  :func:`~.hostpool.to_host` makes an explicit host copy;
* an evicted home item leaves the pool before it spills: NumPy input spills as NumPy, torch as
  a CPU tensor, CuPy as a CuPy array outside the pools.

CuPy is imported only when a ``cupy://`` tier is opened. Without a usable GPU (CuPy missing,
broken, no device, runtime errors) the tier falls back to the host pools with one warning
saying why; it never raises because of CuPy.

NOTE: the CuPy allocator has not been run on a GPU yet (it was written on a machine without
one); ``tests/test_gpu.py`` holds its tests, which skip without a device.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._arrays import array_kind, to_numpy
from ...gpu import detect_gpu
from ...pools import device_memory, format_bytes, plan_pools
from .hostpool import (
    Allocation,
    HostPoolBackend,
    PoolAllocator,
    PoolBackend,
    PoolOutOfMemory,
    data_bytes,
    default_pool_of,
)

if TYPE_CHECKING:
    from ...config import MemoryConfig
    from ..base import Backend

__all__ = ["CupyAllocator", "CupyPoolBackend", "open_gpu_pools"]

log = logging.getLogger("sophia_memory")

_BLOCK = 512  # CuPy rounds every allocation up to 512 bytes


class CupyAllocator(PoolAllocator):
    """One ``cupy.cuda.MemoryPool`` per named pool on one device (not yet run on a GPU)."""

    def __init__(self, device: int, limits: Mapping[str, int]) -> None:
        import cupy

        self._cp: Any = cupy
        self._oom: type[BaseException] = cupy.cuda.memory.OutOfMemoryError
        self._device = cupy.cuda.Device(device)
        name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
        self.device = f"cuda:{device} ({name.decode() if isinstance(name, bytes) else name})"
        self._pools: dict[str, Any] = {}
        with self._device:
            for pool, limit in limits.items():
                mp = cupy.cuda.MemoryPool()
                mp.set_limit(size=limit)
                self._pools[pool] = mp
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._staging: list[Any] = []

    # -- in ---------------------------------------------------------------------------------------

    def store(self, pool: str, value: Any) -> Allocation:
        cp = self._cp
        arrays: dict[str, Any] = {}
        payload: dict[str, Any] = {}
        origin: dict[str, str] = {}
        try:
            with self._device, self._stream, cp.cuda.using_allocator(self._pools[pool].malloc):
                items = value.items() if isinstance(value, dict) else (("", value),)
                for k, v in items:
                    payload[k], arrays[k], origin[k] = self._copy_in(v)
                self._stream.synchronize()
        except self._oom as exc:
            arrays.clear()  # the traceback must not keep half an item's blocks alive
            payload.clear()
            raise PoolOutOfMemory(pool, _rounded(value), str(exc)) from None
        finally:
            self._staging.clear()
        if not isinstance(value, dict):
            return Allocation(payload[""], _rounded(value), data_bytes(value),
                              (arrays[""], origin[""]))
        return Allocation(payload, _rounded(value), data_bytes(value), (arrays, origin))

    def _copy_in(self, v: Any) -> tuple[Any, Any, str]:
        """(what ``get`` returns, the pool's device array, the family it came as)."""
        cp = self._cp
        kind = array_kind(v)
        if kind == "cupy":
            arr = v.copy()  # device to device, into this pool, on the pool stream
            return arr, arr, "cupy"
        if kind == "numpy":
            return *self._from_host(v), "numpy"
        torch = sys.modules["torch"]
        t = v.detach()
        target = t.dtype
        if t.device.type == "cuda":
            t = t.contiguous()
            try:
                src = cp.from_dlpack(t)  # zero-copy view of torch's memory
            except Exception:  # a dtype CuPy lacks: move the same bytes as integers
                width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
                src = cp.from_dlpack(t.view(width[t.element_size()]))
            arr = src.copy()
        else:
            host, _ = to_numpy(t, "torch")  # bfloat16 and friends come as raw integers
            arr, _ = self._from_host(host)
        out = torch.from_dlpack(arr)  # zero-copy: the tensor's memory is the pool's
        return (out if out.dtype == target else out.view(target)), arr, "torch"

    def _from_host(self, v: Any) -> tuple[Any, Any]:
        arr = self._cp.empty(v.shape, v.dtype)
        if v.nbytes:
            pinned = self._cp.cuda.alloc_pinned_memory(v.nbytes)  # page-locked: async copy
            staged = np.frombuffer(pinned, v.dtype, v.size).reshape(v.shape)
            staged[...] = v
            arr.set(staged, stream=self._stream)
            self._staging.append(staged)  # alive until the stream is synchronised
        return arr, arr

    # -- out --------------------------------------------------------------------------------------

    def detach(self, allocation: Allocation) -> Any:
        arrays, origin = allocation.handle
        if isinstance(origin, dict):
            return {k: self._out(allocation.payload[k], arrays[k], o) for k, o in origin.items()}
        return self._out(allocation.payload, arrays, origin)

    def _out(self, payload: Any, arr: Any, origin: str) -> Any:
        if origin == "numpy":
            return arr.get()
        if origin == "torch":
            return payload.cpu()
        with self._device:  # the default allocator: outside every pool
            return arr.copy()

    def release(self, pool: str, allocation: Allocation) -> None:
        # The blocks go back to the pool once nothing references the arrays any more (a
        # caller still holding a returned array keeps its block until it lets go).
        allocation.handle = None

    def allocated(self, pool: str) -> int:
        return int(self._pools[pool].total_bytes())

    def free_cached(self, pool: str) -> None:
        self._pools[pool].free_all_blocks()

    def fragmentation(self, pool: str, items_bytes: int) -> float:
        mp = self._pools[pool]
        total = int(mp.total_bytes())
        return 0.0 if total <= 0 else round(1.0 - int(mp.used_bytes()) / total, 4)

    def close(self) -> None:
        for mp in self._pools.values():
            mp.free_all_blocks()


def _rounded(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_rounded(v) for v in value.values())
    return -(-data_bytes(value) // _BLOCK) * _BLOCK


class CupyPoolBackend(PoolBackend):
    """The L0 pools on a GPU (``cupy://<device>``)."""

    scheme = "cupy"


def open_gpu_pools(device: int, default_pool: str | None, config: MemoryConfig) -> Backend:
    """The L0 pools on GPU ``device`` (``default_pool`` already checked against the configured
    pools), or host pools (one warning) when no usable GPU is found. Pools that do not fit the
    device raise :class:`ConfigError`."""
    info = detect_gpu(device)
    if info.available and info.total_bytes:
        where = (f"{info.name} (cuda:{device}, {format_bytes(info.total_bytes)} reported)")
        budgets = plan_pools(config.gpu_pools, info.total_bytes, config.gpu_reserve, where)
        default_pool_of(budgets, default_pool)  # before CuPy allocates anything
        try:
            allocator = CupyAllocator(device, budgets)
        except Exception as exc:  # never fail because of CuPy: the host pools serve
            reason = f"CuPy memory pools could not be created: {exc}"
        else:
            return CupyPoolBackend(budgets, allocator, default_pool)
    else:
        reason = info.reason
    log.warning("cupy://%d: no usable GPU (%s); L0 runs on host-memory pools instead",
                device, reason)
    total = device_memory(config.host_pool_memory, "host pool memory")
    budgets = plan_pools(config.gpu_pools, total, config.gpu_reserve, device="host memory")
    return HostPoolBackend(budgets, default_pool)
