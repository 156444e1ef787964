"""The Redis backend: the shared conformance suite against the real server on this machine
(REDIS_URL, default redis://127.0.0.1:6379/0; skipped with the reason when unreachable) and
against fakeredis; a whole Memory with SESSION on Redis; foreign payloads refused."""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import DecodeError, ManualClock, Memory, Tier
from sophia_memory.backends.base import Backend
from sophia_memory.testing import BackendTests

redis_asyncio = pytest.importorskip("redis.asyncio")
fakeredis = pytest.importorskip("fakeredis")

from sophia_memory.backends.redis.backend import RedisBackend  # noqa: E402

from .conftest import drop_prefix, real_redis_or_skip  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def _real_redis_or_skip() -> Any:
    return await real_redis_or_skip(REDIS_URL)


@pytest.mark.redis
class TestRealRedisBackend(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        client = await _real_redis_or_skip()
        prefix = f"smtest:{uuid.uuid4().hex}:"
        backend = RedisBackend(client, prefix=prefix)
        assert backend._wire is not None  # the hiredis-packed fast path
        self._cleanup = (client, prefix)
        return backend

    @pytest.fixture(autouse=True)
    async def _clean(self) -> AsyncIterator[None]:
        yield
        client, prefix = getattr(self, "_cleanup", (None, None))
        if client is not None:
            fresh = redis_asyncio.Redis.from_url(REDIS_URL)
            await drop_prefix(fresh, prefix)
            await fresh.aclose()


@pytest.mark.redis
class TestRealRedisClientPath(TestRealRedisBackend):
    """The same suite with the client's methods instead of the hiredis-packed fast path."""

    async def make_backend(self, tmp_path: Path) -> Backend:
        client = await _real_redis_or_skip()
        prefix = f"smtest:{uuid.uuid4().hex}:"
        self._cleanup = (client, prefix)
        backend = RedisBackend(client, prefix=prefix, wire=False)
        assert backend._wire is None
        return backend


class TestFakeRedisBackend(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return RedisBackend(fakeredis.FakeAsyncRedis(), prefix="t:")


@pytest.mark.redis
async def test_memory_with_session_on_real_redis(tmp_path: Path, clock: ManualClock) -> None:
    await (await _real_redis_or_skip()).aclose()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}"
    async with Memory.open(path=str(tmp_path / "r.db"), clock=clock,
                           tiers={Tier.SESSION: url}) as mem:
        try:
            assert "redis" in mem.stats()["tiers"]["SESSION"]["backend"]
            await mem.put("user:1", {"cart": [1, 2]}, ttl=60)
            assert await mem.get("user:1") == {"cart": [1, 2]}
            await mem.put_many({"a": 1, "b": (2, b"x")})
            assert await mem.get_many(["a", "b", "zz"]) == {"a": 1, "b": (2, b"x")}
            await mem.put("p", "durable", tier=Tier.PERSISTENT)
            assert await mem.get("p") == "durable"
            await mem.flush()
            entry = await mem.get_entry("p")
            assert entry is not None and entry.tier is Tier.SESSION  # promoted into Redis
            await mem.put("p", "newer", tier=Tier.PERSISTENT)
            assert await mem.get("p") == "newer"  # the Redis copy was invalidated
            clock.advance(61)
            assert await mem.get("user:1") is None  # header expiry on the memory's clock
            assert await mem.delete("a") is True and not await mem.exists("a")
        finally:
            client = redis_asyncio.Redis.from_url(REDIS_URL)
            await drop_prefix(client, prefix)
            await client.aclose()


MARKER = "/tmp/sophia-memory-pwned"


def _forget(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _exists(path: str) -> bool:
    return os.path.exists(path)


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/sophia-memory-pwned",))


@pytest.mark.parametrize("alone", [False, True], ids=["tiers-above", "session-alone"])
@pytest.mark.parametrize("server", ["fakeredis", pytest.param("real", marks=pytest.mark.redis)])
@pytest.mark.parametrize("planted", [
    pickle.dumps(_Exploit()), b"\x03" + b"\x00" * 32 + pickle.dumps(_Exploit()),
    b"garbage\xff\xfe", b"SMr1\xff\xff\xff\xffbroken",
])
async def test_foreign_or_malicious_payloads_are_refused(tmp_path: Path, clock: ManualClock,
                                                         planted: bytes, server: str,
                                                         alone: bool) -> None:
    """Through every read path: records (a tier above could take a promoted copy) and bare
    payloads (SESSION alone)."""
    _forget(MARKER)
    client = fakeredis.FakeAsyncRedis() if server == "fakeredis" else await _real_redis_or_skip()
    prefix = f"evil:{uuid.uuid4().hex}:"
    backend = RedisBackend(client, prefix=prefix)
    from sophia_memory.backends import register

    register("fakeredis-test", lambda url, tier, config: backend)
    async with Memory.open(path=str(tmp_path / "f.db"), clock=clock,
                           tiers={Tier.SESSION: "fakeredis-test://",
                                  **({t: None for t in Tier if t is not Tier.SESSION}
                                     if alone else {})}) as mem:
        await client.set(prefix + "evil", planted)
        try:
            with pytest.raises(DecodeError):
                await mem.get("evil")
            with pytest.raises(DecodeError):
                await mem.get_many(["evil"])
        finally:
            if server == "real":
                fresh = redis_asyncio.Redis.from_url(REDIS_URL)
                await drop_prefix(fresh, prefix)
                await fresh.aclose()
    assert not _exists(MARKER), "a planted payload executed code"
