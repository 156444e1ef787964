"""Acceptance: "A value put to a SQLite tier is present after the process is killed with
SIGKILL right after put returned".

A child process puts values and reports each one on stdout only after ``put`` returned. The
parent SIGKILLs it the moment it has seen the last line it waits for, while the child is still
busy writing more, then opens the same file and checks every value the child reported.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sophia_memory import ManualClock, Memory, Tier

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

TIERS = ("PERSISTENT", "CORTEX", "WORKFLOW")

SEQUENTIAL_CHILD = """
    import asyncio, sys
    from sophia_memory import Memory, Tier

    async def main(path, n):
        async with Memory.open(path=path) as mem:
            for i in range(n):
                for tier in {tiers!r}:
                    key = f"{{tier}}:{{i}}"
                    await mem.put(key, {{"i": i, "tier": tier, "blob": b"x" * (i % 50)}},
                                  tier=Tier[tier])
                    print("PUT", key, flush=True)
            print("DONE", flush=True)
            i = n
            while True:  # keep writing: the kill lands mid-work, not on an idle process
                key = f"PERSISTENT:{{i}}"
                await mem.put(key, {{"i": i, "tier": "PERSISTENT", "blob": b"x" * (i % 50)}},
                              tier=Tier.PERSISTENT)
                print("PUT", key, flush=True)
                i += 1

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

CONCURRENT_CHILD = """
    import asyncio, sys
    from sophia_memory import Memory, Tier

    async def main(path, n):
        async with Memory.open(path=path) as mem:
            tiers = {tiers!r}
            keys = [f"{{tiers[i % len(tiers)]}}:{{i}}" for i in range(n)]
            await asyncio.gather(*(
                mem.put(k, {{"i": i, "tier": k.split(":")[0], "blob": b"x" * (i % 50)}},
                        tier=Tier[k.split(":")[0]])
                for i, k in enumerate(keys)))
            for k in keys:
                print("PUT", k)
            print("DONE", flush=True)
            await asyncio.sleep(3600)  # the child idles; the parent kills it

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def run_and_kill(script: str, db: Path, n: int) -> list[str]:
    """Start the child, read its report up to DONE, SIGKILL it at once; the keys it reported
    as put (including any reported after DONE, before the kill landed)."""
    code = textwrap.dedent(script.format(tiers=TIERS))
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hung child must not hang the test run
    watchdog.start()
    reported: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "DONE":
                os.kill(proc.pid, signal.SIGKILL)
                break
            tag, key = line.split()
            assert tag == "PUT"
            reported.append(key)
        else:
            pytest.fail(f"child ended before DONE: rc={proc.wait()} "
                        f"stderr={proc.stderr.read() if proc.stderr else ''}")
        rest = proc.stdout.read()  # what the child wrote before the kill landed
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    finally:
        watchdog.cancel()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == -signal.SIGKILL, f"child was not killed: {proc.returncode} {err}"
    for line in rest.splitlines(keepends=True):
        if line.startswith("PUT ") and line.endswith("\n"):  # complete lines only
            reported.append(line.split()[1])
    return reported


def expected(key: str) -> dict[str, object]:
    tier, i = key.split(":")
    return {"i": int(i), "tier": tier, "blob": b"x" * (int(i) % 50)}


async def check_all_present(db: Path, keys: list[str]) -> None:
    async with Memory.open(path=str(db), clock=ManualClock(0.0)) as mem:
        found = await mem.get_many(keys)
        missing = [k for k in keys if k not in found]
        assert not missing, f"{len(missing)} reported puts lost after SIGKILL: {missing[:5]}"
        for key in keys:
            assert found[key] == expected(key)
            entry = await mem.get_entry(key)
            assert entry is not None
            assert entry.tier is Tier[key.split(":")[0]]


def check_database_intact(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


async def test_sequential_puts_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "durable.db"
    n = 30
    keys = await asyncio.to_thread(run_and_kill, SEQUENTIAL_CHILD, db, n)
    assert len(keys) >= n * len(TIERS)
    assert {f"{t}:{i}" for t in TIERS for i in range(n)} <= set(keys)
    check_database_intact(db)
    await check_all_present(db, keys)


async def test_concurrent_puts_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "durable-gather.db"
    n = 100
    keys = await asyncio.to_thread(run_and_kill, CONCURRENT_CHILD, db, n)
    assert sorted(keys) == sorted(f"{TIERS[i % len(TIERS)]}:{i}" for i in range(n))
    check_database_intact(db)
    await check_all_present(db, keys)
