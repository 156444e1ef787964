"""The write path: put and delete, ordered so that no read sees a superseded value.

A put of ``key`` to its home tier ``H``, holding the key:

1. writes ``H`` (durably, for stored tiers);
2. removes what the library itself made of earlier values *below* ``H``: copies spills made
   (the spiller knows where), items in transit, promoted copies in the tiers promotion fills;
   explicit puts to lower homes stay, shadowed by ``H``;
3. clears every tier *above* ``H``, slowest first, then the spill buffer, then the in-process
   tiers.

While 1-3 run, the first hit along the read path is the old value or the new one, never an
older one: step 2 only removes things below the new value, and step 3 removes from the bottom
up, so whenever a copy above disappears, everything between it and ``H`` is already gone. A
delete clears every tier in the same bottom-up order. If the process dies part-way, the
remaining state is one that a read during the write could have seen, which is what makes a
crash safe for durable homes (DESIGN.md §3, "Crash safety").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from .._logging import RateLimited
from ..errors import InvalidArgumentError, TierUnavailableError, VersionConflictError
from ..tiers import Record, Tier
from .handles import InProcessTier, RemoteTier, TierHandle
from .ordering import MASK, KeyOrder
from .spill import Spiller

__all__ = ["Writer"]

log = logging.getLogger("sophia_memory.writes")
#: A failing tier makes the same warning fire for every write: one a minute, with a count.
warn = RateLimited(log)

_PROMOTED_INTO = (Tier.GPU, Tier.SESSION)
#: Conditional writes that lost to another process in a row before :meth:`Writer.update`
#: gives up (each loss means another writer's update went through).
_RETRIES = 1000

T = TypeVar("T")
#: ``change(record, value, now) -> (record to write or None, result)``: see ``update``.
Change = Callable[[Record | None, Any, float], tuple[Record | None, T]]


class Writer:
    """Puts and deletes over the chain of tiers."""

    def __init__(self, chain: list[TierHandle], order: KeyOrder, spiller: Spiller,
                 now: Callable[[], float], decode: Callable[[bytes], Any]) -> None:
        self.chain = chain
        self.decode = decode
        self.order = order
        self.spiller = spiller
        self.now = now
        self.local = [t for t in chain if isinstance(t, InProcessTier)]
        self.remote = [t for t in chain if isinstance(t, RemoteTier)]
        # Per home position: the tiers above it in the order step 3 clears them.
        self.remote_above = [[t for t in reversed(self.remote) if t.index < h.index]
                             for h in chain]
        self.local_above = [[t for t in reversed(self.local) if t.index < h.index]
                            for h in chain]
        # Per home position: the in-process tiers below it that promotion fills.
        self.local_promoted_below = [
            [t for t in self.local if t.index > h.index and t.tier in _PROMOTED_INTO]
            for h in chain]
        #: Per home position, for :meth:`put_nowait`: None where a put cannot be done without
        #: suspending (not an in-process home, or a remote tier that promotion fills lies
        #: below it), else (the in-process tiers promotion fills below it, the in-process
        #: tiers above it).
        self.nowait_plan: list[tuple[list[InProcessTier], list[InProcessTier]] | None] = [
            (self.local_promoted_below[h.index], self.local_above[h.index])
            if isinstance(h, InProcessTier) and not any(
                isinstance(t, RemoteTier) and t.tier in _PROMOTED_INTO
                for t in chain[h.index + 1:])
            else None for h in chain]

    def put_nowait(self, key: str, rec: Record, home: InProcessTier) -> bool:
        """The whole put of one record to an in-process home, done now, if it needs no
        suspension: the key's stripe is free (no write or guarded read of it is in progress)
        and no remote tier holds a copy this put must remove. False if it must go the
        general way (:meth:`write`). Nothing can interleave with it, so steps 1-3 are one
        atomic step; the stripe's generation moves on by two, as a finished write's does."""
        order = self.order
        stripe = hash(key) & MASK
        spiller = self.spiller
        plan = self.nowait_plan[home.index]
        if plan is None or order.locks[stripe].locked() or key in spiller.copies:
            return False
        order.gens[stripe] += 2
        order.epoch += 2
        home.put_nowait(key, rec)
        home.stats.puts += 1
        if spiller.buffer:
            entry = spiller.buffer.get(key)
            if entry is not None and not _same_item(entry.record, rec):
                spiller.take(key)
        promoted_below, above = plan
        for tier in promoted_below:
            if key in tier.resident:
                tier.pop_copy(key)
        for near in above:
            if key in near.resident:
                near.pop_nowait(key)
        if spiller.copies:
            spiller.forget_bits(key, (1 << home.index) - 1)
        return True

    async def write(self, records: dict[str, Record], home: TierHandle,
                    expected_version: int | None = None) -> int | None:
        """Store home ``records`` in ``home`` and supersede every other copy of their keys
        (steps 1-3 above). For a versioned tier and one record, the version written."""
        version: int | None = None
        keys = list(records)
        async with self.order.writing(keys):
            now = self.now()
            try:
                if isinstance(home, InProcessTier):
                    for k, rec in records.items():
                        home.put_nowait(k, rec)
                elif home.versioned is not None and len(records) == 1:
                    (k, rec), = records.items()
                    version = await home.call(home.versioned.append, k, rec, expected_version)
                    rec.version = version
                elif len(records) == 1:
                    (k, rec), = records.items()
                    await home.put(k, rec)
                else:
                    await home.put_many(records)
            except TierUnavailableError:
                self._distrust_above(keys, home)
                raise
            await self._supersede(records, home, now)
        return version

    async def _supersede(self, records: dict[str, Record], home: TierHandle,
                         now: float) -> None:
        """Steps 2 and 3, once ``home`` holds ``records`` (the caller holds their keys)."""
        keys = list(records)
        spiller = self.spiller
        home.stats.puts += len(records)
        if isinstance(home, RemoteTier) and home.stale:
            home.stale.difference_update(keys)
        writing = spiller.writing
        for k in keys:
            writing[k] = home.index
        try:
            await self._supersede_steps(records, keys, home, now)
        finally:
            for k in keys:
                writing.pop(k, None)

    async def _supersede_steps(self, records: dict[str, Record], keys: list[str],
                               home: TierHandle, now: float) -> None:
        spiller = self.spiller
        # Step 2. Inserting a batch into an in-process home may evict (and so spill) the
        # older value of a key later in the batch, or this write's own values: what is this
        # write's own value is told by identity, and kept.
        if isinstance(home, InProcessTier) and spiller.buffer:
            self._take_older(records)
        if spiller.copies:
            masks = {k: m for k in keys if (m := spiller.copies.get(k))}
            if masks:
                await self._drop_spilled(masks, home, records, now)
        if isinstance(home, InProcessTier):
            await self._drop_promoted_below(keys, home, now)
        if home.index:
            await self._clear_above(keys, home, now)

    async def update(self, key: str, home: TierHandle, change: Change[T]) -> T:
        """A read-modify-write of ``key`` in ``home``, atomic: ``change(record, value, now)``
        sees the live item a read from ``home`` down finds (``(None, None, now)`` when there
        is none) and returns the record to write to ``home`` instead (None: write nothing)
        and the call's result.

        The key is held throughout, so nothing in this process interleaves. Against other
        processes the store decides: a versioned tier appends only on top of the version
        read, a :class:`~sophia_memory.backends.Conditional` one writes only over exactly
        what it held when read; when another writer came first, the item is read again and
        ``change`` asked again. Where ``home`` holds no live item of its own, the item is the
        one a read finds below it (in transit, spilled, or a slower tier's), so the result
        does not depend on whether a promotion copied it into ``home`` first."""
        async with self.order.writing([key]):
            for _ in range(_RETRIES):
                now = self.now()
                if isinstance(home, InProcessTier):
                    rec, value = (None, None) if self._spilled_above(key, home, home) else \
                        self.live(home, home.peek(key), now)
                    if rec is None:
                        rec, value = await self.below(key, home, now)
                    new, result = change(rec, value, now)
                    if new is None:
                        return result
                    home.put_nowait(key, new)
                    break
                versioned = home.versioned
                if versioned is not None:
                    stored = await home.get(key, now)
                    rec, value = await self._seen(key, home, stored, now)
                    new, result = change(rec, value, now)
                    if new is None:
                        return result
                    try:
                        new.version = await home.call(versioned.append, key, new,
                                                      0 if stored is None else stored.version)
                    except VersionConflictError:
                        continue  # another process appended first: read again
                    except TierUnavailableError:
                        self._distrust_above([key], home)
                        raise
                    break
                conditional = home.conditional
                if conditional is None:
                    raise InvalidArgumentError(f"{home.tier} ({home.backend.describe()}) "
                                               "cannot write conditionally")
                stored, token = await home.call(conditional.read_for_update, key, now)
                rec, value = await self._seen(key, home, stored, now)
                new, result = change(rec, value, now)
                if new is None:
                    return result
                try:
                    if await home.call(conditional.put_if, key, new, token):
                        break
                except TierUnavailableError:  # it may have landed: no copy above may stay
                    self._distrust_above([key], home)
                    raise
            else:
                raise TierUnavailableError(home.tier, f"{key!r} changed under {_RETRIES} "
                                           "conditional writes in a row")
            await self._supersede({key: new}, home, now)
        return result

    async def _seen(self, key: str, home: RemoteTier, stored: Record | None,
                    now: float) -> tuple[Record | None, Any]:
        """What a read-modify-write in remote ``home`` works on: the item ``home`` holds,
        unless it is expired or may be a copy older than a write it missed (``stale``);
        then the item a read finds below."""
        if key not in home.stale and not self._spilled_above(key, home, home):
            rec, value = self.live(home, stored, now)
            if rec is not None:
                return rec, value
        return await self.below(key, home, now)

    def _spilled_above(self, key: str, there: TierHandle, tier: TierHandle) -> bool:
        """Whether what ``there`` holds under ``key`` is a copy a spill made of an item of a
        tier faster than ``tier`` (so not an item a staple on ``tier`` works on)."""
        spiller = self.spiller
        mask = spiller.copies.get(key)
        return (mask is not None and bool(mask >> there.index & 1)
                and spiller.origin(key, there.index) < tier.index)

    def live(self, tier: TierHandle, rec: Record | None,
             now: float) -> tuple[Record | None, Any]:
        """``(rec, its value)`` if ``rec`` is live, else ``(None, None)``."""
        if rec is None or rec.expired(now):
            return None, None
        if isinstance(tier, InProcessTier):
            return rec, rec.payload
        return rec, self.decode(rec.payload)

    async def below(self, key: str, tier: TierHandle, now: float) -> tuple[Record | None, Any]:
        """The live item of ``key`` a read finds below ``tier``: in transit (when ``tier`` is
        in-process), then in each slower tier (where the key is not stale; below a remote
        ``tier``, a copy a spill made is a faster tier's item and is passed over). A failing
        tier raises :class:`TierUnavailableError`: a write must not be decided on a guess."""
        spiller = self.spiller
        local = isinstance(tier, InProcessTier)
        if local and spiller.buffer:
            entry = spiller.pending(key, now)
            if entry is not None and entry.origin >= tier.index:
                return entry.record, entry.value
        for lower in self.chain[tier.index + 1:]:
            if self._spilled_above(key, lower, tier):
                continue  # an item of a tier faster than ``tier``, spilled down to ``lower``
            if isinstance(lower, InProcessTier):
                rec, value = self.live(lower, lower.peek(key), now)
            elif lower.stale and key in lower.stale:
                continue
            else:
                rec, value = self.live(lower, await lower.get(key, now), now)
            if rec is not None:
                return rec, value
        return None, None

    async def visible(self, key: str, tier: TierHandle) -> tuple[Record | None, Any]:
        """The live item of ``key`` as a read from ``tier`` down finds it (``ttl(tier=)``)."""
        now = self.now()
        if self._spilled_above(key, tier, tier):
            rec, value = None, None
        elif isinstance(tier, InProcessTier):
            rec, value = self.live(tier, tier.peek(key), now)
        elif key in tier.stale:
            rec, value = None, None
        else:
            rec, value = self.live(tier, await tier.get(key, now), now)
        if rec is None:
            return await self.below(key, tier, now)
        return rec, value

    def _take_older(self, records: dict[str, Record]) -> None:
        """Remove items in transit that hold an older value of ``records``' keys (not this
        write's own, which may have reached the buffer through a spill into an in-process
        tier below, as a new record of the same item)."""
        buffer = self.spiller.buffer
        for k, rec in records.items():
            entry = buffer.get(k)
            if entry is not None and not _same_item(entry.record, rec):
                self.spiller.take(k)

    async def _drop_spilled(self, masks: dict[str, int], home: TierHandle,
                            records: dict[str, Record], now: float) -> None:
        """Step 2 for the copies spills made of earlier values."""
        spiller = self.spiller
        below: dict[int, list[str]] = {}
        for k, mask in masks.items():
            for tier in self.chain:
                bit = 1 << tier.index
                if not mask & bit:
                    continue
                if tier.index <= home.index:
                    spiller.forget(k, tier.index)  # replaced here, or cleared by step 3
                    continue
                if isinstance(tier, InProcessTier):
                    rec = tier.peek(k)
                    if rec is not None and _same_item(rec, records[k]):
                        continue  # this write's own item, spilled by its own batch
                    tier.pop_nowait(k)
                    spiller.forget(k, tier.index)
                else:
                    below.setdefault(tier.index, []).append(k)
        for index in sorted(below, reverse=True):
            tier = self.chain[index]
            assert isinstance(tier, RemoteTier)
            tier_keys = below[index]
            for k in tier_keys:
                spiller.forget(k, index)
            try:
                await tier.drop(tier_keys, now)
            except TierUnavailableError:
                tier.stale.update(tier_keys)

    async def _drop_promoted_below(self, keys: list[str], home: InProcessTier,
                                   now: float) -> None:
        """Step 2 for promoted copies: only the tiers promotion fills can hold them."""
        await self._drop_copies([t for t in self.chain[home.index + 1:]
                                 if t.tier in _PROMOTED_INTO], keys, now)

    @staticmethod
    async def _drop_copies(tiers: list[TierHandle], keys: list[str], now: float) -> None:
        """Remove the promoted copies (not items whose home it is) of ``keys`` from ``tiers``,
        in order; a failing tier marks the keys stale there instead."""
        for tier in tiers:
            if isinstance(tier, InProcessTier):
                for k in keys:
                    tier.pop_copy(k)
                continue
            try:
                await tier.drop(keys, now, only=_is_copy)
            except TierUnavailableError:
                tier.stale.update(keys)

    async def _clear_above(self, keys: list[str], home: TierHandle, now: float) -> None:
        """Step 3: every tier above ``home``, slowest first."""
        for tier in self.remote_above[home.index]:
            try:
                await tier.drop(keys, now)
            except TierUnavailableError as exc:
                tier.stale.update(keys)
                warn.warning("%s could not drop %d stale copies (%s); they are skipped on "
                            "reads until it recovers", tier.tier, len(keys), exc.reason)
        spiller = self.spiller
        if isinstance(home, RemoteTier) and spiller.buffer:  # in transit above the home
            for k in keys:
                spiller.take(k)
        for near in self.local_above[home.index]:
            for k in keys:
                near.pop_nowait(k)
        if spiller.copies:
            above = (1 << home.index) - 1
            for k in keys:
                spiller.forget_bits(k, above)

    async def clear_tier(self, keys: list[str], tier: TierHandle) -> int:
        """Remove ``keys`` from ``tier`` alone (for an in-process tier, with its items in
        transit and the copies its spills made below), and the copies promotion made of them
        above it, so no cleared item stays readable; items other tiers hold as their own
        stay. How many keys held an item there."""
        removed = 0
        async with self.order.writing(keys):
            now = self.now()
            spiller = self.spiller
            if isinstance(tier, InProcessTier):
                # its own items below go first (slowest first): spilled, and in transit
                spilled = {k: bits for k in keys
                           if (bits := spiller.of_origin(k, tier.index))}
                await spiller.remove_copies_at(spilled, now)
                gone = set(spilled)
                for k in keys:
                    entry = spiller.buffer.get(k)
                    if entry is not None and entry.origin == tier.index:
                        spiller.take(k)
                        if not entry.record.expired(now):
                            gone.add(k)
                    rec = tier.pop_nowait(k)
                    if rec is not None and not rec.expired(now):
                        gone.add(k)
                removed = len(gone)
            else:
                removed = len(await tier.drop(keys, now))
            tier.stats.deletes += len(keys)
            if spiller.copies:
                for k in keys:
                    spiller.forget_bits(k, 1 << tier.index)
            await self._drop_copies(self.chain[: tier.index][::-1], keys, now)
        return removed

    def _distrust_above(self, keys: list[str], home: TierHandle) -> None:
        """A remote write that failed may still land: no copy above may outlive it."""
        for tier in self.chain[: home.index]:
            if isinstance(tier, InProcessTier):
                for k in keys:
                    tier.pop_copy(k)
            else:
                tier.stale.update(keys)

    async def delete(self, keys: list[str]) -> int:
        """Remove ``keys`` from every tier, slowest first; how many held a live value.
        A failing tier marks the keys stale there (skipped by reads, retried on recovery)
        and its error is raised once every other tier is done."""
        spiller = self.spiller
        existed: set[str] = set()
        failure: TierUnavailableError | None = None
        async with self.order.writing(keys):
            now = self.now()
            for tier in reversed(self.remote):
                try:
                    existed.update(await tier.drop(keys, now))
                except TierUnavailableError as exc:
                    tier.stale.update(keys)
                    failure = exc
                tier.stats.deletes += len(keys)
            for k in keys:
                entry = spiller.take(k)
                if entry is not None and not entry.record.expired(now):
                    existed.add(k)
            for near in reversed(self.local):
                for k in keys:
                    rec = near.pop_nowait(k)
                    if rec is not None and not rec.expired(now):
                        existed.add(k)
                near.stats.deletes += len(keys)
            spiller.forget_all(keys)
        if failure is not None:
            raise failure
        return len(existed)

    async def replay_stale(self, tier: RemoteTier) -> None:
        """Replay the invalidations ``tier`` missed while it was failing."""
        order = self.order
        try:
            for key in list(tier.stale):
                async with order.locks[order.stripe(key)]:
                    if key not in tier.stale:
                        continue
                    try:
                        await tier.drop([key], self.now())
                    except TierUnavailableError:
                        return
                    tier.stale.discard(key)
        finally:
            tier.draining = False


def _same_item(rec: Record, mine: Record) -> bool:
    """``rec`` is the item ``mine`` was written as, or a spill's record of it (a spill into
    an in-process tier makes a new record of the same payload and version)."""
    return rec is mine or (rec.payload is mine.payload and rec.version == mine.version)


def _is_copy(rec: Record) -> bool:
    return not rec.home
