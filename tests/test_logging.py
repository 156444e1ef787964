"""Repeated warnings are rate-limited with a count; the logger hierarchy is the documented one."""

from __future__ import annotations

import logging

import pytest

from sophia_memory._logging import RateLimited, logger


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_within_the_interval_are_counted_and_reported_once(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Ticks()
    limited = RateLimited(logger("test"), interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="sophia_memory"):
        for i in range(135):
            clock.now = i * 0.1
            limited.warning("%s could not drop %d stale copies", "SESSION", 1)
        assert limited.suppressed("%s could not drop %d stale copies") == 134
        assert len(caplog.records) == 1
        clock.now = 61.0
        limited.warning("%s could not drop %d stale copies", "SESSION", 2)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["SESSION could not drop 1 stale copies",
                        "SESSION could not drop 2 stale copies (134 more like this in the "
                        "last 61 s)"]
    assert limited.suppressed("%s could not drop %d stale copies") == 0


def test_different_messages_are_limited_separately(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimited(logger("test"), clock=Ticks())
    with caplog.at_level(logging.WARNING, logger="sophia_memory"):
        limited.warning("a %s", 1)
        limited.error("b %s", 2)
        limited.warning("a %s", 3)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "a 1"), ("ERROR", "b 2")]


def test_nothing_is_counted_while_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimited(logger("test"), clock=Ticks())
    with caplog.at_level(logging.ERROR, logger="sophia_memory"):
        limited.warning("quiet %s", 1)
    assert limited.suppressed("quiet %s") == 0 and not caplog.records


def test_the_parts_log_under_the_library_logger() -> None:
    from sophia_memory.engine import spill, writes
    assert writes.log.name == "sophia_memory.writes" and writes.warn.log is writes.log
    assert spill.log.name == "sophia_memory.spill"
    assert logger().name == "sophia_memory" and logger("redis").parent is logger()
