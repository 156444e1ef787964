"""What each eviction policy costs the in-process tier: CPU time per request and memory per key.

    python benchmarks/policy_cost.py [--requests N] [--capacity C] [--out benchmarks/results]

The workload: a BoundedStore of ``--capacity`` items (100,000, the SESSION tier's default
bound) driven by ``--requests`` gets, every other one of a new key and the rest of keys drawn
from a Pareto distribution over those seen (a miss inserts); so about half the requests
insert and, once the store is full, evict. Time per request is the whole loop's time divided
by the requests (the median of three runs, the policies interleaved); it includes the reads'
deferred work, which policies that buffer reads do on the next write. Memory per key is what
``tracemalloc`` sees the store and its policy hold once full, divided by the keys held.

Writes ``policy_cost_latest.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from hit_ratio import _git_commit  # the script directory, benchmarks/, is on the path
from sophia_memory.policies import DEFAULT_POLICY, POLICY_NAMES, BoundedStore, policy_from_name
from sophia_memory.tiers import Record

REPO = Path(__file__).resolve().parent.parent


def workload(requests: int, seed: int = 1) -> list[str]:
    rnd = random.Random(seed)
    out: list[str] = []
    for i in range(requests):
        if i % 2 == 0:
            out.append(f"key-{i}")
        else:
            out.append(f"key-{2 * (int(rnd.paretovariate(1.0)) % (i // 2 + 1))}")
    return out


def replay(policy: str, keys: list[str], capacity: int) -> BoundedStore:
    store = BoundedStore(capacity, None, policy_from_name(policy))
    rec = Record(None, size=1)
    peek, put = store.peek, store.set
    for key in keys:
        if peek(key) is None:
            put(key, rec)
    return store


def measure(requests: int, capacity: int) -> dict[str, dict[str, float]]:
    keys = workload(requests)
    times: dict[str, list[float]] = {name: [] for name in POLICY_NAMES}
    for _ in range(3):
        for name in POLICY_NAMES:
            gc.collect()
            t0 = time.perf_counter()
            replay(name, keys, capacity)
            times[name].append((time.perf_counter() - t0) / requests * 1e6)
    out: dict[str, dict[str, float]] = {}
    for name in POLICY_NAMES:
        gc.collect()
        tracemalloc.start()
        store = replay(name, keys, capacity)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[name] = {"us_per_request": statistics.median(times[name]),
                     "bytes_per_key": held / max(1, len(store)), "keys": len(store)}
        del store
    return out


def render(data: dict[str, dict[str, float]], args: argparse.Namespace, elapsed: float) -> str:
    lru = data["lru"]
    lines = ["# Eviction policies: cost", "",
             f"`python benchmarks/policy_cost.py --requests {args.requests} --capacity "
             f"{args.capacity}` - {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
             f"commit {_git_commit()}, Python {platform.python_version()}, "
             f"{platform.machine()} {platform.system()} {os.cpu_count()} CPUs; "
             f"{elapsed:.0f} s. Workload and method: the script's docstring. Default policy: "
             f"`{DEFAULT_POLICY}`.", "",
             "| policy | us per request | x LRU | bytes per key held | x LRU |",
             "|---|---:|---:|---:|---:|"]
    for name, row in sorted(data.items(), key=lambda kv: kv[1]["us_per_request"]):
        lines.append(f"| {name} | {row['us_per_request']:.2f} | "
                     f"{row['us_per_request'] / lru['us_per_request']:.1f} | "
                     f"{row['bytes_per_key']:,.0f} | "
                     f"{row['bytes_per_key'] / lru['bytes_per_key']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.capacity < 1:
        parser.error("--requests and --capacity must be at least 1")
    t0 = time.perf_counter()
    data = measure(args.requests, args.capacity)
    text = render(data, args, time.perf_counter() - t0)
    sys.stdout.write(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy_cost_latest.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
