"""What ``engine/core.py`` (the engine) and ``engine/handles.py`` (the tier handles) promise,
pinned where the mutation run found it untested.

Backends: ``memory://``, ``gated://`` (:mod:`sophia_memory.testing`: a slow tier whose calls a
test can hold, fail and count) and :class:`PlainBackend` below, a remote backend with no
optional ability (it cannot purge, has no deadline) that raises what a test tells it to.
Interleavings are made with gate holds and bounded event-loop turns, never the real clock.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sophia_memory import (
    ConfigError,
    InvalidArgumentError,
    ManualClock,
    Memory,
    Record,
    SophiaMemoryError,
    Tier,
    TierUnavailableError,
)
from sophia_memory.backends import Backend, BackendURL, register
from sophia_memory.engine import InProcessTier
from sophia_memory.engine.ordering import STRIPES, KeyOrder
from sophia_memory.testing import SharedGatedBackend, gate, gated_data, reset_gated

from .conftest import apart

#: More keys than two of ``clear``'s locked steps hold (1000 keys each).
MANY = 2001


class PlainBackend(Backend):
    """A dict of records behind a remote tier's guard, with no optional abilities; a call of
    a method named in ``fail`` raises what its factory makes."""

    scheme = "plainmut"

    def __init__(self, name: str, close_error: BaseException | None = None) -> None:
        self.name = name
        self.data: dict[str, Record] = {}
        self.fail: dict[str, Callable[[], BaseException]] = {}
        self.close_error = close_error
        self.closed = False

    def _enter(self, method: str) -> None:
        make = self.fail.get(method)
        if make is not None:
            raise make()

    async def get(self, key: str, now: float) -> Record | None:
        """The live record (expired ones are skipped here, as a server expiring keys does)."""
        self._enter("get")
        rec = self.data.get(key)
        return None if rec is None or rec.expired(now) else rec

    async def put(self, key: str, record: Record) -> None:
        self._enter("put")
        self.data[key] = record

    async def delete(self, key: str, now: float) -> bool:
        self._enter("delete")
        rec = self.data.pop(key, None)
        return rec is not None and not rec.expired(now)

    async def keys(self, prefix: str, now: float) -> list[str]:
        self._enter("keys")
        return [k for k, r in self.data.items() if k.startswith(prefix) and not r.expired(now)]

    async def close(self) -> None:
        if self.close_error is not None:
            raise self.close_error
        self.closed = True

    def describe(self) -> str:
        return f"plain test store {self.name!r}"


class BarePlainBackend(PlainBackend):
    """A plain backend that can also read live payloads in bulk, without their records
    (:class:`~sophia_memory.backends.BarePayloads`, as the Redis backend can)."""

    scheme = "barepmut"

    async def get_payloads(self, keys: list[str], now: float) -> dict[str, Any]:
        self._enter("get_payloads")
        return {k: r.payload for k in keys
                if (r := self.data.get(k)) is not None and not r.expired(now)}


class PurgingPlainBackend(PlainBackend):
    """A plain backend that can purge expired records; counts its purges."""

    scheme = "purgepmut"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.purges = 0

    async def purge_expired(self, now: float) -> int:
        self.purges += 1
        self._enter("purge_expired")
        dead = [k for k, r in self.data.items() if r.expired(now)]
        for k in dead:
            del self.data[k]
        return len(dead)


#: The plain backends opened, by name (the URL's host part).
PLAIN: dict[str, PlainBackend] = {}
#: What the close of the plain backend of a name raises (set before it is opened).
CLOSE_ERRORS: dict[str, BaseException] = {}


def _open_plain(url: BackendURL, tier: Tier, config: Any) -> Backend:
    backend = PLAIN[url.netloc] = PlainBackend(url.netloc, CLOSE_ERRORS.get(url.netloc))
    return backend


def _open_bare(url: BackendURL, tier: Tier, config: Any) -> Backend:
    backend = PLAIN[url.netloc] = BarePlainBackend(url.netloc)
    return backend


def _open_purging(url: BackendURL, tier: Tier, config: Any) -> Backend:
    backend = PLAIN[url.netloc] = PurgingPlainBackend(url.netloc)
    return backend


register("plainmut", _open_plain)
register("purgepmut", _open_purging)
register("barepmut", _open_bare)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    reset_gated()
    PLAIN.clear()
    CLOSE_ERRORS.clear()
    yield
    reset_gated()
    PLAIN.clear()
    CLOSE_ERRORS.clear()


def tiers(**urls: str) -> dict[Tier, str | None]:
    """Every tier off but those named (``SESSION="memory://"``)."""
    chosen: dict[Tier, str | None] = dict.fromkeys(Tier)
    chosen.update({Tier[name]: url for name, url in urls.items()})
    return chosen


@asynccontextmanager
async def opened(clock: ManualClock, **options: Any) -> AsyncIterator[Memory]:
    """A memory of the given options; gates are released before it closes."""
    options.setdefault("purge_interval", 0)
    mem = Memory.open(clock=clock, **options)
    try:
        yield mem
    finally:
        for name in ("mw", "ml", "mr", "mp", "mc", "mt", "ms", "mb", "md", "pg", "pf"):
            gate(name).release_all()
        await mem.close()


async def settle(n: int = 50) -> None:
    """Let every runnable task run (a bounded number of event-loop turns; no clock)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def tier_of(mem: Memory, key: str) -> Tier | None:
    """The tier a read finds ``key`` in, without promoting it."""
    entry = await mem.get_entry(key, promote=False)
    return None if entry is None else entry.tier


def shared(mem: Memory) -> SharedGatedBackend:
    backend = mem._core.by_tier[Tier.CORTEX].backend
    assert isinstance(backend, SharedGatedBackend)
    return backend


# -- opening ------------------------------------------------------------------------------------


def test_a_refused_configuration_closes_every_backend_it_had_opened(
        caplog: pytest.LogCaptureFixture) -> None:
    """A tier refused after others were opened: each opened backend is closed, and one whose
    close fails is logged (DEBUG) and does not stop the others from being closed."""
    CLOSE_ERRORS["mb"] = RuntimeError("socket already gone")
    caplog.set_level(logging.DEBUG, logger="sophia_memory")
    with pytest.raises(ConfigError, match="cannot sit below a slower one"):
        Memory.open(clock=ManualClock(), tiers=tiers(
            SESSION="plainmut://ma", CORTEX="plainmut://mb", PERSISTENT="plainmut://mc",
            VECTOR="memory://"))
    assert PLAIN["ma"].closed
    assert not PLAIN["mb"].closed
    assert PLAIN["mc"].closed
    assert "closing plain test store 'mb' failed: socket already gone" in caplog.messages


# -- invalidations from other processes ---------------------------------------------------------


async def test_a_write_reported_elsewhere_does_not_stop_promotions_of_other_keys(
        clock: ManualClock) -> None:
    """A report that another process wrote key ``b`` moves ``b``'s generation only: a read
    of ``a`` in flight meanwhile stands as it was read (CORTEX is read once, one hit) and
    its hit is promoted into SESSION."""
    a, b = apart(2)
    async with opened(clock, tiers=tiers(SESSION="memory://",
                                         CORTEX="gated://mw?shared=1")) as mem:
        await mem.put(a, "va", tier=Tier.CORTEX)
        g = gate("mw")
        g.hold("get", a, "after")
        read = asyncio.ensure_future(mem.get(a))
        assert await g.wait_blocked("get", a, "after", unless=read)
        shared(mem).report([b])
        g.release("get", a, "after")
        assert await read == "va"
        assert list(g.log).count(("get", (a,))) == 1
        assert mem.stats()["tiers"]["CORTEX"]["hits"] == 1
        await mem.flush()
        assert await tier_of(mem, a) is Tier.SESSION


async def test_a_lost_link_drops_in_process_copies_that_have_an_expiry(
        clock: ManualClock) -> None:
    """A report of None (anything may have changed) drops every in-process copy, one with
    a TTL too; the next read goes to the shared tier."""
    async with opened(clock, tiers=tiers(SESSION="memory://",
                                         CORTEX="gated://ml?shared=1")) as mem:
        await mem.put("k", "v1", tier=Tier.CORTEX, ttl=60)
        assert await mem.get("k") == "v1"
        await mem.flush()
        assert await tier_of(mem, "k") is Tier.SESSION
        shared(mem).report(None)
        await mem.flush()
        assert await tier_of(mem, "k") is Tier.CORTEX


async def test_background_work_leaves_no_task_and_no_callback_error(
        clock: ManualClock) -> None:
    """Work the engine runs in the background (here: dropping copies after a lost link)
    is forgotten once done, and finishing it reports no error to the event loop."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with opened(clock, tiers=tiers(SESSION="memory://",
                                             CORTEX="gated://ml?shared=1")) as mem:
            await mem.put("k", "v1", tier=Tier.CORTEX)
            await mem.get("k")
            await mem.flush()
            shared(mem).report(None)
            await mem.flush()
            await settle()
            assert not mem._core.tasks
            assert reported == []
    finally:
        loop.set_exception_handler(None)


# -- recovery of a tier that missed invalidations -----------------------------------------------


async def test_calls_that_succeed_while_a_replay_is_pending_start_no_second_one(
        clock: ManualClock) -> None:
    """A tier that missed deletes replays them in one background task at a time: calls that
    succeed before the pending replay has run start no other; when that replay fails, the
    keys stay skipped until a later successful call replays them again."""
    async with opened(clock, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://mr")) as mem:
        await mem.put_many({"a": 1, "b": 2}, tier=Tier.CORTEX)
        g = gate("mr")
        g.fail("get_many")
        with pytest.raises(TierUnavailableError):
            await mem.delete_many(["a", "b"])  # CORTEX missed it: a and b are stale there
        g.fail("get_many")  # the replay's first call fails as well
        assert await mem.get("x") is None  # succeeds: the replay is started
        assert await mem.get("y") is None  # succeeds before the replay ran
        await settle()
        assert len(g.failed) == 2  # the delete's call and one replay's
        assert set(gated_data("mr")) == {"a", "b"}
        assert await mem.get("a") is None  # skipped: stale
        assert await mem.get("z") is None  # succeeds: the replay is started again
        await settle()
        assert gated_data("mr") == {}
        assert len(g.failed) == 2


# -- puts done without suspending ---------------------------------------------------------------


async def test_a_put_to_an_in_process_home_is_stored_once(clock: ManualClock) -> None:
    """A put to SESSION done without suspending is not written a second time."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="gated://mp")) as mem:
        await mem.put("k", 1)
        assert mem.stats()["tiers"]["SESSION"]["puts"] == 1
        assert await mem.get("k") == 1


async def test_an_in_process_put_starts_the_background_purge(clock: ManualClock) -> None:
    """The first put, an in-process one done without suspending, starts the periodic purge
    of a remote tier that can purge (``purge_interval`` > 0)."""
    async with opened(clock, purge_interval=1e-9,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://mp")) as mem:
        g = gate("mp")
        await settle()
        assert ("purge_expired", ()) not in g.log  # nothing started it yet
        await mem.put("k", 1)
        await settle()
        assert ("purge_expired", ()) in g.log


async def test_a_failed_background_purge_is_logged_and_the_purges_go_on(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A background purge that fails is logged as a warning with the error, and the
    periodic purge goes on: the next one removes the expired records."""
    caplog.set_level(logging.WARNING, logger="sophia_memory")
    async with opened(clock, purge_interval=1e-9,
                      tiers=tiers(SESSION="memory://", CORTEX="purgepmut://bg")) as mem:
        await mem.put("x", 1, tier=Tier.CORTEX, ttl=10)  # starts the purge
        backend = PLAIN["bg"]
        clock.advance(20)
        backend.fail["purge_expired"] = lambda: ValueError("no such column: expires")
        await settle()
        assert backend.purges >= 1 and "x" in backend.data
        del backend.fail["purge_expired"]
        await settle()
        assert backend.purges >= 2 and backend.data == {}
        assert ("background purge failed: "
                f"{Tier.CORTEX} refused the request: no such column: expires"
                in caplog.messages)


async def test_a_put_to_a_remote_home_starts_the_background_purge(clock: ManualClock) -> None:
    """The first put, to a remote home, starts the periodic purge of a remote tier that can
    purge (``purge_interval`` > 0)."""
    async with opened(clock, purge_interval=1e-9,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://mp")) as mem:
        g = gate("mp")
        await mem.put("c", 2, tier=Tier.CORTEX)
        await settle()
        assert ("purge_expired", ()) in g.log


async def test_no_background_purge_when_it_is_switched_off(clock: ManualClock) -> None:
    """``purge_interval=0``: puts start no background purge."""
    async with opened(clock, purge_interval=0,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://mp")) as mem:
        await mem.put("k", 1)
        await mem.put("c", 2, tier=Tier.CORTEX)
        await settle()
        assert ("purge_expired", ()) not in gate("mp").log


# -- clear ----------------------------------------------------------------------------------------


async def test_clearing_one_tier_lists_no_other(clock: ManualClock) -> None:
    """``clear(tier=SESSION)`` lists SESSION's keys alone: another tier that cannot list its
    keys neither fails it nor loses its items."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="gated://mc")) as mem:
        await mem.put("s", 1)
        await mem.put("c", 2, tier=Tier.CORTEX)
        gate("mc").fail("keys")
        assert await mem.clear(tier=Tier.SESSION) == 1
        assert gate("mc").failed == []
        assert await mem.get("s") is None
        assert await mem.get("c") == 2


async def test_clear_removes_an_item_in_transit(clock: ManualClock) -> None:
    """``clear()`` removes an item evicted from SESSION that is still on its way to CORTEX:
    it is counted and does not land below afterwards."""
    a, b = apart(2)
    async with opened(clock, promote=False, tiers=tiers(
            SESSION="memory://?max_items=1", CORTEX="gated://mt")) as mem:
        g = gate("mt")
        g.hold("put", a, "before")
        await mem.put(a, "A")
        await mem.put(b, "B")  # evicts a: in transit to CORTEX
        assert await g.wait_blocked("put", a, "before")
        clearing = asyncio.ensure_future(mem.clear())
        await settle()
        g.release("put", a, "before")
        assert await clearing == 2
        await mem.flush()
        assert gated_data("mt") == {}
        assert await mem.get(a) is None
        assert await mem.get(b) is None


async def test_clearing_a_namespace_leaves_another_namespaces_item_in_transit(
        clock: ManualClock) -> None:
    """``clear(namespace=)`` leaves alone an item of another namespace in transit."""
    async with opened(clock, promote=False, tiers=tiers(
            SESSION="memory://?max_items=1", CORTEX="gated://mt")) as mem:
        one, two = mem.namespace("n1"), mem.namespace("n2")
        g = gate("mt")
        g.hold("put", None, "before")
        await two.put("a", "A")
        await one.put("b", "B")  # evicts n2's a: in transit to CORTEX
        assert await g.wait_blocked("put", None, "before")
        clearing = asyncio.ensure_future(mem.clear(namespace="n1"))
        await settle()
        g.release("put", None, "before")
        assert await clearing == 1
        await mem.flush()
        assert await two.get("a") == "A"
        assert await one.get("b") is None


async def test_clear_and_the_copies_spills_made(clock: ManualClock) -> None:
    """Clearing SESSION for one namespace removes the copies its items' spills made of that
    namespace only; ``clear()`` then removes the spilled copy of the other namespace."""
    async with opened(clock, promote=False, tiers=tiers(
            SESSION="memory://?max_items=1", CORTEX="gated://ms")) as mem:
        one, two = mem.namespace("n1"), mem.namespace("n2")
        await two.put("a", "A")
        await one.put("b", "B")  # n2's a spills to CORTEX
        await mem.flush()
        assert await tier_of(two, "a") is Tier.CORTEX
        assert await mem.clear(tier=Tier.SESSION, namespace="n1") == 1
        assert await two.get("a") == "A"
        assert await mem.clear() == 1
        assert await two.get("a") is None
        assert gated_data("ms") == {}


@pytest.mark.parametrize("tier", [None, Tier.CORTEX])
async def test_clear_of_more_keys_than_two_batches(clock: ManualClock,
                                                  tier: Tier | None) -> None:
    """``clear`` removes and counts every key when there are more than two batches of them,
    with one read of the remote tier per batch of 1000 keys."""
    async with opened(clock, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://mb")) as mem:
        await mem.put_many({f"k{i}": i for i in range(MANY)}, tier=Tier.CORTEX)
        g = gate("mb")
        before = len(g.log)
        assert await mem.clear(tier=tier) == MANY
        assert gated_data("mb") == {}
        reads = [m for m, _ in list(g.log)[before:] if m == "get_many"]
        assert len(reads) == 3


async def test_clear_raises_the_error_of_a_tier_that_failed_while_deleting(
        clock: ManualClock) -> None:
    """A remote tier that fails while ``clear()`` deletes: the other tiers are cleared, the
    tier's keys are skipped on reads, and its error is raised."""
    async with opened(clock, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://md")) as mem:
        await mem.put("s", 1)
        await mem.put("c", 2, tier=Tier.CORTEX)
        gate("md").fail("get_many")
        with pytest.raises(TierUnavailableError) as err:
            await mem.clear()
        assert err.value.tier is Tier.CORTEX
        assert await mem.get("s") is None
        assert await mem.get("c") is None


async def test_clearing_a_tier_drops_the_copies_promotion_made_above_it(
        clock: ManualClock) -> None:
    """``clear(tier=CORTEX)`` also drops the copies promotion made of CORTEX's items in a
    faster remote tier, and leaves that tier's own items there."""
    async with opened(clock, tiers=tiers(SESSION="gated://mc", CORTEX="gated://md")) as mem:
        await mem.put("k", "from cortex", tier=Tier.CORTEX)
        await mem.put("h", "from cortex", tier=Tier.CORTEX)
        await mem.put("h", "session's own", tier=Tier.SESSION)
        assert await mem.get("k") == "from cortex"
        await mem.flush()
        assert await tier_of(mem, "k") is Tier.SESSION  # a promoted copy
        assert await mem.clear(tier=Tier.CORTEX) == 2
        assert await mem.get("k") is None
        assert await mem.get("h") == "session's own"
        assert set(gated_data("mc")) == {"h"}


# -- delete ---------------------------------------------------------------------------------------


async def test_delete_reads_the_remote_tier_at_the_memorys_time(clock: ManualClock) -> None:
    """A delete asks a remote tier for the keys' records at the memory's time, so a tier
    that skips expired records itself answers it: a live item is deleted and counted."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="plainmut://dl")) as mem:
        await mem.put("k", 1, tier=Tier.CORTEX, ttl=10)
        await mem.put("e", 2, tier=Tier.CORTEX, ttl=10)
        clock.advance(5)
        assert await mem.delete("k") is True
        assert "k" not in PLAIN["dl"].data
        clock.advance(10)
        assert await mem.delete("e") is False


async def test_a_read_that_asks_not_to_promote_copies_nothing(clock: ManualClock) -> None:
    """``get_entry(promote=False)`` leaves a hit in a slower tier where it is; the same read
    with promotion copies it into SESSION."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="gated://mp")) as mem:
        await mem.put("k", "v", tier=Tier.CORTEX)
        entry = await mem.get_entry("k", promote=False)
        assert entry is not None and entry.tier is Tier.CORTEX
        await mem.flush()
        assert await tier_of(mem, "k") is Tier.CORTEX
        await mem.get_entry("k")
        await mem.flush()
        assert await tier_of(mem, "k") is Tier.SESSION


async def test_a_read_asks_the_remote_tier_at_the_memorys_time(clock: ManualClock) -> None:
    """A read asks a remote tier for a key at the memory's time, so a tier that skips
    expired records itself answers it: live until the TTL ends, absent after."""
    async with opened(clock, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://rd")) as mem:
        await mem.put("k", "v", tier=Tier.CORTEX, ttl=10)
        clock.advance(5)
        assert await mem.get("k") == "v"
        assert await mem.get_many(["k"]) == {"k": "v"}
        clock.advance(10)
        assert await mem.get("k") is None
        assert await mem.get_many(["k"]) == {}


# -- purge ----------------------------------------------------------------------------------------


async def test_purge_goes_past_a_tier_that_cannot_purge(clock: ManualClock) -> None:
    """``purge_expired`` skips a tier that cannot purge and purges the tiers below it."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="plainmut://pn",
                                         PERSISTENT="gated://pg")) as mem:
        await mem.put("x", 1, tier=Tier.PERSISTENT, ttl=10)
        clock.advance(20)
        assert await mem.purge_expired() == 1
        assert gated_data("pg") == {}


async def test_a_failing_purge_is_logged_and_the_rest_purged(
        clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A tier whose purge fails is logged as a warning naming it and the error; the tiers
    below are purged all the same."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="gated://pf",
                                         PERSISTENT="gated://pg")) as mem:
        await mem.put("x", 1, tier=Tier.PERSISTENT, ttl=10)
        clock.advance(20)
        gate("pf").fail("purge_expired")
        caplog.set_level(logging.WARNING, logger="sophia_memory")
        assert await mem.purge_expired() == 1
        assert gated_data("pg") == {}
        reason = "gated call purge_expired() failed as the test asked"
        assert (f"purge on {Tier.CORTEX} failed: {Tier.CORTEX} is unavailable: {reason}"
                in caplog.messages)


# -- what a remote tier's failure means (handles) -----------------------------------------------


async def test_a_request_the_tier_refuses_fails_that_call_alone(clock: ManualClock) -> None:
    """A backend error that is the request's fault reaches the caller as
    InvalidArgumentError naming the tier; each is counted once under ``refused`` and never
    toward the breaker."""
    async with opened(clock, breaker_threshold=1,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://rq")) as mem:
        PLAIN["rq"].fail["put"] = lambda: ValueError("value has no shape")
        for n in (1, 2):
            with pytest.raises(InvalidArgumentError) as err:
                await mem.put("k", 1, tier=Tier.CORTEX)
            assert str(err.value) == f"{Tier.CORTEX} refused the request: value has no shape"
            assert isinstance(err.value.__cause__, ValueError)
            stats = mem.stats()["tiers"]["CORTEX"]
            assert (stats["refused"], stats["errors"], stats["breaker"]) == (n, 0, "closed")


async def test_an_open_breaker_refuses_calls_naming_the_tier(clock: ManualClock) -> None:
    """Once a tier's failures opened its breaker, a call is refused without reaching the
    tier, with TierUnavailableError naming the tier and saying why."""
    async with opened(clock, breaker_threshold=1, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://md")) as mem:
        g = gate("md")
        g.fail("put")
        with pytest.raises(TierUnavailableError):
            await mem.put("k", 1, tier=Tier.CORTEX)
        calls = len(g.log)
        with pytest.raises(TierUnavailableError) as err:
            await mem.put("k", 1, tier=Tier.CORTEX)
        assert err.value.tier is Tier.CORTEX
        assert err.value.reason == "circuit breaker open after repeated failures"
        assert len(g.log) == calls


async def test_an_open_write_breaker_refuses_writes_until_its_reset(
        clock: ManualClock) -> None:
    """Once refused writes opened the write breaker, a write is refused without reaching
    the tier (TierUnavailableError naming the tier and why) while reads are still served;
    after ``breaker_reset`` on the memory's clock a write goes through again."""
    async with opened(clock, breaker_threshold=1, breaker_reset=30, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://wb")) as mem:
        await mem.put("r", "kept", tier=Tier.CORTEX)
        backend = PLAIN["wb"]
        backend.fail["put"] = lambda: OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(TierUnavailableError):
            await mem.put("k", 1, tier=Tier.CORTEX)
        del backend.fail["put"]
        with pytest.raises(TierUnavailableError) as err:
            await mem.put("k", 1, tier=Tier.CORTEX)
        assert err.value.tier is Tier.CORTEX
        assert err.value.reason == ("refusing writes after repeated refused writes (reads "
                                    "are still served)")
        assert "k" not in backend.data
        assert await mem.get("r") == "kept"
        clock.advance(31)
        await mem.put("k", 2, tier=Tier.CORTEX)
        assert await mem.get("k") == 2
        assert mem.stats()["tiers"]["CORTEX"]["write_breaker"] == "closed"


async def test_a_refused_write_stops_writes_only(clock: ManualClock) -> None:
    """A write the tier refuses (disk full) raises TierUnavailableError naming the tier and
    saying it refuses writes; it opens the write breaker alone, so reads are still served."""
    async with opened(clock, breaker_threshold=1, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://wf")) as mem:
        await mem.put("r", "kept", tier=Tier.CORTEX)
        PLAIN["wf"].fail["put"] = lambda: OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(TierUnavailableError) as err:
            await mem.put("k", 1, tier=Tier.CORTEX)
        assert err.value.tier is Tier.CORTEX
        assert err.value.reason == "refuses writes: [Errno 28] No space left on device"
        stats = mem.stats()["tiers"]["CORTEX"]
        assert (stats["write_breaker"], stats["breaker"], stats["errors"]) == ("open",
                                                                               "closed", 1)
        assert await mem.get("r") == "kept"


async def test_a_batch_read_takes_bare_payloads_where_nothing_is_promoted(
        clock: ManualClock) -> None:
    """``get_many`` from a tier that can read bare payloads, with nothing to promote into,
    gets the live values among the keys asked for from it, at the memory's time."""
    async with opened(clock, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="barepmut://bp")) as mem:
        await mem.put("old", "gone soon", tier=Tier.CORTEX, ttl=10)
        await mem.put("kept", [1, 2], tier=Tier.CORTEX)
        clock.advance(20)
        assert await mem.get_many(["old", "kept", "missing"]) == {"kept": [1, 2]}
        assert mem.stats()["tiers"]["CORTEX"]["hits"] == 1


# -- what the front reads -------------------------------------------------------------------------


async def test_a_put_to_a_tier_switched_off_names_it(clock: ManualClock) -> None:
    """A call naming a tier that is switched off raises TierUnavailableError for that tier,
    saying it is switched off."""
    async with opened(clock, tiers=tiers(SESSION="memory://")) as mem:
        with pytest.raises(TierUnavailableError) as err:
            await mem.put("k", 1, tier=Tier.CORTEX)
        assert err.value.tier is Tier.CORTEX
        assert err.value.reason == "switched off"
        assert str(err.value) == f"{Tier.CORTEX} is unavailable: switched off"


async def test_stats_report_the_key_order_and_the_loads_in_flight(clock: ManualClock) -> None:
    """``stats()`` reports the key order's figures under ``ordering`` and the loads in
    flight (``get_or_load``) under ``loads``."""
    async with opened(clock, tiers=tiers(SESSION="memory://")) as mem:
        stats = mem.stats()
        assert stats["ordering"] == {"stripes": STRIPES, "locked": 0}
        assert stats["loads"] == {"loading": 0}
        started, finish = asyncio.Event(), asyncio.Event()

        async def loader() -> int:
            started.set()
            await finish.wait()
            return 7

        loading = asyncio.ensure_future(mem.get_or_load("k", loader))
        await started.wait()
        assert mem.stats()["loads"] == {"loading": 1}
        finish.set()
        assert await loading == 7
        assert mem.stats()["loads"] == {"loading": 0}


# -- the guard of a remote tier's call (handles) --------------------------------------------------


class StuckBackend(PlainBackend):
    """A remote backend with a deadline (``call_timeout`` real seconds) whose reads never
    finish, and which says its server kept answering; records the windows it was asked
    about."""

    scheme = "stuckmut"
    call_timeout = 0.05

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.asked: list[float] = []
        self.never = asyncio.Event()

    def answered_within(self, seconds: float) -> bool:
        self.asked.append(seconds)
        return True

    async def get(self, key: str, now: float) -> Record | None:
        await self.never.wait()  # only the guard's deadline ends this
        return None


def _open_stuck(url: BackendURL, tier: Tier, config: Any) -> Backend:
    backend = PLAIN[url.netloc] = StuckBackend(url.netloc)
    return backend


register("stuckmut", _open_stuck)


async def test_a_call_past_its_deadline_while_the_server_answers_is_reported_as_overload(
        clock: ManualClock) -> None:
    """A call cut off by its deadline (which always expires here) while the backend says its
    server kept answering: the backend is asked about the tier's own deadline, and the caller
    gets TierUnavailableError naming the tier with the whole overload reason; the breaker
    stays closed."""
    async with opened(clock, breaker_threshold=1,
                      tiers=tiers(SESSION="memory://", CORTEX="stuckmut://st")) as mem:
        slot = mem._core.by_tier[Tier.CORTEX]
        with pytest.raises(TierUnavailableError) as err:
            await slot.get("k", 0.0)  # type: ignore[union-attr]
        assert err.value.tier is Tier.CORTEX
        assert err.value.reason == (
            "timed out after 0.05s waiting behind other calls (overloaded: more calls in "
            "flight than it answers within the deadline; not counted toward the breaker)")
        assert PLAIN["st"].asked == [0.05]
        stats = mem.stats()["tiers"]["CORTEX"]
        assert (stats["breaker"], stats["errors"]) == ("closed", 1)


async def test_a_guarded_call_passes_keyword_arguments_on(clock: ManualClock) -> None:
    """``RemoteTier.call(fn, *args, **kwargs)`` calls ``fn`` with both the positional and
    the keyword arguments."""
    async with opened(clock, tiers=tiers(SESSION="memory://", CORTEX="plainmut://kw")) as mem:
        slot = mem._core.by_tier[Tier.CORTEX]

        async def echo(a: int, *, b: int) -> tuple[int, int]:
            return a, b

        assert await slot.call(echo, 1, b=2) == (1, 2)  # type: ignore[union-attr]


async def test_write_health_is_restored_by_a_write_only(clock: ManualClock) -> None:
    """Refused writes count toward the write breaker until a write succeeds: a successful
    write starts the count again, a successful read does not."""
    async with opened(clock, breaker_threshold=2, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://wh")) as mem:
        await mem.put("r", "kept", tier=Tier.CORTEX)
        backend = PLAIN["wh"]

        def refuse() -> None:
            backend.fail["put"] = lambda: OSError(errno.ENOSPC, "No space left on device")

        def health() -> str:
            return str(mem.stats()["tiers"]["CORTEX"]["write_breaker"])

        refuse()
        with pytest.raises(TierUnavailableError):
            await mem.put("k", 1, tier=Tier.CORTEX)
        del backend.fail["put"]
        await mem.put("k", 1, tier=Tier.CORTEX)  # a write succeeds: the count starts again
        refuse()
        with pytest.raises(TierUnavailableError):
            await mem.put("k", 2, tier=Tier.CORTEX)
        assert health() == "closed"  # one refused write since the last good one
        assert await mem.get("r") == "kept"  # a read succeeds: the count goes on
        with pytest.raises(TierUnavailableError):
            await mem.put("k", 3, tier=Tier.CORTEX)
        assert health() == "open"


async def test_a_call_of_a_callable_without_a_name_is_guarded_as_a_read(
        clock: ManualClock) -> None:
    """A callable with no ``__name__`` (a ``functools.partial``) is not one of the writes:
    it is let through while the write breaker is open, and its success leaves the write
    health as it was."""
    async with opened(clock, breaker_threshold=1, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://nn")) as mem:
        await mem.put("r", "kept", tier=Tier.CORTEX)
        backend = PLAIN["nn"]
        (full,) = backend.data
        backend.fail["put"] = lambda: OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(TierUnavailableError):
            await mem.put("k", 1, tier=Tier.CORTEX)
        slot = mem._core.by_tier[Tier.CORTEX]
        read = functools.partial(backend.get, full)
        assert not hasattr(read, "__name__")
        rec = await slot.call(read, clock.time())  # type: ignore[union-attr]
        assert rec is backend.data[full]
        stats = mem.stats()["tiers"]["CORTEX"]
        assert (stats["write_breaker"], stats["breaker"]) == ("open", "closed")


# -- flushing and closing (core) ----------------------------------------------------------------


async def test_a_closed_memory_refuses_calls(clock: ManualClock) -> None:
    """After ``close()`` the memory refuses reads and writes (SophiaMemoryError: closed)."""
    mem = Memory.open(clock=clock, purge_interval=0, tiers=tiers(SESSION="memory://"))
    await mem.put("k", 1)
    await mem.close()
    with pytest.raises(SophiaMemoryError, match=r"^this Memory is closed$"):
        await mem.get("k")
    with pytest.raises(SophiaMemoryError, match=r"^this Memory is closed$"):
        await mem.put("k", 2)


async def test_close_goes_past_a_backend_whose_close_fails(clock: ManualClock) -> None:
    """A backend whose ``close`` raises does not make ``Memory.close`` raise, nor stop the
    backends after it from being closed."""
    CLOSE_ERRORS["cf"] = RuntimeError("cannot close")
    mem = Memory.open(clock=clock, purge_interval=0, tiers=tiers(
        SESSION="memory://", CORTEX="plainmut://cf", PERSISTENT="plainmut://after"))
    await mem.close()
    assert not PLAIN["cf"].closed
    assert PLAIN["after"].closed


async def _stale_on_cortex(mem: Memory, fail: Callable[[], None]) -> None:
    """Put ``a`` and ``b`` on CORTEX and make it miss their deletion (``fail`` makes its
    next batch read fail with the tier's fault)."""
    await mem.put_many({"a": 1, "b": 2}, tier=Tier.CORTEX)
    fail()
    with pytest.raises(TierUnavailableError):
        await mem.delete_many(["a", "b"])


async def test_flush_waits_for_a_failed_replay_without_raising_its_error(
        clock: ManualClock) -> None:
    """``flush()`` runs the pending replay of missed deletes and waits for it; a replay
    that fails (here: the tier refuses the request) does not make ``flush()`` raise, and the
    keys stay skipped on that tier."""
    async with opened(clock, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="plainmut://fr")) as mem:
        backend = PLAIN["fr"]

        def lost() -> None:
            backend.fail["get"] = lambda: ConnectionError("lost")

        await _stale_on_cortex(mem, lost)
        backend.fail["get"] = lambda: ValueError("refused")
        await mem.flush()
        assert mem._core.by_tier[Tier.CORTEX].stale == {"a", "b"}  # type: ignore[union-attr]
        del backend.fail["get"]
        assert await mem.get("a") is None


async def test_a_close_cancelled_while_it_flushes_is_cancelled(clock: ManualClock) -> None:
    """``close()`` cancelled while it waits for background work ends cancelled (the
    cancellation is not turned into another error); a later ``close()`` finishes."""
    mem = Memory.open(clock=clock, purge_interval=0, promote=False,
                      tiers=tiers(SESSION="memory://", CORTEX="gated://cc"))
    g = gate("cc")
    try:
        await _stale_on_cortex(mem, lambda: g.fail("get_many"))
        g.hold("get_many")  # the replay's read waits
        closing = asyncio.ensure_future(mem.close())
        await settle()
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
    finally:
        g.release_all()
        await mem.close()
    with pytest.raises(SophiaMemoryError, match="closed"):
        await mem.get("a")


async def test_flush_also_waits_for_the_spills_promotions_cause(clock: ManualClock) -> None:
    """A promotion done while ``flush()`` waits for the promotions evicts an item whose home
    is SESSION, so it must spill: ``flush()`` returns only once that spill is done too (the
    item is then on CORTEX and nothing is left in the spill buffer)."""
    async with opened(clock, tiers=tiers(SESSION="memory://?max_items=1",
                                         CORTEX="gated://ml")) as mem:
        g = gate("ml")
        await mem.put("b", "B", tier=Tier.CORTEX)
        await mem.put("a", "A", tier=Tier.SESSION)
        lock = mem._core.order.locks[KeyOrder.stripe(mem._prefix + "b")]
        await lock.acquire()  # b's promotion waits for its key
        try:
            assert await mem.get("b") == "B"  # queues b's promotion into SESSION
            g.hold(["put", "put_many"])  # the spill's write to CORTEX waits
            flushing = asyncio.ensure_future(mem.flush())
            await settle()
            assert not flushing.done()
        finally:
            lock.release()  # the promotion evicts a: it spills
        await settle()
        assert not flushing.done()  # waiting for the spill
        g.release_all()
        await flushing
        assert mem.stats()["spill"]["items"] == 0
        assert await tier_of(mem, "a") is Tier.CORTEX


async def test_flush_waits_for_spills_queued_while_it_waited_for_a_replay(
        clock: ManualClock) -> None:
    """Once ``flush()`` returns, nothing is left to spill: a spill queued while it waited
    for the background replay of missed deletes is waited for too."""
    async with opened(clock, promote=False, tiers=tiers(
            SESSION="memory://?max_items=1", CORTEX="gated://mw")) as mem:
        g = gate("mw")
        await _stale_on_cortex(mem, lambda: g.fail("get_many"))
        await mem.put("x", "X", tier=Tier.SESSION)
        g.hold("get_many")
        g.hold(["put", "put_many"])
        flushing = asyncio.ensure_future(mem.flush())
        await settle()
        assert not flushing.done()  # waiting for the replay's read
        await mem.put("y", "Y", tier=Tier.SESSION)  # x spills; its write to CORTEX waits
        g.release("get_many")
        await settle()
        assert not flushing.done()
        g.release_all()
        await flushing
        assert mem.stats()["spill"]["items"] == 0
        assert await tier_of(mem, "x") is Tier.CORTEX


def test_a_memory_with_every_tier_off_is_refused_saying_so(clock: ManualClock) -> None:
    """Opening with every tier switched off is a ConfigError that says exactly that."""
    with pytest.raises(ConfigError, match=r"^every tier is switched off$"):
        Memory.open(clock=clock, purge_interval=0, tiers=tiers())


async def test_a_memory_without_session_promotes_into_the_gpu_alone(clock: ManualClock) -> None:
    """With SESSION switched off, a hit in a slower tier still reads and is promoted into
    GPU, the only faster tier (an array, on its second hit)."""
    np = pytest.importorskip("numpy")
    async with opened(clock, gpu_reserve=0, tiers=tiers(
            GPU="host://?memory=1MiB", PERSISTENT="plainmut://nosession")) as mem:
        await mem.put("k", np.ones(4), tier=Tier.PERSISTENT)
        for _ in range(2):
            entry = await mem.get_entry("k")
            assert entry is not None and entry.tier is Tier.PERSISTENT
            await mem.flush()
        assert await mem.keys(Tier.GPU) == ["k"]


async def test_signed_pickle_memory_reads_back_what_a_slow_tier_stored(
        clock: ManualClock) -> None:
    """A memory opened with the signed-pickle codec and its key stores a value a table tier
    must encode and reads it back (the key reaches the codec)."""
    async with opened(clock, codec="pickle", signing_key="k" * 32,
                      tiers=tiers(PERSISTENT="plainmut://signed")) as mem:
        await mem.put("k", {"a": (1, 2)}, tier=Tier.PERSISTENT)
        assert await mem.get("k") == {"a": (1, 2)}


async def test_get_many_reads_each_in_process_tier_through_its_lookup(
        clock: ManualClock) -> None:
    """get_many asks each in-process tier for a batch's records by ``lookup``: the store's
    own dict ``get`` where its records are that dict's items (SESSION), the read behind a
    membership test elsewhere (the GPU host pools); hits, misses and expiry as before."""
    import numpy as np
    async with opened(clock, gpu_reserve=0, tiers=tiers(
            GPU="host://?memory=1MiB", SESSION="memory://")) as mem:
        gpu, session = mem._core.by_tier[Tier.GPU], mem._core.by_tier[Tier.SESSION]
        assert isinstance(gpu, InProcessTier) and isinstance(session, InProcessTier)
        assert session.lookup == session.resident.get  # type: ignore[attr-defined]
        assert gpu.lookup == gpu._lookup
        array = np.arange(4, dtype=np.float32)
        await mem.put("a", array, tier=Tier.GPU)
        await mem.put("s", {"v": 1})
        await mem.put("gone", 2, ttl=1)
        clock.advance(1)
        got = await mem.get_many(["a", "s", "missing", "gone"])
        assert set(got) == {"a", "s"} and got["s"] == {"v": 1}
        assert np.array_equal(got["a"], array)
        stats = mem.stats()["tiers"]
        assert (stats["GPU"]["hits"], stats["GPU"]["misses"]) == (1, 3)
        assert (stats["SESSION"]["hits"], stats["SESSION"]["misses"]) == (1, 2)


async def test_a_memory_of_in_process_tiers_runs_no_purge_task(clock: ManualClock) -> None:
    """In-process tiers drop expired items as they meet them: with no slower tier to purge,
    a write starts no background purge task, whatever the purge interval."""
    async with opened(clock, purge_interval=1e-9, gpu_reserve=0, tiers=tiers(
            GPU="host://?memory=1MiB", SESSION="memory://")) as mem:
        await mem.put("k", 1, ttl=5)
        await mem.put_many({"a": 1, "b": 2})
        assert mem._core.purger is None
    async with opened(clock, purge_interval=1e-9, tiers=tiers(
            SESSION="memory://", PERSISTENT="purgepmut://p")) as mem:
        await mem.put("k", 1)
        assert mem._core.purger is not None


async def test_a_fresh_memory_reports_no_spill_peak(clock: ManualClock) -> None:
    """Before anything spilled, the spill buffer's peak is 0 items."""
    async with opened(clock, tiers=tiers(SESSION="memory://?max_items=1",
                                         PERSISTENT="plainmut://peak")) as mem:
        await mem.put("k", 1)
        assert mem.stats()["spill"]["peak_items"] == 0
        await mem.put("j", 2)  # evicts k: one item in transit
        assert mem.stats()["spill"]["peak_items"] == 1


async def test_purge_expired_removes_expired_items_from_in_process_tiers(
        clock: ManualClock) -> None:
    """``Memory.purge_expired`` sweeps the in-process tiers too: an expired SESSION item is
    removed from the store (counted), a live one stays."""
    async with opened(clock, tiers=tiers(SESSION="memory://")) as mem:
        await mem.put("old", 1, ttl=5)
        await mem.put("live", 2)
        clock.advance(10)
        assert await mem.purge_expired() == 1
        assert "old" not in mem._core.by_tier[Tier.SESSION].resident
        assert "live" in mem._core.by_tier[Tier.SESSION].resident


async def test_a_tier_without_conditional_writes_refuses_the_staples(clock: ManualClock) -> None:
    """A remote tier whose backend has no conditional writes (nor versions) refuses add, incr
    and compare_and_set with InvalidArgumentError naming the tier, and stores nothing."""
    async with opened(clock, tiers=tiers(PERSISTENT="plainmut://nocond")) as mem:
        with pytest.raises(InvalidArgumentError, match="cannot write conditionally"):
            await mem.add("k", 1, tier=Tier.PERSISTENT)
        with pytest.raises(InvalidArgumentError, match="cannot write conditionally"):
            await mem.incr("n", tier=Tier.PERSISTENT)
        with pytest.raises(InvalidArgumentError, match="PERSISTENT"):
            await mem.compare_and_set("k", None, 2, tier=Tier.PERSISTENT)
        assert await mem.get("k") is None and await mem.get("n") is None
