"""The suites: what is timed, against which anchors, and the targets from the project's issue.

Each suite is an async context manager that builds its contestants (opening a ``Memory`` and
the anchor libraries on temporary files), yields the :class:`~_harness.Suite`, and closes
everything afterwards. Contestants loop over a prepared key sequence with
``itertools.islice`` (no allocation inside the timed loop) and await one call per key.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import diskcache  # type: ignore[import-untyped]
from aiocache import SimpleMemoryCache  # type: ignore[import-untyped]
from cachetools import LRUCache
from cashews import Cache as CashewsCache

from _harness import Contestant, InfoFn, RunFn, Settings, Suite, Target, percentile
from sophia_memory import Memory, Tier

__all__ = ["SUITES"]

SuiteFactory = Callable[[Settings], AbstractAsyncContextManager[Suite]]

#: Small JSON-like value stored by the in-process suites (what a session cache holds).
L1_VALUE: dict[str, Any] = {"cart": [1, 2], "user": "u-42", "active": True}
#: 500 keys: under the default sizes of every in-process contestant (cashews keeps 1000), so
#: nothing is evicted and every get is a hit.
L1_KEYS = [f"user:{i:05d}" for i in range(500)]
SQL_VALUE = "v" * 100  # the 100-byte str of the SQLite suites
#: Every tier but PERSISTENT switched off: a get or put touches SQLite and nothing else.
SQLITE_ONLY: dict[Tier, str | None] = {Tier.GPU: None, Tier.SESSION: None, Tier.CORTEX: None,
                                       Tier.VECTOR: None, Tier.WORKFLOW: None}


class KeySequence:
    """A fixed, pre-built sequence of items to iterate the first ``n`` of without copying."""

    def __init__(self, items: Sequence[Any], length: int, rng: random.Random | None = None
                 ) -> None:
        if rng is None:
            self.items = [items[i % len(items)] for i in range(length)]
        else:
            self.items = rng.choices(list(items), k=length)

    def take(self, n: int) -> Iterator[Any]:
        if n > len(self.items):
            raise ValueError(f"sequence holds {len(self.items)} items, {n} asked")
        return islice(self.items, n)


def _await_each(call: Callable[[Any], Awaitable[Any]], seq: KeySequence) -> RunFn:
    """``ops`` awaited calls of ``call``, one per item of ``seq``."""
    async def run(ops: int, pass_no: int) -> None:
        for item in seq.take(ops):
            await call(item)
    return run


def _call_each(call: Callable[[Any], Any], seq: KeySequence) -> RunFn:
    """``ops`` plain (synchronous) calls of ``call``: how a sync library is used."""
    async def run(ops: int, pass_no: int) -> None:
        for item in seq.take(ops):
            call(item)
    return run


def _temp_dir(stack: AsyncExitStack, name: str) -> Path:
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"sophia-bench-{name}-")))


async def _open_l1_contestants(stack: AsyncExitStack, name: str
                               ) -> tuple[Memory, LRUCache[str, Any], CashewsCache,
                                          SimpleMemoryCache, SimpleMemoryCache]:
    """The L1 contestants, each holding every key of :data:`L1_KEYS`."""
    mem = Memory.open(path=str(_temp_dir(stack, name) / "memory.db"))
    stack.push_async_callback(mem.close)
    lru: LRUCache[str, Any] = LRUCache(maxsize=10_000)
    cashews = CashewsCache()
    cashews.setup("mem://")
    stack.push_async_callback(cashews.close)
    aio_default = SimpleMemoryCache()  # aiocache's default: a 5 s asyncio.wait_for per call
    aio_plain = SimpleMemoryCache(timeout=None)
    stack.push_async_callback(aio_default.close)
    stack.push_async_callback(aio_plain.close)
    for key in L1_KEYS:
        await mem.put(key, L1_VALUE, tier=Tier.SESSION)
        lru[key] = L1_VALUE
        await cashews.set(key, L1_VALUE)
        await aio_default.set(key, L1_VALUE)
        await aio_plain.set(key, L1_VALUE)
    # Every contestant must really hit, and sophia's hits must come from the in-process tier.
    for key in L1_KEYS:
        entry = await mem.get_entry(key)
        assert entry is not None and entry.tier is Tier.SESSION, (key, entry)
        assert await mem.get(key) == L1_VALUE
        assert await cashews.get(key) == L1_VALUE
        assert await aio_default.get(key) == L1_VALUE
        assert await aio_plain.get(key) == L1_VALUE
    return mem, lru, cashews, aio_default, aio_plain


def _tier_hits(mem: Memory) -> dict[str, int]:
    tiers = mem.stats()["tiers"]
    return {name: t["hits"] for name, t in tiers.items() if "hits" in t}


def _hit_counter(mem: Memory) -> tuple[InfoFn, InfoFn]:
    """``before``/``after`` hooks reporting which of sophia's tiers answered the timed rounds
    (from ``Memory.stats()``): evidence that the suite measures the tier it names."""
    start: dict[str, int] = {}

    async def before() -> dict[str, Any]:
        start.update(_tier_hits(mem))
        return {}

    async def after() -> dict[str, Any]:
        delta = {k: v - start.get(k, 0) for k, v in _tier_hits(mem).items()}
        return {"sophia_tiers": [t.name for t in mem.tiers],
                "sophia_hits_by_tier_during_rounds": delta}

    return before, after


# -- 1. in-process (L1) get -------------------------------------------------------------------

@asynccontextmanager
async def l1_get(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        mem, lru, cashews, aio_default, aio_plain = await _open_l1_contestants(stack, "l1get")
        plain: dict[str, Any] = {k: L1_VALUE for k in L1_KEYS}
        seq = KeySequence(L1_KEYS, settings.max_ops)

        async def dict_get(key: str) -> Any:
            return plain.get(key)

        async def lru_get(key: str) -> Any:
            return lru.get(key)

        before, after = _hit_counter(mem)

        yield Suite(
            key="l1_get",
            title="In-process (L1) get, hit",
            unit="one get of a present key",
            reference="sophia",
            contestants=[
                Contestant("sophia", "await mem.get(k)  (Memory.open(path=tmp), key put with "
                           "tier=Tier.SESSION)", _await_each(mem.get, seq)),
                Contestant("dict", "await of an async def returning dict.get(k)",
                           _await_each(dict_get, seq)),
                Contestant("cachetools", "await of an async def returning "
                           "cachetools.LRUCache.get(k)", _await_each(lru_get, seq)),
                Contestant("cashews", 'await cashews Cache().get(k)  (setup("mem://"))',
                           _await_each(cashews.get, seq)),
                Contestant("aiocache", "await aiocache SimpleMemoryCache().get(k)  (default: "
                           "timeout=5 s, an asyncio.wait_for per call)",
                           _await_each(aio_default.get, seq)),
                Contestant("aiocache_no_timeout", "await aiocache "
                           "SimpleMemoryCache(timeout=None).get(k)",
                           _await_each(aio_plain.get, seq)),
            ],
            targets=[
                Target("sophia median <= 1 us", "median_us", "<=", 1.0),
                Target("sophia >= 4x faster than cashews", "speedup", ">=", 4.0, "cashews"),
                Target("sophia >= 4x faster than aiocache (default settings)", "speedup",
                       ">=", 4.0, "aiocache"),
                Target("sophia >= 4x faster than aiocache (timeout=None)", "speedup", ">=",
                       4.0, "aiocache_no_timeout"),
            ],
            notes=[f"{len(L1_KEYS)} keys, cycled in order; value {L1_VALUE!r}.",
                   "Every key is checked before timing: sophia's get_entry(k).tier is "
                   "SESSION and every contestant returns the stored value.",
                   "sophia's Memory has its default tiers (host-memory GPU pools above "
                   "SESSION, SQLite below); a hit is answered by the in-process fast path."],
            before=before,
            after=after,
        )


# -- 1b. in-process (L1) put --------------------------------------------------------------------

def l1_setters(mem: Memory, lru: LRUCache[str, Any], cashews: CashewsCache,
               aio_default: SimpleMemoryCache, aio_plain: SimpleMemoryCache,
               ) -> tuple[Callable[[str], Awaitable[None]], ...]:
    """The ``l1_put`` suite's operations, one key each: sophia's put, then cachetools',
    cashews', aiocache's (default) and aiocache's (timeout=None) set of :data:`L1_VALUE`."""

    async def sophia_put(key: str) -> None:
        await mem.put(key, L1_VALUE, tier=Tier.SESSION)

    async def lru_set(key: str) -> None:
        lru[key] = L1_VALUE

    async def cashews_set(key: str) -> None:
        await cashews.set(key, L1_VALUE)

    async def aio_default_set(key: str) -> None:
        await aio_default.set(key, L1_VALUE)

    async def aio_plain_set(key: str) -> None:
        await aio_plain.set(key, L1_VALUE)

    return sophia_put, lru_set, cashews_set, aio_default_set, aio_plain_set


@asynccontextmanager
async def l1_put(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        contestants = await _open_l1_contestants(stack, "l1put")
        seq = KeySequence(L1_KEYS, settings.max_ops)
        sophia_put, lru_set, cashews_set, aio_default_set, aio_plain_set = \
            l1_setters(*contestants)

        yield Suite(
            key="l1_put",
            title="In-process (L1) put, overwrite",
            unit="one put of an existing key",
            reference="sophia",
            contestants=[
                Contestant("sophia", "await mem.put(k, v, tier=Tier.SESSION)",
                           _await_each(sophia_put, seq)),
                Contestant("cachetools", "await of an async def doing LRUCache[k] = v",
                           _await_each(lru_set, seq)),
                Contestant("cashews", "await cashews Cache().set(k, v)",
                           _await_each(cashews_set, seq)),
                Contestant("aiocache", "await aiocache SimpleMemoryCache().set(k, v)  "
                           "(default timeout=5 s)", _await_each(aio_default_set, seq)),
                Contestant("aiocache_no_timeout", "await aiocache "
                           "SimpleMemoryCache(timeout=None).set(k, v)",
                           _await_each(aio_plain_set, seq)),
            ],
            targets=[Target("sophia median <= 2 us (issue 12)", "median_us", "<=", 2.0)],
            notes=[f"The same {len(L1_KEYS)} keys are overwritten in turn (no eviction).",
                   "sophia's put validates the key and value (codec size check), checks that "
                   "no other write of the key is in progress, stores, and invalidates the key "
                   "in the tier above (GPU host pools): that is what it buys over a dict "
                   "store."],
        )


# -- 1c. in-process (L1) get_many(100) ----------------------------------------------------------

@asynccontextmanager
async def l1_get_many(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        mem, lru, cashews, aio_default, aio_plain = await _open_l1_contestants(stack, "l1many")
        batches = [L1_KEYS[i : i + 100] for i in range(0, len(L1_KEYS), 100)]
        seq = KeySequence(batches, settings.max_ops)
        for batch in batches:
            got = await mem.get_many(batch)
            assert len(got) == len(batch), "get_many must hit every key"

        before, after = _hit_counter(mem)

        async def sophia_gets(keys: list[str]) -> None:
            get = mem.get
            for key in keys:
                await get(key)

        async def lru_many(keys: list[str]) -> dict[str, Any]:
            get = lru.get
            return {k: v for k in keys if (v := get(k)) is not None}

        async def cashews_many(keys: list[str]) -> Any:
            return await cashews.get_many(*keys)

        yield Suite(
            key="l1_get_many",
            title="In-process (L1) get_many of 100 keys, all hits",
            unit="one call fetching 100 keys",
            reference="sophia",
            contestants=[
                Contestant("sophia", "await mem.get_many(keys)  (100 keys, all SESSION hits)",
                           _await_each(mem.get_many, seq)),
                Contestant("sophia_100_gets", "100 x await mem.get(k)  (same keys; shows "
                           "get_many's own overhead)", _await_each(sophia_gets, seq)),
                Contestant("cachetools", "await of an async def building {k: v} from "
                           "LRUCache.get", _await_each(lru_many, seq)),
                Contestant("cashews", "await cashews Cache().get_many(*keys)",
                           _await_each(cashews_many, seq)),
                Contestant("aiocache", "await aiocache SimpleMemoryCache().multi_get(keys)  "
                           "(default timeout=5 s)", _await_each(aio_default.multi_get, seq)),
                Contestant("aiocache_no_timeout", "await aiocache "
                           "SimpleMemoryCache(timeout=None).multi_get(keys)",
                           _await_each(aio_plain.multi_get, seq)),
            ],
            targets=[
                Target("sophia faster than 100 single gets (issue 12)", "speedup", ">", 1.0,
                       "sophia_100_gets"),
                Target("sophia faster than aiocache (timeout=None) (issue 12)", "speedup", ">",
                       1.0, "aiocache_no_timeout"),
            ],
            notes=["5 batches of 100 distinct keys, cycled; every key is a hit. The hit "
                   "counts below include sophia_100_gets."],
            before=before,
            after=after,
        )


# -- 2. SQLite-tier get -------------------------------------------------------------------------

@asynccontextmanager
async def sqlite_get(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        tmp = _temp_dir(stack, "sqlget")
        db = tmp / "memory.db"
        mem = Memory.open(path=str(db), tiers=SQLITE_ONLY, default_tier=Tier.PERSISTENT)
        stack.push_async_callback(mem.close)
        assert mem.tiers == (Tier.PERSISTENT,), mem.tiers
        dc = diskcache.Cache(str(tmp / "diskcache"))
        stack.callback(dc.close)
        keys = [f"item:{i:07d}" for i in range(settings.sqlite_items)]
        for i in range(0, len(keys), 1000):
            await mem.put_many({k: SQL_VALUE for k in keys[i : i + 1000]})
        with dc.transact():
            for k in keys:
                dc.set(k, SQL_VALUE)
        for k in keys[:: max(1, len(keys) // 100)]:
            entry = await mem.get_entry(k)
            assert entry is not None and entry.tier is Tier.PERSISTENT and \
                entry.value == SQL_VALUE, (k, entry)
            assert dc.get(k) == SQL_VALUE
        seq = KeySequence(keys, settings.max_ops, random.Random(settings.seed))
        before, after = _hit_counter(mem)

        contestants = [
            Contestant("sophia", "await mem.get(k)  (only Tier.PERSISTENT enabled: SQLite)",
                       _await_each(mem.get, seq)),
            Contestant("diskcache", "diskcache.Cache(dir).get(k)  (synchronous call)",
                       _call_each(dc.get, seq)),
        ]
        notes = [f"{len(keys)} rows of a {len(SQL_VALUE)}-byte str in each store; keys "
                 f"drawn uniformly at random (seed {settings.seed}), the same sequence for "
                 "every contestant. Both files are warm in the page cache.",
                 "sophia reads on the caller's thread through its shared read connection; "
                 "diskcache likewise (its get is synchronous)."]
        raw = _raw_sqlite_reader(db, "persistent")
        if raw is not None:
            stack.callback(raw[1].close)
            contestants.append(Contestant(
                "sqlite3_raw", "sqlite3 SELECT payload ... WHERE key = ? .fetchone() on the "
                "same table (a floor: no decoding, no API)", _call_each(raw[0], seq)))
            notes.append("sqlite3_raw reads sophia's own table through a separate "
                         "connection: the part of sophia's time that SQLite itself takes.")
        yield Suite(
            key="sqlite_get",
            title="SQLite-tier get (L3 PERSISTENT only)",
            unit="one get of a present key",
            reference="sophia",
            contestants=contestants,
            targets=[Target("sophia time <= 1.5x diskcache's", "time_ratio", "<=", 1.5,
                            "diskcache")],
            notes=notes,
            before=before,
            after=after,
        )


def _raw_sqlite_reader(db: Path, table: str
                       ) -> tuple[Callable[[str], Any], sqlite3.Connection] | None:
    """A bare ``SELECT`` on sophia's table, or None if the schema is not the expected one."""
    conn = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    sql = f'SELECT payload FROM "{table}" WHERE key = ?'
    try:
        conn.execute(sql, ("",)).fetchone()
    except sqlite3.Error:
        conn.close()
        return None

    def get(key: str) -> Any:
        return conn.execute(sql, (key,)).fetchone()

    return get, conn


# -- 3. SQLite put throughput -------------------------------------------------------------------

def _shares(ops: int, parts: int) -> list[int]:
    """``ops`` split over ``parts`` writers as evenly as possible."""
    return [ops // parts + (1 if w < ops % parts else 0) for w in range(parts)]


class _SQLitePutContestants:
    """The writers of the put suite. sophia's two configurations get a database file each,
    so the group-commit counters of one are not mixed with the other's."""

    def __init__(self, concurrent: Memory, sequential: Memory, dc: Any, writers: int) -> None:
        self.concurrent = concurrent
        self.sequential = sequential
        self.dc = dc
        self.writers = writers
        self.issued = {"sophia": 0, "sophia_1_writer": 0, "diskcache": 0}

    @staticmethod
    async def _writer(put: Callable[[str, Any], Awaitable[Any]], prefix: str, n: int,
                      lat: list[int] | None) -> None:
        if lat is None:
            for i in range(n):
                await put(f"{prefix}:{i}", SQL_VALUE)
            return
        clock = time.perf_counter_ns
        for i in range(n):
            t0 = clock()
            await put(f"{prefix}:{i}", SQL_VALUE)
            lat.append(clock() - t0)

    async def sophia(self, ops: int, pass_no: int, lat: list[int] | None = None) -> None:
        """``writers`` coroutines, each putting its own new keys one after another."""
        put = self.concurrent.put
        await asyncio.gather(*(self._writer(put, f"p{pass_no}w{w}", n, lat)
                               for w, n in enumerate(_shares(ops, self.writers))))
        self.issued["sophia"] += ops

    async def sophia_1_writer(self, ops: int, pass_no: int, lat: list[int] | None = None
                              ) -> None:
        await self._writer(self.sequential.put, f"p{pass_no}w0", ops, lat)
        self.issued["sophia_1_writer"] += ops

    async def diskcache(self, ops: int, pass_no: int, lat: list[int] | None = None) -> None:
        """The keys sophia's writers put, in the order they reach the database (round-robin
        over the writers), one synchronous ``set`` each."""
        dc_set = self.dc.set
        counts = _shares(ops, self.writers)
        clock = time.perf_counter_ns
        for i in range(counts[0]):
            for w in range(self.writers):
                if i < counts[w]:
                    if lat is None:
                        dc_set(f"p{pass_no}w{w}:{i}", SQL_VALUE)
                    else:
                        t0 = clock()
                        dc_set(f"p{pass_no}w{w}:{i}", SQL_VALUE)
                        lat.append(clock() - t0)
        self.issued["diskcache"] += ops


def _engine_counters(mem: Memory) -> dict[str, int]:
    stats = mem.stats()["tiers"]["PERSISTENT"]["backend_stats"]
    return {"commits": int(stats["commits"]), "writes": int(stats["writes"]),
            "rows": int(stats["rows"])}


@asynccontextmanager
async def sqlite_put(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        tmp = _temp_dir(stack, "sqlput")
        mems = []
        for name in ("concurrent", "sequential"):
            mem = Memory.open(path=str(tmp / f"{name}.db"), tiers=SQLITE_ONLY,
                              default_tier=Tier.PERSISTENT)
            stack.push_async_callback(mem.close)
            assert mem.tiers == (Tier.PERSISTENT,), mem.tiers
            mems.append(mem)
        dc = diskcache.Cache(str(tmp / "diskcache"))
        stack.callback(dc.close)
        w = _SQLitePutContestants(mems[0], mems[1], dc, settings.writers)
        start: dict[str, int] = {}

        async def before() -> dict[str, Any]:
            start.update(_engine_counters(w.concurrent))
            return {}

        async def after() -> dict[str, Any]:
            end = _engine_counters(w.concurrent)
            commits = end["commits"] - start["commits"]
            writes = end["writes"] - start["writes"]
            info: dict[str, Any] = {
                "sophia_group_commits_during_rounds": commits,
                "sophia_puts_per_group_commit": round(writes / commits, 1) if commits else None,
                "rows_at_end": {"sophia": end["rows"], "diskcache": len(dc)},
            }
            assert end["rows"] == w.issued["sophia"], (end, w.issued)
            assert _engine_counters(w.sequential)["rows"] == w.issued["sophia_1_writer"]
            assert len(dc) == w.issued["diskcache"], (len(dc), w.issued)
            # One more pass each, timing every call: how long a caller waits for its durable
            # put. Not part of the throughput figures.
            for n, (name, fn) in enumerate((("sophia", w.sophia),
                                            ("sophia_1_writer", w.sophia_1_writer),
                                            ("diskcache", w.diskcache))):
                lat: list[int] = []
                ops = settings.put_total // (4 if name == "sophia_1_writer" else 1)
                await fn(ops, 10**6 + n, lat)
                info[f"put_latency_us_{name}"] = {
                    q: round(percentile([float(x) for x in lat], p) / 1000, 1)
                    for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
            return info

        total = settings.put_total
        writers = settings.writers
        yield Suite(
            key="sqlite_put",
            title=f"SQLite put throughput, {writers} concurrent writers (L3 PERSISTENT only)",
            unit="one durable put of a new key (time per put = round time / puts)",
            reference="sophia",
            show_rate=True,
            contestants=[
                Contestant("sophia", f"asyncio.gather of {writers} coroutines, each awaiting "
                           "mem.put(k, v) for its own new keys in turn", w.sophia, total),
                Contestant("sophia_1_writer", "one coroutine awaiting mem.put(k, v) for new "
                           "keys in turn (nothing to batch; own database file)",
                           w.sophia_1_writer, max(settings.min_ops, total // 4)),
                Contestant("diskcache", "diskcache.Cache(dir).set(k, v), synchronous, for the "
                           "same keys in the order sophia's writers issue them",
                           w.diskcache, total),
            ],
            targets=[Target(f"sophia ({writers} writers) puts/s >= 3x diskcache's sequential "
                            "set", "speedup", ">=", 3.0, "diskcache")],
            notes=[f"{total} puts per round for sophia and diskcache, "
                   f"{len(SQL_VALUE)}-byte str values, fresh keys every round (inserts); "
                   "every row is counted afterwards.",
                   "Durability is the same on both sides: a put returns once its transaction "
                   "has committed to the WAL, with synchronous=NORMAL (both libraries' "
                   "defaults). sophia batches the puts queued by concurrent writers into one "
                   "transaction (group commit); diskcache commits each set on its own.",
                   "Both databases grow by the same number of rows every round, so later "
                   "rounds run on bigger tables (see rounds_ns in the JSON)."],
            before=before,
            after=after,
        )


SUITES: dict[str, SuiteFactory] = {
    "l1_get": l1_get,
    "l1_put": l1_put,
    "l1_get_many": l1_get_many,
    "sqlite_get": sqlite_get,
    "sqlite_put": sqlite_put,
}
