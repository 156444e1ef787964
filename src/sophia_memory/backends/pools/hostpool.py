"""L0 memory pools: one pool logic over a pluggable allocator (host memory or CuPy).

Named pools, each with a byte budget, its own LRU (sized by ``Record.size``) and a hard limit
the allocator enforces: an item lives in one pool (``Record.extra["pool"]``), and inserting
into a full pool evicts from that pool only. Evicted home items go to the eviction listener,
which spills them to the next tier.

:class:`PoolAllocator` owns the memory: it copies a value (a NumPy, torch or CuPy array, or a
dict of them - a ``state_dict`` - as one item) into a pool and reports what each pool holds.
Memory works the way CuPy's memory pools do, on the host as on the device: an item's blocks
return to its pool only when the last reference to its arrays dies, so a caller holding a
``get`` result (which shares the pool's memory), or a replaced or evicted value something
still references, keeps those blocks in use. Freed blocks stay cached in the pool until
:meth:`PoolAllocator.free_cached`.

Before allocating, ``put`` evicts the pool's least recently used items (they spill) until the
value's blocks fit beside the blocks in use, and frees the cached blocks when they would push
the pool over its limit: the allocator then never has to free and collect garbage itself (CuPy
runs a full ``gc.collect()`` on that path). An allocation still refused (fragmentation) evicts
at least the value's size more and retries; when the pool is empty and it still fails, ``put``
raises :class:`ValueTooLargeError` and nothing of the value is stored. When memory held
outside the pool's items leaves too little room even after evicting everything, ``put``
raises at once, and the message says how many bytes are held and why.

:class:`HostAllocator` (``host://``, the default and the fallback without a GPU) keeps host
copies and models a CuPy memory pool: 512-byte blocks against a hard limit, blocks freed by a
finalizer when their last reference dies, a cache of freed blocks, and CuPy's own
free-and-collect fallback, counted. So the whole pool logic runs and is tested without a GPU.
The CuPy allocator (``cupy://0``) lives in :mod:`.gpupool`; the URL factories in
:mod:`sophia_memory.backends.pools`.
"""

from __future__ import annotations

import bisect
import difflib
import sys
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._arrays import array_kind, is_array_dict, nbytes, pool_dtype_problem, to_numpy
from ...errors import ConfigError, UnsupportedValueError, ValueTooLargeError
from ...policies import BoundedStore, EvictionListener, LRUPolicy
from ...pools import format_bytes
from ...tiers import Record
from ..base import Backend

__all__ = ["Allocation", "HostAllocator", "HostPoolBackend", "PoolAllocator", "PoolBackend",
           "PoolOutOfMemory", "default_pool_of", "is_pool_value", "to_host"]


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
    """Whether ``value`` can live in a pool: an array or a non-empty dict of arrays, of
    dtypes the pools hold (see :func:`~sophia_memory._arrays.pool_dtype_problem`)."""
    cls = type(value)
    if cls is np.ndarray:
        return pool_dtype_problem(value) is None
    if cls in _PLAIN:
        return False
    if array_kind(value) in ("torch", "cupy"):
        return True
    return is_array_dict(value) and pool_dtype_problem(value) is None


#: A C-level callable that does nothing: ``touch`` where ``read`` already marked the item.
_NO_TOUCH = frozenset().__contains__

def check_pool_value(value: Any) -> None:
    """Raise :class:`UnsupportedValueError` unless ``value`` can live in a pool."""
    if is_pool_value(value):
        return
    problem = pool_dtype_problem(value) if (
        type(value) is np.ndarray or is_array_dict(value)) else None
    raise UnsupportedValueError(
        problem or "the GPU tier holds arrays and dicts of arrays, not "
        f"{type(value).__qualname__}")


def data_bytes(value: Any) -> int:
    """Bytes of array data in an array or dict of arrays."""
    if isinstance(value, dict):
        return sum(data_bytes(v) for v in value.values())
    kind = array_kind(value)
    return 0 if kind is None or kind == "npscalar" else nbytes(value, kind)


def rounded_bytes(value: Any, block: int) -> int:
    """Bytes ``value`` takes in a pool: each array rounded up to whole ``block``-byte blocks."""
    if isinstance(value, dict):
        return sum(rounded_bytes(v, block) for v in value.values())
    return -(-data_bytes(value) // block) * block


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
    :class:`~.gpupool.CupyAllocator`.

    Memory is freed the way CuPy frees it: :meth:`release` only tells the allocator that the
    pool no longer holds an item; its blocks return to the pool when the last reference to
    its arrays dies.
    """

    #: Shown in stats and ``doctor``: ``host`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``.
    device: str = "host"

    @abstractmethod
    def footprint(self, value: Any) -> int:
        """Bytes ``value`` will take in a pool (its arrays rounded up to whole blocks)."""

    @abstractmethod
    def store(self, pool: str, value: Any) -> Allocation:
        """Copy ``value`` into ``pool``'s memory. Raises :class:`PoolOutOfMemory` when the
        pool cannot hold it (nothing stays allocated then)."""

    def release(self, pool: str, allocation: Allocation) -> None:  # noqa: B027 - optional
        """The pool no longer holds this item (its memory returns with its last reference).
        Must leave ``allocation`` usable: nothing calls :meth:`detach` after it, but it may
        still be read."""

    @abstractmethod
    def in_use(self, pool: str) -> int:
        """Bytes of the pool's blocks that live arrays reference (CuPy's ``used_bytes``)."""

    @abstractmethod
    def allocated(self, pool: str) -> int:
        """Bytes the pool holds from the device: blocks in use plus cached free blocks
        (CuPy's ``total_bytes``, which its limit counts)."""

    def free_cached(self, pool: str) -> None:  # noqa: B027 - optional hook
        """Return the pool's cached free blocks to the device."""

    def fragmentation(self, pool: str, items_bytes: int) -> float:
        """Share of the pool's allocated memory not holding item data."""
        total = self.allocated(pool)
        return 0.0 if total <= 0 else round(1.0 - items_bytes / total, 4)

    def detach(self, allocation: Allocation) -> Any:
        """The value an evicted item spills as: a copy outside the pool, of the type it was
        put as (so the pool's blocks can return once nothing else references them)."""
        return allocation.payload

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything the allocator holds."""


class HostAllocator(PoolAllocator):
    """Host copies accounted like a CuPy memory pool (see the module doc).

    Each array takes ``block``-byte blocks; a pool's blocks in use may never exceed its limit.
    A block returns to its pool (as a cached free block) when the last reference to the
    array's buffer dies: a weakref finalizer on the buffer, which every view, and every torch
    tensor made from it, keeps alive. A new block that would take the pool past its limit
    first makes the allocator free its cached blocks and collect garbage itself, as CuPy does
    (``collections`` counts it: a full ``gc.collect()`` on the device); the pool logic avoids
    that path by freeing the cache first.

    Arrays that live on a device (CuPy, CUDA torch) stay there; they are accounted until the
    returned object dies.

    ``fail_next`` makes that many following allocations fail (a test hook standing in for a
    fragmented device).
    """

    def __init__(self, limits: Mapping[str, int], block: int = 512) -> None:
        if block < 1:
            raise ConfigError(f"block size must be at least 1 byte, got {block}")
        self.block = block
        self.limits = dict(limits)
        self._in_use = dict.fromkeys(limits, 0)
        self._cached: dict[str, list[int]] = {p: [] for p in limits}  # sorted block sizes
        self._generation = 0  # finalizers of arrays from before close() are ignored
        self.collections = 0
        self.fail_next = 0

    def footprint(self, value: Any) -> int:
        return rounded_bytes(value, self.block)

    def _blocks(self, value: Any) -> list[int]:
        if isinstance(value, dict):
            return [b for v in value.values() for b in self._blocks(v)]
        return [self.footprint(value)]

    def store(self, pool: str, value: Any) -> Allocation:
        need = self.footprint(value)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise PoolOutOfMemory(pool, need, "allocation failed (injected)")
        limit = self.limits[pool]
        if self._in_use[pool] + need > limit:
            self._collect(pool)  # CuPy frees its cache and collects garbage before it gives up
            raise PoolOutOfMemory(pool, need, f"out of memory allocating {need} bytes "
                                  f"({self._in_use[pool]} of {limit} in use)")
        for size in self._blocks(value):
            self._take(pool, size)
        payload = self._copy_in(pool, value)
        return Allocation(payload, need, data_bytes(value))

    def _take(self, pool: str, size: int) -> None:
        """Account a block: a cached block at least as large (split), else a new one."""
        if size == 0:
            return
        cached = self._cached[pool]
        i = bisect.bisect_left(cached, size)
        if i < len(cached):
            rest = cached.pop(i) - size
            if rest:
                bisect.insort(cached, rest)
        elif self._in_use[pool] + sum(cached) + size > self.limits[pool]:
            self._collect(pool)
        self._in_use[pool] += size

    def _collect(self, pool: str) -> None:
        self._cached[pool].clear()
        self.collections += 1

    def _copy_in(self, pool: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._copy_in(pool, v) for k, v in value.items()}
        size = self.footprint(value)
        kind = array_kind(value)
        if kind == "numpy":
            buf = np.empty(value.shape, value.dtype)
            buf[...] = value
            self._owned(pool, buf, size)
            return buf
        if kind == "torch" and value.device.type == "cpu":
            torch = _torch()
            host, _ = to_numpy(value, "torch")  # bfloat16 and friends as raw integers
            buf = np.empty(host.shape, host.dtype)
            buf[...] = host
            self._owned(pool, buf, size)
            out = torch.from_numpy(buf)  # the tensor keeps ``buf`` alive
            return out if out.dtype == value.dtype else out.view(value.dtype)
        copy = value.detach().clone() if kind == "torch" else value.copy()
        self._owned(pool, copy, size)
        return copy

    def _owned(self, pool: str, owner: Any, size: int) -> None:
        if size:
            weakref.finalize(owner, self._freed, pool, size, self._generation)

    def _freed(self, pool: str, size: int, generation: int) -> None:
        if generation == self._generation:
            self._in_use[pool] -= size
            bisect.insort(self._cached[pool], size)

    def detach(self, allocation: Allocation) -> Any:
        return _host_copy(allocation.payload)

    def in_use(self, pool: str) -> int:
        return self._in_use[pool]

    def allocated(self, pool: str) -> int:
        return self._in_use[pool] + sum(self._cached[pool])

    def free_cached(self, pool: str) -> None:
        self._cached[pool].clear()

    def close(self) -> None:
        self._generation += 1
        for pool in self._in_use:
            self._in_use[pool] = 0
            self._cached[pool].clear()


def _host_copy(value: Any) -> Any:
    """A copy of a host pool's payload that shares no memory with the pool."""
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if array_kind(value) == "torch":
        return value.detach().clone()
    return value.copy()


def _torch() -> Any:
    return sys.modules["torch"]


@dataclass(slots=True)
class _Counters:
    spills: int = 0
    oom_retries: int = 0
    data: int = 0
    blocks: int = 0  # bytes of blocks the pool's items were given
    held_refusals: int = 0


@dataclass(slots=True)
class _Replaced:
    """The home value a put replaces, kept until the put succeeds: if it fails, it spills."""

    pool: str
    record: Record
    allocation: Allocation | None  # None once moved out of the pool

    def to_host(self, allocator: PoolAllocator) -> Record:
        """Move the value out of the pool (its device references die here)."""
        if self.allocation is not None:
            self.record.payload = allocator.detach(self.allocation)
            self.allocation = None
        return self.record


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
        # ObjectStore's hot-path view: the keys held (live), a read that also marks the item
        # used, so touching is a C-level no-op.
        self.resident = self._held
        self.read = self._read
        self.touch = _NO_TOUCH
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
            if record.home:  # copied out of the pool before the pool lets go of it
                record.payload = self.allocator.detach(held[1])
            self._release(name, held[1])
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

    def _release(self, name: str, allocation: Allocation) -> None:
        self.allocator.release(name, allocation)
        counters = self._counters[name]
        counters.data -= allocation.data
        counters.blocks -= allocation.allocated

    def held_bytes(self, name: str) -> int:
        """Bytes of ``name``'s blocks in use by arrays that are not its items: results of
        ``get`` (they share the pool's memory) and replaced or evicted values that something
        still references. They return to the pool when their last reference dies."""
        return max(0, self.allocator.in_use(name) - self._counters[name].blocks)

    def set_eviction_listener(self, listener: EvictionListener) -> None:
        self._listener = listener

    # -- ObjectStore -----------------------------------------------------------------------------

    def pool_of(self, record: Record) -> str:
        name = record.extra.get("pool", self.default_pool)
        if name not in self.pools:
            close = difflib.get_close_matches(name, list(self.pools), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"no pool named {name!r}{hint}; pools: {', '.join(self.pools)}")
        return str(name)

    def _read(self, key: str) -> Record:
        rec = self.peek(key)
        if rec is None:
            raise KeyError(key)
        return rec

    def peek(self, key: str) -> Record | None:
        held = self._held.get(key)
        return None if held is None else self.pools[held[0]].peek(key)

    def fits(self, size: int, pool: str | None = None) -> bool:
        """Whether ``size`` bytes fit the pool named ``pool`` (None: the default pool). An
        unknown name is True here: the put then refuses it, naming the closest pool."""
        store = self.pools.get(self.default_pool if pool is None else pool)
        return store is None or store.fits(size)

    def capacity(self, pool: str | None = None) -> int | None:
        """The byte budget of the pool named ``pool`` (None: the default pool), if known."""
        store = self.pools.get(self.default_pool if pool is None else pool)
        return None if store is None else store.max_bytes

    def put_nowait(self, key: str, record: Record) -> None:
        """Copy ``record``'s value into its pool, evicting (and so spilling) that pool's
        least recently used items first, by the LRU's bytes and by the allocator's blocks.

        A value that can never fit (over the pool's budget, or of a dtype the pools do not
        hold) is refused before anything changes. An older value of ``key`` is superseded:
        it leaves the pool without spilling, and is copied out of the pool first when its
        memory is needed; if the new value then cannot be allocated, the older one (when it
        was put here) spills after all and :class:`ValueTooLargeError` is raised.
        """
        name = self.pool_of(record)
        check_pool_value(record.payload)
        store = self.pools[name]
        if not store.fits(record.size):  # before anything changes
            raise ValueTooLargeError(record.size, store.max_bytes, f"GPU pool {name!r}")
        need = self.allocator.footprint(record.payload)
        limit = self.budgets[name]
        if need > limit:
            raise ValueTooLargeError(need, limit, f"GPU pool {name!r} on "
                                     f"{self.allocator.device}, in whole allocation blocks")
        replaced = self._take_old(key)
        try:
            self._make_room(name, record.size, need, replaced)
            allocation = self._allocate(name, record.payload, need)
        except Exception:
            if replaced is not None and self._listener is not None:
                # The put failed: the value it was to replace spills after all.
                self._listener(key, replaced.to_host(self.allocator))
            raise
        record.payload = allocation.payload
        store.set(key, record)  # fits now: evicts nothing
        self._held[key] = (name, allocation)
        counters = self._counters[name]
        counters.data += allocation.data
        counters.blocks += allocation.allocated

    def _take_old(self, key: str) -> _Replaced | None:
        """Remove ``key``'s current value; keep it (in the pool's memory) only when it is a
        home value that must spill should the put fail."""
        held = self._held.pop(key, None)
        if held is None:
            return None
        name, allocation = held
        old = self.pools[name].pop(key)
        self._release(name, allocation)
        if old is None or not old.home:
            return None  # a copy: dropped, its blocks return unless a reader holds them
        return _Replaced(name, old, allocation)

    def _make_room(self, name: str, size: int, need: int, replaced: _Replaced | None) -> None:
        """Evict until ``size`` bytes fit the LRU and ``need`` bytes of blocks fit beside the
        blocks in use; then free the cached blocks if they would push the pool over its
        limit. Raises at once, evicting nothing more, when memory held outside the pool's
        items leaves too little room."""
        store, alloc, limit = self.pools[name], self.allocator, self.budgets[name]
        ours = (replaced.allocation.allocated if replaced is not None
                and replaced.pool == name and replaced.allocation is not None else 0)
        if self.held_bytes(name) - ours + need > limit:
            raise self._no_room(name, need)  # before anything is evicted: it cannot help
        while store.data and store.bytes + size > limit:
            self._evict_one(name)
        if (replaced is not None and replaced.pool == name
                and alloc.in_use(name) + need > limit):
            replaced.to_host(alloc)  # the old value's blocks return unless a reader holds them
        while alloc.in_use(name) + need > limit:
            if not store.data or self.held_bytes(name) + need > limit:
                raise self._no_room(name, need)
            self._evict_one(name)
        if alloc.allocated(name) + need > limit:
            alloc.free_cached(name)

    def _allocate(self, name: str, payload: Any, need: int) -> Allocation:
        """The allocation, retrying after an allocator refusal (fragmentation): each retry
        first evicts at least ``need`` more bytes of blocks (or, in an empty pool, frees the
        cached blocks once)."""
        store, counters, alloc = self.pools[name], self._counters[name], self.allocator
        emptied = False
        while True:
            try:
                return alloc.store(name, payload)
            except PoolOutOfMemory as exc:
                detail = str(exc)
            counters.oom_retries += 1
            if store.data:
                target = alloc.in_use(name) - need
                while store.data and alloc.in_use(name) > target:
                    if self.held_bytes(name) + need > self.budgets[name]:
                        raise self._no_room(name, need)
                    self._evict_one(name)
            elif emptied:
                held = self.held_bytes(name)
                if held:
                    raise self._no_room(name, need)
                raise ValueTooLargeError(need, self.budgets[name], f"GPU pool {name!r} on "
                                         f"{alloc.device}: {detail}")
            else:
                emptied = True
            alloc.free_cached(name)

    def _no_room(self, name: str, need: int) -> ValueTooLargeError:
        limit, held = self.budgets[name], self.held_bytes(name)
        if not held:
            return ValueTooLargeError(need, limit, f"GPU pool {name!r} on "
                                      f"{self.allocator.device}")
        self._counters[name].held_refusals += 1
        return ValueTooLargeError(
            need, limit - held,
            f"GPU pool {name!r} on {self.allocator.device}: {held} of its {limit} bytes are "
            "held by arrays that are no longer its items but are still referenced (results "
            "of get, which share the pool's memory, or replaced or evicted values); they "
            "return to the pool when their last reference is dropped. Keep a copy "
            "(to_host(value), tensor.clone()) instead of holding a returned array")

    def pop_nowait(self, key: str) -> Record | None:
        held = self._held.pop(key, None)
        if held is None:
            return None
        name, allocation = held
        self._release(name, allocation)
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
        """Per pool: ``limit``, ``used`` (the LRU's bytes), ``allocated`` (the allocator's
        bytes, cached blocks included), ``in_use`` (blocks live arrays reference), ``held``
        (of those, bytes outside the pool's items: see :meth:`held_bytes`), ``items``,
        ``evictions``, ``spills``, ``oom_retries`` (allocator refusals retried),
        ``held_refusals`` (puts refused because held memory left no room), and
        ``fragmentation``."""
        alloc = self.allocator
        pools = {}
        for name, s in self.pools.items():
            c = self._counters[name]
            pools[name] = {
                "limit": s.max_bytes, "used": s.bytes, "allocated": alloc.allocated(name),
                "in_use": alloc.in_use(name), "held": self.held_bytes(name),
                "items": len(s), "evictions": s.evictions, "spills": c.spills,
                "oom_retries": c.oom_retries, "held_refusals": c.held_refusals,
                "fragmentation": alloc.fragmentation(name, c.data),
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
