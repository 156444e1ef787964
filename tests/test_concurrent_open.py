"""Opening one SQLite file from many processes and threads at once always succeeds, and a
forked child never receives its parent's engine.

Measured on the old code: 2 failed opens in 45 (3 processes at once), ``BackendError: trigger
"workflow_retain" already exists`` (each opener dropped and re-created the retention trigger
outside a transaction). Now the schema is checked read-only and, where something is missing or
differs, set up in one ``BEGIN IMMEDIATE`` transaction, retried while the file is locked.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import threading
import traceback
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import Memory, MemoryConfig, Record, Tier
from sophia_memory.backends import open_backend

PROCESSES = 6
THREADS_PER_PROCESS = 10
THREADS_HERE = 40  # 6 * 10 + 40 = 100 opens of one path at once


def _open_and_use(path: str, who: str) -> str | None:
    """Open the memory, put and get one WORKFLOW key, close; None, or what went wrong."""

    async def run() -> None:
        async with Memory.open(path=path) as mem:
            await mem.put(f"k:{who}", who, tier=Tier.WORKFLOW)
            got = await mem.get(f"k:{who}")
            if got != who:
                raise AssertionError(f"read back {got!r}")

    try:
        asyncio.run(run())
    except Exception as exc:
        return f"{who}: {exc!r}"
    return None


def _in_threads(path: str, prefix: str, count: int, go: Any) -> list[str | None]:
    """``count`` threads, each opening once ``go`` is set."""
    results: list[str | None] = [f"{prefix}: never ran"] * count

    def one(i: int) -> None:
        go.wait(timeout=120)
        results[i] = _open_and_use(path, f"{prefix}-{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _child(path: str, prefix: str, count: int, *, ready: Barrier, go: Event,
           out: multiprocessing.Queue[list[str | None]]) -> None:
    """A process of its own: its threads wait for ``go``, which the parent sets once every
    process has started them."""
    results: list[str | None] = [f"{prefix}: never ran"] * count
    done = threading.Event()

    def run() -> None:
        results[:] = _in_threads(path, prefix, count, go)
        done.set()

    threading.Thread(target=run).start()
    ready.wait(timeout=120)
    done.wait(timeout=120)
    out.put(results)


def test_one_hundred_concurrent_opens_of_one_path_all_succeed(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")  # does not exist yet: creation races too
    ctx = multiprocessing.get_context("spawn")  # independent processes, as in production
    ready = ctx.Barrier(PROCESSES + 1)
    go = ctx.Event()
    out: multiprocessing.Queue[list[str | None]] = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(path, f"p{n}", THREADS_PER_PROCESS),
                         kwargs={"ready": ready, "go": go, "out": out}, daemon=True)
             for n in range(PROCESSES)]
    for p in procs:
        p.start()
    here: list[str | None] = []
    local = threading.Thread(target=lambda: here.extend(
        _in_threads(path, "main", THREADS_HERE, go)))
    local.start()
    try:
        ready.wait(timeout=120)  # every process has imported the library, started its threads
    finally:
        go.set()
    results = [r for _ in procs for r in out.get(timeout=180)]
    local.join(timeout=180)
    for p in procs:
        p.join(timeout=60)
    results += here
    failures = [r for r in results if r is not None]
    print(f"{len(results)} concurrent opens of one path "
          f"({PROCESSES} processes x {THREADS_PER_PROCESS} threads + {THREADS_HERE} threads "
          f"here): {len(failures)} failed")
    assert len(results) == PROCESSES * THREADS_PER_PROCESS + THREADS_HERE
    assert not failures, "\n".join(failures)
    with sqlite3.connect(path) as conn:  # every put is there, in one retention trigger
        assert conn.execute("SELECT count(*) FROM workflow").fetchone()[0] == len(results)
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        assert [name for (name,) in triggers] == ["workflow_retain"]


def test_reopening_takes_no_write_lock_and_a_new_retention_replaces_the_trigger(
        tmp_path: Path) -> None:
    path = tmp_path / "r.db"

    def open_workflow(retain: int) -> Any:
        return open_backend(f"sqlite:///{path}?retain={retain}", Tier.WORKFLOW, MemoryConfig())

    def schema() -> tuple[int, str]:
        with sqlite3.connect(path) as conn:
            version = conn.execute("PRAGMA schema_version").fetchone()[0]
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = "
                                  "'workflow_retain'").fetchone()
        return version, sql

    first = open_workflow(3)
    before = schema()
    again = open_workflow(3)  # the schema is in place: nothing is rewritten
    assert schema() == before
    other = open_workflow(5)
    version, sql = schema()
    assert version > before[0] and "NEW.version - 5" in sql

    async def close_all() -> None:
        for b in (first, again, other):
            await b.close()

    asyncio.run(close_all())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_the_same_path_with_an_engine_of_its_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}?table=items"
    parent: Any = open_backend(url, Tier.PERSISTENT, MemoryConfig())
    asyncio.run(parent.put("from-parent", Record(b"p", size=1)))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code, report = 1, ""
        try:
            report = _child_checks(url, parent)
            code = 0 if not report else 2
        except BaseException:
            report = traceback.format_exc()
        finally:
            os.write(write_end, report.encode()[:60_000])
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report

    async def parent_after() -> tuple[Record | None, Record | None]:
        # The child released nothing of the parent's: its engine still writes and reads.
        await parent.put("after-fork", Record(b"a", size=1))
        got = await parent.get("after-fork", 0.0), await parent.get("from-child", 0.0)
        await parent.close()
        return got

    after, from_child = asyncio.run(parent_after())
    assert after is not None and after.payload == b"a"
    assert from_child is not None and from_child.payload == b"c"


def _child_checks(url: str, parent: Any) -> str:
    """Run in the forked child; what went wrong, or an empty string."""
    problems = []
    child: Any = open_backend(url, Tier.PERSISTENT, MemoryConfig())
    if child.engine is parent.engine:
        problems.append("the child was handed the parent's engine")
    if child.engine.pid != os.getpid():
        problems.append("the child's engine does not belong to the child")

    async def use() -> None:
        await child.put("from-child", Record(b"c", size=1))
        seen = await child.get("from-parent", 0.0)
        if seen is None or seen.payload != b"p":
            problems.append(f"the child read {seen!r} for the parent's key")
        try:
            await parent.put("inherited", Record(b"x", size=1))
        except Exception as exc:  # the inherited engine refuses: its writer is not here
            if "forked" not in str(exc):
                problems.append(f"the inherited engine failed oddly: {exc!r}")
        else:
            problems.append("the inherited engine accepted a write")
        await parent.close()  # abandons the inherited engine, closes nothing of the parent's
        await child.close()

    asyncio.run(use())
    return "\n".join(problems)
