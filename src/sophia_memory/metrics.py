"""Prometheus metrics for a :class:`~sophia_memory.Memory` (the ``[metrics]`` extra).

>>> from prometheus_client import start_http_server             # doctest: +SKIP
>>> from sophia_memory.metrics import register
>>> register(mem)            # once per Memory; then scrape the default registry
>>> start_http_server(9100)

Everything is read from the memory's own counters when the registry is scraped, so the get
and put paths do no extra work: nothing is counted twice and a hit costs the same with metrics
on as off. The one addition is the latency histogram: registering makes each tier's latency
window also count every latency it records into the buckets (the tier's budget times
0.01 ... 5). In-process hits record a latency for one hit in 1024 (the same sample that
``stats()`` reports percentiles from); remote tiers record every call.

Metrics, each labelled ``tier`` (``GPU``, ``SESSION``, ...):

* ``sophia_memory_operations_total{operation, outcome}``: ``get``/``hit``, ``get``/``miss``,
  ``put``/``ok``, ``delete``/``ok``, ``call``/``error`` (the tier failed: counts toward its
  breaker) and ``call``/``refused`` (a bad request, refused with a typed error);
* ``sophia_memory_latency_seconds``: histogram of call latencies, buckets relative to the
  tier's budget;
* ``sophia_memory_items``, ``sophia_memory_bytes``: what the tier holds (where the backend
  can tell; a SQLite tier counts rows, not bytes);
* ``sophia_memory_evictions_total``, ``sophia_memory_spills_total`` (items spilled out of the
  tier), ``sophia_memory_spills_dropped_total``, ``sophia_memory_promotions_total`` (copies
  promoted into the tier);
* ``sophia_memory_breaker_open{direction}``: 1 while the tier's read or write breaker is open.

Plus ``sophia_memory_spill_buffer_items`` and ``sophia_memory_promotion_queue`` (no label).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import MissingDependencyError
from .memory import Memory
from .tiers import Tier

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("prometheus-client", "metrics",
                                 "sophia_memory.metrics") from exc

__all__ = ["MemoryCollector", "budget_buckets", "register"]

#: Bucket bounds as fractions of a tier's latency budget.
BUDGET_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def budget_buckets(tier: Tier) -> tuple[float, ...]:
    """The latency histogram's upper bounds for ``tier``, in seconds."""
    budget = tier.budget_ms / 1000
    return tuple(round(budget * f, 9) for f in BUDGET_FRACTIONS)


class _CountingWindow(deque[float]):
    """A tier's window of recent latencies that also counts each one into histogram buckets."""

    def __init__(self, window: deque[float], bounds: tuple[float, ...]) -> None:
        super().__init__(window, maxlen=window.maxlen)
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def append(self, seconds: float) -> None:
        super().append(seconds)
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


class MemoryCollector(Collector):
    """Reads a memory's counters at each scrape (see the module's docstring)."""

    def __init__(self, mem: Memory) -> None:
        self.mem = mem
        for slot in mem._core.slots:
            st = slot.stats
            if not isinstance(st.latencies, _CountingWindow):
                st.latencies = _CountingWindow(st.latencies, budget_buckets(slot.tier))

    def describe(self) -> Iterable[Any]:
        return []  # collected lazily: the tiers are known only at scrape time

    def collect(self) -> Iterator[Any]:
        stats = self.mem.stats()
        ops = CounterMetricFamily("sophia_memory_operations", "Operations per tier by outcome",
                                  labels=["tier", "operation", "outcome"])
        latency = HistogramMetricFamily("sophia_memory_latency_seconds",
                                        "Call latency per tier (buckets: fractions of the "
                                        "tier's budget)", labels=["tier"])
        items = GaugeMetricFamily("sophia_memory_items", "Items held", labels=["tier"])
        held = GaugeMetricFamily("sophia_memory_bytes", "Bytes held", labels=["tier"])
        evictions = CounterMetricFamily("sophia_memory_evictions", "Items evicted",
                                        labels=["tier"])
        spills = CounterMetricFamily("sophia_memory_spills", "Items spilled out of the tier",
                                     labels=["tier"])
        dropped = CounterMetricFamily("sophia_memory_spills_dropped",
                                      "Spills out of the tier that no tier below took",
                                      labels=["tier"])
        promotions = CounterMetricFamily("sophia_memory_promotions",
                                         "Copies promoted into the tier", labels=["tier"])
        breaker = GaugeMetricFamily("sophia_memory_breaker_open",
                                    "1 while the tier's breaker is open",
                                    labels=["tier", "direction"])
        by_tier = {slot.tier.name: slot for slot in self.mem._core.slots}
        for name, info in stats["tiers"].items():
            slot = by_tier.get(name)
            if slot is None:
                continue  # switched off or unavailable
            for op, outcome, field in (("get", "hit", "hits"), ("get", "miss", "misses"),
                                       ("put", "ok", "puts"), ("delete", "ok", "deletes"),
                                       ("call", "error", "errors"),
                                       ("call", "refused", "refused")):
                ops.add_metric([name, op, outcome], info.get(field, 0))
            window = slot.stats.latencies
            if isinstance(window, _CountingWindow):
                cumulative, buckets = 0, []
                for bound, count in zip((*window.bounds, float("inf")), window.counts,
                                        strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound),
                                    cumulative))
                latency.add_metric([name], buckets, window.total)
            n_items, n_bytes, n_evicted = _holdings(info.get("backend_stats", {}))
            if n_items is not None:
                items.add_metric([name], n_items)
            if n_bytes is not None:
                held.add_metric([name], n_bytes)
            if n_evicted is not None:
                evictions.add_metric([name], n_evicted)
            spills.add_metric([name], info.get("spills", 0))
            dropped.add_metric([name], info.get("spills_dropped", 0))
            promotions.add_metric([name], info.get("promotions", 0))
            for direction, key in (("read", "breaker"), ("write", "write_breaker")):
                state = info.get(key)
                if state is not None:
                    breaker.add_metric([name, direction], 0.0 if state == "closed" else 1.0)
        yield from (ops, latency, items, held, evictions, spills, dropped, promotions,
                    breaker)
        spill = stats.get("spill", {})
        buffered = GaugeMetricFamily("sophia_memory_spill_buffer_items",
                                     "Items in transit to a slower tier")
        buffered.add_metric([], spill.get("items", 0))
        yield buffered
        promotion = stats.get("promotion", {})
        queued = GaugeMetricFamily("sophia_memory_promotion_queue", "Promotions waiting")
        queued.add_metric([], promotion.get("queued", 0))
        yield queued


def _holdings(backend: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(items, bytes, evictions) from a backend's own figures; pools are summed."""
    pools = backend.get("pools")
    if isinstance(pools, dict) and pools:
        return (sum(p.get("items", 0) for p in pools.values()),
                sum(p.get("used", 0) for p in pools.values()),
                sum(p.get("evictions", 0) for p in pools.values()))
    n_items = backend.get("items", backend.get("rows"))
    return n_items, backend.get("bytes"), backend.get("evictions")


def register(mem: Memory, registry: CollectorRegistry | None = None) -> MemoryCollector:
    """Expose ``mem``'s metrics in ``registry`` (default: prometheus_client's global one).
    Returns the collector (``registry.unregister(collector)`` removes it)."""
    collector = MemoryCollector(mem)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
