"""The public front: :class:`Memory`, one async get/put API over six tiers.

Semantics (see DESIGN.md §3): ``put`` writes to the value's *home* tier and invalidates copies
above it before returning; ``get`` searches the tiers fastest first and returns the first
live hit, scheduling a background promotion of hits from slower tiers; bounded in-process tiers
evict by LRU and spill home items to the next tier down; TTLs are absolute expiries carried
across tiers.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast, overload

import numpy as np

from ._arrays import array_kind
from ._support import canonical_hash, check_meta, check_search, ttl_seconds
from .backends import Searchable, Versioned, check_pool_value, is_pool_value
from .clock import Clock, SystemClock
from .config import MemoryConfig, tier_of
from .engine import Engine, InProcessTier, RemoteTier, TierHandle
from .errors import (
    InvalidArgumentError,
    InvalidKeyError,
    ValueTooLargeError,
    VersionConflictError,
)
from .tiers import Entry, Hit, Record, Tier, next_version

__all__ = ["Cached", "Memory"]

P = ParamSpec("P")
R = TypeVar("R")

_SEP = "\x1f"  # joins namespace and key; refused inside keys and namespace names
_MISSING: Any = object()


def _too_large_for(slot: InProcessTier, size: int, pool: str | None) -> ValueTooLargeError:
    """The error for a value larger than the whole in-process tier (or pool), with its byte
    bound where the backend tells it."""
    capacity = getattr(slot.backend, "capacity", None)
    limit = capacity(pool) if capacity is not None else None
    where = f"{slot.tier} pool {pool!r}" if pool else f"{slot.tier}"
    return ValueTooLargeError(size, limit, f"{where} capacity")


def _key_list(keys: object, method: str) -> list[str]:
    """``keys`` as a list, or InvalidArgumentError for one str (not a key per character)
    or something that is not iterable."""
    if isinstance(keys, str | bytes):
        raise InvalidArgumentError(f"{method} takes an iterable of keys, not one "
                                   f"{type(keys).__qualname__}: {method}([key])")
    try:
        return list(cast(Iterable[str], keys))
    except TypeError:
        raise InvalidArgumentError(f"{method} takes an iterable of keys, got "
                                   f"{type(keys).__qualname__}") from None


_SAMPLE = 1023  # one in 1024 in-process hits takes the timed path (latency percentiles)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Memory:
    """Tiered memory. Open with :meth:`open` (an async context manager), then get/put.

    All methods are coroutines except :meth:`namespace`, :meth:`stats` and :meth:`cached`.
    A ``Memory`` belongs to the event loop it is used on.
    """

    __slots__ = ("_core", "_fast", "_now", "_prefix")

    def __init__(self, core: Engine, prefix: str = "") -> None:
        self._core = core
        self._prefix = prefix
        self._fast = core.fast
        self._now = core.now

    # -- opening and closing --------------------------------------------------------------------

    @classmethod
    def open(cls, config: MemoryConfig | None = None, *, clock: Clock | None = None,
             **options: Any) -> Memory:
        """Open the tiers that ``config``, the environment and ``options`` name.

        ``options`` are :class:`MemoryConfig` fields, e.g. ``tiers={Tier.SESSION:
        "memory://?max_items=1000"}``, ``path=``, ``default_tier=``, ``gpu_pools=``. Explicit
        arguments win over ``SOPHIA_MEMORY_*`` variables, which win over the TOML file named by
        ``SOPHIA_MEMORY_CONFIG``. Tiers nobody names take their embedded default.

        Raises :class:`ConfigError` for invalid configuration.
        """
        return cls(Engine(MemoryConfig.build(config, **options), clock or SystemClock()))

    @classmethod
    def from_env(cls, *, clock: Clock | None = None) -> Memory:
        """Open from the environment (and its TOML file) alone."""
        return cls.open(clock=clock)

    async def __aenter__(self) -> Memory:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Finish background work and release every backend. Idempotent."""
        await self._core.close()

    @property
    def config(self) -> MemoryConfig:
        return self._core.config

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The enabled tiers, fastest first."""
        return tuple(s.tier for s in self._core.slots)

    def namespace(self, name: str) -> Memory:
        """A view whose keys live in namespace ``name`` and cannot collide with other
        namespaces' (or the root's). Views share tiers, statistics and background work."""
        if (type(name) is not str or not name or _SEP in name
                or len(name.encode("utf-8", "replace")) > 128 or not _utf8(name)):
            raise InvalidKeyError(f"invalid namespace name {name!r}: a non-empty str of at "
                                  "most 128 bytes without U+001F")
        return Memory(self._core, f"{self._prefix}{name}{_SEP}")

    # -- keys and arguments ------------------------------------------------------------------------

    def _key(self, key: object) -> str:
        """The full key for a user key, or InvalidKeyError. A ``str`` subclass (a StrEnum
        member) is the plain string it holds, as a dict lookup would take it."""
        if type(key) is not str:
            if not isinstance(key, str):
                raise InvalidKeyError(f"keys must be str, got {type(key).__qualname__}")
            key = str.__str__(key)
        if not key:
            raise InvalidKeyError("keys must not be empty")
        if _SEP in key:
            raise InvalidKeyError("keys must not contain U+001F (the namespace separator)")
        if key.isascii():
            size = len(key)
        else:
            try:
                size = len(key.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidKeyError("keys must be valid UTF-8 (no lone surrogates)") \
                    from None
        limit = self._core.config.max_key_bytes
        if size > limit:
            raise InvalidKeyError(f"key is {size} bytes in UTF-8, over max_key_bytes={limit}")
        return self._prefix + key

    def _tier(self, tier: Tier | str | int | None) -> Tier:
        if tier is None:
            return self._core.config.default_tier
        return tier if type(tier) is Tier else tier_of(tier)

    def _expiry(self, ttl: float | timedelta | None, now: float) -> float | None:
        seconds = ttl_seconds(ttl)  # refuses bad TTLs before any tier sees them
        return None if seconds is None else now + seconds

    def _record(self, slot: TierHandle, value: Any, expires_at: float | None, now: float, *,
                pool: str | None = None, meta: Mapping[str, Any] | None = None) -> Record:
        core = self._core
        if slot.tier is Tier.GPU and not is_pool_value(value):
            check_pool_value(value)  # raises, naming the dtype when that is the problem
        if pool is not None and slot.tier is not Tier.GPU:
            raise InvalidArgumentError("pool= applies to Tier.GPU only")
        limit = core.config.max_value_bytes
        if isinstance(slot, InProcessTier):
            # Kept as the object, but checked against the codec: it may spill to a table.
            payload, size = value, core.codec.measure(value)
            if size <= limit and not slot.fits(size, pool):
                raise _too_large_for(slot, size, pool)
        else:
            payload = core.codec.encode(value)  # refuses unsupported values
            size = len(payload)
        if size > limit:
            raise ValueTooLargeError(size, limit)
        extra = dict(meta) if meta else {}
        if pool:
            extra["pool"] = pool
        return Record(payload, expires_at, True, size, next_version(), now, extra)

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None, *, version: int | None = None) -> Any:
        """The value under ``key`` from the fastest tier holding it, else ``default``.

        A hit below the top tier is promoted in the background (never delaying this call).
        A tier that fails reads as a miss. ``version=n`` reads version n of a workflow key
        (``Tier.WORKFLOW``) instead. Raises :class:`InvalidKeyError` for a bad key and
        :class:`DecodeError` for a stored payload that cannot be decoded safely.
        """
        if version is not None:
            entry = await self._version_entry(key, version)
            return default if entry is None else entry.value
        try:
            if _SEP not in key:
                full = self._prefix + key if self._prefix else key
                for resident, read, touch, st in self._fast:
                    if full in resident:
                        rec = read(full)
                        touch(full)
                        exp = rec.expires_at
                        if (exp is None or exp > self._now()) and st.hits & _SAMPLE:
                            st.hits += 1
                            return rec.payload
                        break
        except TypeError:
            pass  # not a str: the slow path raises the typed error
        found = await self._core.lookup(self._key(key))
        return default if found is None else found[1]

    async def get_entry(self, key: str, *, promote: bool = True) -> Entry | None:
        """The value with its metadata (tier found in, version, expiry, meta), or None.
        ``promote=False`` reads without copying the item into faster tiers."""
        found = await self._core.lookup(self._key(key), promote=promote)
        if found is None:
            return None
        rec, value, slot = found
        return Entry(key, value, slot.tier, rec.version, rec.expires_at, rec.created_at,
                     rec.home, dict(rec.extra))

    def _workflow(self) -> tuple[RemoteTier, Versioned]:
        slot = self._core.slot(Tier.WORKFLOW)
        if not isinstance(slot, RemoteTier) or slot.versioned is None:
            raise InvalidArgumentError(f"the WORKFLOW backend ({slot.backend.describe()}) "
                                       "keeps no versions")
        return slot, slot.versioned

    def _entry(self, key: str, rec: Record, slot: TierHandle) -> Entry:
        return Entry(key, self._core.decode(slot, rec), slot.tier, rec.version, rec.expires_at,
                     rec.created_at, rec.home, dict(rec.extra))

    async def _version_entry(self, key: str, version: int) -> Entry | None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(f"version must be an int >= 1, got {version!r}")
        full = self._key(key)
        core = self._core
        slot, versions = self._workflow()
        rec = await slot.call(versions.get_version, full, version)
        if rec is None or rec.expired(core.now()):
            return None
        return self._entry(key, rec, slot)

    async def history(self, key: str, limit: int | None = None) -> list[Entry]:
        """The kept versions of a workflow key, newest first (``Entry.version``,
        ``Entry.created_at``); expired versions are left out. Empty for an unknown key."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise InvalidArgumentError(f"limit must be an int >= 1, got {limit!r}")
        full = self._key(key)
        core = self._core
        slot, versions = self._workflow()
        now = core.now()
        records = await slot.call(versions.history, full, limit)
        return [self._entry(key, r, slot) for r in records if not r.expired(now)]

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys found (misses are left out). Each tier is asked once
        for all keys still missing."""
        prefix, limit = self._prefix, self._core.config.max_key_bytes
        keys = keys if type(keys) is list else _key_list(keys, "get_many")
        if _plain_keys(keys, limit):  # the common case, checked for all keys at once
            full = [prefix + k for k in keys] if prefix else keys
        else:
            full = [self._key(k) for k in keys]
        found = await self._core.lookup_many(full)
        if not prefix:
            return found
        n = len(prefix)
        return {k[n:]: v for k, v in found.items()}

    async def exists(self, key: str) -> bool:
        """True if ``key`` holds a live value in any tier (does not promote)."""
        return await self._core.lookup(self._key(key), promote=False) is not None

    # -- writes -----------------------------------------------------------------------------------

    @overload
    async def put(self, key: str, value: Any, *, tier: Literal[Tier.WORKFLOW],
                  ttl: float | timedelta | None = None, pool: str | None = None,
                  expected_version: int | None = None,
                  meta: Mapping[str, Any] | None = None, vector: Any = None) -> int: ...

    @overload
    async def put(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
                  ttl: float | timedelta | None = None, pool: str | None = None,
                  expected_version: int | None = None,
                  meta: Mapping[str, Any] | None = None,
                  vector: Any = None) -> int | None: ...

    async def put(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
                  ttl: float | timedelta | None = None, pool: str | None = None,
                  expected_version: int | None = None,
                  meta: Mapping[str, Any] | None = None,
                  vector: Any = None) -> int | None:
        """Store ``value`` under ``key`` in ``tier`` (default: the configured default tier).

        Returns once the home tier has the value (durably, for SQL tiers); copies in faster
        tiers are invalidated first, so a later ``get`` never returns an older value. Slower
        tiers are not touched. ``ttl`` is in seconds (or a timedelta) from now. ``pool``
        picks the L0 pool for ``Tier.GPU``.

        ``meta`` is a small dict of JSON-like metadata kept with the item and returned in
        ``Entry.meta``; tables with a column of the same name (the Cortex table's
        ``gpu_processed``, ``processing_time_ms``, ``gpu_memory_used_mb``) store it there.

        ``Tier.VECTOR`` needs ``vector=``: a 1-D array of real numbers of the tier's dimension
        (fixed by configuration or by the first vector), finite; :meth:`search` finds the item
        by it. Other tiers refuse ``vector=``.

        ``Tier.WORKFLOW`` keeps versions: the put appends one and returns its number;
        ``expected_version=n`` appends only if the newest version is n (0: the key must not
        exist), else raises :class:`VersionConflictError` with ``current_version``. The other
        tiers keep one item per key whose version (``Entry.version``) is a number each write
        changes (unique, not consecutive): there ``expected_version=n`` writes only if the
        item's version is still n (0: no live item), atomically as :meth:`compare_and_set`,
        and returns the new version; without it they return None.

        Raises :class:`InvalidKeyError`, :class:`InvalidArgumentError` (bad ttl or tier),
        :class:`UnsupportedValueError`, :class:`ValueTooLargeError` (nothing is stored), or
        :class:`TierUnavailableError` when the home tier is off or failing.
        """
        core = self._core
        home = core.local_homes.get(tier) if tier is None or type(tier) is Tier else None
        if (home is not None and pool is None and meta is None and vector is None
                and expected_version is None):
            # A live object to an in-process home (SESSION by default): the put without the
            # work its other arguments need, done at once unless the key is busy.
            if (type(key) is str and key and key.isascii()
                    and len(key) <= core.config.max_key_bytes and _SEP not in key):
                full = self._prefix + key if self._prefix else key
            else:
                full = self._key(key)
            now = self._now()
            size = core.codec.measure(value)
            if size > core.config.max_value_bytes:
                raise ValueTooLargeError(size, core.config.max_value_bytes)
            if not home.fits(size):
                raise _too_large_for(home, size, None)
            rec = Record(value, None if ttl is None else self._expiry(ttl, now), True, size,
                         next_version(), now, {})
            if not core.writer.put_nowait(full, rec, home):
                return await core.write({full: rec}, home)
            if core.purger is None and core.purge_wanted:
                core.start_purger()
            spiller = core.spiller
            if spiller.buffer and spiller.over():
                await spiller.wait_for_room()  # backpressure, holding no key
            return None
        slot = home if home is not None else core.slot(self._tier(tier))
        full = self._key(key)
        if meta is not None:
            meta = check_meta(meta)  # every tier can keep it; columns get their types
        if expected_version is not None:
            if (isinstance(expected_version, bool) or not isinstance(expected_version, int)
                    or expected_version < 0):
                raise InvalidArgumentError(f"expected_version must be an int >= 0, got "
                                           f"{expected_version!r}")
            if not isinstance(slot, RemoteTier) or slot.versioned is None:
                self._conditional(key, slot.tier)  # refuses a tier that cannot compare
        if vector is not None or _searchable(slot) is not None:
            meta = self._with_vector(slot, vector, meta)
        now = core.now()
        rec = self._record(slot, value, self._expiry(ttl, now), now, pool=pool, meta=meta)
        if expected_version is not None and (not isinstance(slot, RemoteTier)
                                             or slot.versioned is None):
            return await core.update(full, slot, _expecting(key, expected_version, rec))
        return await core.write({full: rec}, slot, expected_version)

    @staticmethod
    def _with_vector(slot: TierHandle, vector: Any, meta: Mapping[str, Any] | None,
                     ) -> dict[str, Any]:
        searchable = _searchable(slot)
        if searchable is None:
            raise InvalidArgumentError(f"vector= applies to Tier.VECTOR, not {slot.tier}")
        if vector is None:
            raise InvalidArgumentError("a put to Tier.VECTOR needs vector=")
        arr = searchable.prepare(vector)
        return {**(meta or {}), "embedding": arr.tobytes(), "dim": int(arr.size)}

    async def put_many(self, items: Mapping[str, Any], *, tier: Tier | str | int | None = None,
                       ttl: float | timedelta | None = None,
                       vectors: Mapping[str, Any] | None = None) -> None:
        """Store several values in one tier; all are validated before any is stored, and SQL
        tiers write them in one transaction. ``Tier.VECTOR`` needs ``vectors={key: vector}``
        for every key."""
        if not isinstance(items, Mapping):
            raise InvalidArgumentError(f"put_many takes a mapping of keys to values, got "
                                       f"{type(items).__qualname__}")
        core = self._core
        slot = core.slot(self._tier(tier))
        now = core.now()
        expires_at = self._expiry(ttl, now)
        if vectors is not None or _searchable(slot) is not None:
            vectors = vectors or {}
            missing = [k for k in items if k not in vectors]
            if missing:
                raise InvalidArgumentError(f"no vector for {len(missing)} key(s), e.g. "
                                           f"{missing[0]!r}")
            records = {self._key(k): self._record(
                slot, v, expires_at, now, meta=self._with_vector(slot, vectors[k], None))
                for k, v in items.items()}
        else:
            records = {self._key(k): self._record(slot, v, expires_at, now)
                       for k, v in items.items()}
        if records:
            await core.write(records, slot)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier; True if it held a live value anywhere."""
        return await self._core.delete([self._key(key)]) > 0

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove several keys from every tier; how many held a live value."""
        full = list(dict.fromkeys(self._key(k) for k in _key_list(keys, "delete_many")))
        return await self._core.delete(full) if full else 0

    # -- the cache staples: atomic read-modify-write of one item ------------------------------

    def _conditional(self, key: str, tier: Tier | str | int | None,
                     ) -> tuple[str, TierHandle]:
        """The full key and the tier handle a conditional write goes to, or the typed error
        for a tier that cannot hold one."""
        full = self._key(key)
        slot = self._core.slot(self._tier(tier))
        if isinstance(slot, RemoteTier):
            if slot.searchable is not None:
                raise InvalidArgumentError(f"{slot.tier} items carry a vector: they are written "
                                           "by put(..., vector=) alone, not conditionally")
            if slot.versioned is None and slot.conditional is None:
                raise InvalidArgumentError(
                    f"{slot.tier} ({slot.backend.describe()}) cannot write conditionally "
                    "(add, incr, decr, compare_and_set, touch)")
        return full, slot

    async def add(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
                  ttl: float | timedelta | None = None) -> bool:
        """Store ``value`` in ``tier`` only if a read from ``tier`` down finds no live item
        under ``key``; whether it did.

        Atomic (set-if-absent), also against other processes sharing the tier. ``tier`` and
        ``ttl`` as for :meth:`put`; an expired item counts as absent. Like every staple, it
        works on the item a :meth:`get` finds from ``tier`` down: the tier's own, else one in
        transit or spilled below it, else a slower tier's."""
        full, slot = self._conditional(key, tier)
        seconds = ttl_seconds(ttl)

        def change(rec: Record | None, current: Any, now: float) -> tuple[Record | None, bool]:
            if rec is not None:
                return None, False
            return self._record(slot, value, _after(now, seconds), now), True

        return await self._core.update(full, slot, change)

    async def incr(self, key: str, delta: int = 1, *, tier: Tier | str | int | None = None,
                   ttl: float | timedelta | None = None) -> int:
        """Add ``delta`` to the int under ``key`` in ``tier`` atomically; the new value.

        A missing (or expired) item counts as 0 and is created with ``ttl``; an existing one
        (as :meth:`add` finds it) keeps its expiry and metadata. Concurrent increments, from
        this process or others sharing the tier, are never lost (Redis, SQLite and Snowflake
        check and write in one atomic step). Raises :class:`InvalidArgumentError` when
        ``delta`` or the stored value is not an int."""
        if type(delta) is not int:
            raise InvalidArgumentError(f"delta must be an int, got {type(delta).__name__}")
        full, slot = self._conditional(key, tier)
        seconds = ttl_seconds(ttl)

        def change(rec: Record | None, current: Any, now: float) -> tuple[Record | None, int]:
            if rec is None:
                total, expires_at, meta = delta, _after(now, seconds), None
            else:
                if type(current) is not int:
                    raise InvalidArgumentError(f"{key!r} holds a {type(current).__name__}, "
                                               "not an int: incr and decr need an int")
                total, expires_at, meta = current + delta, rec.expires_at, rec.extra
            new = self._record(slot, total, expires_at, now)
            if meta:
                new.extra = dict(meta)
            return new, total

        return await self._core.update(full, slot, change)

    async def decr(self, key: str, delta: int = 1, *, tier: Tier | str | int | None = None,
                   ttl: float | timedelta | None = None) -> int:
        """:meth:`incr` by ``-delta``."""
        if type(delta) is not int:
            raise InvalidArgumentError(f"delta must be an int, got {type(delta).__name__}")
        return await self.incr(key, -delta, tier=tier, ttl=ttl)

    async def compare_and_set(self, key: str, expected: Any, value: Any, *,
                              tier: Tier | str | int | None = None,
                              ttl: float | timedelta | None = None) -> bool:
        """Replace the value under ``key`` in ``tier`` with ``value`` only if it equals
        ``expected`` now; whether it did (optimistic concurrency: read, compute, then
        compare-and-set, and read again on False).

        Atomic, also against other processes sharing the tier: the store writes only over
        exactly the item compared. Equal means structurally equal: the same type (any dict
        for a dict), lists, tuples and dicts element by element, arrays by dtype, shape and
        elements, NaN equal to NaN. A missing item never matches (use :meth:`add`). ``ttl``
        is the new item's, as for :meth:`put`; on ``Tier.GPU`` the item keeps its pool."""
        full, slot = self._conditional(key, tier)
        seconds = ttl_seconds(ttl)

        def change(rec: Record | None, current: Any, now: float) -> tuple[Record | None, bool]:
            if rec is None or not _same(current, expected):
                return None, False
            pool = rec.extra.get("pool") if slot.tier is Tier.GPU else None
            return self._record(slot, value, _after(now, seconds), now, pool=pool), True

        return await self._core.update(full, slot, change)

    async def touch(self, key: str, ttl: float | timedelta | None, *,
                    tier: Tier | str | int | None = None) -> bool:
        """Give the item under ``key`` in ``tier`` a new expiry, ``ttl`` from now (None: it
        never expires), keeping its value and metadata; whether a live item was there.
        On ``Tier.WORKFLOW`` this appends a version (every write there does)."""
        full, slot = self._conditional(key, tier)
        seconds = ttl_seconds(ttl)
        local = isinstance(slot, InProcessTier)

        def change(rec: Record | None, current: Any, now: float) -> tuple[Record | None, bool]:
            if rec is None:
                return None, False
            if local:
                new = self._record(slot, current, _after(now, seconds), now)
            else:  # the stored payload as it is: nothing to encode again
                new = Record(rec.payload, _after(now, seconds), True, rec.size,
                             next_version(), now, {})
            new.extra = dict(rec.extra)
            return new, True

        return await self._core.update(full, slot, change)

    async def ttl(self, key: str, *, tier: Tier | str | int | None = None) -> float | None:
        """Seconds until the item under ``key`` expires: ``math.inf`` when it never does,
        None when there is no live item. Without ``tier``, the item a :meth:`get` finds
        (not promoted); with it, the item that tier's staples work on (see :meth:`add`)."""
        full = self._key(key)
        core = self._core
        if tier is None:
            found = await core.lookup(full, promote=False)
            rec = None if found is None else found[0]
        else:
            rec, _ = await core.read_in(full, core.slot(self._tier(tier)))
        if rec is None:
            return None
        if rec.expires_at is None:
            return math.inf
        return max(0.0, rec.expires_at - core.now())

    async def clear(self, *, tier: Tier | str | int | None = None,
                    namespace: str | None = None) -> int:
        """Remove every item of this memory (a namespace view: of that namespace, nested
        namespaces included), or of its namespace ``namespace``; how many keys held one.

        Without ``tier``, from every tier, as :meth:`delete` does. With ``tier``, from that
        tier only (a bounded in-process tier: with its items in transit or spilled below),
        with the copies promotion made of them in faster tiers; what other tiers hold as
        their own stays (a slower tier's item of the same key reads again). A tier that fails
        is marked stale, the rest is cleared, then its error is raised."""
        view = self if namespace is None else self.namespace(namespace)
        core = self._core
        slot = None if tier is None else core.slot(self._tier(tier))
        return await core.clear(view._prefix, slot)

    # -- similarity search ---------------------------------------------------------------------

    async def search(self, vector: Any, k: int = 10, *, metric: str | None = None,
                     min_score: float | None = None) -> list[Hit]:
        """The ``k`` items of ``Tier.VECTOR`` most similar to ``vector``, best first.

        Exact (recall 1.0) cosine or inner-product (``metric="ip"``) top-k over the items of
        this namespace only; ``min_score`` drops weaker hits. Consistent with every put and
        delete that has returned. Raises :class:`InvalidArgumentError` for a vector of the
        wrong dimension, NaN/inf or non-numeric input.
        """
        return (await self.search_batch([vector], k, metric=metric, min_score=min_score))[0]

    async def search_batch(self, vectors: Any, k: int = 10, *, metric: str | None = None,
                           min_score: float | None = None) -> list[list[Hit]]:
        """:meth:`search` for many query vectors at once (one matrix product)."""
        check_search(k, metric, min_score)
        core = self._core
        slot = core.slot(Tier.VECTOR)
        searchable = _searchable(slot)
        if searchable is None or not isinstance(slot, RemoteTier):
            raise InvalidArgumentError(f"the VECTOR backend ({slot.backend.describe()}) "
                                       "cannot search")
        queries = [searchable.prepare(v) for v in vectors]
        if not queries:
            return []
        t0 = time.perf_counter()
        n = len(self._prefix)
        want = k
        while True:
            found = await slot.call(searchable.search, queries, want, metric, self._prefix,
                                    min_score)
            keys = list({key for hits in found for key, _ in hits})
            now = core.now()
            records = await slot.get_many(keys, now) if keys else {}
            out = []
            short = False  # a row that lost hits to expiry, with more items to look at
            for hits in found:
                row = []
                for key, score in hits:
                    rec = records.get(key)
                    if rec is not None and not rec.expired(now):
                        row.append(Hit(key[n:], score, core.decode(slot, rec)))
                short = short or (len(row) < k and len(hits) == want)
                out.append(row[:k])
            if not short:
                break
            # Expired items not purged yet took places in the top: look further.
            want *= 2
        slot.stats.latencies.append(time.perf_counter() - t0)
        return out

    # -- loading ----------------------------------------------------------------------------------

    async def get_or_load(self, key: str, loader: Callable[[], Awaitable[Any] | Any], *,
                          tier: Tier | str | int | None = None,
                          ttl: float | timedelta | None = None,
                          meta: Mapping[str, Any] | None = None) -> Any:
        """The cached value, or ``loader()``'s result stored with ``tier``/``ttl``.

        The stored item's metadata records the loader's duration as ``processing_time_ms``
        (plus ``meta``).

        Single-flight: while one caller loads a key, concurrent callers for the same key wait
        for that result instead of calling the loader. If the loader raises, every waiter gets
        the exception and nothing is cached. A bad ``tier``, ``ttl`` or ``meta`` raises
        :class:`InvalidArgumentError` before the loader is called.
        """
        value = await self.get(key, _MISSING)  # hits take the fast path
        if value is not _MISSING:
            return value
        full = self._key(key)
        core = self._core
        # Bad arguments are refused before the (costly) loader runs, not after.
        self._tier(tier)
        ttl_seconds(ttl)
        if meta is not None:
            check_meta(meta)

        async def load() -> Any:
            found = await core.lookup(full)
            if found is not None:
                return found[1]
            t0 = time.perf_counter()
            value = loader()
            if inspect.isawaitable(value):
                value = await value
            took = {"processing_time_ms": round((time.perf_counter() - t0) * 1000, 3)}
            await self.put(key, value, tier=tier, ttl=ttl,
                           meta={**took, **meta} if meta else took)
            return value

        return await core.flights.run(full, load)

    def cached(self, *, tier: Tier | str | int | None = None,
               ttl: float | timedelta | None = None,
               key: Callable[..., str] | None = None,
               ) -> Callable[[Callable[P, Awaitable[R]]], Cached[P, R]]:
        """Decorator memoising an async function in this memory (single-flight per key).

        The key is the function's qualified name plus a stable hash of its bound arguments
        (JSON-like arguments only), or ``key(*args, **kwargs)`` when given. The decorated
        function also has ``.key(*args, **kwargs)`` (the key a call uses) and
        ``await .invalidate(*args, **kwargs)`` (forget that call's result; True if one was
        held). A bad ``tier`` or ``ttl`` raises :class:`InvalidArgumentError` here.
        """
        self._tier(tier)  # bad arguments are refused here, not at the first call
        ttl_seconds(ttl)

        def decorate(fn: Callable[P, Awaitable[R]]) -> Cached[P, R]:
            return Cached(self, fn, tier=tier, ttl=ttl, key=key)
        return decorate

    # -- maintenance ------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait for background promotions and spills queued so far (tests, shutdown)."""
        await self._core.flush()

    async def purge_expired(self) -> int:
        """Remove expired items from tiers that store them; the number removed."""
        return await self._core.purge_expired()

    async def keys(self, tier: Tier | str | int) -> list[str]:
        """The live keys of this namespace stored in one tier (for inspection and tests)."""
        core = self._core
        slot = core.slot(tier_of(tier))
        if isinstance(slot, RemoteTier):
            full = await slot.call(slot.backend.keys, self._prefix, core.now())
        else:
            full = await slot.keys(self._prefix, core.now())
        n = len(self._prefix)
        return sorted(k[n:] for k in full if _SEP not in k[n:])

    def stats(self) -> dict[str, Any]:
        """Per-tier counters, latency percentiles against the tier's budget, breaker state and
        backend figures, plus the promotion queue and spill buffer.

        ``p50_ms``/``p95_ms`` (and ``within_budget``) time the tier's reads, one in a sample
        on the in-process hot path; a tier that is only written to has None there. ``hits``
        and ``puts`` count every call; the ``misses`` of an in-process tier in front of the
        one that hit (GPU before SESSION) are counted on the sampled reads only."""
        core = self._core
        tiers: dict[str, Any] = {}
        for slot in core.slots:
            st = slot.stats
            pct = st.percentiles()
            p95 = pct["p95_ms"]
            tiers[slot.tier.name] = {
                "backend": slot.backend.describe(), "hits": st.hits, "misses": st.misses,
                "puts": st.puts, "deletes": st.deletes, "errors": st.errors,
                "promotions": st.promotions, "spills": st.spills,
                "spills_dropped": st.spills_dropped, **pct,
                "budget_ms": slot.tier.budget_ms,
                "within_budget": None if p95 is None else p95 <= slot.tier.budget_ms,
                "breaker": slot.breaker.state if isinstance(slot, RemoteTier) else "closed",
                "write_breaker": slot.write_breaker.state if isinstance(slot, RemoteTier)
                else "closed", "refused": st.refused,
                **_safe_stats(slot),
            }
        for tier, why in core.unavailable.items():
            tiers[tier.name] = {"enabled": False, "reason": why}
        engine = core.stats()
        return {"tiers": tiers, **engine,
                "promotions_queued": engine["promotion"]["queued"],
                "promotions_dropped": engine["promotion"]["dropped"],
                "spilling": engine["spill"]["items"], "taken_at": time.time()}


def _expecting(key: str, expected: int, rec: Record,
               ) -> Callable[[Record | None, Any, float], tuple[Record | None, int]]:
    """The change of a put with ``expected_version`` to a tier that keeps no versions:
    ``rec`` replaces the item only if the item's version is ``expected`` (0: no item)."""
    def change(current: Record | None, value: Any, now: float) -> tuple[Record | None, int]:
        found = 0 if current is None else current.version
        if found != expected:
            raise VersionConflictError(key, expected, found)
        return rec, rec.version
    return change


def _after(now: float, seconds: float | None) -> float | None:
    return None if seconds is None else now + seconds


def _same(current: Any, expected: Any, depth: int = 0) -> bool:
    """Whether a stored value equals ``expected`` for :meth:`Memory.compare_and_set`: the same
    type (any dict for a dict) and equal, compared structurally through dicts, lists and
    tuples; arrays (NumPy,
    torch, CuPy) by dtype, shape and elements; NaN equals NaN (a value read back must match
    itself)."""
    if current is expected:
        return True
    if depth > 64:
        return False
    if isinstance(current, dict) and isinstance(expected, dict):  # OrderedDict state_dicts
        return current.keys() == expected.keys() and all(
            _same(v, expected[k], depth + 1) for k, v in current.items())
    cls = type(current)
    if cls is not type(expected):
        return False
    if cls is float:
        return current == expected or (math.isnan(current) and math.isnan(expected))
    if cls is list or cls is tuple:
        return len(current) == len(expected) and all(
            _same(a, b, depth + 1) for a, b in zip(current, expected, strict=True))
    kind = array_kind(current)
    if kind is not None and kind != "npscalar":
        if current.dtype != expected.dtype or tuple(current.shape) != tuple(expected.shape):
            return False
        if kind == "torch":
            return bool(current.to("cpu").equal(expected.to("cpu")))
        xp = np if kind == "numpy" else sys.modules["cupy"]
        try:
            return bool(xp.array_equal(current, expected, equal_nan=True))
        except TypeError:  # a dtype without NaN (ints, bools, strings)
            return bool(xp.array_equal(current, expected))
    try:
        return bool(current == expected)
    except Exception:  # an == that does not give one truth value
        return False


def _plain_keys(keys: list[Any], limit: int) -> bool:
    """Whether every key is a non-empty ASCII ``str`` (not a subclass) of at most ``limit``
    bytes without the separator: what :meth:`Memory._key` accepts, checked by a few C-level
    passes over all keys instead of a Python loop (False: check them one by one)."""
    if not keys or set(map(type, keys)) != {str}:
        return not keys
    joined = "".join(keys)
    return (joined.isascii() and _SEP not in joined and all(keys)
            and (len(joined) <= limit or max(map(len, keys)) <= limit))


def _searchable(slot: TierHandle) -> Searchable | None:
    return slot.searchable if isinstance(slot, RemoteTier) else None


def _safe_stats(slot: TierHandle) -> dict[str, Any]:
    try:
        return {"backend_stats": slot.backend.stats()}
    except Exception as exc:  # stats must never raise
        return {"backend_stats": {"error": str(exc)}}


class Cached(Generic[P, R]):
    """An async function memoised by :meth:`Memory.cached`: call it as the function; ``key``
    and ``invalidate`` take the same arguments. On a method it binds on access; the instance
    is not part of the key (pass ``key=`` to make it so)."""

    def __init__(self, mem: Memory, fn: Callable[P, Awaitable[R]], *,
                 tier: Tier | str | int | None, ttl: float | timedelta | None,
                 key: Callable[..., str] | None, bound: Any = _MISSING) -> None:
        self._mem = mem
        self._fn = fn
        self._tier = tier
        self._ttl = ttl
        self._key_fn = key
        self._bound = bound  # the instance, when this is a method read from one
        self._sig = inspect.signature(fn)
        self._name = f"{fn.__module__}.{fn.__qualname__}"
        functools.update_wrapper(self, fn)

    def _args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if self._bound is _MISSING else (self._bound, *args)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The memory key a call with these arguments reads and writes."""
        full = self._args(args)
        if self._key_fn is not None:
            return self._key_fn(*full, **kwargs)
        bound = self._sig.bind(*full, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if self._bound is not _MISSING:
            arguments.pop(next(iter(self._sig.parameters)))  # the instance is not hashed
        return f"{self._name}:{canonical_hash(arguments)[:40]}"

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        full = self._args(args)
        return cast(R, await self._mem.get_or_load(
            self.key(*args, **kwargs), lambda: self._fn(*full, **kwargs),
            tier=self._tier, ttl=self._ttl))

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Forget the result cached for these arguments; True if one was held."""
        return await self._mem.delete(self.key(*args, **kwargs))

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return Cached(self._mem, self._fn, tier=self._tier, ttl=self._ttl, key=self._key_fn,
                      bound=instance)
