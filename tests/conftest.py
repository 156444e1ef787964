"""Shared fixtures, and the rules a CI run holds the suite to.

Under CI (``CI`` set to anything but ``0``/``false``/``no``, as ``.ci/run`` does):

* a test that needs Redis or the Snowflake emulator (the server, the client library, fakeredis,
  the connector or fakesnow) *fails* when it is missing instead of skipping; GPU skips and the
  real-Snowflake-account tests (``SNOWFLAKE_TEST_URL``) still skip, as CI has neither;
* the run fails when it leaves keys in the Redis server the tests share (``REDIS_URL``,
  default ``redis://127.0.0.1:6379``): the keys of every database are noted when the session
  starts, and any key there at the end that was not is a leftover. Outside CI the same check
  runs and reports leftovers without failing (another developer's concurrent run shares the
  server here); ``SOPHIA_TEST_LEFTOVERS=fail`` makes it fail anyway, ``=off`` switches it off.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.engine.ordering import KeyOrder


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


#: Skips that mean "a service the suite must run against is missing".
_SERVICE = re.compile(r"redis|fakeredis|snowflake|fakesnow", re.IGNORECASE)
#: Skips CI keeps: no GPU there, and no real Snowflake account.
_MAY_SKIP = re.compile(r"SNOWFLAKE_TEST_URL|\bGPU\b|CUDA|cupy", re.IGNORECASE)


def _must_not_skip(reason: str) -> bool:
    return in_ci() and bool(_SERVICE.search(reason)) and not _MAY_SKIP.search(reason)


def _ci_failure(reason: str) -> str:
    return (f"CI: {reason}\n(under CI a test that needs Redis or the Snowflake emulator fails "
            "instead of skipping: start redis-server, install the test extra)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if (report.skipped and not hasattr(report, "wasxfail") and call.excinfo is not None
            and call.excinfo.errisinstance(pytest.skip.Exception)):
        reason = str(call.excinfo.value)
        if _must_not_skip(reason):
            report.outcome = "failed"
            report.longrepr = _ci_failure(reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if _must_not_skip(reason):  # a module-level importorskip
            report.outcome = "failed"
            report.longrepr = _ci_failure(reason)
    return report


# -- leftover keys in the shared Redis -----------------------------------------------------------

_DATABASES = 16
_REDIS_KEYS = pytest.StashKey[dict[int, set[bytes]]]()


def _shared_redis() -> Any:
    """A sync one-connection client of the shared server, or None when there is none."""
    try:
        import redis
    except ImportError:
        return None
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=10,
                                      single_connection_client=True)
    except Exception:  # single_connection_client connects at once
        return None
    try:
        client.ping()
    except Exception:
        client.close()
        return None
    return client


def _keys_by_db(client: Any) -> dict[int, set[bytes]]:
    """Every key of every database (the suite's are few: a scan is cheap)."""
    found: dict[int, set[bytes]] = {}
    for db in range(_DATABASES):
        try:
            client.execute_command("SELECT", db)
        except Exception:  # the server has fewer databases
            break
        found[db] = set(client.scan_iter(count=1000))
    return found


def _leftover_mode() -> str:
    mode = os.environ.get("SOPHIA_TEST_LEFTOVERS", "").strip().lower()
    if mode in ("off", "fail", "report"):
        return mode
    return "fail" if in_ci() else "report"


def pytest_sessionstart(session: pytest.Session) -> None:
    if _leftover_mode() == "off":
        return
    client = _shared_redis()
    if client is not None:
        with client:
            session.stash[_REDIS_KEYS] = _keys_by_db(client)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.stash.get(_REDIS_KEYS, None)
    if before is None:
        return
    client = _shared_redis()
    if client is None:
        return
    with client:
        after = _keys_by_db(client)
    left = {db: sorted(keys - before.get(db, set())) for db, keys in after.items()}
    left = {db: keys for db, keys in left.items() if keys}
    if not left:
        return
    total = sum(len(k) for k in left.values())
    lines = [f"{total} key(s) left in the shared Redis by this run:"]
    for db, keys in sorted(left.items()):
        shown = ", ".join(k.decode("utf-8", "replace") for k in keys[:10])
        more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
        lines.append(f"  db {db}: {shown}{more}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    fail = _leftover_mode() == "fail"
    if reporter is not None:
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line, red=fail, yellow=not fail)
    if fail and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


async def drop_prefix(client: Any, prefix: str) -> None:
    """Delete every key under ``prefix`` on the server ``client`` talks to (a test's own
    keys, so that the run leaves nothing behind)."""
    names = [n async for n in client.scan_iter(match=prefix + "*", count=1000)]
    if names:
        await client.delete(*names)


async def real_redis_or_skip(url: str) -> Any:
    """A ``redis.asyncio`` client of the server at ``url``, or a skip that says why not
    (a failure under CI)."""
    redis_asyncio = pytest.importorskip("redis.asyncio")
    client = redis_asyncio.Redis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        await client.aclose()
        if in_ci():
            pytest.fail(_ci_failure(f"no Redis at {url}: {exc}"))
        pytest.skip(f"no Redis at {url}: {exc}")
    return client


def apart(n: int, prefix: str = "") -> list[str]:
    """``n`` keys whose full keys (``prefix`` + key) lie in ``n`` different lock stripes."""
    keys: list[str] = []
    stripes: set[int] = set()
    i = 0
    while len(keys) < n:
        k = f"key{i}"
        s = KeyOrder.stripe(prefix + k)
        if s not in stripes:
            stripes.add(s)
            keys.append(k)
        i += 1
    return keys
