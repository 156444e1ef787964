from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import ManualClock, Memory, Tier


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's SOPHIA_MEMORY_* settings or writes to their home."""
    for name in list(os.environ):
        if name.startswith("SOPHIA_MEMORY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    yield


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def mem(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Memory]:
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock,
                           host_pool_memory="4MiB") as m:
        yield m


def small_memory(tmp_path: Path, clock: Any, **kw: Any) -> Memory:
    """A memory whose bounded tiers are tiny, so eviction and spill happen constantly."""
    tiers = {Tier.SESSION: "memory://?max_items=4", Tier.GPU: "host://?memory=4KiB"}
    tiers.update(kw.pop("tiers", {}))
    return Memory.open(path=str(tmp_path / "small.db"), clock=clock, tiers=tiers,
                       gpu_reserve=0, **kw)


async def real_redis_or_skip(url: str) -> Any:
    """A ``redis.asyncio`` client of the server at ``url``, or a skip that says why not."""
    redis_asyncio = pytest.importorskip("redis.asyncio")
    client = redis_asyncio.Redis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        await client.aclose()
        pytest.skip(f"no Redis at {url}: {exc}")
    return client
