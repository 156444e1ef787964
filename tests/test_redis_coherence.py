"""Two processes sharing the real Redis: after process A's put or delete returns, process B's
get comes to see the new state, although B holds in-process (L0) copies of every key. How
long that takes is measured and printed, not judged: a latency bound is a benchmark's claim
(the wait is bounded only so that a lost invalidation fails instead of hanging).

B is a child process with its own Memory (L0 host pools above SESSION on Redis). It reads
1,000 array items twice, so each is promoted into its L0 pools, and then answers A's probes:
for each key A writes (put, or delete for every tenth) and then names with the time its call
returned, B reads the key until it sees the new state and reports how long after the return
that was. A control run with tracking switched off shows B keeps serving stale copies, so the
measurement can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import Memory, Tier

from .conftest import drop_prefix

redis_asyncio = pytest.importorskip("redis.asyncio")

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KEYS = 1000

_READER = r"""
import asyncio, json, sys, time
import numpy as np
from sophia_memory import Memory, Tier

async def main(url, path, n, patience):
    off = {t: None for t in (Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR, Tier.WORKFLOW)}
    async with Memory.open(path=path, tiers={Tier.GPU: "host://", Tier.SESSION: url, **off}) as mem:
        core = mem._core
        tracking = await core.by_tier[Tier.SESSION].backend.wait_tracking(5.0)
        keys = [f"k{i}" for i in range(n)]
        for _ in range(2):  # the second hit promotes an array into the L0 pools
            for k in keys:
                assert (await mem.get(k))[0] == 0
            await mem.flush()
        gpu = core.by_tier[Tier.GPU]
        copies = sum(1 for k in keys if (r := gpu.peek(k)) is not None and not r.home)
        print(json.dumps({"ready": True, "tracking": tracking, "copies": copies}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return
            key, expected, returned = json.loads(line)
            first_stale = None
            while True:
                value = await mem.get(key)
                seen = time.monotonic()
                fresh = value is None if expected is None else bool(
                    value is not None and value[0] == expected)
                if first_stale is None:
                    first_stale = not fresh
                if fresh or seen - returned > patience:
                    break
                await asyncio.sleep(0)  # let the loop read the tracking link
            print(json.dumps({"lag": seen - returned, "fresh": fresh,
                              "first_read_stale": first_stale}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


async def _reachable() -> None:
    client = redis_asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    finally:
        await client.aclose()


def _url(prefix: str, tracking: bool) -> str:
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix={prefix}&tracking={int(tracking)}"


async def _run(tmp_path: Path, n: int, tracking: bool, patience: float) -> list[dict[str, Any]]:
    """A writes, B (a child process) reads; B's reports, one per key."""
    await _reachable()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    off = {t: None for t in (Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR, Tier.WORKFLOW)}
    keys = [f"k{i}" for i in range(n)]
    async with Memory.open(path=str(tmp_path / "a.db"),
                           tiers={Tier.SESSION: _url(prefix, tracking), **off}) as a:
        await a.put_many({k: np.zeros(4, dtype=np.int64) for k in keys}, tier=Tier.SESSION)
        reader = subprocess.Popen(  # noqa: ASYNC220 - its pipes are read in the executor
            [sys.executable, "-c", _READER, _url(prefix, tracking), str(tmp_path / "b.db"),
             str(n), str(patience)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert reader.stdin is not None and reader.stdout is not None
        loop = asyncio.get_running_loop()
        reports = []
        try:
            ready = json.loads(await loop.run_in_executor(None, reader.stdout.readline))
            assert ready == {"ready": True, "tracking": tracking, "copies": n}
            for i, key in enumerate(keys):
                if i % 10 == 0:
                    await a.delete(key)
                    expected = None
                else:
                    await a.put(key, np.full(4, i, dtype=np.int64), tier=Tier.SESSION)
                    expected = i
                returned = time.monotonic()
                reader.stdin.write(json.dumps([key, expected, returned]) + "\n")
                reader.stdin.flush()
                reports.append(json.loads(
                    await loop.run_in_executor(None, reader.stdout.readline)))
        finally:
            reader.stdin.close()
            assert await loop.run_in_executor(None, reader.wait, 30) == 0
            client = redis_asyncio.Redis.from_url(REDIS_URL)
            await drop_prefix(client, prefix)
            await client.aclose()
    return reports


async def test_other_process_sees_put_and_delete(tmp_path: Path) -> None:
    reports = await _run(tmp_path, KEYS, tracking=True, patience=10.0)  # a hang guard
    lags = sorted(r["lag"] for r in reports)
    q = statistics.quantiles(lags, n=100)
    stale_first = sum(r["first_read_stale"] for r in reports)
    print(f"\ncoherence over {len(lags)} keys (ms): min {lags[0] * 1e3:.3f} "
          f"p50 {q[49] * 1e3:.3f} p90 {q[89] * 1e3:.3f} p99 {q[98] * 1e3:.3f} "
          f"max {lags[-1] * 1e3:.3f}; B's first read was stale for {stale_first}")
    assert all(r["fresh"] for r in reports)


async def test_without_tracking_the_other_process_keeps_stale_copies(tmp_path: Path) -> None:
    """The control: the same run with tracking off leaves B serving its old L0 copies."""
    reports = await _run(tmp_path, 10, tracking=False, patience=0.2)
    assert not any(r["fresh"] for r in reports)


async def test_lost_tracking_link_drops_copies_and_comes_back(tmp_path: Path) -> None:
    """The tracking connection is killed: this process drops its copies (it cannot know what
    changed meanwhile), re-opens the link by itself, and later writes invalidate again."""
    await _reachable()
    prefix = f"smtest:{uuid.uuid4().hex}:"
    off = {t: None for t in (Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR, Tier.WORKFLOW)}
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    async with Memory.open(path=str(tmp_path / "m.db"),
                           tiers={Tier.SESSION: _url(prefix, True), **off}) as mem:
        core = mem._core
        backend = core.by_tier[Tier.SESSION].backend
        gpu = core.by_tier[Tier.GPU]
        assert await backend.wait_tracking(5.0)
        await mem.put_many({f"k{i}": np.zeros(2) for i in range(5)}, tier=Tier.SESSION)
        for _ in range(2):
            for i in range(5):
                await mem.get(f"k{i}")
            await mem.flush()
        assert all(gpu.peek(f"k{i}") is not None for i in range(5))
        tracker = backend._tracker
        await client.client_kill_filter(_id=tracker.client_id)
        reconnects = tracker.reconnects
        deadline = time.monotonic() + 5.0
        while tracker.live.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)  # the loss is seen on the link's next read
        assert not tracker.live.is_set() or tracker.reconnects > reconnects
        await mem.flush()
        assert all(gpu.peek(f"k{i}") is None for i in range(5))
        assert await backend.wait_tracking(5.0)
        assert tracker.reconnects == reconnects + 1
        for _ in range(2):
            await mem.get("k0")
            await mem.flush()
        assert gpu.peek("k0") is not None
        await client.set(prefix + "k0", b"written by another client")
        deadline = time.monotonic() + 1.0
        while gpu.peek("k0") is not None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)
        assert gpu.peek("k0") is None
        assert backend.stats()["tracking"] is True
    await drop_prefix(client, prefix)
    await client.aclose()
