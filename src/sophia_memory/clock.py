"""The clock TTLs are measured on; inject one to test expiry without sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Anything with a ``time()`` method returning seconds as a float (wall-clock epoch)."""

    def time(self) -> float: ...


class SystemClock:
    """The real wall clock (``time.time``): TTLs survive restarts and cross processes."""

    time = staticmethod(time.time)


class ManualClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = float(start)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        self._now += seconds
