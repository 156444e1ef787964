"""The read path: the tiers in order, fastest first, with the spill buffer as a stage of it.

A lookup reads the in-process tiers (synchronously), then the spill buffer (items in transit
from an in-process tier to a slower one), then each slower tier, and returns the first live
hit. A failing tier reads as a miss; a key whose invalidation a tier missed (``stale``) is
skipped there. A hit in a tier that promotion fills from is scheduled for promotion with the
write generation noted *before* any tier was read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..codecs import Codec
from ..errors import TierUnavailableError
from ..tiers import Record
from .handles import InProcessTier, RemoteTier, TierHandle
from .ordering import MASK, KeyOrder
from .promotion import Promoter
from .spill import Spiller

__all__ = ["Found", "TierChain"]

#: A hit: the record, its decoded value, and the tier it was found in.
Found = tuple[Record, Any, TierHandle]


class TierChain:
    """Reads one key or many through the tiers."""

    def __init__(self, chain: list[TierHandle], order: KeyOrder, *, spiller: Spiller,
                 promoter: Promoter, codec: Codec, now: Callable[[], float]) -> None:
        self.local = [t for t in chain if isinstance(t, InProcessTier)]
        self.remote = [t for t in chain if isinstance(t, RemoteTier)]
        self.order = order
        self.spiller = spiller
        self.promoter = promoter
        self.codec = codec
        self.now = now
        self.promoting = any(t.promotable for t in chain)

    async def lookup(self, key: str, promote: bool = True) -> Found | None:
        """The first live hit for ``key``, fastest tier first.

        The in-process tiers and the spill buffer are read in one synchronous step: a hit
        there is the first hit at that instant. The slower tiers are read one after another,
        so such a read is checked afterwards: it stands only if no write of the key's stripe
        began or ended while it ran (the generation it noted first is unchanged and even);
        otherwise it is done again holding the key, which no write can then interleave with.
        """
        stripe = hash(key) & MASK
        gens = self.order.gens
        gen0 = gens[stripe]
        found = await self._scan(key, promote, gen0)
        if gens[stripe] == gen0 and not gen0 & 1:
            return found
        async with self.order.locks[stripe]:
            return await self._scan(key, promote, gens[stripe])

    async def _scan(self, key: str, promote: bool, gen0: int) -> Found | None:
        now = self.now()
        for near in self.local:
            st = near.stats
            t0 = time.perf_counter()
            rec = near.peek(key)
            if rec is None or rec.expired(now):
                if rec is not None:
                    near.discard(key, rec)
                st.misses += 1
                st.latencies.append(time.perf_counter() - t0)
                continue
            st.hits += 1
            st.latencies.append(time.perf_counter() - t0)
            return rec, rec.payload, near
        pending = self.spiller.pending(key, now) if self.spiller.buffer else None
        if pending is not None:
            return pending.record, pending.value, pending.source
        for tier in self.remote:
            st = tier.stats
            if tier.stale and key in tier.stale:
                st.misses += 1
                continue  # may hold a copy older than a write it missed
            t0 = time.perf_counter()
            try:
                rec = await tier.get(key, now)
            except TierUnavailableError:
                continue  # a failing tier reads as a miss
            st.latencies.append(time.perf_counter() - t0)
            if rec is None or rec.expired(now):
                st.misses += 1
                continue
            value = self.codec.decode(rec.payload)
            st.hits += 1
            if promote and tier.promotable and not gen0 & 1:
                self.promoter.schedule(key, value, rec, tier, gen0)
            return rec, value, tier
        return None

    async def lookup_many(self, keys: list[str]) -> dict[str, Any]:
        """Values for the keys found; each tier is asked once for all keys still missing."""
        now = self.now()
        found: dict[str, Any] = {}
        remaining = self._near_many(keys, found, now)
        if not remaining:
            return found
        # What the slower tiers answer is checked as in lookup(), per key against the
        # generations noted here; when no write was in progress anywhere and none began or
        # ended meanwhile (the order's epoch), there is nothing to check.
        order, gens = self.order, self.order.gens
        epoch, quiet = order.epoch, not order.active
        seen = None if quiet and not self.promoting else \
            {k: gens[hash(k) & MASK] for k in remaining}
        await self._remote_many(remaining, found, now, seen)
        if quiet and order.epoch == epoch:
            return found
        if seen is None:
            redo = remaining
        else:
            redo = [k for k in remaining if gens[hash(k) & MASK] != seen[k] or seen[k] & 1]
        if redo:
            # A write ran meanwhile: read these again holding them, from the fastest tier:
            # the write may have put the key in a faster tier (an in-process home) that this
            # read had already passed, and removed the copy it then missed below.
            for k in redo:
                found.pop(k, None)
            async with order.holding(redo):
                now = self.now()
                rest = self._near_many(redo, found, now)
                if rest:
                    await self._remote_many(rest, found, now, None)
        return found

    def _near_many(self, keys: list[str], found: dict[str, Any], now: float) -> list[str]:
        """The in-process tiers' and the spill buffer's part of lookup_many, in one
        synchronous step: hits go into ``found``; the keys still missing are returned."""
        remaining = keys  # a key asked twice is looked up twice here, once below
        for near in self.local:
            if not remaining:
                return remaining
            resident = near.resident
            if not resident:  # an empty tier (often the GPU pools): nothing to look at
                near.stats.misses += len(remaining)
                continue
            lookup, touch, rest, live = near.lookup, near.touch, [], 0
            for k in remaining:
                rec = lookup(k)
                if rec is None:
                    rest.append(k)
                    continue
                touch(k)
                exp = rec.expires_at
                if exp is not None and exp <= now:
                    near.discard(k, rec)
                    rest.append(k)
                    continue
                found[k] = rec.payload
                live += 1
            near.stats.hits += live
            near.stats.misses += len(rest)
            remaining = rest
        if len(remaining) > 1:
            remaining = [k for k in dict.fromkeys(remaining) if k not in found]
        if remaining and self.spiller.buffer:
            pending, rest = self.spiller.pending, []
            for k in remaining:
                entry = pending(k, now)
                if entry is None:
                    rest.append(k)
                else:
                    found[k] = entry.value
            remaining = rest
        return remaining

    async def _remote_many(self, remaining: list[str], found: dict[str, Any], now: float,
                           seen: dict[str, int] | None) -> None:
        """The slower tiers' part of lookup_many: hits go into ``found``; a hit is promoted
        only with a generation noted in ``seen``."""
        decode = self.codec.decode
        for tier in self.remote:
            if not remaining:
                break
            wanted = [k for k in remaining if k not in tier.stale] if tier.stale else remaining
            if not wanted:
                continue
            promote = seen if tier.promotable else None
            t0 = time.perf_counter()
            live = 0
            try:
                bare = tier.bare
                if bare is not None and promote is None:
                    # bare payloads where nothing but the values is needed
                    payloads = await tier.get_payloads(bare, wanted, now)
                    for k, payload in payloads.items():
                        found[k] = decode(payload)
                    live = len(payloads)
                else:
                    hits = await tier.get_many(wanted, now)
                    for k, rec in hits.items():  # the per-key loop of every batch read
                        exp = rec.expires_at
                        if exp is not None and exp <= now:
                            continue
                        value = decode(rec.payload)
                        found[k] = value
                        live += 1
                        if promote is not None and not promote[k] & 1:
                            self.promoter.schedule(k, value, rec, tier, promote[k])
            except TierUnavailableError:
                continue
            tier.stats.latencies.append(time.perf_counter() - t0)
            tier.stats.hits += live
            tier.stats.misses += len(wanted) - live
            if live:
                remaining = [k for k in remaining if k not in found]
