"""What a memory's metrics read from its own counters: one list of readings, shared by the
Prometheus collector (:mod:`sophia_memory.metrics`) and the OpenTelemetry bridge
(:mod:`sophia_memory.otel`), so both export the same figures under the same labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .memory import Memory

__all__ = ["METRICS", "Metric", "read"]

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class Metric:
    """One exported figure: its name (without the ``sophia_memory`` prefix), kind, help text
    and label names."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]


METRICS = (
    Metric("operations", "counter", "Operations per tier by outcome",
           ("tier", "operation", "outcome")),
    Metric("items", "gauge", "Items held", ("tier",)),
    Metric("bytes", "gauge", "Bytes held", ("tier",)),
    Metric("evictions", "counter", "Items evicted", ("tier",)),
    Metric("spills", "counter", "Items spilled out of the tier", ("tier",)),
    Metric("spills_dropped", "counter", "Spills out of the tier that no tier below took",
           ("tier",)),
    Metric("promotions", "counter", "Copies promoted into the tier", ("tier",)),
    Metric("breaker_open", "gauge", "1 while the tier's breaker is open",
           ("tier", "direction")),
    Metric("spill_buffer_items", "gauge", "Items in transit to a slower tier", ()),
    Metric("promotion_queue", "gauge", "Promotions waiting", ()),
)

_OUTCOMES = (("get", "hit", "hits"), ("get", "miss", "misses"), ("put", "ok", "puts"),
             ("delete", "ok", "deletes"), ("call", "error", "errors"),
             ("call", "refused", "refused"))

Readings = dict[str, list[tuple[tuple[str, ...], float]]]


def read(mem: Memory) -> Readings:
    """``{metric name: [(label values, value), ...]}`` for every metric of :data:`METRICS`,
    from one ``mem.stats()``; tiers switched off are left out."""
    stats = mem.stats()
    out: Readings = {m.name: [] for m in METRICS}
    enabled = {slot.tier.name for slot in mem._core.slots}
    for name, info in stats["tiers"].items():
        if name not in enabled:
            continue
        for op, outcome, field in _OUTCOMES:
            out["operations"].append(((name, op, outcome), info.get(field, 0)))
        n_items, n_bytes, n_evicted = _holdings(info.get("backend_stats", {}))
        for metric, value in (("items", n_items), ("bytes", n_bytes),
                              ("evictions", n_evicted)):
            if value is not None:
                out[metric].append(((name,), value))
        for metric in ("spills", "spills_dropped", "promotions"):
            out[metric].append(((name,), info.get(metric, 0)))
        for direction, key in (("read", "breaker"), ("write", "write_breaker")):
            state = info.get(key)
            if state is not None:
                out["breaker_open"].append(((name, direction),
                                            0.0 if state == "closed" else 1.0))
    out["spill_buffer_items"].append(((), stats.get("spill", {}).get("items", 0)))
    out["promotion_queue"].append(((), stats.get("promotion", {}).get("queued", 0)))
    return out


def _holdings(backend: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(items, bytes, evictions) from a backend's own figures; pools are summed."""
    pools = backend.get("pools")
    if isinstance(pools, dict) and pools:
        return (sum(p.get("items", 0) for p in pools.values()),
                sum(p.get("used", 0) for p in pools.values()),
                sum(p.get("evictions", 0) for p in pools.values()))
    n_items = backend.get("items", backend.get("rows"))
    return n_items, backend.get("bytes"), backend.get("evictions")
