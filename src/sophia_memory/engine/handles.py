"""Typed handles on the enabled tiers: what the engine calls instead of backend methods by name.

Two kinds, told apart by type, never by flags:

* :class:`InProcessTier` wraps an :class:`~sophia_memory.backends.ObjectStore` backend (the
  in-process LRU, the L0 pools). Its calls are synchronous: nothing can interleave with them.
* :class:`RemoteTier` wraps every other backend: a call suspends (another thread, process or
  server), so it goes through the tier's guard: a circuit breaker, and a deadline where the
  backend declares :class:`~sophia_memory.backends.Remote`. Optional abilities (versions,
  search, bare payloads, purging) are typed attributes that are None when the backend lacks
  them.

What a failed call means is decided in one place, :func:`~sophia_memory._support.fault_of`
(DESIGN.md §3 "Failures"): the request's fault (a value, TTL, metadata or key the tier refused,
``WRONGTYPE``) fails that call alone with a typed error and is counted in ``refused``, never
toward the breaker; the tier's fault (refused or lost connection, timeout) counts toward
``breaker`` and comes out as :class:`~sophia_memory.errors.TierUnavailableError`; a refused
write (out of memory, disk full, read-only) counts toward ``write_breaker`` only, so a tier
that still reads keeps serving reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, NoReturn, ParamSpec, Protocol, TypeVar, runtime_checkable

from .._support import CircuitBreaker, Deadlines, TierStats, fault_of, library_error
from ..backends import (
    Backend,
    BarePayloads,
    Conditional,
    ObjectStore,
    Purging,
    Remote,
    Searchable,
    Versioned,
)
from ..errors import SophiaMemoryError, TierUnavailableError
from ..tiers import Record, Tier

__all__ = ["InProcessTier", "RemoteTier", "Responsive", "TierHandle"]

P = ParamSpec("P")
T = TypeVar("T")


@runtime_checkable
class Responsive(Protocol):
    """A remote backend that can tell whether its server kept answering: a call that ran past
    its deadline while it did waited behind other calls (overload) and does not count toward
    the breaker; one whose server went silent does."""

    def answered_within(self, seconds: float) -> bool: ...


#: The backend calls that write: they pass the write health too (``RemoteTier.write_breaker``).
WRITES = frozenset({"put", "put_many", "put_if", "delete", "delete_many", "append",
                    "purge_expired"})


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

    __slots__ = ("discard", "fits", "lookup", "peek", "pop_nowait", "purging", "put_nowait",
                 "read", "resident", "touch")

    def __init__(self, tier: Tier, backend: Backend, index: int, store: ObjectStore) -> None:
        super().__init__(tier, backend, index)
        # Bound once: the hot path calls these directly.
        self.peek = store.peek
        self.resident = store.resident
        self.read = store.read
        self.touch = store.touch
        self.put_nowait = store.put_nowait
        self.pop_nowait = store.pop_nowait
        self.discard = store.discard
        self.fits = store.fits
        resident = store.resident
        #: ``lookup(key)``: the record of ``key`` or None, without marking it used; the
        #: resident dict's own ``get`` where ``read`` is that dict's item lookup (one C-level
        #: call per key of a batch read instead of two).
        self.lookup: Callable[[str], Record | None] = (
            resident.get if isinstance(resident, dict)
            and store.read == getattr(resident, "__getitem__", None) else self._lookup)
        self.purging: Purging | None = backend if isinstance(backend, Purging) else None

    def _lookup(self, key: str) -> Record | None:
        return self.read(key) if key in self.resident else None

    def pop_copy(self, key: str) -> None:
        """Drop ``key`` here if what is held is a copy (not an item whose home this is)."""
        rec = self.peek(key)
        if rec is not None and not rec.home:
            self.pop_nowait(key)


class RemoteTier(_Handle):
    """A tier whose calls suspend; each call is guarded (breaker, deadline)."""

    __slots__ = ("bare", "breaker", "conditional", "deadlines", "draining", "purging",
                 "recovered",
                 "responsive", "searchable", "stale", "timeout", "versioned", "write_breaker")

    def __init__(self, tier: Tier, backend: Backend, index: int, breaker: CircuitBreaker,
                 deadlines: Deadlines) -> None:
        super().__init__(tier, backend, index)
        #: The tier's health: opened by the tier's faults; guards every call.
        self.breaker = breaker
        #: Write health: opened by refused writes (out of memory, disk full); guards writes
        #: only, so reads go on while it is open. Same settings as ``breaker``.
        self.write_breaker = breaker.twin()
        self.deadlines = deadlines
        self.timeout: float | None = backend.call_timeout if isinstance(backend, Remote) \
            else None
        self.versioned: Versioned | None = backend if isinstance(backend, Versioned) else None
        self.searchable: Searchable | None = backend if isinstance(backend, Searchable) \
            else None
        self.bare: BarePayloads | None = backend if isinstance(backend, BarePayloads) else None
        #: Conditional writes of plain items (a versioned tier has its own: ``append`` with
        #: an expected version; a searchable one keeps an index beside its rows).
        self.conditional: Conditional | None = backend if (
            isinstance(backend, Conditional) and self.versioned is None
            and self.searchable is None) else None
        self.purging: Purging | None = backend if isinstance(backend, Purging) else None
        self.responsive: Responsive | None = backend if isinstance(backend, Responsive) \
            else None
        #: Keys whose copies here could not be invalidated while the tier failed: reads skip
        #: them here, and their deletion is replayed once the tier answers again.
        self.stale: set[str] = set()
        self.draining = False
        #: Called after a successful call while keys are stale here (replays their deletion).
        self.recovered: Callable[[RemoteTier], None] | None = None

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """Run one backend call through the guard: the breaker (and for a write, the write
        health), the deadline. The tier's faults come out as :class:`TierUnavailableError`;
        the request's own fault as the library's typed error for it (never counted toward a
        breaker)."""
        breaker = self.breaker
        if breaker.opened_at is not None and not breaker.allow():
            raise TierUnavailableError(self.tier, "circuit breaker open after repeated failures")
        writes = self.write_breaker
        if (writes.opened_at is not None and getattr(fn, "__name__", "") in WRITES
                and not writes.allow()):
            raise TierUnavailableError(self.tier, "refusing writes after repeated refused "
                                                  "writes (reads are still served)")
        deadlines = self.deadlines
        task = deadlines.enter(self.timeout) if self.timeout else None
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError as exc:
            if not deadlines.expired(task):
                raise
            self.stats.errors += 1
            responsive = self.responsive
            if responsive is not None and responsive.answered_within(self.timeout or 0.0):
                # the server kept answering: this call waited behind others (overload)
                raise TierUnavailableError(
                    self.tier, f"timed out after {self.timeout}s waiting behind other calls "
                    "(overloaded: more calls in flight than it answers within the deadline; "
                    "not counted toward the breaker)") from exc
            breaker.failure()
            raise TierUnavailableError(self.tier, f"timed out after {self.timeout}s") from exc
        except Exception as exc:
            self._failed(exc)
        finally:
            deadlines.leave(task)
        if breaker.failures or breaker.opened_at is not None:
            breaker.success()
        if writes.failures and getattr(fn, "__name__", "") in WRITES:
            writes.success()
        if self.stale and not self.draining and self.recovered is not None:
            self.recovered(self)
        return result

    def _failed(self, exc: Exception) -> NoReturn:
        """Count ``exc`` where it belongs and raise what the caller sees."""
        fault = fault_of(exc)
        if fault == "request":
            self.stats.refused += 1
            if isinstance(exc, SophiaMemoryError):
                raise exc
            raise library_error(exc, f"{self.tier} refused the request") from exc
        self.stats.errors += 1
        if fault == "write":
            self.write_breaker.failure()
            raise TierUnavailableError(self.tier, f"refuses writes: {exc}") from exc
        self.breaker.failure()
        raise TierUnavailableError(self.tier, str(exc)) from exc

    # The calls the engine makes, each typed. Plain methods returning the guarded call's
    # coroutine: awaited by the caller, with no coroutine of their own in between.

    def get(self, key: str, now: float) -> Coroutine[Any, Any, Record | None]:
        return self.call(self.backend.get, key, now)

    def get_many(self, keys: list[str], now: float) -> Coroutine[Any, Any, dict[str, Record]]:
        return self.call(self.backend.get_many, keys, now)

    def get_payloads(self, bare: BarePayloads, keys: list[str],
                     now: float) -> Coroutine[Any, Any, dict[str, Any]]:
        return self.call(bare.get_payloads, keys, now)

    def put(self, key: str, record: Record) -> Coroutine[Any, Any, None]:
        return self.call(self.backend.put, key, record)

    def put_many(self, records: Mapping[str, Record]) -> Coroutine[Any, Any, None]:
        return self.call(self.backend.put_many, records)

    def delete_many(self, keys: list[str], now: float) -> Coroutine[Any, Any, int]:
        return self.call(self.backend.delete_many, keys, now)

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
