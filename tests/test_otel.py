"""The OpenTelemetry bridge: after traffic over three tiers, an SDK reader collects the same
figures the Prometheus collector exports, with the same attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sophia_memory import ManualClock, Memory, Tier

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sophia_memory.otel import instrument


def collect(reader: InMemoryMetricReader) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "sophia_memory"
            for metric in scope.metrics:
                out[metric.name] = {tuple(sorted(p.attributes.items())): p.value
                                    for p in metric.data.data_points}
    return out


async def test_every_metric_after_traffic_over_three_tiers(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock, gpu_reserve=0,
                           tiers={Tier.SESSION: "memory://?max_items=3"}) as mem:
        instruments = instrument(mem, provider)
        assert len(instruments) == 12
        for i in range(5):  # 5 puts into a tier of 3: evictions, spilled to CORTEX
            await mem.put(f"s{i}", i, tier=Tier.SESSION)
        await mem.flush()
        await mem.put("p", "persistent", tier=Tier.PERSISTENT)
        assert await mem.get("p") == "persistent"  # PERSISTENT hit, promoted into SESSION
        await mem.flush()
        assert await mem.get("nothing") is None
        got = collect(reader)

    ops = got["sophia_memory.operations"]

    def op(tier: str, operation: str, outcome: str) -> Any:
        return ops[(("operation", operation), ("outcome", outcome), ("tier", tier))]

    assert op("SESSION", "put", "ok") == 5
    assert op("PERSISTENT", "put", "ok") == 1
    assert op("PERSISTENT", "get", "hit") == 1
    assert op("CORTEX", "get", "miss") >= 2
    assert op("SESSION", "call", "error") == 0
    assert got["sophia_memory.evictions"][(("tier", "SESSION"),)] == 3
    assert got["sophia_memory.spills"][(("tier", "SESSION"),)] == 3
    assert got["sophia_memory.promotions"][(("tier", "SESSION"),)] == 1
    assert got["sophia_memory.items"][(("tier", "SESSION"),)] == 3
    assert got["sophia_memory.breaker_open"][(("direction", "write"), ("tier", "CORTEX"))] == 0
    assert got["sophia_memory.spill_buffer_items"][()] == 0
    assert got["sophia_memory.promotion_queue"][()] == 0
    assert set(got["sophia_memory.latency.p95"]) >= {(("tier", "CORTEX"),),
                                                     (("tier", "PERSISTENT"),)}
    assert all(v >= 0 for v in got["sophia_memory.latency.p95"].values())
    assert {dict(k)["tier"] for k in ops} == {t.name for t in mem.tiers}
