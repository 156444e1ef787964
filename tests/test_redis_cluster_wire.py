"""Auto-pipelining on Redis Cluster, per node (:class:`~sophia_memory.backends.redis._wire.
ClusterWire`), on a private three-primary cluster: each key's command goes to the Wire of the
node owning its slot; a stale slot map (MOVED) or an unreachable node falls back to the
cluster client, which follows it and refreshes the map."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from sophia_memory import Tier
from sophia_memory.backends import open_backend
from sophia_memory.backends.redis._wire import ClusterWire
from sophia_memory.backends.redis.backend import RedisBackend
from sophia_memory.config import MemoryConfig
from sophia_memory.tiers import Record

from .redis_servers import free_port, start_cluster, stop

pytest.importorskip("redis.asyncio")
pytest.importorskip("hiredis")
pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(shutil.which("redis-server") is None
                                 or shutil.which("redis-cli") is None,
                                 reason="redis-server / redis-cli are not installed")]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports, procs = start_cluster(tmp_path_factory.mktemp("cluster-wire"))
    try:
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        stop(procs)


def _open(url: str, query: str = "") -> RedisBackend:
    prefix = f"w{uuid.uuid4().hex[:8]}:"
    backend = open_backend(f"{url}?prefix={prefix}{query}", Tier.SESSION, MemoryConfig())
    assert isinstance(backend, RedisBackend)
    return backend


@pytest.fixture
async def backend(cluster_url: str) -> AsyncIterator[RedisBackend]:
    b = _open(cluster_url)
    yield b
    await b.close()


def _rec(value: bytes, ttl: float | None = None) -> Record:
    return Record(value, None if ttl is None else 1000.0 + ttl, True, len(value),
                  created_at=1000.0)


def _wire(backend: RedisBackend) -> ClusterWire:
    wire = backend._wire
    assert isinstance(wire, ClusterWire)
    return wire


def _slot_owner(backend: RedisBackend, key: str) -> tuple[int, str]:
    from redis.crc import key_slot

    slot = key_slot((backend.prefix + key).encode())
    return slot, backend.client.nodes_manager.slots_cache[slot][0].name


async def test_wire_is_the_default_on_cluster_and_wire_1_is_accepted(cluster_url: str) -> None:
    for query, wired in (("", True), ("&wire=1", True), ("&wire=0", False)):
        b = _open(cluster_url, query)
        try:
            assert isinstance(b._wire, ClusterWire) is wired
            await b.put("k", _rec(b"v"))
            got = await b.get("k", 0.0)
            assert got is not None and got.payload == b"v"
            assert ("pipeline" in b.stats()) is wired
        finally:
            await b.delete("k", 0.0)
            await b.close()


async def test_200_concurrent_callers_share_each_nodes_wire(backend: RedisBackend) -> None:
    async def caller(i: int) -> bytes | None:
        await backend.put(f"user:{i}", _rec(f"v{i}".encode()))
        rec = await backend.get(f"user:{i}", 0.0)
        return None if rec is None else rec.payload

    got = await asyncio.gather(*[caller(i) for i in range(200)])
    assert got == [f"v{i}".encode() for i in range(200)]
    pipe = backend.stats()["pipeline"]
    nodes = pipe["nodes"]
    assert len(nodes) == 3  # the keys span every primary, each has its own Wire
    assert all(n["commands"] > 0 for n in nodes.values())
    assert pipe["commands"] == sum(n["commands"] for n in nodes.values()) >= 400
    # commands of one iteration go out together: far fewer writes than commands
    assert pipe["batches"] < pipe["commands"] / 10
    assert pipe["connections_opened"] <= 3 * 2
    assert pipe["redirects"] == 0
    assert await backend.delete_many([f"user:{i}" for i in range(200)], 0.0) == 200


@pytest.mark.parametrize("ttl", [None, 60.0])
async def test_get_many_put_many_delete_many_span_nodes(backend: RedisBackend,
                                                        ttl: float | None) -> None:
    keys = [f"item:{i}" for i in range(300)]
    await backend.put_many({k: _rec(k.encode(), ttl) for k in keys})
    got = await backend.get_many([*keys, "missing"], 0.0)
    assert {k: r.payload for k, r in got.items()} == {k: k.encode() for k in keys}
    assert await backend.get_payloads(keys[:5], 0.0) == {k: k.encode() for k in keys[:5]}
    assert len(_wire(backend).stats()["nodes"]) == 3
    assert sorted(await backend.keys("item:", 0.0)) == sorted(keys)
    assert await backend.delete_many(keys[:100], 0.0) == 100
    assert len(await backend.get_many(keys, 0.0)) == 200
    assert await backend.delete("item:150", 0.0)
    assert await backend.delete_many(keys, 0.0) == 199


async def test_a_moved_reply_is_followed_and_the_map_refreshed(backend: RedisBackend) -> None:
    keys = [f"moved:{i}" for i in range(30)]
    await backend.put_many({k: _rec(k.encode()) for k in keys})
    manager = backend.client.nodes_manager
    slot, owner = _slot_owner(backend, keys[0])
    other = next(n for n in manager.nodes_cache.values() if n.name != owner)
    manager.slots_cache[slot] = [other]  # a stale map: the next command meets MOVED
    rec = await backend.get(keys[0], 0.0)
    assert rec is not None and rec.payload == keys[0].encode()
    assert manager.slots_cache[slot][0].name == owner  # followed, and the map is right again
    wire = _wire(backend)
    assert wire.stats()["redirects"] == 1
    # again on the batch paths: only the stale slot's command goes through the client
    manager.slots_cache[slot] = [other]
    await backend.put_many({k: _rec(b"new") for k in keys})
    assert manager.slots_cache[slot][0].name == owner
    manager.slots_cache[slot] = [other]
    got = await backend.get_many(keys, 0.0)
    assert {k: r.payload for k, r in got.items()} == {k: b"new" for k in keys}
    assert wire.stats()["redirects"] == 3
    assert await backend.delete_many(keys, 0.0) == len(keys)


async def test_an_unreachable_node_falls_back_and_its_wire_is_dropped(
        backend: RedisBackend) -> None:
    from redis.asyncio.cluster import ClusterNode

    await backend.put("far", _rec(b"away"))
    manager = backend.client.nodes_manager
    slot, owner = _slot_owner(backend, "far")
    ghost = ClusterNode("127.0.0.1", free_port(), "primary",
                        **backend.client.connection_kwargs)
    manager.nodes_cache[ghost.name] = ghost
    manager.slots_cache[slot] = [ghost]  # a node nobody answers on
    rec = await backend.get("far", 0.0)
    assert rec is not None and rec.payload == b"away"
    wire = _wire(backend)
    assert manager.slots_cache[slot][0].name == owner
    assert ghost.name not in manager.nodes_cache
    assert ghost.name not in wire.wires  # the Wire of the vanished node is closed
    assert wire.stats()["redirects"] >= 1
    assert await backend.delete("far", 0.0)


async def test_a_cancelled_caller_never_gets_another_callers_reply(
        backend: RedisBackend) -> None:
    await backend.put_many({f"c:{i}": _rec(f"c{i}".encode()) for i in range(50)})
    tasks = [asyncio.ensure_future(backend.get(f"c:{i}", 0.0)) for i in range(50)]
    await asyncio.sleep(0)  # the commands are queued, not yet answered
    for task in tasks[::2]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for i, res in enumerate(done):
        if i % 2:
            assert isinstance(res, Record) and res.payload == f"c{i}".encode()
    got = await backend.get_many([f"c:{i}" for i in range(50)], 0.0)
    assert {k: r.payload for k, r in got.items()} == {
        f"c:{i}": f"c{i}".encode() for i in range(50)}
    assert await backend.delete_many([f"c:{i}" for i in range(50)], 0.0) == 50
