"""Promotion policy: hits in slower tiers are copied up; arrays reach the GPU pools on their
second hit whatever other traffic does."""

from __future__ import annotations

import numpy as np

from sophia_memory import Memory, Tier


async def tiers_holding(mem: Memory, key: str) -> list[str]:
    return [t.name for t in mem.tiers if key in await mem.keys(t)]


async def test_array_reaches_gpu_on_second_hit_despite_other_traffic(mem: Memory) -> None:
    await mem.put("other", 1, tier=Tier.SESSION)
    for _ in range(3):
        await mem.get("other")  # in-process hits: the fast path
    await mem.put("arr", np.arange(10.0), tier=Tier.PERSISTENT)
    assert await mem.get("arr") is not None
    await mem.flush()
    assert await tiers_holding(mem, "arr") == ["PERSISTENT"]  # first hit: counted only
    assert await mem.get("arr") is not None
    await mem.flush()
    assert await tiers_holding(mem, "arr") == ["GPU", "SESSION", "PERSISTENT"]
    entry = await mem.get_entry("arr")
    assert entry is not None and entry.tier is Tier.GPU and not entry.home


async def test_plain_values_are_promoted_to_session_on_first_hit(mem: Memory) -> None:
    await mem.put("doc", {"a": 1}, tier=Tier.WORKFLOW)
    await mem.get("doc")
    await mem.flush()
    assert await tiers_holding(mem, "doc") == ["SESSION", "WORKFLOW"]


async def test_in_process_hits_schedule_no_promotion(mem: Memory) -> None:
    await mem.put_many({f"k{i}": i for i in range(100)}, tier=Tier.SESSION)
    assert len(await mem.get_many([f"k{i}" for i in range(100)])) == 100
    assert mem.stats()["promotions_queued"] == 0
    await mem.flush()
    assert mem.stats()["tiers"]["GPU"]["promotions"] == 0


async def test_promote_false_copies_nothing(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    async with Memory.open(path=str(tmp_path / "n.db"), clock=clock, promote=False) as mem:
        await mem.put("k", 1, tier=Tier.PERSISTENT)
        await mem.get("k")
        await mem.flush()
        assert await tiers_holding(mem, "k") == ["PERSISTENT"]


async def test_spilled_older_value_never_reappears_after_a_ttl_put(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    """put(k, v1) spills from the full L1 to CORTEX; put(k, v2, ttl) to L1; once v2 expires
    the key is gone, not back to v1 (found by the state machine)."""
    from .conftest import small_memory

    async with small_memory(tmp_path, clock) as mem:
        await mem.put("k", "v1", tier=Tier.SESSION)
        for i in range(6):  # L1 holds 4: k spills
            await mem.put(f"fill{i}", i, tier=Tier.SESSION)
        await mem.flush()
        assert "k" in await mem.keys(Tier.CORTEX)
        await mem.put("k", "v2", tier=Tier.SESSION, ttl=1)
        assert await mem.get("k") == "v2"
        assert "k" not in await mem.keys(Tier.CORTEX)  # the spilled ancestor is gone
        clock.advance(1)
        assert await mem.get("k") is None
        assert not await mem.exists("k")


async def test_deliberate_lower_home_survives_a_ttl_put_above(mem: Memory, clock) -> None:  # type: ignore[no-untyped-def]
    await mem.put("k", "durable", tier=Tier.PERSISTENT)
    await mem.put("k", "session", tier=Tier.SESSION, ttl=1)
    assert await mem.get("k") == "session"
    clock.advance(1)
    assert await mem.get("k") == "durable"  # shadowing, as documented
