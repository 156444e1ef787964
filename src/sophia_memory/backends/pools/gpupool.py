"""L0 pools in GPU memory through CuPy (``cupy://<device>``).

The pool logic (budgets, per-pool LRU, eviction before allocation, out-of-memory -> evict ->
free -> retry, spill) is :class:`~.hostpool.PoolBackend`, the same code the host pools run;
this module adds only the allocator:

* one ``cupy.cuda.MemoryPool`` per named pool, hard-limited with ``set_limit(size=budget)``;
  every allocation of an item runs under ``cupy.cuda.using_allocator(pool.malloc)``, so a full
  pool raises CuPy's ``OutOfMemoryError`` (turned into :class:`PoolOutOfMemory`). Every call on
  a pool runs inside ``with Device``: CuPy's pool methods act on the current device;
* copies run on the allocator's own non-blocking stream, which first waits (through events) for
  the work already queued on the caller's current CuPy stream and, when torch has initialised
  CUDA, torch's current stream: a CuPy input is read only after the kernels that write it, and
  a pool block that a caller's dropped array gave back is rewritten only after the caller's
  kernels that read it. ``put`` synchronises the stream before it returns, and keeps the
  sources of the copies (torch's contiguous temporaries included) alive until then;
* host values go through two pinned staging buffers of ``staging_chunk`` bytes each, reused
  for every put (copy into one while the other's transfer runs): pinned memory stays bounded
  whatever the size of the values;
* device values are copied byte for byte (``copy_from_device_async``, no kernel), so any dtype
  works, bfloat16 and float8 included; torch dtypes without a NumPy twin travel as integers of
  the same width and are viewed back;
* ``get`` of a resident item returns the device array itself (CuPy for NumPy and CuPy input, a
  CUDA torch tensor sharing the pool's memory through DLPack for torch input);
  :func:`~.hostpool.to_host` makes an explicit host copy. A returned array keeps its blocks
  in use until it dies (see :meth:`~.hostpool.PoolBackend.held_bytes`);
* an evicted home item is copied out of the pool before it spills: NumPy input spills as NumPy,
  torch as a CPU tensor, CuPy as a CuPy array outside the pools.

CuPy is imported only when a ``cupy://`` tier is opened. Without a usable GPU (CuPy missing,
broken, no device, runtime errors) the tier falls back to the host pools with one warning
saying why; it never raises because of CuPy.

NOTE: the CuPy allocator has not been run on a GPU yet: ``tests/test_gpu.py`` holds its device
tests (they skip without one), ``tests/test_gpu_standin.py`` runs it on a CPU stand-in for
CuPy, and ``benchmarks/gpu_check.sh`` is the prepared device run.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._arrays import array_kind, to_numpy
from ...errors import BackendError, UnsupportedValueError
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
    rounded_bytes,
)

if TYPE_CHECKING:
    from ...config import MemoryConfig
    from ..base import Backend

__all__ = ["STAGING_CHUNK", "CupyAllocator", "CupyPoolBackend", "open_gpu_pools"]

log = logging.getLogger("sophia_memory")

_BLOCK = 512  # CuPy rounds every allocation up to 512 bytes
#: Bytes of each of the two pinned staging buffers host values are copied through.
STAGING_CHUNK = 16 * 2**20
# torch dtypes DLPack and CuPy know by name; others (bfloat16, float8, ...) move as integers.
_DLPACK_NATIVE = frozenset({"bool", "uint8", "int8", "int16", "int32", "int64", "float16",
                            "float32", "float64", "complex64", "complex128"})


class CupyAllocator(PoolAllocator):
    """One ``cupy.cuda.MemoryPool`` per named pool on one device (see the module doc)."""

    def __init__(self, device: int, limits: Mapping[str, int],
                 staging_chunk: int = STAGING_CHUNK) -> None:
        import cupy

        self._cp: Any = cupy
        self._oom: type[BaseException] = cupy.cuda.memory.OutOfMemoryError
        self._device_id = device
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
            self._events = [cupy.cuda.Event(disable_timing=True) for _ in range(2)]
        self.staging_chunk = staging_chunk
        self._staging: list[np.ndarray[Any, Any]] = []  # the two pinned buffers, made once
        self._pinned: list[Any] = []  # their PinnedMemoryPointers
        self._keep: list[Any] = []  # sources of copies in flight, alive until the sync

    def memory_pool(self, pool: str) -> Any:
        """CuPy's ``MemoryPool`` behind ``pool`` (for checks by CuPy's own counters)."""
        return self._pools[pool]

    def footprint(self, value: Any) -> int:
        return rounded_bytes(value, _BLOCK)

    # -- in ---------------------------------------------------------------------------------------

    def store(self, pool: str, value: Any) -> Allocation:
        cp = self._cp
        arrays: dict[str, Any] = {}
        payload: dict[str, Any] = {}
        origin: dict[str, str] = {}
        try:
            with self._device:
                self._wait_for_callers()
                try:
                    with self._stream, cp.cuda.using_allocator(self._pools[pool].malloc):
                        items = value.items() if isinstance(value, dict) else (("", value),)
                        for k, v in items:
                            payload[k], arrays[k], origin[k] = self._copy_in(v)
                finally:
                    try:
                        self._stream.synchronize()  # the copies are done: sources may go
                    finally:
                        self._keep.clear()
        except self._oom as exc:
            arrays.clear()  # the traceback must not keep half an item's blocks alive
            payload.clear()
            raise PoolOutOfMemory(pool, self.footprint(value), str(exc)) from None
        if not isinstance(value, dict):
            return Allocation(payload[""], self.footprint(value), data_bytes(value),
                              (arrays[""], origin[""]))
        return Allocation(payload, self.footprint(value), data_bytes(value), (arrays, origin))

    def _wait_for_callers(self) -> None:
        """Make the pool stream wait for the work queued so far on the caller's current CuPy
        stream and, when torch has initialised CUDA, on torch's current stream."""
        cp = self._cp
        current = cp.cuda.get_current_stream()
        event = cp.cuda.Event(disable_timing=True)
        event.record(current)
        self._stream.wait_event(event)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            ptr = int(torch.cuda.current_stream(self._device_id).cuda_stream)
            if ptr != int(current.ptr):
                event = cp.cuda.Event(disable_timing=True)
                event.record(cp.cuda.ExternalStream(ptr))
                self._stream.wait_event(event)

    def _copy_in(self, v: Any) -> tuple[Any, Any, str]:
        """(what ``get`` returns, the pool's device array, the family it came as)."""
        kind = array_kind(v)
        if kind == "cupy":
            arr = self._from_device(v)
            return arr, arr, "cupy"
        if kind == "numpy":
            arr = self._from_host(v)
            return arr, arr, "numpy"
        torch = sys.modules["torch"]
        t = v.detach()
        target = t.dtype
        if t.device.type == "cuda":
            t = t.contiguous()  # may be a temporary: kept alive until the stream is synced
            src = self._cp.from_dlpack(_dlpack_view(t, torch))  # zero-copy view of torch's
            self._keep.append((t, src))
            arr = self._from_device(src)
        else:
            host, _ = to_numpy(t, "torch")  # bfloat16 and friends come as raw integers
            arr = self._from_host(host)
        out = torch.from_dlpack(arr)  # zero-copy: the tensor's memory is the pool's
        return (out if out.dtype == target else out.view(target)), arr, "torch"

    def _from_device(self, src: Any) -> Any:
        """A copy of device array ``src`` in the current pool, made on the pool stream."""
        arr = self._cp.empty(src.shape, src.dtype)
        if not src.flags.c_contiguous:
            self._keep.append(src)
            arr[...] = src  # a strided CuPy input: an elementwise kernel, on the pool stream
        elif src.nbytes:
            self._keep.append(src)
            arr.data.copy_from_device_async(src.data, src.nbytes, self._stream)
        return arr

    def _from_host(self, v: np.ndarray[Any, Any]) -> Any:
        """A copy of host array ``v`` in the current pool, through the pinned buffers."""
        arr = self._cp.empty(v.shape, v.dtype)
        total = int(v.nbytes)
        if not total:
            return arr
        src = np.ascontiguousarray(v).reshape(-1).view(np.uint8)
        buffers, chunk = self._buffers(), self.staging_chunk
        for i, offset in enumerate(range(0, total, chunk)):
            n = min(chunk, total - offset)
            buf, done = buffers[i % 2], self._events[i % 2]
            done.synchronize()  # the transfer that last read this buffer has finished
            buf[:n] = src[offset:offset + n]
            (arr.data + offset).copy_from_host_async(ctypes.c_void_p(buf.ctypes.data), n,
                                                     self._stream)
            done.record(self._stream)
        return arr

    def _buffers(self) -> list[np.ndarray[Any, Any]]:
        if not self._staging:
            cp = self._cp
            try:
                for _ in range(2):
                    mem = cp.cuda.PinnedMemory(self.staging_chunk)
                    ptr = cp.cuda.PinnedMemoryPointer(mem, 0)
                    self._pinned.append(ptr)  # owns the page-locked memory
                    self._staging.append(np.frombuffer(ptr, np.uint8, self.staging_chunk))
            except cp.cuda.runtime.CUDARuntimeError as exc:
                self._staging.clear()
                self._pinned.clear()
                raise BackendError(
                    f"{self.device}: could not pin 2 x {format_bytes(self.staging_chunk)} of "
                    f"host memory for staging copies: {exc}") from exc
        return self._staging

    # -- out --------------------------------------------------------------------------------------

    def detach(self, allocation: Allocation) -> Any:
        arrays, origin = allocation.handle
        with self._device:
            if isinstance(origin, dict):
                return {k: self._out(allocation.payload[k], arrays[k], o)
                        for k, o in origin.items()}
            return self._out(allocation.payload, arrays, origin)

    def _out(self, payload: Any, arr: Any, origin: str) -> Any:
        if origin == "numpy":
            return arr.get()
        if origin == "torch":
            return payload.detach().to("cpu", copy=True)
        cp = self._cp
        out = cp.empty(arr.shape, arr.dtype)  # the default allocator: outside every pool
        if arr.nbytes:
            stream = cp.cuda.get_current_stream()
            out.data.copy_from_device_async(arr.data, arr.nbytes, stream)
            stream.synchronize()
        return out

    def in_use(self, pool: str) -> int:
        with self._device:
            return int(self._pools[pool].used_bytes())

    def allocated(self, pool: str) -> int:
        with self._device:
            return int(self._pools[pool].total_bytes())

    def free_cached(self, pool: str) -> None:
        with self._device:
            self._pools[pool].free_all_blocks()

    def fragmentation(self, pool: str, items_bytes: int) -> float:
        with self._device:
            mp = self._pools[pool]
            total = int(mp.total_bytes())
            return 0.0 if total <= 0 else round(1.0 - int(mp.used_bytes()) / total, 4)

    def close(self) -> None:
        with self._device:
            for mp in self._pools.values():
                mp.free_all_blocks()
        self._staging.clear()
        self._pinned.clear()


def _dlpack_view(t: Any, torch: Any) -> Any:
    """``t`` itself when DLPack and CuPy know its dtype, else its bytes as integers."""
    if str(t.dtype).removeprefix("torch.") in _DLPACK_NATIVE:
        return t
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    size = t.element_size()
    if size not in width:
        raise UnsupportedValueError(f"torch dtype {t.dtype} cannot live in a GPU pool")
    return t.view(width[size])


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
