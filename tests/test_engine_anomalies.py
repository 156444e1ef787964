"""Issue 17's measurements, repeated as deterministic tests (DESIGN.md §3: "Home tier",
"Consistency", "Crash safety", "Bounded memory").

(a) A read while ``delete`` runs, and a restart, never expose a value overwritten before.
(b) A put to another home never exposes the value the older, lower home held.
(c) Items waiting to spill stay within the spill buffer's configured bound (backpressure).
(d) A value that no lower tier can hold fails its put or is dropped with a counted reason; it
    does not stay in memory for good.
(e) Sizes are counted honestly against ``max_bytes`` for every value type (a 700 kB int does
    not count as 9 bytes).

The interleavings are made deterministic by wrapping the write-side methods of the slower
tiers' backends (``mem._core.by_tier[tier].backend``) so each call yields to the event loop a
few times before it runs; reads are left alone, so a read sees one instant of the state.

Stats keys read here (the spill buffer's section may be named differently by the engine; the
helpers below are the one place that knows): ``stats()["spill"]`` with ``items``, ``bytes``,
``max_items``, ``max_bytes``, ``peak_items`` and ``dropped`` (``{reason: count}``), falling back
to ``stats()["spilling"]`` (the item count, the only figure the old engine reports).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import (
    ConfigError,
    ManualClock,
    Memory,
    Tier,
    UnsupportedValueError,
    ValueTooLargeError,
)

DURABLE = (Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR, Tier.WORKFLOW)
_WRITES = ("get_many", "delete", "delete_many", "put", "put_many", "append")


# -- helpers: the stats the tests read ---------------------------------------------------------


def spill_stats(mem: Memory) -> dict[str, Any]:
    """The spill buffer's section of ``stats()``: ``stats()["spill"]`` where the engine has
    one, else ``{"items": stats()["spilling"]}``."""
    stats = mem.stats()
    section = stats.get("spill")
    if isinstance(section, dict):
        return section
    return {"items": int(stats.get("spilling", 0))}


def spill_buffer_len(mem: Memory) -> int:
    """How many evicted items are waiting to spill to a slower tier."""
    return int(spill_stats(mem)["items"])


def spill_bound(mem: Memory) -> tuple[int | None, int | None]:
    """The spill buffer's bound in items and bytes, from ``stats()`` or the configuration;
    None where the engine has none."""
    section = spill_stats(mem)
    items = section.get("max_items", getattr(mem.config, "spill_max_items", None))
    size = section.get("max_bytes", getattr(mem.config, "spill_max_bytes", None))
    return items, size


def spill_drops(mem: Memory) -> dict[str, int]:
    """Items the spiller gave up on, by reason (``stats()["spill"]["dropped"]``); empty where
    the engine reports no reasons."""
    dropped = spill_stats(mem).get("dropped", {})
    return dict(dropped) if isinstance(dropped, dict) else {}


def session_bytes(mem: Memory) -> int:
    return int(mem.stats()["tiers"]["SESSION"]["backend_stats"]["bytes"])


def open_memory(tmp_path: Path, session: str, **options: Any) -> Memory:
    """L2-L5 in one SQLite file, the GPU tier off, SESSION as given."""
    return Memory.open(path=str(tmp_path / "anomalies.db"), clock=ManualClock(),
                       tiers={Tier.GPU: None, Tier.SESSION: session}, **options)


def open_with_spill_bound(tmp_path: Path, session: str, max_items: int) -> Memory:
    """A memory whose spill buffer holds ``max_items``; the engine's default bound where the
    configuration has no such option (the old engine: unbounded)."""
    try:
        return open_memory(tmp_path, session, spill_max_items=max_items)
    except ConfigError:
        return open_memory(tmp_path, session)


def _yielding(fn: Callable[..., Awaitable[Any]], times: int) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        for _ in range(times):
            await asyncio.sleep(0)
        return await fn(*args, **kwargs)
    return wrapper


def slow_writes(mem: Memory, tiers: Iterable[Tier] = DURABLE, times: int = 5) -> None:
    """Make every write-side call of ``tiers``' backends yield ``times`` times first, so reads
    run in the middle of puts and deletes. Single-key reads (``get``) stay instantaneous."""
    for tier in tiers:
        backend = mem._core.by_tier[tier].backend
        for name in _WRITES:
            method = getattr(backend, name, None)
            if method is not None:
                setattr(backend, name, _yielding(method, times))


def runs(reads: list[Any]) -> str:
    """``reads`` with repeats folded: ``'B' x600, 'A' x2, 'C' x2``."""
    out: list[str] = []
    for value in reads:
        if out and out[-1].startswith(f"{value!r} x"):
            head, _, count = out[-1].rpartition(" x")
            out[-1] = f"{head} x{int(count) + 1}"
        else:
            out.append(f"{value!r} x1")
    return ", ".join(out)


async def read_while(mem: Memory, key: str, task: asyncio.Task[Any]) -> list[Any]:
    """Read ``key`` (get and get_many in turn) until ``task`` is done, then once more."""
    reads: list[Any] = []
    turn = 0
    while not task.done():
        if turn % 2:
            reads.append((await mem.get_many([key])).get(key))
        else:
            reads.append(await mem.get(key))
        turn += 1
        await asyncio.sleep(0)
    await task
    reads.append(await mem.get(key))
    return reads


async def spilled_then_overwritten(mem: Memory) -> None:
    """SESSION holds one item: k=v1 spills to CORTEX, then k=v2 is put to SESSION."""
    await mem.put("k", "v1", tier=Tier.SESSION)
    await mem.put("other", "o", tier=Tier.SESSION)  # k=v1 spills to CORTEX
    await mem.flush()
    await mem.put("k", "v2", tier=Tier.SESSION)  # other spills
    await mem.flush()
    assert await mem.get("k") == "v2"


# -- (a) read during delete, and restart -------------------------------------------------------


async def test_read_during_delete_never_returns_the_overwritten_spilled_value(
        tmp_path: Path) -> None:
    mem = open_memory(tmp_path, "memory://?max_items=1")
    try:
        await spilled_then_overwritten(mem)
        slow_writes(mem)
        task = asyncio.create_task(mem.delete("k"))
        reads = await read_while(mem, "k", task)
        assert task.result() is True
        assert len(reads) > 2, "no read ran while delete() did"
        assert "v1" not in reads, f"a read during delete returned the overwritten v1: {runs(reads)}"
        assert set(reads) <= {"v2", None}, runs(reads)
        assert reads[-1] is None
    finally:
        await mem.close()


async def test_restart_never_returns_the_overwritten_spilled_value(tmp_path: Path) -> None:
    mem = open_memory(tmp_path, "memory://?max_items=1")
    try:
        await spilled_then_overwritten(mem)
    finally:
        await mem.close()
    mem = open_memory(tmp_path, "memory://?max_items=1")
    try:
        value = await mem.get("k")
        assert value != "v1", "after a restart get returned v1, overwritten before it"
        assert value in (None, "v2")
        assert (await mem.get_many(["k"])).get("k") == value
    finally:
        await mem.close()


async def test_batch_put_that_evicts_its_own_keys_older_value_never_spills_it(
        tmp_path: Path) -> None:
    """put_many to SESSION whose first item evicts the older value of a later item: that
    older value must not land in CORTEX (found by the crash test: it resurfaced after a
    restart)."""
    mem = open_memory(tmp_path, "memory://?max_items=2")
    try:
        await mem.put("a", "a1", tier=Tier.SESSION)
        await mem.put("b", "b1", tier=Tier.SESSION)  # a1 is now the least recently used
        await mem.put_many({"c": "c1", "a": "a2"}, tier=Tier.SESSION)  # c evicts a1
        await mem.flush()
        assert await mem.get("a") == "a2"
        cortex = mem._core.by_tier[Tier.CORTEX].backend
        rec = await cortex.get("a", mem._core.now())
        assert rec is None or b"a1" not in bytes(rec.payload), "a1 was spilled after a2 was put"
    finally:
        await mem.close()
    mem = open_memory(tmp_path, "memory://?max_items=2")
    try:
        assert await mem.get("a") in (None, "a2"), "after a restart a1 came back"
    finally:
        await mem.close()


# -- (b) a put to another home -----------------------------------------------------------------


@pytest.mark.parametrize("third", [Tier.WORKFLOW, Tier.VECTOR])
async def test_put_to_third_home_never_exposes_the_shadowed_older_value(
        tmp_path: Path, third: Tier) -> None:
    mem = open_memory(tmp_path, "memory://?max_items=4", vector_dim=2)
    try:
        await mem.put("k", "A", tier=Tier.PERSISTENT)
        await mem.put("k", "B", tier=Tier.CORTEX)  # B shadows A
        assert await mem.get("k") == "B"
        await mem.flush()
        slow_writes(mem)
        extra = {"vector": [1.0, 0.0]} if third is Tier.VECTOR else {}
        task = asyncio.create_task(mem.put("k", "C", tier=third, **extra))
        reads = await read_while(mem, "k", task)
        assert len(reads) > 2, "no read ran while put() did"
        assert "A" not in reads, f"a read during put(tier={third.name}) returned A: {runs(reads)}"
        assert set(reads) <= {"B", "C"}, runs(reads)
        assert reads[-1] == "C"
    finally:
        await mem.close()


async def test_delete_of_two_homes_never_exposes_the_lower_one(tmp_path: Path) -> None:
    mem = open_memory(tmp_path, "memory://?max_items=4")
    try:
        await mem.put("k", "A", tier=Tier.WORKFLOW)
        await mem.put("k", "B", tier=Tier.CORTEX)
        slow_writes(mem)
        task = asyncio.create_task(mem.delete("k"))
        reads = await read_while(mem, "k", task)
        assert len(reads) > 2, "no read ran while delete() did"
        assert "A" not in reads, f"a read during delete returned the shadowed A: {runs(reads)}"
        assert reads[-1] is None
    finally:
        await mem.close()


# -- (c) bounded spill -------------------------------------------------------------------------


async def test_spill_buffer_stays_within_its_bound_in_a_loop_that_never_yields(
        tmp_path: Path) -> None:
    n, capacity, bound_asked = 20_000, 2_000, 500
    mem = open_with_spill_bound(tmp_path, f"memory://?max_items={capacity}", bound_asked)
    try:
        max_items, max_bytes = spill_bound(mem)
        bound = max_items if max_items is not None else bound_asked
        peak = peak_bytes = 0
        blob = "x" * 200
        for i in range(n):  # each put completes without yielding while nothing waits
            await mem.put(f"k{i}", f"{blob}{i}", tier=Tier.SESSION)
            if i % 50 == 0:
                section = spill_stats(mem)
                peak = max(peak, int(section["items"]))
                peak_bytes = max(peak_bytes, int(section.get("bytes", 0)))
        section = spill_stats(mem)
        peak = max(peak, int(section["items"]), int(section.get("peak_items", 0)))
        print(f"spill buffer: peak {peak} items (bound {max_items}, asked {bound_asked}), "
              f"peak {peak_bytes} bytes (bound {max_bytes}) after {n} puts over a "
              f"{capacity}-item SESSION")
        assert peak <= bound + 16, (
            f"{peak} items waited to spill, over the bound of {bound}"
            + ("" if max_items is not None else " (none configured: the buffer is unbounded)"))
        assert max_items is not None, "the spill buffer reports no bound"
        if max_bytes is not None:
            assert peak_bytes <= max_bytes + 64 * 1024
        await mem.flush()
        assert spill_buffer_len(mem) == 0
        found = await mem.get_many([f"k{i}" for i in range(n)])
        assert len(found) == n, f"{n - len(found)} items put were lost to eviction"
        assert found["k0"] == f"{blob}0" and found[f"k{n - 1}"] == f"{blob}{n - 1}"
    finally:
        await mem.close()


# -- (d) a value no lower tier can hold --------------------------------------------------------


def _refuse_large(fn: Callable[..., Awaitable[Any]], limit: int) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        records = args[0] if isinstance(args[0], Mapping) else {args[0]: args[1]}
        for rec in records.values():
            if rec.size > limit:
                raise ValueTooLargeError(rec.size, limit, "the test backend's row limit")
        return await fn(*args, **kwargs)
    return wrapper


async def _evict_and_settle(mem: Memory, key: str, value: Any) -> bool:
    """Put ``value`` to the one-item SESSION and evict it; False if the put was refused."""
    try:
        await mem.put(key, value, tier=Tier.SESSION)
    except (ValueTooLargeError, UnsupportedValueError):
        return False
    await mem.put("evictor", "e", tier=Tier.SESSION)  # key spills
    await mem.flush()
    await mem.put("evictor2", "e", tier=Tier.SESSION)  # the flush retried it: settle again
    await mem.flush()
    return True


async def test_value_every_lower_tier_refuses_is_not_kept_forever(tmp_path: Path) -> None:
    mem = open_memory(tmp_path, "memory://?max_items=1")
    try:
        for tier in DURABLE:
            backend = mem._core.by_tier[tier].backend
            for name in ("put", "put_many"):
                setattr(backend, name, _refuse_large(getattr(backend, name), 10_000))
        if not await _evict_and_settle(mem, "big", b"x" * 50_000):
            return  # refused at put: an error, not a leak
        assert spill_buffer_len(mem) == 0, "a value no tier below accepts stays in memory"
        assert await mem.get("big") is None
        drops = spill_drops(mem)
        assert sum(drops.values()) >= 1 and all(drops), f"no counted drop reason: {drops}"
    finally:
        await mem.close()


async def test_value_the_codec_cannot_store_is_refused_or_dropped(tmp_path: Path) -> None:
    """An int too long for the codec's text form: SESSION keeps live objects, but no tier
    below can store what the codec cannot encode."""
    huge = 1 << 100_000  # about 30,000 decimal digits
    mem = open_memory(tmp_path, "memory://?max_items=1")
    try:
        if not await _evict_and_settle(mem, "huge", huge):
            return
        assert spill_buffer_len(mem) == 0, "an unencodable value stays in the spill buffer"
        value = await mem.get("huge")
        if value is None:
            drops = spill_drops(mem)
            assert sum(drops.values()) >= 1 and all(drops), f"no counted drop reason: {drops}"
        else:
            assert value == huge  # the codec stores it after all: it spilled
    finally:
        await mem.close()


# -- (e) sizes counted honestly ----------------------------------------------------------------


def _nested() -> dict[str, Any]:
    return {"rows": [[f"{i:04}-{j}-" + "x" * 94 for j in range(10)] for i in range(700)]}


VALUES: dict[str, Callable[[], Any]] = {
    "int": lambda: 1 << (700_000 * 8),
    "str": lambda: "x" * 700_000,
    "non-ascii str": lambda: "\u00e9" * 350_000,
    "bytes": lambda: b"x" * 700_000,
    "nested list": _nested,
    "list of big ints": lambda: [(1 << (7_000 * 8)) + i for i in range(100)],
    "numpy array": lambda: np.zeros(175_000, dtype=np.float32),
}
#: Values whose refusal as unsupported (the codec cannot store them) is also honest.
MAY_BE_UNSUPPORTED = {"int", "list of big ints"}


@pytest.mark.parametrize("name", list(VALUES))
async def test_value_larger_than_session_max_bytes_is_refused(tmp_path: Path,
                                                              name: str) -> None:
    value = VALUES[name]()
    mem = open_memory(tmp_path, f"memory://?max_bytes={512 * 1024}")
    try:
        errors: tuple[type[Exception], ...] = (ValueTooLargeError,)
        if name in MAY_BE_UNSUPPORTED:
            errors += (UnsupportedValueError,)
        try:
            await mem.put("big", value, tier=Tier.SESSION)
        except errors:
            assert session_bytes(mem) == 0
            return
        pytest.fail(f"a ~700 kB {name} was taken by a SESSION of max_bytes=512 KiB, counted as "
                    f"{session_bytes(mem)} bytes")
    finally:
        await mem.close()


@pytest.mark.parametrize("name", list(VALUES))
async def test_value_counts_its_size_against_session_max_bytes(tmp_path: Path,
                                                               name: str) -> None:
    value = VALUES[name]()
    mem = open_memory(tmp_path, f"memory://?max_bytes={8 * 2**20}")
    try:
        try:
            await mem.put("big", value, tier=Tier.SESSION)
        except UnsupportedValueError:
            if name in MAY_BE_UNSUPPORTED:
                return
            raise
        counted = session_bytes(mem)
        assert 700_000 * 0.95 <= counted <= 8 * 2**20, (
            f"a ~700 kB {name} counts as {counted} bytes against max_bytes")
    finally:
        await mem.close()
