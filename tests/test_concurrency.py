"""Acceptance: concurrent writers leave every tier consistent; get_or_load is single-flight."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import ManualClock, Memory, Tier

from .conftest import small_memory

KEYS = [f"key{i}" for i in range(25)]


async def tier_contents(mem: Memory, key: str) -> dict[Tier, Any]:
    """What each enabled tier holds for ``key`` right now (decoded), bypassing the front."""
    core = mem._core
    out: dict[Tier, Any] = {}
    now = core.now()
    for slot in core.slots:
        rec = await slot.backend.get(key, now)
        if rec is not None and not rec.expired(now):
            out[slot.tier] = core.decode(slot, rec)
    pending = core.spiller.buffer.get(key)
    if pending is not None:
        out[Tier.SESSION] = pending.value
    return out


@pytest.mark.parametrize("home", [Tier.SESSION, Tier.PERSISTENT])
async def test_thousand_concurrent_writers_leave_last_write_everywhere(
        tmp_path: Path, clock: ManualClock, home: Tier) -> None:
    rng = random.Random(home.value)
    mem = small_memory(tmp_path, clock)
    last: dict[str, Any] = {}  # key -> value of the last completed op (None: deleted)
    ops = {"put": 0, "delete": 0, "get": 0}

    async def worker(n: int) -> None:
        for step in range(4):
            key = rng.choice(KEYS)
            op = rng.choices(["put", "get", "delete"], [5, 4, 1])[0]
            ops[op] += 1
            if op == "put":
                value = {"writer": n, "step": step}
                await mem.put(key, value, tier=home)
                last[key] = value
            elif op == "delete":
                await mem.delete(key)
                last[key] = None
            else:
                await mem.get(key)
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(n) for n in range(1000)))
    await mem.flush()
    assert ops["put"] > 1000 and ops["delete"] > 100 and ops["get"] > 1000
    stats = mem.stats()["tiers"]
    if home is Tier.SESSION:
        assert stats["SESSION"]["spills"] > 0, "the tiny L1 never spilled"
    else:
        assert stats["SESSION"]["promotions"] > 0, "nothing was promoted"
    for key in KEYS:
        expected = last.get(key)
        assert await mem.get(key) == expected, key
        held = await tier_contents(mem, key)
        for tier, value in held.items():
            assert value == expected, (key, tier, value, expected)
        if expected is None:
            assert held == {}, key
    await mem.close()


async def test_get_or_load_calls_loader_once_for_a_thousand_callers(mem: Memory) -> None:
    calls = 0
    release = asyncio.Event()

    async def loader() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"answer": 42}

    tasks = [asyncio.ensure_future(mem.get_or_load("hot", loader, tier=Tier.PERSISTENT))
             for _ in range(1000)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(r == {"answer": 42} for r in results)
    entry = await mem.get_entry("hot")
    assert entry is not None and entry.value == {"answer": 42}
    # A later call is a plain hit: the loader is not called again.
    assert await mem.get_or_load("hot", loader) == {"answer": 42}
    assert calls == 1


async def test_get_or_load_failure_reaches_every_waiter_and_caches_nothing(mem: Memory) -> None:
    calls = 0
    release = asyncio.Event()

    class Boom(Exception):
        pass

    async def loader() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        raise Boom("loader failed")

    tasks = [asyncio.ensure_future(mem.get_or_load("bad", loader)) for _ in range(1000)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, Boom) for r in results)
    assert not await mem.exists("bad")
    for tier in mem.tiers:
        assert "bad" not in await mem.keys(tier)

    async def good() -> int:
        return 7

    assert await mem.get_or_load("bad", good) == 7  # the failure was not cached


async def test_get_or_load_accepts_sync_loader(mem: Memory) -> None:
    assert await mem.get_or_load("s", lambda: [1, 2], ttl=5) == [1, 2]
    entry = await mem.get_entry("s")
    assert entry is not None and entry.expires_at is not None


async def test_cached_memoises_with_stable_keys(mem: Memory) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    @mem.cached(tier=Tier.CORTEX, ttl=60)
    async def complete(prompt: str, params: dict[str, Any], model: str = "m") -> str:
        calls.append((prompt, params))
        return f"{model}:{prompt}"

    a = await complete("hi", {"t": 0, "k": 1})
    b = await complete(params={"k": 1, "t": 0}, prompt="hi")  # same call, other order
    c = await complete("hi", {"t": 0, "k": 1}, model="other")
    assert a == b == "m:hi" and c == "other:hi"
    assert len(calls) == 2
    entries = await mem.keys(Tier.CORTEX)
    assert len(entries) == 2 and all(k.startswith(complete.__module__) for k in entries)


async def test_concurrent_promotion_never_installs_a_stale_value(tmp_path: Path,
                                                                 clock: ManualClock) -> None:
    """A get that found an old value in a slow tier, racing a put, must not promote it."""
    async with Memory.open(path=str(tmp_path / "p.db"), clock=clock) as mem:
        for round_ in range(200):
            await mem.put("k", round_, tier=Tier.PERSISTENT)
            getter = asyncio.ensure_future(mem.get("k"))
            await mem.put("k", round_ + 1000, tier=Tier.PERSISTENT)
            await getter
            await mem.flush()
            assert await mem.get("k") == round_ + 1000
            entry = await mem.get_entry("k")
            assert entry is not None and entry.value == round_ + 1000
