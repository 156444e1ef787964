"""Deterministic tests of the spiller's and the promoter's bookkeeping (engine/spill.py,
engine/promotion.py), written against the mutants an earlier mutation run left alive.

The memory under test here has two bounded in-process tiers, SESSION and CORTEX (so an item
spills from SESSION into CORTEX at once, and from CORTEX through the spill buffer), and two
gated slow tiers, PERSISTENT and WORKFLOW, whose calls a test can fail or hold. Chain
positions: SESSION 0, CORTEX 1, PERSISTENT 2, WORKFLOW 3. Time is a ManualClock.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory._logging import RateLimited
from sophia_memory.codecs import Codec, codec_from_name
from sophia_memory.engine import spill as spill_module
from sophia_memory.engine.handles import InProcessTier
from sophia_memory.engine.ordering import KeyOrder
from sophia_memory.engine.promotion import Promoter
from sophia_memory.engine.spill import Spiller
from sophia_memory.errors import ValueTooLargeError
from sophia_memory.testing import Gate, gate, gated_data, reset_gated
from sophia_memory.tiers import Record

from .conftest import apart

DROPPED = "no tier below could take it"


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    reset_gated()
    yield
    reset_gated()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own rate limit on the spiller's warnings (the module's is shared
    by the whole run, so a message another test logged would be held back here)."""
    monkeypatch.setattr(spill_module, "warn", RateLimited(spill_module.log))


def open_memory(clock: ManualClock, *, session: int = 1, cortex: int = 1,
                promote: bool = False) -> Memory:
    """SESSION and CORTEX in process, LRU (the tests count on the oldest going first)."""
    return Memory.open(clock=clock, purge_interval=0, promote=promote, tiers={
        Tier.GPU: None, Tier.SESSION: f"memory://?max_items={session}&policy=lru",
        Tier.CORTEX: f"memory://?max_items={cortex}&policy=lru", Tier.PERSISTENT: "gated://sp",
        Tier.VECTOR: None, Tier.WORKFLOW: "gated://sw"})


def spiller_of(mem: Memory) -> Spiller:
    spiller: Spiller = mem._core.spiller
    return spiller


def tier_stats(mem: Memory, tier: Tier) -> dict[str, Any]:
    stats: dict[str, Any] = mem.stats()["tiers"][tier.name]
    return stats


def assert_bookkeeping_consistent(mem: Memory) -> None:
    """Every tracked copy has its origin noted, and nothing else is noted."""
    sp = spiller_of(mem)
    assert set(sp.origins) == set(sp.copies)
    for key, mask in sp.copies.items():
        assert mask > 0
        assert set(sp.origins[key]) == {p for p in range(mask.bit_length()) if mask >> p & 1}


def spill_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "sophia_memory.spill" and r.levelno == level]


async def shadowed_low_and_high(mem: Memory) -> None:
    """k=low is CORTEX's item, spilled on to PERSISTENT; k=high is SESSION's item, spilled
    into CORTEX. Copies: PERSISTENT (origin CORTEX) and CORTEX (origin SESSION)."""
    await mem.put("k", "low", tier=Tier.CORTEX, ttl=100)
    await mem.put("k", "high", tier=Tier.SESSION)  # low stays CORTEX's own item
    await mem.put("o", "o", tier=Tier.CORTEX)  # CORTEX evicts low: it spills to PERSISTENT
    await mem.flush()
    assert gated_data("sp")["k"].home  # the spilled copy of low
    await mem.put("o2", "o2", tier=Tier.SESSION)  # SESSION evicts high into CORTEX
    await mem.flush()
    assert spiller_of(mem).copies["k"] == 0b110


# -- a spill no tier below takes ----------------------------------------------------------------


async def test_a_dropped_spill_takes_the_older_copies_spills_left_below_it(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """When no tier below takes an item, the older value a spill left below its source goes
    too (else a read would find that older value); the drop is counted and logged once."""
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    async with open_memory(clock) as mem:
        await shadowed_low_and_high(mem)
        gate("sp").fail(["put", "put_many"], "k")
        gate("sw").fail(["put", "put_many"], "k")
        await mem.put("o3", "o3", tier=Tier.CORTEX)  # CORTEX evicts high: nowhere to go
        await mem.flush()
        assert await mem.get("k") is None, "the older spilled value stood in for the dropped one"
        assert "k" not in gated_data("sp")
        assert "k" not in spiller_of(mem).copies
        spill = mem.stats()["spill"]
        assert spill["dropped"] == {DROPPED: 1}
        assert spill["items"] == 0
        assert tier_stats(mem, Tier.CORTEX)["spills_dropped"] == 1
        assert tier_stats(mem, Tier.SESSION)["spills_dropped"] == 0
        assert tier_stats(mem, Tier.PERSISTENT)["refused"] == 0
        assert tier_stats(mem, Tier.PERSISTENT)["errors"] == 1  # the failed spill only
        assert spill_messages(caplog, logging.WARNING) == [
            f"spill of an item from Tier.CORTEX dropped: {DROPPED}"]
        assert spill_messages(caplog, logging.ERROR) == []
        assert [m for m in spill_messages(caplog, logging.DEBUG)
                if m.startswith("spill to")] == [
            f"spill to Tier.{name} failed: Tier.{name} is unavailable: gated call put('k',) "
            "failed as the test asked" for name in ("PERSISTENT", "WORKFLOW")]
        assert_bookkeeping_consistent(mem)


async def test_each_dropped_spill_is_counted(clock: ManualClock) -> None:
    """Two items no tier below takes: two drops, by reason and by source tier."""
    async with open_memory(clock, session=1, cortex=8) as mem:
        for key in ("a", "b"):
            gate("sp").fail(["put", "put_many"], key)
            gate("sw").fail(["put", "put_many"], key)
            await mem.put(key, key, tier=Tier.CORTEX)
        for i in range(8):  # CORTEX evicts a, then b
            await mem.put(f"f{i}", i, tier=Tier.CORTEX)
            await mem.flush()
        assert mem.stats()["spill"]["dropped"] == {DROPPED: 2}
        assert tier_stats(mem, Tier.CORTEX)["spills_dropped"] == 2
        assert await mem.get("a") is None and await mem.get("b") is None


async def test_a_dropped_spill_whose_older_copy_cannot_be_removed_marks_it_stale(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """The older copy below a dropped item sits in a failing tier: it is marked stale there,
    so no read returns it."""
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    async with open_memory(clock) as mem:
        await shadowed_low_and_high(mem)
        gate("sp").fail(["put", "put_many"], "k")
        gate("sw").fail(["put", "put_many"], "k")
        gate("sp").fail(["get_many"], "k")  # the removal of low fails
        await mem.put("o3", "o3", tier=Tier.CORTEX)
        await mem.flush()
        assert "k" in gated_data("sp")  # still there, but
        assert "k" in mem._core.by_tier[Tier.PERSISTENT].stale  # type: ignore[union-attr]
        assert await mem.get("k") is None
        assert mem.stats()["spill"]["dropped"] == {DROPPED: 1}
        assert spill_messages(caplog, logging.ERROR) == []


async def test_a_dropped_spill_with_no_older_copy_removes_nothing(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """The drop of an item no spill copied before is quiet apart from its warning."""
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    async with open_memory(clock) as mem:
        gate("sp").fail(["put", "put_many"], "k")
        gate("sw").fail(["put", "put_many"], "k")
        await mem.put("k", "v", tier=Tier.CORTEX)
        await mem.put("o", "o", tier=Tier.CORTEX)  # evicts k: nowhere to go
        await mem.flush()
        assert await mem.get("k") is None
        assert await mem.get("o") == "o"
        assert mem.stats()["spill"]["dropped"] == {DROPPED: 1}
        assert spill_messages(caplog, logging.ERROR) == []
        assert spiller_of(mem).copies == {}


# -- what a write forgets -----------------------------------------------------------------------


async def test_a_put_over_a_spilled_copy_makes_it_the_tiers_own_item(
        clock: ManualClock) -> None:
    """After SESSION's item spilled into CORTEX, a put to CORTEX is CORTEX's own item: its
    staples and ttl(tier=) work on it, and no copy is tracked any more."""
    async with open_memory(clock, cortex=4) as mem:
        await mem.put("k", 1, tier=Tier.SESSION)
        await mem.put("o", 0, tier=Tier.SESSION)  # k spills into CORTEX
        assert spiller_of(mem).copies == {"k": 0b10}
        await mem.put("k", 5, tier=Tier.CORTEX)
        assert mem.stats()["spill"]["tracked_copies"] == 0
        assert await mem.ttl("k", tier=Tier.CORTEX) == math.inf
        assert await mem.incr("k", tier=Tier.CORTEX) == 6
        assert await mem.get("k") == 6


async def test_an_item_in_transit_does_not_make_the_older_copy_below_its_own(
        clock: ManualClock) -> None:
    """While SESSION's item that had spilled into CORTEX moves on (held before PERSISTENT
    takes it), the copy of CORTEX's older item in PERSISTENT is still CORTEX's item: a
    staple on PERSISTENT does not see it."""
    async with open_memory(clock) as mem:
        await shadowed_low_and_high(mem)
        g = gate("sp")
        g.hold("put", "k")
        try:
            await mem.put("o3", "o3", tier=Tier.CORTEX)  # CORTEX evicts high: on its way
            assert await g.wait_blocked("put", "k")
            assert spiller_of(mem).copies["k"] == 0b100
            assert_bookkeeping_consistent(mem)
            assert await mem.ttl("k", tier=Tier.PERSISTENT) is None
        finally:
            g.release_all()
        await mem.flush()
        assert await mem.get("k") == "high"
        assert spiller_of(mem).copies["k"] == 0b100
        assert await mem.ttl("k", tier=Tier.PERSISTENT) is None
        assert_bookkeeping_consistent(mem)


async def test_delete_forgets_every_copy(clock: ManualClock) -> None:
    """A delete leaves no copy tracked for its key."""
    async with open_memory(clock) as mem:
        await shadowed_low_and_high(mem)
        assert await mem.delete("k") is True
        assert mem.stats()["spill"]["tracked_copies"] == len(spiller_of(mem).copies)
        assert "k" not in spiller_of(mem).copies
        assert "k" not in spiller_of(mem).origins
        assert_bookkeeping_consistent(mem)


async def test_clearing_a_slower_tier_forgets_the_copies_it_held(clock: ManualClock) -> None:
    """clear(tier=PERSISTENT) removes a copy a spill left there, and no copy stays tracked."""
    async with open_memory(clock) as mem:
        await mem.put("k", "v", tier=Tier.CORTEX)
        await mem.put("o", "o", tier=Tier.CORTEX)  # k spills to PERSISTENT
        await mem.flush()
        assert mem.stats()["spill"]["tracked_copies"] == 1
        assert await mem.clear(tier=Tier.PERSISTENT) == 1
        assert mem.stats()["spill"]["tracked_copies"] == 0
        assert await mem.get("k") is None
        assert_bookkeeping_consistent(mem)


# -- clear of an in-process tier ----------------------------------------------------------------


async def test_clear_of_the_fastest_tier_takes_its_items_from_every_in_process_tier_below(
        clock: ManualClock) -> None:
    """GPU's items spilled into SESSION and on into CORTEX: clear(tier=GPU) takes them
    from both."""
    async with Memory.open(clock=clock, purge_interval=0, promote=False, gpu_reserve=0, tiers={
            Tier.GPU: "memory://?max_items=1", Tier.SESSION: "memory://?max_items=1",
            Tier.CORTEX: "memory://?max_items=4", Tier.PERSISTENT: "gated://sp",
            Tier.VECTOR: None, Tier.WORKFLOW: None}) as mem:
        for k in ("a", "b", "c"):
            await mem.put(k, np.arange(3.0), tier=Tier.GPU)
        # a spilled into SESSION and on into CORTEX, b into SESSION, c is in GPU
        assert await mem.keys(Tier.SESSION) == ["b"] and await mem.keys(Tier.CORTEX) == ["a"]
        assert await mem.clear(tier=Tier.GPU) == 3
        for k in ("a", "b", "c"):
            assert await mem.get(k) is None
        assert mem.stats()["spill"]["tracked_copies"] == 0


async def test_clear_of_an_in_process_tier_removes_its_spilled_items_slowest_first(
        clock: ManualClock) -> None:
    """CORTEX's item a spilled to PERSISTENT, b to WORKFLOW (PERSISTENT failed then):
    clear(tier=CORTEX) removes b from WORKFLOW before a from PERSISTENT."""
    a, b = apart(2)
    async with open_memory(clock) as mem:
        await mem.put(a, "va", tier=Tier.CORTEX)
        await mem.put("o", "o", tier=Tier.CORTEX)  # a spills to PERSISTENT
        await mem.flush()
        gate("sp").fail(["put", "put_many"], b)
        await mem.put(b, "vb", tier=Tier.CORTEX)
        await mem.put("o2", "o2", tier=Tier.CORTEX)  # b spills to WORKFLOW
        await mem.flush()
        assert a in gated_data("sp") and b in gated_data("sw")
        g = gate("sp")
        g.hold("get_many", a)
        clearing = asyncio.ensure_future(mem.clear(tier=Tier.CORTEX))
        try:
            assert await g.wait_blocked("get_many", a, unless=clearing)
            assert b not in gated_data("sw"), "a faster tier's copy went first"
        finally:
            g.release_all()
        assert await clearing >= 2
        assert a not in gated_data("sp")
        assert await mem.get(a) is None and await mem.get(b) is None


# -- what is spilled ----------------------------------------------------------------------------


async def test_a_spilled_item_keeps_its_metadata(clock: ManualClock) -> None:
    """The copy a spill writes below carries the item's meta, version and creation time."""
    async with open_memory(clock) as mem:
        await mem.put("k", "v", tier=Tier.CORTEX, meta={"source": "test"})
        before = await mem.get_entry("k")
        await mem.put("o", "o", tier=Tier.CORTEX)  # k spills to PERSISTENT
        await mem.flush()
        entry = await mem.get_entry("k")
        assert before is not None and entry is not None
        assert entry.tier is Tier.PERSISTENT and entry.home
        assert entry.meta == {"source": "test"}
        assert (entry.version, entry.created_at) == (before.version, before.created_at)
        assert mem.stats()["spill"]["moved"] == 1


async def test_a_value_that_became_unencodable_is_dropped_with_its_reason(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A live list changed after the put so that no codec can store it: its spill is dropped
    with the reason, and the items beside it in the batch still go in one call."""
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    y, bad, z, first = apart(4)
    async with open_memory(clock, cortex=1) as mem:
        g = gate("sp")
        g.hold("put", first)
        try:
            value: list[Any] = [1]
            await put_two_holding_the_first(mem, g, first, y, values=(0, 1))
            await mem.put(bad, value, tier=Tier.CORTEX)  # y waits in the buffer
            await mem.put(z, 2, tier=Tier.CORTEX)  # bad waits
            await mem.put("last", 3, tier=Tier.CORTEX)  # z waits
            value.append({1, 2})  # a set: the codec cannot store it
        finally:
            g.release_all()
        await mem.flush()
        reason = "cannot be encoded: UnsupportedValueError"
        assert mem.stats()["spill"]["dropped"] == {reason: 1}
        assert await mem.get(bad) is None
        assert await mem.get(y) == 1 and await mem.get(z) == 2
        assert ("put_many", (y, z)) in g.log, "the batch was split"
        assert spill_messages(caplog, logging.WARNING) == [
            f"spill of an item from Tier.CORTEX dropped: {reason}"]


async def test_an_item_that_expires_in_transit_is_not_spilled(clock: ManualClock) -> None:
    """An item whose TTL ends while it waits in the spill buffer is not written below, and
    the live items beside it still go in one call."""
    y, old, z, first = apart(4)
    async with open_memory(clock, cortex=1) as mem:
        g = gate("sp")
        g.hold("put", first)
        try:
            await put_two_holding_the_first(mem, g, first, y, values=(0, 1))
            await mem.put(old, "old", tier=Tier.CORTEX, ttl=5)
            await mem.put(z, 2, tier=Tier.CORTEX)
            await mem.put("last", 3, tier=Tier.CORTEX)
            clock.advance(10)
        finally:
            g.release_all()
        await mem.flush()
        assert old not in gated_data("sp")
        assert await mem.get(old) is None
        assert ("put_many", (y, z)) in g.log
        spill = mem.stats()["spill"]
        assert spill["items"] == 0 and spill["dropped"] == {} and spill["moved"] == 3


# -- a bug in the spill worker ------------------------------------------------------------------


class FailingOnce:
    """A codec whose encode raises a plain (non-library) error once per listed value."""

    def __init__(self, codec: Codec, values: list[Any]) -> None:
        self.codec = codec
        self.values = values
        self.name = codec.name

    def encode(self, value: Any) -> bytes:
        if value in self.values:
            self.values.remove(value)
            raise RuntimeError("boom")
        return self.codec.encode(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.codec, name)


async def test_a_bug_while_spilling_drops_the_batch_and_is_logged(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected error while spilling drops the items of that batch ("spill failed"),
    logs it once as an error, and the spiller goes on with later items."""
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    async with open_memory(clock) as mem:
        sp = spiller_of(mem)
        sp.codec = FailingOnce(sp.codec, ["bad"])  # type: ignore[assignment]
        await mem.put("k", "bad", tier=Tier.CORTEX)
        await mem.put("o", "o", tier=Tier.CORTEX)  # k spills: the encode raises
        await mem.flush()
        assert await mem.get("k") is None
        assert mem.stats()["spill"]["dropped"] == {"spill failed": 1}
        assert tier_stats(mem, Tier.CORTEX)["spills_dropped"] == 1
        assert spill_messages(caplog, logging.ERROR) == [
            "spilling 1 items failed: RuntimeError('boom')"]
        assert spill_messages(caplog, logging.WARNING) == [
            "spill of an item from Tier.CORTEX dropped: spill failed"]
        await mem.put("o2", "o2", tier=Tier.CORTEX)  # o spills as usual
        await mem.flush()
        assert "o" in gated_data("sp")
        assert mem.stats()["spill"]["items"] == 0


async def spin(times: int = 20) -> None:
    """Let the loop run ``times`` rounds (the spiller's worker and the waiting puts step)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def put_two_holding_the_first(mem: Memory, g: Gate, first: str, second: str,
                                    values: tuple[Any, Any] = (1, 2)) -> None:
    """Put ``first`` then ``second`` to CORTEX (one item): ``first`` is evicted and its spill
    to PERSISTENT waits at ``g`` (the caller holds its puts); ``second`` is then what the
    next put evicts."""
    await mem.put(first, values[0], tier=Tier.CORTEX)
    await mem.put(second, values[1], tier=Tier.CORTEX)
    assert await g.wait_blocked("put", first)


def open_one_in_transit(clock: ManualClock) -> Memory:
    """A spill buffer of one item below in-process SESSION and CORTEX of one item each, over
    gated PERSISTENT ("sp") and WORKFLOW ("sw"), promotion off."""
    return Memory.open(clock=clock, purge_interval=0, promote=False, spill_max_items=1,
                       tiers={Tier.GPU: None, Tier.SESSION: "memory://?max_items=1",
                              Tier.CORTEX: "memory://?max_items=1",
                              Tier.PERSISTENT: "gated://sp", Tier.VECTOR: None,
                              Tier.WORKFLOW: "gated://sw"})


async def test_closing_the_spiller_releases_a_put_waiting_for_room(clock: ManualClock) -> None:
    """A put that waits for room in a full spill buffer returns when the spiller closes."""
    async with open_one_in_transit(clock) as mem:
        g = gate("sp")
        g.hold("put")
        try:
            await put_two_holding_the_first(mem, g, "c1", "c2")
            waiting = asyncio.ensure_future(mem.put("c3", 3, tier=Tier.CORTEX))  # c2 waits
            await spin()
            assert not waiting.done() and mem.stats()["spill"]["waits"] >= 1
            await spiller_of(mem).close()
            await spin()
            assert waiting.done()
            await waiting
        finally:
            g.release_all()


def test_an_eviction_outside_an_event_loop_waits_for_the_next_flush(
        clock: ManualClock) -> None:
    """An item evicted where no event loop runs stays in the spill buffer (readable) and
    is spilled by the next flush."""
    mem = open_memory(clock)
    cortex = mem._core.by_tier[Tier.CORTEX]
    assert isinstance(cortex, InProcessTier)
    spiller_of(mem).evicted(cortex, "k", Record("v", None, True, 3, 1, 0.0, {}))
    assert mem.stats()["spill"]["items"] == 1

    async def later() -> None:
        try:
            assert await mem.get("k") == "v"
            await mem.flush()
            assert "k" in gated_data("sp")
            assert mem.stats()["spill"]["items"] == 0
        finally:
            await mem.close()

    asyncio.run(later())


# -- eviction -----------------------------------------------------------------------------------


async def test_an_in_process_spill_keeps_the_items_expiry_and_metadata(
        clock: ManualClock) -> None:
    """SESSION's item spilled into CORTEX keeps its TTL and meta, and counts one spill."""
    async with open_memory(clock, cortex=4) as mem:
        await mem.put("k", "v", tier=Tier.SESSION, ttl=50, meta={"m": 1})
        await mem.put("o", "o", tier=Tier.SESSION)  # k spills into CORTEX
        await mem.put("o2", "o2", tier=Tier.SESSION)  # o spills into CORTEX
        entry = await mem.get_entry("k")
        assert entry is not None and entry.tier is Tier.CORTEX
        assert entry.expires_at == clock.time() + 50
        assert entry.meta == {"m": 1}
        assert tier_stats(mem, Tier.SESSION)["spills"] == 2
        assert tier_stats(mem, Tier.CORTEX)["spills"] == 0
        clock.advance(60)
        assert await mem.get("k") is None


async def test_evicted_copies_and_expired_items_do_not_spill(clock: ManualClock) -> None:
    """A promoted copy evicted from SESSION is dropped, not spilled; so is an expired item."""
    async with open_memory(clock, cortex=4, promote=True) as mem:
        await mem.put("p", "vp", tier=Tier.PERSISTENT)
        assert await mem.get("p") == "vp"
        await mem.flush()  # promoted: a copy in SESSION
        entry = await mem.get_entry("p")
        assert entry is not None and entry.tier is Tier.SESSION and not entry.home
        await mem.put("t", "vt", tier=Tier.SESSION, ttl=5)  # evicts the copy of p
        clock.advance(10)
        await mem.put("o", "o", tier=Tier.SESSION)  # evicts t, expired
        await mem.flush()
        assert await mem.keys(Tier.CORTEX) == []
        assert tier_stats(mem, Tier.SESSION)["spills"] == 0
        assert mem.stats()["spill"]["tracked_copies"] == 0


async def test_an_item_too_large_for_the_next_tier_goes_to_the_one_after(
        clock: ManualClock) -> None:
    """CORTEX refuses SESSION's evicted item for its size: it spills on to PERSISTENT."""
    async with Memory.open(clock=clock, purge_interval=0, promote=False, tiers={
            Tier.GPU: None, Tier.SESSION: "memory://?max_items=1",
            Tier.CORTEX: "memory://?max_bytes=64", Tier.PERSISTENT: "gated://sp",
            Tier.VECTOR: None, Tier.WORKFLOW: None}) as mem:
        await mem.put("big", "x" * 200, tier=Tier.SESSION)
        await mem.put("o", "o", tier=Tier.SESSION)  # big spills past CORTEX
        await mem.flush()
        assert "big" in gated_data("sp")
        assert await mem.get("big") == "x" * 200
        assert mem.stats()["spill"]["dropped"] == {}


async def test_an_item_with_no_tier_below_is_dropped_and_counted(clock: ManualClock) -> None:
    """With SESSION the only tier, its evicted items are dropped: "no tier below"."""
    async with Memory.open(clock=clock, purge_interval=0, tiers={
            Tier.GPU: None, Tier.SESSION: "memory://?max_items=1", Tier.CORTEX: None,
            Tier.PERSISTENT: None, Tier.VECTOR: None, Tier.WORKFLOW: None}) as mem:
        for i in range(3):
            await mem.put(f"k{i}", i, tier=Tier.SESSION)
        assert mem.stats()["spill"]["dropped"] == {"no tier below": 2}
        assert tier_stats(mem, Tier.SESSION)["spills_dropped"] == 2
        assert await mem.get("k0") is None and await mem.get("k2") == 2


async def test_an_item_evicted_from_a_pure_cache_tier_is_dropped_and_counted(
        clock: ManualClock) -> None:
    """A tier configured cache_only drops what it evicts, with its reason."""
    async with Memory.open(clock=clock, purge_interval=0, cache_only=frozenset({Tier.SESSION}),
                           tiers={Tier.GPU: None, Tier.SESSION: "memory://?max_items=1",
                                  Tier.CORTEX: "memory://", Tier.PERSISTENT: None,
                                  Tier.VECTOR: None, Tier.WORKFLOW: None}) as mem:
        for i in range(3):
            await mem.put(f"k{i}", i, tier=Tier.SESSION)
        assert mem.stats()["spill"]["dropped"] == {"evicted from a pure-cache tier": 2}
        assert tier_stats(mem, Tier.SESSION)["spills_dropped"] == 2
        assert tier_stats(mem, Tier.SESSION)["spills"] == 0
        assert await mem.keys(Tier.CORTEX) == []


async def test_the_spill_buffer_counts_its_items_and_bytes(clock: ManualClock) -> None:
    """While the spill is held, the buffer's stats count each waiting item once, a key
    evicted twice included; once it drains they are back to zero."""
    first, a, b, c = apart(4)
    async with open_memory(clock, cortex=1) as mem:
        g = gate("sp")
        g.hold("put", first)
        try:
            await put_two_holding_the_first(mem, g, first, "x", values=(0, 1))
            await mem.put_many({a: "1", b: "2"}, tier=Tier.CORTEX)  # x and a wait
            await mem.put_many({a: "333", c: "4"}, tier=Tier.CORTEX)  # b, a again
            sp = spiller_of(mem)
            stats = mem.stats()["spill"]
            assert stats["items"] == 4 == len(sp.buffer)
            assert stats["bytes"] == sum(p.record.size for p in sp.buffer.values())
            assert stats["peak_items"] == 4
        finally:
            g.release_all()
        await mem.flush()
        stats = mem.stats()["spill"]
        assert (stats["items"], stats["bytes"]) == (0, 0)
        assert await mem.get(a) == "333"
        assert stats == {"items": 0, "bytes": 0, "max_items": 10_000,
                         "max_bytes": mem.config.spill_max_bytes, "peak_items": 4,
                         "moved": 4, "waits": 0, "dropped": {}, "tracked_copies": 4}
        await mem.delete(a)
        assert mem.stats()["spill"]["bytes"] == 0


# -- promotion ----------------------------------------------------------------------------------


def open_promoting(clock: ManualClock, session: str = "memory://", **kw: Any) -> Memory:
    return Memory.open(clock=clock, purge_interval=0, gpu_reserve=0, tiers={
        Tier.GPU: kw.pop("gpu", None), Tier.SESSION: session, Tier.CORTEX: None,
        Tier.PERSISTENT: "gated://pp", Tier.VECTOR: None, Tier.WORKFLOW: None}, **kw)


async def test_promotion_stats_count_what_is_queued_dropped_and_done(
        clock: ManualClock) -> None:
    """A full promotion queue drops the next promotions (each counted); the queued one is
    done once the worker runs."""
    async with open_promoting(clock, promotion_queue=1) as mem:
        for i, k in enumerate("abc"):
            await mem.put(k, i, tier=Tier.PERSISTENT)
        for i, k in enumerate("abc"):
            assert await mem.get(k) == i  # no yield in between: the worker has not run
        assert mem.stats()["promotion"] == {"queued": 1, "max_queued": 1, "dropped": 2,
                                            "done": 0, "refused": 0}
        assert mem.stats()["promotions_queued"] == 1
        assert mem.stats()["promotions_dropped"] == 2
        await mem.flush()
        assert mem.stats()["promotion"] == {"queued": 0, "max_queued": 1, "dropped": 2,
                                            "done": 1, "refused": 0}
        assert await mem.keys(Tier.SESSION) == ["a"]
        assert await mem.get("b") == 1
        await mem.flush()
        assert mem.stats()["promotion"]["done"] == 2
        assert tier_stats(mem, Tier.SESSION)["promotions"] == 2


async def test_an_array_read_where_there_is_no_gpu_tier_is_promoted_on_its_first_hit(
        clock: ManualClock) -> None:
    """Without a GPU tier an array is a plain value: SESSION gets it on the first hit."""
    async with open_promoting(clock) as mem:
        await mem.put("arr", np.arange(3.0), tier=Tier.PERSISTENT)
        assert np.array_equal(await mem.get("arr"), np.arange(3.0))
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["arr"]


async def test_a_hit_in_a_remote_session_tier_is_not_copied_onto_itself(
        clock: ManualClock) -> None:
    """SESSION is a slow tier under a GPU tier: a plain value read there stays its item."""
    async with open_promoting(clock, "gated://ss", gpu="host://?memory=4KiB") as mem:
        await mem.put("k", "v", tier=Tier.SESSION)
        assert await mem.get("k") == "v"
        await mem.flush()
        assert gated_data("ss")["k"].home is True
        assert mem.stats()["promotion"]["done"] == 0


def admitting(value: Any) -> str:
    """An LRU tier with admission whose byte bound holds one ``value`` (items unbounded)."""
    n = len(codec_from_name("msgpack", None).encode(value))  # a promoted copy's size
    return f"memory://?max_items=0&max_bytes={n + n // 2}&policy=lru&admission=1"


async def test_a_promoted_copy_keeps_the_items_metadata(clock: ManualClock) -> None:
    """The copy promotion makes in SESSION is marked a copy and keeps the item's version,
    creation time, expiry and meta."""
    async with open_promoting(clock) as mem:
        await mem.put("k", "v", tier=Tier.PERSISTENT, ttl=100, meta={"m": 2})
        stored = await mem.get_entry("k", promote=False)
        clock.advance(5)
        assert await mem.get("k") == "v"
        await mem.flush()
        entry = await mem.get_entry("k")
        assert stored is not None and entry is not None
        assert entry.tier is Tier.SESSION and entry.home is False
        assert (entry.version, entry.created_at, entry.expires_at, entry.meta) == (
            stored.version, stored.created_at, stored.expires_at, {"m": 2})


async def test_admission_refuses_copies_seen_less_often_than_their_victim(
        clock: ManualClock) -> None:
    """With admission on, keys offered once do not displace one offered as often: each
    refusal is counted and the tier keeps its item."""
    async with open_promoting(clock, admitting("v" * 3)) as mem:
        for k in ("hot", "cold1", "cold2"):
            await mem.put(k, k[0] * 3, tier=Tier.PERSISTENT)
        assert await mem.get("hot") == "hhh"
        await mem.flush()  # admitted: SESSION was empty
        for k in ("cold1", "cold2"):
            assert await mem.get(k) == "ccc"
            await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["hot"]
        assert mem.stats()["promotion"]["refused"] == 2
        assert mem.stats()["promotion"]["done"] == 1


@pytest.mark.parametrize("policy", ["lru", "fifo", "sieve", "s3fifo", "adaptive"])
async def test_admission_holds_against_a_scan_read_without_a_pause(
        clock: ManualClock, policy: str) -> None:
    """A scan read in one go (no await that lets the promotion worker run, or one get_many)
    is judged copy by copy as the worker installs it, against what the tier holds by then:
    the hot keys (each offered once, as each key of the scan is) stay, and every copy of the
    scan past the tier's free room is refused."""
    session = f"memory://?max_items=20&policy={policy}&admission=1"
    async with open_promoting(clock, session, promotion_queue=1000) as mem:
        await mem.put_many({f"h{i}": i for i in range(10)} | {f"s{i}": i for i in range(200)},
                           tier=Tier.PERSISTENT)
        for i in range(10):
            await mem.get(f"h{i}")
        await mem.flush()
        for i in range(100):
            assert await mem.get(f"s{i}") == i
        assert len(await mem.get_many([f"s{i}" for i in range(100, 200)])) == 100
        await mem.flush()
        held = set(await mem.keys(Tier.SESSION))
        assert {f"h{i}" for i in range(10)} <= held, (policy, sorted(held))
        assert len(held) == 20
        assert mem.stats()["promotion"]["refused"] == 190


@pytest.mark.parametrize("policy", ["lru", "fifo"])
async def test_admission_counts_writes_to_the_tier(clock: ManualClock, policy: str) -> None:
    """Keys written to the tier itself count as seen: a scan of keys offered once from a
    slower tier does not displace them, even where the policy evicts them first."""
    session = f"memory://?max_items=20&policy={policy}&admission=1"
    async with open_promoting(clock, session) as mem:
        await mem.put_many({f"s{i}": i for i in range(200)}, tier=Tier.PERSISTENT)
        for i in range(10):
            await mem.put(f"h{i}", i, tier=Tier.SESSION)
        for i in range(200):
            assert await mem.get(f"s{i}") == i
            await mem.flush()
        held = set(await mem.keys(Tier.SESSION))
        assert {f"h{i}" for i in range(10)} <= held, sorted(held)
        assert mem.stats()["promotion"]["refused"] == 190
        # A key offered again beats a key written once: it gets in.
        assert await mem.get("s150") == 150
        await mem.flush()
        assert "s150" in await mem.keys(Tier.SESSION)


async def test_gpu_admission_refuses_arrays_seen_less_often_than_its_victim(
        clock: ManualClock) -> None:
    """Admission on the GPU tier: arrays offered once (on their second hit) do not displace
    one offered as often; each still goes to SESSION."""
    arr = np.zeros(2)
    async with open_promoting(clock, gpu=admitting(arr)) as mem:
        for k in ("hot", "cold1", "cold2"):
            await mem.put(k, arr, tier=Tier.PERSISTENT)
        for k in ("hot", "cold1", "cold2"):
            for _ in range(2):
                assert (await mem.get(k)) is not None
                await mem.flush()
        assert await mem.keys(Tier.GPU) == ["hot"]
        assert await mem.keys(Tier.SESSION) == ["cold1", "cold2", "hot"]
        assert mem.stats()["promotion"]["refused"] == 2
        assert mem.stats()["promotion"]["done"] == 4


async def test_a_copy_whose_item_expired_before_it_was_installed_is_not_made(
        clock: ManualClock) -> None:
    """A promotion of an item that expires before the worker installs it installs nothing."""
    async with open_promoting(clock) as mem:
        await mem.put("k", 1, tier=Tier.PERSISTENT, ttl=10)
        assert await mem.get("k") == 1
        clock.advance(20)
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == []
        assert mem.stats()["promotion"]["done"] == 0


async def test_a_promotion_into_a_remote_tier_copies_the_stored_payload(
        clock: ManualClock) -> None:
    """SESSION is a slow tier here: the copy written there is the payload as stored, marked
    as a copy, and it clears the key's stale mark so reads find it there."""
    async with open_promoting(clock, "gated://ss") as mem:
        gate("ss").fail(["get_many"], "k")  # the put below cannot clear SESSION
        await mem.put("k", {"a": 1}, tier=Tier.PERSISTENT)
        session = mem._core.by_tier[Tier.SESSION]
        assert "k" in session.stale  # type: ignore[union-attr]
        assert await mem.get("k") == {"a": 1}
        await mem._core.promoter.drain()
        copy = gated_data("ss")["k"]
        stored = gated_data("pp")["k"]
        assert copy.home is False
        assert (copy.payload, copy.size, copy.version, copy.created_at, copy.extra) == (
            stored.payload, stored.size, stored.version, stored.created_at, stored.extra)
        assert "k" not in session.stale  # type: ignore[union-attr]
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and entry.tier is Tier.SESSION and entry.value == {"a": 1}
        assert tier_stats(mem, Tier.SESSION)["promotions"] == 1


async def test_a_promotion_into_a_failing_remote_tier_is_skipped(clock: ManualClock) -> None:
    """A copy the target tier fails to take is not counted; the read still answered."""
    async with open_promoting(clock, "gated://ss") as mem:
        await mem.put("k", 1, tier=Tier.PERSISTENT)
        gate("ss").fail(["put"], "k")
        assert await mem.get("k") == 1
        await mem.flush()
        assert "k" not in gated_data("ss")
        assert mem.stats()["promotion"]["done"] == 0
        assert tier_stats(mem, Tier.SESSION)["promotions"] == 0


async def test_an_array_too_large_for_the_gpu_pool_is_promoted_to_session_only(
        clock: ManualClock) -> None:
    """On its second hit an array goes to GPU and SESSION, unless the GPU pool cannot hold
    it: then to SESSION alone."""
    async with open_promoting(clock, gpu="host://?memory=4KiB") as mem:
        await mem.put("big", np.zeros(2048), tier=Tier.PERSISTENT)  # 16 KiB
        await mem.put("small", np.zeros(8), tier=Tier.PERSISTENT)
        for _ in range(2):
            for k in ("big", "small"):
                assert (await mem.get(k)) is not None
            await mem.flush()
        assert await mem.keys(Tier.GPU) == ["small"]
        assert await mem.keys(Tier.SESSION) == ["big", "small"]
        assert tier_stats(mem, Tier.GPU)["promotions"] == 1
        assert mem.stats()["promotion"]["done"] == 3


async def test_first_array_hits_are_remembered_for_a_bounded_number_of_keys(
        clock: ManualClock) -> None:
    """The promoter remembers first hits of at most 10,000 arrays, forgetting the oldest."""
    async with open_promoting(clock, gpu="host://?memory=4KiB") as mem:
        promoter = mem._core.promoter
        found = mem._core.by_tier[Tier.PERSISTENT]
        arr = np.zeros(2)
        assert promoter.targets("k0", arr, found) == []
        for i in range(1, 10_001):
            promoter.targets(f"k{i}", arr, found)
        assert len(promoter.array_hits) == 10_000
        assert "k0" not in promoter.array_hits and "k1" in promoter.array_hits
        assert promoter.targets("k0", arr, found) == []  # a first hit again
        gpu, session = mem._core.by_tier[Tier.GPU], mem._core.by_tier[Tier.SESSION]
        assert promoter.targets("k2", arr, found) == [gpu, session]
        assert "k2" not in promoter.array_hits


async def test_an_item_superseded_while_the_spill_waited_for_its_key_is_skipped(
        clock: ManualClock) -> None:
    """The spill worker waits for a key a put holds; the put supersedes the item in transit.
    The worker skips it and still spills the items beside it in one call."""
    first, y, x, z = apart(4)
    async with open_memory(clock, cortex=1) as mem:
        g = gate("sp")
        g.hold("put", first)
        g.hold("put", x)
        try:
            await mem.put(first, "old", tier=Tier.CORTEX)
            await mem.put(y, f"old-{y}", tier=Tier.CORTEX)  # first is on its way, held
            assert await g.wait_blocked("put", first)
            for k in (x, z, "last"):  # each put evicts the one before into the buffer
                await mem.put(k, f"old-{k}", tier=Tier.CORTEX)
            writer = asyncio.ensure_future(mem.put(x, "new", tier=Tier.PERSISTENT))
            assert await g.wait_blocked("put", x, unless=writer)  # the put holds x
            g.release("put", first)
            for _ in range(50):  # the worker takes its next batch and waits for x
                await asyncio.sleep(0)
        finally:
            g.release_all()
        await writer
        await mem.flush()
        assert await mem.get(x) == "new"
        assert ("put_many", (y, z)) in g.log, "the batch was split"
        assert await mem.get(y) == f"old-{y}" and await mem.get(z) == f"old-{z}"


async def test_a_promotion_the_target_refuses_is_logged_and_the_worker_goes_on(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A copy the (slow) SESSION tier refuses as too large costs only that promotion: it is
    logged at debug level with its key, and the next promotion is made."""
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    async with open_promoting(clock, "gated://ss") as mem:
        backend = mem._core.by_tier[Tier.SESSION].backend
        put = backend.put

        async def refusing(key: str, record: Record) -> None:
            if key == "big":
                raise ValueTooLargeError(record.size, 4, "the test's row limit")
            await put(key, record)

        backend.put = refusing  # type: ignore[method-assign]
        await mem.put("big", "v" * 10, tier=Tier.PERSISTENT)
        await mem.put("k", 1, tier=Tier.PERSISTENT)
        assert await mem.get("big") == "v" * 10
        await mem.flush()
        assert await mem.get("k") == 1
        await mem.flush()
        assert "big" not in gated_data("ss") and "k" in gated_data("ss")
        size = gated_data("pp")["big"].size
        assert [r.getMessage() for r in caplog.records
                if r.name == "sophia_memory.promotion"] == [
            f"promotion of 'big' failed: value is {size} bytes, over the limit of 4 bytes "
            "(the test's row limit)"]
        assert mem.stats()["promotion"]["done"] == 1


async def test_closing_stops_the_promotion_worker(clock: ManualClock) -> None:
    """Once the memory is closed its promotion worker has stopped."""
    mem = open_promoting(clock)
    await mem.put("k", 1, tier=Tier.PERSISTENT)
    assert await mem.get("k") == 1
    await mem.flush()
    worker = mem._core.promoter.worker
    assert worker is not None and not worker.done()
    await mem.close()
    assert worker.done()


async def test_a_spill_adds_its_copy_to_those_the_key_already_has(clock: ManualClock) -> None:
    """CORTEX's item spilled to WORKFLOW (PERSISTENT failing), then SESSION's item of the
    same key spilled to PERSISTENT: both copies are tracked, so clear(tier=CORTEX) still
    takes CORTEX's one from WORKFLOW."""
    async with open_memory(clock) as mem:
        await mem.put("k", "low", tier=Tier.CORTEX)
        await mem.put("k", "high", tier=Tier.SESSION)
        gate("sp").fail(["put", "put_many"], "k")
        await mem.put("o", "o", tier=Tier.CORTEX)  # low spills past PERSISTENT to WORKFLOW
        await mem.flush()
        await mem.put("o2", "o2", tier=Tier.SESSION)  # high into CORTEX
        await mem.flush()
        await mem.put("o3", "o3", tier=Tier.CORTEX)  # high on to PERSISTENT
        await mem.flush()
        assert spiller_of(mem).copies["k"] == 0b1100
        assert await mem.clear(tier=Tier.CORTEX) >= 1
        assert "k" not in gated_data("sw")
        assert await mem.get("k") == "high"


async def test_a_spill_into_a_tier_where_the_key_was_stale_makes_it_readable_there(
        clock: ManualClock) -> None:
    """PERSISTENT missed an invalidation of k (marked stale); a later spill of k writes it
    there, and reads then find that newest value, not the older one below."""
    async with open_memory(clock) as mem:
        gate("sp").fail(["get_many"], "k")
        await mem.put("k", "v1", tier=Tier.WORKFLOW)  # PERSISTENT cannot be cleared
        persistent = mem._core.by_tier[Tier.PERSISTENT]
        assert "k" in persistent.stale  # type: ignore[union-attr]
        await mem.put("k", "v2", tier=Tier.CORTEX)
        await mem.put("o", "o", tier=Tier.CORTEX)  # v2 spills to PERSISTENT
        await spiller_of(mem).drain()
        assert "k" not in persistent.stale  # type: ignore[union-attr]
        assert await mem.get("k") == "v2"
        await mem.flush()
        assert await mem.get("k") == "v2"


@pytest.mark.parametrize("bound", ["items", "bytes"])
async def test_a_put_waits_only_while_the_spill_buffer_is_over_its_bound(
        clock: ManualClock, bound: str) -> None:
    """A buffer exactly at its bound (in items or in bytes) lets puts through; each put that
    leaves it over the bound waits, and is counted, until the spiller makes room."""
    size = codec_from_name("msgpack", None).measure("vvvv")
    limits = {"spill_max_items": 2} if bound == "items" else {"spill_max_bytes": 2 * size}
    async with Memory.open(clock=clock, purge_interval=0, promote=False, **limits,
                           tiers={Tier.GPU: None, Tier.SESSION: "memory://?max_items=1",
                                  Tier.CORTEX: "memory://?max_items=1",
                                  Tier.PERSISTENT: "gated://sp", Tier.VECTOR: None,
                                  Tier.WORKFLOW: "gated://sw"}) as mem:
        g = gate("sp")
        g.hold("put", "c1")
        try:
            await put_two_holding_the_first(mem, g, "c1", "c2", values=("vvvv", "vvvv"))
            at_bound = asyncio.ensure_future(mem.put("c3", "vvvv", tier=Tier.CORTEX))
            await spin()
            assert at_bound.done() and mem.stats()["spill"]["items"] == 2
            over = [asyncio.ensure_future(mem.put(f"c{i}", "vvvv", tier=Tier.CORTEX))
                    for i in (4, 5)]
            await spin()
            assert not any(t.done() for t in over)
            assert mem.stats()["spill"]["waits"] == 2
        finally:
            g.release_all()
        await asyncio.gather(*over)
        await mem.flush()
        assert mem.stats()["spill"]["waits"] == 2
        assert mem.stats()["spill"]["items"] == 0


# -- more of the spiller's and the promoter's contracts -----------------------------------------


def test_an_item_in_transit_is_by_default_its_source_tiers_own(clock: ManualClock) -> None:
    """An item in transit records the tier it was put to: its source, unless told otherwise
    (an item that came to the source by a spill itself)."""
    mem = open_memory(clock)
    session, cortex = mem._core.by_tier[Tier.SESSION], mem._core.by_tier[Tier.CORTEX]
    target = mem._core.by_tier[Tier.PERSISTENT]
    assert isinstance(session, InProcessTier) and isinstance(cortex, InProcessTier)
    rec = Record("v", None, True, 3, 1, 0.0, {})
    assert spill_module.Pending("v", rec, cortex, target).origin == cortex.index  # type: ignore[arg-type]
    assert spill_module.Pending("v", rec, cortex, target,  # type: ignore[arg-type]
                                session.index).origin == session.index
    asyncio.run(mem.close())


class Reencoding:
    """A codec that would now encode every value to other bytes than the stored ones."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.name = codec.name

    def encode(self, value: Any) -> bytes:
        return b"re-encoded"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.codec, name)


async def test_a_promotion_between_slow_tiers_copies_the_stored_bytes_as_they_are(
        clock: ManualClock) -> None:
    """A hit in a slow tier promoted into a slow SESSION tier is copied as the bytes stored,
    not encoded again."""
    async with open_promoting(clock, "gated://ss") as mem:
        await mem.put("k", {"a": 1}, tier=Tier.PERSISTENT)
        mem._core.promoter.codec = Reencoding(mem._core.promoter.codec)  # type: ignore[assignment]
        assert await mem.get("k") == {"a": 1}
        await mem.flush()
        assert gated_data("ss")["k"].payload == gated_data("pp")["k"].payload
        assert mem.stats()["promotion"]["done"] == 1


async def test_a_promotion_the_slow_gpu_tier_fails_still_goes_to_session(
        clock: ManualClock) -> None:
    """An array's promotion into a slow GPU tier that fails still copies it into SESSION."""
    async with open_promoting(clock, "gated://ss", gpu="gated://gg") as mem:
        await mem.put("arr", np.arange(3.0), tier=Tier.PERSISTENT)
        gate("gg").fail(["put"], "arr")
        for _ in range(2):
            assert np.array_equal(await mem.get("arr"), np.arange(3.0))
            await mem.flush()
        assert "arr" not in gated_data("gg")
        assert "arr" in gated_data("ss") and not gated_data("ss")["arr"].home
        assert mem.stats()["promotion"]["done"] == 1


class Abort(BaseException):
    """Not an Exception: nothing may swallow it on the way out."""


async def read_k_and_wait_for_its_promotion(
        mem: Memory) -> tuple[Promoter, asyncio.Task[None]]:
    """Put k (1) to PERSISTENT, read it, and wait until the promotion worker the read started
    has finished; the promoter and its finished worker."""
    await mem.put("k", 1, tier=Tier.PERSISTENT)
    assert await mem.get("k") == 1
    promoter = mem._core.promoter
    worker = promoter.worker
    assert worker is not None
    await asyncio.wait([worker])
    return promoter, worker


async def test_closing_the_promoter_lets_through_what_is_not_an_exception(
        clock: ManualClock) -> None:
    """A promotion worker that died of a BaseException that is not an Exception passes it
    on when the promoter is closed (only errors are suppressed there)."""
    async with open_promoting(clock, "gated://ss") as mem:
        backend = mem._core.by_tier[Tier.SESSION].backend

        async def aborting(key: str, record: Record) -> None:
            raise Abort

        backend.put = aborting  # type: ignore[method-assign]
        promoter, _ = await read_k_and_wait_for_its_promotion(mem)
        with pytest.raises(Abort):
            await promoter.close()
        promoter.worker = None  # its outcome is retrieved: the memory closes as usual


def sharing_a_stripe(key: str, *, avoid: tuple[str, ...] = ()) -> str:
    """Another key in ``key``'s stripe of the key order (a writer of it holds ``key``)."""
    i = 0
    while True:
        other = f"mate{i}"
        if (other != key and other not in avoid
                and KeyOrder.stripe(other) == KeyOrder.stripe(key)):
            return other
        i += 1


async def y_waits_for_its_stripe(mem: Memory, y: str, w: str, evictor: str,
                                 value: str) -> asyncio.Future[None]:
    """Make PERSISTENT ("sp") fail y, hold y's stripe with a put of w to PERSISTENT held
    there, and put ``evictor`` to CORTEX so y is evicted into the buffer; the spiller takes
    y (redirected to WORKFLOW) and waits for the stripe. The put of w, still held: the
    caller releases ``gate("sp")`` and awaits it."""
    sp = gate("sp")
    sp.fail(["put", "put_many"], y)
    sp.hold("put", w)
    writer = asyncio.ensure_future(mem.put(w, "vw", tier=Tier.PERSISTENT))
    assert await sp.wait_blocked("put", w, unless=writer)  # holds y's stripe
    await mem.put(evictor, value, tier=Tier.CORTEX)  # evicts y into the buffer
    await spin()  # the spiller takes y and waits for its stripe
    return writer


async def test_a_failing_tier_does_not_hold_back_the_items_bound_for_another(
        clock: ManualClock) -> None:
    """One round of the spiller has y (redirected to WORKFLOW after PERSISTENT failed it)
    and x (bound for PERSISTENT). PERSISTENT fails x too: y is still written to WORKFLOW in
    that round, on its own, and x follows it there in the next."""
    y, x, last = apart(3)
    w = sharing_a_stripe(y, avoid=(x, last))
    async with open_memory(clock, cortex=1) as mem:
        sp, sw = gate("sp"), gate("sw")
        await mem.put(y, "vy", tier=Tier.CORTEX)
        writer = None
        try:
            writer = await y_waits_for_its_stripe(mem, y, w, x, "vx")
            await mem.put(last, "vl", tier=Tier.CORTEX)  # evicts x into the buffer
            sp.fail(["put", "put_many"], x)
        finally:
            sp.release_all()
        assert writer is not None
        await writer
        await mem.flush()
        assert [c for c in sw.log if c[0] in ("put", "put_many")] == [
            ("put", (y,)), ("put", (x,))]
        assert await mem.get(y) == "vy" and await mem.get(x) == "vx"
        assert mem.stats()["spill"]["dropped"] == {}


async def test_an_unencodable_item_does_not_hold_back_the_items_bound_for_another_tier(
        clock: ManualClock) -> None:
    """One round of the spiller has y (redirected to WORKFLOW after PERSISTENT failed it)
    and x (bound for PERSISTENT, no longer encodable). x is dropped, and y is still written
    to WORKFLOW in that round: before z, evicted while x's drop was under way, is written in
    the next round."""
    y, x, z, z2, z3, o, o2, o3 = apart(8)
    w = sharing_a_stripe(y, avoid=(x, z, z2, z3, o, o2, o3))
    async with open_memory(clock, session=1, cortex=2) as mem:
        sp = gate("sp")
        value: list[Any] = [1]
        await mem.put(x, "low", tier=Tier.CORTEX)
        await mem.put(x, value, tier=Tier.SESSION)  # low stays CORTEX's own item
        await mem.put(o, "o", tier=Tier.CORTEX)
        await mem.put(o2, "o2", tier=Tier.CORTEX)  # low spills to PERSISTENT
        await mem.flush()
        await mem.put(y, "vy", tier=Tier.CORTEX)  # o spills
        await mem.put(o3, "o3", tier=Tier.SESSION)  # SESSION's x into CORTEX, o2 spills
        await mem.flush()
        assert spiller_of(mem).copies[x] == 0b110
        writer = None
        try:
            writer = await y_waits_for_its_stripe(mem, y, w, z, "vz")
            await mem.put(z2, "vz2", tier=Tier.CORTEX)  # evicts x into the buffer
            value.append({1, 2})  # a set: the codec cannot store it
            sp.hold("get_many", x)  # the removal of low, when x is dropped
            sp.release("put", w)
            assert await sp.wait_blocked("get_many", x)
            await mem.put(z3, "vz3", tier=Tier.CORTEX)  # evicts z into the buffer
            sp.hold("put", z)
            sp.release("get_many", x)
            assert await sp.wait_blocked("put", z)
            assert y in gated_data("sw"), "y waited for a later round"
        finally:
            sp.release_all()
        assert writer is not None
        await writer
        await mem.flush()
        assert await mem.get(x) is None
        assert await mem.get(y) == "vy" and await mem.get(z) == "vz"
        assert mem.stats()["spill"]["dropped"] == {"cannot be encoded: UnsupportedValueError": 1}


def open_pooled(clock: ManualClock, *, gpu: str | None, session: str) -> Memory:
    """Promotion into pooled tiers: pools "small" (1 KiB) and "big" (64 KiB)."""
    return Memory.open(clock=clock, purge_interval=0, gpu_reserve=0,
                       gpu_pools={"small": "1KiB", "big": "64KiB"}, tiers={
                           Tier.GPU: gpu, Tier.SESSION: session, Tier.CORTEX: None,
                           Tier.PERSISTENT: "gated://pp", Tier.VECTOR: None,
                           Tier.WORKFLOW: None})


async def test_an_array_its_gpu_pool_refuses_is_still_promoted_to_session(
        clock: ManualClock) -> None:
    """An array of a named pool (as an item spilled down from GPU carries) that the GPU's
    default pool could hold but its own pool cannot: the GPU refuses it, SESSION gets it."""
    async with open_pooled(clock, gpu="host://?memory=1MiB&default_pool=big",
                           session="memory://") as mem:
        await mem.put("a", np.zeros(1024), tier=Tier.PERSISTENT, meta={"pool": "small"})
        for _ in range(2):
            assert (await mem.get("a")) is not None
            await mem.flush()
        assert await mem.keys(Tier.GPU) == []
        assert await mem.keys(Tier.SESSION) == ["a"]
        assert mem.stats()["promotion"]["done"] == 1


async def test_a_copy_goes_into_the_pool_its_item_names(clock: ManualClock) -> None:
    """A pooled SESSION tier takes a copy its item's own pool holds, even when its default
    pool could not."""
    async with open_pooled(clock, gpu=None,
                           session="host://?memory=1MiB&default_pool=small") as mem:
        await mem.put("a", np.zeros(1024), tier=Tier.PERSISTENT, meta={"pool": "big"})
        assert (await mem.get("a")) is not None
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["a"]
        assert tier_stats(mem, Tier.SESSION)["promotions"] == 1


# -- waking the puts that wait for room, and closing --------------------------------------------


async def test_puts_waiting_for_room_are_woken_only_once_the_buffer_is_back_within_bound(
        clock: ManualClock) -> None:
    """Two puts wait for room in a spill buffer two items over its bound (its worker held).
    Taking one item (deleted) leaves it still over: the puts keep waiting, not woken to wait
    again (``waits`` stays 2). Taking a second brings it within bound: both return at once,
    while the worker is still held."""
    async with open_one_in_transit(clock) as mem:
        g = gate("sp")
        g.hold("put", "c1")
        try:
            await put_two_holding_the_first(mem, g, "c1", "c2")
            w3 = asyncio.ensure_future(mem.put("c3", 3, tier=Tier.CORTEX))  # c2 evicted
            await spin()
            w4 = asyncio.ensure_future(mem.put("c4", 4, tier=Tier.CORTEX))  # c3 evicted
            await spin()
            sp = spiller_of(mem)
            assert set(sp.buffer) == {"c1", "c2", "c3"}
            assert not w3.done() and not w4.done() and sp.waits == 2
            await mem.delete("c3")  # two items: still over the bound of one
            await spin()
            assert not w3.done() and not w4.done() and sp.waits == 2
            await mem.delete("c2")  # within the bound: both puts go on
            await spin()
            assert w3.done() and w4.done() and sp.waits == 2
            assert g.blocked("put", "c1")
            await asyncio.gather(w3, w4)
        finally:
            g.release_all()
        await mem.flush()
        assert "c1" in gated_data("sp") and sp.stats()["items"] == 0


async def test_a_closed_spiller_starts_no_worker(clock: ManualClock) -> None:
    """Once the spiller is closed an evicted item stays in the buffer (still readable): no
    worker starts to move it, and drain returns at once."""
    async with open_memory(clock) as mem:
        sp = spiller_of(mem)
        await sp.close()
        assert sp.closed is True
        await mem.put("c1", 1, tier=Tier.CORTEX)
        await mem.put("c2", 2, tier=Tier.CORTEX)  # c1 evicted into the buffer
        await spin()
        assert sp._worker is None and list(sp.buffer) == ["c1"]
        await sp.drain()
        assert "c1" not in gated_data("sp") and list(sp.buffer) == ["c1"]
        assert await mem.get("c1") == 1


class Failing(logging.Handler):
    """A logging handler that raises on every record (a broken log sink)."""

    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("log sink down")


async def test_closing_the_spiller_swallows_an_error_its_cancelled_worker_ends_with(
        clock: ManualClock) -> None:
    """The spill worker, cancelled by close() while PERSISTENT's put is in flight, ends with
    an error instead of the cancellation (the backend reports the cancelled put as a lost
    connection, and the log sink the worker reports that to fails): close() still returns."""
    async with open_memory(clock) as mem:
        sp = spiller_of(mem)
        backend = mem._core.by_tier[Tier.PERSISTENT].backend
        started = asyncio.Event()

        async def hanging(key: str, record: Record) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ConnectionResetError("connection lost") from None

        backend.put = hanging  # type: ignore[method-assign]
        await mem.put("c1", 1, tier=Tier.CORTEX)
        await mem.put("c2", 2, tier=Tier.CORTEX)  # c1 on its way, hanging
        await started.wait()
        worker = sp._worker
        assert worker is not None
        spill_log = logging.getLogger("sophia_memory.spill")
        level, handler = spill_log.level, Failing()
        spill_log.setLevel(logging.DEBUG)
        spill_log.addHandler(handler)
        try:
            await sp.close()
        finally:
            spill_log.removeHandler(handler)
            spill_log.setLevel(level)
        assert worker.done() and not worker.cancelled()
        assert isinstance(worker.exception(), RuntimeError)
        assert sp._worker is None


async def test_closing_the_promoter_swallows_the_error_its_worker_died_of(
        clock: ManualClock) -> None:
    """A promotion worker that died of an error (the log sink it reported a failed
    promotion to raised) does not make closing the promoter raise."""
    async with open_promoting(clock, "gated://ss") as mem:
        backend = mem._core.by_tier[Tier.SESSION].backend

        async def refusing(key: str, record: Record) -> None:
            raise ValueTooLargeError(record.size, 4, "the test's row limit")

        backend.put = refusing  # type: ignore[method-assign]
        promotion_log = logging.getLogger("sophia_memory.promotion")
        level, handler = promotion_log.level, Failing()
        promotion_log.setLevel(logging.DEBUG)
        promotion_log.addHandler(handler)
        try:
            promoter, worker = await read_k_and_wait_for_its_promotion(mem)
        finally:
            promotion_log.removeHandler(handler)
            promotion_log.setLevel(level)
        assert isinstance(worker.exception(), RuntimeError)
        await promoter.close()
