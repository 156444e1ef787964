"""The cache staples (add, incr/decr, compare_and_set, touch, ttl, clear) with the same
semantics on every tier that can hold them: the embedded in-process SESSION, SESSION on the
real Redis, SQLite CORTEX and PERSISTENT, the versioned WORKFLOW, and the gated test store.
Concurrency: nothing lost, within one memory and between two memories sharing a store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import InvalidArgumentError, ManualClock, Memory, Tier, VersionConflictError
from sophia_memory.testing import gate, gated_data, reset_gated
from sophia_memory.tiers import Record

from .conftest import drop_prefix, real_redis_or_skip

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

#: (name, the tier the staples go to, the tiers= override)
SETUPS = [
    ("memory", Tier.SESSION, {}),
    ("redis", Tier.SESSION, None),  # filled in with a fresh prefix
    ("sqlite-cortex", Tier.CORTEX, {}),
    ("sqlite-persistent", Tier.PERSISTENT, {}),
    ("workflow", Tier.WORKFLOW, {}),
    ("gated", Tier.CORTEX, {Tier.CORTEX: "gated://staples?persistent=1&yields=2&seed=3"}),
    # one reader connection: the emulator fails connections opened at the same moment; and
    # a long deadline: it runs one statement at a time, tens of milliseconds each
    ("snowflake-emulated", Tier.PERSISTENT,
     {Tier.PERSISTENT: "snowflake://tester:s3cret@acct-test/TESTDB/SOPHIA_AI_MEMORY"
                       "?readers=1&timeout=60"}),
]


def _open(tmp_path: Path, clock: ManualClock, name: str, tiers: dict[Tier, str]) -> Memory:
    return Memory.open(path=str(tmp_path / f"{name}.db"), clock=clock, tiers=tiers,
                       purge_interval=0)


async def _setup(param: tuple[str, Tier, Any], tmp_path: Path,
                 clock: ManualClock) -> AsyncIterator[tuple[Memory, Tier, Any]]:
    name, tier, tiers = param
    client = None
    if tiers is None:
        client = await real_redis_or_skip(REDIS_URL)
        prefix = f"smtest:{uuid.uuid4().hex}:"
        tiers = {Tier.SESSION: f"{REDIS_URL}?prefix={prefix}"}
    reset_gated()
    emulator = contextlib.ExitStack()
    if name.startswith("snowflake"):
        pytest.importorskip("snowflake.connector")
        pytest.importorskip("fakesnow")
        from .snowflake_shim import emulated_snowflake

        emulator.enter_context(emulated_snowflake())

    def another() -> Memory:  # a second memory on the same store (another process)
        return _open(tmp_path, clock, name, tiers)

    mem = another()
    try:
        yield mem, tier, another
    finally:
        await mem.clear()
        await mem.close()
        reset_gated()
        emulator.close()
        if client is not None:  # items expired on the test's clock are still in Redis
            await drop_prefix(client, prefix)
            await client.aclose()


@pytest.fixture(params=SETUPS, ids=[s[0] for s in SETUPS])
async def setup(request: pytest.FixtureRequest, tmp_path: Path,
                clock: ManualClock) -> AsyncIterator[tuple[Memory, Tier, Any]]:
    async for found in _setup(request.param, tmp_path, clock):
        yield found


#: The setups whose store two memories share (an in-process tier is each memory's own).
SHARED = [s for s in SETUPS if s[0] != "memory"]


@pytest.fixture(params=SHARED, ids=[s[0] for s in SHARED])
async def shared(request: pytest.FixtureRequest, tmp_path: Path,
                 clock: ManualClock) -> AsyncIterator[tuple[Memory, Tier, Any]]:
    async for found in _setup(request.param, tmp_path, clock):
        yield found


async def test_add_only_when_absent(setup: Any, clock: ManualClock) -> None:
    mem, tier, _ = setup
    assert await mem.add("k", {"v": 1}, tier=tier, ttl=10) is True
    assert await mem.add("k", {"v": 2}, tier=tier) is False
    assert await mem.get("k") == {"v": 1}
    clock.advance(11)  # an expired item counts as absent
    assert await mem.add("k", {"v": 3}, tier=tier) is True
    assert await mem.get("k") == {"v": 3}
    assert await mem.ttl("k") == math.inf


async def test_incr_and_decr(setup: Any, clock: ManualClock) -> None:
    mem, tier, _ = setup
    assert await mem.incr("n", tier=tier, ttl=100) == 1  # created from 0 with the ttl
    assert await mem.incr("n", 41, tier=tier) == 42
    assert await mem.decr("n", 2, tier=tier) == 40
    assert await mem.get("n") == 40
    clock.advance(50)
    assert await mem.incr("n", tier=tier, ttl=5) == 41  # an existing item keeps its expiry
    assert await mem.ttl("n", tier=tier) == pytest.approx(50)
    assert await mem.decr("m", tier=tier) == -1
    await mem.put("s", "text", tier=tier)
    with pytest.raises(InvalidArgumentError, match="holds a str, not an int"):
        await mem.incr("s", tier=tier)
    assert await mem.get("s") == "text"  # nothing written
    for bad in (1.5, True, "1"):
        with pytest.raises(InvalidArgumentError, match="delta must be an int"):
            await mem.incr("n", bad, tier=tier)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="delta must be an int"):
            await mem.decr("n", bad, tier=tier)  # type: ignore[arg-type]
    assert await mem.get("n") == 41


async def test_compare_and_set(setup: Any) -> None:
    mem, tier, _ = setup
    assert await mem.compare_and_set("c", 1, 2, tier=tier) is False  # absent never matches
    assert await mem.get("c") is None
    await mem.put("c", {"step": 1}, tier=tier)
    assert await mem.compare_and_set("c", {"step": 0}, {"step": 9}, tier=tier) is False
    assert await mem.compare_and_set("c", {"step": 1}, {"step": 2}, tier=tier, ttl=30) is True
    assert await mem.get("c") == {"step": 2}
    assert await mem.ttl("c", tier=tier) == pytest.approx(30)
    await mem.put("i", 1, tier=tier)
    assert await mem.compare_and_set("i", 1.0, 5, tier=tier) is False  # same type too
    assert await mem.compare_and_set("i", True, 5, tier=tier) is False
    assert await mem.compare_and_set("i", 1, 5, tier=tier) is True
    assert await mem.get("i") == 5


async def test_put_with_expected_version(setup: Any) -> None:
    """Optimistic concurrency as on WORKFLOW: every write gives the item a new version
    (``Entry.version``); a put with ``expected_version`` writes only over that version."""
    mem, tier, _ = setup
    v1 = await mem.put("e", {"n": 1}, tier=tier, expected_version=0)  # 0: must not exist
    assert isinstance(v1, int) and v1 > 0
    entry = await mem.get_entry("e")
    assert entry is not None and entry.version == v1 and entry.value == {"n": 1}
    with pytest.raises(VersionConflictError) as err:
        await mem.put("e", {"n": 0}, tier=tier, expected_version=0)
    assert err.value.current_version == v1
    v2 = await mem.put("e", {"n": 2}, tier=tier, expected_version=v1)
    assert v2 != v1 and (await mem.get_entry("e")).version == v2  # type: ignore[union-attr]
    with pytest.raises(VersionConflictError) as err:  # a writer holding the old version
        await mem.put("e", {"n": 3}, tier=tier, expected_version=v1)
    assert err.value.current_version == v2 and await mem.get("e") == {"n": 2}
    await mem.put("e", {"n": 4}, tier=tier)  # a plain put changes the version too
    with pytest.raises(VersionConflictError):
        await mem.put("e", {"n": 5}, tier=tier, expected_version=v2)
    assert await mem.incr("c", tier=tier) == 1
    vc = (await mem.get_entry("c")).version  # type: ignore[union-attr]
    assert await mem.incr("c", tier=tier) == 2  # so do the staples
    assert (await mem.get_entry("c")).version != vc  # type: ignore[union-attr]
    with pytest.raises(InvalidArgumentError, match="expected_version"):
        await mem.put("e", 1, tier=tier, expected_version=-1)


async def test_touch_and_ttl(setup: Any, clock: ManualClock) -> None:
    mem, tier, _ = setup
    assert await mem.touch("t", 10, tier=tier) is False  # nothing there
    assert await mem.ttl("t") is None
    await mem.put("t", [1, 2], tier=tier, ttl=5)
    assert await mem.ttl("t") == pytest.approx(5)
    clock.advance(4)
    assert await mem.touch("t", 60, tier=tier) is True
    clock.advance(10)  # past the first expiry
    assert await mem.get("t") == [1, 2]
    assert await mem.ttl("t") == pytest.approx(50)
    assert await mem.touch("t", None, tier=tier) is True  # never expires now
    assert await mem.ttl("t") == math.inf
    await mem.put("gone", 1, tier=tier, ttl=1)
    clock.advance(2)
    assert await mem.touch("gone", 60, tier=tier) is False  # an expired item stays gone
    assert await mem.ttl("gone") is None and await mem.get("gone") is None


async def test_meta_is_kept_by_incr_and_touch(setup: Any) -> None:
    mem, tier, _ = setup
    await mem.put("m", 1, tier=tier, meta={"source": "test"})
    await mem.incr("m", tier=tier)
    await mem.touch("m", 60, tier=tier)
    entry = await mem.get_entry("m")
    assert entry is not None and entry.value == 2
    assert entry.meta.get("source") == "test"


async def test_clear_by_namespace_and_tier(setup: Any) -> None:
    mem, tier, _ = setup
    a, b = mem.namespace("a"), mem.namespace("b")
    for view in (mem, a, b):
        await view.put("x", 1, tier=tier)
        await view.put("y", 2, tier=tier)
    await a.namespace("inner").put("z", 3, tier=tier)
    assert await mem.clear(namespace="a") == 3  # nested namespaces included
    assert await a.get("x") is None and await a.namespace("inner").get("z") is None
    assert await b.get("x") == 1 and await mem.get("x") == 1
    assert await b.clear(tier=tier) == 2
    assert await b.get("y") is None and await mem.get("y") == 2
    assert await mem.clear() == 2
    assert await mem.get("x") is None and await mem.keys(tier) == []


async def test_concurrent_increments_lose_nothing(setup: Any) -> None:
    mem, tier, _ = setup
    results = await asyncio.gather(*[mem.incr("hits", tier=tier) for _ in range(200)])
    assert sorted(results) == list(range(1, 201))  # each increment saw the one before
    assert await mem.get("hits") == 200


async def test_two_memories_on_one_store_lose_nothing(shared: Any) -> None:
    """Two memories sharing the store (as two processes would): their stripes do not
    exclude each other, so the store's conditional write decides."""
    mem, tier, another = shared
    other = another()
    # the emulated Snowflake runs each statement in tens of milliseconds: fewer rounds
    n = 25 if "Snowflake" in mem.stats()["tiers"][tier.name]["backend"] else 200
    try:
        await asyncio.gather(*[m.incr("shared", tier=tier) for _ in range(n)
                               for m in (mem, other)])
        assert await mem.get("shared") == 2 * n
        assert await other.get("shared") == 2 * n
        await asyncio.gather(*[m.add(f"once{i % 10}", id(m), tier=tier)
                               for i in range(40) for m in (mem, other)])
        owners = {await mem.get(f"once{i}") for i in range(10)}
        assert owners <= {id(mem), id(other)} and len(owners) >= 1
    finally:
        await other.close()


async def test_a_faster_copy_is_replaced(tmp_path: Path, clock: ManualClock) -> None:
    """An incr in a slower tier removes the copy promotion made in a faster one."""
    async with _open(tmp_path, clock, "copy", {}) as mem:
        await mem.put("n", 5, tier=Tier.PERSISTENT)
        assert await mem.get("n") == 5
        await mem.flush()
        entry = await mem.get_entry("n")
        assert entry is not None and entry.tier is Tier.SESSION  # promoted
        assert await mem.incr("n", tier=Tier.PERSISTENT) == 6
        assert await mem.get("n") == 6
        assert await mem.compare_and_set("n", 6, 7, tier=Tier.PERSISTENT)
        assert await mem.get("n") == 7


async def test_an_evicted_session_item_is_found_where_it_spilled(tmp_path: Path,
                                                                clock: ManualClock) -> None:
    """A bounded in-process tier spills its items down: incr still sees the item."""
    async with _open(tmp_path, clock, "spill",
                     {Tier.SESSION: "memory://?max_items=2"}) as mem:
        assert await mem.incr("n") == 1
        for i in range(5):
            await mem.put(f"other{i}", i)
        await mem.flush()
        assert "n" not in await mem.keys(Tier.SESSION)
        assert await mem.get("n") == 1  # spilled below
        assert await mem.ttl("n", tier=Tier.SESSION) == math.inf
        assert await mem.incr("n") == 2
        assert await mem.get("n") == 2
        await mem.flush()
        assert await mem.get("n") == 2


async def test_arrays_on_the_gpu_pools(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "g.db"), clock=clock, gpu_reserve=0,
                           host_pool_memory="1MiB") as mem:
        a = np.arange(4, dtype=np.float32)
        assert await mem.add("w", a, tier=Tier.GPU) is True
        assert await mem.add("w", a + 1, tier=Tier.GPU) is False
        assert await mem.compare_and_set("w", a + 1, a * 3, tier=Tier.GPU) is False
        assert await mem.compare_and_set("w", a.astype(np.float64), a * 3,
                                         tier=Tier.GPU) is False  # dtype differs
        assert await mem.compare_and_set("w", a.copy(), a * 3, tier=Tier.GPU) is True
        assert await mem.touch("w", 30, tier=Tier.GPU) is True
        got = await mem.get("w")
        assert np.array_equal(got, a * 3)
        assert await mem.ttl("w") == pytest.approx(30)
        with pytest.raises(InvalidArgumentError, match="not an int"):
            await mem.incr("w", tier=Tier.GPU)


async def test_tiers_that_cannot_refuse_clearly(tmp_path: Path, clock: ManualClock) -> None:
    async with _open(tmp_path, clock, "refuse", {}) as mem:
        with pytest.raises(InvalidArgumentError, match="VECTOR items carry a vector"):
            await mem.add("v", 1, tier=Tier.VECTOR)
        with pytest.raises(InvalidArgumentError, match="VECTOR items carry a vector"):
            await mem.incr("v", tier=Tier.VECTOR)
        with pytest.raises(InvalidArgumentError, match="not conditionally"):
            await mem.put("v", 1, tier=Tier.VECTOR, vector=[1.0, 0.0], expected_version=0)
        with pytest.raises(InvalidArgumentError, match="ttl"):
            await mem.add("k", 1, ttl=-1)
        with pytest.raises(InvalidArgumentError):
            await mem.touch("k", float("nan"))
        assert await mem.get("k") is None


async def test_a_conflicting_write_elsewhere_is_retried(tmp_path: Path,
                                                        clock: ManualClock) -> None:
    """Deterministic: this memory's conditional write is held after its read; another
    process writes the key meanwhile; the held write is refused, the item read again and
    the increment applied on top of the other write."""
    reset_gated()
    tiers = {Tier.CORTEX: "gated://conflict?persistent=1"}
    async with _open(tmp_path, clock, "conflict", tiers) as mem:
        await mem.put("n", 10, tier=Tier.CORTEX)
        g = gate("conflict")
        g.hold("put_if", key="n")
        task = asyncio.create_task(mem.incr("n", tier=Tier.CORTEX))
        await g.wait_blocked("put_if", key="n")
        data = gated_data("conflict")
        assert "n" in data
        # "another process" stores 100 there (a new object: the token no longer matches)
        data["n"] = Record(mem._core.codec.encode(100), None, True, 3, 0, clock.time(), {})
        g.release("put_if", key="n")
        assert await task == 101
        assert await mem.get("n") == 101
        calls = [c for c in g.log if c[0] == "put_if"]
        assert len(calls) >= 2  # the refused write and the one that went through
    reset_gated()


async def test_counters_in_a_tiny_session_tier_lose_nothing_while_it_spills(
        tmp_path: Path, clock: ManualClock) -> None:
    """A SESSION of two items under 200 concurrent increments of ten counters and puts of
    other keys: counters are evicted, in transit and spilled all the time, and each
    increment still builds on the one before."""
    async with _open(tmp_path, clock, "churn", {Tier.SESSION: "memory://?max_items=2"}) as mem:
        async def bump(i: int) -> int:
            if i % 3 == 0:
                await mem.put(f"filler{i}", i)  # pushes a counter out of SESSION
            return await mem.incr(f"c{i % 10}")

        await asyncio.gather(*[bump(i) for i in range(200)])
        assert {f"c{j}": await mem.get(f"c{j}") for j in range(10)} == \
            {f"c{j}": 20 for j in range(10)}
        await mem.flush()
        assert [await mem.get(f"c{j}") for j in range(10)] == [20] * 10
        stats = mem.stats()["tiers"]["SESSION"]
        assert stats["spills"] > 0  # the counters really moved down meanwhile


def test_versions_are_unique_across_a_fork() -> None:
    """A forked worker (gunicorn's preload, multiprocessing's fork) starts its own
    sequence: its writes never reuse a version the parent hands out."""
    from sophia_memory.tiers import next_version

    first = next_version()
    assert next_version() == first + 1 and first > 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, str([next_version() for _ in range(3)]).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 1000))
    os.close(read)
    os.close(write)
    mine = [next_version() for _ in range(3)]
    assert not set(child) & set(range(first, first + 10_000))
    assert not set(child) & set(mine)


# -- found by a review: each test below failed before its fix ----------------------------------


async def test_touch_of_an_item_in_transit_leaves_no_older_copy(tmp_path: Path,
                                                                clock: ManualClock) -> None:
    """An item evicted from SESSION and still in the spill buffer is touched (same value
    object, shorter TTL): the copy in transit must not land below with the old expiry."""
    async with _open(tmp_path, clock, "transit", {Tier.SESSION: "memory://?max_items=1"}) as mem:
        for op in ("touch", "cas", "put"):
            val = {"state": op}
            await mem.put(op, val, ttl=1000)
            await mem.put(f"{op}-other", 2)  # evicts it: in transit to CORTEX
            if op == "touch":
                assert await mem.touch(op, 5) is True
            elif op == "cas":
                assert await mem.compare_and_set(op, val, val, ttl=5) is True
            else:
                await mem.put(op, val, ttl=5)
            assert await mem.ttl(op) == pytest.approx(5)
            await mem.flush()
        clock.advance(10)
        for op in ("touch", "cas", "put"):
            assert await mem.get(op) is None, op  # no copy with the old expiry anywhere
            assert await mem.get_entry(op, promote=False) is None


async def test_a_staple_reads_the_same_item_whether_or_not_it_was_promoted(
        tmp_path: Path, clock: ManualClock) -> None:
    async with _open(tmp_path, clock, "promoted", {}) as mem:
        results = []
        for promoted in (False, True):
            key = f"k{promoted}"
            await mem.put(key, 10, tier=Tier.PERSISTENT)
            if promoted:
                assert await mem.get(key) == 10
                await mem.flush()
                assert (await mem.get_entry(key)).tier is Tier.SESSION  # type: ignore[union-attr]
            results.append((await mem.add(key, 0), await mem.incr(key),
                            await mem.ttl(key, tier=Tier.SESSION)))
        assert results[0] == results[1] == (False, 11, math.inf)


async def test_clear_of_a_bounded_tier_takes_what_it_spilled(tmp_path: Path,
                                                            clock: ManualClock) -> None:
    async with _open(tmp_path, clock, "clearspill", {Tier.SESSION: "memory://?max_items=2"}) as mem:
        for i in range(6):
            await mem.put(f"k{i}", i)  # SESSION's items; four go down (in transit or spilled)
        await mem.put("p", "persistent's own", tier=Tier.PERSISTENT)
        assert await mem.clear(tier=Tier.SESSION) == 6
        await mem.flush()
        assert await mem.get_many([f"k{i}" for i in range(6)]) == {}
        assert await mem.get("p") == "persistent's own"  # another tier's own item stays
        assert await mem.incr("k0") == 1  # nothing left to count on


async def test_compare_and_set_matches_what_get_returned(tmp_path: Path,
                                                         clock: ManualClock) -> None:
    """The read-compute-compare-and-set loop must be able to succeed for every value that
    can be stored: NaN, arrays inside lists and dicts, state_dicts."""
    torch = pytest.importorskip("torch")
    from collections import OrderedDict

    async with Memory.open(path=str(tmp_path / "c.db"), clock=clock, gpu_reserve=0,
                           host_pool_memory="1MiB") as mem:
        cases: dict[str, tuple[Tier, Any]] = {
            "nan": (Tier.CORTEX, float("nan")),
            "list+array": (Tier.CORTEX, [np.arange(3), {"w": np.full(2, np.nan)}]),
            "state_dict": (Tier.CORTEX, OrderedDict(w=np.ones(3), b=np.zeros(1))),
            "tensor": (Tier.GPU, torch.ones(3)),
        }
        for key, (tier, value) in cases.items():
            await mem.put(key, value, tier=tier)
            assert await mem.compare_and_set(key, await mem.get(key), 1 if tier is not
                                             Tier.GPU else torch.zeros(3), tier=tier), key
        assert not await mem.compare_and_set("nan", 2, 3, tier=Tier.CORTEX)
        await mem.put("arr", np.arange(3, dtype=np.int64), tier=Tier.CORTEX)
        assert not await mem.compare_and_set("arr", np.arange(3, dtype=np.int32), 0,
                                             tier=Tier.CORTEX)  # dtype differs
        assert not await mem.compare_and_set("arr", np.arange(4), 0, tier=Tier.CORTEX)


async def test_compare_and_set_keeps_the_gpu_pool(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "g.db"), clock=clock, gpu_reserve=0,
                           host_pool_memory="1MiB") as mem:
        a = np.arange(4, dtype=np.float32)
        await mem.put("w", a, tier=Tier.GPU, pool="active_models")
        assert await mem.compare_and_set("w", a, a * 2, tier=Tier.GPU)
        entry = await mem.get_entry("w")
        assert entry is not None and entry.meta.get("pool") == "active_models"


async def test_clear_goes_on_past_a_failing_tier_then_says_so(tmp_path: Path,
                                                              clock: ManualClock) -> None:
    reset_gated()
    tiers = {Tier.CORTEX: "gated://clearfail"}
    async with _open(tmp_path, clock, "clearfail", tiers) as mem:
        await mem.put("c", 1, tier=Tier.CORTEX)
        await mem.put("p", 2, tier=Tier.PERSISTENT)
        gate("clearfail").fail("keys")
        with pytest.raises(Exception, match="CORTEX"):
            await mem.clear()
        assert await mem.get("p") is None  # the other tiers were cleared
        assert await mem.clear() == 1  # and the failing one on the next try
        assert await mem.get("c") is None
    reset_gated()


def _tiny(tmp_path: Path, clock: ManualClock, name: str) -> Memory:
    return Memory.open(path=str(tmp_path / f"{name}.db"), clock=clock, purge_interval=0,
                       gpu_reserve=0, tiers={Tier.SESSION: "memory://?max_items=2",
                                             Tier.GPU: "host://?memory=4KiB"})


async def test_each_spilled_copy_keeps_the_tier_its_item_was_put_to(
        tmp_path: Path, clock: ManualClock) -> None:
    """SESSION's own item spills to CORTEX, then a GPU item of the same key spills into
    SESSION: each copy stays its own tier's, for the staples and for clear."""
    for case in ("staples", "clear"):
        async with _tiny(tmp_path, clock, case) as mem:
            spiller = mem._core.spiller
            await mem.put("k", "session's own", tier=Tier.SESSION)
            await mem.put("k", np.full(8, 2.0), tier=Tier.GPU)
            for i in range(3):
                await mem.put(f"s{i}", i, tier=Tier.SESSION)  # SESSION's k spills to CORTEX
            await mem.flush()
            i = 0
            while not spiller.copies.get("k", 0) & 2:  # GPU's k spills into SESSION
                await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
                i += 1
            if case == "staples":
                assert await mem.ttl("k", tier=Tier.SESSION) == math.inf  # SESSION's own
                assert await mem.add("k", "x", tier=Tier.SESSION) is False
            else:
                assert await mem.clear(tier=Tier.GPU) >= 1
                await mem.flush()
                assert await mem.get("k") == "session's own"  # not GPU's to clear


@pytest.mark.parametrize("tier", [Tier.GPU, Tier.SESSION])
async def test_clear_follows_an_item_spilled_twice(tier: Tier, tmp_path: Path,
                                                   clock: ManualClock) -> None:
    """A GPU item that went GPU -> SESSION -> CORTEX is GPU's: clear(tier=GPU) removes
    it, clear(tier=SESSION) leaves it."""
    async with _tiny(tmp_path, clock, tier.name) as mem:
        await mem.put("k", np.full(8, 2.0), tier=Tier.GPU)
        for i in range(12):
            await mem.put(f"g{i}", np.zeros(64), tier=Tier.GPU)
        await mem.flush()
        assert mem._core.spiller.origin("k", 2) == 0  # in CORTEX, put to GPU
        await mem.clear(tier=tier)
        await mem.flush()
        got = await mem.get("k")
        if tier is Tier.GPU:
            assert got is None
        else:
            assert got is not None and np.array_equal(got, np.full(8, 2.0))
