"""A CPU stand-in for the part of CuPy the L0 allocator uses, so ``CupyAllocator`` runs here.

Device memory is host memory (NumPy buffers); copies are ``ctypes.memmove`` at once, so no
race can happen here: instead every stream operation is logged, and tests check the order
(the pool stream waits for the caller's stream before its first copy). What it models of CuPy
14.2, from its sources:

* ``MemoryPool``: 512-byte blocks; a block returns to its pool (cached) only when the last
  reference to its memory dies; ``set_limit`` counts cached blocks; a new block that would
  pass the limit makes the pool free its cache and run a full garbage collection
  (``collections`` counts them), then ``OutOfMemoryError``. Every call records the current
  device (CuPy's pool methods act on it).
* ``cupy.empty`` refuses the dtypes CuPy 14 refuses (strings, datetimes, objects).
* ``PinnedMemory``: live pinned bytes and their peak are tracked; ``alloc_pinned_memory``
  models the caching pinned pool (its bytes are never given back).
* ``torch.from_dlpack(array)`` gives a CPU tensor sharing the array's memory and keeping it
  alive, as the DLPack export of a CuPy array does.

Install it with :func:`install`, which puts the module in ``sys.modules["cupy"]``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import itertools
import sys
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

BLOCK = 512
_REFUSED_KINDS = frozenset("USMmO")


class OutOfMemoryError(MemoryError):
    pass


class CUDARuntimeError(RuntimeError):
    pass


@dataclass
class World:
    """Everything the stand-in records."""

    devices: int = 2
    device_memory: int = 2**30
    current_device: list[int] = field(default_factory=lambda: [0])
    streams: list[Stream] = field(default_factory=list)
    allocators: list[Any] = field(default_factory=list)
    log: list[tuple[Any, ...]] = field(default_factory=list)
    pinned_live: int = 0
    pinned_peak: int = 0
    pinned_ranges: dict[int, int] = field(default_factory=dict)  # start -> size, live

    @property
    def device(self) -> int:
        return self.current_device[-1]

    @property
    def stream(self) -> Stream:
        return self.streams[-1]

    def pinned(self, address: int, size: int) -> bool:
        return any(start <= address and address + size <= start + n
                   for start, n in self.pinned_ranges.items())


WORLD = World()
_ptrs = itertools.count(0x1000)


class Device:
    def __init__(self, device: int = 0) -> None:
        self.id = device

    def __enter__(self) -> Device:
        WORLD.current_device.append(self.id)
        return self

    def __exit__(self, *exc: object) -> None:
        WORLD.current_device.pop()


class Stream:
    def __init__(self, non_blocking: bool = False, ptr: int | None = None) -> None:
        self.ptr = next(_ptrs) if ptr is None else ptr
        self.non_blocking = non_blocking

    def __enter__(self) -> Stream:
        WORLD.streams.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        WORLD.streams.pop()

    def synchronize(self) -> None:
        WORLD.log.append(("sync", self.ptr))

    def wait_event(self, event: Event) -> None:
        WORLD.log.append(("wait", self.ptr, event.stream))


def ExternalStream(ptr: int, device_id: int = -1) -> Stream:
    return Stream(ptr=ptr)


def get_current_stream() -> Stream:
    return WORLD.stream


class Event:
    def __init__(self, disable_timing: bool = False) -> None:
        self.stream: int | None = None

    def record(self, stream: Stream | None = None) -> None:
        self.stream = (stream or WORLD.stream).ptr
        WORLD.log.append(("record", self.stream))

    def synchronize(self) -> None:
        pass


class _Memory:
    """One block: a NumPy buffer whose death gives the block back to its pool."""

    def __init__(self, size: int, device: int) -> None:
        self.buf = np.zeros(max(size, 1), np.uint8)
        self.size = size
        self.device_id = device


class MemoryPointer:
    def __init__(self, mem: _Memory, offset: int = 0) -> None:
        self.mem = mem
        self.offset = offset
        self.device_id = mem.device_id

    @property
    def ptr(self) -> int:
        return int(self.mem.buf.ctypes.data) + self.offset

    def __add__(self, offset: int) -> MemoryPointer:
        return MemoryPointer(self.mem, self.offset + offset)

    def copy_from_host_async(self, mem: ctypes.c_void_p, size: int,
                             stream: Stream | None = None) -> None:
        address = int(mem.value or 0)
        ctypes.memmove(self.ptr, address, size)
        WORLD.log.append(("h2d", (stream or WORLD.stream).ptr, size,
                          WORLD.pinned(address, size)))

    def copy_from_device_async(self, src: MemoryPointer, size: int,
                               stream: Stream | None = None) -> None:
        ctypes.memmove(self.ptr, src.ptr, size)
        WORLD.log.append(("d2d", (stream or WORLD.stream).ptr, size))


class MemoryPool:
    """CuPy's pool as the allocator sees it (see the module doc)."""

    def __init__(self) -> None:
        self.limit = 0
        self.used: dict[int, int] = {}
        self.cached: dict[int, list[int]] = {}
        self.calls: list[tuple[str, int]] = []
        self.collections = 0

    def _call(self, name: str) -> int:
        self.calls.append((name, WORLD.device))
        return WORLD.device

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        self._call("set_limit")
        self.limit = int(size or 0)

    def get_limit(self) -> int:
        self._call("get_limit")
        return self.limit

    def malloc(self, size: int) -> MemoryPointer:
        dev = self._call("malloc")
        size = -(-size // BLOCK) * BLOCK
        used, cached = self.used.get(dev, 0), self.cached.setdefault(dev, [])
        fit = [c for c in cached if c >= size]
        if fit:
            best = min(fit)
            cached.remove(best)
            if best > size:  # CuPy splits the chunk; the rest stays free
                cached.append(best - size)
        elif self.limit and used + sum(cached) + size > self.limit:
            cached.clear()  # CuPy: free_all_blocks(), gc.collect(), try again
            self.collections += 1
            if used + size > self.limit:
                raise OutOfMemoryError(
                    f"Out of memory allocating {size:,} bytes (allocated so far: {used:,} "
                    f"bytes, limit set to: {self.limit:,} bytes).")
        self.used[dev] = used + size
        mem = _Memory(size, dev)
        weakref.finalize(mem.buf, self._freed, dev, size)
        return MemoryPointer(mem)

    def _freed(self, dev: int, size: int) -> None:
        self.used[dev] -= size
        self.cached.setdefault(dev, []).append(size)

    def used_bytes(self) -> int:
        return self.used.get(self._call("used_bytes"), 0)

    def total_bytes(self) -> int:
        dev = self._call("total_bytes")
        return self.used.get(dev, 0) + sum(self.cached.get(dev, []))

    def free_all_blocks(self, stream: Stream | None = None) -> None:
        self.cached[self._call("free_all_blocks")] = []


_DEFAULT_POOL = MemoryPool()


@contextlib.contextmanager
def using_allocator(allocator: Any = None) -> Iterator[None]:
    WORLD.allocators.append(allocator)
    try:
        yield
    finally:
        WORLD.allocators.pop()


class ndarray:
    def __init__(self, shape: Any, dtype: Any, data: MemoryPointer) -> None:
        self.shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.nbytes = self.size * self.dtype.itemsize
        self.data = data
        self.flags = types.SimpleNamespace(c_contiguous=True)

    def _view(self) -> np.ndarray[Any, Any]:
        start = self.data.offset
        raw = self.data.mem.buf[start:start + self.nbytes]
        return raw.view(self.dtype).reshape(self.shape)

    def get(self, stream: Stream | None = None) -> np.ndarray[Any, Any]:
        return self._view().copy()

    def copy(self) -> ndarray:
        out = empty(self.shape, self.dtype)
        out._view()[...] = self._view()
        WORLD.log.append(("kernel", WORLD.stream.ptr, "copy"))
        return out

    def set(self, host: np.ndarray[Any, Any], stream: Stream | None = None) -> None:
        self._view()[...] = host
        WORLD.log.append(("h2d", (stream or WORLD.stream).ptr, host.nbytes,
                          WORLD.pinned(int(host.ctypes.data), host.nbytes)))

    def __setitem__(self, key: Any, value: ndarray) -> None:
        self._view()[key] = value._view()
        WORLD.log.append(("kernel", WORLD.stream.ptr, "elementwise_copy"))

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._view().__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # the stand-in's "device" memory is host memory


ndarray.__module__ = "cupy"


def empty(shape: Any, dtype: Any = np.float64) -> ndarray:
    dt = np.dtype(dtype)
    if dt.kind in _REFUSED_KINDS:
        raise ValueError(f"Unsupported dtype {dt}")  # CuPy 14's message, roughly
    allocator = WORLD.allocators[-1] if WORLD.allocators else None
    malloc = allocator if allocator is not None else _DEFAULT_POOL.malloc
    size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return ndarray(shape, dt, malloc(size))


def asarray(host: Any) -> ndarray:
    host = np.ascontiguousarray(host)
    out = empty(host.shape, host.dtype)
    out._view()[...] = host
    return out


def from_dlpack(obj: Any) -> ndarray:
    raise TypeError("the stand-in has no CUDA torch tensors")


class PinnedMemory:
    def __init__(self, size: int, flags: int = 0) -> None:
        self.buf = np.zeros(max(size, 1), np.uint8)
        self.size = size
        self.ptr = int(self.buf.ctypes.data)
        WORLD.pinned_live += size
        WORLD.pinned_peak = max(WORLD.pinned_peak, WORLD.pinned_live)
        WORLD.pinned_ranges[self.ptr] = size
        weakref.finalize(self, _unpin, self.ptr, size)


def _unpin(ptr: int, size: int) -> None:
    WORLD.pinned_live -= size
    WORLD.pinned_ranges.pop(ptr, None)


class PinnedMemoryPointer(np.ndarray):  # type: ignore[type-arg]
    mem: PinnedMemory
    ptr: int

    def __new__(cls, mem: PinnedMemory, offset: int) -> PinnedMemoryPointer:
        obj = mem.buf[offset:].view(cls)
        obj.mem = mem
        obj.ptr = mem.ptr + offset
        return obj


_PINNED_POOL: list[PinnedMemory] = []


def alloc_pinned_memory(size: int) -> PinnedMemoryPointer:
    """CuPy's pinned pool caches every block it ever made: modelled as never freed."""
    mem = PinnedMemory(size)
    _PINNED_POOL.append(mem)
    return PinnedMemoryPointer(mem, 0)


def _properties(device: int) -> dict[str, Any]:
    if device >= WORLD.devices:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    return {"name": f"Stand-in GPU {device}".encode()}


def _module() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cp.__version__ = "14.2.0-standin"  # type: ignore[attr-defined]
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: WORLD.devices, getDeviceProperties=_properties,
        memGetInfo=lambda: (WORLD.device_memory, WORLD.device_memory),
        CUDARuntimeError=CUDARuntimeError)
    memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    cp.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        Device=Device, Stream=Stream, ExternalStream=ExternalStream, Event=Event,
        MemoryPool=MemoryPool, MemoryPointer=MemoryPointer, PinnedMemory=PinnedMemory,
        PinnedMemoryPointer=PinnedMemoryPointer, alloc_pinned_memory=alloc_pinned_memory,
        get_current_stream=get_current_stream, using_allocator=using_allocator,
        runtime=runtime, memory=memory, is_available=lambda: True)
    cp.ndarray = ndarray  # type: ignore[attr-defined]
    cp.empty = empty  # type: ignore[attr-defined]
    cp.asarray = asarray  # type: ignore[attr-defined]
    cp.from_dlpack = from_dlpack  # type: ignore[attr-defined]
    return cp


def install(monkeypatch: pytest.MonkeyPatch) -> World:
    """Put a fresh stand-in in ``sys.modules["cupy"]`` for one test; returns its record."""
    for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
        monkeypatch.delitem(sys.modules, name)
    WORLD.__dict__.update(World().__dict__)
    WORLD.streams.append(Stream(ptr=0))  # the legacy default stream
    _PINNED_POOL.clear()
    monkeypatch.setitem(sys.modules, "cupy", _module())
    return WORLD
