"""Spill: items evicted from an in-process tier move down to the next tier that takes them.

An item whose home is an in-process tier is not lost to eviction: it moves to the next lower
tier (an in-process one takes it at once; a slower one through the *spill buffer*, a stage of
the read path between the in-process tiers and the slower ones, so the item stays readable in
transit). The buffer is bounded in items and bytes: a put that leaves it over its bound waits,
after releasing its key, until the spiller has made room (backpressure, not growth).

A spilled item is the same item as the one put: a later put or delete of the key supersedes it
in every tier. The spiller therefore remembers, per key, the tiers that hold a copy it made
(:attr:`Spiller.copies`, a bitmask per key, exact for the life of the process) and the writer
removes those copies before a later put or delete returns.

A value that no tier below can take (every target failing, or refusing it) is dropped and
counted under ``dropped`` with its reason; it is never kept in memory for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .._logging import RateLimited
from ..codecs import Codec
from ..errors import SophiaMemoryError, TierUnavailableError, ValueTooLargeError
from ..tiers import Record, Tier
from .handles import InProcessTier, RemoteTier, TierHandle
from .ordering import KeyOrder

__all__ = ["Pending", "Spiller"]

log = logging.getLogger("sophia_memory.spill")
warn = RateLimited(log)  # one a minute per message, with a count of the rest

_BATCH = 256


class Pending:
    """An evicted item on its way from ``source`` to the slower tier ``target``."""

    __slots__ = ("origin", "record", "source", "target", "value")

    def __init__(self, value: Any, record: Record, source: InProcessTier,
                 target: RemoteTier, origin: int | None = None) -> None:
        self.value = value
        self.record = record
        self.source = source
        self.target = target
        #: The chain position of the tier the item was put to (``source``, unless it came
        #: there by a spill itself).
        self.origin = source.index if origin is None else origin


class Spiller:
    """The spill buffer, its worker, and the record of the copies spills made."""

    def __init__(self, chain: list[TierHandle], order: KeyOrder, *, codec: Codec,
                 now: Callable[[], float], cache_only: frozenset[Tier], max_items: int,
                 max_bytes: int) -> None:
        self.chain = chain
        self.order = order
        self.codec = codec
        self.now = now
        self.cache_only = cache_only
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.buffer: dict[str, Pending] = {}
        self.bytes = 0
        #: key -> bitmask of the chain positions holding a copy a spill made.
        self.copies: dict[str, int] = {}
        #: key -> {chain position of a copy: the position of the tier its item was put to}
        #: (a GPU item may spill to SESSION and on to a slower tier), kept with ``copies``.
        self.origins: dict[str, dict[int, int]] = {}
        #: key -> chain position of the home of the write of it in progress (from the
        #: moment the home holds the new item until the tiers above it are cleared).
        self.writing: dict[str, int] = {}
        self.dropped: Counter[str] = Counter()
        self.moved = 0
        self.waits = 0
        self.peak_items = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._worker: asyncio.Task[None] | None = None
        self.closed = False

    # -- eviction (synchronous: called from inside an in-process tier's insert) ----------------

    def listener(self, source: InProcessTier) -> Callable[[str, Record], None]:
        def on_evict(key: str, rec: Record) -> None:
            self.evicted(source, key, rec)
        return on_evict

    def evicted(self, source: InProcessTier, key: str, rec: Record) -> None:
        """``source`` evicted ``rec``: a copy is dropped, an item whose home it was moves
        down."""
        mask = self.copies.get(key)
        origin = source.index
        if mask is not None and mask >> source.index & 1:
            origin = self.origin(key, source.index)
            self._forget(key, 1 << source.index)
        if not rec.home or rec.expired(self.now()):
            return
        if source.tier in self.cache_only:
            self._drop(source, "evicted from a pure-cache tier")
            return
        home = self.writing.get(key)
        if home is not None and home > source.index:
            # A write of the key to a slower home is removing older copies (it clears the
            # tiers above its home last): this item is older, and must land nowhere.
            return
        source.stats.spills += 1
        for target in self.chain[source.index + 1:]:
            if isinstance(target, InProcessTier):
                moved = Record(rec.payload, rec.expires_at, True, rec.size, rec.version,
                               rec.created_at, rec.extra)
                try:
                    target.put_nowait(key, moved)
                except ValueTooLargeError:
                    continue
                self._note(key, target.index, origin)
                return
            old = self.buffer.pop(key, None)
            if old is not None:
                self.bytes -= old.record.size
            self.buffer[key] = Pending(rec.payload, rec, source, target, origin)
            self.bytes += rec.size
            self.peak_items = max(self.peak_items, len(self.buffer))
            self._start()
            return
        self._drop(source, "no tier below")

    # -- what reads and writes need ------------------------------------------------------------

    def pending(self, key: str, now: float) -> Pending | None:
        """The live item in transit under ``key``, if any."""
        entry = self.buffer.get(key)
        if entry is None or entry.record.expired(now):
            return None
        return entry

    def take(self, key: str) -> Pending | None:
        """Remove ``key``'s item in transit (superseded by a put or delete)."""
        entry = self.buffer.pop(key, None)
        if entry is not None:
            self.bytes -= entry.record.size
            self._wake()
        return entry

    def over(self) -> bool:
        return len(self.buffer) > self.max_items or self.bytes > self.max_bytes

    async def wait_for_room(self) -> None:
        """Return once the buffer is within its bound (call without holding any key)."""
        while self.over() and not self.closed:
            self.waits += 1
            self._start()
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    async def remove_copies(self, keys: Iterable[str], below: int, now: float) -> None:
        """Remove the copies spills made of ``keys`` in tiers below chain position ``below``
        (callers hold the keys). A failing tier marks them stale there instead."""
        key_bits: dict[str, int] = {}
        for key in keys:
            lower = self.copies.get(key, 0) >> (below + 1) << (below + 1)
            if lower:
                key_bits[key] = lower
        await self.remove_copies_at(key_bits, now)

    def forget(self, key: str, index: int) -> None:
        """A write at chain position ``index`` replaced the copy a spill made there."""
        mask = self.copies.get(key)
        if mask is not None and mask >> index & 1:
            self._forget(key, 1 << index)

    def forget_bits(self, key: str, bits: int) -> None:
        """Forget the copies at the chain positions in ``bits`` (they were removed)."""
        mask = self.copies.get(key)
        if mask is not None and mask & bits:
            self._forget(key, bits)

    def _note(self, key: str, position: int, origin: int) -> None:
        self.copies[key] = self.copies.get(key, 0) | 1 << position
        self.origins.setdefault(key, {})[position] = origin

    def origin(self, key: str, position: int) -> int:
        """The chain position of the tier the item whose copy a spill left at ``position``
        was put to."""
        return self.origins.get(key, {}).get(position, position)

    def of_origin(self, key: str, origin: int) -> int:
        """The positions (a bitmask) of the copies spills made of an item put to ``origin``."""
        return sum(1 << p for p, o in self.origins.get(key, {}).items()
                   if o == origin and self.copies.get(key, 0) >> p & 1)

    async def remove_copies_at(self, key_bits: dict[str, int], now: float) -> None:
        """Remove the copies of each key at the positions in its bits (callers hold the
        keys), slowest first. A failing tier marks them stale there instead."""
        by_tier: dict[int, list[str]] = {}
        for key, bits in key_bits.items():
            self._forget(key, bits)
            for index in range(len(self.chain)):
                if bits >> index & 1:
                    by_tier.setdefault(index, []).append(key)
        for index in sorted(by_tier, reverse=True):
            tier = self.chain[index]
            tier_keys = by_tier[index]
            if isinstance(tier, InProcessTier):
                for key in tier_keys:
                    tier.pop_nowait(key)
                continue
            try:
                await tier.drop(tier_keys, now)
            except TierUnavailableError:
                tier.stale.update(tier_keys)

    def forget_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.copies.pop(key, None)
            self.origins.pop(key, None)

    def _forget(self, key: str, bits: int) -> None:
        mask = self.copies.get(key, 0) & ~bits
        if mask:
            self.copies[key] = mask
            origins = self.origins.get(key)
            if origins:
                for position in [p for p in origins if not mask >> p & 1]:
                    del origins[position]
        else:
            self.copies.pop(key, None)
            self.origins.pop(key, None)

    def _drop(self, source: TierHandle, reason: str) -> None:
        source.stats.spills_dropped += 1
        self.dropped[reason] += 1

    # -- the worker -----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._worker is None and not self.closed:
            with contextlib.suppress(RuntimeError):  # no running loop: flush() starts it
                self._worker = asyncio.get_running_loop().create_task(self._run())

    def _wake(self) -> None:
        if self._waiters and not self.over():
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def _run(self) -> None:
        try:
            while self.buffer and not self.closed:
                keys = list(dict.fromkeys(list(self.buffer)[:_BATCH]))
                async with self.order.writing(keys):
                    try:
                        await self._move(keys)
                    except Exception as exc:  # a bug must not wedge every putter: drop
                        warn.error("spilling %d items failed: %r", len(keys), exc)
                        for key in keys:
                            entry = self.buffer.get(key)
                            if entry is not None:
                                await self._give_up(key, entry, "spill failed")
                self._wake()
        finally:
            self._worker = None
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def _move(self, keys: list[str]) -> None:
        """Write the items in transit under ``keys`` (held) to their targets."""
        now = self.now()
        groups: dict[int, dict[str, Pending]] = {}
        for key in keys:
            entry = self.buffer.get(key)
            if entry is None:
                continue  # superseded while we waited for the key
            if entry.record.expired(now):
                self.take(key)
                continue
            groups.setdefault(entry.target.index, {})[key] = entry
        for index, group in sorted(groups.items()):
            target = self.chain[index]
            assert isinstance(target, RemoteTier)
            records: dict[str, Record] = {}
            for key, entry in group.items():
                rec = entry.record
                try:
                    payload = self.codec.encode(entry.value)
                except SophiaMemoryError as exc:
                    await self._give_up(key, entry, f"cannot be encoded: {type(exc).__name__}")
                    continue
                records[key] = Record(payload, rec.expires_at, True, len(payload), rec.version,
                                      rec.created_at, rec.extra)
            if not records:
                continue
            try:
                if len(records) == 1:
                    (key, record), = records.items()
                    await target.put(key, record)
                else:
                    await target.put_many(records)
            except SophiaMemoryError as exc:  # failing, or refusing these values
                nxt = next((t for t in self.chain[index + 1:] if isinstance(t, RemoteTier)),
                           None)
                for key in records:
                    entry = group[key]
                    if nxt is None:
                        await self._give_up(key, entry, "no tier below could take it")
                    else:
                        entry.target = nxt  # tried again by the next round
                log.debug("spill to %s failed: %s", target.tier, exc)
                continue
            bit = 1 << index
            copies = self.copies
            for key in records:
                copies[key] = copies.get(key, 0) | bit
                self.origins.setdefault(key, {})[index] = group[key].origin
                target.stale.discard(key)
                self.take(key)
                self.moved += 1

    async def _give_up(self, key: str, entry: Pending, reason: str) -> None:
        """Drop an item no tier below can take. Older copies of it that spills made must go
        too, or they would stand in for it."""
        self.take(key)
        self._drop(entry.source, reason)
        warn.warning("spill of an item from %s dropped: %s", entry.source.tier, reason)
        await self.remove_copies([key], entry.source.index, self.now())

    # -- maintenance ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Return once the buffer is empty."""
        while self.buffer and not self.closed:
            self._start()
            worker = self._worker
            if worker is None:
                return
            await asyncio.wait([worker])

    async def close(self) -> None:
        self.closed = True
        worker = self._worker
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        self._wake()

    def stats(self) -> dict[str, Any]:
        return {"items": len(self.buffer), "bytes": self.bytes, "max_items": self.max_items,
                "max_bytes": self.max_bytes, "peak_items": self.peak_items,
                "moved": self.moved, "waits": self.waits, "dropped": dict(self.dropped),
                "tracked_copies": len(self.copies)}
