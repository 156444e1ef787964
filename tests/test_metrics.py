"""Prometheus metrics: scraped after traffic over three tiers, every metric with its labels
and values; registering adds nothing to the hit path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophia_memory import ManualClock, Memory, Tier

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sophia_memory.metrics import budget_buckets, register  # noqa: E402


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_every_metric_after_traffic_over_three_tiers(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    registry = CollectorRegistry()
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock, gpu_reserve=0,
                           tiers={Tier.SESSION: "memory://?max_items=3"}) as mem:
        register(mem, registry)
        for i in range(5):  # 5 puts into a tier of 3: 2 evictions, spilled to CORTEX
            await mem.put(f"s{i}", i, tier=Tier.SESSION)
        await mem.flush()
        await mem.put("p", "persistent", tier=Tier.PERSISTENT)
        assert await mem.get("s4") == 4  # SESSION hit
        assert await mem.get("p") == "persistent"  # PERSISTENT hit, promoted into SESSION
        await mem.flush()
        assert await mem.get("nothing") is None  # a miss everywhere
        assert await mem.delete("p") is True
        samples = scrape(registry)

    ops = "sophia_memory_operations_total"
    assert value(samples, ops, tier="SESSION", operation="put", outcome="ok") == 5
    assert value(samples, ops, tier="SESSION", operation="get", outcome="hit") >= 1
    assert value(samples, ops, tier="PERSISTENT", operation="put", outcome="ok") == 1
    assert value(samples, ops, tier="PERSISTENT", operation="get", outcome="hit") == 1
    assert value(samples, ops, tier="PERSISTENT", operation="get", outcome="miss") >= 1
    assert value(samples, ops, tier="CORTEX", operation="get", outcome="miss") >= 2
    for tier in ("SESSION", "CORTEX", "PERSISTENT"):
        assert value(samples, ops, tier=tier, operation="call", outcome="error") == 0
        assert value(samples, ops, tier=tier, operation="call", outcome="refused") == 0
        assert value(samples, "sophia_memory_breaker_open", tier=tier, direction="read") == 0
    assert value(samples, ops, tier="PERSISTENT", operation="delete", outcome="ok") == 1
    # 5 puts and one promotion into a tier of 3 items: 3 evictions, each spilled to CORTEX
    assert value(samples, "sophia_memory_evictions_total", tier="SESSION") == 3
    assert value(samples, "sophia_memory_spills_total", tier="SESSION") == 3
    assert value(samples, "sophia_memory_spills_dropped_total", tier="SESSION") == 0
    assert value(samples, "sophia_memory_promotions_total", tier="SESSION") == 1
    assert value(samples, "sophia_memory_items", tier="SESSION") == 2  # p's copy deleted
    assert value(samples, "sophia_memory_items", tier="CORTEX") == 3  # the spilled rows
    assert value(samples, "sophia_memory_bytes", tier="SESSION") > 0
    assert value(samples, "sophia_memory_spill_buffer_items") == 0
    assert value(samples, "sophia_memory_promotion_queue") == 0
    # the histogram: buckets at fractions of each tier's budget, cumulative, +Inf == count
    bounds = budget_buckets(Tier.PERSISTENT)
    assert bounds[5] == Tier.PERSISTENT.budget_ms / 1000
    count = value(samples, "sophia_memory_latency_seconds_count", tier="PERSISTENT")
    assert count >= 2  # the reads of PERSISTENT: the hit of "p" and the miss
    assert value(samples, "sophia_memory_latency_seconds_bucket", tier="PERSISTENT",
                 le="+Inf") == count
    last = 0.0
    for bound in bounds:
        here = value(samples, "sophia_memory_latency_seconds_bucket", tier="PERSISTENT",
                     le=repr(bound))
        assert last <= here <= count
        last = here
    assert value(samples, "sophia_memory_latency_seconds_sum", tier="PERSISTENT") > 0


async def test_a_failing_tier_shows_errors_and_an_open_breaker(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    registry = CollectorRegistry()
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock,
                           breaker_threshold=2) as mem:
        register(mem, registry)
        slot = mem._core.by_tier[Tier.PERSISTENT]

        async def broken(*args: object) -> None:
            raise OSError("disk on fire")

        slot.backend.get = broken  # type: ignore[method-assign]
        slot.backend.get_many = broken  # type: ignore[method-assign]
        for i in range(3):
            assert await mem.get(f"k{i}") is None  # a failing tier reads as a miss
        samples = scrape(registry)
        assert value(samples, "sophia_memory_operations_total", tier="PERSISTENT",
                     operation="call", outcome="error") == 2
        assert value(samples, "sophia_memory_breaker_open", tier="PERSISTENT",
                     direction="read") == 1
        assert value(samples, "sophia_memory_breaker_open", tier="PERSISTENT",
                     direction="write") == 0  # reads failed, writes did not


async def test_a_second_register_into_one_registry_is_refused(tmp_path: Path,
                                                            clock: ManualClock) -> None:
    """Series of two collectors in one registry would repeat each other (no label tells
    memories apart): the second register raises, and a registry of its own works."""
    registry = CollectorRegistry()
    async with Memory.open(path=str(tmp_path / "a.db"), clock=clock) as one, \
            Memory.open(path=str(tmp_path / "b.db"), clock=clock) as two:
        register(one, registry)
        for mem in (one, two):
            with pytest.raises(ValueError, match="Duplicated timeseries"):
                register(mem, registry)
        await one.put("k", 1)
        assert value(scrape(registry), "sophia_memory_operations_total", tier="SESSION",
                     operation="put", outcome="ok") == 1.0
        other = CollectorRegistry()
        register(two, other)
        assert scrape(other)
