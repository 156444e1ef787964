"""The library's loggers and a rate limit for warnings that repeat.

Everything logs under the ``sophia_memory`` logger; its children name the part:
``sophia_memory.writes``, ``.spill``, ``.promotion``, ``.redis``, ``.gpu``, ``.snowflake``.
The library adds no handlers (configure ``logging`` as usual).

A failing tier can make the same warning fire for every call. :class:`RateLimited` lets the
first one through, counts the repeats for ``interval`` seconds, and reports the count with
the next one it lets through, so a log keeps the information without the flood.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimited", "logger"]


def logger(part: str = "") -> logging.Logger:
    """The library's logger (``part`` names a child: ``logger("spill")``)."""
    return logging.getLogger(f"sophia_memory.{part}" if part else "sophia_memory")


class RateLimited:
    """A logger's warnings and errors, each message template at most once per ``interval``
    seconds; repeats in between are counted and reported with the next one let through."""

    __slots__ = ("_last", "_suppressed", "clock", "interval", "log")

    def __init__(self, log: logging.Logger, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit(logging.ERROR, msg, args)

    def suppressed(self, msg: str) -> int:
        """How many messages of template ``msg`` are held back now."""
        return self._suppressed.get(msg, 0)

    def _emit(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        if not self.log.isEnabledFor(level):
            return
        now = self.clock()
        last = self._last.get(msg)
        if last is not None and now - last < self.interval:
            self._suppressed[msg] = self._suppressed.get(msg, 0) + 1
            return
        self._last[msg] = now
        held = self._suppressed.pop(msg, 0)
        if held:
            self.log.log(level, msg + " (%d more like this in the last %.0f s)",
                         *args, held, now - (last if last is not None else now))
        else:
            self.log.log(level, msg, *args)
