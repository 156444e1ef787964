"""Failure handling (DESIGN.md §3 "Failures") with a fake remote backend as Tier.CORTEX.

The fake can be switched to fail (raise BackendError) or to hang (the library's own call
timeout must fire). Reads fall through a failing tier; a put whose home is the failing tier
raises TierUnavailableError; repeated failures open the circuit breaker, after which the tier
is not called at all until ``breaker_reset`` seconds have passed on the memory's clock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import BackendError, ManualClock, Memory, Record, Tier, TierUnavailableError
from sophia_memory.backends import Backend, BackendURL, Remote, register
from sophia_memory.engine.handles import InProcessTier

THRESHOLD = 3
RESET = 10.0
TIMEOUT = 0.05  # seconds of real time the library waits on a hanging call


class FlakyBackend(Backend):
    """A dict-backed remote backend that can be told to fail or hang on every call."""

    scheme = "flaky"
    call_timeout = TIMEOUT  # marks it Remote: the front adds this timeout and a breaker

    def __init__(self) -> None:
        self.data: dict[str, Record] = {}
        self.mode = "ok"  # "ok" | "fail" | "hang"
        self.calls: Counter[str] = Counter()
        self.never = asyncio.Event()

    async def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if self.mode == "fail":
            raise BackendError(f"flaky backend: {method} failed")
        if self.mode == "hang":
            await self.never.wait()  # never set: only the caller's timeout ends this

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    async def get(self, key: str, now: float) -> Record | None:
        await self._enter("get")
        return self.data.get(key)

    async def get_many(self, keys: Any, now: float) -> dict[str, Record]:
        await self._enter("get_many")
        return {k: self.data[k] for k in keys if k in self.data}

    async def put(self, key: str, record: Record) -> None:
        await self._enter("put")
        self.data[key] = record

    async def put_many(self, records: Any) -> None:
        await self._enter("put_many")
        self.data.update(records)

    async def delete(self, key: str, now: float) -> bool:
        await self._enter("delete")
        rec = self.data.pop(key, None)
        return rec is not None and not rec.expired(now)

    async def delete_many(self, keys: Any, now: float) -> int:
        await self._enter("delete_many")
        return sum([await self.delete(k, now) for k in keys])

    async def keys(self, prefix: str, now: float) -> list[str]:
        await self._enter("keys")
        return [k for k, r in self.data.items() if k.startswith(prefix) and not r.expired(now)]

    async def close(self) -> None:
        self.data.clear()


@pytest.fixture
def flaky() -> FlakyBackend:
    backend = FlakyBackend()

    def factory(url: BackendURL, tier: Tier, config: Any) -> Backend:
        return backend

    register("flaky", factory)
    return backend


@pytest.fixture
async def fmem(tmp_path: Path, clock: ManualClock, flaky: FlakyBackend) -> AsyncIterator[Memory]:
    async with Memory.open(path=str(tmp_path / "f.db"), clock=clock, host_pool_memory="4MiB",
                           tiers={Tier.CORTEX: "flaky://"}, call_timeout=TIMEOUT,
                           breaker_threshold=THRESHOLD, breaker_reset=RESET,
                           promote=False) as m:
        yield m


def breaker(mem: Memory) -> str:
    state: str = mem.stats()["tiers"]["CORTEX"]["breaker"]
    return state


def test_the_fake_is_treated_as_remote(flaky: FlakyBackend) -> None:
    assert isinstance(flaky, Remote)


async def test_healthy_fake_serves_its_tier(fmem: Memory, flaky: FlakyBackend) -> None:
    await fmem.put("k", {"v": 1}, tier=Tier.CORTEX)
    assert "k" in flaky.data
    entry = await fmem.get_entry("k")
    assert entry is not None and entry.tier is Tier.CORTEX and entry.value == {"v": 1}
    assert breaker(fmem) == "closed"


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_reads_fall_through_a_failing_tier(fmem: Memory, flaky: FlakyBackend,
                                                 mode: str) -> None:
    await fmem.put("k", "from persistent", tier=Tier.PERSISTENT)
    await fmem.put_many({"a": 1, "b": 2}, tier=Tier.PERSISTENT)
    flaky.mode = mode
    before = flaky.total_calls
    assert await fmem.get("k") == "from persistent"
    entry = await fmem.get_entry("k")
    assert entry is not None and entry.tier is Tier.PERSISTENT
    assert await fmem.get_many(["a", "b", "missing"]) == {"a": 1, "b": 2}
    assert await fmem.exists("b")
    assert await fmem.get("missing", "default") == "default"
    assert flaky.total_calls > before  # the failing tier really was asked ...
    assert fmem.stats()["tiers"]["CORTEX"]["errors"] >= 1  # ... and its failures counted


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_put_whose_home_is_failing_raises_and_stores_nothing(
        fmem: Memory, flaky: FlakyBackend, mode: str) -> None:
    flaky.mode = mode
    with pytest.raises(TierUnavailableError) as info:
        await fmem.put("k", "v", tier=Tier.CORTEX)
    assert info.value.tier is Tier.CORTEX
    if mode == "hang":
        assert "timed out" in str(info.value)
    with pytest.raises(TierUnavailableError):
        await fmem.put_many({"a": 1, "b": 2}, tier=Tier.CORTEX)
    flaky.mode = "ok"
    assert flaky.data == {}
    assert await fmem.get("k") is None
    assert await fmem.get_many(["a", "b"]) == {}


async def test_hanging_call_is_cut_off_by_the_call_timeout(fmem: Memory,
                                                           flaky: FlakyBackend) -> None:
    flaky.mode = "hang"
    with pytest.raises(TierUnavailableError, match="timed out"):
        await asyncio.wait_for(fmem.put("k", "v", tier=Tier.CORTEX), timeout=30)
    assert flaky.calls["put"] == 1


async def test_put_to_a_healthy_tier_below_is_not_blocked_by_reads(
        fmem: Memory, flaky: FlakyBackend) -> None:
    """A tier *above* the home being down does not stop reads of the home's value."""
    await fmem.put("k", "v", tier=Tier.WORKFLOW)
    flaky.mode = "fail"
    assert await fmem.get("k") == "v"


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_breaker_opens_after_threshold_failures_and_stops_calls(
        fmem: Memory, flaky: FlakyBackend, mode: str) -> None:
    await fmem.put("k", "v", tier=Tier.PERSISTENT)  # invalidates CORTEX: one healthy call
    flaky.calls.clear()
    flaky.mode = mode
    for i in range(THRESHOLD):
        assert breaker(fmem) == "closed", f"opened after {i} failures"
        assert await fmem.get("k") == "v"
    assert breaker(fmem) == "open"
    assert flaky.total_calls == THRESHOLD

    # Open: the tier is not called at all; reads still answer from below, puts refuse.
    for _ in range(5):
        assert await fmem.get("k") == "v"
        assert await fmem.get_many(["k"]) == {"k": "v"}
        assert await fmem.exists("k")
    with pytest.raises(TierUnavailableError, match="breaker"):
        await fmem.put("x", 1, tier=Tier.CORTEX)
    assert flaky.total_calls == THRESHOLD
    assert breaker(fmem) == "open"


async def test_breaker_half_opens_after_reset_and_a_success_closes_it(
        fmem: Memory, flaky: FlakyBackend, clock: ManualClock) -> None:
    await fmem.put("k", "v", tier=Tier.PERSISTENT)
    flaky.mode = "fail"
    for _ in range(THRESHOLD):
        await fmem.get("k")
    assert breaker(fmem) == "open"
    calls = flaky.total_calls

    clock.advance(RESET - 0.5)
    assert breaker(fmem) == "open"
    assert await fmem.get("k") == "v"
    assert flaky.total_calls == calls  # still not called

    clock.advance(0.5)
    assert breaker(fmem) == "half-open"
    flaky.mode = "ok"
    assert await fmem.get("k") == "v"  # the trial call goes through and succeeds
    assert flaky.total_calls == calls + 1
    assert breaker(fmem) == "closed"

    await fmem.put("c", "cortex", tier=Tier.CORTEX)  # fully usable again
    assert flaky.data.keys() == {"c"}
    assert await fmem.get("c") == "cortex"


async def test_failed_trial_reopens_the_breaker(fmem: Memory, flaky: FlakyBackend,
                                                clock: ManualClock) -> None:
    flaky.mode = "fail"
    for _ in range(THRESHOLD):
        await fmem.get("missing")
    assert breaker(fmem) == "open"
    calls = flaky.total_calls

    clock.advance(RESET)
    assert breaker(fmem) == "half-open"
    assert await fmem.get("missing") is None  # one trial, fails
    assert flaky.total_calls == calls + 1
    assert breaker(fmem) == "open"
    assert await fmem.get("missing") is None  # open again: no call
    assert flaky.total_calls == calls + 1

    clock.advance(RESET)
    flaky.mode = "ok"
    await fmem.get("missing")
    assert breaker(fmem) == "closed"


async def test_successes_reset_the_failure_count(fmem: Memory, flaky: FlakyBackend) -> None:
    for _ in range(3):
        flaky.mode = "fail"
        for _ in range(THRESHOLD - 1):
            await fmem.get("missing")
        flaky.mode = "ok"
        await fmem.get("missing")
    assert breaker(fmem) == "closed"  # never THRESHOLD failures in a row


async def test_delete_while_a_tier_fails_reports_the_failure(fmem: Memory,
                                                             flaky: FlakyBackend) -> None:
    await fmem.put("k", "cortex copy", tier=Tier.CORTEX)
    await fmem.put("k", "persistent", tier=Tier.PERSISTENT)
    flaky.mode = "fail"
    with pytest.raises(TierUnavailableError):  # a copy may survive: not silently "done"
        await fmem.delete("k")
    flaky.mode = "ok"
    assert await fmem.keys(Tier.PERSISTENT) == []  # the healthy tiers did delete it


async def test_stats_report_errors_and_breaker_per_tier(fmem: Memory,
                                                        flaky: FlakyBackend) -> None:
    flaky.mode = "fail"
    for _ in range(THRESHOLD):
        await fmem.get("missing")
    tiers = fmem.stats()["tiers"]
    assert tiers["CORTEX"]["errors"] == THRESHOLD
    assert tiers["CORTEX"]["breaker"] == "open"
    assert tiers["PERSISTENT"]["errors"] == 0
    assert tiers["PERSISTENT"]["breaker"] == "closed"


@pytest.mark.parametrize(("failing", "mode"), [("above", "fail"), ("above", "breaker-open"),
                                             ("home", "fail")])
async def test_put_below_a_failing_tier_either_succeeds_or_stores_nothing(
        fmem: Memory, flaky: FlakyBackend, failing: str, mode: str) -> None:
    """Both outcomes, each forced: a failing tier *above* the home (CORTEX) cannot stop the
    put (its copy is marked stale instead); a failing *home* (PERSISTENT, made to fail
    here) makes the put raise with nothing stored."""
    cortex = fmem._core.by_tier[Tier.CORTEX]
    assert not isinstance(cortex, InProcessTier)
    if failing == "above":
        flaky.mode = "fail"
        if mode == "breaker-open":
            for _ in range(THRESHOLD):
                await fmem.get("missing")
            assert breaker(fmem) == "open"
        calls = flaky.total_calls
        await fmem.put("k", "v", tier=Tier.PERSISTENT)
        assert await fmem.keys(Tier.PERSISTENT) == ["k"]
        assert "k" in cortex.stale  # skipped on reads until CORTEX answers again
        assert await fmem.get("k") == "v"
        if mode == "breaker-open":
            assert flaky.total_calls == calls  # the open breaker kept every call away
        return
    home = fmem._core.by_tier[Tier.PERSISTENT].backend

    async def refuse(key: str, record: Record) -> None:
        raise BackendError("persistent tier: write failed")

    home.put = refuse  # type: ignore[method-assign]
    with pytest.raises(TierUnavailableError, match="write failed"):
        await fmem.put("k", "v", tier=Tier.PERSISTENT)
    assert await fmem.keys(Tier.PERSISTENT) == [], "put raised but stored the value"
    assert "k" not in flaky.data
    assert await fmem.get("k") is None



async def test_stale_copy_above_is_never_served_after_recovery(
        fmem: Memory, flaky: FlakyBackend, clock: ManualClock) -> None:
    """A put whose upper-tier copy could not be invalidated succeeds; the stale copy is
    skipped on reads and deleted once the tier answers again."""
    await fmem.put("k", "old", tier=Tier.CORTEX)
    flaky.mode = "fail"
    await fmem.put("k", "new", tier=Tier.PERSISTENT)  # home written: no error
    assert await fmem.get("k") == "new"
    flaky.mode = "ok"
    clock.advance(RESET)
    assert await fmem.get("k") == "new"  # CORTEX still holds "old": it must be skipped
    assert await fmem.get_many(["k"]) == {"k": "new"}
    await fmem.flush()
    assert "k" not in flaky.data  # the missed invalidation was replayed
    assert await fmem.get("k") == "new"


async def test_failed_put_that_lands_later_leaves_no_copy_above(
        tmp_path: Path, clock: ManualClock, flaky: FlakyBackend) -> None:
    """A remote put can report failure (a timeout) and still commit: the in-process copy of
    the old value above it must not outlive the failed call."""
    async with Memory.open(path=str(tmp_path / "c.db"), clock=clock,
                           tiers={Tier.CORTEX: "flaky://"}) as mem:
        await mem.put("k", "old", tier=Tier.CORTEX)
        assert await mem.get("k") == "old"
        await mem.flush()  # promoted: SESSION holds a copy
        assert (await mem.get_entry("k")).tier is Tier.SESSION  # type: ignore[union-attr]

        async def lands_then_fails(key: str, record: Record) -> None:
            flaky.data[key] = record
            raise BackendError("flaky backend: reply lost after the write landed")

        flaky.put = lands_then_fails  # type: ignore[method-assign]
        with pytest.raises(TierUnavailableError):
            await mem.put("k", "new", tier=Tier.CORTEX)
        assert await mem.get("k") == "new"


async def test_a_timed_out_call_leaves_its_task_usable(fmem: Memory,
                                                       flaky: FlakyBackend) -> None:
    """The watchdog's cancel is withdrawn once it became a timeout: the caller's next awaits
    run normally."""
    flaky.mode = "hang"
    with pytest.raises(TierUnavailableError, match="timed out"):
        await fmem.put("k", "v", tier=Tier.CORTEX)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # would raise CancelledError if a cancel were still pending
    flaky.mode = "ok"
    await fmem.put("k2", "v", tier=Tier.PERSISTENT)
    assert await fmem.get("k2") == "v"


async def test_cancelling_a_caller_is_not_turned_into_a_timeout(fmem: Memory,
                                                                flaky: FlakyBackend) -> None:
    flaky.mode = "hang"
    call = asyncio.ensure_future(fmem.put("k", "v", tier=Tier.CORTEX))
    for _ in range(3):
        await asyncio.sleep(0)  # let it reach the hanging backend
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert fmem.stats()["tiers"]["CORTEX"]["errors"] == 0
