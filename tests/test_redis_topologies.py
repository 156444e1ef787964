"""Redis Cluster (``redis+cluster://``, three primaries) and Sentinel (``redis+sentinel://``)
servers owned by the tests: the conformance suite runs against both, a whole Memory keeps its
SESSION tier there, and key tracking works through Sentinel."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from sophia_memory import ConfigError, Memory, Tier
from sophia_memory.backends import open_backend
from sophia_memory.backends.base import Backend
from sophia_memory.backends.redis.backend import RedisBackend
from sophia_memory.config import MemoryConfig
from sophia_memory.testing import BackendTests

from .redis_servers import start_cluster, start_sentinel, stop

pytest.importorskip("redis.asyncio")
pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(shutil.which("redis-server") is None
                                 or shutil.which("redis-cli") is None,
                                 reason="redis-server / redis-cli are not installed")]

SERVICE = "sm-primary"
OFF = {t: None for t in (Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR, Tier.WORKFLOW)}


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports, procs = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])
    finally:
        stop(procs)


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port, procs = start_sentinel(tmp_path_factory.mktemp("sentinel"), SERVICE)
    try:
        yield f"redis+sentinel://127.0.0.1:{port}/{SERVICE}/0"
    finally:
        stop(procs)


def _open(url: str) -> Backend:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return open_backend(f"{url}?prefix={prefix}", Tier.SESSION, MemoryConfig())


class _TopologyBackendTests(BackendTests):
    """The conformance suite on a topology the tests start (``url_fixture``); ``wired``:
    whether the backend takes the hiredis-packed fast path there."""

    url_fixture: str
    wired: bool

    @pytest.fixture(autouse=True)
    def _url(self, request: pytest.FixtureRequest) -> None:
        self.url = request.getfixturevalue(self.url_fixture)

    async def make_backend(self, tmp_path: Path) -> Backend:
        backend = _open(self.url)
        assert isinstance(backend, RedisBackend)
        assert (backend._wire is not None) is self.wired
        return backend


class TestClusterBackend(_TopologyBackendTests):
    url_fixture, wired = "cluster_url", True  # one Wire per node


class TestSentinelBackend(_TopologyBackendTests):
    url_fixture, wired = "sentinel_url", True  # on the primary's pool


@pytest.fixture
async def cluster_backend(cluster_url: str) -> AsyncIterator[RedisBackend]:
    backend = _open(cluster_url)
    assert isinstance(backend, RedisBackend)
    yield backend
    await backend.close()


async def test_cluster_get_many_spans_hash_slots(cluster_backend: RedisBackend) -> None:
    from sophia_memory.tiers import Record

    keys = [f"user:{i}" for i in range(200)]  # spread over every primary's slots
    await cluster_backend.put_many({k: Record(k.encode(), None, True, len(k)) for k in keys})
    got = await cluster_backend.get_many(keys, 0.0)
    assert {k: r.payload for k, r in got.items()} == {k: k.encode() for k in keys}
    assert sorted(await cluster_backend.keys("user:", 0.0)) == sorted(keys)
    assert await cluster_backend.delete_many(keys[:50], 0.0) == 50
    assert len(await cluster_backend.get_many(keys, 0.0)) == 150


@pytest.mark.parametrize("which", ["cluster", "sentinel"])
async def test_memory_session_on_cluster_and_sentinel(tmp_path: Path, which: str,
                                                      request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{which}_url")
    prefix = f"m{uuid.uuid4().hex[:8]}:"
    async with Memory.open(path=str(tmp_path / "m.db"),
                           tiers={Tier.SESSION: f"{url}?prefix={prefix}", **OFF}) as mem:
        assert which in mem.stats()["tiers"]["SESSION"]["backend"]
        await mem.put_many({f"k{i}": {"i": i} for i in range(100)}, ttl=60)
        assert await mem.get_many([f"k{i}" for i in range(100)]) == {
            f"k{i}": {"i": i} for i in range(100)}
        assert await mem.delete("k0")
        assert await mem.get("k0") is None


async def test_sentinel_tracking_invalidates_copies(tmp_path: Path, sentinel_url: str) -> None:
    """Through Sentinel the tracking link goes to the primary it names; another client's
    write drops this process's L0 copy."""
    import asyncio
    import time

    prefix = f"s{uuid.uuid4().hex[:8]}:"
    async with Memory.open(path=str(tmp_path / "s.db"),
                           tiers={Tier.SESSION: f"{sentinel_url}?prefix={prefix}", **OFF}) as a, \
            Memory.open(path=str(tmp_path / "b.db"),
                        tiers={Tier.SESSION: f"{sentinel_url}?prefix={prefix}", **OFF}) as b:
        backend = b._core.by_tier[Tier.SESSION].backend
        assert isinstance(backend, RedisBackend) and await backend.wait_tracking(5.0)
        await a.put("arr", np.zeros(3), tier=Tier.SESSION)
        for _ in range(2):
            await b.get("arr")
            await b.flush()
        gpu = b._core.by_tier[Tier.GPU]
        assert gpu.peek("arr") is not None
        await a.put("arr", np.ones(3), tier=Tier.SESSION)
        deadline = time.monotonic() + 1.0
        while gpu.peek("arr") is not None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)
        assert (await b.get("arr") == np.ones(3)).all()


@pytest.mark.parametrize("url", [
    "redis+sentinel://127.0.0.1:26379",
    "redis+sentinel://127.0.0.1:26379/svc/notadb",
    "redis+cluster://127.0.0.1:notaport",
    "redis://127.0.0.1:6379/0?tracking=maybe",
    "redis://127.0.0.1:6379/0?timeout=soon",
    "redis+cluster://127.0.0.1:7000?bogus=1",
])
def test_bad_topology_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        open_backend(url, Tier.SESSION, MemoryConfig())


def test_password_never_in_description() -> None:
    backend = open_backend("redis+sentinel://u:s3cret@127.0.0.1:26379/svc", Tier.SESSION,
                           MemoryConfig())
    assert "s3cret" not in backend.describe()
