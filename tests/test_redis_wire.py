"""The Redis backend's fast paths and when they are taken: auto-pipelining (commands of every
caller packed by hiredis and written together on shared connections; against the real server,
REDIS_URL, default redis://127.0.0.1:6379/0, skipped with the reason when unreachable, and
against a scripted stand-in whose replies the test releases byte by byte), and bare-payload
batch reads (the real server and fakeredis)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import (
    BackendError,
    ConfigError,
    DecodeError,
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

from .conftest import drop_prefix  # noqa: E402
from .test_redis import REDIS_URL, _real_redis_or_skip  # noqa: E402

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
        with pytest.raises(ConfigError, match="RedisCluster"):  # not a cluster client
            RedisBackend(plain, cluster=True, wire=True)
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.parametrize("value", ["0", "65", "x", "-1", "1.5"])
def test_the_connections_option_is_checked(value: str) -> None:
    from sophia_memory import MemoryConfig
    from sophia_memory.backends import open_backend

    with pytest.raises(ConfigError, match="connections"):
        open_backend(f"redis://127.0.0.1:6379/0?connections={value}", Tier.SESSION,
                     MemoryConfig())


async def test_the_connections_option_sizes_the_pipeline() -> None:
    from sophia_memory import MemoryConfig
    from sophia_memory.backends import open_backend

    backend: Any = open_backend("redis://127.0.0.1:6379/0?connections=3", Tier.SESSION,
                                MemoryConfig())
    default: Any = open_backend("redis://127.0.0.1:6379/0", Tier.SESSION, MemoryConfig())
    try:
        assert backend._wire.size == 3 and default._wire.size == 2
    finally:
        await backend.close()
        await default.close()


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
        await drop_prefix(client, prefix)
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


class ScriptedServer:
    """A Redis stand-in on a free port whose replies the test releases byte by byte: GET,
    SET, MGET, GETDEL, PING and CLIENT ID over a dict; anything else answers +OK. With
    ``hold`` set, replies are kept until :meth:`release`; with ``drop`` set, a connection
    is closed when a command arrives (as a server that went away)."""

    def __init__(self) -> None:
        import hiredis

        self._reader_class = hiredis.Reader
        self.data: dict[bytes, bytes] = {}
        self.hold = False
        self.drop = 0
        self.held = bytearray()
        self.received: list[list[bytes]] = []
        self.arrived = asyncio.Condition()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.ids = 0

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answer(self, cmd: list[bytes]) -> bytes:
        name = cmd[0].upper()
        if name == b"GET":
            v = self.data.get(cmd[1])
            return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)
        if name == b"GETDEL":
            v = self.data.pop(cmd[1], None)
            return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)
        if name == b"SET":
            self.data[cmd[1]] = cmd[2]
            return b"+OK\r\n"
        if name == b"MGET":
            out = [b"*%d\r\n" % (len(cmd) - 1)]
            for k in cmd[1:]:
                v = self.data.get(k)
                out.append(b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v))
            return b"".join(out)
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"CLIENT" and cmd[1].upper() == b"ID":
            return b":%d\r\n" % self.ids
        return b"+OK\r\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):  # at shutdown
            await self._commands(reader, writer)

    async def _commands(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.ids += 1
        parser = self._reader_class()
        while data := await reader.read(65536):
            parser.feed(data)
            while (cmd := parser.gets()) is not False:
                if self.drop and cmd[0].upper() not in (b"CLIENT", b"HELLO"):
                    self.drop -= 1
                    writer.close()
                    return
                reply = self._answer(cmd)
                async with self.arrived:
                    self.received.append(cmd)
                    self.arrived.notify_all()
                if self.hold:
                    self.held += reply
                    self._writer = writer
                else:
                    writer.write(reply)

    async def wait_for(self, count: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    def release(self, nbytes: int | None = None) -> None:
        """Send ``nbytes`` of the held replies (all when None)."""
        n = len(self.held) if nbytes is None else nbytes
        self._writer.write(bytes(self.held[:n]))
        del self.held[:n]
        if nbytes is None:
            self.hold = False


async def _spin(times: int = 20) -> None:
    for _ in range(times):  # let the loop run callbacks and the reader (no clock involved)
        await asyncio.sleep(0)


async def test_a_call_cancelled_mid_reply_never_leaves_its_reply_for_another() -> None:
    """Callers cancelled while their replies are half read (one reply, and a pipeline of
    several) never hand their replies to anyone else: the reader drops them."""
    async with ScriptedServer() as server:
        for i in range(50):
            server.data[f"p:k{i}".encode()] = f"\x01v{i}".encode()
        backend = RedisBackend(redis_asyncio.Redis.from_url(server.url), prefix="p:",
                               connections=1)
        assert backend._wire is not None
        await backend.get("k0", NOW)  # connected (the handshake's commands are answered)
        base = len(server.received)
        server.hold = True
        first = asyncio.ensure_future(backend.get("k1", NOW))
        many = asyncio.ensure_future(backend.delete_many([f"k{i}" for i in range(10, 20)], NOW))
        second = asyncio.ensure_future(backend.get("k2", NOW))
        await server.wait_for(base + 12)  # all three calls were written, in one write
        assert backend._wire.stats()["waiting"] == 3
        server.release(5)  # a few bytes of the first reply
        await _spin()
        first.cancel()
        server.release(len(server.held) - 40)  # every reply but the last bytes
        await _spin()
        many.cancel()  # its replies are (mostly) in: cut off mid-pipeline
        server.release()
        assert (await second).payload == b"\x01v2"  # type: ignore[union-attr]
        for task in (first, many):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert backend._wire.stats()["waiting"] == 0
        got = await backend.get_many([f"k{i}" for i in range(50)], NOW)
        assert {k: r.payload for k, r in got.items()} == {
            f"k{i}": f"\x01v{i}".encode() for i in range(50) if not 10 <= i < 20}
        assert (await backend.get("k3", NOW)).payload == b"\x01v3"  # type: ignore[union-attr]
        assert backend._wire.stats()["connections_opened"] == 1  # one connection throughout
        await backend.close()


async def test_a_call_cancelled_before_its_write_is_never_sent() -> None:
    async with ScriptedServer() as server:
        backend = RedisBackend(redis_asyncio.Redis.from_url(server.url), prefix="p:")
        await backend.get("k0", NOW)
        base = len(server.received)
        task = asyncio.ensure_future(backend.put("x", _rec(b"\x01x")))
        await asyncio.sleep(0)  # queued; the write is the next callback
        task.cancel()
        other = await backend.get("k0", NOW)
        assert other is None
        assert [c[0] for c in server.received[base:]] == [b"GET"]  # the SET never went out
        assert b"p:x" not in server.data
        await backend.close()


async def test_a_thousand_concurrent_callers_share_two_connections() -> None:
    async with ScriptedServer() as server:
        backend = RedisBackend(redis_asyncio.Redis.from_url(server.url), prefix="p:",
                               connections=2)
        await asyncio.gather(*(backend.put(f"k{i}", _rec(b"\x01%d" % i)) for i in range(1000)))
        got = await asyncio.gather(*(backend.get(f"k{i}", NOW) for i in range(1000)))
        assert [r.payload for r in got] == [b"\x01%d" % i for i in range(1000)]  # type: ignore[union-attr]
        stats = backend._wire.stats()  # type: ignore[union-attr]
        assert 1 <= stats["connections_opened"] <= 2 and stats["commands"] == 2000
        assert stats["batches"] <= 12  # a few writes, not one per call
        assert len(server.writers) <= 2  # never more, whatever the number of callers
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
        await drop_prefix(client, prefix)
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
    with pytest.raises(DecodeError, match="WRONGTYPE"):  # the request's fault, typed
        await backend.delete_many(["a", "list", "b"], NOW)  # GETDEL a, list (fails), b
    assert await backend.get_many(["a", "b"], NOW) == {}  # the commands around it ran
    with pytest.raises(DecodeError, match="WRONGTYPE"):
        await backend.get("list", NOW)
    await backend.put("c", _rec(b"\x01c"))
    assert (await backend.get("c", NOW)).payload == b"\x01c"  # type: ignore[union-attr]
    assert await wire.one("CLIENT", "ID") == conn_id  # the same connection throughout


async def test_a_dropped_connection_is_retried_once_on_a_fresh_one() -> None:
    async with ScriptedServer() as server:
        server.data[b"p:k"] = b"\x01k"
        backend = RedisBackend(redis_asyncio.Redis.from_url(server.url), prefix="p:",
                               connections=1)
        wire = backend._wire
        assert wire is not None
        assert (await backend.get("k", NOW)).payload == b"\x01k"  # type: ignore[union-attr]
        server.drop = 1  # the server drops the connection on the next command
        assert (await backend.get("k", NOW)).payload == b"\x01k"  # type: ignore[union-attr]
        assert wire.stats()["connections_opened"] == 2
        server.drop = 1
        await backend.put_many({"m": _rec(b"\x01m", NOW + 60), "n": _rec(b"\x01n")})
        assert set(await backend.get_payloads(["k", "m", "n"], NOW)) == {"k", "m", "n"}
        server.drop = 2  # twice in a row: the failure is the caller's, the tier's fault
        with pytest.raises(BackendError, match="closed by server") as caught:
            await backend.get("k", NOW)
        assert not isinstance(caught.value, DecodeError)
        assert (await backend.get("k", NOW)).payload == b"\x01k"  # type: ignore[union-attr]
        await backend.close()


async def test_the_deadline_cuts_a_stalled_call_and_the_next_call_reads_its_own_reply(
        tmp_path: Path, clock: ManualClock) -> None:
    """The production set-up (from a URL: no redis-py socket timeout): a server that stops
    answering is cut off by the front's deadline; afterwards every call gets its own reply."""
    async with ScriptedServer() as server:
        url = f"{server.url}?prefix=d:&timeout=0.1&tracking=0&connections=1"
        async with Memory.open(path=str(tmp_path / "d.db"), clock=clock,
                               tiers={Tier.SESSION: url, **ONLY_SESSION}) as mem:
            backend = mem._core.by_tier[Tier.SESSION].backend
            assert isinstance(backend, RedisBackend) and backend._wire is not None
            assert backend.client.connection_pool.connection_kwargs["socket_timeout"] is None
            await mem.put("k1", "v1", tier=Tier.SESSION)
            await mem.put_many({"a": 1, "b": 2}, tier=Tier.SESSION, ttl=60)
            server.hold = True  # the server stops answering
            assert await mem.get("k1") is None  # cut off: a failing tier reads as a miss
            assert await mem.get_many(["a", "b"]) == {}
            with pytest.raises(TierUnavailableError, match="timed out"):
                await mem.put("k2", "v2", tier=Tier.SESSION)
            server.release()  # the late replies arrive: read and dropped by the pipeline
            assert await mem.get("k1") == "v1"
            assert await mem.get_many(["a", "b", "k1"]) == {"a": 1, "b": 2, "k1": "v1"}
            await mem.put("k3", "v3", tier=Tier.SESSION)
            assert await mem.get("k3") == "v3"
            assert await mem.get("k2") in (None, "v2")  # a cut-off put may still land
            assert mem.stats()["tiers"]["SESSION"]["errors"] == 3
            assert backend._wire.stats()["connections_opened"] == 1
