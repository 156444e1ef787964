"""Failure classification (DESIGN.md §3 "Failures", issue 11): a bad request fails its own
call with a typed error and never counts toward a breaker; only a failing tier does; a tier
that can read but not write (Redis out of memory, a full disk under SQLite) keeps serving
reads.

Real-Redis tests use database 11 and a prefix of their own on the shared server (deleted
afterwards); the out-of-memory test starts its own redis-server on a free port."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import (
    BackendError,
    DecodeError,
    InvalidArgumentError,
    ManualClock,
    Memory,
    Tier,
    TierUnavailableError,
)
from sophia_memory._support import (
    MAX_TTL,
    check_meta,
    fault_of,
    library_error,
    ttl_seconds,
)
from sophia_memory.backends import Backend, register
from sophia_memory.cortex import CortexCache
from sophia_memory.engine import RemoteTier
from sophia_memory.errors import WriteRefusedError
from sophia_memory.tiers import Record

from .conftest import drop_prefix, real_redis_or_skip

REDIS_URL = "redis://127.0.0.1:6379/11"
THRESHOLD = 3
RESET = 30.0
OFF: dict[Tier, Any] = {Tier.GPU: None, Tier.VECTOR: None, Tier.WORKFLOW: None}

BAD_TTLS = [1e16, 1e308, 10**400, MAX_TTL * 2, -1, 0, math.nan, math.inf, -math.inf, "60",
            True, timedelta(days=365 * 1000), [60]]


# -- the classification itself --------------------------------------------------------------

def _redis_errors() -> Any:
    return pytest.importorskip("redis.exceptions")


@pytest.mark.parametrize(("make", "fault"), [
    (lambda r: r.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
     "request"),
    (lambda r: r.ResponseError("ERR invalid expire time in 'set' command"), "request"),
    (lambda r: r.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
     "write"),
    (lambda r: r.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
     "write"),  # as redis-py builds it: the reply's first word left out
    (lambda r: r.ResponseError("MISCONF Redis is configured to save RDB snapshots"), "write"),
    (lambda r: r.ReadOnlyError("You can't write against a read only replica."),
     "write"),
    (lambda r: r.BusyLoadingError("Redis is loading the dataset in memory"), "tier"),
    (lambda r: r.ResponseError("ERR max number of clients reached"), "tier"),
    (lambda r: r.ConnectionError("Connection refused"), "tier"),
    (lambda r: r.TimeoutError("Timeout reading from socket"), "tier"),
    (lambda r: r.AuthenticationError("invalid password"), "tier"),
    (lambda r: r.DataError("Invalid input of type: 'list'"), "request"),
])
def test_redis_errors_are_classified(make: Any, fault: str) -> None:
    exc = make(_redis_errors())
    assert fault_of(exc) == fault
    mapped = library_error(exc, "Redis call failed")
    expected = {"request": DecodeError if str(exc).startswith("WRONGTYPE")
                else InvalidArgumentError, "write": WriteRefusedError, "tier": BackendError}
    assert type(mapped) is expected[fault]
    assert fault_of(_raised_from(mapped, exc)) == fault  # the mapped error keeps its class


def _raised_from(err: BaseException, cause: BaseException) -> BaseException:
    err.__cause__ = cause
    return err


@pytest.mark.parametrize(("exc", "fault"), [
    (sqlite3.OperationalError("database or disk is full"), "write"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "write"),
    (sqlite3.OperationalError("database is locked"), "tier"),
    (sqlite3.OperationalError("disk I/O error"), "tier"),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), "request"),
    (sqlite3.ProgrammingError("Error binding parameter 9: type 'list' is not supported"),
     "request"),
    (OSError(errno.ENOSPC, "No space left on device"), "write"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "tier"),
    (TimeoutError(), "tier"),
    (OverflowError("cannot convert float infinity to integer"), "request"),
    (TypeError("unhashable"), "request"),
    (json.JSONDecodeError("Expecting value", "x", 0), "request"),
    (InvalidArgumentError("bad"), "request"),
    (DecodeError("bad"), "request"),
    (BackendError("lost"), "tier"),
    (WriteRefusedError("full"), "write"),
    (TierUnavailableError("SESSION", "down"), "tier"),
    (RuntimeError("?"), "tier"),
])
def test_every_kind_of_failure_has_one_fault(exc: BaseException, fault: str) -> None:
    assert fault_of(exc) == fault
    assert fault_of(_raised_from(BackendError("wrapped"), exc)) == (
        "write" if fault == "write" else "tier")  # a backend's error: the tier's or a write's


def test_decode_failures_map_to_decode_error() -> None:
    assert isinstance(library_error(json.JSONDecodeError("x", "y", 0), "read"), DecodeError)
    assert isinstance(library_error(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "r"),
                      DecodeError)


# -- arguments refused before any driver ---------------------------------------------------

@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_ttl_out_of_range_is_invalid_argument(ttl: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        ttl_seconds(ttl)


def test_good_ttls_pass() -> None:
    assert ttl_seconds(None) is None
    assert ttl_seconds(1) == 1.0
    assert ttl_seconds(np.float32(2.5)) == 2.5
    assert ttl_seconds(timedelta(hours=1)) == 3600.0
    assert ttl_seconds(MAX_TTL) == MAX_TTL


@pytest.mark.parametrize("meta", [
    "x", [("a", 1)], {1: 2}, {"x": object()}, {"x": b"raw"}, {"x": math.nan},
    {"x": 2**70}, {"x": {"y": {1, 2}}}, {"gpu_processed": [1, 2]},
    {"processing_time_ms": "fast"}, {"gpu_memory_used_mb": math.inf},
    {"prompt_embedding": [0.1]}, {"gpu_processed": 2**64},
], ids=repr)
def test_bad_meta_is_invalid_argument(meta: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        check_meta(meta)


def test_good_meta_passes() -> None:
    meta = {"gpu_processed": True, "processing_time_ms": 3, "gpu_memory_used_mb": 1.5,
            "prompt_embedding": b"\x00" * 8, "note": {"a": [1, "b", None, 2.5]}}
    assert check_meta(meta) == meta


# -- through a whole Memory: refused requests never open a breaker --------------------------

def _open(tmp_path: Path, clock: ManualClock, **tiers: Any) -> Memory:
    return Memory.open(path=str(tmp_path / "m.db"), clock=clock, call_timeout=2.0,
                       breaker_threshold=THRESHOLD, breaker_reset=RESET,
                       tiers={**OFF, **{Tier[k]: v for k, v in tiers.items()}})


def _health(mem: Memory, tier: Tier) -> tuple[str, str, int]:
    st = mem.stats()["tiers"][tier.name]
    return st["breaker"], st["write_breaker"], st["errors"]


@pytest.fixture
async def redis_mem(tmp_path: Path, clock: ManualClock,
                    ) -> AsyncIterator[tuple[Memory, Any, str]]:
    """A memory with SESSION on the shared Redis (db 11, a prefix of its own), the raw
    client and the prefix."""
    client = await real_redis_or_skip(REDIS_URL)
    prefix = f"smfc:{uuid.uuid4().hex[:8]}:"
    try:
        async with _open(tmp_path, clock,
                         SESSION=f"{REDIS_URL}?prefix={prefix}&tracking=0") as mem:
            yield mem, client, prefix
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()


@pytest.mark.redis
async def test_wrongtype_reads_fail_alone_and_never_open_the_breaker(
        redis_mem: tuple[Memory, Any, str]) -> None:
    mem, client, prefix = redis_mem
    await mem.put("good", {"v": 1}, tier=Tier.SESSION)
    await client.rpush(prefix + "list", b"another client's list")
    for _ in range(THRESHOLD * 3):
        with pytest.raises(DecodeError, match="WRONGTYPE"):
            await mem.get("list")
    assert _health(mem, Tier.SESSION) == ("closed", "closed", 0)
    assert mem.stats()["tiers"]["SESSION"]["refused"] == THRESHOLD * 3
    assert await mem.get("good") == {"v": 1}  # other keys keep working
    await mem.put("good2", 2, tier=Tier.SESSION)
    assert await mem.get_many(["good", "good2", "list"]) == {"good": {"v": 1}, "good2": 2}
    await mem.put("list", "now a string", tier=Tier.SESSION)  # SET replaces any type
    assert await mem.get("list") == "now a string"


@pytest.mark.redis
async def test_a_value_redis_refuses_fails_that_put_alone(
        redis_mem: tuple[Memory, Any, str]) -> None:
    """Past the front's checks (a record built by hand, as a third-party caller of the
    handle could): Redis' own ``ERR invalid expire time`` is the request's fault."""
    mem = redis_mem[0]
    slot = mem._core.by_tier[Tier.SESSION]
    huge = Record(b"\x01x", 1e300, True, 2, 0, 0.0, {})
    for _ in range(THRESHOLD * 2):
        with pytest.raises(InvalidArgumentError):
            await slot.put("huge", huge)  # type: ignore[union-attr]
    assert _health(mem, Tier.SESSION) == ("closed", "closed", 0)
    await mem.put("after", 1, tier=Tier.SESSION)
    assert await mem.get("after") == 1


@pytest.mark.parametrize("tier", [Tier.SESSION, Tier.CORTEX, Tier.PERSISTENT])
@pytest.mark.parametrize("ttl", [1e16, 1e308, 10**400, -5, math.nan], ids=repr)
async def test_out_of_range_ttls_are_refused_on_every_tier(tmp_path: Path, clock: ManualClock,
                                                           tier: Tier, ttl: Any) -> None:
    async with _open(tmp_path, clock) as mem:
        for _ in range(THRESHOLD + 1):
            with pytest.raises(InvalidArgumentError, match="ttl"):
                await mem.put("k", 1, tier=tier, ttl=ttl)
            with pytest.raises(InvalidArgumentError, match="ttl"):
                await mem.put_many({"a": 1}, tier=tier, ttl=ttl)
        await mem.put("k", 2, tier=tier, ttl=60)
        assert await mem.get("k") == 2
        if tier is not Tier.SESSION:
            assert _health(mem, tier) == ("closed", "closed", 0)


@pytest.mark.redis
@pytest.mark.parametrize("ttl", [1e16, 1e308, 10**400], ids=repr)
async def test_out_of_range_ttls_never_open_the_redis_breaker(
        redis_mem: tuple[Memory, Any, str], ttl: Any) -> None:
    mem = redis_mem[0]
    for _ in range(THRESHOLD * 2):
        with pytest.raises(InvalidArgumentError, match="ttl"):
            await mem.put("k", 1, tier=Tier.SESSION, ttl=ttl)
    assert _health(mem, Tier.SESSION) == ("closed", "closed", 0)
    await mem.put("k", 2, tier=Tier.SESSION, ttl=60)
    assert await mem.get("k") == 2


async def test_bad_cortex_metadata_never_opens_the_breaker(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    async with _open(tmp_path, clock) as mem:
        await mem.put("good", "kept", tier=Tier.CORTEX)
        for meta in ({"gpu_processed": [1, 2]}, {"processing_time_ms": {"a": 1}},
                     {"gpu_memory_used_mb": "lots"}, "not a dict", {1: "int key"}) * 2:
            with pytest.raises(InvalidArgumentError, match="meta"):
                await mem.put("bad", "value", tier=Tier.CORTEX, meta=meta)  # type: ignore[arg-type]
        assert _health(mem, Tier.CORTEX) == ("closed", "closed", 0)
        assert await mem.get("bad") is None  # nothing stored
        assert await mem.get("good") == "kept"
        await mem.put("fine", 1, tier=Tier.CORTEX, meta={"gpu_processed": True,
                                                         "processing_time_ms": 2.5})
        entry = await mem.get_entry("fine")
        assert entry is not None and entry.meta["processing_time_ms"] == 2.5

        cache = CortexCache(mem)
        with pytest.raises(InvalidArgumentError, match="processing_time_ms"):
            await cache.store("m", "p", None, "v", processing_time_ms=[1])  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="ttl"):
            CortexCache(mem, ttl=1e308)
        with pytest.raises(InvalidArgumentError, match="processing_time_ms"):
            await cache.store("m", "p", None, "v", processing_time_ms=10**400)
        assert _health(mem, Tier.CORTEX) == ("closed", "closed", 0)


async def test_hostile_sqlite_cells_are_decode_errors(tmp_path: Path,
                                                      clock: ManualClock) -> None:
    async with _open(tmp_path, clock) as mem:
        await mem.put("good", "kept", tier=Tier.PERSISTENT)
        await mem.put("victim", "v", tier=Tier.PERSISTENT)
        backend = mem._core.by_tier[Tier.PERSISTENT].backend
        table = backend.table  # type: ignore[attr-defined]
        conn = sqlite3.connect(str(tmp_path / "m.db"))
        rows = {"notjson": ("extra", "{not json"), "notobject": ("extra", "[1, 2]"),
                "textpayload": ("payload", "text, not bytes"),
                "badexpiry": ("expires_at", "tomorrow")}
        for key, (column, value) in rows.items():
            conn.execute(f'INSERT INTO "{table}" (key, payload, created_at) VALUES (?, ?, 0)',
                         (key, b"\x01"))
            conn.execute(f'UPDATE "{table}" SET {column} = ? WHERE key = ?', (value, key))
        conn.commit()
        conn.close()
        for key in rows:
            for _ in range(2):
                with pytest.raises(DecodeError):
                    await mem.get(key)
        assert _health(mem, Tier.PERSISTENT) == ("closed", "closed", 0)
        assert await mem.get("good") == "kept"


async def test_a_full_disk_keeps_reads_working(tmp_path: Path, clock: ManualClock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write fails with SQLite's "database or disk is full" (injected: a small tmpfs
    needs root): puts raise TierUnavailableError and open the write health only; reads are
    served throughout; once writes succeed again (after the reset period) all is closed."""
    from sophia_memory.backends.sql.sqlite import SQLiteEngine

    async with _open(tmp_path, clock, SESSION=None) as mem:
        for i in range(5):
            await mem.put(f"k{i}", i, tier=Tier.PERSISTENT)
        engine = mem._core.by_tier[Tier.PERSISTENT].backend.engine  # type: ignore[attr-defined]
        assert isinstance(engine, SQLiteEngine)

        def full(*args: Any) -> Any:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(engine, "_execute_batch", full)
        monkeypatch.setattr(engine, "_execute", full)
        for i in range(THRESHOLD):
            with pytest.raises(TierUnavailableError, match="refuses writes"):
                await mem.put(f"new{i}", i, tier=Tier.PERSISTENT)
        assert _health(mem, Tier.PERSISTENT) == ("closed", "open", THRESHOLD)
        with pytest.raises(TierUnavailableError, match="reads are still served"):
            await mem.put("new", 1, tier=Tier.PERSISTENT)  # refused without trying
        assert [await mem.get(f"k{i}") for i in range(5)] == list(range(5))
        assert await mem.get_many(["k1", "k3"]) == {"k1": 1, "k3": 3}
        assert _health(mem, Tier.PERSISTENT)[0] == "closed"

        monkeypatch.undo()  # space again
        clock.advance(RESET)
        await mem.put("new", 1, tier=Tier.PERSISTENT)  # the half-open trial
        assert _health(mem, Tier.PERSISTENT)[:2] == ("closed", "closed")
        assert await mem.get("new") == 1


async def test_search_arguments_are_checked(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "v.db"), clock=clock) as mem:
        await mem.put("d", "doc", tier=Tier.VECTOR, vector=np.ones(4, dtype=np.float32))
        for kwargs in ({"min_score": "x"}, {"min_score": math.nan}, {"metric": "l2"},
                       {"k": 0}, {"k": "3"}, {"k": True}):
            with pytest.raises(InvalidArgumentError):
                await mem.search(np.ones(4), **kwargs)
        assert [h.key for h in await mem.search(np.ones(4), min_score=0.5)] == ["d"]


async def test_bf16_vectors_are_taken_as_float32(tmp_path: Path, clock: ManualClock) -> None:
    torch = pytest.importorskip("torch")
    async with Memory.open(path=str(tmp_path / "v.db"), clock=clock) as mem:
        vec = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.bfloat16)
        await mem.put("d", "doc", tier=Tier.VECTOR, vector=vec)
        hits = await mem.search(vec)
        assert [h.key for h in hits] == ["d"] and hits[0].score == pytest.approx(1.0, abs=1e-3)


# -- Redis out of memory: writes refused, reads served ---------------------------------------

@pytest.fixture
def small_redis() -> Iterator[int]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from .redis_servers import free_port, start

    port = free_port()
    proc: subprocess.Popen[bytes] = start(port, "--maxmemory-policy", "noeviction")
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.redis
async def test_redis_out_of_memory_keeps_reads_working(tmp_path: Path, clock: ManualClock,
                                                       small_redis: int) -> None:
    redis_asyncio = pytest.importorskip("redis.asyncio")
    url = f"redis://127.0.0.1:{small_redis}/0?prefix=oom:&tracking=0"
    async with _open(tmp_path, clock, SESSION=url) as mem:
        for i in range(20):
            await mem.put(f"k{i}", i, tier=Tier.SESSION)
        admin = redis_asyncio.Redis(port=small_redis)
        try:  # the limit set below what is used: every write is refused from now on
            used = (await admin.info("memory"))["used_memory"]
            await admin.config_set("maxmemory", used // 2)
            with pytest.raises(Exception, match="maxmemory"):
                await admin.set("one-more", b"x")
        finally:
            await admin.aclose()
        for i in range(THRESHOLD):
            with pytest.raises(TierUnavailableError, match="refuses writes"):
                await mem.put(f"new{i}", "x", tier=Tier.SESSION)
        assert _health(mem, Tier.SESSION) == ("closed", "open", THRESHOLD)
        assert [await mem.get(f"k{i}") for i in range(20)] == list(range(20))  # reads served
        assert await mem.get_many(["k1", "k2"]) == {"k1": 1, "k2": 2}
        assert _health(mem, Tier.SESSION)[0] == "closed"


# -- overload is not an outage ---------------------------------------------------------------

class _Queued(Backend):
    """A remote backend whose reads never finish (as calls queued behind many others) and
    which says whether its server kept answering meanwhile."""

    scheme = "queued"
    call_timeout = 0.05  # real seconds the guard waits

    def __init__(self) -> None:
        self.answering = True
        self.never = asyncio.Event()

    def answered_within(self, seconds: float) -> bool:
        return self.answering

    async def get(self, key: str, now: float) -> Record | None:
        await self.never.wait()  # only the guard's deadline ends this
        return None

    async def get_many(self, keys: Any, now: float) -> dict[str, Record]:
        return {}

    async def put(self, key: str, record: Record) -> None:
        return None

    async def put_many(self, records: Any) -> None:
        return None

    async def delete(self, key: str, now: float) -> bool:
        return False

    async def delete_many(self, keys: Any, now: float) -> int:
        return 0

    async def keys(self, prefix: str, now: float) -> list[str]:
        return []

    async def close(self) -> None:
        return None


async def test_timeouts_while_the_server_answers_are_overload_not_an_outage(
        tmp_path: Path, clock: ManualClock) -> None:
    backend = _Queued()
    register("queued", lambda url, tier, config: backend)
    async with _open(tmp_path, clock, CORTEX="queued://") as mem:
        slot = mem._core.by_tier[Tier.CORTEX]
        assert isinstance(slot, RemoteTier) and slot.responsive is backend
        for _ in range(THRESHOLD * 2):
            with pytest.raises(TierUnavailableError, match="overloaded"):
                await slot.get("k", 0.0)
        assert _health(mem, Tier.CORTEX) == ("closed", "closed", THRESHOLD * 2)
        assert await mem.get("k") is None  # a read past its deadline reads as a miss
        backend.answering = False  # the server went silent: now the tier is failing
        for _ in range(THRESHOLD):
            with pytest.raises(TierUnavailableError, match="timed out after"):
                await slot.get("k", 0.0)
        assert _health(mem, Tier.CORTEX)[0] == "open"
