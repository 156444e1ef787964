"""The engine: opens the tiers and composes the components that work on them.

Everything here works on *full* keys (namespace prefix included); the front
(:mod:`sophia_memory.memory`) validates user input, builds those keys and delegates.

Parts (each in its own module, each with its own stats):

* :class:`~.handles.InProcessTier` / :class:`~.handles.RemoteTier` - typed handles on the
  tiers; a remote tier's calls pass its guard (breaker, deadline).
* :class:`~.ordering.KeyOrder` - per-key locks and write generations.
* :class:`~.chain.TierChain` - the read path, the spill buffer as one of its stages.
* :class:`~.writes.Writer` - put and delete, in the order that keeps reads linearizable.
* :class:`~.spill.Spiller` - the bounded spill buffer and the copies spills made.
* :class:`~.promotion.Promoter` - the promotion policy, queue and worker.
* :class:`SingleFlight` - one loader per key at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .._support import CircuitBreaker, Deadlines
from ..backends import (
    Backend,
    Evicting,
    Invalidating,
    ObjectStore,
    open_backend,
)
from ..clock import Clock
from ..codecs import Codec, codec_from_name
from ..config import MemoryConfig
from ..errors import ConfigError, SophiaMemoryError, TierUnavailableError
from ..tiers import Record, Tier
from .chain import Found, TierChain
from .handles import InProcessTier, RemoteTier, TierHandle
from .ordering import KeyOrder
from .promotion import Promoter
from .spill import Spiller
from .writes import Change, Writer

__all__ = ["Engine", "SingleFlight"]

log = logging.getLogger("sophia_memory")

T = TypeVar("T")
#: Keys removed per locked step of ``clear``.
_CLEAR_BATCH = 1000


class SingleFlight:
    """At most one load per key in flight; concurrent callers share its result."""

    def __init__(self) -> None:
        self.inflight: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, load: Callable[[], Awaitable[Any]]) -> Any:
        inflight = self.inflight
        while True:
            fut = inflight.get(key)
            if fut is None:
                break
            await asyncio.wait([fut])
            if not fut.cancelled():
                return fut.result()
        fut = asyncio.get_running_loop().create_future()
        inflight[key] = fut
        try:
            value = await load()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: waiters may be none
            raise
        finally:
            if inflight.get(key) is fut:
                del inflight[key]
        fut.set_result(value)
        return value

    def stats(self) -> dict[str, Any]:
        return {"loading": len(self.inflight)}


class Engine:
    """State shared by a memory and all its namespace views."""

    def __init__(self, config: MemoryConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.now = clock.time
        self.codec: Codec = codec_from_name(config.codec, config.signing_key)
        self.closed = False
        self.unavailable: dict[Tier, str] = {}
        self.slots: list[TierHandle] = []
        self.by_tier: dict[Tier, TierHandle] = {}
        self.order = KeyOrder()
        self.deadlines = Deadlines(config.call_timeout / 4)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.purger: asyncio.Task[None] | None = None
        self._opened: list[Backend] = []
        try:
            self._open_tiers()
        except BaseException:
            self._close_backends_now()
            raise
        chain = self.slots
        self.spiller = Spiller(chain, self.order, codec=self.codec, now=self.now,
                               cache_only=config.cache_only, max_items=config.spill_max_items,
                               max_bytes=config.spill_max_bytes)
        self.promoter = Promoter(chain, self.order, codec=self.codec, now=self.now,
                                 queue_size=config.promotion_queue,
                                 room=self.spiller.wait_for_room)
        self.reads = TierChain(chain, self.order, spiller=self.spiller, promoter=self.promoter,
                               codec=self.codec, now=self.now)
        self.writer = Writer(chain, self.order, self.spiller, self.now, self.codec.decode)
        self.flights = SingleFlight()
        for tier in chain:
            if isinstance(tier, InProcessTier) and isinstance(tier.backend, Evicting):
                tier.backend.set_eviction_listener(self.spiller.listener(tier))
            if isinstance(tier, RemoteTier):
                tier.recovered = self._recovered
                backend = tier.backend
                if isinstance(backend, Invalidating) and any(
                        isinstance(t, InProcessTier) for t in chain[: tier.index]):
                    backend.set_invalidation_listener(self._remote_writes)
        #: The hot path's view: (resident keys, read, touch, stats) of each in-process tier,
        #: fastest first; a tier that lacks the key costs a membership test, not a call.
        self.fast = tuple((t.resident, t.read, t.touch, t.stats) for t in chain
                          if isinstance(t, InProcessTier))
        self.purge_wanted = config.purge_interval > 0 and any(
            isinstance(t, RemoteTier) and t.purging is not None for t in chain)
        #: The homes a put may finish with ``writer.put_nowait``, by the ``tier=`` a put names
        #: (None: the default tier): the in-process tiers other than GPU (whose values the
        #: pools check first). Emptied on close, so a closed memory's puts take the general
        #: way, which refuses them.
        self.local_homes: dict[Tier | None, InProcessTier] = {
            t.tier: t for t in chain if isinstance(t, InProcessTier) and t.tier is not Tier.GPU}
        if config.default_tier in self.local_homes:
            self.local_homes[None] = self.local_homes[config.default_tier]

    # -- set-up ---------------------------------------------------------------------------------

    def _open_tiers(self) -> None:
        cfg = self.config
        for tier in Tier:
            url = cfg.url_for(tier)
            if url is None:
                self.unavailable[tier] = "switched off"
                continue
            backend = open_backend(url, tier, cfg)
            index = len(self.slots)
            handle: TierHandle
            self._opened.append(backend)
            if isinstance(backend, ObjectStore):
                if any(isinstance(t, RemoteTier) for t in self.slots):
                    raise ConfigError(f"{tier}: an in-process backend cannot sit below a "
                                      "slower one")
                handle = InProcessTier(tier, backend, index, backend)
            else:
                handle = RemoteTier(tier, backend, index, self._breaker(), self.deadlines)
            self.slots.append(handle)
            self.by_tier[tier] = handle
        if not self.slots:
            raise ConfigError("every tier is switched off")
        timeouts = [t.timeout for t in self.slots if isinstance(t, RemoteTier) and t.timeout]
        self.deadlines.tick = min(timeouts, default=cfg.call_timeout) / 4
        for handle in self.slots:
            handle.promotable = cfg.promote and isinstance(handle, RemoteTier) and any(
                t.tier in (Tier.GPU, Tier.SESSION) for t in self.slots[: handle.index])

    def _breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.config.breaker_threshold, self.config.breaker_reset,
                              self.now)

    def _close_backends_now(self) -> None:
        """Close what a failed open had opened (no event loop needed: the built-in backends
        close without suspending)."""
        for backend in self._opened:
            coro = backend.close()
            try:
                coro.send(None)
            except StopIteration:
                continue
            except Exception as exc:
                log.debug("closing %s failed: %s", backend.describe(), exc)
            coro.close()

    def _remote_writes(self, keys: list[str] | None) -> None:
        """Another process wrote ``keys`` (None: any key) in a shared tier: drop this
        process's in-process copies of them, and move their generations on so that no
        promotion of an earlier read lands."""
        self.order.moved(keys)
        local = [t for t in self.slots if isinstance(t, InProcessTier)]
        if keys is None:
            if not self.closed:
                self.spawn(self._drop_all_copies(local))
            return
        for k in keys:
            for t in local:
                t.pop_copy(k)

    async def _drop_all_copies(self, tiers: list[InProcessTier]) -> None:
        now = self.now()
        for t in tiers:
            for k in await t.keys("", now):
                t.pop_copy(k)

    def _recovered(self, tier: RemoteTier) -> None:
        tier.draining = True
        self.spawn(self.writer.replay_stale(tier))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- what the front calls ------------------------------------------------------------------

    def slot(self, tier: Tier) -> TierHandle:
        handle = self.by_tier.get(tier)
        if handle is None:
            raise TierUnavailableError(tier, self.unavailable.get(tier, "switched off"))
        return handle

    def check_open(self) -> None:
        if self.closed:
            raise SophiaMemoryError("this Memory is closed")

    def decode(self, tier: TierHandle, rec: Record) -> Any:
        return rec.payload if isinstance(tier, InProcessTier) else self.codec.decode(rec.payload)

    async def lookup(self, key: str, promote: bool = True) -> Found | None:
        self.check_open()
        return await self.reads.lookup(key, promote)

    async def lookup_many(self, keys: list[str]) -> dict[str, Any]:
        self.check_open()
        return await self.reads.lookup_many(keys)

    async def write(self, records: dict[str, Record], tier: TierHandle,
                    expected_version: int | None = None) -> int | None:
        self.check_open()
        version = await self.writer.write(records, tier, expected_version)
        if self.spiller.over():
            await self.spiller.wait_for_room()  # backpressure, holding no key
        if self.purger is None and self.purge_wanted:
            self.start_purger()
        return version

    def start_purger(self) -> None:
        """Start the background purge of expired items in the tiers that purge (once a write
        shows the memory in use on a running loop; :attr:`purge_wanted`)."""
        self.purger = asyncio.get_running_loop().create_task(self._purge_loop())

    async def delete(self, keys: list[str]) -> int:
        self.check_open()
        return await self.writer.delete(keys)

    async def update(self, key: str, tier: TierHandle, change: Change[T]) -> T:
        """An atomic read-modify-write of ``key`` in ``tier`` (:meth:`.Writer.update`)."""
        self.check_open()
        result = await self.writer.update(key, tier, change)
        if self.spiller.over():
            await self.spiller.wait_for_room()
        return result

    async def read_in(self, key: str, tier: TierHandle) -> tuple[Record | None, Any]:
        """The live item of ``key`` as a read from ``tier`` down finds it (the item
        :meth:`.Writer.update` works on), as ``(record, value)``; ``(None, None)``."""
        self.check_open()
        return await self.writer.visible(key, tier)

    async def clear(self, prefix: str, tier: TierHandle | None) -> int:
        """Remove every key under ``prefix`` from ``tier`` (None: from every tier, as a
        delete does); how many keys held an item. For an in-process tier, its items in
        transit and the copies its spills made below go too (they are its items). A tier that
        cannot list its keys is left as it is and its error raised once the rest is done."""
        self.check_open()
        now = self.now()
        found: set[str] = set()
        failure: TierUnavailableError | None = None
        for t in self.slots if tier is None else (tier,):
            try:
                if isinstance(t, RemoteTier):
                    found.update(await t.call(t.backend.keys, prefix, now))
                else:
                    found.update(await t.keys(prefix, now))
            except TierUnavailableError as exc:
                failure = failure or exc
        spiller = self.spiller
        if tier is None or isinstance(tier, InProcessTier):
            found.update(k for k, entry in spiller.buffer.items() if k.startswith(prefix)
                         and (tier is None or entry.origin == tier.index))
        if isinstance(tier, InProcessTier) and spiller.copies:
            found.update(k for k in spiller.copies
                         if k.startswith(prefix) and spiller.of_origin(k, tier.index))
        keys = sorted(found)
        removed = 0
        for i in range(0, len(keys), _CLEAR_BATCH):
            chunk = keys[i : i + _CLEAR_BATCH]
            try:
                if tier is None:
                    removed += await self.writer.delete(chunk)
                else:
                    removed += await self.writer.clear_tier(chunk, tier)
            except TierUnavailableError as exc:  # the rest was done; the tier is stale
                failure = failure or exc
        if failure is not None:
            raise failure
        return removed

    # -- background work -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until spills and promotions queued so far are done; invalidations a failing
        tier missed are tried once more."""
        for tier in self.slots:
            if isinstance(tier, RemoteTier) and tier.stale and not tier.draining:
                self._recovered(tier)
        while True:
            await self.spiller.drain()
            await self.promoter.drain()
            tasks = [t for t in self.tasks if not t.done()]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
                continue
            if self.promoter.idle() and not self.spiller.buffer:
                return
            if self.spiller.closed:
                return

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
        for tier in self.slots:
            purging = tier.purging
            if purging is None:
                continue
            if isinstance(tier, InProcessTier):
                removed += await purging.purge_expired(now)
                continue
            try:
                removed += await tier.call(purging.purge_expired, now)
            except TierUnavailableError as exc:
                log.warning("purge on %s failed: %s", tier.tier, exc)
        return removed

    async def close(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            await self.flush()
        self.closed = True
        self.local_homes = {}
        await self.spiller.close()
        await self.promoter.close()
        if self.purger is not None:
            self.purger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.purger
        for task in list(self.tasks):
            task.cancel()
        await self.deadlines.close()
        for tier in self.slots:
            with contextlib.suppress(Exception):
                await tier.backend.close()

    def stats(self) -> dict[str, Any]:
        """The components' own figures."""
        return {"spill": self.spiller.stats(), "promotion": self.promoter.stats(),
                "ordering": self.order.stats(), "loads": self.flights.stats()}

