"""The Snowflake backend on the emulator (fakesnow + tests/snowflake_shim.py): the shipped
conformance suite for each of its four layouts, configuration and identifier checks, hostile
keys through a whole Memory, and driver failures. ``SNOWFLAKE_TEST_URL`` runs the conformance
suite against a real account as well (skipped without it)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

pytest.importorskip("snowflake.connector")
pytest.importorskip("fakesnow")

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends import Remote, parse_url
from sophia_memory.backends.base import Backend, Purging, Searchable, Versioned
from sophia_memory.backends.sql import open_snowflake
from sophia_memory.backends.sql.snowflake import SnowflakeBackend, SnowflakeSettings
from sophia_memory.config import MemoryConfig
from sophia_memory.errors import (
    BackendError,
    ConfigError,
    MissingDependencyError,
    TierUnavailableError,
)
from sophia_memory.testing import BackendTests

from .snowflake_shim import emulated_snowflake

pytestmark = [pytest.mark.snowflake,
              pytest.mark.filterwarnings("ignore:Arrow output:UserWarning")]

URL = "snowflake://tester:s3cret@acct-test/TESTDB/SOPHIA_AI_MEMORY"
SQL_TIERS = (Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR, Tier.WORKFLOW)


def open_tier(tier: Tier, url: str = URL, **config: Any) -> Backend:
    parsed = parse_url(url)
    return open_snowflake(parsed, tier, MemoryConfig(**config))


class EmulatedSnowflake:
    """Mixin: every test runs against a fresh emulated account."""

    @pytest.fixture(autouse=True)
    def _emulator(self) -> Iterator[None]:
        with emulated_snowflake():
            yield


class TestSnowflakeKV(EmulatedSnowflake, BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return open_tier(Tier.PERSISTENT)


class TestSnowflakeCortexLayout(EmulatedSnowflake, BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return open_tier(Tier.CORTEX)


class TestSnowflakeVectorLayout(EmulatedSnowflake, BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return open_tier(Tier.VECTOR, URL + "?dim=4")


class TestSnowflakeVersioned(EmulatedSnowflake, BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return open_tier(Tier.WORKFLOW, URL + "?retain=5")


REAL_URL = os.environ.get("SNOWFLAKE_TEST_URL")


@pytest.mark.skipif(not REAL_URL, reason="set SNOWFLAKE_TEST_URL=snowflake://... to run the "
                                         "suite against a real Snowflake account")
class TestRealSnowflake(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        assert REAL_URL is not None
        sep = "&" if "?" in REAL_URL else "?"
        return open_tier(Tier.PERSISTENT,
                         f"{REAL_URL}{sep}table=SM_TEST_{uuid.uuid4().hex[:12]}&timeout=30")


# -- abilities and layouts ----------------------------------------------------------------------


async def test_each_tier_gets_its_abilities() -> None:
    with emulated_snowflake():
        backends = {t: open_tier(t, URL + ("?dim=3" if t is Tier.VECTOR else "")) for t in
                    SQL_TIERS}
        try:
            for tier, b in backends.items():
                assert isinstance(b, Remote) and isinstance(b, Purging), tier
                assert isinstance(b, Versioned) == (tier is Tier.WORKFLOW)
                assert isinstance(b, Searchable) == (tier is Tier.VECTOR)
                assert "s3cret" not in b.describe() and "TESTDB" in b.describe()
            cortex = backends[Tier.CORTEX]
            assert isinstance(cortex, SnowflakeBackend)
            ddl = cortex.table_ddl()
            for column in ("CACHE_KEY", "CACHE_VALUE VARIANT", "PAYLOAD BINARY",
                           "GPU_PROCESSED", "PROCESSING_TIME_MS", "GPU_MEMORY_USED_MB", "TTL"):
                assert column in ddl
            assert '"TESTDB"."SOPHIA_AI_MEMORY"."CORTEX_CACHE_ENHANCED"' in ddl
            assert "VECTOR(FLOAT, 3)" in backends[Tier.VECTOR].table_ddl()  # type: ignore[attr-defined]
        finally:
            for b in backends.values():
                await b.close()


async def test_cortex_columns_hold_platform_fields_and_variant(tmp_path: Path) -> None:
    """Through a whole Memory: meta lands in the platform's columns, the value's JSON form in
    CACHE_VALUE, the payload losslessly in PAYLOAD."""
    import snowflake.connector

    with emulated_snowflake():
        async with Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                               tiers={Tier.CORTEX: URL}) as mem:
            await mem.put("q1", {"answer": [1, 2.5, "x"]}, tier=Tier.CORTEX, ttl=60,
                          meta={"gpu_processed": 1, "processing_time_ms": 12.5,
                                "note": "kept"})
            await mem.put("blob", b"\x00\xff", tier=Tier.CORTEX)
            entry = await mem.get_entry("q1", promote=False)
            assert entry is not None and entry.value == {"answer": [1, 2.5, "x"]}
            assert entry.meta["processing_time_ms"] == 12.5 and entry.meta["note"] == "kept"
            assert await mem.get("blob") == b"\x00\xff"
        conn = snowflake.connector.connect(account="acct-test", user="tester",
                                           database="TESTDB", schema="SOPHIA_AI_MEMORY")
        cur = conn.cursor()
        cur.execute("SELECT CACHE_KEY, CACHE_VALUE, GPU_PROCESSED, PROCESSING_TIME_MS, TTL "
                    "FROM CORTEX_CACHE_ENHANCED ORDER BY CACHE_KEY")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == ["blob", "q1"]
    assert rows[0][1] is None  # bytes have no JSON form
    import json

    assert json.loads(rows[1][1]) == {"answer": [1, 2.5, "x"]}
    assert rows[1][2:] == (1, 12.5, 60.0)


# -- hostile input ------------------------------------------------------------------------------

HOSTILE = ["a'b", 'a"b', "x'); DROP TABLE PERSISTENT_MEMORY; --", "SELECT", "NULL", "%_*",
           "\\'", "ключ 🔑", "; DELETE FROM CORTEX_CACHE_ENHANCED"]


async def test_hostile_keys_and_namespaces_round_trip_on_every_tier(tmp_path: Path) -> None:
    with emulated_snowflake():
        tiers: dict[Tier, str | None] = {t: URL for t in SQL_TIERS}
        tiers[Tier.VECTOR] = URL + "?dim=2"
        async with Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                               tiers=tiers) as mem:
            for ns_name in ["plain", "ns'; DROP SCHEMA SOPHIA_AI_MEMORY; --", "WHERE 1=1"]:
                ns = mem.namespace(ns_name)
                for i, key in enumerate(HOSTILE):  # slowest first: a put clears faster tiers
                    await ns.put(key, [Tier.WORKFLOW.name, i], tier=Tier.WORKFLOW)
                    await ns.put(key, {"v": i}, tier=Tier.VECTOR, vector=[1.0, float(i)])
                    for tier in (Tier.PERSISTENT, Tier.CORTEX):
                        await ns.put(key, [tier.name, i], tier=tier)
                for i, key in enumerate(HOSTILE):
                    assert await ns.get(key) == ["CORTEX", i]
                for tier in (Tier.PERSISTENT, Tier.WORKFLOW, Tier.VECTOR):
                    assert sorted(await ns.keys(tier)) == sorted(HOSTILE)
                hits = await ns.search([1.0, 0.0], k=len(HOSTILE))
                assert sorted(h.key for h in hits) == sorted(HOSTILE)
                assert await ns.delete(HOSTILE[2])
                assert await ns.get(HOSTILE[2]) is None
            assert await mem.namespace("plain").get("SELECT") == ["CORTEX", 3]


@pytest.mark.parametrize("url", [
    "snowflake://u:p@acct/DB/SOPHIA; DROP TABLE X",
    'snowflake://u:p@acct/DB/"QUOTED"',
    "snowflake://u:p@acct/DB/1STARTS_WITH_DIGIT",
    "snowflake://u:p@acct/DB%22%3B--/SCHEMA",
    "snowflake://u:p@acct/DB/SCHEMA?table=T%22%3B%20DROP%20TABLE%20T%3B--",
    "snowflake://u:p@acct/DB/SCHEMA?table=A.B",
    "snowflake://u:p@acct/DB/SCHEMA?warehouse=WH%3B%20DROP",
    "snowflake://u:p@acct/DB/SCHEMA?role=R%22",
    "snowflake://u:p@acct;x/DB/SCHEMA",
    "snowflake://u:p@acct/DB/SCHEMA/EXTRA",
])
def test_hostile_configuration_is_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        open_tier(Tier.PERSISTENT, url)


def test_hostile_names_through_memory_open(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "m.db"),
                    tiers={Tier.PERSISTENT: URL + "?table=x%27%3B%20DROP%20TABLE%20y"})


def test_unknown_option_and_wrong_tier_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        Memory.open(path=str(tmp_path / "m.db"), tiers={Tier.PERSISTENT: URL + "?colour=red"})
    with pytest.raises(ConfigError, match="serves"):
        open_tier(Tier.SESSION)


# -- configuration ------------------------------------------------------------------------------


def test_settings_from_url() -> None:
    url = parse_url("snowflake://me%40corp.com:p%40ss@xy12345.eu-west-1.snowflakecomputing.com"
                    "/analytics/mem?warehouse=wh_small&role=sophia_rw&readers=2")
    s = SnowflakeSettings.from_url(url, environ={})
    assert (s.account, s.user, s.password) == ("xy12345.eu-west-1", "me@corp.com", "p@ss")
    assert (s.database, s.schema, s.warehouse, s.role) == ("ANALYTICS", "MEM", "WH_SMALL",
                                                           "SOPHIA_RW")
    assert s.readers == 2
    kw = s.connect_kwargs(5.0)
    assert kw["paramstyle"] == "qmark" and kw["password"] == "p@ss"
    assert kw["warehouse"] == "WH_SMALL" and kw["network_timeout"] == 5
    assert "p@ss" not in repr(s)


def test_default_schema_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SNOWFLAKE_ACCOUNT": "org-acct", "SNOWFLAKE_USER": "svc",
           "SNOWFLAKE_PRIVATE_KEY_PATH": "/keys/rsa_key.p8",
           "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "pp", "SNOWFLAKE_DATABASE": "AI",
           "SNOWFLAKE_WAREHOUSE": "WH", "SNOWFLAKE_ROLE": "R"}
    s = SnowflakeSettings.from_url(parse_url("snowflake://"), environ=env)
    assert (s.account, s.user, s.database, s.schema) == ("org-acct", "svc", "AI",
                                                         "SOPHIA_AI_MEMORY")
    kw = s.connect_kwargs(2.0)
    assert kw["authenticator"] == "SNOWFLAKE_JWT" and kw["private_key_file"] == "/keys/rsa_key.p8"
    assert kw["private_key_file_pwd"] == "pp" and "password" not in kw
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SNOWFLAKE_SCHEMA", "bad schema")
    with pytest.raises(ConfigError, match="schema"):
        open_tier(Tier.PERSISTENT, "snowflake://")


@pytest.mark.parametrize(("url", "message"), [
    ("snowflake://", "account"),
    ("snowflake://acct/DB", "user"),
    ("snowflake://u@acct", "database"),
    ("snowflake://u@acct/DB", "credentials"),
])
def test_missing_settings_name_the_fix(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SnowflakeSettings.from_url(parse_url(url), environ={})


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snowflake.connector", None)
    with pytest.raises(MissingDependencyError, match=r"sophia-memory\[snowflake\]"):
        open_tier(Tier.PERSISTENT)


# -- failures -----------------------------------------------------------------------------------


def _refusing(message: str) -> Any:
    """Patches ``snowflake.connector.connect`` (inside the emulator) to fail as a network
    failure does."""
    import snowflake.connector

    error = snowflake.connector.errors.OperationalError(msg=message)
    return mock.patch("snowflake.connector.connect", side_effect=error)


async def test_driver_errors_become_backend_errors() -> None:
    with emulated_snowflake():
        backend = open_tier(Tier.PERSISTENT, URL + "?timeout=7.5")
        assert backend.call_timeout == 7.5  # type: ignore[attr-defined]
        try:
            with _refusing("could not reach account"):
                with pytest.raises(BackendError, match="could not reach"):
                    await backend.get("k", 0.0)
                with pytest.raises(BackendError, match="could not reach"):
                    await backend.put("k", _record())
        finally:
            await backend.close()


async def test_a_down_snowflake_tier_fails_writes_and_misses_reads(tmp_path: Path) -> None:
    with emulated_snowflake(), _refusing("down"):
        async with Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                               tiers={Tier.PERSISTENT: URL}) as mem:
            with pytest.raises(TierUnavailableError):
                await mem.put("k", 1, tier=Tier.PERSISTENT)
            await mem.put("k", 2, tier=Tier.WORKFLOW)  # the embedded tiers still work
            assert await mem.get("k") == 2
            assert mem.stats()["tiers"]["PERSISTENT"]["errors"] >= 2


async def test_sql_errors_become_backend_errors() -> None:
    with emulated_snowflake():
        backend = open_tier(Tier.PERSISTENT, URL + "?create=0")  # the table never gets made
        try:
            with pytest.raises(BackendError, match="statement failed"):
                await backend.get("k", 0.0)
        finally:
            await backend.close()


def _record() -> Any:
    from sophia_memory.tiers import Record

    return Record(b"\x01\x02", size=2, created_at=1.0)


# -- closing races ------------------------------------------------------------------------------


async def test_a_write_queued_behind_the_stop_marker_fails_instead_of_hanging() -> None:
    """``release`` can queue its stop marker between a write's ``_closed`` check and its
    ``put``: the writer then stops ahead of the write, which must still be answered."""
    from sophia_memory.backends.sql.snowflake_engine import _STOP

    with emulated_snowflake():
        backend = open_tier(Tier.PERSISTENT)
        assert isinstance(backend, SnowflakeBackend)
        engine = backend.engine
        try:
            engine._queue.put(_STOP)  # the stop marker overtakes the write below
            future = engine.write(lambda cur: 1)
            engine._writer.join(timeout=30)
            assert not engine._writer.is_alive()
            with pytest.raises(BackendError, match="engine is closed"):
                await asyncio.wait_for(future, timeout=30)
            with pytest.raises(BackendError, match="engine is closed"):
                engine.write(lambda cur: 2)  # refused once the writer is gone
            assert engine.pending() == 0
        finally:
            await backend.close()


async def test_a_read_after_the_reader_pool_shut_down_is_a_backend_error() -> None:
    """``read`` can pass its ``_closed`` check just before ``release`` shuts the pool down."""
    with emulated_snowflake():
        backend = open_tier(Tier.PERSISTENT)
        assert isinstance(backend, SnowflakeBackend)
        try:
            backend.engine._pool.shutdown(wait=True)  # as release() does, after the check
            with pytest.raises(BackendError, match="engine is closed"):
                await backend.engine.read(lambda cur: 1)
            with pytest.raises(BackendError, match="engine is closed"):
                await backend.get("k", 0.0)
        finally:
            await backend.close()


async def test_close_answers_every_queued_write() -> None:
    """Writes queued while the last reference is released either commit or fail: none hangs."""
    with emulated_snowflake():
        backend = open_tier(Tier.PERSISTENT)
        assert isinstance(backend, SnowflakeBackend)
        await backend.put("warm-up", _record())
        futures = [asyncio.ensure_future(backend.put(f"k{i}", _record())) for i in range(50)]
        await asyncio.sleep(0)  # let them queue
        await backend.close()
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True),
                                         timeout=30)
        assert all(r is None or isinstance(r, BackendError) for r in results), results


# -- staging table ------------------------------------------------------------------------------


async def test_the_staging_table_is_named_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging table and ``write_pandas`` name the configured database and schema, so a
    session whose current schema is another one (or none) stages in the right place."""
    import snowflake.connector.pandas_tools as tools

    from sophia_memory.backends.sql.snowflake import MERGE_ROWS
    from sophia_memory.backends.sql.snowflake_engine import SnowflakeEngine

    original_kwargs = SnowflakeSettings.connect_kwargs

    def elsewhere(self: SnowflakeSettings, call_timeout: float) -> dict[str, Any]:
        kw = original_kwargs(self, call_timeout)
        kw["schema"] = "ELSEWHERE"  # the session's current schema is not the configured one
        return kw

    with emulated_snowflake():
        loads: list[dict[str, Any]] = []
        write_pandas = tools.write_pandas  # the emulator's

        def spy_load(conn: Any, frame: Any, table: str, **kw: Any) -> Any:
            loads.append({"table": table, **kw})
            return write_pandas(conn, frame, table, **kw)

        statements: list[str] = []
        execute = SnowflakeEngine.execute

        def spy_execute(self: Any, cur: Any, sql: str, params: Any = None) -> Any:
            statements.append(sql)
            return execute(self, cur, sql, params)

        monkeypatch.setattr(tools, "write_pandas", spy_load)
        monkeypatch.setattr(SnowflakeEngine, "execute", spy_execute)
        monkeypatch.setattr(SnowflakeSettings, "connect_kwargs", elsewhere)
        for tier in (Tier.PERSISTENT, Tier.WORKFLOW):
            backend = open_tier(tier)
            n = MERGE_ROWS + 5
            try:
                await backend.put_many({f"k{i}": _record() for i in range(n)})
                assert len(await backend.get_many([f"k{i}" for i in range(n)], 0.0)) == n
            finally:
                await backend.close()
            table = "PERSISTENT_MEMORY" if tier is Tier.PERSISTENT else "WORKFLOW_STATE"
            assert loads.pop() == {"table": f"SOPHIA_STAGE_{table}", "database": "TESTDB",
                                   "schema": "SOPHIA_AI_MEMORY", "quote_identifiers": True}
            staged = [s for s in statements if "SOPHIA_STAGE_" in s]
            assert staged and all(
                f'"TESTDB"."SOPHIA_AI_MEMORY"."SOPHIA_STAGE_{table}"' in s for s in staged)
            assert not any(f' "SOPHIA_STAGE_{table}"' in s for s in staged)
            statements.clear()


@pytest.mark.parametrize("retain", [0, -3])
def test_retention_below_one_is_refused_by_both_versioned_backends(tmp_path: Path,
                                                                    retain: int) -> None:
    from sophia_memory.backends.sql.snowflake_versioned import SnowflakeVersionedBackend
    from sophia_memory.backends.sql.sqlite_versioned import SQLiteVersionedBackend

    settings = SnowflakeSettings.from_url(parse_url(URL), environ={})
    with pytest.raises(ConfigError, match="retain must be at least 1"):
        SnowflakeVersionedBackend(settings, "WORKFLOW_STATE", retain=retain)
    with pytest.raises(ConfigError, match="retain must be at least 1"):
        SQLiteVersionedBackend(tmp_path / "w.db", "workflow", retain=retain)
    if retain < 0:  # in a URL, retain=0 means "keep every version"
        with pytest.raises(ConfigError, match="retain must be at least 1"):
            open_tier(Tier.WORKFLOW, URL + f"?retain={retain}")


async def test_both_versioned_backends_report_their_retention(tmp_path: Path) -> None:
    from sophia_memory.backends.sql.sqlite_versioned import SQLiteVersionedBackend

    with emulated_snowflake():
        backends = [open_tier(Tier.WORKFLOW, URL + "?retain=4"),
                    SQLiteVersionedBackend(tmp_path / "w.db", "workflow", retain=4)]
        try:
            for b in backends:
                assert b.stats()["retain"] == 4
                assert b.describe().endswith("(versioned, retain 4)")
        finally:
            for b in backends:
                await b.close()
