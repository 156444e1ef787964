"""The write path (``engine/writes.py``) pinned where mutation testing found it unpinned.

Each test states one property of puts, deletes, clears, the staples' reads (``ttl(tier=)``,
``add``, ``incr``) and the replay of missed invalidations, observed through ``Memory``: the
values read, what each tier holds (``keys``, ``get_entry``), ``stats()``, and for ordering, what
a slower gated tier holds while a faster one is held mid-call. Deterministic: a manual clock,
SQLite and ``gated://`` tiers whose calls are held or failed where a test says.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier, TierUnavailableError
from sophia_memory._logging import RateLimited
from sophia_memory.backends import BackendURL, register
from sophia_memory.engine import writes
from sophia_memory.engine.ordering import MASK
from sophia_memory.errors import BackendError, InvalidArgumentError, VersionConflictError
from sophia_memory.testing import gate, gated_data, reset_gated
from sophia_memory.testing.gated import Gate, GatedBackend
from sophia_memory.tiers import Record, next_version


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    reset_gated()
    yield
    reset_gated()


def _open(tmp_path: Path, clock: ManualClock, name: str,
          tiers: dict[Tier, str | None] | None = None, **kw: Any) -> Memory:
    return Memory.open(path=str(tmp_path / f"{name}.db"), clock=clock, purge_interval=0,
                       gpu_reserve=0, tiers=tiers or {}, **kw)


def _twin(key: str) -> str:
    """Another key in the same lock stripe as ``key``."""
    stripe = hash(key) & MASK
    return next(c for i in range(1_000_000)
                if (c := f"twin{i}") != key and hash(c) & MASK == stripe)


async def _yield(times: int = 50) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# -- the in-process put (Writer.put_nowait) ------------------------------------------------------


async def test_a_promotion_read_before_a_session_put_never_lands(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """A CORTEX hit read before a put to SESSION is never promoted over the put's value,
    also when another write of the same lock stripe follows the put."""
    async with _open(tmp_path, clock, "promo") as mem:
        await mem.put("a", "old", tier=Tier.CORTEX)
        assert await mem.get("a") == "old"  # a promotion is queued
        await mem.put("a", "new")  # SESSION, the in-process put
        await mem.flush()
        assert await mem.get("a") == "new"
        entry = await mem.get_entry("a", promote=False)
        assert entry is not None and (entry.tier, entry.value) == (Tier.SESSION, "new")

        await mem.put("b", "old", tier=Tier.CORTEX)
        assert await mem.get("b") == "old"
        await mem.put("b", "new")
        await mem.put(_twin("b"), 1, tier=Tier.CORTEX)  # the same stripe moves on again
        await mem.flush()
        assert await mem.get("b") == "new"


async def test_an_in_process_put_leaves_promotion_working(tmp_path: Path,
                                                          clock: ManualClock) -> None:
    """After an in-process put of a key, a later hit of it in CORTEX is promoted as usual."""
    async with _open(tmp_path, clock, "parity") as mem:
        await mem.put("c", "session")
        await mem.put("c", "cortex", tier=Tier.CORTEX)
        assert await mem.get("c") == "cortex"
        await mem.flush()
        entry = await mem.get_entry("c", promote=False)
        assert entry is not None and (entry.tier, entry.value) == (Tier.SESSION, "cortex")


async def test_a_session_put_waits_for_a_write_of_the_key_in_progress(
        tmp_path: Path, clock: ManualClock) -> None:
    """A put to SESSION while a put of the same key to CORTEX is half done lands after
    it: the later put's value is the one read."""
    async with _open(tmp_path, clock, "wait", {Tier.CORTEX: "gated://w"}) as mem:
        g = gate("w")
        g.hold("put", key="k", point="after")
        slow = asyncio.create_task(mem.put("k", "cortex", tier=Tier.CORTEX))
        assert await g.wait_blocked("put", key="k", point="after")
        fast = asyncio.create_task(mem.put("k", "session"))
        await _yield()
        g.release("put", key="k", point="after")
        await asyncio.gather(slow, fast)
        assert await mem.get("k") == "session"
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and entry.tier is Tier.SESSION


async def test_put_nowait_refuses_a_home_with_a_remote_promoted_tier_below(
        tmp_path: Path, clock: ManualClock) -> None:
    """Writer.put_nowait goes the general way (False) for an in-process home above a remote
    tier that promotion fills: removing its copy there needs a suspension."""
    async with _open(tmp_path, clock, "remote-session",
                     {Tier.GPU: "host://?memory=1MiB", Tier.SESSION: "gated://rs"}) as mem:
        core = mem._core
        gpu = core.by_tier[Tier.GPU]
        arr = np.zeros(4)
        rec = Record(arr, None, True, arr.nbytes, next_version(), clock.time(), {})
        assert core.writer.put_nowait("k", rec, gpu) is False  # type: ignore[arg-type]
        assert await mem.keys(Tier.GPU) == []


async def test_get_many_reads_again_after_writes_that_ran_meanwhile(
        tmp_path: Path, clock: ManualClock) -> None:
    """A get_many whose CORTEX read overlapped a put to CORTEX (and an in-process put of
    another key) reads the key again: it returns the value that put left."""
    async with _open(tmp_path, clock, "many", {Tier.CORTEX: "gated://m"}) as mem:
        await mem.put("k", "v1", tier=Tier.CORTEX)
        g = gate("m")
        g.hold("get_many", key="k", point="after")
        reading = asyncio.create_task(mem.get_many(["k"]))
        assert await g.wait_blocked("get_many", key="k", point="after")
        await mem.put("k", "v2", tier=Tier.CORTEX)
        await mem.put("other", 1)  # SESSION, the in-process put
        g.release("get_many", key="k", point="after")
        assert await reading == {"k": "v2"}


# -- the item a staple works on (Writer._seen, below, visible) ------------------------------------


async def test_a_staple_passes_over_a_copy_its_tier_missed_an_invalidation_of(
        tmp_path: Path, clock: ManualClock) -> None:
    """incr in CORTEX, where CORTEX's copy is stale (its invalidation failed), counts on the
    newer item below; ttl(tier=CORTEX) reads that one too."""
    async with _open(tmp_path, clock, "stale", {Tier.CORTEX: "gated://st"}) as mem:
        await mem.put("k", 1, tier=Tier.CORTEX)
        gate("st").fail("get_many", key="k")
        await mem.put("k", 10, tier=Tier.PERSISTENT)  # CORTEX's 1 cannot be dropped
        assert "k" in gated_data("st")
        assert await mem.ttl("k", tier=Tier.CORTEX) == math.inf
        assert await mem.incr("k", tier=Tier.CORTEX) == 11
        assert await mem.get("k") == 11


async def test_a_staple_passes_over_a_copy_spilled_from_a_faster_tier(
        tmp_path: Path, clock: ManualClock) -> None:
    """SESSION's item spilled into CORTEX is not CORTEX's own: ttl(tier=CORTEX) finds no
    item and add(tier=CORTEX) stores one."""
    async with _open(tmp_path, clock, "spilled", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        await mem.put("k", "session's", ttl=50)
        await mem.put("x", "evicts k")
        await mem.flush()
        assert "k" in await mem.keys(Tier.CORTEX)  # the spilled copy
        assert await mem.ttl("k", tier=Tier.CORTEX) is None
        assert await mem.add("k", "cortex's", tier=Tier.CORTEX) is True
        assert await mem.get("k") == "cortex's"


async def test_a_staple_in_an_empty_tier_works_on_the_slower_tiers_item(
        tmp_path: Path, clock: ManualClock) -> None:
    """incr in CORTEX with no item there counts on PERSISTENT's and keeps its expiry."""
    async with _open(tmp_path, clock, "below") as mem:
        await mem.put("k", 10, tier=Tier.PERSISTENT, ttl=100)
        assert await mem.incr("k", tier=Tier.CORTEX) == 11
        assert await mem.ttl("k", tier=Tier.CORTEX) == pytest.approx(100)


async def test_ttl_in_a_tier_reads_from_that_tier_down(tmp_path: Path,
                                                        clock: ManualClock) -> None:
    """ttl(tier=) sees the item a read from that tier down finds: never a faster tier's."""
    async with _open(tmp_path, clock, "down", {Tier.GPU: "host://?memory=1MiB"}) as mem:
        await mem.put("k", "persistent's", tier=Tier.PERSISTENT, ttl=50)
        await mem.put("k", "session's", ttl=30)
        assert await mem.ttl("k", tier=Tier.CORTEX) == pytest.approx(50)
        assert await mem.ttl("k", tier=Tier.GPU) == pytest.approx(30)
        assert await mem.add("k", np.zeros(2), tier=Tier.GPU) is False
        assert await mem.ttl("k", tier=Tier.SESSION) == pytest.approx(30)


async def test_ttl_in_a_tier_skips_a_faster_tiers_copy_below_it(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """A SESSION item that spilled past a failing CORTEX into PERSISTENT is skipped by a
    read from CORTEX down, which goes on to WORKFLOW's own item."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1",
                                     Tier.CORTEX: "gated://sk"}
    async with _open(tmp_path, clock, "skip", tiers) as mem:
        await mem.put("k", "workflow's", tier=Tier.WORKFLOW, ttl=70)
        await mem.put("k", "session's")
        gate("sk").fail("put")
        await mem.put("x", "evicts k")
        await mem.flush()
        assert "k" in await mem.keys(Tier.PERSISTENT) and "k" not in gated_data("sk")
        assert await mem.ttl("k", tier=Tier.CORTEX) == pytest.approx(70)


async def test_reads_from_a_tier_skip_only_the_stale_keys_below(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """A key whose invalidation PERSISTENT missed is skipped there (the read goes on to
    WORKFLOW); another key PERSISTENT holds is read there as usual."""
    async with _open(tmp_path, clock, "stale2", {Tier.PERSISTENT: "gated://sp"}) as mem:
        await mem.put("j", "pj", tier=Tier.PERSISTENT, ttl=30)
        await mem.put("k", "pk", tier=Tier.PERSISTENT, ttl=50)
        gate("sp").fail("get_many", key="k")
        await mem.put("k", "wk", tier=Tier.WORKFLOW, ttl=80)  # PERSISTENT misses the drop
        assert "k" in gated_data("sp")
        assert await mem.ttl("k", tier=Tier.CORTEX) == pytest.approx(80)
        assert await mem.ttl("k", tier=Tier.PERSISTENT) == pytest.approx(80)
        assert await mem.ttl("j", tier=Tier.CORTEX) == pytest.approx(30)


# -- step 2: the copies spills made (Writer._drop_spilled) ----------------------------------------


async def test_a_put_to_the_tier_holding_a_spilled_copy_replaces_it(
        tmp_path: Path, clock: ManualClock) -> None:
    """A put to CORTEX where SESSION's item had spilled stores CORTEX's own item there."""
    async with _open(tmp_path, clock, "replace", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        await mem.put("k", "session's")
        await mem.put("x", "evicts k")
        await mem.flush()
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        assert await mem.get("k") == "cortex's"
        assert await mem.ttl("k", tier=Tier.CORTEX) == math.inf
        assert await mem.add("k", "again", tier=Tier.CORTEX) is False


async def test_a_put_removes_spilled_copies_only(tmp_path: Path, clock: ManualClock) -> None:
    """A put to SESSION removes the copy its older item spilled into CORTEX and leaves
    PERSISTENT's own item of the key."""
    async with _open(tmp_path, clock, "only", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        await mem.put("k", "persistent's", tier=Tier.PERSISTENT)
        await mem.put("k", "session's", ttl=100)
        await mem.put("x", "evicts k")
        await mem.flush()
        assert "k" in await mem.keys(Tier.CORTEX)
        await mem.put("k", "newer")
        assert "k" not in await mem.keys(Tier.CORTEX)
        assert "k" in await mem.keys(Tier.PERSISTENT)
        assert await mem.clear(tier=Tier.SESSION) >= 1
        assert await mem.get("k") == "persistent's"


async def _spill_gpu_item_into_session(mem: Memory, key: str, value: Any) -> None:
    await mem.put(key, value, tier=Tier.GPU)
    i = 0
    while key not in await mem.keys(Tier.SESSION):
        await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
        i += 1


async def test_a_gpu_put_removes_the_older_copy_it_spilled_into_session(
        tmp_path: Path, clock: ManualClock) -> None:
    """GPU's older item of a key, spilled into SESSION, goes when the key is put to GPU
    again (also with the very same array object); the spiller tracks exactly the copies
    that remain."""
    async with _open(tmp_path, clock, "gpu", {Tier.GPU: "host://?memory=4KiB"}) as mem:
        for case in ("new array", "same array"):
            key = f"k-{case}"
            first = np.full(8, 1.0)
            await _spill_gpu_item_into_session(mem, key, first)
            again = first if case == "same array" else np.full(8, 2.0)
            await mem.put(key, again, tier=Tier.GPU)
            session = await mem.keys(Tier.SESSION)
            assert key not in session, case
            # every item SESSION holds here is a GPU item spilled into it
            assert mem.stats()["spill"]["tracked_copies"] == len(session)
            got = await mem.get(key)
            assert np.array_equal(got, again)


async def test_a_gpu_batch_keeps_its_own_items_it_spilled(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    """A put_many to a GPU that holds two of its twelve arrays keeps the ten it spilled
    into SESSION, and removes an older copy of one of them from CORTEX."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=4KiB",
                                     Tier.SESSION: "memory://?max_items=20"}
    async with _open(tmp_path, clock, "batch", tiers) as mem:
        await mem.put("b0", "session's old")
        for i in range(20):
            await mem.put(f"s{i}", i)  # b0 spills to CORTEX
        await mem.flush()
        assert "b0" in await mem.keys(Tier.CORTEX)
        items = {f"b{i}": np.full(64, float(i)) for i in range(12)}
        await mem.put_many(items, tier=Tier.GPU)
        got = await mem.get_many(list(items))
        assert sorted(got) == sorted(items)
        assert all(np.array_equal(got[k], v) for k, v in items.items())
        assert "b0" not in await mem.keys(Tier.CORTEX)
        await mem.flush()
        assert "b0" not in await mem.keys(Tier.CORTEX)


async def test_a_gpu_batch_that_spills_through_a_full_session_loses_nothing(
        tmp_path: Path, clock: ManualClock) -> None:
    """Regression: a put_many to GPU whose arrays spill into a SESSION of two items and on to
    CORTEX keeps every one of them (the batch once took its own items out of the spill
    buffer as "older values": a spill into SESSION makes a new record of the same item)."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=4KiB",
                                     Tier.SESSION: "memory://?max_items=2"}
    async with _open(tmp_path, clock, "cascade", tiers) as mem:
        items = {f"b{i}": np.full(64, float(i)) for i in range(12)}
        await mem.put_many(items, tier=Tier.GPU)
        await mem.flush()
        got = await mem.get_many(list(items))
        assert sorted(got) == sorted(items)
        assert all(np.array_equal(got[k], v) for k, v in items.items())
        assert mem.stats()["spill"]["dropped"] == {}


@pytest.mark.parametrize("in_transit", [False, True], ids=["in SESSION", "in transit"])
async def test_a_session_put_is_not_shadowed_by_gpus_older_item_evicted_meanwhile(
        tmp_path: Path, clock: ManualClock, in_transit: bool) -> None:
    """Regression: while a put to SESSION is still removing an older spilled copy from
    CORTEX, GPU evicts its (older) item of the key. That item is superseded: it must land
    neither over the put's value in SESSION nor, when SESSION has already evicted that value
    (in transit to CORTEX), in SESSION in front of it."""
    stripe = hash("k") & MASK
    others = [c for i in range(10_000) if hash(c := f"o{i}") & MASK != stripe][:6]
    # SESSION by LRU: the puts below count on evicting the oldest first.
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=4KiB",
                                     Tier.SESSION: "memory://?max_items=2&policy=lru",
                                     Tier.CORTEX: f"gated://ov{int(in_transit)}"}
    async with _open(tmp_path, clock, f"overwrite{int(in_transit)}", tiers) as mem:
        await mem.put("k", "s0", tier=Tier.SESSION)
        await mem.put("k", np.full(8, 1.0), tier=Tier.GPU)  # shadows SESSION's s0
        for o in others[:3]:
            await mem.put(o, 0, tier=Tier.SESSION)  # s0 spills to CORTEX
        await mem.flush()
        assert "k" in await mem.keys(Tier.CORTEX)
        g = gate(f"ov{int(in_transit)}")
        g.hold(None, key="k")
        put = asyncio.create_task(mem.put("k", "new", tier=Tier.SESSION))
        try:
            assert await g.wait_blocked(key="k")
            if in_transit:
                for o in others[3:]:
                    await mem.put(o, 1, tier=Tier.SESSION)  # SESSION evicts "new"
                assert "k" not in await mem.keys(Tier.SESSION)
            i = 0
            while "k" in await mem.keys(Tier.GPU):  # GPU's older k is evicted
                await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
                i += 1
        finally:
            g.release(None, key="k")
            await put
        assert await mem.get("k") == "new"
        await mem.flush()
        assert await mem.get("k") == "new"
        assert "k" not in await mem.keys(Tier.GPU)


async def test_a_gpu_put_after_its_spilled_copy_expired(tmp_path: Path,
                                                        clock: ManualClock) -> None:
    """GPU's item that spilled into SESSION and expired there (and was discarded by a read)
    does not stop a later put of the key to GPU."""
    async with _open(tmp_path, clock, "expired", {Tier.GPU: "host://?memory=4KiB"}) as mem:
        await mem.put("k", np.full(8, 1.0), tier=Tier.GPU, ttl=5)
        i = 0
        while "k" not in await mem.keys(Tier.SESSION):
            await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
            i += 1
        clock.advance(10)
        assert await mem.get("k") is None  # the expired copy is discarded
        await mem.put("k", np.full(8, 2.0), tier=Tier.GPU)
        assert np.array_equal(await mem.get("k"), np.full(8, 2.0))


async def test_a_session_put_removes_the_copy_spilled_below_a_gpu_copy(
        tmp_path: Path, clock: ManualClock) -> None:
    """With GPU's item of a key spilled into SESSION and SESSION's older item spilled into
    CORTEX, a put to SESSION removes both."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=2",
                                     Tier.GPU: "host://?memory=4KiB"}
    async with _open(tmp_path, clock, "both", tiers) as mem:
        await mem.put("k", "session's", tier=Tier.SESSION)
        await mem.put("k", np.full(8, 2.0), tier=Tier.GPU)
        for i in range(3):
            await mem.put(f"s{i}", i, tier=Tier.SESSION)  # SESSION's k spills to CORTEX
        await mem.flush()
        assert "k" in await mem.keys(Tier.CORTEX)
        i = 0
        while "k" not in await mem.keys(Tier.SESSION):  # GPU's k spills into SESSION
            await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
            i += 1
        await mem.put("k", "newest", tier=Tier.SESSION)
        assert "k" not in await mem.keys(Tier.CORTEX)
        assert await mem.get("k") == "newest"


async def test_a_put_removes_spilled_copies_slowest_first(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    """A put_many whose keys have spilled copies in CORTEX and in PERSISTENT removes
    PERSISTENT's before CORTEX's (a faster copy never outlives a slower one)."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1",
                                     Tier.CORTEX: "gated://oc", Tier.PERSISTENT: "gated://op"}
    async with _open(tmp_path, clock, "order", tiers) as mem:
        await mem.put("a", "a0")
        await mem.put("b", "b0")  # a spills to CORTEX
        await mem.flush()
        gate("oc").fail("put")
        await mem.put("x", "x0")  # b spills past the failing CORTEX into PERSISTENT
        await mem.flush()
        assert "a" in gated_data("oc") and "b" in gated_data("op")
        g = gate("oc")
        g.hold("delete_many", key="a")
        task = asyncio.create_task(mem.put_many({"a": "a1", "b": "b1"}))
        try:
            assert await g.wait_blocked("delete_many", key="a")
            slower_left = "b" in gated_data("op")
        finally:
            g.release("delete_many", key="a")
            await task
        assert not slower_left  # the slower copy went first
        await mem.flush()
        assert await mem.get_many(["a", "b"]) == {"a": "a1", "b": "b1"}


async def test_a_put_forgets_the_spilled_copy_it_removed(tmp_path: Path,
                                                          clock: ManualClock) -> None:
    """Once a put removed the CORTEX copy its older item spilled, the spiller tracks no copy
    of the key."""
    async with _open(tmp_path, clock, "forget", {Tier.SESSION: "memory://?max_items=2"}) as mem:
        await mem.put("k", "old")
        await mem.put("x", 1)
        await mem.put("y", 2)  # k spills to CORTEX
        await mem.flush()
        assert mem.stats()["spill"]["tracked_copies"] == 1
        await mem.delete("y")
        await mem.put("k", "new")  # SESSION has room: nothing else spills
        await mem.flush()
        assert mem.stats()["spill"]["tracked_copies"] == 0
        assert "k" not in await mem.keys(Tier.CORTEX)


async def test_a_put_whose_spilled_copy_cannot_be_removed_succeeds(
        tmp_path: Path, clock: ManualClock) -> None:
    """A failing CORTEX that holds a spilled copy does not fail a put to SESSION; the copy
    is skipped by reads until CORTEX answers again."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1",
                                     Tier.CORTEX: "gated://fc"}
    async with _open(tmp_path, clock, "fail", tiers) as mem:
        await mem.put("k", "old")
        await mem.put("x", 1)  # k spills to CORTEX
        await mem.flush()
        gate("fc").fail("get_many", key="k")
        await mem.put("k", "new")
        assert "k" in gated_data("fc")  # not removed: marked stale instead
        assert await mem.get("k") == "new"
        assert await mem.ttl("k", tier=Tier.CORTEX) is None
        await mem.put("y", 2)  # k spills again
        await mem.flush()
        assert await mem.get("k") == "new"


class _Expiring(GatedBackend):
    """A gated store whose reads leave expired records out (the backend contract allows
    either: ``get`` *may* return an expired record)."""

    async def get(self, key: str, now: float) -> Record | None:
        rec = await super().get(key, now)
        return None if rec is None or rec.expired(now) else rec

    async def get_many(self, keys: Any, now: float) -> dict[str, Record]:
        found = await super().get_many(keys, now)
        return {k: r for k, r in found.items() if not r.expired(now)}

    async def read_for_update(self, key: str, now: float) -> tuple[Record | None, Any]:
        rec, token = await super().read_for_update(key, now)
        return (None if rec is None or rec.expired(now) else rec), token

    async def get_payloads(self, keys: list[str], now: float) -> dict[str, Any]:
        """Bare payloads (:class:`~sophia_memory.backends.BarePayloads`)."""
        wanted = tuple(keys)
        await self._pass("get_payloads", wanted, "before")
        found = {k: r.payload for k in wanted
                 if (r := self._data.get(k)) is not None and not r.expired(now)}
        await self._pass("get_payloads", wanted, "after")
        return found


def _open_expiring(url: BackendURL, tier: Tier, config: Any) -> _Expiring:
    return _Expiring(url.netloc or tier.name.lower())


async def test_staple_reads_ask_a_tier_at_the_current_time(tmp_path: Path,
                                                            clock: ManualClock) -> None:
    """ttl(tier=) works with a backend that filters expired records by the time it is given,
    in the tier asked and below it."""
    register("test-expiring", _open_expiring)
    async with _open(tmp_path, clock, "expiring",
                     {Tier.PERSISTENT: "test-expiring://e"}) as mem:
        await mem.put("k", "p", tier=Tier.PERSISTENT, ttl=50)
        assert await mem.ttl("k", tier=Tier.PERSISTENT) == pytest.approx(50)
        assert await mem.ttl("k", tier=Tier.CORTEX) == pytest.approx(50)
        clock.advance(60)
        assert await mem.ttl("k", tier=Tier.CORTEX) is None


# -- clear(tier=) (Writer.clear_tier) ---------------------------------------------------------


async def test_clear_of_session_takes_its_items_in_transit(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    """clear(tier=SESSION) right after two of its items were evicted removes and counts
    them (they are in the spill buffer) with the one SESSION still holds."""
    async with _open(tmp_path, clock, "transit", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        for key in ("a", "b", "c"):
            await mem.put(key, key, ttl=100)  # a and b are evicted: in transit
        assert mem.stats()["spill"]["items"] == 2
        assert await mem.clear(tier=Tier.SESSION) == 3
        await mem.flush()
        assert await mem.get_many(["a", "b", "c"]) == {}


async def test_clear_of_session_takes_its_spilled_items_with_an_expiry(
        tmp_path: Path, clock: ManualClock) -> None:
    """clear(tier=SESSION) removes its items that spilled into CORTEX, expiring or not."""
    async with _open(tmp_path, clock, "spilledttl", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        await mem.put("a", "a", ttl=100)
        await mem.put("b", "b")
        await mem.put("c", "c")
        await mem.flush()
        assert sorted(await mem.keys(Tier.CORTEX)) == ["a", "b"]
        assert await mem.clear(tier=Tier.SESSION) == 3
        assert await mem.keys(Tier.CORTEX) == []
        assert await mem.get_many(["a", "b", "c"]) == {}


async def test_clear_counts_its_deletes(tmp_path: Path, clock: ManualClock) -> None:
    """Each clear(tier=) adds the keys it removed to the tier's ``deletes``."""
    async with _open(tmp_path, clock, "count") as mem:
        for tier in (Tier.SESSION, Tier.CORTEX):
            await mem.put("a", 1, tier=tier)
            assert await mem.clear(tier=tier) == 1
            await mem.put("b", 2, tier=tier)
            assert await mem.clear(tier=tier) == 1
            assert mem.stats()["tiers"][tier.name]["deletes"] == 2


async def test_clear_of_cortex_forgets_the_spilled_copy_it_removed(
        tmp_path: Path, clock: ManualClock) -> None:
    """clear(tier=CORTEX) removes the copy SESSION's item spilled there, and the spiller
    tracks it no more."""
    async with _open(tmp_path, clock, "clearcopy", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        await mem.put("k", "session's")
        await mem.put("x", 1)  # k spills to CORTEX
        await mem.flush()
        assert mem.stats()["spill"]["tracked_copies"] == 1
        assert await mem.clear(tier=Tier.CORTEX) == 1
        assert mem.stats()["spill"]["tracked_copies"] == 0
        assert await mem.get("k") is None


async def test_clear_removes_the_promoted_copies_slowest_first(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    """clear(tier=PERSISTENT) removes the copies promotion made above it, slower tiers
    first: while CORTEX is being cleared SESSION's copy is still there; then it goes too."""
    async with _open(tmp_path, clock, "promoted", {Tier.CORTEX: "gated://pc"}) as mem:
        await mem.put("k", "persistent's", tier=Tier.PERSISTENT)
        assert await mem.get("k") == "persistent's"
        await mem.flush()
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and entry.tier is Tier.SESSION
        g = gate("pc")
        g.hold("get_many", key="k")
        task = asyncio.create_task(mem.clear(tier=Tier.PERSISTENT))
        try:
            assert await g.wait_blocked("get_many", key="k")
            session_meanwhile = await mem.keys(Tier.SESSION)
        finally:
            g.release("get_many", key="k")
            removed = await task
        assert removed == 1
        assert session_meanwhile == ["k"]
        assert await mem.keys(Tier.SESSION) == []
        assert await mem.get("k") is None


async def test_clear_removes_promoted_copies_in_a_remote_session(
        tmp_path: Path, clock: ManualClock) -> None:
    """clear(tier=CORTEX) removes the expiring copy promotion made in a remote SESSION."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=1MiB",
                                     Tier.SESSION: "gated://rsess"}
    async with _open(tmp_path, clock, "remotesession", tiers) as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX, ttl=100)
        assert await mem.get("k") == "cortex's"
        await mem.flush()
        assert "k" in gated_data("rsess")  # the promoted copy
        assert await mem.clear(tier=Tier.CORTEX) == 1
        assert "k" not in gated_data("rsess")
        assert await mem.get("k") is None


# -- delete (Writer.delete) -------------------------------------------------------------------


async def test_delete_counts_items_in_transit(tmp_path: Path, clock: ManualClock) -> None:
    """delete_many of two items still in the spill buffer counts both as held."""
    async with _open(tmp_path, clock, "deltransit", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        for key in ("a", "b", "c"):
            await mem.put(key, key, ttl=100)
        assert mem.stats()["spill"]["items"] == 2
        assert await mem.delete_many(["a", "b"]) == 2
        await mem.flush()
        assert await mem.get_many(["a", "b", "c"]) == {"c": "c"}


async def test_delete_counts_in_every_tier(tmp_path: Path, clock: ManualClock) -> None:
    """Each delete adds its keys to every tier's ``deletes``."""
    async with _open(tmp_path, clock, "delcount") as mem:
        assert await mem.delete("a") is False
        await mem.put("b", 1)
        assert await mem.delete("b") is True
        tiers = mem.stats()["tiers"]
        assert [tiers[t.name]["deletes"] for t in (Tier.SESSION, Tier.CORTEX)] == [2, 2]


# -- the replay of missed invalidations (Writer.replay_stale) -------------------------------


async def _stale_in_cortex(mem: Memory, name: str, keys: list[str], **put: Any) -> None:
    """Put ``keys`` to CORTEX, then to PERSISTENT while CORTEX fails: CORTEX keeps its
    copies, stale."""
    for key in keys:
        await mem.put(key, f"cortex {key}", tier=Tier.CORTEX, **put)
    gate(name).fail("get_many")
    await mem.put_many({key: f"persistent {key}" for key in keys}, tier=Tier.PERSISTENT)
    assert all(key in gated_data(name) for key in keys)
    assert sorted(mem._core.by_tier[Tier.CORTEX].stale) == sorted(keys)  # type: ignore[union-attr]


async def test_missed_invalidations_are_replayed_once_each_time(tmp_path: Path,
                                                                clock: ManualClock) -> None:
    """flush replays a stale copy's invalidation (also of an expiring copy), does not
    replay it again, and replays a later one too."""
    async with _open(tmp_path, clock, "replay", {Tier.CORTEX: "gated://rp"}) as mem:
        g = gate("rp")
        await _stale_in_cortex(mem, "rp", ["k"], ttl=100)
        await mem.flush()
        assert "k" not in gated_data("rp")
        calls = len(g.log)
        await mem.flush()
        assert len(g.log) == calls  # nothing left to replay
        await _stale_in_cortex(mem, "rp", ["j"])
        await mem.flush()
        assert "j" not in gated_data("rp")
        assert await mem.get_many(["k", "j"]) == {"k": "persistent k", "j": "persistent j"}


async def test_a_replay_waits_for_a_write_of_the_key(tmp_path: Path,
                                                     clock: ManualClock) -> None:
    """A replayed invalidation waits for a put of the key to CORTEX in progress, and then
    leaves the value that put stored."""
    async with _open(tmp_path, clock, "replaylock", {Tier.CORTEX: "gated://rl"}) as mem:
        await _stale_in_cortex(mem, "rl", ["k"])
        g = gate("rl")
        g.hold("put", key="k", point="after")
        writing = asyncio.create_task(mem.put("k", "new", tier=Tier.CORTEX))
        try:
            assert await g.wait_blocked("put", key="k", point="after")
            assert await mem.get("other") is None  # CORTEX answers: the replay starts
            await _yield()
        finally:
            g.release("put", key="k", point="after")
            await writing
        await mem.flush()
        assert await mem.get("k") == "new"
        assert "k" in gated_data("rl")


async def test_a_replay_goes_on_past_a_key_written_meanwhile(tmp_path: Path,
                                                             clock: ManualClock) -> None:
    """A replay whose first key was rewritten while it waited for it still drops the next
    stale key."""
    async with _open(tmp_path, clock, "replaynext", {Tier.CORTEX: "gated://rn"}) as mem:
        await _stale_in_cortex(mem, "rn", ["a", "b"])
        stale = mem._core.by_tier[Tier.CORTEX].stale  # type: ignore[union-attr]
        first = next(iter(stale))
        second = ({"a", "b"} - {first}).pop()
        g = gate("rn")
        g.hold("put", key=first, point="after")
        writing = asyncio.create_task(mem.put(first, "new", tier=Tier.CORTEX))
        try:
            assert await g.wait_blocked("put", key=first, point="after")
            assert await mem.get("other") is None  # the replay starts, waits for ``first``
            await _yield()
        finally:
            g.release("put", key=first, point="after")
            await writing
        await _yield()
        assert second not in gated_data("rn")
        assert await mem.get(first) == "new"
        assert await mem.get(second) == f"persistent {second}"


# -- more of the in-process put ----------------------------------------------------------------


async def test_each_session_put_counts_once(tmp_path: Path, clock: ManualClock) -> None:
    """Three puts to SESSION count three ``puts`` there."""
    async with _open(tmp_path, clock, "puts") as mem:
        for key in ("a", "b", "c"):
            await mem.put(key, key)
        assert mem.stats()["tiers"]["SESSION"]["puts"] == 3


async def test_a_session_put_clears_the_gpu_item_above(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    """A put to SESSION removes GPU's item of the key: the put's value is read."""
    async with _open(tmp_path, clock, "above", {Tier.GPU: "host://?memory=1MiB"}) as mem:
        await mem.put("k", np.zeros(4), tier=Tier.GPU)
        await mem.put("k", "session's")
        assert await mem.keys(Tier.GPU) == []
        assert await mem.get("k") == "session's"


async def test_put_nowait_to_gpu_removes_the_promoted_copy_below(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """Writer.put_nowait to an in-process GPU removes the copy promotion made in SESSION."""
    async with _open(tmp_path, clock, "gpunowait", {Tier.GPU: "host://?memory=1MiB"}) as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        assert await mem.get("k") == "cortex's"
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["k"]
        core = mem._core
        arr = np.ones(4)
        rec = Record(arr, None, True, arr.nbytes, next_version(), clock.time(), {})
        gpu = core.by_tier[Tier.GPU]
        assert core.writer.put_nowait("k", rec, gpu) is True  # type: ignore[arg-type]
        assert await mem.keys(Tier.SESSION) == []
        assert np.array_equal(await mem.get("k"), arr)


# -- more of the staples (Writer.update) --------------------------------------------------------


async def test_a_staple_in_session_passes_over_a_gpu_items_copy(tmp_path: Path,
                                                                clock: ManualClock) -> None:
    """add(tier=SESSION) where SESSION holds only GPU's spilled item stores SESSION's own."""
    async with _open(tmp_path, clock, "addsession", {Tier.GPU: "host://?memory=4KiB"}) as mem:
        await _spill_gpu_item_into_session(mem, "k", np.full(8, 1.0))
        assert await mem.add("k", "session's", tier=Tier.SESSION) is True
        assert await mem.get("k") == "session's"


async def test_a_failed_conditional_write_drops_the_copies_above(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """An incr in CORTEX whose conditional write fails raises TierUnavailableError and
    leaves no promoted copy above (the write may have landed)."""
    async with _open(tmp_path, clock, "putif", {Tier.CORTEX: "gated://pi"}) as mem:
        await mem.put("k", 5, tier=Tier.CORTEX)
        assert await mem.get("k") == 5
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["k"]
        gate("pi").fail("put_if")
        with pytest.raises(TierUnavailableError):
            await mem.incr("k", tier=Tier.CORTEX)
        assert await mem.keys(Tier.SESSION) == []
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and (entry.tier, entry.value) == (Tier.CORTEX, 5)


async def test_a_failed_versioned_write_drops_the_copies_above(
        tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incr in WORKFLOW whose append fails raises TierUnavailableError and leaves no
    promoted copy above."""
    async with _open(tmp_path, clock, "append") as mem:
        await mem.put("k", 5, tier=Tier.WORKFLOW)
        assert await mem.get("k") == 5
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["k"]

        async def append(*args: Any, **kwargs: Any) -> int:
            raise BackendError("the connection dropped")

        monkeypatch.setattr(mem._core.by_tier[Tier.WORKFLOW].backend, "append", append)
        with pytest.raises(TierUnavailableError):
            await mem.incr("k", tier=Tier.WORKFLOW)
        assert await mem.keys(Tier.SESSION) == []


async def test_a_staple_gives_up_after_a_thousand_lost_races(
        tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incr whose conditional write loses every time gives up with TierUnavailableError
    naming the tier and saying why."""
    async with _open(tmp_path, clock, "races", {Tier.CORTEX: "gated://lr"}) as mem:
        await mem.put("k", 5, tier=Tier.CORTEX)

        async def put_if(key: str, record: Record, token: Any) -> bool:
            return False  # another process wrote the key first, every time

        monkeypatch.setattr(mem._core.by_tier[Tier.CORTEX].backend, "put_if", put_if)
        with pytest.raises(TierUnavailableError) as caught:
            await mem.incr("k", tier=Tier.CORTEX)
        assert caught.value.tier is Tier.CORTEX
        assert caught.value.reason == "'k' changed under 1000 conditional writes in a row"


async def test_update_refuses_a_tier_that_cannot_write_conditionally(
        tmp_path: Path, clock: ManualClock) -> None:
    """The engine's update refuses a tier with no conditional write, saying so."""
    async with _open(tmp_path, clock, "refuse") as mem:
        vector = mem._core.by_tier[Tier.VECTOR]
        with pytest.raises(InvalidArgumentError, match=r"VECTOR .* cannot write conditionally"):
            await mem._core.update("k", vector, lambda rec, value, now: (None, None))


async def test_a_staple_in_a_slower_tier_clears_expiring_copies_above(
        tmp_path: Path, clock: ManualClock) -> None:
    """incr in PERSISTENT removes CORTEX's expiring item of the key above it."""
    async with _open(tmp_path, clock, "clearabove") as mem:
        await mem.put("k", 1, tier=Tier.CORTEX, ttl=100)
        assert await mem.incr("k", tier=Tier.PERSISTENT) == 1
        assert "k" not in await mem.keys(Tier.CORTEX)
        assert await mem.get("k") == 1


async def test_staples_ask_their_tier_at_the_current_time(
        tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """incr in WORKFLOW and in CORTEX work with backends that filter expired records by the
    time they are given."""
    register("test-expiring", _open_expiring)
    async with _open(tmp_path, clock, "staplenow",
                     {Tier.CORTEX: "test-expiring://sn"}) as mem:
        workflow = mem._core.by_tier[Tier.WORKFLOW].backend
        unfiltered = workflow.get

        async def get(key: str, now: float) -> Record | None:
            rec = await unfiltered(key, now)
            return None if rec is None or rec.expired(now) else rec

        monkeypatch.setattr(workflow, "get", get)
        for tier in (Tier.WORKFLOW, Tier.CORTEX):
            await mem.put(tier.name, 5, tier=tier, ttl=100)
            assert await mem.incr(tier.name, tier=tier) == 6


async def test_a_versioned_staple_passes_over_its_stale_item(
        tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a delete that WORKFLOW failed, incr there does not count on the item the delete
    should have removed."""
    async with _open(tmp_path, clock, "wfstale") as mem:
        await mem.put("k", 5, tier=Tier.WORKFLOW)
        backend = mem._core.by_tier[Tier.WORKFLOW].backend
        get_many = backend.get_many

        async def failing_once(keys: Any, now: float) -> dict[str, Record]:
            monkeypatch.setattr(backend, "get_many", get_many)
            raise BackendError("the connection dropped")

        monkeypatch.setattr(backend, "get_many", failing_once)
        with pytest.raises(TierUnavailableError):
            await mem.delete("k")
        assert await mem.incr("k", tier=Tier.WORKFLOW) == 1


# -- get_many (TierChain.lookup_many, _remote_many) ------------------------------------------


async def test_get_many_counts_hits_and_misses_per_tier(tmp_path: Path,
                                                        clock: ManualClock) -> None:
    """Two get_many calls count every key once per tier asked, hit or miss, in-process and
    slower tiers alike; a key asked twice is read once from a slower tier."""
    async with _open(tmp_path, clock, "counts", {Tier.GPU: "host://?memory=1MiB"},
                     promote=False) as mem:
        await mem.put("a", 1)
        await mem.put("b", 2)
        await mem.put("x", 3, tier=Tier.CORTEX)
        await mem.put("y", 4, tier=Tier.CORTEX)
        for _ in range(2):
            assert await mem.get_many(["a", "b", "x", "y", "z"]) == \
                {"a": 1, "b": 2, "x": 3, "y": 4}
        tiers = mem.stats()["tiers"]
        assert tiers["GPU"]["misses"] == 10
        assert (tiers["SESSION"]["hits"], tiers["SESSION"]["misses"]) == (4, 6)
        assert (tiers["CORTEX"]["hits"], tiers["CORTEX"]["misses"]) == (4, 2)
        assert tiers["CORTEX"]["p95_ms"] is not None and tiers["CORTEX"]["p95_ms"] < 10_000
        assert await mem.get_many(["x", "x"]) == {"x": 3}
        tiers = mem.stats()["tiers"]
        assert (tiers["CORTEX"]["hits"], tiers["CORTEX"]["misses"]) == (5, 2)


async def test_get_many_passes_over_an_expired_in_process_item(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    """get_many of a key whose SESSION item expired discards it and returns the slower
    tier's item."""
    async with _open(tmp_path, clock, "expiredmany", promote=False) as mem:
        await mem.put("k", "persistent's", tier=Tier.PERSISTENT)
        await mem.put("k", "session's", ttl=5)
        clock.advance(10)
        assert await mem.get_many(["k"]) == {"k": "persistent's"}
        assert mem.stats()["tiers"]["SESSION"]["backend_stats"]["items"] == 0


async def test_get_many_reads_items_in_transit_and_slower_tiers(tmp_path: Path,
                                                                clock: ManualClock) -> None:
    """get_many finds an item in the spill buffer, one in SESSION and one in CORTEX."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1"}
    async with _open(tmp_path, clock, "transitmany", tiers) as mem:
        await mem.put("c", "cortex's", tier=Tier.CORTEX, ttl=100)
        await mem.put("a", "a", ttl=100)
        await mem.put("b", "b", ttl=100)  # a is in transit
        assert mem.stats()["spill"]["items"] == 1
        assert await mem.get_many(["a", "b", "c"]) == {"a": "a", "b": "b", "c": "cortex's"}


async def test_get_many_waits_for_a_write_in_progress(tmp_path: Path,
                                                      clock: ManualClock) -> None:
    """A get_many that starts while a put of its key to CORTEX is half done returns only
    once the put is done, with the put's value."""
    async with _open(tmp_path, clock, "inprogress", {Tier.CORTEX: "gated://ip"}) as mem:
        await mem.put("k", "v0", tier=Tier.CORTEX)
        await mem.put("k", "v1", tier=Tier.CORTEX)
        g = gate("ip")
        g.hold("put", key="k")
        writing = asyncio.create_task(mem.put("k", "v2", tier=Tier.CORTEX, ttl=100))
        try:
            assert await g.wait_blocked("put", key="k")
            reading = asyncio.create_task(mem.get_many(["k"]))
            await _yield()
            early = reading.done()
        finally:
            g.release("put", key="k")
            await writing
        assert not early
        assert await reading == {"k": "v2"}


def _other_stripe(key: str) -> str:
    stripe = hash(key) & MASK
    return next(c for i in range(100) if hash(c := f"other{i}") & MASK != stripe)


async def _get_many_of_k_during(mem: Memory, g: Gate,
                                write: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """A get_many of "k" whose read of the gated tier is held after it read, while
    ``write()`` runs; what it returns."""
    g.hold("get_many", key="k", point="after")
    reading = asyncio.create_task(mem.get_many(["k"]))
    try:
        assert await g.wait_blocked("get_many", key="k", point="after")
        await write()
    finally:
        g.release("get_many", key="k", point="after")
    return await reading


async def test_get_many_reads_once_when_only_other_keys_were_written(
        tmp_path: Path, clock: ManualClock) -> None:
    """A get_many during which only another key was written reads its key once."""
    async with _open(tmp_path, clock, "once", {Tier.CORTEX: "gated://on"}) as mem:
        await mem.put("k", "v1", tier=Tier.CORTEX)
        g = gate("on")
        assert await _get_many_of_k_during(
            mem, g, lambda: mem.put(_other_stripe("k"), 1)) == {"k": "v1"}
        assert mem.stats()["tiers"]["CORTEX"]["hits"] == 1


async def test_get_many_promotes_what_it_finds_below(tmp_path: Path,
                                                     clock: ManualClock) -> None:
    """A CORTEX hit of get_many is copied into SESSION, with its value."""
    async with _open(tmp_path, clock, "promotemany") as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        assert await mem.get_many(["k"]) == {"k": "cortex's"}
        await mem.flush()
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and (entry.tier, entry.value) == (Tier.SESSION, "cortex's")


async def test_get_many_without_promotion(tmp_path: Path, clock: ManualClock) -> None:
    """With promotion off, a get_many reads a key again after any write ran meanwhile,
    and copies nothing into SESSION even while another key is being written."""
    async with _open(tmp_path, clock, "nopromote", {Tier.CORTEX: "gated://np"},
                     promote=False) as mem:
        await mem.put("k", "v1", tier=Tier.CORTEX)
        g = gate("np")
        assert await _get_many_of_k_during(
            mem, g, lambda: mem.put(_other_stripe("k"), 1)) == {"k": "v1"}
        assert mem.stats()["tiers"]["CORTEX"]["hits"] == 2  # read again: any write counts

        assert await _get_many_of_k_during(
            mem, g, lambda: mem.put("k", "v2", tier=Tier.CORTEX)) == {"k": "v2"}

        g.hold("put", key="w")
        writing = asyncio.create_task(mem.put("w", 1, tier=Tier.CORTEX))
        try:
            assert await g.wait_blocked("put", key="w")
            assert await mem.get_many(["k"]) == {"k": "v2"}
        finally:
            g.release("put", key="w")
            await writing
        await mem.flush()
        entry = await mem.get_entry("k")
        assert entry is not None and entry.tier is Tier.CORTEX


async def test_get_many_drops_a_key_deleted_meanwhile(tmp_path: Path,
                                                      clock: ManualClock) -> None:
    """A get_many whose CORTEX read overlapped a delete of its key does not return it."""
    async with _open(tmp_path, clock, "deleted", {Tier.CORTEX: "gated://dl"}) as mem:
        await mem.put("k", "v1", tier=Tier.CORTEX)
        g = gate("dl")
        g.hold("get_many", key="z", point="after")
        reading = asyncio.create_task(mem.get_many(["k", "z"]))
        try:
            assert await g.wait_blocked("get_many", key="z", point="after")
            assert await mem.delete("k") is True
        finally:
            g.release("get_many", key="z", point="after")
        assert await reading == {}


async def test_get_many_reads_bare_payloads_when_only_values_are_needed(
        tmp_path: Path, clock: ManualClock) -> None:
    """With promotion off, a tier that reads bare payloads is asked for those, once per
    get_many, and its hits and misses are counted."""
    register("test-expiring", _open_expiring)
    async with _open(tmp_path, clock, "bare", {Tier.CORTEX: "test-expiring://bp"},
                     promote=False) as mem:
        await mem.put("a", "va", tier=Tier.CORTEX, ttl=100)
        await mem.put("b", "vb", tier=Tier.CORTEX)
        g = gate("bp")
        g.log.clear()
        for _ in range(2):
            assert await mem.get_many(["a", "b", "z"]) == {"a": "va", "b": "vb"}
        assert [m for m, _ in g.log] == ["get_payloads", "get_payloads"]
        cortex = mem.stats()["tiers"]["CORTEX"]
        assert (cortex["hits"], cortex["misses"]) == (4, 2)


async def test_get_many_asks_a_tier_at_the_current_time(tmp_path: Path,
                                                        clock: ManualClock) -> None:
    """get_many works with a backend that filters expired records by the time it is given."""
    register("test-expiring", _open_expiring)
    async with _open(tmp_path, clock, "manynow", {Tier.CORTEX: "test-expiring://mn"}) as mem:
        await mem.put("a", "va", tier=Tier.CORTEX, ttl=100)
        assert await mem.get_many(["a"]) == {"a": "va"}


# -- get (TierChain.lookup, _scan) ------------------------------------------------------------


async def test_get_counts_hits_and_misses_per_tier(tmp_path: Path, clock: ManualClock) -> None:
    """Each read through the tiers counts one hit or miss per in-process tier it looks at,
    with a latency of its own."""
    async with _open(tmp_path, clock, "getcounts", {Tier.GPU: "host://?memory=1MiB"}) as mem:
        await mem.put("a", 1)
        for key in ("a", "a", "z", "z"):
            await mem.get_entry(key)
        tiers = mem.stats()["tiers"]
        assert (tiers["SESSION"]["hits"], tiers["SESSION"]["misses"]) == (2, 2)
        assert (tiers["GPU"]["hits"], tiers["GPU"]["misses"]) == (0, 4)
        for name in ("GPU", "SESSION"):
            assert tiers[name]["p95_ms"] is not None and tiers[name]["p95_ms"] < 10_000


async def test_get_discards_an_expired_in_process_item(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    """A get that meets an expired SESSION item removes it from SESSION."""
    async with _open(tmp_path, clock, "getexpired") as mem:
        await mem.put("k", "v", ttl=5)
        clock.advance(10)
        assert await mem.get("k") is None
        assert mem.stats()["tiers"]["SESSION"]["backend_stats"]["items"] == 0


async def test_get_reads_again_after_a_write_that_ran_meanwhile(tmp_path: Path,
                                                                clock: ManualClock) -> None:
    """A get whose CORTEX read overlapped a put of its key returns the put's value; one
    whose read overlapped a write of another key of its stripe still promotes its hit."""
    async with _open(tmp_path, clock, "getagain", {Tier.CORTEX: "gated://ga"}) as mem:
        g = gate("ga")
        for key in ("k", "m"):
            await mem.put(key, "v1", tier=Tier.CORTEX)
            g.hold("get", key=key, point="after")
            reading = asyncio.create_task(mem.get_entry(key, promote=key == "m"))
            try:
                assert await g.wait_blocked("get", key=key, point="after")
                if key == "k":
                    await mem.put(key, "v2", tier=Tier.CORTEX)
                else:
                    await mem.put(_twin(key), 1)
            finally:
                g.release("get", key=key, point="after")
            entry = await reading
            assert entry is not None and entry.value == ("v2" if key == "k" else "v1")
        await mem.flush()
        entry = await mem.get_entry("m", promote=False)
        assert entry is not None and (entry.tier, entry.value) == (Tier.SESSION, "v1")


# -- step 3 (Writer._clear_above) and promoted copies below (Writer._drop_promoted_below) ----


async def test_a_failed_invalidation_above_is_logged(tmp_path: Path, clock: ManualClock,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A put to PERSISTENT that cannot drop CORTEX's copy warns, naming the tier, the count
    and the reason."""
    monkeypatch.setattr(writes, "warn", RateLimited(writes.log))
    async with _open(tmp_path, clock, "warn", {Tier.CORTEX: "gated://wn"}) as mem:
        await mem.put("k", 1, tier=Tier.CORTEX)
        gate("wn").fail("get_many", key="k")
        with caplog.at_level(logging.WARNING, logger="sophia_memory.writes"):
            await mem.put("k", 2, tier=Tier.PERSISTENT)
        messages = [r.getMessage() for r in caplog.records if r.name == "sophia_memory.writes"]
        assert messages == [
            "Tier.CORTEX could not drop 1 stale copies (gated call get_many('k',) failed as "
            "the test asked); they are skipped on reads until it recovers"]
        assert await mem.get("k") == 2


async def test_a_cortex_put_takes_the_older_item_in_transit(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    """A put to CORTEX right after SESSION's item of the key was evicted supersedes the item
    in transit: it never lands over the put."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1"}
    async with _open(tmp_path, clock, "transitabove", tiers) as mem:
        await mem.put("k", "session's")
        await mem.put("x", 1)  # k is in transit to CORTEX
        assert mem.stats()["spill"]["items"] == 1
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        assert await mem.get("k") == "cortex's"
        await mem.flush()
        assert await mem.get("k") == "cortex's"


async def test_a_put_forgets_a_copy_spilled_above_it_meanwhile(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    """GPU's item of the key, evicted while a put of the key to PERSISTENT is clearing
    CORTEX, is superseded: it lands in no tier (SESSION never shows it), the spiller tracks
    exactly the copies that remain, and the put's value is read."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=4KiB", Tier.CORTEX: "gated://cm"}
    async with _open(tmp_path, clock, "meanwhile", tiers) as mem:
        await mem.put("k", np.full(8, 1.0), tier=Tier.GPU)
        await mem.put("k", "cortex's", tier=Tier.CORTEX)  # GPU's k stays: it is GPU's own
        await mem.put("k", np.full(8, 1.0), tier=Tier.GPU)
        g = gate("cm")
        g.hold("get_many", key="k")
        writing = asyncio.create_task(mem.put("k", "persistent's", tier=Tier.PERSISTENT))
        try:
            assert await g.wait_blocked("get_many", key="k")
            i = 0
            while "k" in await mem.keys(Tier.GPU):  # GPU evicts its older k
                await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
                i += 1
                assert "k" not in await mem.keys(Tier.SESSION)
            assert mem._core.spiller.pending("k", clock.time()) is None
        finally:
            g.release("get_many", key="k")
            await writing
        session = await mem.keys(Tier.SESSION)
        assert "k" not in session
        assert mem.stats()["spill"]["tracked_copies"] == len(session)
        assert await mem.get("k") == "persistent's"


async def test_a_gpu_put_removes_the_copies_promotion_made_below(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """A put to GPU removes SESSION's promoted copy of the key, in-process or remote (an
    expiring one too), and leaves SESSION's own item."""
    for session in ("memory://", "gated://ps"):
        tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=1MiB", Tier.SESSION: session}
        async with _open(tmp_path, clock, f"promoted{len(session)}", tiers) as mem:
            await mem.put("k", "cortex's", tier=Tier.CORTEX, ttl=100)
            assert await mem.get("k") == "cortex's"
            await mem.flush()
            assert await mem.keys(Tier.SESSION) == ["k"]
            await mem.put("k", np.ones(4), tier=Tier.GPU)
            assert await mem.keys(Tier.SESSION) == [], session
            await mem.put("own", "session's", tier=Tier.SESSION)
            await mem.put("own", np.ones(4), tier=Tier.GPU)
            assert await mem.keys(Tier.SESSION) == ["own"], session


async def test_clear_removes_every_promoted_copy_above(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    """clear(tier=PERSISTENT) removes an array's promoted copies in SESSION and in GPU."""
    async with _open(tmp_path, clock, "bothcopies", {Tier.GPU: "host://?memory=1MiB"}) as mem:
        await mem.put("k", np.ones(4), tier=Tier.PERSISTENT)
        for _ in range(2):  # an array is promoted into GPU on its second hit
            await mem.get_entry("k")
            await mem.flush()
        assert await mem.keys(Tier.GPU) == ["k"] and await mem.keys(Tier.SESSION) == ["k"]
        assert await mem.clear(tier=Tier.PERSISTENT) == 1
        assert await mem.keys(Tier.GPU) == [] and await mem.keys(Tier.SESSION) == []
        assert await mem.get("k") is None


async def test_clear_leaves_a_remote_sessions_own_item(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    """clear(tier=CORTEX) leaves the item a remote SESSION holds as its own, and goes on
    when that SESSION fails (its copies are then skipped by reads)."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=1MiB",
                                     Tier.SESSION: "gated://own"}
    async with _open(tmp_path, clock, "ownitem", tiers) as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        await mem.put("k", "session's", tier=Tier.SESSION)
        assert await mem.clear(tier=Tier.CORTEX) == 1
        assert await mem.get("k") == "session's"
        await mem.put("j", "cortex's", tier=Tier.CORTEX)
        gate("own").fail("get_many")
        assert await mem.clear(tier=Tier.CORTEX) == 1
        assert await mem.get("j") is None


async def test_get_counts_slower_tiers_and_skips_only_stale_keys(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """A get counts a hit or a miss in each slower tier it asks, skips a key whose
    invalidation the tier missed (a miss) and reads the tier's other keys as usual."""
    register("test-expiring", _open_expiring)
    async with _open(tmp_path, clock, "getslow", {Tier.CORTEX: "test-expiring://gs"},
                     promote=False) as mem:
        await mem.put("x", "cortex's", tier=Tier.CORTEX, ttl=100)
        await mem.put("s", 1, tier=Tier.CORTEX)
        gate("gs").fail("get_many", key="s")
        await mem.put("s", 2, tier=Tier.PERSISTENT)  # CORTEX's s is stale now
        before = mem.stats()["tiers"]["CORTEX"]
        for key in ("x", "x", "z", "z", "s"):
            await mem.get_entry(key)
        cortex = mem.stats()["tiers"]["CORTEX"]
        assert cortex["hits"] - before["hits"] == 2
        assert cortex["misses"] - before["misses"] == 3
        assert cortex["p95_ms"] is not None and cortex["p95_ms"] < 10_000
        entry = await mem.get_entry("s")
        assert entry is not None and (entry.tier, entry.value) == (Tier.PERSISTENT, 2)


async def test_get_reads_an_expiring_item_in_transit(tmp_path: Path,
                                                     clock: ManualClock) -> None:
    """A get finds an expiring item while it is in the spill buffer."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1"}
    async with _open(tmp_path, clock, "gettransit", tiers) as mem:
        await mem.put("a", "a", ttl=100)
        await mem.put("b", "b")  # a is in transit
        entry = await mem.get_entry("a")
        assert entry is not None and entry.value == "a"


async def test_puts_to_slower_tiers_return_none_and_count(tmp_path: Path,
                                                          clock: ManualClock) -> None:
    """A put to CORTEX returns None (only WORKFLOW returns a version) and each put counts
    once in ``puts``."""
    async with _open(tmp_path, clock, "cortexputs") as mem:
        assert await mem.put("a", 1, tier=Tier.CORTEX) is None
        assert await mem.put("b", 2, tier=Tier.CORTEX) is None
        await mem.put_many({"c": 3, "d": 4}, tier=Tier.CORTEX)
        assert mem.stats()["tiers"]["CORTEX"]["puts"] == 4


# -- the engine's read API and in-process tiers all the way down -----------------------------


async def test_the_read_chain_promotes_its_hit_by_default(tmp_path: Path,
                                                          clock: ManualClock) -> None:
    """TierChain.lookup called without ``promote=`` promotes a CORTEX hit into SESSION, as a
    get does."""
    async with _open(tmp_path, clock, "defaultpromote") as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        found = await mem._core.reads.lookup("k")
        assert found is not None and found[1] == "cortex's"
        await mem.flush()
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and (entry.tier, entry.value) == (Tier.SESSION, "cortex's")


async def test_get_many_reads_again_an_expiring_session_put_made_meanwhile(
        tmp_path: Path, clock: ManualClock) -> None:
    """A get_many whose CORTEX read overlapped a put of its key to SESSION with a ttl reads
    the key again and returns the SESSION value."""
    async with _open(tmp_path, clock, "redosession", {Tier.CORTEX: "gated://rx"}) as mem:
        await mem.put("k", "v1", tier=Tier.CORTEX)
        g = gate("rx")
        g.hold("get_many", key="k", point="after")
        reading = asyncio.create_task(mem.get_many(["k"]))
        try:
            assert await g.wait_blocked("get_many", key="k", point="after")
            await mem.put("k", "v2", ttl=100)  # SESSION, the in-process put
        finally:
            g.release("get_many", key="k", point="after")
        assert await reading == {"k": "v2"}


async def test_a_put_below_keeps_the_item_in_transit_until_the_tiers_above_are_cleared(
        tmp_path: Path, clock: ManualClock) -> None:
    """While a put to PERSISTENT is still clearing CORTEX, a read from SESSION down finds
    SESSION's item in transit (the value before the put), never the older item CORTEX still
    holds: the spill buffer is cleared only after the slower tiers above the home."""
    tiers: dict[Tier, str | None] = {Tier.SESSION: "memory://?max_items=1",
                                     Tier.CORTEX: "gated://tc", Tier.PERSISTENT: "gated://tp"}
    async with _open(tmp_path, clock, "transitorder", tiers) as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX, ttl=10)
        await mem.put("k", "session's", ttl=20)  # shadows CORTEX's item
        cortex, persistent = gate("tc"), gate("tp")
        persistent.hold("put", key="k")
        cortex.hold("get_many", key="k")
        writing = asyncio.create_task(
            mem.put("k", "persistent's", tier=Tier.PERSISTENT, ttl=30))
        try:
            assert await persistent.wait_blocked("put", key="k")
            await mem.put(_other_stripe("k"), 1)  # evicts k: in transit to CORTEX
            assert mem.stats()["spill"]["items"] == 1
            persistent.release("put", key="k")
            assert await cortex.wait_blocked("get_many", key="k")
            meanwhile = await mem.ttl("k", tier=Tier.SESSION)
        finally:
            persistent.release("put", key="k")
            cortex.release("get_many", key="k")
            await writing
        assert meanwhile == pytest.approx(20)
        assert await mem.get("k") == "persistent's"
        await mem.flush()
        assert await mem.get("k") == "persistent's"


class _KeepsRecords(GatedBackend):
    """A versioned gated store that keeps the very record each append is given (a backend
    may keep the object rather than a copy)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._versions: dict[str, list[Record]] = {}

    async def append(self, key: str, record: Record, expected_version: int | None) -> int:
        await self._pass("append", (key,), "before")
        versions = self._versions.setdefault(key, [])
        if expected_version is not None and len(versions) != expected_version:
            raise VersionConflictError(key, expected_version, len(versions))
        versions.append(record)
        self._data[key] = record
        await self._pass("append", (key,), "after")
        return len(versions)

    async def get_version(self, key: str, version: int) -> Record | None:
        versions = self._versions.get(key, [])
        return versions[version - 1] if 0 < version <= len(versions) else None

    async def history(self, key: str, limit: int | None) -> list[Record]:
        return self._versions.get(key, [])[::-1][:limit]


def _open_keeps_records(url: BackendURL, tier: Tier, config: Any) -> _KeepsRecords:
    return _KeepsRecords(url.netloc or tier.name.lower())


async def test_a_versioned_put_stores_the_version_its_append_returned(
        tmp_path: Path, clock: ManualClock) -> None:
    """A put to WORKFLOW leaves the record it appended carrying the version number the append
    returned, also in a backend that keeps the record it was given."""
    register("test-keeps-records", _open_keeps_records)
    async with _open(tmp_path, clock, "keeps",
                     {Tier.WORKFLOW: "test-keeps-records://kr"}) as mem:
        assert await mem.put("k", "first", tier=Tier.WORKFLOW) == 1
        assert await mem.put("k", "second", tier=Tier.WORKFLOW) == 2
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and (entry.tier, entry.value, entry.version) == \
            (Tier.WORKFLOW, "second", 2)


async def test_clear_of_session_removes_its_batch_items_spilled_into_an_in_process_cortex(
        tmp_path: Path, clock: ManualClock) -> None:
    """A put_many to SESSION (below GPU) whose own items spill on into an in-process CORTEX:
    those copies stay SESSION's items, so clear(tier=SESSION) removes them too, and a read
    from CORTEX passes over them."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=1MiB",
                                     Tier.SESSION: "memory://?max_items=2",
                                     Tier.CORTEX: "memory://"}
    async with _open(tmp_path, clock, "batchdown", tiers) as mem:
        items = {f"b{i}": i for i in range(4)}
        await mem.put_many(items, tier=Tier.SESSION)
        spilled = await mem.keys(Tier.CORTEX)
        assert len(spilled) == 2
        assert await mem.get_many(list(items)) == items
        assert all([await mem.ttl(k, tier=Tier.CORTEX) is None for k in spilled])
        assert await mem.clear(tier=Tier.SESSION) == 4
        assert await mem.keys(Tier.CORTEX) == []
        assert await mem.get_many(list(items)) == {}


async def test_put_nowait_to_gpu_keeps_track_of_the_item_it_pushed_down_two_tiers(
        tmp_path: Path, clock: ManualClock) -> None:
    """Writer.put_nowait of a key to GPU that evicts into SESSION, which pushes SESSION's own
    item of the key on into an in-process CORTEX: whatever CORTEX then holds of the key is
    not CORTEX's own item (a read from CORTEX passes over it), clear(tier=SESSION) leaves
    none of it, and GPU's value is read."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=4KiB",
                                     Tier.SESSION: "memory://?max_items=1",
                                     Tier.CORTEX: "memory://"}
    async with _open(tmp_path, clock, "cascade0", tiers) as mem:
        i = 0
        while not await mem.keys(Tier.SESSION):  # fill GPU: its first item spills
            await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
            i += 1
        await mem.put("k", "session's")  # SESSION's item pushes GPU's down into CORTEX
        core = mem._core
        arr = np.full(64, 1.0)
        rec = Record(arr, None, True, arr.nbytes, next_version(), clock.time(), {})
        gpu = core.by_tier[Tier.GPU]
        assert core.writer.put_nowait("k", rec, gpu) is True  # type: ignore[arg-type]
        assert "k" not in await mem.keys(Tier.SESSION)  # pushed on by GPU's eviction
        assert np.array_equal(await mem.get("k"), arr)
        assert await mem.ttl("k", tier=Tier.CORTEX) is None
        await mem.clear(tier=Tier.SESSION)
        assert "k" not in await mem.keys(Tier.CORTEX)
        assert np.array_equal(await mem.get("k"), arr)


async def test_a_session_put_keeps_track_of_the_item_it_pushed_down_two_tiers(
        tmp_path: Path, clock: ManualClock) -> None:
    """With GPU, SESSION, CORTEX and PERSISTENT all in-process, a put to SESSION that evicts
    into CORTEX, which pushes CORTEX's own item of the key on into PERSISTENT: whatever
    PERSISTENT then holds of the key is not PERSISTENT's own item (a read from PERSISTENT
    passes over it), clear(tier=CORTEX) leaves none of it, and SESSION's value is read."""
    tiers: dict[Tier, str | None] = {Tier.GPU: "host://?memory=1MiB",
                                     Tier.SESSION: "memory://?max_items=1",
                                     Tier.CORTEX: "memory://?max_items=1",
                                     Tier.PERSISTENT: "memory://"}
    async with _open(tmp_path, clock, "cascade1", tiers) as mem:
        await mem.put("k", "cortex's", tier=Tier.CORTEX)
        await mem.put("s", "s")  # SESSION
        await mem.put("k", "session's")  # s goes to CORTEX, which pushes its k down
        assert "k" not in await mem.keys(Tier.CORTEX)
        assert await mem.get("k") == "session's"
        assert await mem.ttl("k", tier=Tier.PERSISTENT) is None
        await mem.clear(tier=Tier.CORTEX)
        assert "k" not in await mem.keys(Tier.PERSISTENT)
        assert await mem.get("k") == "session's"
