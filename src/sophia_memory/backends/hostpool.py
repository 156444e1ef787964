"""Host-memory pools (``host://``): the L0 pool logic on NumPy, used when there is no GPU.

Named pools, each with a byte budget and its own LRU: an item lives in one pool
(``Record.extra["pool"]``), and inserting into a full pool evicts from that pool only. ``put``
copies arrays into pool memory; ``peek`` returns the resident array without a copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._arrays import array_kind, is_array_dict
from ..errors import ConfigError, UnsupportedValueError, ValueTooLargeError
from ..policies import BoundedStore, EvictionListener, LRUPolicy
from ..pools import format_bytes
from ..tiers import Record
from .base import Backend

__all__ = ["HostPoolBackend", "copy_array_value"]


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


_PLAIN = frozenset({str, int, float, bool, bytes, list, tuple, type(None)})


def is_pool_value(value: Any) -> bool:
    """Whether ``value`` can live in a pool: an array or a non-empty dict of arrays."""
    cls = type(value)
    if cls is np.ndarray:
        return True
    if cls in _PLAIN:
        return False
    return array_kind(value) in ("numpy", "torch", "cupy") or is_array_dict(value)


class HostPoolBackend(Backend):
    """Named byte-budgeted LRU pools in host memory."""

    scheme = "host"

    def __init__(self, budgets: Mapping[str, int], default_pool: str | None = None) -> None:
        if not budgets:
            raise ConfigError("host pools need at least one pool")
        self.budgets = dict(budgets)
        self.pools = {name: BoundedStore(None, size, LRUPolicy()) for name, size in
                      budgets.items()}
        self.default_pool = default_pool or (
            "inference_cache" if "inference_cache" in budgets else next(iter(budgets)))
        if self.default_pool not in self.pools:
            raise ConfigError(f"default pool {self.default_pool!r} is not configured")
        self._where: dict[str, str] = {}
        self._listener: EvictionListener | None = None
        for store in self.pools.values():
            store.listener = self._evicted

    def _evicted(self, key: str, record: Record) -> None:
        self._where.pop(key, None)
        if self._listener is not None:
            self._listener(key, record)

    def set_eviction_listener(self, listener: EvictionListener) -> None:
        self._listener = listener

    def pool_of(self, record: Record) -> str:
        name = record.extra.get("pool", self.default_pool)
        if name not in self.pools:
            raise ConfigError(f"no pool named {name!r}; pools: {', '.join(self.pools)}")
        return str(name)

    def peek(self, key: str) -> Record | None:
        name = self._where.get(key)
        return None if name is None else self.pools[name].peek(key)

    def fits(self, size: int) -> bool:
        return self.pools[self.default_pool].fits(size)

    def put_nowait(self, key: str, record: Record) -> None:
        name = self.pool_of(record)
        if not is_pool_value(record.payload):
            raise UnsupportedValueError(
                "the GPU tier holds arrays and dicts of arrays, not "
                f"{type(record.payload).__qualname__}")
        pool = self.pools[name]
        if not pool.fits(record.size):  # before anything changes
            raise ValueTooLargeError(record.size, pool.max_bytes, f"GPU pool {name!r}")
        record.payload = copy_array_value(record.payload)
        old = self._where.get(key)
        if old is not None and old != name:
            self.pools[old].pop(key)
        self.pools[name].set(key, record)  # evicts within this pool only; may raise too-large
        self._where[key] = name

    def pop_nowait(self, key: str) -> Record | None:
        name = self._where.pop(key, None)
        return None if name is None else self.pools[name].pop(key)

    def discard(self, key: str, record: Record) -> None:
        name = self._where.get(key)
        if name is not None and self.pools[name].data.get(key) is record:
            self.pools[name].pop(key)
            del self._where[key]

    async def get(self, key: str, now: float) -> Record | None:
        return self.peek(key)

    async def put(self, key: str, record: Record) -> None:
        self.put_nowait(key, record)

    async def delete(self, key: str, now: float) -> bool:
        rec = self.pop_nowait(key)
        return rec is not None and not rec.expired(now)

    async def keys(self, prefix: str, now: float) -> list[str]:
        out = []
        for key, name in list(self._where.items()):
            rec = self.pools[name].data.get(key)
            if key.startswith(prefix) and rec is not None and not rec.expired(now):
                out.append(key)
        return out

    async def purge_expired(self, now: float) -> int:
        dead = [k for k, n in list(self._where.items()) if self.pools[n].data[k].expired(now)]
        for key in dead:
            self.pools[self._where.pop(key)].pop(key)
        return len(dead)

    async def close(self) -> None:
        for store in self.pools.values():
            store.clear()
        self._where.clear()

    def stats(self) -> dict[str, Any]:
        return {"device": "host", "pools": {
            name: {"limit": s.max_bytes, "used": s.bytes, "items": len(s),
                   "evictions": s.evictions} for name, s in self.pools.items()}}

    def describe(self) -> str:
        budgets = ", ".join(f"{n}={format_bytes(b)}" for n, b in self.budgets.items())
        return f"host-memory pools ({budgets})"
