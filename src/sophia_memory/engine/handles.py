"""Typed handles on the enabled tiers: what the engine calls instead of backend methods by name.

Two kinds, told apart by type, never by flags:

* :class:`InProcessTier` wraps an :class:`~sophia_memory.backends.ObjectStore` backend (the
  in-process LRU, the L0 pools). Its calls are synchronous: nothing can interleave with them.
* :class:`RemoteTier` wraps every other backend: a call suspends (another thread, process or
  server), so it goes through the tier's guard: a circuit breaker, and a deadline where the
  backend declares :class:`~sophia_memory.backends.Remote`. Failures come out as
  :class:`~sophia_memory.errors.TierUnavailableError`. Optional abilities (versions, search,
  bare payloads, purging) are typed attributes that are None when the backend lacks them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from .._support import CircuitBreaker, Deadlines, TierStats
from ..backends import (
    Backend,
    BarePayloads,
    ObjectStore,
    Purging,
    Remote,
    Searchable,
    Versioned,
)
from ..errors import BackendError, TierUnavailableError
from ..tiers import Record, Tier

__all__ = ["InProcessTier", "RemoteTier", "TierHandle"]

P = ParamSpec("P")
T = TypeVar("T")


class _Handle:
    """What both kinds share: the tier, its position in the chain, its counters."""

    __slots__ = ("backend", "index", "promotable", "stats", "tier")

    def __init__(self, tier: Tier, backend: Backend, index: int) -> None:
        self.tier = tier
        self.backend = backend
        self.index = index
        self.stats = TierStats()
        #: Whether a hit here is promoted: promotion is on and a tier the policy promotes
        #: into (GPU, SESSION) is above this one. Set by the engine.
        self.promotable = False

    async def keys(self, prefix: str, now: float) -> list[str]:
        return await self.backend.keys(prefix, now)


class InProcessTier(_Handle):
    """An in-process tier: records hold live objects, every operation is synchronous."""

    __slots__ = ("discard", "fits", "peek", "pop_nowait", "purging", "put_nowait")

    def __init__(self, tier: Tier, backend: Backend, index: int, store: ObjectStore) -> None:
        super().__init__(tier, backend, index)
        # Bound once: the hot path calls these directly.
        self.peek = store.peek
        self.put_nowait = store.put_nowait
        self.pop_nowait = store.pop_nowait
        self.discard = store.discard
        self.fits = store.fits
        self.purging: Purging | None = backend if isinstance(backend, Purging) else None

    def pop_copy(self, key: str) -> None:
        """Drop ``key`` here if what is held is a copy (not an item whose home this is)."""
        rec = self.peek(key)
        if rec is not None and not rec.home:
            self.pop_nowait(key)


class RemoteTier(_Handle):
    """A tier whose calls suspend; each call is guarded (breaker, deadline)."""

    __slots__ = ("bare", "breaker", "deadlines", "draining", "purging", "recovered",
                 "searchable", "stale", "timeout", "versioned")

    def __init__(self, tier: Tier, backend: Backend, index: int, breaker: CircuitBreaker,
                 deadlines: Deadlines) -> None:
        super().__init__(tier, backend, index)
        self.breaker = breaker
        self.deadlines = deadlines
        self.timeout: float | None = backend.call_timeout if isinstance(backend, Remote) \
            else None
        self.versioned: Versioned | None = backend if isinstance(backend, Versioned) else None
        self.searchable: Searchable | None = backend if isinstance(backend, Searchable) \
            else None
        self.bare: BarePayloads | None = backend if isinstance(backend, BarePayloads) else None
        self.purging: Purging | None = backend if isinstance(backend, Purging) else None
        #: Keys whose copies here could not be invalidated while the tier failed: reads skip
        #: them here, and their deletion is replayed once the tier answers again.
        self.stale: set[str] = set()
        self.draining = False
        #: Called after a successful call while keys are stale here (replays their deletion).
        self.recovered: Callable[[RemoteTier], None] | None = None

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """Run one backend call through the breaker (and deadline); failures come out as
        :class:`TierUnavailableError`."""
        breaker = self.breaker
        if not breaker.allow():
            raise TierUnavailableError(self.tier, "circuit breaker open after repeated failures")
        deadlines = self.deadlines
        task = deadlines.enter(self.timeout) if self.timeout else None
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError as exc:
            if not deadlines.expired(task):
                raise
            breaker.failure()
            self.stats.errors += 1
            raise TierUnavailableError(self.tier, f"timed out after {self.timeout}s") from exc
        except (BackendError, TierUnavailableError, OSError) as exc:
            breaker.failure()
            self.stats.errors += 1
            raise TierUnavailableError(self.tier, str(exc)) from exc
        finally:
            deadlines.leave(task)
        breaker.success()
        if self.stale and not self.draining and self.recovered is not None:
            self.recovered(self)
        return result

    # The calls the engine makes, each typed.

    async def get(self, key: str, now: float) -> Record | None:
        return await self.call(self.backend.get, key, now)

    async def get_many(self, keys: list[str], now: float) -> dict[str, Record]:
        return await self.call(self.backend.get_many, keys, now)

    async def get_payloads(self, bare: BarePayloads, keys: list[str],
                           now: float) -> dict[str, Any]:
        return await self.call(bare.get_payloads, keys, now)

    async def put(self, key: str, record: Record) -> None:
        await self.call(self.backend.put, key, record)

    async def put_many(self, records: Mapping[str, Record]) -> None:
        await self.call(self.backend.put_many, records)

    async def delete_many(self, keys: list[str], now: float) -> int:
        return await self.call(self.backend.delete_many, keys, now)

    async def drop(self, keys: list[str], now: float, *,
                   only: Callable[[Record], bool] | None = None) -> list[str]:
        """Delete the present ``keys`` (those whose record passes ``only``, when given);
        the keys that held an unexpired record."""
        present = await self.get_many(keys, now)
        if only is not None:
            present = {k: r for k, r in present.items() if only(r)}
        if present:
            await self.delete_many(list(present), now)
        return [k for k, r in present.items() if not r.expired(now)]


TierHandle = InProcessTier | RemoteTier
