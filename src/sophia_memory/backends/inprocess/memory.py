"""In-process backend (``memory://``): a bounded dict of live objects, the default L1.

Values are held as the objects that were put, not copies (like ``functools.lru_cache`` and
cachetools): treat cached values as immutable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...policies import (
    DEFAULT_POLICY,
    AdaptivePolicy,
    BoundedStore,
    EvictionListener,
    policy_from_name,
    policy_name,
)
from ...tiers import Record
from ..base import Backend

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """A bounded in-process store, bounded by items and/or bytes, evicting by ``policy`` (a
    name from :data:`~sophia_memory.policies.POLICY_NAMES`; ConfigError names them when it is
    not one).

    With ``admission`` (off by default) it is :class:`~sophia_memory.policies.Admitting`:
    promotion asks ``admit`` as it copies a hit from a slower tier here, and the copy is made
    only when the key was offered or written here more often than what it would evict
    (:meth:`~sophia_memory.policies.EvictionPolicy.admit`), so a scan read from a slower tier
    cannot flush this one. Without it every hit below is promoted.
    """

    scheme = "memory"

    def __init__(self, max_items: int | None = 100_000, max_bytes: int | None = None,
                 policy: str = DEFAULT_POLICY, admission: bool = False) -> None:
        self._store = BoundedStore(max_items, max_bytes, policy_from_name(policy))
        self._policy_name = policy_name(policy)
        # The hot path calls these directly (ObjectStore protocol).
        self.peek = self._store.peek
        self.resident = self._store.data
        self.read = self._store.data.__getitem__
        self.touch = self._store.touch
        self.put_nowait: Callable[[str, Record], None] = self._store.set
        self.pop_nowait = self._store.pop
        self.fits = self._store.fits
        if admission:
            self.admit = self._store.admit
            self.put_nowait = self._put_seen
            self._seen = self._store.policy.seen

    def _put_seen(self, key: str, record: Record) -> None:
        """A put that also counts a write (not a promoted copy) as a sighting for admission."""
        self._store.set(key, record)
        if record.home:
            self._seen(key)

    def capacity(self, pool: str | None = None) -> int | None:
        """The byte bound (None: bounded by items only, or not at all)."""
        return self._store.max_bytes

    def discard(self, key: str, record: Record) -> None:
        if self._store.data.get(key) is record:
            self._store.pop(key)

    def set_eviction_listener(self, listener: EvictionListener) -> None:
        self._store.listener = listener

    async def get(self, key: str, now: float) -> Record | None:
        return self._store.peek(key)

    async def put(self, key: str, record: Record) -> None:
        self.put_nowait(key, record)

    async def delete(self, key: str, now: float) -> bool:
        rec = self._store.pop(key)
        return rec is not None and not rec.expired(now)

    async def keys(self, prefix: str, now: float) -> list[str]:
        data = self._store.data
        return [k for k, r in list(data.items()) if k.startswith(prefix) and not r.expired(now)]

    async def purge_expired(self, now: float) -> int:
        dead = [k for k, r in list(self._store.data.items()) if r.expired(now)]
        for key in dead:
            self._store.pop(key)
        return len(dead)

    async def close(self) -> None:
        self._store.clear()

    def stats(self) -> dict[str, Any]:
        s = self._store
        out = {"items": len(s), "bytes": s.bytes, "max_items": s.max_items,
               "max_bytes": s.max_bytes, "evictions": s.evictions, "policy": self._policy_name}
        if isinstance(s.policy, AdaptivePolicy):  # whom it follows, how often that changed
            out["following"] = s.policy.leader_name
            out["policy_switches"] = s.policy.switches
        return out

    def describe(self) -> str:
        s = self._store
        return f"in-process {self._policy_name} (max_items={s.max_items}, max_bytes={s.max_bytes})"
