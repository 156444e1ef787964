"""The emulated Snowflake backend behaves like the embedded SQLite backends on the same data:
vector search (cosine and inner product, namespaces, ``min_score``), workflow versions,
conflicts and retention; and its write paths batch as designed (group commit, staging)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("snowflake.connector")
pytest.importorskip("fakesnow")

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends import parse_url
from sophia_memory.backends.sql import open_snowflake
from sophia_memory.backends.sql.snowflake import MERGE_ROWS, SnowflakeBackend
from sophia_memory.backends.sql.snowflake_vector import SnowflakeVectorBackend
from sophia_memory.backends.sql.snowflake_versioned import SnowflakeVersionedBackend
from sophia_memory.backends.sql.sqlite_vector import SQLiteVectorBackend
from sophia_memory.backends.sql.sqlite_versioned import SQLiteVersionedBackend
from sophia_memory.codecs import MsgpackCodec
from sophia_memory.config import MemoryConfig
from sophia_memory.errors import InvalidArgumentError, VersionConflictError
from sophia_memory.tiers import Record

from .snowflake_shim import emulated_snowflake

pytestmark = [pytest.mark.snowflake,
              pytest.mark.filterwarnings("ignore:Arrow output:UserWarning")]

URL = "snowflake://tester:s3cret@acct-test/TESTDB/SOPHIA_AI_MEMORY"
NOW = 1_000.0
SEP = "\x1f"


@pytest.fixture(autouse=True)
def _emulator() -> Any:
    with emulated_snowflake():
        yield


def open_tier(tier: Any, query: str = "") -> Any:
    return open_snowflake(parse_url(URL + query), tier, MemoryConfig())


def vector_record(i: int, vec: np.ndarray[Any, Any]) -> Record:
    payload = MsgpackCodec().encode({"i": i})
    return Record(payload, size=len(payload), created_at=NOW,
                  extra={"embedding": vec.astype(np.float32).tobytes(), "dim": vec.size})


# -- vector search ------------------------------------------------------------------------------


async def test_vector_search_matches_the_embedded_backend(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    dim = 16
    keys = [f"doc{i}" for i in range(60)] + [f"t1{SEP}doc{i}" for i in range(40)] + \
        [f"t1{SEP}inner{SEP}doc{i}" for i in range(20)]
    vectors = rng.normal(size=(len(keys), dim)).astype(np.float32)
    vectors[5] = vectors[6]  # an exact tie: ordered by key on both
    records = {k: vector_record(i, v) for i, (k, v) in enumerate(zip(keys, vectors, strict=True))}
    lite = SQLiteVectorBackend(tmp_path / "v.db", "vector", dim=dim)
    snow = open_tier(Tier.VECTOR, f"?dim={dim}")
    assert isinstance(snow, SnowflakeVectorBackend)
    try:
        await lite.put_many(dict(list(records.items())[:50]))
        await snow.put_many(dict(list(records.items())[:50]))
        for k, r in list(records.items())[50:]:  # the rest one by one (group commit)
            await asyncio.gather(lite.put(k, r), snow.put(k, r))
        await lite.delete("doc3", NOW)
        await snow.delete("doc3", NOW)
        queries = [lite.prepare(q) for q in rng.normal(size=(4, dim))] + [vectors[5]]
        checked = 0
        for metric in ("cosine", "ip"):
            for prefix in ("", f"t1{SEP}", f"t1{SEP}inner{SEP}", f"t1{SEP}do"):
                for top, min_score in ((10, None), (3, 0.1), (200, None)):
                    want = await lite.search(queries, top, metric, prefix, min_score)
                    got = await snow.search(queries, top, metric, prefix, min_score)
                    for w, g in zip(want, got, strict=True):
                        assert [key for key, _ in g] == [key for key, _ in w]
                        np.testing.assert_allclose([s for _, s in g], [s for _, s in w],
                                                   rtol=1e-5, atol=1e-5)
                        checked += len(w)
        assert checked > 500
    finally:
        await lite.close()
        await snow.close()


async def test_vector_dimension_from_first_vector_and_from_an_existing_table() -> None:
    snow = open_tier(Tier.VECTOR)
    assert isinstance(snow, SnowflakeVectorBackend) and snow.dim is None
    try:
        assert await snow.search([np.ones(3, np.float32)], 5, None, "", None) == [[]]
        assert await snow.get("nothing", NOW) is None and await snow.keys("", NOW) == []
        await snow.put("a", vector_record(1, np.array([1.0, 0.0, 0.0])))
        assert snow.dim == 3
        with pytest.raises(InvalidArgumentError, match="dimension"):
            snow.prepare([1.0, 2.0])
    finally:
        await snow.close()
    again = open_tier(Tier.VECTOR)  # same emulated account: learns dim 3 from the rows
    try:
        hits = await again.search([np.array([1.0, 0.0, 0.0], np.float32)], 1, None, "", None)
        assert hits == [[("a", pytest.approx(1.0))]] and again.dim == 3
    finally:
        await again.close()


async def test_search_through_memory(tmp_path: Path) -> None:
    async with Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                           tiers={Tier.VECTOR: URL + "?dim=2"}) as mem:
        await mem.put_many({"x": "east", "y": "north"}, tier=Tier.VECTOR,
                           vectors={"x": [1.0, 0.0], "y": [0.0, 1.0]})
        await mem.namespace("t").put("x", "other", tier=Tier.VECTOR, vector=[1.0, 0.1])
        hits = await mem.search([0.9, 0.1], k=5)
        assert [(h.key, h.value) for h in hits] == [("x", "east"), ("y", "north")]
        assert [h.key for h in await mem.namespace("t").search([1.0, 0.0])] == ["x"]
        with pytest.raises(InvalidArgumentError):
            await mem.search([1.0, 0.0, 0.0])


# -- workflow versions --------------------------------------------------------------------------


async def _workflow_script(b: Any) -> list[Any]:
    """The same sequence of appends, conflicts, reads and deletes; what each step returned."""
    out: list[Any] = []

    def rec(i: int, ttl: float | None = None) -> Record:
        payload = f"state-{i}".encode()
        return Record(payload, expires_at=None if ttl is None else NOW + ttl, size=len(payload),
                      created_at=NOW)

    for i in range(1, 6):
        out.append(await b.append("wf", rec(i), i - 1))
    for expected in (0, 3, 9):
        try:
            await b.append("wf", rec(99), expected)
        except VersionConflictError as exc:
            out.append(("conflict", exc.expected_version, exc.current_version))
    try:
        await b.append("new", rec(1), 2)
    except VersionConflictError as exc:
        out.append(("conflict", exc.expected_version, exc.current_version))
    out.append(await b.append("new", rec(1), 0))
    out.append(await b.append("new", rec(2), None))
    out.append([(r.version, r.payload) for r in await b.history("wf", None)])
    out.append([r.version for r in await b.history("wf", 2)])
    for v in (1, 2, 3, 5, 6):
        got = await b.get_version("wf", v)
        out.append(None if got is None else got.payload)
    latest = await b.get("wf", NOW)
    out.append((latest.version, latest.payload))
    await b.put_many({"wf": rec(6), "bulk": rec(7)})
    out.append([r.version for r in await b.history("wf", None)])
    out.append({k: (r.version, r.payload) for k, r in
                (await b.get_many(["wf", "bulk", "none"], NOW)).items()})
    out.append(await b.append("short", rec(1, ttl=5), None))
    out.append(await b.append("short", rec(2), None))
    out.append(await b.append("short", rec(3, ttl=5), None))
    out.append(sorted(await b.keys("", NOW + 10)))
    out.append(await b.exists("short", NOW + 10))
    out.append(await b.purge_expired(NOW + 10))
    out.append(await b.get("short", NOW))
    out.append(await b.delete("new", NOW))
    out.append(await b.delete("new", NOW))
    out.append(await b.history("new", None))
    out.append(sorted(await b.keys("", NOW)))
    return out


async def test_workflow_versions_and_conflicts_match_sqlite(tmp_path: Path) -> None:
    lite = SQLiteVersionedBackend(tmp_path / "w.db", "workflow", retain=3)
    snow = open_tier(Tier.WORKFLOW, "?retain=3")
    assert isinstance(snow, SnowflakeVersionedBackend)
    try:
        want = await _workflow_script(lite)
        got = await _workflow_script(snow)
    finally:
        await lite.close()
        await snow.close()
    assert got == want
    assert ("conflict", 3, 5) in got and ("conflict", 2, None) in got


async def test_concurrent_appends_with_the_same_expected_version() -> None:
    snow = open_tier(Tier.WORKFLOW)
    try:
        await snow.append("k", Record(b"0", created_at=NOW), None)
        results = await asyncio.gather(
            *(snow.append("k", Record(str(i).encode(), created_at=NOW), 1) for i in range(8)),
            return_exceptions=True)
        assert sorted(r for r in results if isinstance(r, int)) == [2]
        assert all(isinstance(r, VersionConflictError) for r in results if not isinstance(r, int))
        assert [r.version for r in await snow.history("k", None)] == [2, 1]
    finally:
        await snow.close()


# -- write paths --------------------------------------------------------------------------------


async def test_concurrent_puts_are_group_committed() -> None:
    snow = open_tier(Tier.PERSISTENT)
    assert isinstance(snow, SnowflakeBackend)
    try:
        await snow.put("warm-up", Record(b"w", created_at=NOW))  # creates the table
        eng = snow.engine
        before = eng.statements, eng.write_batches
        await asyncio.gather(*(snow.put(f"k{i}", Record(f"v{i}".encode(), size=2,
                                                        created_at=NOW)) for i in range(100)))
        statements, batches = eng.statements - before[0], eng.write_batches - before[1]
        assert statements <= 5 and batches <= 5, (statements, batches)
        found = await snow.get_many([f"k{i}" for i in range(100)], NOW)
        assert {k: r.payload for k, r in found.items()} == {
            f"k{i}": f"v{i}".encode() for i in range(100)}
        # The last of several queued writes of one key wins.
        await asyncio.gather(*(snow.put("same", Record(str(i).encode(), created_at=NOW))
                               for i in range(10)))
        got = await snow.get("same", NOW)
        assert got is not None and got.payload == b"9"
    finally:
        await snow.close()


async def test_large_put_many_goes_through_the_staging_table() -> None:
    import snowflake.connector

    snow = open_tier(Tier.PERSISTENT)
    assert isinstance(snow, SnowflakeBackend)
    codec = MsgpackCodec()
    n = MERGE_ROWS * 2 + 17
    values: dict[str, Any] = {f"item:{i}'\";--": {"n": i, "tags": ["a", i]} for i in range(n)}
    values["binary"] = b"\x00\x01\xff" * 100
    values["array"] = np.arange(5, dtype=np.int16)
    try:
        records = {k: Record(codec.encode(v), expires_at=None if i % 2 else NOW + i, size=i,
                             version=i, created_at=NOW, extra={"i": i} if i % 3 else {})
                   for i, (k, v) in enumerate(values.items())}
        await snow.put_many(records)
        assert snow.engine.bulk_loads == 1
        await snow.put_many(records)  # again: the MERGE updates, nothing is duplicated
        found = await snow.get_many(list(values), NOW)
        assert len(found) == len(values)
        for k, rec in records.items():
            assert found[k] == rec, k
        assert codec.decode(found["binary"].payload) == values["binary"]
        conn = snowflake.connector.connect(account="acct-test", user="tester",
                                           database="TESTDB", schema="SOPHIA_AI_MEMORY",
                                           paramstyle="qmark")
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), COUNT(VALUE_JSON) FROM PERSISTENT_MEMORY")
        assert cur.fetchall() == [(n + 2, n)]  # bytes and arrays have no JSON form
        cur.execute("SELECT VALUE_JSON FROM PERSISTENT_MEMORY WHERE MEMORY_KEY = ?",
                    ["item:7'\";--"])
        assert json.loads(cur.fetchall()[0][0]) == {"n": 7, "tags": ["a", 7]}
    finally:
        await snow.close()
