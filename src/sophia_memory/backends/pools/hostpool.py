"""L0 memory pools: one pool logic over a pluggable allocator (host memory or CuPy).

Named pools, each with a byte budget, its own LRU (sized by ``Record.size``) and a hard limit
the allocator enforces: an item lives in one pool (``Record.extra["pool"]``), and inserting
into a full pool evicts from that pool only. Evicted home items go to the eviction listener,
which spills them to the next tier.

:class:`PoolAllocator` owns the memory: it copies a value (a NumPy, torch or CuPy array, or a
dict of them - a ``state_dict`` - as one item) into a pool, releases it, and reports what each
pool has allocated. Allocators round allocations up to blocks, so an allocation can be refused
(:class:`PoolOutOfMemory`) while the LRU's byte count says the item fits. The backend then
evicts the pool's least recently used items one at a time (they spill), frees the pool's
cached blocks and retries; when the pool is empty and it still fails, ``put`` raises
:class:`ValueTooLargeError` and nothing of the value is stored.

:class:`HostAllocator` (``host://``, the default and the fallback without a GPU) keeps NumPy
copies and accounts them the way a CuPy memory pool does (512-byte blocks against a hard
limit), so the whole pool logic, out-of-memory retry included, runs and is tested without a
GPU. The CuPy allocator (``cupy://0``) lives in :mod:`.gpupool`; the URL factories in
:mod:`sophia_memory.backends.pools`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._arrays import array_kind, is_array_dict, nbytes
from ...errors import ConfigError, UnsupportedValueError, ValueTooLargeError
from ...policies import BoundedStore, EvictionListener, LRUPolicy
from ...pools import format_bytes
from ...tiers import Record
from ..base import Backend

__all__ = ["Allocation", "HostAllocator", "HostPoolBackend", "PoolAllocator", "PoolBackend",
           "PoolOutOfMemory", "copy_array_value", "default_pool_of", "is_pool_value", "to_host"]


def copy_array_value(value: Any) -> Any:
    """A private copy of an array or dict of arrays (the pool owns its memory)."""
    if isinstance(value, dict):
        return {k: copy_array_value(v) for k, v in value.items()}
    kind = array_kind(value)
    if kind == "numpy":
        return np.array(value, copy=True)
    if kind == "torch":
        return value.detach().clone()
    if kind == "cupy":
        return value.copy()
    raise UnsupportedValueError(
        f"the GPU tier holds arrays and dicts of arrays, not {type(value).__qualname__}"
    )


def to_host(value: Any) -> Any:
    """A host copy of a device value (CuPy -> NumPy, CUDA torch -> CPU torch, dicts entry by
    entry); host values are returned as they are. Never imports CuPy or torch."""
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    kind = array_kind(value)
    if kind == "cupy":
        return value.get()
    if kind == "torch" and value.device.type != "cpu":
        return value.detach().cpu()
    return value


_PLAIN = frozenset({str, int, float, bool, bytes, list, tuple, type(None)})


def is_pool_value(value: Any) -> bool:
    """Whether ``value`` can live in a pool: an array or a non-empty dict of arrays."""
    cls = type(value)
    if cls is np.ndarray:
        return True
    if cls in _PLAIN:
        return False
    return array_kind(value) in ("numpy", "torch", "cupy") or is_array_dict(value)


def data_bytes(value: Any) -> int:
    """Bytes of array data in an array or dict of arrays."""
    if isinstance(value, dict):
        return sum(data_bytes(v) for v in value.values())
    kind = array_kind(value)
    return 0 if kind is None or kind == "npscalar" else nbytes(value, kind)


def default_pool_of(budgets: Mapping[str, int], default_pool: str | None) -> str:
    """The pool items go to unless they name one: ``default_pool``, else ``inference_cache``
    when configured, else the first pool. ConfigError when ``default_pool`` is not a pool
    (checked by the factories before an allocator exists)."""
    if not budgets:
        raise ConfigError("L0 needs at least one pool")
    name = default_pool or ("inference_cache" if "inference_cache" in budgets
                            else next(iter(budgets)))
    if name not in budgets:
        raise ConfigError(f"default pool {name!r} is not configured; "
                          f"pools: {', '.join(budgets)}")
    return name


class PoolOutOfMemory(Exception):
    """An allocator refused an allocation in a pool (it never leaves the backend)."""

    def __init__(self, pool: str, need: int | None, detail: str) -> None:
        super().__init__(f"pool {pool!r}: {detail}")
        self.pool = pool
        self.need = need


@dataclass(slots=True)
class Allocation:
    """One item's memory in a pool: what ``get`` returns, the bytes the allocator took
    (rounded to blocks), the bytes of array data, and allocator-private state."""

    payload: Any
    allocated: int
    data: int
    handle: Any = None


class PoolAllocator(ABC):
    """Owns the memory of named pools. Implementations: :class:`HostAllocator`, and
    :class:`~.gpupool.CupyAllocator`."""

    #: Shown in stats and ``doctor``: ``host`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``.
    device: str = "host"

    @abstractmethod
    def store(self, pool: str, value: Any) -> Allocation:
        """Copy ``value`` into ``pool``'s memory. Raises :class:`PoolOutOfMemory` when the
        pool cannot hold it (nothing stays allocated then)."""

    @abstractmethod
    def release(self, pool: str, allocation: Allocation) -> None:
        """Give an item's memory back to its pool."""

    @abstractmethod
    def allocated(self, pool: str) -> int:
        """Bytes the pool holds from the device (live items plus cached blocks)."""

    def free_cached(self, pool: str) -> None:  # noqa: B027 - optional hook
        """Return the pool's cached free blocks to the device (before a retry)."""

    def fragmentation(self, pool: str, items_bytes: int) -> float:
        """Share of the pool's allocated memory not holding item data."""
        total = self.allocated(pool)
        return 0.0 if total <= 0 else round(1.0 - items_bytes / total, 4)

    def detach(self, allocation: Allocation) -> Any:
        """The value an evicted item spills as: memory outside the pool, of the type it was
        put as where the allocator changed it. The host pool's copy already is that."""
        return allocation.payload

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything the allocator holds."""


class HostAllocator(PoolAllocator):
    """NumPy/torch copies in host memory, accounted like a CuPy memory pool: each array
    takes ``block``-byte blocks, and a pool's blocks may never exceed its limit.

    ``fail_next`` makes that many following allocations fail (a test hook standing in for a
    fragmented device).
    """

    def __init__(self, limits: Mapping[str, int], block: int = 512) -> None:
        if block < 1:
            raise ConfigError(f"block size must be at least 1 byte, got {block}")
        self.block = block
        self.limits = dict(limits)
        self._allocated = dict.fromkeys(limits, 0)
        self.fail_next = 0

    def footprint(self, value: Any) -> int:
        """Bytes ``value`` takes in a pool: each array rounded up to whole blocks."""
        if isinstance(value, dict):
            return sum(self.footprint(v) for v in value.values())
        return -(-data_bytes(value) // self.block) * self.block

    def store(self, pool: str, value: Any) -> Allocation:
        need = self.footprint(value)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise PoolOutOfMemory(pool, need, "allocation failed (injected)")
        have = self._allocated[pool]
        if have + need > self.limits[pool]:
            raise PoolOutOfMemory(pool, need, f"out of memory allocating {need} bytes "
                                  f"({have} of {self.limits[pool]} in use)")
        payload = copy_array_value(value)
        self._allocated[pool] = have + need
        return Allocation(payload, need, data_bytes(value))

    def release(self, pool: str, allocation: Allocation) -> None:
        self._allocated[pool] -= allocation.allocated

    def allocated(self, pool: str) -> int:
        return self._allocated[pool]

    def close(self) -> None:
        for pool in self._allocated:
            self._allocated[pool] = 0


@dataclass(slots=True)
class _Counters:
    spills: int = 0
    oom_retries: int = 0
    data: int = 0


class PoolBackend(Backend):
    """Named byte-budgeted LRU pools over a :class:`PoolAllocator` (see the module doc)."""

    scheme = "host"

    def __init__(self, budgets: Mapping[str, int], allocator: PoolAllocator,
                 default_pool: str | None = None) -> None:
        self.default_pool = default_pool_of(budgets, default_pool)
        self.budgets = dict(budgets)
        self.allocator = allocator
        self.pools = {name: BoundedStore(None, size, LRUPolicy()) for name, size in
                      budgets.items()}
        self._held: dict[str, tuple[str, Allocation]] = {}
        self._counters = {name: _Counters() for name in budgets}
        self._listener: EvictionListener | None = None
        for name, store in self.pools.items():
            store.listener = self._listener_for(name)

    # -- eviction ------------------------------------------------------------------------------

    def _listener_for(self, name: str) -> EvictionListener:
        def evicted(key: str, record: Record) -> None:
            self._evicted(name, key, record)
        return evicted

    def _evicted(self, name: str, key: str, record: Record) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            self._free(name, held[1])
            if record.home:
                record.payload = self.allocator.detach(held[1])
        if record.home:
            self._counters[name].spills += 1
        if self._listener is not None:
            self._listener(key, record)

    def _evict_one(self, name: str) -> None:
        store = self.pools[name]
        victim = store.policy.victim()
        record = store.pop(victim)
        store.evictions += 1
        if record is not None:
            self._evicted(name, victim, record)

    def _free(self, name: str, allocation: Allocation) -> None:
        self.allocator.release(name, allocation)
        self._counters[name].data -= allocation.data

    def set_eviction_listener(self, listener: EvictionListener) -> None:
        self._listener = listener

    # -- ObjectStore -----------------------------------------------------------------------------

    def pool_of(self, record: Record) -> str:
        name = record.extra.get("pool", self.default_pool)
        if name not in self.pools:
            raise ConfigError(f"no pool named {name!r}; pools: {', '.join(self.pools)}")
        return str(name)

    def peek(self, key: str) -> Record | None:
        held = self._held.get(key)
        return None if held is None else self.pools[held[0]].peek(key)

    def fits(self, size: int) -> bool:
        return self.pools[self.default_pool].fits(size)

    def put_nowait(self, key: str, record: Record) -> None:
        """Copy ``record``'s value into its pool, evicting (and so spilling) that pool's
        least recently used items first by bytes, then on out-of-memory one at a time.

        An older value of ``key`` is released first, without spilling (it is superseded);
        if the new value then cannot be allocated even in the emptied pool, the older one
        (when it was put here) spills after all and :class:`ValueTooLargeError` is raised.
        """
        name = self.pool_of(record)
        if not is_pool_value(record.payload):
            raise UnsupportedValueError(
                "the GPU tier holds arrays and dicts of arrays, not "
                f"{type(record.payload).__qualname__}")
        store = self.pools[name]
        if not store.fits(record.size):  # before anything changes
            raise ValueTooLargeError(record.size, store.max_bytes, f"GPU pool {name!r}")
        held = self._held.get(key)
        old = self.pop_nowait(key)
        limit = store.max_bytes or 0
        while store.data and store.bytes + record.size > limit:
            self._evict_one(name)
        try:
            allocation = self._allocate(name, record)
        except ValueTooLargeError:
            if old is not None and old.home and held is not None and self._listener:
                # The put failed: the value it was to replace spills after all.
                old.payload = self.allocator.detach(held[1])
                self._listener(key, old)
            raise
        record.payload = allocation.payload
        store.set(key, record)  # fits now: evicts nothing
        self._held[key] = (name, allocation)
        self._counters[name].data += allocation.data

    def _allocate(self, name: str, record: Record) -> Allocation:
        store, counters = self.pools[name], self._counters[name]
        freed_empty = False
        while True:
            try:
                return self.allocator.store(name, record.payload)
            except PoolOutOfMemory as exc:
                if store.data:
                    self._evict_one(name)
                elif freed_empty:
                    raise ValueTooLargeError(
                        exc.need if exc.need is not None else record.size, store.max_bytes,
                        f"GPU pool {name!r} on {self.allocator.device}: {exc}") from exc
                else:
                    freed_empty = True
                self.allocator.free_cached(name)
                counters.oom_retries += 1

    def pop_nowait(self, key: str) -> Record | None:
        held = self._held.pop(key, None)
        if held is None:
            return None
        name, allocation = held
        self._free(name, allocation)
        return self.pools[name].pop(key)

    def discard(self, key: str, record: Record) -> None:
        held = self._held.get(key)
        if held is not None and self.pools[held[0]].data.get(key) is record:
            self.pop_nowait(key)

    # -- Backend ---------------------------------------------------------------------------------

    async def get(self, key: str, now: float) -> Record | None:
        return self.peek(key)

    async def put(self, key: str, record: Record) -> None:
        self.put_nowait(key, record)

    async def delete(self, key: str, now: float) -> bool:
        rec = self.pop_nowait(key)
        return rec is not None and not rec.expired(now)

    async def keys(self, prefix: str, now: float) -> list[str]:
        out = []
        for key, (name, _) in list(self._held.items()):
            rec = self.pools[name].data.get(key)
            if key.startswith(prefix) and rec is not None and not rec.expired(now):
                out.append(key)
        return out

    async def purge_expired(self, now: float) -> int:
        dead = [k for k, (n, _) in list(self._held.items())
                if self.pools[n].data[k].expired(now)]
        for key in dead:
            self.pop_nowait(key)
        return len(dead)

    async def close(self) -> None:
        for key in list(self._held):
            self.pop_nowait(key)
        for store in self.pools.values():
            store.clear()
        self.allocator.close()

    def stats(self) -> dict[str, Any]:
        alloc = self.allocator
        pools = {}
        for name, s in self.pools.items():
            c = self._counters[name]
            pools[name] = {
                "limit": s.max_bytes, "used": s.bytes, "allocated": alloc.allocated(name),
                "items": len(s), "evictions": s.evictions, "spills": c.spills,
                "oom_retries": c.oom_retries, "fragmentation": alloc.fragmentation(name, c.data),
            }
        return {"device": alloc.device, "pools": pools}

    def describe(self) -> str:
        budgets = ", ".join(f"{n}={format_bytes(b)}" for n, b in self.budgets.items())
        where = "host-memory" if self.allocator.device == "host" else self.allocator.device
        return f"{where} pools ({budgets})"


class HostPoolBackend(PoolBackend):
    """The pools in host memory (``host://``): NumPy/torch copies, CuPy-like accounting."""

    def __init__(self, budgets: Mapping[str, int], default_pool: str | None = None,
                 block: int = 512) -> None:
        super().__init__(budgets, HostAllocator(budgets, block), default_pool)
