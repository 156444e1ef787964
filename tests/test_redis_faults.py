"""Fault test (issue 5): a redis-server owned by the test is killed under load and started
again. Readers never see an exception, SESSION puts raise TierUnavailableError, the other
tiers keep every value, and the tier serves again once the breaker's reset time has passed
on the memory's clock, without restarting the client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sophia_memory import ManualClock, Memory, Tier, TierUnavailableError

from .redis_servers import free_port, start

pytest.importorskip("redis.asyncio")
pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed")]

RESET = 30.0


@pytest.fixture
def server() -> Iterator[dict[str, object]]:
    port = free_port()
    state: dict[str, object] = {"port": port, "proc": start(port)}
    yield state
    proc = state["proc"]
    assert isinstance(proc, subprocess.Popen)
    proc.kill()
    proc.wait()


async def test_redis_killed_and_restarted(tmp_path: Path, clock: ManualClock,
                                          server: dict[str, object]) -> None:
    url = f"redis://127.0.0.1:{server['port']}/0?prefix=fault:"
    async with Memory.open(path=str(tmp_path / "f.db"), clock=clock,
                           tiers={Tier.SESSION: url}, call_timeout=0.5,
                           breaker_threshold=3, breaker_reset=RESET) as mem:
        for i in range(50):
            await mem.put(f"durable{i}", i, tier=Tier.PERSISTENT)
            await mem.put(f"session{i}", i, tier=Tier.SESSION)
        assert await mem.get("session3") == 3

        proc = server["proc"]
        assert isinstance(proc, subprocess.Popen)
        proc.kill()  # mid-load: readers keep going below
        proc.wait()

        async def reader(i: int) -> object:
            return await mem.get(f"durable{i}")

        values = await asyncio.gather(*(reader(i) for i in range(50)))
        assert values == list(range(50))  # no exception, nothing lost below SESSION
        assert await mem.get("session3") is None  # Redis is gone: a miss, not an error
        with pytest.raises(TierUnavailableError):
            await mem.put("new", 1, tier=Tier.SESSION)
        stats = mem.stats()["tiers"]["SESSION"]
        assert stats["breaker"] == "open" and stats["errors"] >= 3
        await mem.put("still", "fine", tier=Tier.PERSISTENT)  # other homes keep working
        assert await mem.get("still") == "fine"

        server["proc"] = start(int(server["port"]))  # type: ignore[arg-type]
        with pytest.raises(TierUnavailableError):  # breaker still open: not even tried
            await mem.put("new", 1, tier=Tier.SESSION)
        clock.advance(RESET)
        await mem.put("new", 1, tier=Tier.SESSION)  # half-open trial succeeds
        assert mem.stats()["tiers"]["SESSION"]["breaker"] == "closed"
        assert await mem.get("new") == 1
        assert await mem.get("durable7") == 7
