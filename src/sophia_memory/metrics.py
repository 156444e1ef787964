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

from ._readings import METRICS, read
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
        """The families without samples: their names let the registry refuse a second
        collector of the same metrics (a second ``register`` of this or another memory)."""
        counters, latency = _families()
        return [*counters, latency]

    def collect(self) -> Iterator[Any]:
        readings = read(self.mem)
        families, latency = _families()
        for metric, family in zip(METRICS, families, strict=True):
            for labels, value in readings[metric.name]:
                family.add_metric(list(labels), value)
        for slot in self.mem._core.slots:
            window = slot.stats.latencies
            if isinstance(window, _CountingWindow):
                cumulative, buckets = 0, []
                for bound, count in zip((*window.bounds, float("inf")), window.counts,
                                        strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound),
                                    cumulative))
                latency.add_metric([slot.tier.name], buckets, window.total)
        families.insert(1, latency)
        yield from families


def _families() -> tuple[list[Any], Any]:
    """Empty metric families: one per entry of :data:`METRICS`, and the latency histogram."""
    families = [(CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily)(
        f"sophia_memory_{metric.name}", metric.help, labels=list(metric.labels))
        for metric in METRICS]
    latency = HistogramMetricFamily("sophia_memory_latency_seconds",
                                    "Call latency per tier (buckets: fractions of the "
                                    "tier's budget)", labels=["tier"])
    return families, latency


def register(mem: Memory, registry: CollectorRegistry | None = None) -> MemoryCollector:
    """Expose ``mem``'s metrics in ``registry`` (default: prometheus_client's global one).
    Returns the collector (``registry.unregister(collector)`` removes it). One memory per
    registry: a second ``register`` into the same registry raises ValueError (its series
    would repeat the first one's); give another memory a registry of its own."""
    collector = MemoryCollector(mem)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
