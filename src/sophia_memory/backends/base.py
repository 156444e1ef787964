"""The backend interface: a small async key/record store, plus optional abilities.

A backend moves opaque :class:`~sophia_memory.tiers.Record` objects under ``str`` keys. It does
not encode values, evict by policy of its own choosing, promote, or keep metrics of calls:
the front :class:`~sophia_memory.Memory` composes those once for every backend.

Required: :meth:`Backend.get`, :meth:`Backend.put`, :meth:`Backend.delete`,
:meth:`Backend.keys`, :meth:`Backend.close`. The many-variants have loop defaults that a
backend overrides when it can batch (one ``MGET``, one transaction).

Optional abilities are separate protocols, checked with ``isinstance``, never boolean flags:

* :class:`ObjectStore` - records hold live Python objects (no codec) and can be read
  synchronously with ``peek``; the front uses that for its hot path.
* :class:`Evicting` - the backend evicts under a bound and reports what it evicted.
* :class:`Purging` - expired records can be removed in bulk.
* :class:`Remote` - calls cross a network or process: the front adds timeouts and a breaker.
* :class:`Invalidating` - a store shared between processes that reports keys changed by
  others, so the front can drop its in-process copies of them.
* :class:`BarePayloads` - can read many live payloads without building records; the front
  uses it where it needs nothing but the values (a tier with nothing above to promote into).
* :class:`Conditional` - can write a key only if it still holds what was read (atomic in the
  store itself, so against other processes too); the front builds ``add``, ``incr``,
  ``compare_and_set`` and ``touch`` on it.

Expiry: backends store ``Record.expires_at`` and return records as stored; ``now`` (on the
memory's clock) is passed where a backend may use it to skip or remove expired records. The
front treats an expired record as absent either way.

Third-party backends register a factory by URL scheme, either with
:func:`sophia_memory.backends.register` or through the ``sophia_memory.backends`` entry point
group; the factory receives the parsed URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..errors import ConfigError
from ..policies import EvictionListener
from ..tiers import Record

__all__ = ["Backend", "BarePayloads", "Conditional", "Evicting", "Invalidating", "ObjectStore",
           "Purging", "Remote", "RetainedVersions", "Searchable", "Versioned"]


class Backend(ABC):
    """An async store of records by key. One instance serves one tier."""

    #: URL scheme(s) the backend answers to, for ``doctor`` and error messages.
    scheme: ClassVar[str] = ""

    @abstractmethod
    async def get(self, key: str, now: float) -> Record | None:
        """The record under ``key``, or None. May return an expired record."""

    @abstractmethod
    async def put(self, key: str, record: Record) -> None:
        """Store ``record`` under ``key``, replacing any record there. Durable on return for
        backends that persist."""

    @abstractmethod
    async def delete(self, key: str, now: float) -> bool:
        """Remove ``key``; True if an unexpired record was removed."""

    @abstractmethod
    async def keys(self, prefix: str, now: float) -> list[str]:
        """The keys that start with ``prefix`` and hold an unexpired record."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections, threads and files. Idempotent."""

    async def exists(self, key: str, now: float) -> bool:
        """True if ``key`` holds an unexpired record."""
        rec = await self.get(key, now)
        return rec is not None and not rec.expired(now)

    async def get_many(self, keys: Iterable[str], now: float) -> dict[str, Record]:
        """The records present among ``keys`` (may include expired ones)."""
        found: dict[str, Record] = {}
        for key in keys:
            rec = await self.get(key, now)
            if rec is not None:
                found[key] = rec
        return found

    async def put_many(self, records: Mapping[str, Record]) -> None:
        """Store several records; backends that can should do it in one round trip/commit."""
        for key, rec in records.items():
            await self.put(key, rec)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        """Remove several keys; the number of unexpired records removed."""
        removed = 0
        for key in keys:
            removed += await self.delete(key, now)
        return removed

    def stats(self) -> dict[str, Any]:
        """Backend-specific figures (sizes, connections) for ``Memory.stats``."""
        return {}

    def describe(self) -> str:
        """A one-line description with no secrets in it."""
        return type(self).__name__


@runtime_checkable
class ObjectStore(Protocol):
    """Holds live Python objects in ``Record.payload``; ``peek`` reads without awaiting.

    The hot path reads without calling a Python function where it can: ``resident`` contains
    the keys held now (a live view, the same object for the store's life), ``read(key)`` is
    the record of a resident key and ``touch(key)`` marks it used for eviction (a no-op where
    ``read`` already does). ``peek`` is the same read in one call.
    """

    resident: Container[str]
    read: Callable[[str], Record]
    touch: Callable[[str], object]

    def peek(self, key: str) -> Record | None:
        """The record under ``key`` (marking it used for eviction), or None."""
        ...

    def put_nowait(self, key: str, record: Record) -> None:
        """Store ``record`` now (evicting under the backend's bound)."""
        ...

    def pop_nowait(self, key: str) -> Record | None:
        """Remove and return the record under ``key`` now."""
        ...

    def discard(self, key: str, record: Record) -> None:
        """Remove ``key`` only if it still holds exactly ``record`` (lazy expiry)."""
        ...

    def fits(self, size: int, pool: str | None = None) -> bool:
        """Whether an item of ``size`` bytes can be held at all (in ``pool``, for a store
        of named pools; None: its default pool)."""
        ...


@runtime_checkable
class Evicting(Protocol):
    """Evicts records under a bound; the listener receives each evicted (key, record)."""

    def set_eviction_listener(self, listener: EvictionListener) -> None: ...


InvalidationListener = Callable[[list[str] | None], None]


@runtime_checkable
class Invalidating(Protocol):
    """A shared store that reports keys other clients changed, so a process can drop its
    in-process copies of them. The listener receives the changed keys, or None when it must
    assume every key changed (the notification channel was lost or regained)."""

    def set_invalidation_listener(self, listener: InvalidationListener) -> None: ...


@runtime_checkable
class BarePayloads(Protocol):
    """Reads payloads in bulk without their metadata."""

    async def get_payloads(self, keys: list[str], now: float) -> dict[str, Any]:
        """``{key: payload}`` for the live items among ``keys`` (distinct), as one batch;
        the same payloads ``get_many`` would return in its records."""
        ...


@runtime_checkable
class Conditional(Protocol):
    """Conditional writes of one key, atomic in the store (so against other processes too).

    ``read_for_update`` returns the record under a key (None: none, expired ones included as
    stored) and a *token* standing for exactly what was read; ``put_if`` stores a record only
    if the key still holds what the token stands for (for a None record: still nothing), in
    one atomic step of the store, and says whether it did. A write by anyone in between makes
    it return False; the caller reads again.
    """

    async def read_for_update(self, key: str, now: float) -> tuple[Record | None, Any]:
        """The record under ``key`` as stored (or None) and the token ``put_if`` compares."""
        ...

    async def put_if(self, key: str, record: Record, token: Any) -> bool:
        """Store ``record`` if ``key`` still holds what ``token`` stands for; whether it did."""
        ...


@runtime_checkable
class Purging(Protocol):
    """Can remove all expired records at once."""

    async def purge_expired(self, now: float) -> int:
        """Remove records expired at ``now``; the number removed."""
        ...


@runtime_checkable
class Remote(Protocol):
    """Marks backends whose calls leave the process: the front guards them with a timeout
    (``call_timeout`` seconds) and a circuit breaker."""

    call_timeout: float


@runtime_checkable
class Searchable(Protocol):
    """Items carry an embedding (``Record.extra["embedding"]``, float32 bytes) and can be
    searched by similarity."""

    def prepare(self, vector: object) -> Any:
        """The vector checked and converted for storage; InvalidArgumentError if unusable."""
        ...

    async def search(self, queries: object, k: int, metric: str | None, prefix: str,
                     min_score: float | None) -> list[list[tuple[str, float]]]:
        """Exact top-``k`` ``(key, score)`` pairs for each row of the 2-D ``queries``, best
        first, among the keys directly in namespace ``prefix``."""
        ...


@runtime_checkable
class Versioned(Protocol):
    """Keeps every version of a key (the workflow tier). ``get`` returns the newest version;
    ``put`` appends one; ``delete`` removes all versions."""

    async def append(self, key: str, record: Record, expected_version: int | None) -> int:
        """Append ``record`` as the next version and return its number (1 for a new key).

        With ``expected_version``, append only if the newest version is exactly that (0: the
        key must not exist); otherwise raise :class:`VersionConflictError` carrying the
        current version.
        """
        ...

    async def get_version(self, key: str, version: int) -> Record | None:
        """The record of one version, or None when it does not exist (or was purged)."""
        ...

    async def history(self, key: str, limit: int | None) -> list[Record]:
        """The kept versions, newest first (at most ``limit``)."""
        ...


class RetainedVersions(Backend):
    """Base of the versioned backends: how many versions per key they keep (``retain``, the
    newest ones; None: all), checked once, and shown in ``stats`` and ``describe``."""

    retain: int | None

    def _keep_retain(self, retain: int | None) -> None:
        """Set ``retain``; called first in ``__init__``, before anything is opened."""
        if retain is not None and retain < 1:
            raise ConfigError(f"retain must be at least 1 (or none), got {retain}")
        self.retain = retain

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["retain"] = self.retain
        return stats

    def describe(self) -> str:
        return super().describe() + f" (versioned, retain {self.retain})"
