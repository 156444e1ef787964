"""The engine behind :class:`~sophia_memory.Memory`: tier slots, the read and write paths,
promotion, spill and background work. Everything here works on *full* keys (namespace
prefix included); :mod:`sophia_memory.memory` validates user input and builds those keys.

Consistency rests on three things:

* **Striped key locks.** Every write to a key (put, delete, spill, promotion) holds the
  ``asyncio.Lock`` of the key's stripe, so writes to one key are applied in order.
* **Write generations.** A writer bumps its stripe's generation to odd before it changes
  anything and back to even afterwards. A read notes the generation before it looks; the
  promotion it schedules installs a copy only if the generation is unchanged (and even) once
  it holds the lock. So promotion never installs a value older than a concurrent put's.
* **The spill buffer.** An item evicted from an in-process tier on its way to a slower tier
  stays readable in the buffer until the slower tier has it, so nothing is invisible in
  transit; a later put or delete of the key supersedes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from ._support import CircuitBreaker, Deadlines, TierStats
from .backends import (
    Backend,
    BarePayloads,
    Evicting,
    Invalidating,
    ObjectStore,
    Purging,
    Remote,
    Searchable,
    Versioned,
    open_backend,
)
from .backends.hostpool import is_pool_value
from .clock import Clock
from .codecs import Codec, codec_from_name
from .config import MemoryConfig
from .errors import (
    BackendError,
    ConfigError,
    SophiaMemoryError,
    TierUnavailableError,
    ValueTooLargeError,
)
from .tiers import Record, Tier

log = logging.getLogger("sophia_memory")

STRIPES = 4096
MASK = STRIPES - 1
_ARRAY_HITS_MAX = 10_000
_SPILLED_MAX = 1_000_000


_Promotion = tuple[str, Any, Record, "Slot", list["Slot"], int]


def close_now(backend: Backend) -> None:
    """Run ``backend.close()`` to completion without an event loop (for failed opens); the
    built-in backends close without suspending."""
    coro = backend.close()
    try:
        coro.send(None)
    except StopIteration:
        return
    except Exception as exc:
        log.debug("closing %s failed: %s", backend.describe(), exc)
    coro.close()


class Slot:
    """One enabled tier: its backend, abilities, breaker and counters."""

    __slots__ = ("backend", "bare", "breaker", "discard", "draining", "fits", "index", "obj",
                 "peek", "pop_nowait", "promotable", "put_nowait", "searchable", "stale", "stats",
                 "tier", "timeout", "versioned")

    def __init__(self, tier: Tier, backend: Backend, index: int, breaker: CircuitBreaker,
                 timeout: float | None) -> None:
        self.tier = tier
        self.backend = backend
        self.index = index
        self.obj = isinstance(backend, ObjectStore)
        self.versioned = isinstance(backend, Versioned)
        # Abilities are checked once here: isinstance against a Protocol is slow.
        self.searchable = isinstance(backend, Searchable)
        self.bare = not self.obj and isinstance(backend, BarePayloads)
        b: Any = backend
        self.peek = b.peek if self.obj else None
        self.put_nowait = b.put_nowait if self.obj else None
        self.pop_nowait = b.pop_nowait if self.obj else None
        self.discard = b.discard if self.obj else None
        self.fits = b.fits if self.obj else None
        self.breaker = breaker
        self.timeout = timeout
        self.stats = TierStats()
        #: Keys whose copies here could not be invalidated while the tier failed: reads skip
        #: them here, and their deletion is replayed once the tier answers again.
        self.stale: set[str] = set()
        self.draining = False
        #: Whether a hit here can be promoted: promotion is on, this tier is not in-process,
        #: and a tier the policy promotes into (GPU, SESSION) is above it. Set by Core.
        self.promotable = False


class _Writing:
    """Holds the locks of the keys' stripes (in order, so writers never deadlock) and marks a
    write in progress: the stripes' generations are odd from entry until exit."""

    __slots__ = ("core", "stripes")

    def __init__(self, core: Core, keys: Iterable[str]) -> None:
        self.core = core
        if isinstance(keys, (dict, list)) and len(keys) == 1:  # the common single put
            self.stripes = [hash(next(iter(keys))) & MASK]
        else:
            self.stripes = sorted({hash(k) & MASK for k in keys})

    async def __aenter__(self) -> None:
        locks, taken = self.core.locks, 0
        try:
            for s in self.stripes:
                await locks[s].acquire()
                taken += 1
        except BaseException:
            for s in self.stripes[:taken]:
                locks[s].release()
            raise
        gens = self.core.gens
        for s in self.stripes:
            gens[s] += 1

    async def __aexit__(self, *exc: object) -> None:
        gens, locks = self.core.gens, self.core.locks
        for s in self.stripes:
            gens[s] += 1
            locks[s].release()


class Core:
    """State shared by a memory and all its namespace views."""

    def __init__(self, config: MemoryConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.now = clock.time
        self.codec: Codec = codec_from_name(config.codec, config.signing_key)
        self.closed = False
        self.slots: list[Slot] = []
        self.by_tier: dict[Tier, Slot] = {}
        self.unavailable: dict[Tier, str] = {}
        try:
            self._open_backends()
        except BaseException:
            for slot in self.slots:
                close_now(slot.backend)
            raise
        self.fast = tuple((s.peek, s.stats) for s in self.slots if s.obj)
        self.locks = [asyncio.Lock() for _ in range(STRIPES)]
        self.gens = [0] * STRIPES
        self.spilling: dict[str, tuple[Any, Record, Slot]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.promo_queue: asyncio.Queue[_Promotion] | None = None
        self.promoter: asyncio.Task[None] | None = None
        self.promotions_dropped = 0
        self.array_hits: OrderedDict[str, int] = OrderedDict()
        self.inflight: dict[str, asyncio.Future[Any]] = {}
        # key -> indexes of the slots its evicted home items spilled into (bounded, oldest
        # forgotten first). A put with a TTL to an in-process tier removes those spilled
        # ancestors, or they would reappear when the new value expires.
        self.spilled: OrderedDict[str, set[int]] = OrderedDict()
        self.purger: asyncio.Task[None] | None = None
        timeouts = [s.timeout for s in self.slots if s.timeout]
        self.deadlines = Deadlines(min(timeouts, default=1.0) / 4)
        self.purge_wanted = self.config.purge_interval > 0 and any(
            isinstance(s.backend, Purging) and not s.obj for s in self.slots)

    # -- set-up -----------------------------------------------------------------------------

    def _open_backends(self) -> None:
        cfg = self.config
        for tier in Tier:
            url = cfg.url_for(tier)
            if url is None:
                self.unavailable[tier] = "switched off"
                continue
            backend = open_backend(url, tier, cfg)
            timeout = backend.call_timeout if isinstance(backend, Remote) else None
            breaker = CircuitBreaker(cfg.breaker_threshold, cfg.breaker_reset, self.now)
            slot = Slot(tier, backend, len(self.slots), breaker, timeout)
            if slot.obj and any(not s.obj for s in self.slots):
                raise ConfigError(f"{tier}: an in-process backend cannot sit below a slower one")
            self.slots.append(slot)
            self.by_tier[tier] = slot
            if isinstance(backend, Evicting):
                backend.set_eviction_listener(self._evict_listener(slot))
            if isinstance(backend, Invalidating) and any(s.obj for s in self.slots[:-1]):
                backend.set_invalidation_listener(self._remote_write_listener(slot))
        if not self.slots:
            raise ConfigError("every tier is switched off")
        for slot in self.slots:
            slot.promotable = cfg.promote and not slot.obj and any(
                s.tier in (Tier.GPU, Tier.SESSION) for s in self.slots[: slot.index])

    def _remote_write_listener(self, slot: Slot) -> Any:
        """For a tier shared with other processes: drop this process's in-process copies of
        the keys others wrote (None: of every key). Each key's stripe generation moves on
        (by two, keeping a writer's parity), so a promotion of a value read before the
        report is not installed."""
        above = [s for s in self.slots[: slot.index] if s.obj]

        def on_remote_writes(keys: list[str] | None) -> None:
            gens = self.gens
            if keys is None:
                for i in range(STRIPES):
                    gens[i] += 2
                if not self.closed:
                    self.spawn(self._drop_all_copies(above))
                return
            for k in keys:
                gens[hash(k) & MASK] += 2
                for s in above:
                    rec = s.peek(k)  # type: ignore[misc]
                    if rec is not None and not rec.home:
                        s.pop_nowait(k)  # type: ignore[misc]
        return on_remote_writes

    async def _drop_all_copies(self, slots: list[Slot]) -> None:
        now = self.now()
        for s in slots:
            for k in await s.backend.keys("", now):
                rec = s.peek(k)  # type: ignore[misc]
                if rec is not None and not rec.home:
                    s.pop_nowait(k)  # type: ignore[misc]

    def slot(self, tier: Tier) -> Slot:
        slot = self.by_tier.get(tier)
        if slot is None:
            raise TierUnavailableError(tier, self.unavailable.get(tier, "switched off"))
        return slot

    def check_open(self) -> None:
        if self.closed:
            raise SophiaMemoryError("this Memory is closed")

    # -- guarded backend calls ----------------------------------------------------------------

    async def call(self, slot: Slot, method: str, *args: Any) -> Any:
        """Call a backend method through the tier's breaker (and timeout, for remote tiers);
        failures come out as TierUnavailableError."""
        breaker = slot.breaker
        if not breaker.allow():
            raise TierUnavailableError(slot.tier, "circuit breaker open after repeated failures")
        task = self.deadlines.enter(slot.timeout) if slot.timeout else None
        try:
            result = await getattr(slot.backend, method)(*args)
        except asyncio.CancelledError as exc:
            if not self.deadlines.expired(task):
                raise
            breaker.failure()
            slot.stats.errors += 1
            raise TierUnavailableError(slot.tier, f"timed out after {slot.timeout}s") from exc
        except (BackendError, TierUnavailableError, OSError) as exc:
            breaker.failure()
            slot.stats.errors += 1
            raise TierUnavailableError(slot.tier, str(exc)) from exc
        finally:
            self.deadlines.leave(task)
        breaker.success()
        if slot.stale and not slot.draining:
            slot.draining = True
            self.spawn(self._drain(slot))
        return result

    async def _drain(self, slot: Slot) -> None:
        """Replay the invalidations ``slot`` missed while it was failing."""
        try:
            for key in list(slot.stale):
                async with self.locks[hash(key) & MASK]:
                    if key not in slot.stale:
                        continue
                    try:
                        await self.call(slot, "delete", key, self.now())
                    except TierUnavailableError:
                        return
                    slot.stale.discard(key)
        finally:
            slot.draining = False

    # -- payload conversion ---------------------------------------------------------------------

    def payload_for(self, slot: Slot, value: Any, src: Record | None = None,
                    src_obj: bool = True) -> tuple[Any, int]:
        """The payload and size to store ``value`` in ``slot``."""
        if slot.obj:
            size = src.size if src is not None else self.codec.measure(value)
            return value, size
        if src is not None and not src_obj:
            return src.payload, src.size
        data = self.codec.encode(value)
        return data, len(data)

    def decode(self, slot: Slot, rec: Record) -> Any:
        return rec.payload if slot.obj else self.codec.decode(rec.payload)

    # -- read path -----------------------------------------------------------------------------

    async def lookup(self, key: str, promote: bool = True) -> tuple[Record, Any, Slot] | None:
        """Search every tier in order; the first live hit with its value and slot."""
        self.check_open()
        gen0 = self.gens[hash(key) & MASK]
        now = self.now()
        fast_done = False
        for slot in self.slots:
            st = slot.stats
            t0 = time.perf_counter()
            if slot.obj:
                rec = slot.peek(key)  # type: ignore[misc]
            else:
                if not fast_done:
                    fast_done = True
                    pending = self.spilling.get(key)
                    if pending is not None and not pending[1].expired(now):
                        return pending[1], pending[0], pending[2]
                if slot.stale and key in slot.stale:
                    st.misses += 1
                    continue  # may hold a copy older than a put it missed
                try:
                    rec = await self.call(slot, "get", key, now)
                except TierUnavailableError:
                    continue  # a failing tier reads as a miss
            if rec is None or rec.expired(now):
                if rec is not None and slot.obj:
                    slot.discard(key, rec)  # type: ignore[misc]
                st.misses += 1
                st.latencies.append(time.perf_counter() - t0)
                continue
            value = self.decode(slot, rec)
            st.hits += 1
            st.latencies.append(time.perf_counter() - t0)
            if promote and slot.promotable and not gen0 & 1:
                self.schedule_promotion(key, value, rec, slot, gen0)
            return rec, value, slot
        if not fast_done:
            pending = self.spilling.get(key)
            if pending is not None and not pending[1].expired(now):
                return pending[1], pending[0], pending[2]
        return None

    async def lookup_many(self, keys: list[str]) -> dict[str, Any]:
        """Values for the keys found, searching each tier once for all remaining keys."""
        self.check_open()
        now = self.now()
        gens = {k: self.gens[hash(k) & MASK] for k in keys} \
            if any(s.promotable for s in self.slots) else {}
        found: dict[str, Any] = {}
        remaining = list(dict.fromkeys(keys))
        fast_done = False
        last = self.slots[-1] if self.slots else None
        for slot in self.slots:
            if not remaining:
                break
            if not slot.obj and not fast_done:
                fast_done = True
                remaining = self._from_spill_buffer(remaining, found, now)
            t0 = time.perf_counter()
            promote = slot.promotable
            # Bare payloads where nothing but the values is needed: no records to build.
            bare = slot.bare and not promote
            if slot.obj:
                hits = {k: r for k in remaining if (r := slot.peek(k)) is not None}  # type: ignore[misc]
            else:
                wanted = [k for k in remaining if k not in slot.stale] if slot.stale \
                    else remaining
                try:
                    hits = await self.call(slot, "get_payloads" if bare else "get_many",
                                           wanted, now) if wanted else {}
                except TierUnavailableError:
                    continue
            slot.stats.latencies.append(time.perf_counter() - t0)
            decode = None if slot.obj else self.codec.decode
            if bare:
                for k, payload in hits.items():
                    found[k] = decode(payload)  # type: ignore[misc]
                live = len(hits)
            else:
                live = 0
                for k, rec in hits.items():  # the per-key loop of every batch read: kept tight
                    exp = rec.expires_at
                    if exp is not None and exp <= now:
                        continue
                    value = rec.payload if decode is None else decode(rec.payload)
                    found[k] = value
                    live += 1
                    if promote and not gens[k] & 1:
                        self.schedule_promotion(k, value, rec, slot, gens[k])
            slot.stats.hits += live
            slot.stats.misses += len(remaining) - live
            if live and (slot is not last or not fast_done):  # else no one reads it
                remaining = [k for k in remaining if k not in found]
        if not fast_done:
            self._from_spill_buffer(remaining, found, now)
        return found

    def _from_spill_buffer(self, keys: list[str], found: dict[str, Any], now: float) -> list[str]:
        if not self.spilling:
            return keys
        rest = []
        for k in keys:
            pending = self.spilling.get(k)
            if pending is not None and not pending[1].expired(now):
                found[k] = pending[0]
            else:
                rest.append(k)
        return rest

    # -- promotion -----------------------------------------------------------------------------

    def promotion_targets(self, key: str, value: Any, found: Slot) -> list[Slot]:
        """Default policy: into SESSION on the first hit; an array that fits the GPU pools
        waits for its second hit and then goes into GPU and SESSION together (copied into
        SESSION at once, its later hits would be in-process and never counted)."""
        targets = []
        gpu = self.by_tier.get(Tier.GPU)
        if gpu is not None and gpu.index < found.index and is_pool_value(value):
            hits = self.array_hits.pop(key, 0) + 1
            if hits < 2:
                self.array_hits[key] = hits
                if len(self.array_hits) > _ARRAY_HITS_MAX:
                    self.array_hits.popitem(last=False)
                return []
            targets.append(gpu)
        session = self.by_tier.get(Tier.SESSION)
        if session is not None and session.index < found.index:
            targets.append(session)
        return targets

    def schedule_promotion(self, key: str, value: Any, rec: Record, found: Slot,
                           gen0: int) -> None:
        targets = self.promotion_targets(key, value, found)
        if not targets:
            return
        if self.promo_queue is None:
            self.promo_queue = asyncio.Queue(self.config.promotion_queue)
        if self.promoter is None or self.promoter.done():
            self.promoter = asyncio.get_running_loop().create_task(self._promote_loop())
        try:
            self.promo_queue.put_nowait((key, value, rec, found, targets, gen0))
        except asyncio.QueueFull:
            self.promotions_dropped += 1

    async def _promote_loop(self) -> None:
        queue = self.promo_queue
        assert queue is not None
        while True:
            key, value, src, found, targets, gen0 = await queue.get()
            try:
                await self._promote(key, value, src, found.obj, targets=targets, gen0=gen0)
            except Exception as exc:  # a failed promotion only costs a future hit
                log.debug("promotion of %r failed: %s", key, exc)
            finally:
                queue.task_done()

    async def _promote(self, key: str, value: Any, src: Record, src_obj: bool, *,
                       targets: list[Slot], gen0: int) -> None:
        stripe = hash(key) & MASK
        async with self.locks[stripe]:
            if self.gens[stripe] != gen0:
                return  # a write to this stripe happened since the read: the value may be old
            for slot in targets:
                if src.expired(self.now()):
                    return
                if slot.obj and slot.tier is Tier.GPU and not slot.fits(src.size):  # type: ignore[misc]
                    continue
                payload, size = self.payload_for(slot, value, src, src_obj)
                copy = Record(payload, src.expires_at, False, size, src.version,
                              src.created_at, dict(src.extra))
                if slot.obj:
                    try:
                        slot.put_nowait(key, copy)  # type: ignore[misc]
                    except ValueTooLargeError:
                        continue
                else:
                    await self.call(slot, "put", key, copy)
                    slot.stale.discard(key)
                slot.stats.promotions += 1

    # -- eviction and spill --------------------------------------------------------------------

    def spill_target(self, slot: Slot) -> Slot | None:
        if slot.tier in self.config.cache_only:
            return None
        nxt = slot.index + 1
        return self.slots[nxt] if nxt < len(self.slots) else None

    def _evict_listener(self, slot: Slot) -> Any:
        def on_evict(key: str, rec: Record) -> None:
            self.on_evict(slot, key, rec)
        return on_evict

    def on_evict(self, slot: Slot, key: str, rec: Record) -> None:
        """An in-process tier evicted ``rec``: drop a copy, spill a home item downwards."""
        if not rec.home or rec.expired(self.now()):
            return
        target = self.spill_target(slot)
        if target is None:
            slot.stats.spills_dropped += 1
            return
        slot.stats.spills += 1
        self._note_spill(key, target)
        if target.obj:
            payload, size = self.payload_for(target, rec.payload, rec, True)
            moved = Record(payload, rec.expires_at, True, size, rec.version, rec.created_at,
                           rec.extra)
            try:
                target.put_nowait(key, moved)  # type: ignore[misc]
                return
            except ValueTooLargeError:
                target = self.spill_target(target)
                if target is None:
                    slot.stats.spills_dropped += 1
                    return
                self._note_spill(key, target)
        entry = (rec.payload, rec, target)
        self.spilling[key] = entry
        self.spawn(self._spill(key, entry))

    async def _spill(self, key: str, entry: tuple[Any, Record, Slot]) -> None:
        value, rec, target = entry
        async with self.locks[hash(key) & MASK]:
            if self.spilling.get(key) is not entry:
                return  # superseded by a put or delete
            try:
                payload, size = self.payload_for(target, value)
                moved = Record(payload, rec.expires_at, True, size, rec.version,
                               rec.created_at, rec.extra)
                await self.call(target, "put", key, moved)
                target.stale.discard(key)
            except SophiaMemoryError as exc:
                log.warning("spill of %r to %s failed, kept in memory: %s", key, target.tier,
                            exc)
                return
            del self.spilling[key]

    def _note_spill(self, key: str, target: Slot) -> None:
        where = self.spilled.pop(key, None) or set()
        where.add(target.index)
        self.spilled[key] = where
        if len(self.spilled) > _SPILLED_MAX:
            self.spilled.popitem(last=False)

    async def _drop_spilled_ancestors(self, keys: Iterable[str], slot: Slot) -> None:
        """Before a value that can vanish (TTL, pure-cache tier) becomes a key's newest in an
        in-process tier, remove what the key's older values spilled into the tiers below."""
        by_slot: dict[int, list[str]] = {}
        for key in keys:
            where = self.spilled.pop(key, None)
            for index in where or ():
                if index > slot.index:
                    by_slot.setdefault(index, []).append(key)
        for index, slot_keys in sorted(by_slot.items()):
            await self._invalidate(slot_keys, [self.slots[index]])

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- write path ----------------------------------------------------------------------------

    async def write(self, records: dict[str, Record], slot: Slot,
                    expected_version: int | None = None) -> int | None:
        """Store home ``records`` in ``slot`` and invalidate the keys in every tier above.

        For a versioned tier and one record, returns the version written (and checks
        ``expected_version``); otherwise None.
        """
        version: int | None = None
        self.check_open()
        async with _Writing(self, records):
            try:
                if slot.obj:
                    for k, rec in records.items():
                        slot.put_nowait(k, rec)  # type: ignore[misc]
                elif slot.versioned and len(records) == 1:
                    (k, rec), = records.items()
                    version = await self.call(slot, "append", k, rec, expected_version)
                    rec.version = version
                elif len(records) == 1:
                    (k, rec), = records.items()
                    await self.call(slot, "put", k, rec)
                else:
                    await self.call(slot, "put_many", records)
            except TierUnavailableError:
                # A remote write that timed out may still land: copies above must not
                # outlive it.
                for upper in self.slots[: slot.index]:
                    if upper.obj:
                        for k in records:
                            rec_above = upper.peek(k)  # type: ignore[misc]
                            if rec_above is not None and not rec_above.home:
                                upper.pop_nowait(k)  # type: ignore[misc]
                    else:
                        upper.stale.update(records)
                raise
            slot.stats.puts += len(records)
            for k in records:  # only now: a failed write must not lose an item in transit
                self.spilling.pop(k, None)
                slot.stale.discard(k)
            if self.spilled:
                if slot.obj and (slot.tier in self.config.cache_only or any(
                        r.expires_at is not None for r in records.values())):
                    await self._drop_spilled_ancestors(records, slot)
                else:
                    for k in records:  # a home write here replaces a spilled copy here
                        where = self.spilled.get(k)
                        if where is not None:
                            where.discard(slot.index)
            if slot.index:
                await self._invalidate(list(records), self.slots[: slot.index])
            if self.purger is None and self.purge_wanted:
                self._ensure_purger()
        return version

    async def _invalidate(self, keys: list[str], slots: Iterable[Slot]) -> None:
        """Remove copies of ``keys`` from ``slots``. A failing tier does not fail the write
        (its home already has it): the keys are marked stale there instead."""
        now = self.now()
        for slot in slots:
            if slot.obj:
                for k in keys:
                    slot.pop_nowait(k)  # type: ignore[misc]
                continue
            try:
                present = await self.call(slot, "get_many", keys, now)
                if present:
                    await self.call(slot, "delete_many", list(present), now)
            except TierUnavailableError as exc:
                slot.stale.update(keys)
                log.warning("%s could not drop %d stale copies (%s); they are skipped on "
                            "reads until it recovers", slot.tier, len(keys), exc.reason)

    async def delete(self, keys: list[str]) -> int:
        """Remove ``keys`` from every tier; how many of them existed (unexpired) anywhere."""
        self.check_open()
        now = self.now()
        existed: set[str] = set()
        failure: TierUnavailableError | None = None
        async with _Writing(self, keys):
            for k in keys:
                self.spilled.pop(k, None)
                pending = self.spilling.pop(k, None)
                if pending is not None and not pending[1].expired(now):
                    existed.add(k)
            for slot in self.slots:
                if slot.obj:
                    for k in keys:
                        rec = slot.pop_nowait(k)  # type: ignore[misc]
                        if rec is not None and not rec.expired(now):
                            existed.add(k)
                    continue
                try:
                    present = await self.call(slot, "get_many", keys, now)
                    live = [k for k, r in present.items() if not r.expired(now)]
                    if present:
                        await self.call(slot, "delete_many", list(present), now)
                    existed.update(live)
                except TierUnavailableError as exc:
                    slot.stale.update(keys)  # reads skip it; retried on recovery
                    failure = exc
                slot.stats.deletes += len(keys)
        if failure is not None:
            raise failure
        return len(existed)

    # -- background work -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until promotions and spills queued so far are done; spills that failed
        earlier, and invalidations a failing tier missed, are tried once more."""
        if self.spilling and not any(not t.done() for t in self.tasks):
            for key, entry in list(self.spilling.items()):
                self.spawn(self._spill(key, entry))
        for slot in self.slots:
            if slot.stale and not slot.draining:
                slot.draining = True
                self.spawn(self._drain(slot))
        while True:
            if self.promo_queue is not None and self.promoter is not None:
                await self.promo_queue.join()
            tasks = [t for t in self.tasks if not t.done()]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
                continue
            if self.promo_queue is None or self.promo_queue.empty():
                return

    def _ensure_purger(self) -> None:
        if self.purger is None and self.purge_wanted:
            self.purger = asyncio.get_running_loop().create_task(self._purge_loop())

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.purge_interval)  # real time: a maintenance cadence
            try:
                await self.purge_expired()
            except Exception as exc:
                log.warning("background purge failed: %s", exc)

    async def purge_expired(self) -> int:
        now = self.now()
        removed = 0
        for slot in self.slots:
            if isinstance(slot.backend, Purging):
                try:
                    removed += await self.call(slot, "purge_expired", now)
                except TierUnavailableError as exc:
                    log.warning("purge on %s failed: %s", slot.tier, exc)
        return removed

    async def close(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            await self.flush()
        self.closed = True
        for worker in (self.promoter, self.purger):
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
        for task in list(self.tasks):
            task.cancel()
        await self.deadlines.close()
        for slot in self.slots:
            with contextlib.suppress(Exception):
                await slot.backend.close()
