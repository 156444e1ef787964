"""OpenTelemetry metrics for a :class:`~sophia_memory.Memory` (the ``[otel]`` extra).

>>> from sophia_memory.otel import instrument                    # doctest: +SKIP
>>> instrument(mem)      # once per Memory, on the global MeterProvider (or pass one)

The same figures as :mod:`sophia_memory.metrics` (Prometheus), read from the memory's own
counters by observable instruments when the SDK collects, so the get and put paths do no
extra work. Names use dots (``sophia_memory.operations``, ``sophia_memory.items``, ...), with
the same attributes (``tier``, ``operation``, ``outcome``, ``direction``); counters are
observable counters, the rest observable gauges. Latency is exported as each tier's recent
p50 and p95 (``sophia_memory.latency.p50`` / ``.p95``, seconds), from the window ``stats()``
reports; the Prometheus collector has the full histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import __version__
from ._readings import METRICS, Metric, read
from .errors import MissingDependencyError
from .memory import Memory

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("opentelemetry-api", "otel", "sophia_memory.otel") from exc

__all__ = ["instrument"]


def instrument(mem: Memory, meter_provider: MeterProvider | None = None) -> list[Any]:
    """Register observable instruments reporting ``mem``'s metrics on ``meter_provider``
    (default: the global one); returns them."""
    provider = meter_provider or otel_metrics.get_meter_provider()
    meter = provider.get_meter("sophia_memory", __version__)
    made: list[Any] = []
    for metric in METRICS:
        create = (meter.create_observable_counter if metric.kind == "counter"
                  else meter.create_observable_gauge)
        made.append(create(f"sophia_memory.{metric.name}", callbacks=[_observe(mem, metric)],
                           description=metric.help))
    for pct in ("p50", "p95"):
        made.append(meter.create_observable_gauge(
            f"sophia_memory.latency.{pct}", callbacks=[_latency(mem, pct)], unit="s",
            description=f"Recent {pct} call latency per tier"))
    return made


def _observe(mem: Memory, metric: Metric,
             ) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(zip(metric.labels, labels, strict=True)))
                for labels, value in read(mem)[metric.name]]
    return callback


def _latency(mem: Memory, pct: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        enabled = {slot.tier.name for slot in mem._core.slots}
        found = []
        for name, info in mem.stats()["tiers"].items():
            ms = info.get(f"{pct}_ms")
            if name in enabled and ms is not None:
                found.append(Observation(ms / 1000, {"tier": name}))
        return found
    return callback
