"""The workflow tier (L5): versions, optimistic concurrency, history and retention."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sophia_memory import InvalidArgumentError, ManualClock, Memory, Tier, VersionConflictError


async def test_each_put_appends_a_version(mem: Memory, clock: ManualClock) -> None:
    assert await mem.put("wf", {"step": 1}, tier=Tier.WORKFLOW) == 1
    clock.advance(1)
    assert await mem.put("wf", {"step": 2}, tier=Tier.WORKFLOW) == 2
    assert await mem.get("wf") == {"step": 2}
    assert await mem.get("wf", version=1) == {"step": 1}
    assert await mem.get("wf", version=3) is None
    history = await mem.history("wf")
    assert [e.version for e in history] == [2, 1]
    assert history[0].created_at == history[1].created_at + 1
    assert [e.value for e in await mem.history("wf", limit=1)] == [{"step": 2}]
    entry = await mem.get_entry("wf")
    assert entry is not None and entry.version == 2 and entry.tier is Tier.WORKFLOW


async def test_expected_version(mem: Memory) -> None:
    assert await mem.put("wf", "a", tier=Tier.WORKFLOW, expected_version=0) == 1
    with pytest.raises(VersionConflictError) as err:
        await mem.put("wf", "b", tier=Tier.WORKFLOW, expected_version=0)
    assert err.value.current_version == 1 and err.value.expected_version == 0
    assert await mem.put("wf", "b", tier=Tier.WORKFLOW, expected_version=1) == 2
    assert await mem.get("wf") == "b"
    # a tier without versions compares its item's version the same way (none there: 0)
    with pytest.raises(VersionConflictError) as err:
        await mem.put("k", 1, tier=Tier.PERSISTENT, expected_version=1)
    assert err.value.current_version == 0 and await mem.get("k") is None
    with pytest.raises(InvalidArgumentError):
        await mem.put("wf", 1, tier=Tier.WORKFLOW, expected_version=-1)


async def test_hundred_racing_writers_one_wins_history_gap_free(mem: Memory) -> None:
    await mem.put("wf", {"n": 0}, tier=Tier.WORKFLOW)

    async def writer(i: int) -> int | str:
        try:
            v = await mem.put("wf", {"n": i}, tier=Tier.WORKFLOW, expected_version=1)
            return v if v is not None else "none"
        except VersionConflictError as exc:
            assert exc.current_version == 2
            return "conflict"

    results = await asyncio.gather(*(writer(i) for i in range(100)))
    assert results.count(2) == 1 and results.count("conflict") == 99
    versions = [e.version for e in await mem.history("wf")]
    assert versions == [2, 1]
    for _ in range(20):  # unconditional writers append without gaps
        await asyncio.gather(*(mem.put("wf", i, tier=Tier.WORKFLOW) for i in range(5)))
    versions = [e.version for e in await mem.history("wf")]
    assert versions == list(range(102, 2, -1))  # gap-free; default retention keeps 100


async def test_retention_keeps_the_newest(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "r.db"), clock=clock, workflow_retain=3) as mem:
        for i in range(10):
            await mem.put("wf", i, tier=Tier.WORKFLOW)
        assert [e.version for e in await mem.history("wf")] == [10, 9, 8]
        assert await mem.get("wf", version=7) is None
        assert await mem.get("wf", version=8) == 7


async def test_delete_removes_every_version_and_versions_restart(mem: Memory) -> None:
    for i in range(3):
        await mem.put("wf", i, tier=Tier.WORKFLOW)
    assert await mem.delete("wf") is True
    assert await mem.history("wf") == []
    assert await mem.get("wf", version=1) is None
    assert await mem.put("wf", "again", tier=Tier.WORKFLOW) == 1


async def test_versions_survive_reopen_and_promotion_keeps_version(tmp_path: Path,
                                                                   clock: ManualClock) -> None:
    path = str(tmp_path / "w.db")
    async with Memory.open(path=path, clock=clock) as mem:
        await mem.put("wf", "v1", tier=Tier.WORKFLOW)
        await mem.put("wf", "v2", tier=Tier.WORKFLOW)
    async with Memory.open(path=path, clock=clock) as mem:
        assert await mem.get("wf") == "v2"
        await mem.flush()
        entry = await mem.get_entry("wf")
        assert entry is not None and entry.tier is Tier.SESSION and entry.version == 2
        assert await mem.put("wf", "v3", tier=Tier.WORKFLOW, expected_version=2) == 3
        assert await mem.get("wf") == "v3"  # the promoted copy was invalidated


async def test_expired_versions_are_hidden(mem: Memory, clock: ManualClock) -> None:
    await mem.put("wf", "old", tier=Tier.WORKFLOW)
    await mem.put("wf", "new", tier=Tier.WORKFLOW, ttl=10)
    clock.advance(11)
    assert await mem.get("wf") is None
    assert [e.value for e in await mem.history("wf")] == ["old"]
    assert await mem.get("wf", version=1) == "old"


async def test_bad_version_arguments(mem: Memory) -> None:
    with pytest.raises(InvalidArgumentError):
        await mem.get("wf", version=0)
    with pytest.raises(InvalidArgumentError):
        await mem.history("wf", limit=0)


async def test_purge_never_resurrects_an_older_version(mem: Memory, clock: ManualClock) -> None:
    await mem.put("wf", "old", tier=Tier.WORKFLOW)
    await mem.put("wf", "new", tier=Tier.WORKFLOW, ttl=1)
    clock.advance(1)
    assert await mem.get("wf") is None
    await mem.purge_expired()
    assert await mem.get("wf") is None
    assert not await mem.exists("wf")
    assert await mem.history("wf") == []
