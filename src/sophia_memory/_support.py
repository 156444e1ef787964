"""Small pieces the front composes: per-tier statistics, the circuit breaker, call keys."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import UnsupportedValueError

__all__ = ["CircuitBreaker", "TierStats", "canonical_hash"]


class TierStats:
    """Counters and a window of recent latencies (seconds) for one tier."""

    __slots__ = ("deletes", "errors", "hits", "latencies", "misses", "promotions", "puts",
                 "spills", "spills_dropped")

    def __init__(self, window: int = 2048) -> None:
        self.hits = self.misses = self.puts = self.deletes = self.errors = 0
        self.promotions = self.spills = self.spills_dropped = 0
        self.latencies: deque[float] = deque(maxlen=window)

    def percentiles(self) -> dict[str, float | None]:
        """p50/p95/p99 of the recent latencies, in milliseconds."""
        if not self.latencies:
            return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
        data = sorted(self.latencies)
        n = len(data)

        def pick(q: float) -> float:
            return round(data[min(n - 1, int(q * n))] * 1000, 4)

        return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99)}


class CircuitBreaker:
    """Closed until ``threshold`` consecutive failures; then open for ``reset_after`` seconds,
    after which one trial call is let through (half-open): success closes it again."""

    __slots__ = ("_clock", "failures", "opened_at", "reset_after", "threshold", "trips")

    def __init__(self, threshold: int, reset_after: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trips = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self.opened_at >= self.reset_after else "open"

    def allow(self) -> bool:
        """Whether a call may go to the tier now."""
        if self.opened_at is None:
            return True
        if self._clock() - self.opened_at >= self.reset_after:
            self.opened_at = self._clock()  # one trial per reset period
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            if self.opened_at is None:
                self.trips += 1
            self.opened_at = self._clock()


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise UnsupportedValueError("cache-key arguments: dict keys must be str")
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    raise UnsupportedValueError(
        f"cannot build a cache key from an argument of type {type(value).__qualname__}; "
        "pass key= to cached() to build keys yourself")


def canonical_hash(*parts: Any) -> str:
    """A stable hex digest of JSON-like ``parts``: equal for equal data whatever the dict
    order, the same across processes and runs."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()
