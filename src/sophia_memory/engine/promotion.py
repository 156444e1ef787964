"""Promotion: hits in slower tiers are copied into faster ones, off the caller's path.

A read that hits below the tiers promotion fills schedules the copy on a bounded queue (full:
the promotion is dropped and counted; it only costs a later hit). One worker installs copies,
each under its key's lock and only if the key's write generation is what the read saw: a
promotion can never install a value older than one a concurrent put or delete left.

Default policy: into SESSION on the first hit; an array that fits the GPU pools waits for its
second hit and then goes into GPU and SESSION together (copied into SESSION at once, its later
hits would be in-process and never counted).

Admission: a bounded target whose backend is :class:`~sophia_memory.policies.Admitting` (the
in-process tier with ``memory://?admission=1``; off by default) is asked as each copy is
installed (so it judges against what the tier holds then, earlier copies of the same burst
of reads included), and the copy is made only when the target's frequency estimate says the
key is seen more often than what it would evict there (TinyLFU admission; a ``wtinylfu``
tier admits every copy to its window, whose exit is that comparison). So a scan of keys read
once from a slower tier cannot flush the faster one; each offer and each write to the tier
counts as a sighting, so a key read again and again does get in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ..backends import is_pool_value
from ..codecs import Codec
from ..errors import SophiaMemoryError, TierUnavailableError, ValueTooLargeError
from ..policies import Admitting
from ..tiers import Record, Tier
from .handles import InProcessTier, RemoteTier, TierHandle
from .ordering import KeyOrder

__all__ = ["Promoter"]

log = logging.getLogger("sophia_memory.promotion")

_ARRAY_HITS_MAX = 10_000

_Job = tuple[str, Any, Record, TierHandle, list[TierHandle], int]


class Promoter:
    """The promotion policy, its bounded queue and its worker."""

    def __init__(self, chain: list[TierHandle], order: KeyOrder, *, codec: Codec,
                 now: Callable[[], float], queue_size: int,
                 room: Callable[[], Awaitable[None]]) -> None:
        self.order = order
        #: Waits until the spill buffer has room: a copy installed in a bounded tier may
        #: evict an item into it, and promotion must not outrun the spiller either.
        self.room = room
        self.codec = codec
        self.now = now
        self.gpu = next((t for t in chain if t.tier is Tier.GPU), None)
        self.session = next((t for t in chain if t.tier is Tier.SESSION), None)
        #: Admission by target (tiers whose backend decides what is worth a copy).
        self.admission: dict[Tier, Admitting] = {
            t.tier: t.backend for t in (self.gpu, self.session)
            if t is not None and isinstance(t.backend, Admitting)}
        self.refused = 0
        self.queue_size = queue_size
        self.queue: asyncio.Queue[_Job] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.array_hits: OrderedDict[str, int] = OrderedDict()
        self.dropped = 0
        self.done = 0

    def targets(self, key: str, value: Any, found: TierHandle) -> list[TierHandle]:
        targets: list[TierHandle] = []
        gpu = self.gpu
        if gpu is not None and gpu.index < found.index and is_pool_value(value):
            hits = self.array_hits.pop(key, 0) + 1
            if hits < 2:
                self.array_hits[key] = hits
                if len(self.array_hits) > _ARRAY_HITS_MAX:
                    self.array_hits.popitem(last=False)
                return []
            targets.append(gpu)
        session = self.session
        if session is not None and session.index < found.index:
            targets.append(session)
        return targets

    def schedule(self, key: str, value: Any, rec: Record, found: TierHandle, gen0: int) -> None:
        """Queue the promotion of a hit read at generation ``gen0`` (never blocks)."""
        targets = self.targets(key, value, found)
        if not targets:
            return
        queue = self.queue
        if queue is None:
            queue = self.queue = asyncio.Queue(self.queue_size)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._run(queue))
        try:
            queue.put_nowait((key, value, rec, found, targets, gen0))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            job = await queue.get()
            try:
                await self._install(job)
                await self.room()
            except Exception as exc:  # a failed promotion only costs a future hit
                log.debug("promotion of %r failed: %s", job[0], exc)
            finally:
                queue.task_done()

    async def _install(self, job: _Job) -> None:
        key, value, src, found, targets, gen0 = job
        order = self.order
        stripe = order.stripe(key)
        admission = self.admission
        async with order.locks[stripe]:
            if order.gens[stripe] != gen0:
                return  # a write to this stripe happened since the read: the value may be old
            for tier in targets:
                if src.expired(self.now()):
                    return
                # Asked now, not when the hit was read: the tier holds every copy installed
                # before this one, so a burst of reads cannot all pass as "room to spare".
                gate = admission.get(tier.tier)
                if gate is not None and not gate.admit(key, src.size):
                    self.refused += 1
                    continue
                copy = self._copy(tier, value, src, found)
                if isinstance(tier, InProcessTier):
                    if tier.tier is Tier.GPU and not tier.fits(src.size, src.extra.get("pool")):
                        continue
                    try:
                        tier.put_nowait(key, copy)
                    except ValueTooLargeError:
                        continue
                else:
                    try:
                        await tier.put(key, copy)
                    except TierUnavailableError:
                        continue
                    tier.stale.discard(key)
                tier.stats.promotions += 1
                self.done += 1

    def _copy(self, tier: TierHandle, value: Any, src: Record, found: TierHandle) -> Record:
        if isinstance(tier, InProcessTier):
            payload, size = value, src.size
        elif isinstance(found, RemoteTier):
            payload, size = src.payload, src.size  # already encoded
        else:
            payload = self.codec.encode(value)
            size = len(payload)
        return Record(payload, src.expires_at, False, size, src.version, src.created_at,
                      dict(src.extra))

    async def drain(self) -> None:
        if self.queue is not None and self.worker is not None:
            await self.queue.join()

    def idle(self) -> bool:
        return self.queue is None or self.queue.empty()

    async def close(self) -> None:
        worker = self.worker
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, SophiaMemoryError, Exception):
                await worker

    def stats(self) -> dict[str, Any]:
        return {"queued": 0 if self.queue is None else self.queue.qsize(),
                "max_queued": self.queue_size, "dropped": self.dropped, "done": self.done,
                "refused": self.refused}
