"""The Redis suites (``python benchmarks/run.py --redis``): ``get``, ``put``, ``get_many(100)``
and ``put_many(100)`` through a ``Memory`` whose only tier is SESSION on Redis, side by side
with raw ``redis.asyncio`` and the Redis backends of aiocache and cashews, all on one server
(``REDIS_URL``, default ``redis://127.0.0.1:6379/0``) under their own key prefixes.

The raw anchor (``raw``) is the least code a user could write to keep Python values in Redis
with redis.asyncio: ``msgpack`` to encode and decode, ``GET`` / ``SET ... PX`` / ``MGET`` (into
a ``{key: value}`` dict, as ``get_many`` returns) / a non-transactional pipeline of
``SET ... PX`` for ``put_many``. The targets are against it. ``raw_bytes`` (reads only) does not
even decode: it shows what the network round trip alone costs. ``raw_no_timeout`` is ``raw``
on a client made with ``socket_timeout=None``: redis-py 6+ bounds every socket read and write
by 5 s by default (a timer per reply, a task per write), and sophia's backend switches that off
because it bounds each whole call by its own deadline; the row shows how much of the gap that
choice alone makes. Writes carry a TTL (3600 s) in every contestant, as session state does.
Every client uses redis-py's hiredis parser; sophia's backend also packs commands with hiredis
and sends them on redis-py's pooled connections (see its module docstring).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgpack
import redis.asyncio as aioredis
from aiocache import RedisCache  # type: ignore[import-untyped]
from aiocache.serializers import JsonSerializer  # type: ignore[import-untyped]
from cashews import Cache as CashewsCache

from _harness import Contestant, InfoFn, RunFn, Settings, Suite, Target
from _suites import KeySequence, SuiteFactory, _await_each, _temp_dir
from sophia_memory import Memory, Tier

__all__ = ["REDIS_SUITES"]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: A session-sized JSON-like value.
VALUE: dict[str, Any] = {"cart": [1, 2, 3], "user": "u-42", "active": True,
                         "name": "x" * 40}
KEYS = [f"user:{i:05d}" for i in range(1000)]
#: SESSION on Redis and nothing else: every call goes to Redis.
ONLY_REDIS = {Tier.GPU: None, Tier.CORTEX: None, Tier.PERSISTENT: None, Tier.VECTOR: None,
              Tier.WORKFLOW: None}
WRITE_POOL = 1_000_000  # distinct keys the put suites cycle through
TTL = 3600  # seconds, on every write


class _Contestants:
    """Every client, each under its own prefix on the same server, holding :data:`KEYS`."""

    def __init__(self, stack: AsyncExitStack, run_id: str) -> None:
        self.stack = stack
        self.run_id = run_id
        self.prefixes: list[str] = []

    def prefix(self, who: str) -> str:
        p = f"smbench:{self.run_id}:{who}:"
        self.prefixes.append(p)
        return p

    async def open(self, name: str) -> None:
        sep = "&" if "?" in REDIS_URL else "?"
        url = f"{REDIS_URL}{sep}prefix={self.prefix('sophia')}"
        self.mem = Memory.open(path=str(_temp_dir(self.stack, name) / "m.db"),
                               tiers={Tier.SESSION: url, **ONLY_REDIS})
        self.stack.push_async_callback(self.mem.close)
        self.raw = aioredis.Redis.from_url(REDIS_URL)
        self.stack.push_async_callback(self.raw.aclose)
        self.raw_nt = aioredis.Redis.from_url(REDIS_URL, socket_timeout=None)
        self.stack.push_async_callback(self.raw_nt.aclose)
        self.raw_prefix = self.prefix("raw")
        self.aio = RedisCache(serializer=JsonSerializer(), namespace=self.prefix("aiocache"),
                              **_aiocache_endpoint())
        self.stack.push_async_callback(self.aio.close)
        self.cashews = CashewsCache()
        self.cashews.setup(REDIS_URL, client_side=False)
        self.cp = self.prefix("cashews")  # cashews' own prefix= routes keys: prefix by hand
        self.stack.push_async_callback(self.cashews.close)
        self.stack.push_async_callback(self._drop_keys)
        await self.mem.put_many({k: VALUE for k in KEYS}, tier=Tier.SESSION)
        pipe = self.raw.pipeline(transaction=False)
        for k in KEYS:
            pipe.set(self.raw_prefix + k, msgpack.packb(VALUE))
        await pipe.execute()
        await self.aio.multi_set([(k, VALUE) for k in KEYS])
        await self.cashews.set_many({self.cp + k: VALUE for k in KEYS}, expire=3600)
        for k in KEYS[:10]:  # every contestant must really hit
            assert await self.mem.get(k) == VALUE
            assert msgpack.unpackb(await self.raw.get(self.raw_prefix + k)) == VALUE
            assert msgpack.unpackb(await self.raw_nt.get(self.raw_prefix + k)) == VALUE
            assert await self.aio.get(k) == VALUE
            assert await self.cashews.get(self.cp + k) == VALUE
        backend = self.mem._core.by_tier[Tier.SESSION].backend
        assert "redis" in backend.describe()

    async def _drop_keys(self) -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        for p in self.prefixes:
            names = [n async for n in client.scan_iter(match=p + "*", count=10_000)]
            for i in range(0, len(names), 10_000):
                await client.delete(*names[i : i + 10_000])
        await client.aclose()


def _aiocache_endpoint() -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    db = parts.path.strip("/") or "0"
    return {"endpoint": parts.hostname or "127.0.0.1", "port": parts.port or 6379,
            "db": int(db), "password": parts.password}


def _redis_hits(mem: Memory) -> tuple[InfoFn, InfoFn]:
    """Evidence that sophia's calls went to Redis: its SESSION hits during the rounds."""
    start: dict[str, int] = {}

    async def before() -> dict[str, Any]:
        start["hits"] = mem.stats()["tiers"]["SESSION"]["hits"]
        return {}

    async def after() -> dict[str, Any]:
        tier = mem.stats()["tiers"]["SESSION"]
        return {"sophia_tiers": [t.name for t in mem.tiers], "sophia_session_backend":
                tier["backend"], "sophia_session_hits_during_rounds":
                tier["hits"] - start["hits"]}

    return before, after


def _fresh_keys(prefix: str) -> Any:
    """``run(ops, pass_no)`` helpers writing keys no earlier call wrote."""
    def keys(ops: int, pass_no: int) -> list[str]:
        base = (pass_no * 7919) % WRITE_POOL
        return [f"{prefix}{(base + i) % WRITE_POOL:07d}" for i in range(ops)]
    return keys


NOTES = ["One Redis server for every contestant (each under its own key prefix); "
         "sophia's Memory has SESSION on Redis and every other tier switched off.",
         "aiocache: RedisCache with JsonSerializer and its default timeout=5 s; cashews: "
         "Cache().setup(url, client_side=False) with its default (pickle) serializer."]
NO_TIMEOUT = "raw, on a client with socket_timeout=None"


def _suite(key: str, title: str, unit: str, bound: float, contestants: list[Contestant], *,
           hits: tuple[InfoFn, InfoFn] | None = None) -> Suite:
    """One Redis suite: sophia the reference, its time at most ``bound`` times raw's."""
    before, after = hits or (None, None)
    return Suite(key=key, title=title, unit=unit, reference="sophia", contestants=contestants,
                 targets=[Target(f"sophia time <= {bound:.2f}x raw redis.asyncio + msgpack",
                                 "time_ratio", "<=", bound, "raw")],
                 notes=NOTES, before=before, after=after)


def _raw_rows(c: _Contestants, what: str, call: Callable[[Any], Any],
              run: Callable[[Any], RunFn]) -> list[Contestant]:
    """``raw`` and ``raw_no_timeout``: ``call(client)`` on each raw client, timed by ``run``."""
    return [Contestant("raw", what, run(call(c.raw))),
            Contestant("raw_no_timeout", NO_TIMEOUT, run(call(c.raw_nt)))]


def _writes(prefix: str, batch: int) -> Callable[[Any], RunFn]:
    """``run`` over fresh keys: ``put(key)`` per op, or ``put(keys)`` of ``batch`` per op."""
    keys = _fresh_keys(prefix)

    def feed(put: Any) -> RunFn:
        async def run(ops: int, pass_no: int) -> None:
            if batch == 1:
                for k in keys(ops, pass_no):
                    await put(k)
                return
            ks = keys(ops * batch, pass_no)
            for i in range(0, len(ks), batch):
                await put(ks[i : i + batch])
        return run
    return feed


@asynccontextmanager
async def redis_get(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        c = _Contestants(stack, uuid.uuid4().hex[:8])
        await c.open("rget")
        seq = KeySequence(KEYS, settings.max_ops)
        raw_seq = KeySequence([c.raw_prefix + k for k in KEYS], settings.max_ops)
        unpack = msgpack.unpackb

        def raw_get(client: Any) -> Any:
            async def get(k: str) -> Any:
                data = await client.get(k)
                return None if data is None else unpack(data)
            return get

        def on_raw(call: Any) -> RunFn:
            return _await_each(call, raw_seq)

        yield _suite("redis_get", "Redis get of a small dict, all hits", "one get", 1.10, [
            Contestant("sophia", "await mem.get(k)  (SESSION on Redis, nothing above)",
                       _await_each(c.mem.get, seq)),
            *_raw_rows(c, "msgpack.unpackb(await redis.asyncio get(k))", raw_get, on_raw),
            Contestant("raw_bytes", "await redis.asyncio get(k)  (bytes, not decoded)",
                       on_raw(c.raw.get)),
            Contestant("aiocache", "await aiocache RedisCache.get(k)",
                       _await_each(c.aio.get, seq)),
            Contestant("cashews", "await cashews get(k)  (redis backend)",
                       _await_each(c.cashews.get,
                                   KeySequence([c.cp + k for k in KEYS], settings.max_ops))),
        ], hits=_redis_hits(c.mem))


@asynccontextmanager
async def redis_put(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        c = _Contestants(stack, uuid.uuid4().hex[:8])
        await c.open("rput")
        each = _writes("w:", 1)
        mem, aio, cashews, rp, cp, pack = c.mem, c.aio, c.cashews, c.raw_prefix, c.cp, \
            msgpack.packb

        async def sophia(k: str) -> None:
            await mem.put(k, VALUE, tier=Tier.SESSION, ttl=TTL)

        def raw_set(client: Any) -> Any:
            async def put(k: str) -> None:
                await client.set(rp + k, pack(VALUE), px=TTL * 1000)
            return put

        async def aio_set(k: str) -> None:
            await aio.set(k, VALUE, ttl=TTL)

        async def cashews_set(k: str) -> None:
            await cashews.set(cp + k, VALUE, expire=TTL)

        yield _suite("redis_put", "Redis put of a small dict (fresh keys)", "one put", 1.10, [
            Contestant("sophia", "await mem.put(k, v, tier=SESSION, ttl=3600)", each(sophia)),
            *_raw_rows(c, "await redis.asyncio set(k, msgpack.packb(v), px=3600000)",
                       raw_set, each),
            Contestant("aiocache", "await aiocache RedisCache.set(k, v, ttl=3600)",
                       each(aio_set)),
            Contestant("cashews", "await cashews set(k, v, expire=3600)", each(cashews_set)),
        ])


@asynccontextmanager
async def redis_get_many(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        c = _Contestants(stack, uuid.uuid4().hex[:8])
        await c.open("rgetmany")
        batches = [KEYS[i : i + 100] for i in range(0, len(KEYS), 100)]
        seq = KeySequence(batches, settings.max_ops)
        raw_seq = KeySequence([[c.raw_prefix + k for k in b] for b in batches],
                              settings.max_ops)
        for b in batches:
            assert len(await c.mem.get_many(b)) == 100
        cashews, cp, unpack = c.cashews, c.cp, msgpack.unpackb
        n = len(c.raw_prefix)

        def raw_many(client: Any) -> Any:
            async def get_many(keys: list[str]) -> dict[str, Any]:
                found = await client.mget(keys)
                return {k[n:]: unpack(v) for k, v in zip(keys, found, strict=True)
                        if v is not None}
            return get_many

        def on_raw(call: Any) -> RunFn:
            return _await_each(call, raw_seq)

        async def cashews_many(keys: list[str]) -> Any:
            return await cashews.get_many(*(cp + k for k in keys))

        yield _suite("redis_get_many", "Redis get_many of 100 keys, all hits",
                     "one call fetching 100 keys", 1.15, [
            Contestant("sophia", "await mem.get_many(keys)", _await_each(c.mem.get_many, seq)),
            *_raw_rows(c, "{k: msgpack.unpackb(v)} from await redis.asyncio mget(keys)",
                       raw_many, on_raw),
            Contestant("raw_bytes", "await redis.asyncio mget(keys)  (bytes, not decoded)",
                       on_raw(c.raw.mget)),
            Contestant("aiocache", "await aiocache RedisCache.multi_get(keys)",
                       _await_each(c.aio.multi_get, seq)),
            Contestant("cashews", "await cashews get_many(*keys)",
                       _await_each(cashews_many, seq)),
        ], hits=_redis_hits(c.mem))


@asynccontextmanager
async def redis_put_many(settings: Settings) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        c = _Contestants(stack, uuid.uuid4().hex[:8])
        await c.open("rputmany")
        batches = _writes("m:", 100)
        mem, aio, cashews, rp, cp, pack = c.mem, c.aio, c.cashews, c.raw_prefix, c.cp, \
            msgpack.packb

        async def sophia(ks: list[str]) -> None:
            await mem.put_many({k: VALUE for k in ks}, tier=Tier.SESSION, ttl=TTL)

        def raw_pipeline(client: Any) -> Any:
            async def put_many(ks: list[str]) -> None:
                pipe = client.pipeline(transaction=False)
                for k in ks:
                    pipe.set(rp + k, pack(VALUE), px=TTL * 1000)
                await pipe.execute()
            return put_many

        async def aio_many(ks: list[str]) -> None:
            await aio.multi_set([(k, VALUE) for k in ks], ttl=TTL)

        async def cashews_many(ks: list[str]) -> None:
            await cashews.set_many({cp + k: VALUE for k in ks}, expire=TTL)

        yield _suite("redis_put_many", "Redis put_many of 100 items (fresh keys)",
                     "one call storing 100 items", 1.15, [
            Contestant("sophia", "await mem.put_many({k: v, ...}, tier=SESSION, ttl=3600)",
                       batches(sophia)),
            *_raw_rows(c, "redis.asyncio pipeline(transaction=False) of 100 SET k msgpack(v) "
                       "PX 3600000", raw_pipeline, batches),
            Contestant("aiocache", "await aiocache RedisCache.multi_set(pairs, ttl=3600)",
                       batches(aio_many)),
            Contestant("cashews", "await cashews set_many(mapping, expire=3600)",
                       batches(cashews_many)),
        ])


REDIS_SUITES: dict[str, SuiteFactory] = {
    "redis_get": redis_get,
    "redis_put": redis_put,
    "redis_get_many": redis_get_many,
    "redis_put_many": redis_put_many,
}
