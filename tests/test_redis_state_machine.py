"""The whole-Memory state machine with SESSION on Redis: fakeredis always, and the real
server on this machine (marked ``redis``; skipped with the reason when unreachable)."""

from __future__ import annotations

import os
import socket
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sophia_memory import Memory, Tier
from sophia_memory.backends import register

from .conftest import small_memory
from .test_state_machine import TieredMemoryMachine

fakeredis = pytest.importorskip("fakeredis")
redis_asyncio = pytest.importorskip("redis.asyncio")

from sophia_memory.backends.redis.backend import RedisBackend  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _fake_factory(url: Any, tier: Tier, config: Any) -> RedisBackend:
    return RedisBackend(fakeredis.FakeAsyncRedis(), prefix="sm:")


register("fakeredis-sm", _fake_factory)


class FakeRedisMachine(TieredMemoryMachine):
    def make_memory(self) -> Memory:
        return small_memory(self.dir, self.clock, tiers={Tier.SESSION: "fakeredis-sm://"})


class RealRedisMachine(TieredMemoryMachine):
    def make_memory(self) -> Memory:
        self.prefix = f"smsm:{uuid.uuid4().hex}:"
        sep = "&" if "?" in REDIS_URL else "?"
        return small_memory(self.dir, self.clock,
                            tiers={Tier.SESSION: f"{REDIS_URL}{sep}prefix={self.prefix}"})

    def teardown(self) -> None:
        assert isinstance(self.mem._core.by_tier[Tier.SESSION].backend, RedisBackend)
        self.run(self.mem.close())  # first: closing flushes spills into Redis

        async def drop() -> None:
            client = redis_asyncio.Redis.from_url(REDIS_URL)
            names = [n async for n in client.scan_iter(match=self.prefix + "*", count=1000)]
            if names:
                await client.delete(*names)
            await client.aclose()

        self.run(drop())
        super().teardown()


def _redis_reachable() -> str | None:
    host, _, rest = REDIS_URL.removeprefix("redis://").partition(":")
    port = int(rest.split("/")[0] or 6379) if rest else 6379
    try:
        socket.create_connection((host or "127.0.0.1", port), timeout=1).close()
    except OSError as exc:
        return f"no Redis at {REDIS_URL}: {exc}"
    return None


def _assert_exercised(machine: type[TieredMemoryMachine]) -> None:
    """The runs spilled into Redis and promoted out of it: the property was not vacuous."""
    counts = machine.exercised
    for name in ("spills", "promotions", "evictions", "hits"):
        assert counts[name] > 0, (name, dict(counts))


def test_state_machine_with_session_on_fakeredis() -> None:
    FakeRedisMachine.exercised = Counter()
    FakeRedisMachine.TestCase.settings = SETTINGS
    FakeRedisMachine.TestCase().runTest()
    _assert_exercised(FakeRedisMachine)


@pytest.mark.redis
def test_state_machine_with_session_on_real_redis() -> None:
    reason = _redis_reachable()
    if reason:
        pytest.skip(reason)
    RealRedisMachine.exercised = Counter()
    RealRedisMachine.TestCase.settings = SETTINGS
    RealRedisMachine.TestCase().runTest()
    _assert_exercised(RealRedisMachine)
