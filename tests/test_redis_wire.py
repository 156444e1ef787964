"""The Redis backend's fast paths and when they are taken: commands packed by hiredis and sent
on redis-py's own pooled connections (the real server: REDIS_URL, default
redis://127.0.0.1:6379/0, skipped with the reason when unreachable), and bare-payload batch
reads (the real server and fakeredis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import (
    BackendError,
    ConfigError,
    ManualClock,
    Memory,
    Tier,
    TierUnavailableError,
)
from sophia_memory.backends import register
from sophia_memory.tiers import Record

redis_asyncio = pytest.importorskip("redis.asyncio")
fakeredis = pytest.importorskip("fakeredis")

from sophia_memory.backends.redis.backend import RedisBackend  # noqa: E402

from .test_redis import REDIS_URL, _drop_prefix, _real_redis_or_skip  # noqa: E402

NOW = 1_000.0
ONLY_SESSION: dict[Tier, Any] = {t: None for t in Tier if t is not Tier.SESSION}


def backend_envelope_with_broken_extra() -> bytes:
    """An envelope whose ``extra`` is not msgpack: read whole, as a foreign value."""
    from sophia_memory.backends.redis.backend import _HEAD, _MAGIC

    return _HEAD.pack(_MAGIC, float("nan"), NOW, 3, 0, 1, 4) + b"\xc1\xc1\xc1\xc1" + b"\x01zz"


def _rec(payload: bytes, expires_at: float | None = None, **extra: Any) -> Record:
    return Record(payload, expires_at, True, len(payload), 0, NOW - 1, dict(extra))


async def test_wire_is_taken_for_plain_redis_py_clients_only() -> None:
    clients = [redis_asyncio.Redis.from_url(REDIS_URL),  # lazy: nothing connects here
               redis_asyncio.Redis.from_url(REDIS_URL, encoding="latin-1"),
               redis_asyncio.Redis.from_url(REDIS_URL, single_connection_client=True)]
    try:
        plain, latin, single = clients
        assert RedisBackend(plain)._wire is not None
        assert RedisBackend(plain, wire=False)._wire is None
        assert RedisBackend(latin)._wire is None  # keys must be encoded as the client does
        assert RedisBackend(single)._wire is None
        fake = fakeredis.FakeAsyncRedis()
        assert RedisBackend(fake)._wire is None
        with pytest.raises(ConfigError, match="wire=True"):
            RedisBackend(fake, wire=True)
        with pytest.raises(ConfigError, match="Cluster"):
            RedisBackend(plain, cluster=True, wire=True)
    finally:
        for c in clients:
            await c.aclose()


async def test_from_url_leaves_timeouts_to_the_front_unless_the_url_sets_one() -> None:
    plain = RedisBackend.from_url(REDIS_URL, "t:", 2.0)
    timed = RedisBackend.from_url(f"{REDIS_URL}?socket_timeout=3", "t:", 2.0)
    try:
        assert plain.client.connection_pool.connection_kwargs["socket_timeout"] is None
        assert plain.client.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.0
        assert timed.client.connection_pool.connection_kwargs["socket_timeout"] == 3.0
        assert plain._wire is not None
    finally:
        await plain.close()
        await timed.close()


@pytest.fixture(params=["fakeredis", pytest.param("real-wire", marks=pytest.mark.redis),
                        pytest.param("real-client", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[RedisBackend]:
    if request.param == "fakeredis":
        b = RedisBackend(fakeredis.FakeAsyncRedis(), prefix="bare:")
        yield b
        await b.close()
        return
    client = await _real_redis_or_skip()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    b = RedisBackend(client, prefix=prefix, wire=request.param == "real-wire")
    assert (b._wire is not None) == (request.param == "real-wire")
    try:
        yield b
    finally:
        await _drop_prefix(client, prefix)
        await b.close()


async def test_bare_payloads_are_the_live_payloads_get_many_returns(
        backend: RedisBackend) -> None:
    await backend.put_many({"plain": _rec(b"\x01p"), "ttl": _rec(b"\x01t", NOW + 100),
                            "gone": _rec(b"\x01g", NOW), "meta": _rec(b"\x01m", None, m=1),
                            "meta-gone": _rec(b"\x01x", NOW - 5, m=2)})
    long_foreign = b"written by someone else, longer than the envelope's header" * 2
    await backend.client.set(backend.prefix + "foreign", b"written by someone else")
    await backend.client.set(backend.prefix + "long-foreign", long_foreign)
    await backend.client.set(backend.prefix + "bad-extra",  # the magic, then a broken extra
                             backend_envelope_with_broken_extra())
    keys = ["plain", "ttl", "gone", "meta", "meta-gone", "foreign", "long-foreign",
            "bad-extra", "missing"]
    records = await backend.get_many(keys, NOW)
    assert set(records) == set(keys) - {"missing"}
    bare = await backend.get_payloads(keys, NOW)
    assert bare == {k: r.payload for k, r in records.items() if not r.expired(NOW)}
    assert bare == {"plain": b"\x01p", "ttl": b"\x01t", "meta": b"\x01m",
                    "foreign": b"written by someone else", "long-foreign": long_foreign,
                    "bad-extra": backend_envelope_with_broken_extra()}
    assert await backend.get_payloads([], NOW) == {}
    assert (await backend.get_payloads(["ttl"], NOW + 100)) == {}  # expired at its expiry


async def test_every_command_of_the_wire_round_trips(backend: RedisBackend) -> None:
    """put/get/put_many (MSET and pipeline)/get_many/delete/delete_many/keys on each path."""
    await backend.put("a", _rec(b"\x01a", NOW + 60))
    assert (await backend.get("a", NOW)).payload == b"\x01a"  # type: ignore[union-attr]
    assert await backend.client.pttl(backend.prefix + "a") > 60_000  # the TTL reached Redis
    await backend.put_many({"b": _rec(b"\x01b"), "c": _rec(b"\x01c")})  # MSET
    await backend.put_many({"d": _rec(b"\x01d", NOW + 60), "e": _rec(b"\x01e")})  # pipeline
    assert await backend.client.pttl(backend.prefix + "e") == -1  # no TTL: none set
    got = await backend.get_many(["a", "b", "c", "d", "e", "zz", "a"], NOW)
    assert {k: r.payload for k, r in got.items()} == {
        "a": b"\x01a", "b": b"\x01b", "c": b"\x01c", "d": b"\x01d", "e": b"\x01e"}
    assert await backend.delete("a", NOW) is True
    assert await backend.delete("a", NOW) is False
    assert await backend.delete_many(["b", "c", "zz", "b"], NOW) == 2
    assert sorted(await backend.keys("", NOW)) == ["d", "e"]


@pytest.mark.redis
async def test_a_call_cancelled_mid_reply_never_leaves_replies_for_the_next() -> None:
    """The front's deadline cancels a call wherever it is; the connection it was reading
    from is closed before it goes back to the pool, so the next call reads its own replies."""
    client = await _real_redis_or_skip()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    backend = RedisBackend(client, prefix=prefix)
    assert backend._wire is not None
    pool = client.connection_pool
    try:
        await backend.put_many({f"k{i}": _rec(f"\x01v{i}".encode()) for i in range(50)})
        real_get = pool.get_connection
        taken: list[Any] = []

        async def cancelling_connection(*args: Any, **kwargs: Any) -> Any:
            conn = await real_get(*args, **kwargs)
            read = conn.read_response
            replies = 0

            async def read_response(*a: Any, **kw: Any) -> Any:
                nonlocal replies
                replies += 1
                if replies == 3:
                    raise asyncio.CancelledError  # as if the deadline fired here
                return await read(*a, **kw)

            conn.read_response = read_response
            taken.append(conn)
            return conn

        pool.get_connection = cancelling_connection
        try:
            with pytest.raises(asyncio.CancelledError):
                await backend.delete_many([f"k{i}" for i in range(10)], NOW)  # 10 replies
        finally:
            pool.get_connection = real_get
            del taken[0].read_response
        assert not taken[0].is_connected  # 7 unread replies went with the socket
        assert len(pool._in_use_connections) == 0  # and it went back to the pool
        got = await backend.get_many([f"k{i}" for i in range(50)], NOW)
        assert {k: r.payload for k, r in got.items()} == {
            f"k{i}": f"\x01v{i}".encode() for i in range(10, 50)}  # the GETDELs all ran
        assert (await backend.get("k20", NOW)).payload == b"\x01v20"  # type: ignore[union-attr]
    finally:
        await _drop_prefix(client, prefix)
        await backend.close()


def _spied(backend: RedisBackend, calls: list[str]) -> RedisBackend:
    many, bare = backend.get_many, backend.get_payloads

    async def get_many(keys: Any, now: float) -> Any:
        calls.append("get_many")
        return await many(keys, now)

    async def get_payloads(keys: list[str], now: float) -> Any:
        calls.append("get_payloads")
        return await bare(keys, now)

    backend.get_many = get_many  # type: ignore[method-assign]
    backend.get_payloads = get_payloads  # type: ignore[method-assign]
    return backend


async def test_the_front_reads_bare_payloads_where_nothing_is_promoted(
        tmp_path: Path, clock: ManualClock) -> None:
    calls: list[str] = []
    backend = _spied(RedisBackend(fakeredis.FakeAsyncRedis(), prefix="f:"), calls)
    register("fakeredis-bare", lambda url, tier, config: backend)
    async with Memory.open(path=str(tmp_path / "b.db"), clock=clock,
                           tiers={Tier.SESSION: "fakeredis-bare://", **ONLY_SESSION}) as mem:
        await mem.put_many({"a": {"x": 1}, "b": (2, b"y")}, tier=Tier.SESSION)
        await mem.put("short", "lived", tier=Tier.SESSION, ttl=5)
        assert await mem.get_many(["a", "b", "short", "zz"]) == {
            "a": {"x": 1}, "b": (2, b"y"), "short": "lived"}
        clock.advance(5)
        assert await mem.get_many(["a", "short"]) == {"a": {"x": 1}}
        assert calls == ["get_payloads", "get_payloads"]
        tier = mem.stats()["tiers"]["SESSION"]
        assert (tier["hits"], tier["misses"]) == (4, 2)


async def test_the_front_reads_records_where_hits_may_be_promoted(
        tmp_path: Path, clock: ManualClock) -> None:
    calls: list[str] = []
    backend = _spied(RedisBackend(fakeredis.FakeAsyncRedis(), prefix="g:"), calls)
    register("fakeredis-records", lambda url, tier, config: backend)
    async with Memory.open(path=str(tmp_path / "r.db"), clock=clock, gpu_reserve=0,
                           tiers={Tier.SESSION: "fakeredis-records://",
                                  Tier.GPU: "host://?memory=1MiB"}) as mem:
        await mem.put("arr", np.arange(8.0), tier=Tier.SESSION)
        for _ in range(2):  # an array reaches the GPU tier on its second hit
            got = await mem.get_many(["arr"])
            assert np.array_equal(got["arr"], np.arange(8.0))
            await mem.flush()
        assert calls == ["get_many", "get_many"]
        entry = await mem.get_entry("arr")
        assert entry is not None and entry.tier is Tier.GPU  # promoted from the records


@pytest.fixture
async def wired() -> AsyncIterator[tuple[RedisBackend, Any]]:
    """A real-server backend on the wire path and its client."""
    client = await _real_redis_or_skip()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    backend = RedisBackend(client, prefix=prefix)
    assert backend._wire is not None
    try:
        yield backend, client
    finally:
        await _drop_prefix(client, prefix)
        await backend.close()


@pytest.mark.redis
async def test_an_error_reply_is_raised_after_every_reply_and_keeps_the_connection(
        wired: tuple[RedisBackend, Any]) -> None:
    backend, client = wired
    wire = backend._wire
    assert wire is not None
    await backend.put_many({"a": _rec(b"\x01a"), "b": _rec(b"\x01b")})
    await client.lpush(backend.prefix + "list", b"not a string")
    conn_id = await wire.one("CLIENT", "ID")
    with pytest.raises(BackendError, match="WRONGTYPE"):
        await backend.delete_many(["a", "list", "b"], NOW)  # GETDEL a, list (fails), b
    assert await backend.get_many(["a", "b"], NOW) == {}  # the commands around it ran
    with pytest.raises(BackendError, match="WRONGTYPE"):
        await backend.get("list", NOW)
    await backend.put("c", _rec(b"\x01c"))
    assert (await backend.get("c", NOW)).payload == b"\x01c"  # type: ignore[union-attr]
    assert await wire.one("CLIENT", "ID") == conn_id  # the same connection throughout


@pytest.mark.redis
async def test_a_dropped_connection_is_retried_once_on_a_fresh_one(
        wired: tuple[RedisBackend, Any]) -> None:
    from redis.exceptions import ConnectionError as LinkError

    backend, client = wired
    await backend.put("k", _rec(b"\x01k"))
    pool = client.connection_pool
    real_get = pool.get_connection
    drops = 0

    async def dropping(*args: Any, **kwargs: Any) -> Any:
        nonlocal drops
        conn = await real_get(*args, **kwargs)
        if drops:
            drops -= 1

            async def send_fails(*a: Any, **kw: Any) -> None:
                del conn.send_packed_command
                await conn.disconnect(nowait=True)
                raise LinkError("Connection reset by peer")

            conn.send_packed_command = send_fails
        return conn

    pool.get_connection = dropping
    try:
        drops = 1
        assert (await backend.get("k", NOW)).payload == b"\x01k"  # type: ignore[union-attr]
        assert drops == 0
        drops = 1
        await backend.put_many({"m": _rec(b"\x01m", NOW + 60), "n": _rec(b"\x01n")})
        assert set(await backend.get_payloads(["k", "m", "n"], NOW)) == {"k", "m", "n"}
        drops = 2  # twice in a row: the failure is the caller's
        with pytest.raises(BackendError, match="reset by peer"):
            await backend.get("k", NOW)
    finally:
        pool.get_connection = real_get
    assert (await backend.get("k", NOW)).payload == b"\x01k"  # type: ignore[union-attr]


@pytest.mark.redis
async def test_the_deadline_cuts_a_stalled_call_and_the_next_call_reads_its_own_reply(
        tmp_path: Path, clock: ManualClock) -> None:
    """The production set-up (from a URL: no redis-py socket timeout): a server that stops
    answering is cut off by the front's deadline; afterwards every call gets its own reply."""
    client = await _real_redis_or_skip()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    sep = "&" if "?" in REDIS_URL else "?"
    url = f"{REDIS_URL}{sep}prefix={prefix}&timeout=0.1"
    try:
        async with Memory.open(path=str(tmp_path / "d.db"), clock=clock,
                               tiers={Tier.SESSION: url, **ONLY_SESSION}) as mem:
            backend = mem._core.by_tier[Tier.SESSION].backend
            assert isinstance(backend, RedisBackend) and backend._wire is not None
            assert backend.client.connection_pool.connection_kwargs["socket_timeout"] is None
            await mem.put("k1", "v1", tier=Tier.SESSION)
            await mem.put_many({"a": 1, "b": 2}, tier=Tier.SESSION, ttl=60)
            await client.execute_command("CLIENT", "PAUSE", 400, "ALL")
            assert await mem.get("k1") is None  # cut off: a failing tier reads as a miss
            assert await mem.get_many(["a", "b"]) == {}
            with pytest.raises(TierUnavailableError, match="timed out"):
                await mem.put("k2", "v2", tier=Tier.SESSION)
            await client.ping()  # answered once the pause is over
            assert await mem.get("k1") == "v1"
            assert await mem.get_many(["a", "b", "k1"]) == {"a": 1, "b": 2, "k1": "v1"}
            await mem.put("k3", "v3", tier=Tier.SESSION)
            assert await mem.get("k3") == "v3"
            assert await mem.get("k2") in (None, "v2")  # a cut-off put may still land
            assert mem.stats()["tiers"]["SESSION"]["errors"] == 3
    finally:
        await _drop_prefix(client, prefix)
        await client.aclose()
