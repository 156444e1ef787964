"""SESSION under a service's load (issue 11): many concurrent callers on one event loop, each
running a fixed sequence of small gets (80 %) and puts (20 %), against the real Redis.

    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/bench_load.py           # full run
    python benchmarks/bench_load.py --callers 100 --total-ops 2000 --rounds 1   # smoke test
    python benchmarks/bench_load.py --connections 1 2 4                          # link counts

Contestants, side by side in one process and loop, interleaved round by round:

* ``sophia_memory`` — ``Memory`` with SESSION on Redis (``redis://...``): the auto-pipeline
  (every command of a loop iteration written together on shared connections);
* ``redis.asyncio`` with ``BlockingConnectionPool(max_connections=100)`` (the usual fix for
  "Too many connections"), hiredis installed;
* ``coredis`` 6.9 with a pool of 100;
* ``valkey-glide`` 2.x (Rust core, one multiplexed connection).

Each caller runs ``total_ops / callers`` operations (40 at 1,000 callers, 4 at 10,000 by
default) on a keyspace of 10,000 keys (``--keys``; a session key per user) holding 64-byte
values (sophia_memory's values are 64-byte ``bytes`` through its codec). Throughput is all
operations over the wall time from the first caller's start to the last one's end; latency
is per call (p50, p99), time spent waiting for the loop included, as a caller would see it.
Errors (exceptions) and misses (a GET finding nothing: every key holds a value) are counted.

Then four processes share the Redis, each a ``Memory`` with key tracking on (an in-process
tier above SESSION, so every put by one process invalidates the others' copies), each with
``callers / 4`` callers on the same keys. Results go to
``benchmarks/results/load_latest.{json,md}`` with the command, versions and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from _report import environment

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = [10_000]  # the keyspace (--keys)
VALUE = bytes(range(64))
GET_SHARE = 0.8
CALL_TIMEOUT = [2.0]  # sophia_memory's deadline per call: the library's default unless set

Op = tuple[bool, str]  # (is_get, key suffix)
Client = tuple[Callable[[str], Awaitable[Any]], Callable[[str, bytes], Awaitable[Any]],
               Callable[[], Awaitable[None]]]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def workload(callers: int, per_caller: int, seed: int) -> list[list[Op]]:
    """Each caller's operations: 80 % gets, 20 % puts, uniform keys, fixed by ``seed``."""
    plans = []
    for c in range(callers):
        rng = random.Random(seed * 1_000_003 + c)
        plans.append([(rng.random() < GET_SHARE, f"k{rng.randrange(KEYS[0])}")
                      for _ in range(per_caller)])
    return plans


async def drive(get: Callable[[str], Awaitable[Any]], put: Callable[[str, bytes], Awaitable[Any]],
                plans: list[list[Op]]) -> dict[str, Any]:
    """Run every caller at once; wall time, per-call latencies and errors."""
    gets: list[int] = []
    puts: list[int] = []
    errors: list[str] = []
    misses = 0
    clock = time.perf_counter_ns

    async def caller(plan: list[Op]) -> None:
        nonlocal misses
        for is_get, key in plan:
            t0 = clock()
            try:
                if is_get:
                    if await get(key) is None:  # every key holds a value: a miss is a failure
                        misses += 1
                else:
                    await put(key, VALUE)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            (gets if is_get else puts).append(clock() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(p) for p in plans))
    wall = time.perf_counter() - t0
    every = sorted(gets + puts)
    n = len(every)
    return {"ops": n, "wall_s": wall, "ops_per_s": n / wall,
            "p50_ms": _pct(every, 0.50), "p99_ms": _pct(every, 0.99),
            "get_p99_ms": _pct(sorted(gets), 0.99), "put_p99_ms": _pct(sorted(puts), 0.99),
            "errors": len(errors), "misses": misses,
            "first_error": errors[0] if errors else None}


async def populate(put: Callable[[str, bytes], Awaitable[Any]]) -> None:
    """Every key holds a value before the clock starts (500 at a time: within every
    client's limits)."""
    for start in range(0, KEYS[0], 500):
        await asyncio.gather(*(put(f"k{i}", VALUE)
                               for i in range(start, min(KEYS[0], start + 500))))


def _pct(data: list[int], q: float) -> float:
    return data[min(len(data) - 1, int(len(data) * q))] / 1e6 if data else float("nan")


# -- the contestants ------------------------------------------------------------------------

def _where(url: str) -> tuple[str, int, int]:
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return parts.hostname or "127.0.0.1", parts.port or 6379, db


def open_memory(url: str, prefix: str, connections: int = 2, tracking: bool = False) -> Any:
    """A Memory with SESSION on Redis and no other remote tier; with ``tracking``, the
    in-process L0 tier above it keeps copies that other processes' writes invalidate."""
    from sophia_memory import Memory, Tier

    sep = "&" if "?" in url else "?"
    off: dict[Tier, Any] = {Tier.CORTEX: None, Tier.PERSISTENT: None, Tier.VECTOR: None,
                            Tier.WORKFLOW: None}
    if not tracking:
        off[Tier.GPU] = None  # nothing above SESSION: every get goes to Redis
    return Memory.open(tiers={Tier.SESSION: f"{url}{sep}prefix={prefix}&connections="
                                            f"{connections}&tracking={int(tracking)}", **off},
                       call_timeout=CALL_TIMEOUT[0])


def memory_client(mem: Any) -> Client:
    from sophia_memory import Tier

    async def put(key: str, value: bytes) -> None:
        await mem.put(key, value, tier=Tier.SESSION)

    async def get(key: str) -> Any:
        return await mem.get(key)

    return get, put, mem.close


async def sophia(url: str, prefix: str, connections: int = 2) -> Client:
    return memory_client(open_memory(url, prefix, connections))


async def redis_blocking(url: str, prefix: str) -> Client:
    import redis.asyncio as aioredis

    host, port, db = _where(url)
    pool = aioredis.BlockingConnectionPool(host=host, port=port, db=db, max_connections=100,
                                           timeout=60)
    client = aioredis.Redis(connection_pool=pool)

    async def put(key: str, value: bytes) -> None:
        await client.set(prefix + key, value)

    async def get(key: str) -> Any:
        return await client.get(prefix + key)

    async def close() -> None:
        await client.aclose()
        await pool.aclose()

    return get, put, close


async def coredis_pool(url: str, prefix: str) -> Client:
    import coredis

    host, port, db = _where(url)
    client: Any = coredis.Redis(host=host, port=port, db=db, max_connections=100,
                                pool_timeout=60)
    await client.__aenter__()

    async def put(key: str, value: bytes) -> None:
        await client.set(prefix + key, value)

    async def get(key: str) -> Any:
        return await client.get(prefix + key)

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return get, put, close


async def glide(url: str, prefix: str) -> Client:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    host, port, db = _where(url)
    client = await GlideClient.create(GlideClientConfiguration(
        [NodeAddress(host, port)], database_id=db, request_timeout=60_000))

    async def put(key: str, value: bytes) -> None:
        await client.set(prefix + key, value)

    async def get(key: str) -> Any:
        return await client.get(prefix + key)

    return get, put, client.close


# -- one process ----------------------------------------------------------------------------

def contestants(url: str, prefix: str, links: list[int]) -> dict[str, Callable[[], Any]]:
    found: dict[str, Callable[[], Any]] = {}
    for n in links:
        name = "sophia_memory" if n == links[0] else f"sophia_memory ({n} connections)"
        found[name] = lambda n=n: sophia(url, prefix + "s:", n)  # type: ignore[misc]
    found["redis.asyncio BlockingConnectionPool(100)"] = lambda: redis_blocking(url, prefix + "r:")
    found["coredis pool 100"] = lambda: coredis_pool(url, prefix + "c:")
    found["valkey-glide"] = lambda: glide(url, prefix + "g:")
    return found


async def run_in_process(url: str, callers_list: list[int], *, total_ops: int, rounds: int,
                         links: list[int], prefix: str) -> list[dict[str, Any]]:
    results = []
    makers = contestants(url, prefix, links)
    available: dict[str, Client] = {}
    for name, make in makers.items():
        try:
            client = await make()
            get, put, _ = client
            await populate(put)
            available[name] = client
        except Exception as exc:  # a contestant that is not installed is said, not hidden
            progress(f"  {name}: not run ({type(exc).__name__}: {exc})")
    try:
        for callers in callers_list:
            per_caller = max(1, total_ops // callers)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in available}
            for r in range(rounds):
                plans = workload(callers, per_caller, seed=r)
                for name, (get, put, _) in available.items():
                    res = await drive(get, put, plans)
                    runs[name].append(res)
                    progress(f"  {callers:>6} callers x {per_caller:>3} ops, round {r + 1}/"
                             f"{rounds}: {name:<44} {res['ops_per_s']:>9,.0f} ops/s  p50 "
                             f"{res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:8.2f} ms  errors "
                             f"{res['errors']}")
            results.append(summarise(callers, per_caller, runs))
    finally:
        for _, _, close in available.values():
            await close()
    return results


def summarise(callers: int, per_caller: int,
              runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median of the rounds per contestant (the round with the median throughput gives the
    latencies), errors summed over all rounds."""
    rows = {}
    for name, rs in runs.items():
        mid = sorted(rs, key=lambda x: x["ops_per_s"])[len(rs) // 2]
        rows[name] = {"ops_per_s": round(statistics.median(x["ops_per_s"] for x in rs)),
                      "p50_ms": round(mid["p50_ms"], 3), "p99_ms": round(mid["p99_ms"], 3),
                      "get_p99_ms": round(mid["get_p99_ms"], 3),
                      "put_p99_ms": round(mid["put_p99_ms"], 3),
                      "errors": sum(x["errors"] for x in rs),
                      "misses": sum(x["misses"] for x in rs),
                      "ops": sum(x["ops"] for x in rs),
                      "first_error": next((x["first_error"] for x in rs if x["first_error"]),
                                          None),
                      "rounds_ops_per_s": [round(x["ops_per_s"]) for x in rs]}
    ours = rows.get("sophia_memory", {}).get("ops_per_s")
    ratios = {}
    if ours:
        for name, row in rows.items():
            if not name.startswith("sophia_memory"):
                ratios[name] = round(ours / row["ops_per_s"], 2)
    return {"callers": callers, "ops_per_caller": per_caller, "contestants": rows,
            "sophia_memory_throughput_over": ratios}


# -- four processes with tracking on ----------------------------------------------------------

def _child(job: tuple[str, str, int, int, int, float, int], ready: Any, go: Any,
           out: Any) -> None:
    """One process of the tracking run: ``job`` is (url, prefix, callers, operations per
    caller, index, call timeout, keys)."""
    url, prefix, callers, per_caller, index, CALL_TIMEOUT[0], KEYS[0] = job

    async def main() -> dict[str, Any]:
        from sophia_memory import Tier

        mem = open_memory(url, prefix, 2, tracking=True)
        get, put, close = memory_client(mem)
        try:
            await populate(put)
            # the run measures coherent copies: wait until the tracking link is up
            tracking = await mem._core.by_tier[Tier.SESSION].backend.wait_tracking(10.0)
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            res = await drive(get, put, workload(callers, per_caller, seed=100 + index))
            backend_stats = mem.stats()["tiers"]["SESSION"]["backend_stats"]
            res["tracking"] = tracking
            res["invalidations"] = backend_stats.get("invalidations", 0)
            return res
        finally:
            await close()

    out.put(asyncio.run(main()))


def run_processes(url: str, callers: int, total_ops: int, prefix: str,
                  processes: int = 4) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    per_process = max(1, callers // processes)
    per_caller = max(1, total_ops // callers)
    go = ctx.Event()
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(processes)]
    procs = [ctx.Process(target=_child, args=((url, prefix, per_process, per_caller, i,
                                               CALL_TIMEOUT[0], KEYS[0]),
                                              readies[i], go, out)) for i in range(processes)]
    for p in procs:
        p.start()
    for ev in readies:
        if not ev.wait(120):
            raise RuntimeError("a benchmark process did not start")
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    ops = sum(r["ops"] for r in results)
    return {"processes": processes, "callers_per_process": per_process,
            "ops_per_caller": per_caller, "ops": ops, "wall_s": round(wall, 3),
            "ops_per_s": round(ops / wall),
            "p50_ms_per_process": [round(r["p50_ms"], 3) for r in results],
            "p99_ms_per_process": [round(r["p99_ms"], 3) for r in results],
            "errors": sum(r["errors"] for r in results),
            "misses": sum(r["misses"] for r in results),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
            "tracking_live": [r["tracking"] for r in results],
            "invalidations": [r["invalidations"] for r in results]}


# -- results --------------------------------------------------------------------------------

def render(env: dict[str, Any], results: list[dict[str, Any]],
           multi: dict[str, Any] | None) -> str:
    v = env["versions"]
    m = env["machine"]
    lines = ["# SESSION under load (benchmarks/bench_load.py)", "",
             f"Command: `{env['command']}`  ", f"Date (UTC): {env['date_utc']}  ",
             f"Machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs, "
             f"{m['memory_gib']} GiB, {m['platform']}; load average at start "
             f"{m['load_average_at_start']}  ",
             "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "  ",
             f"Redis: {env['redis']}", "",
             "Each caller runs its own fixed sequence of 80 % GET / 20 % SET of 64-byte values "
             f"on {env['keys']:,} keys (uniform); all callers start together on one event loop. "
             "Throughput: all operations / wall time (median of the rounds); p50/p99: per "
             "call, from the median round. Errors (exceptions) and misses (a GET that found "
             "nothing: every key holds a value, so a miss is a read that failed quietly, e.g. "
             "past its deadline): "
             f"summed over all rounds. sophia_memory's call_timeout: {env['call_timeout']} s.",
             ""]
    for res in results:
        lines += [f"## {res['callers']:,} concurrent callers x {res['ops_per_caller']} "
                  "operations", "",
                  "| contestant | ops/s | p50 ms | p99 ms | p99 GET / SET ms | errors | misses "
                  "| sophia_memory's throughput over it |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, row in res["contestants"].items():
            ratio = res["sophia_memory_throughput_over"].get(name)
            lines.append(f"| {name} | {row['ops_per_s']:,} | {row['p50_ms']:.2f} | "
                         f"{row['p99_ms']:.2f} | {row['get_p99_ms']:.1f} / "
                         f"{row['put_p99_ms']:.1f} | {row['errors']} | {row['misses']} | "
                         f"{'' if ratio is None else f'{ratio:.2f}x'} |")
            if row["first_error"]:
                lines.append(f"|  first error: {row['first_error']} | | | | | | | |")
        lines.append("")
    if multi is not None:
        lines += [f"## {multi['processes']} processes sharing one Redis, tracking on", "",
                  f"{multi['processes']} x {multi['callers_per_process']:,} callers x "
                  f"{multi['ops_per_caller']} operations: {multi['ops']:,} operations in "
                  f"{multi['wall_s']} s = **{multi['ops_per_s']:,} ops/s** in all; errors "
                  f"{multi['errors']}, misses {multi['misses']}; p50 per process "
                  f"{multi['p50_ms_per_process']} ms, "
                  f"p99 {multi['p99_ms_per_process']} ms; tracking live "
                  f"{multi['tracking_live']}; invalidations received per process "
                  f"{multi['invalidations']}.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("REDIS_URL",
                                                        "redis://127.0.0.1:6379/0"))
    parser.add_argument("--callers", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--total-ops", type=int, default=40_000,
                        help="operations per run, shared by the callers (default 40,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, nargs="+", default=[2],
                        help="sophia_memory's shared connections (the first is the headline)")
    parser.add_argument("--processes", type=int, default=4,
                        help="processes of the tracking run (0: skip it)")
    parser.add_argument("--keys", type=int, default=10_000,
                        help="keyspace (default 10,000: a session key per user; 1,000 makes "
                        "every key hot, contended by concurrent puts and gets)")
    parser.add_argument("--call-timeout", type=float, default=2.0,
                        help="sophia_memory's deadline per call (default: the library's, 2 s)")
    parser.add_argument("--name", default="load_latest")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


async def check_redis(url: str) -> str | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        info = await client.info("server")
        return f"{info['redis_version']} at {url}"
    except Exception as exc:
        progress(f"bench_load: Redis at {url} is not reachable ({exc}); skipped")
        return None
    finally:
        await client.aclose()


async def cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        names = [n async for n in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(names), 1000):
            await client.delete(*names[i:i + 1000])
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    CALL_TIMEOUT[0] = args.call_timeout
    KEYS[0] = args.keys
    redis_version = asyncio.run(check_redis(args.url))
    if redis_version is None:
        return 0
    prefix = f"smload:{uuid.uuid4().hex[:8]}:"
    t0 = time.perf_counter()

    async def in_loop() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        settings = SimpleNamespace(mode="load", callers=args.callers,
                                   total_ops=args.total_ops, rounds=args.rounds,
                                   connections=args.connections, processes=args.processes)
        env = environment(settings, {})  # type: ignore[arg-type]
        return env, await run_in_process(args.url, args.callers, total_ops=args.total_ops,
                                         rounds=args.rounds, links=args.connections,
                                         prefix=prefix)

    try:
        env, results = asyncio.run(in_loop())
        multi = None
        if args.processes:
            callers = args.callers[0]
            progress(f"  {args.processes} processes x {callers // args.processes} callers, "
                     "tracking on ...")
            multi = run_processes(args.url, callers, args.total_ops, prefix + "m:",
                                  args.processes)
            progress(f"  {args.processes} processes: {multi['ops_per_s']:,} ops/s, errors "
                     f"{multi['errors']}, tracking {multi['tracking_live']}")
    finally:
        asyncio.run(cleanup(args.url, prefix))
    env["redis"] = redis_version
    env["call_timeout"] = args.call_timeout
    env["keys"] = args.keys
    for name in ("coredis", "valkey-glide", "redis", "hiredis"):
        try:
            from importlib.metadata import version

            env["versions"][name] = version(name)
        except Exception:
            env["versions"][name] = None
    env["elapsed_s"] = round(time.perf_counter() - t0, 1)
    text = render(env, results, multi)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps(
            {**env, "results": results, "processes": multi}, indent=2) + "\n")
        (RESULTS / f"{args.name}.md").write_text(text + "\n")
        progress(f"wrote {RESULTS / args.name}.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
