"""Small pieces the front composes: per-tier statistics, the circuit breaker, the deadline
watchdog for remote calls, call keys."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from .errors import UnsupportedValueError

__all__ = ["CircuitBreaker", "Deadlines", "TierStats", "canonical_hash"]


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


class Deadlines:
    """Cuts off calls that run past their deadline, with one watchdog task for all of them
    instead of a timer per call (``asyncio.timeout`` schedules and cancels a timer handle on
    every call: a remote tier's hot path pays for it on each get and put).

    A call registers its task and deadline (:meth:`enter`), and removes them when it ends
    (:meth:`leave`). The watchdog wakes every ``tick`` seconds of the loop's clock while calls
    are registered and cancels the tasks whose deadline has passed; :meth:`expired` tells the
    call that the CancelledError it caught was the watchdog's, so it raises TimeoutError
    instead. A call is cut off between its deadline and ``tick`` seconds later.
    """

    __slots__ = ("calls", "cut", "tick", "watchdog")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.calls: dict[asyncio.Task[Any], float] = {}
        self.cut: set[asyncio.Task[Any]] = set()
        self.watchdog: asyncio.Task[None] | None = None

    def enter(self, seconds: float) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is None or task in self.calls:  # not in a task, or nested: no second deadline
            return None
        loop = task.get_loop()
        self.calls[task] = loop.time() + seconds
        if self.watchdog is None:
            self.watchdog = loop.create_task(self._watch())
        return task

    def leave(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self.calls.pop(task, None)
            self.cut.discard(task)

    def expired(self, task: asyncio.Task[Any] | None) -> bool:
        """After a CancelledError: whether the watchdog cut ``task`` off (then the cancel
        request is withdrawn)."""
        if task is not None and task in self.cut:
            self.cut.discard(task)
            task.uncancel()
            return True
        return False

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.calls:
                await asyncio.sleep(self.tick)  # loop time: a watchdog's cadence
                now = loop.time()
                for task, deadline in list(self.calls.items()):
                    if deadline <= now and task not in self.cut and not task.done():
                        self.cut.add(task)
                        task.cancel()
        finally:
            self.watchdog = None

    async def close(self) -> None:
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog


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
