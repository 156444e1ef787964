"""TTL on the injected clock (exact expiry, carried through promotion and spill, purge) and
namespaces (no collisions between namespaces and the root, nesting, invalid names)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import InvalidKeyError, ManualClock, Memory, Tier

from .conftest import small_memory

#: These tests count on the order of eviction (the oldest first), not on the default policy.
LRU_SESSION = {Tier.SESSION: "memory://?max_items=4&policy=lru"}
EPS = 2.0**-10  # exactly representable: start + ttl - EPS + EPS == start + ttl
TABLES = {Tier.CORTEX: "cortex_cache", Tier.PERSISTENT: "persistent",
          Tier.WORKFLOW: "workflow"}
SQL_TIERS = list(TABLES)


def value_for(tier: Tier) -> Any:
    return np.arange(4, dtype=np.float32) if tier is Tier.GPU else {"tier": tier.name}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


def rows(db: Path, tier: Tier) -> dict[str, float | None]:
    """key -> expires_at of every row physically in ``tier``'s table, expired or not."""
    table = TABLES[tier]
    conn = sqlite3.connect(db)
    try:
        columns = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        key = "cache_key" if "cache_key" in columns else "key"  # the Cortex platform layout
        return dict(conn.execute(f'SELECT "{key}", expires_at FROM "{table}"').fetchall())
    finally:
        conn.close()


# -- TTL --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", [Tier.GPU, Tier.SESSION, *SQL_TIERS])
async def test_value_expires_exactly_at_ttl(mem: Memory, clock: ManualClock, tier: Tier) -> None:
    value = value_for(tier)
    start = clock.time()
    await mem.put("k", value, tier=tier, ttl=10)
    entry = await mem.get_entry("k")
    assert entry is not None
    assert entry.expires_at == start + 10
    clock.advance(10 - EPS)
    assert same(await mem.get("k"), value)
    assert await mem.exists("k")
    assert await mem.keys(tier) == ["k"]
    await mem.flush()
    clock.advance(EPS)
    assert clock.time() == start + 10
    for _ in range(3):  # the in-process fast path too, whatever its sampling
        assert await mem.get("k") is None
    assert await mem.get("k", "gone") == "gone"
    assert await mem.get_entry("k") is None
    assert not await mem.exists("k")
    assert await mem.get_many(["k"]) == {}
    for t in mem.tiers:
        assert await mem.keys(t) == []


@pytest.mark.parametrize("tier", [Tier.SESSION, Tier.PERSISTENT])
async def test_get_many_honours_each_keys_expiry(mem: Memory, clock: ManualClock,
                                                 tier: Tier) -> None:
    await mem.put("short", 1, tier=tier, ttl=5)
    await mem.put("long", 2, tier=tier, ttl=50)
    await mem.put("forever", 3, tier=tier)
    clock.advance(5)
    assert await mem.get_many(["short", "long", "forever"]) == {"long": 2, "forever": 3}
    clock.advance(45)
    assert await mem.get_many(["short", "long", "forever"]) == {"forever": 3}


async def test_timedelta_ttl_is_accepted(mem: Memory, clock: ManualClock) -> None:
    start = clock.time()
    await mem.put("a", 1, tier=Tier.SESSION, ttl=timedelta(minutes=2))
    await mem.put_many({"b": 2, "c": 3}, tier=Tier.PERSISTENT, ttl=timedelta(seconds=90.5))
    a, b = await mem.get_entry("a"), await mem.get_entry("b")
    assert a is not None and a.expires_at == start + 120
    assert b is not None and b.expires_at == start + 90.5
    clock.advance(90.5)
    assert await mem.get_many(["a", "b", "c"]) == {"a": 1}
    clock.advance(29.5)
    assert await mem.get("a") is None


async def test_put_without_ttl_clears_an_earlier_expiry(mem: Memory, clock: ManualClock) -> None:
    await mem.put("k", "old", tier=Tier.PERSISTENT, ttl=5)
    await mem.get("k")  # promoted into SESSION with the expiry
    await mem.flush()
    await mem.put("k", "new", tier=Tier.PERSISTENT)
    clock.advance(100)
    assert await mem.get("k") == "new"
    entry = await mem.get_entry("k")
    assert entry is not None and entry.expires_at is None


async def test_ttl_is_carried_through_promotion(mem: Memory, clock: ManualClock) -> None:
    start = clock.time()
    await mem.put("k", {"v": 1}, tier=Tier.PERSISTENT, ttl=30)
    first = await mem.get_entry("k")
    assert first is not None and first.tier is Tier.PERSISTENT
    await mem.flush()
    promoted = await mem.get_entry("k")
    assert promoted is not None
    assert promoted.tier is Tier.SESSION
    assert promoted.expires_at == first.expires_at == start + 30
    assert not promoted.home
    assert await mem.keys(Tier.SESSION) == ["k"]
    assert await mem.keys(Tier.PERSISTENT) == ["k"]

    clock.advance(30 - EPS)
    assert await mem.get("k") == {"v": 1}
    clock.advance(EPS)
    assert await mem.get("k") is None
    assert await mem.keys(Tier.SESSION) == []
    assert await mem.keys(Tier.PERSISTENT) == []


async def test_ttl_is_carried_through_promotion_into_gpu(mem: Memory,
                                                         clock: ManualClock) -> None:
    arr = np.ones(8, dtype=np.float16)
    await mem.put("arr", arr, tier=Tier.CORTEX, ttl=40)
    for _ in range(3):  # GPU promotion happens from the second hit on
        await mem.get("arr")
        await mem.flush()
    entry = await mem.get_entry("arr")
    assert entry is not None
    assert entry.tier is Tier.GPU
    assert entry.expires_at == clock.time() + 40
    clock.advance(40)
    assert await mem.get("arr") is None
    for t in mem.tiers:
        assert await mem.keys(t) == []


async def test_ttl_is_carried_through_spill(tmp_path: Path, clock: ManualClock) -> None:
    start = clock.time()
    async with small_memory(tmp_path, clock, tiers=LRU_SESSION) as mem:  # holds 4 items
        for i in range(7):
            await mem.put(f"k{i}", i, tier=Tier.SESSION, ttl=100 + i)
        await mem.flush()
        spilled = rows(tmp_path / "small.db", Tier.CORTEX)
        assert spilled == {f"k{i}": start + 100 + i for i in range(3)}
        assert await mem.keys(Tier.SESSION) == ["k3", "k4", "k5", "k6"]
        for i in range(7):
            entry = await mem.get_entry(f"k{i}")
            assert entry is not None
            assert entry.value == i
            assert entry.expires_at == start + 100 + i
        await mem.flush()

        clock.advance(101)  # k0 and k1 have expired, k2.. have not
        assert await mem.get_many([f"k{i}" for i in range(7)]) == {
            f"k{i}": i for i in range(2, 7)}
        clock.advance(5)
        assert await mem.get_many([f"k{i}" for i in range(7)]) == {}
        for t in mem.tiers:
            assert await mem.keys(t) == []


async def test_expired_items_are_not_spilled(tmp_path: Path, clock: ManualClock) -> None:
    async with small_memory(tmp_path, clock, tiers=LRU_SESSION) as mem:
        for i in range(4):
            await mem.put(f"old{i}", i, tier=Tier.SESSION, ttl=1)
        clock.advance(1)
        for i in range(4):
            await mem.put(f"new{i}", i, tier=Tier.SESSION)
        await mem.flush()
        assert rows(tmp_path / "small.db", Tier.CORTEX) == {}
        assert await mem.keys(Tier.SESSION) == [f"new{i}" for i in range(4)]


async def test_purge_expired_removes_expired_rows_from_sql_tiers(
        tmp_path: Path, mem: Memory, clock: ManualClock) -> None:
    db = tmp_path / "m.db"
    for tier in SQL_TIERS:
        await mem.put_many({f"{tier.name}:dead{i}": i for i in range(3)}, tier=tier, ttl=10)
        await mem.put(f"{tier.name}:later", 1, tier=tier, ttl=1000)
        await mem.put(f"{tier.name}:forever", 1, tier=tier)
    clock.advance(10)
    for tier in SQL_TIERS:
        assert len(rows(db, tier)) == 5  # expired rows are still on disk ...
        assert await mem.keys(tier) == [f"{tier.name}:forever", f"{tier.name}:later"]
    assert await mem.purge_expired() == 3 * len(SQL_TIERS)
    for tier in SQL_TIERS:  # ... until purged
        assert rows(db, tier) == {f"{tier.name}:later": clock.time() + 990,
                                  f"{tier.name}:forever": None}
    assert await mem.purge_expired() == 0


async def test_purge_expired_also_clears_in_process_tiers(mem: Memory,
                                                          clock: ManualClock) -> None:
    await mem.put("s", 1, tier=Tier.SESSION, ttl=5)
    await mem.put("g", np.zeros(2), tier=Tier.GPU, ttl=5)
    await mem.put("keep", 1, tier=Tier.SESSION)
    clock.advance(5)
    assert await mem.purge_expired() == 2
    stats = mem.stats()["tiers"]
    assert stats["SESSION"]["backend_stats"]["items"] == 1


# -- namespaces ------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", [Tier.SESSION, Tier.PERSISTENT, Tier.WORKFLOW])
async def test_namespaces_and_root_do_not_collide(mem: Memory, tier: Tier) -> None:
    a, b = mem.namespace("tenant-a"), mem.namespace("tenant-b")
    await mem.put("k", "root", tier=tier)
    await a.put("k", "a", tier=tier)
    await b.put("k", "b", tier=tier)
    assert (await mem.get("k"), await a.get("k"), await b.get("k")) == ("root", "a", "b")
    assert await a.get_many(["k", "other"]) == {"k": "a"}
    assert await mem.get_many(["k"]) == {"k": "root"}
    assert await mem.keys(tier) == ["k"]
    assert await a.keys(tier) == ["k"]

    assert await a.delete("k")
    assert await a.get("k") is None
    assert not await a.exists("k")
    assert await mem.get("k") == "root"
    assert await b.get("k") == "b"
    assert await a.keys(tier) == []
    assert not await a.delete("k")

    await mem.delete("k")
    assert await b.exists("k")
    assert await b.keys(tier) == ["k"]


async def test_namespace_views_share_tiers_and_survive_promotion(mem: Memory) -> None:
    ns = mem.namespace("t")
    await ns.put("k", 1, tier=Tier.PERSISTENT)
    await mem.put("k", 2, tier=Tier.PERSISTENT)
    assert await ns.get("k") == 1
    assert await mem.get("k") == 2
    await mem.flush()  # both promoted into SESSION under their own full keys
    assert await ns.keys(Tier.SESSION) == ["k"]
    assert await mem.keys(Tier.SESSION) == ["k"]
    assert await ns.get("k") == 1
    assert await mem.get("k") == 2
    entry = await ns.get_entry("k")
    assert entry is not None and entry.key == "k" and entry.tier is Tier.SESSION


async def test_nested_namespaces_are_distinct(mem: Memory) -> None:
    a = mem.namespace("a")
    ab = a.namespace("b")
    b = mem.namespace("b")
    ba = b.namespace("a")
    views = {"root": mem, "a": a, "ab": ab, "b": b, "ba": ba,
             "a-again": mem.namespace("a").namespace("b")}
    for name, view in list(views.items())[:5]:
        await view.put("k", name, tier=Tier.PERSISTENT)
    for name in ("root", "a", "ab", "b", "ba"):
        assert await views[name].get("k") == name
    assert await views["a-again"].get("k") == "ab"
    for view in views.values():
        assert await view.keys(Tier.PERSISTENT) == ["k"]  # a parent does not list children
    await a.delete("k")
    assert await ab.get("k") == "ab"


async def test_namespace_prefixes_are_not_confused(mem: Memory) -> None:
    """"ab" is not a sub-namespace of "a", and "a" + key "bk" is not "ab" + key "k"."""
    await mem.namespace("a").put("bk", 1, tier=Tier.PERSISTENT)
    await mem.namespace("ab").put("k", 2, tier=Tier.PERSISTENT)
    assert await mem.namespace("a").keys(Tier.PERSISTENT) == ["bk"]
    assert await mem.namespace("ab").keys(Tier.PERSISTENT) == ["k"]
    assert await mem.namespace("ab").get("bk") is None
    assert await mem.namespace("a").get("k") is None


async def test_namespace_ttl_and_put_many(mem: Memory, clock: ManualClock) -> None:
    ns = mem.namespace("ttl")
    await ns.put_many({"x": 1, "y": 2}, tier=Tier.CORTEX, ttl=3)
    await mem.put_many({"x": 10, "y": 20}, tier=Tier.CORTEX)
    clock.advance(3)
    assert await ns.get_many(["x", "y"]) == {}
    assert await mem.get_many(["x", "y"]) == {"x": 10, "y": 20}
    assert await ns.delete_many(["x", "y"]) == 0


@pytest.mark.parametrize("name", [
    pytest.param("", id="empty"),
    pytest.param("a\x1fb", id="separator"),
    pytest.param("x" * 129, id="over-128-bytes"),
    pytest.param("é" * 65, id="over-128-utf8-bytes"),
    pytest.param(1, id="int"),
    pytest.param(None, id="none"),
    pytest.param(b"ns", id="bytes"),
    pytest.param(("a",), id="tuple"),
])
def test_invalid_namespace_names_raise_invalid_key(mem: Memory, name: Any) -> None:
    with pytest.raises(InvalidKeyError):
        mem.namespace(name)


def test_namespace_with_lone_surrogate_raises_invalid_key(mem: Memory) -> None:
    with pytest.raises(InvalidKeyError):
        mem.namespace("bad\ud800")


async def test_namespace_names_at_the_limit_are_accepted(mem: Memory) -> None:
    for name in ("x" * 128, "é" * 64, "😀" * 32):
        ns = mem.namespace(name)
        await ns.put("k", name, tier=Tier.PERSISTENT)
        assert await ns.get("k") == name
    assert await mem.keys(Tier.PERSISTENT) == []
