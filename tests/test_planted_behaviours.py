"""Deterministic tests of the 17 behaviours issue 16 planted bugs into (the list is in
``tests/mutants/plant.py``, which plants each bug again and names the tests here that must
fail). No test here needs randomness to fail: each forces the ordering that matters with the
gated backend's holds and failures (:mod:`sophia_memory.testing.gated`) and moves time with a
:class:`~sophia_memory.ManualClock`.

The memory under test: SESSION in process with room for one item (so a second put evicts,
and an evicted item whose home SESSION is spills), CORTEX and PERSISTENT gated, the GPU,
VECTOR and WORKFLOW tiers off, no background purge.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import ConfigError, ManualClock, Memory, SignatureError, Tier
from sophia_memory.backends.redis._tracker import Tracker
from sophia_memory.backends.sql.snowflake import SnowflakeBackend, SnowflakeSettings
from sophia_memory.backends.sql.sqlite import SQLiteBackend
from sophia_memory.codecs import SignedPickleCodec
from sophia_memory.testing import SharedGatedBackend, gate, gated_data, reset_gated
from sophia_memory.tiers import Record

from .conftest import apart

KEY = b"planted-behaviours-signing-key!!"


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    reset_gated()
    yield
    reset_gated()


def open_memory(clock: ManualClock, *, session_items: int = 1, shared: bool = False,
                promote: bool = True) -> Memory:
    cortex = "gated://pc?shared=1" if shared else "gated://pc"
    return Memory.open(clock=clock, purge_interval=0, promote=promote, tiers={
        Tier.GPU: None, Tier.SESSION: f"memory://?max_items={session_items}",
        Tier.CORTEX: cortex, Tier.PERSISTENT: "gated://pp", Tier.VECTOR: None,
        Tier.WORKFLOW: None})


@pytest.fixture
async def mem(clock: ManualClock) -> AsyncIterator[Memory]:
    m = open_memory(clock)
    try:
        yield m
    finally:
        gate("pc").release_all()
        gate("pp").release_all()
        await m.close()


def session_record(mem: Memory, key: str) -> Record | None:
    rec: Record | None = mem._core.by_tier[Tier.SESSION].peek(key)  # type: ignore[union-attr]
    return rec


async def settle(n: int = 50) -> None:
    """Let every runnable task run (a bounded number of event-loop turns; no clock)."""
    for _ in range(n):
        await asyncio.sleep(0)


# -- promotion (1, 2) -------------------------------------------------------------------------


async def test_promotion_of_a_read_is_not_installed_after_a_delete_ran_meanwhile(
        mem: Memory) -> None:
    """(1) The generation check. A read of CORTEX is held after it found ``old``; a delete
    runs to completion; the read then returns. The promotion it scheduled must not
    install ``old`` above the delete (behaviour 1: no check; 2: the generation read after
    the tier read, i.e. after the delete, so the check passes)."""
    await mem.put("k", "old", tier=Tier.CORTEX)
    g = gate("pc")
    g.hold("get", "k", "after")
    read = asyncio.ensure_future(mem.get("k"))
    assert await g.wait_blocked("get", "k", "after", unless=read)
    assert await mem.delete("k") is True
    g.release("get", "k", "after")
    assert await read in ("old", None)  # it overlapped the delete: either is linearizable
    await mem.flush()
    assert session_record(mem, "k") is None, "a promotion installed a value a delete removed"
    assert await mem.get("k") is None
    assert (await mem.get_many(["k"])) == {}


async def test_promotion_is_skipped_when_a_put_lands_between_read_and_install(
        mem: Memory) -> None:
    """(1) A hit schedules its promotion; a put of the key completes before the promotion
    worker runs; the worker must not install the older value over the put's."""
    await mem.put("k", "old", tier=Tier.CORTEX)
    assert await mem.get("k") == "old"  # promotion queued, its worker not yet run
    await mem.put("k", "new", tier=Tier.PERSISTENT)
    await mem.flush()
    assert await mem.get("k") == "new"
    assert mem.stats()["promotion"]["done"] == 0


async def test_a_plain_hit_is_promoted(mem: Memory) -> None:
    """The control for the two tests above: without a write in between, the copy lands."""
    await mem.put("k", "v", tier=Tier.CORTEX)
    assert await mem.get("k") == "v"
    await mem.flush()
    rec = session_record(mem, "k")
    assert rec is not None and rec.payload == "v" and not rec.home
    assert mem.stats()["promotion"]["done"] == 1


# -- spill (3, 4, 5, 6) -----------------------------------------------------------------------


async def test_an_evicted_home_item_spills_to_the_next_tier(mem: Memory) -> None:
    """(3) An item whose home is SESSION moves down when SESSION evicts it."""
    await mem.put("a", "va", tier=Tier.SESSION)
    await mem.put("b", "vb", tier=Tier.SESSION)  # evicts a
    await mem.flush()
    assert "a" in gated_data("pc")
    assert await mem.get("a") == "va"
    assert await mem.get_many(["a", "b"]) == {"a": "va", "b": "vb"}
    assert mem.stats()["spill"]["moved"] == 1


async def test_an_item_whose_spill_failed_is_kept_for_the_next_tier(mem: Memory) -> None:
    """(4) The buffer entry stays until a slower tier has the item: CORTEX refuses the
    spill, so it must still be there to go to PERSISTENT."""
    gate("pc").fail(["put", "put_many"], "a")
    await mem.put("a", "va", tier=Tier.SESSION)
    await mem.put("b", "vb", tier=Tier.SESSION)  # evicts a; its spill to CORTEX fails
    await mem.flush()
    assert gate("pc").failed == [("put", ("a",))]
    assert "a" not in gated_data("pc")
    assert "a" in gated_data("pp"), "the item was lost when its first spill failed"
    assert await mem.get("a") == "va"
    assert mem.stats()["spill"]["dropped"] == {}


async def test_an_item_in_transit_stays_readable_until_the_slower_tier_has_it(
        mem: Memory) -> None:
    """(4, 6) While the spill of ``x`` is held before CORTEX has it, items behind it in the
    spill buffer are read from the buffer (a read of them does not wait: their keys are
    not locked), and ``x`` is read as soon as the spill lets go."""
    x, y, a, z = apart(4)
    g = gate("pc")
    g.hold(["put", "put_many"], x)
    await mem.put(x, "vx", tier=Tier.SESSION)
    await mem.put(y, "vy", tier=Tier.SESSION)  # x into the spill buffer
    assert await g.wait_blocked(["put", "put_many"], x)  # the spill of x is held
    await mem.put(a, "va", tier=Tier.SESSION)  # y into the buffer
    await mem.put(z, "vz", tier=Tier.SESSION)  # a into the buffer
    assert mem.stats()["spill"]["items"] == 3
    assert a not in gated_data("pc") and a not in gated_data("pp")
    assert await mem.get(a) == "va", "an item waiting in the spill buffer was not found"
    assert await mem.get_many([a, y]) == {a: "va", y: "vy"}
    read_x = asyncio.ensure_future(mem.get(x))
    await settle()
    g.release(["put", "put_many"], x)
    assert await read_x == "vx"
    await mem.flush()
    assert await mem.get_many([x, y, a, z]) == {x: "vx", y: "vy", a: "va", z: "vz"}


async def test_a_spilled_copy_keeps_its_expiry(mem: Memory, clock: ManualClock) -> None:
    """(5) An item put with a TTL and spilled expires below as it would have above."""
    await mem.put("a", "va", tier=Tier.SESSION, ttl=10)
    await mem.put("b", "vb", tier=Tier.SESSION)  # a spills
    await mem.flush()
    spilled = gated_data("pc")["a"]
    assert spilled.expires_at == clock.time() + 10
    clock.advance(9.5)
    assert await mem.get("a") == "va"
    clock.advance(1)
    assert await mem.get("a") is None
    assert await mem.get_many(["a"]) == {}


# -- expiry (7, 8) ----------------------------------------------------------------------------


@pytest.mark.parametrize("tier", [Tier.SESSION, Tier.CORTEX])
async def test_an_item_expires_exactly_at_its_expiry(mem: Memory, clock: ManualClock,
                                                     tier: Tier) -> None:
    """(7) Live just before ``expires_at``, gone at it (``<=``, not ``<``)."""
    await mem.put("k", "v", tier=tier, ttl=10)
    clock.advance(10 - 1e-6)
    assert await mem.get("k") == "v"
    assert await mem.exists("k")
    clock.advance(1e-6)
    assert clock.time() == 1_000_010.0
    for _ in range(3):  # the get fast path samples: every path must agree
        assert await mem.get("k") is None
    assert await mem.get_entry("k", promote=False) is None
    assert await mem.get_many(["k"]) == {}
    assert not await mem.exists("k")


async def test_get_many_skips_expired_items_in_every_tier(mem: Memory,
                                                          clock: ManualClock) -> None:
    """(8) ``get_many`` applies expiry like ``get``, in-process and below."""
    await mem.put("s", "vs", tier=Tier.SESSION, ttl=5)
    await mem.put("c", "vc", tier=Tier.CORTEX, ttl=5)
    await mem.put("p", "vp", tier=Tier.PERSISTENT)
    assert await mem.get_many(["s", "c", "p"]) == {"s": "vs", "c": "vc", "p": "vp"}
    clock.advance(6)
    assert await mem.get_many(["s", "c", "p"]) == {"p": "vp"}
    assert await mem.get_many(["s"]) == {}
    assert await mem.get_many(["c"]) == {}


# -- signed pickle (9, 10) --------------------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class _Marker:
    """Unpickling this calls :func:`_record_unpickling` (a harmless stand-in for code)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_unpickling, ("ran",))


def test_signed_pickle_checks_the_signature_before_it_unpickles() -> None:
    """(9) A payload with a bad signature is refused without being unpickled."""
    UNPICKLED.clear()
    codec = SignedPickleCodec(KEY)
    good = codec.encode(_Marker())
    assert codec.decode(good) == "ran" and UNPICKLED == ["ran"]  # the marker works
    UNPICKLED.clear()
    body = good[33:]
    for forged in (b"\x03" + b"\0" * 32 + body,
                   b"\x03" + hmac.new(b"another key, 16+ bytes", body,
                                      hashlib.sha256).digest() + body,
                   good[:-1] + bytes([good[-1] ^ 1])):
        with pytest.raises(SignatureError):
            codec.decode(forged)
    assert UNPICKLED == [], "a forged payload was unpickled before it was refused"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_signed_pickle_signs_every_byte_of_the_body(where: str) -> None:
    """(10) Changing any one byte of the pickled body (first, middle, last) is refused."""
    codec = SignedPickleCodec(KEY)
    payload = bytearray(codec.encode({"a": list(range(50)), "b": "x" * 40}))
    body_start = 33
    pos = {"first": body_start, "middle": (body_start + len(payload)) // 2,
           "last": len(payload) - 1}[where]
    payload[pos] ^= 0x01
    with pytest.raises(SignatureError):
        codec.decode(bytes(payload))
    with pytest.raises(SignatureError):
        codec.decode(bytes(payload[:-1]))  # and a shortened body


# -- identifiers (11, 12, 13) -----------------------------------------------------------------

TRAILING = ["T\n", "T\r\n", "T\x00", "T;", 'T"']


@pytest.mark.parametrize("name", TRAILING)
def test_sqlite_backend_built_directly_refuses_a_bad_table_name(tmp_path: Path,
                                                                name: str) -> None:
    """(12, 13) The SQLite backend checks its table name itself, not only its URL factory."""
    with pytest.raises(ConfigError, match="table name"):
        SQLiteBackend(tmp_path / "direct.db", name)


def _settings() -> SnowflakeSettings:
    return SnowflakeSettings(account="acct", user="u", database="DB", password="p")


@pytest.mark.parametrize("name", [*TRAILING, "T" * 256, "T" * 242 + "\n", "T" * 242 + '"x'])
async def test_snowflake_backend_built_directly_refuses_a_bad_table_name(name: str) -> None:
    """(11, 13) The Snowflake backend checks its table name itself (the staging table's
    name, cut to 255 characters, does not catch a long one)."""
    pytest.importorskip("snowflake.connector")
    try:
        backend = SnowflakeBackend(_settings(), name)
    except ConfigError as exc:
        assert "table name" in str(exc)
        return
    await backend.close()
    pytest.fail(f"SnowflakeBackend took the table name {name!r}")


# -- invalidation from other processes (14, 15) -----------------------------------------------


@pytest.fixture
async def shared_mem(clock: ManualClock) -> AsyncIterator[Memory]:
    m = open_memory(clock, shared=True)
    try:
        yield m
    finally:
        gate("pc").release_all()
        await m.close()


def shared_cortex(mem: Memory) -> SharedGatedBackend:
    backend = mem._core.by_tier[Tier.CORTEX].backend
    assert isinstance(backend, SharedGatedBackend)
    assert backend.listener is not None, "the engine did not subscribe to invalidations"
    return backend


def rec(value: str) -> Record:
    payload = b"\x01" + bytes([0xA0 + len(value)]) + value.encode()  # msgpack fixstr
    return Record(payload, None, True, len(payload))


async def test_a_write_elsewhere_drops_the_promoted_copy(shared_mem: Memory) -> None:
    """(14) An invalidation drops this process's in-process copy of the key."""
    cortex = shared_cortex(shared_mem)
    await shared_mem.put("k", "v1", tier=Tier.CORTEX)
    assert await shared_mem.get("k") == "v1"
    await shared_mem.flush()
    assert session_record(shared_mem, "k") is not None  # promoted
    cortex.write_elsewhere("k", rec("v2"))
    assert session_record(shared_mem, "k") is None, "the invalidated copy was kept"
    assert await shared_mem.get("k") == "v2"
    cortex.write_elsewhere("k", None)
    assert await shared_mem.get("k") is None


async def test_a_write_elsewhere_during_a_read_stops_its_promotion(
        shared_mem: Memory) -> None:
    """(15) The read found ``v1``; another process then wrote ``v2`` and it was reported
    while the read was still in flight. The read's promotion must not install ``v1`` (the
    report moved the key's generation on)."""
    cortex = shared_cortex(shared_mem)
    await shared_mem.put("k", "v1", tier=Tier.CORTEX)
    g = gate("pc")
    g.hold("get", "k", "after")
    read = asyncio.ensure_future(shared_mem.get("k"))
    assert await g.wait_blocked("get", "k", "after", unless=read)
    cortex.write_elsewhere("k", rec("v2"))
    g.release("get", "k", "after")
    assert await read in ("v1", "v2")
    await shared_mem.flush()
    held = session_record(shared_mem, "k")
    assert held is None or held.payload == "v2", "a promotion installed an invalidated value"
    assert await shared_mem.get("k") == "v2"


async def test_a_lost_link_drops_every_copy(shared_mem: Memory) -> None:
    """A report of None (the link was lost: anything may have changed) drops every copy."""
    cortex = shared_cortex(shared_mem)
    await shared_mem.put("k", "v1", tier=Tier.CORTEX)
    await shared_mem.get("k")
    await shared_mem.flush()
    assert session_record(shared_mem, "k") is not None
    cortex.write_elsewhere("k", rec("v2"), report=False)
    assert await shared_mem.get("k") == "v1"  # not reported: the copy still answers
    cortex.report(None)
    await shared_mem.flush()
    assert session_record(shared_mem, "k") is None
    assert await shared_mem.get("k") == "v2"


# -- the Redis tracking link (16, 17), on a stand-in connection ----------------------------


class _Conn:
    def __init__(self) -> None:
        self.replies: deque[Any] = deque([7, b"OK"])
        self.sent: list[tuple[Any, ...]] = []

    async def send_command(self, *args: Any) -> None:
        self.sent.append(args)

    async def read_response(self) -> Any:
        return self.replies.popleft()


class _PubSub:
    """What the tracker uses of redis-py's PubSub: messages come from a queue; an
    exception put there is raised by ``get_message`` (the link breaking)."""

    def __init__(self, blocked: bool = False) -> None:
        self.connection = _Conn()
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.blocked = blocked

    async def connect(self) -> None:
        if self.blocked:  # a server that does not answer: wait until cancelled
            await asyncio.Event().wait()

    async def subscribe(self, channel: str) -> None:
        assert channel == "__redis__:invalidate"
        self.messages.put_nowait({"type": "subscribe", "data": 1})

    async def get_message(self, timeout: float) -> Any:  # noqa: ASYNC109 - its API
        item = await self.messages.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def ping(self, message: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _Client:
    def __init__(self, pubsub: _PubSub) -> None:
        self._pubsub = pubsub

    def pubsub(self) -> _PubSub:
        return self._pubsub

    async def aclose(self) -> None:
        return None


async def _tracking(links: list[_PubSub]) -> tuple[Tracker, list[list[str] | None]]:
    heard: list[list[str] | None] = []
    clients = iter([_Client(p) for p in links])
    tracker = Tracker(lambda: next(clients), "p:", heard.append, (ConnectionError, OSError),
                      (RuntimeError,))
    tracker.start()
    for _ in range(1000):
        if tracker.live.is_set():
            break
        await asyncio.sleep(0)
    assert tracker.live.is_set() and heard == [None]  # up: copies made before may be stale
    assert links[0].connection.sent[1][:2] == ("CLIENT", "TRACKING")
    return tracker, heard


async def test_a_report_of_several_keys_delivers_every_key_of_the_prefix() -> None:
    """(16) One invalidation message naming several keys reports all of them (and only
    those under the backend's prefix, with the prefix taken off)."""
    link = _PubSub()
    tracker, heard = await _tracking([link])
    try:
        link.messages.put_nowait({"type": "message",
                                  "data": [b"p:a", b"other:x", b"p:b", b"p:c"]})
        for _ in range(1000):
            if len(heard) > 1:
                break
            await asyncio.sleep(0)
        assert heard == [None, ["a", "b", "c"]]
        assert tracker.invalidations == 3
        link.messages.put_nowait({"type": "message", "data": None})  # FLUSHDB
        await settle()
        assert heard[-1] is None
    finally:
        await tracker.stop()


async def test_losing_the_link_is_reported_before_it_is_reopened() -> None:
    """(17) When the tracking link breaks, the listener hears None (every copy may be
    stale) before the tracker tries again; the link counts as down meanwhile."""
    link, next_link = _PubSub(), _PubSub(blocked=True)
    tracker, heard = await _tracking([link, next_link])
    try:
        link.messages.put_nowait(ConnectionError("link reset"))
        for _ in range(1000):
            if tracker.reconnects:
                break
            await asyncio.sleep(0)
        assert tracker.reconnects == 1
        assert not tracker.live.is_set()
        assert heard == [None, None], "the loss of the tracking link was not reported"
    finally:
        await tracker.stop()


def test_rec_helper_is_what_the_codec_writes() -> None:
    """The stand-in records above are what the default codec would store."""
    from sophia_memory.codecs import MsgpackCodec

    assert rec("v2").payload == MsgpackCodec().encode("v2")
