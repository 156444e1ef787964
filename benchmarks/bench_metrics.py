"""What Prometheus metrics cost a hit: the in-process get with metrics off and on, side by side.

    python benchmarks/bench_metrics.py [--rounds 11] [--ops 200000]

Two memories with the same default tiers, one registered with ``sophia_memory.metrics``; rounds
alternate between them and the medians are compared. Writes
``benchmarks/results/metrics_latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from sophia_memory import Memory, Tier, __version__
from sophia_memory.metrics import register

RESULTS = Path(__file__).parent / "results"
KEYS = [f"k{i}" for i in range(500)]
VALUE = {"cart": [1, 2], "user": "u-42", "active": True}


async def _round(mem: Memory, ops: int) -> float:
    get = mem.get
    keys = KEYS
    n = len(keys)
    t0 = time.perf_counter()
    for i in range(ops):
        await get(keys[i % n])
    return (time.perf_counter() - t0) / ops


async def main(rounds: int, ops: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        async with Memory.open(path=f"{tmp}/off.db") as off, \
                Memory.open(path=f"{tmp}/on.db") as on:
            registry = CollectorRegistry()
            register(on, registry)
            for mem in (off, on):
                for k in KEYS:
                    await mem.put(k, VALUE, tier=Tier.SESSION)
            times: dict[str, list[float]] = {"off": [], "on": []}
            for r in range(rounds):
                for name, mem in (("off", off), ("on", on)) if r % 2 else (("on", on),
                                                                           ("off", off)):
                    times[name].append(await _round(mem, ops))
                print(f"round {r + 1}/{rounds}", file=sys.stderr)
            scraped = len(generate_latest(registry))
    off_us = statistics.median(times["off"]) * 1e6
    on_us = statistics.median(times["on"]) * 1e6
    return "\n".join([
        "# What metrics cost an in-process hit",
        "",
        f"- command: `python benchmarks/bench_metrics.py --rounds {rounds} --ops {ops}`",
        f"- date (UTC): {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- python {platform.python_version()}, sophia-memory {__version__}, "
        f"{platform.platform()}",
        "",
        "| memory | median per get (hit) |",
        "|---|---:|",
        f"| metrics off | {off_us:.3f} µs |",
        f"| metrics on (registered, scraped once: {scraped:,} bytes) | {on_us:.3f} µs |",
        f"| difference | {on_us - off_us:+.3f} µs |",
        "",
        "Rounds alternate between the two memories; medians over rounds.",
        "",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--ops", type=int, default=200_000)
    args = parser.parse_args()
    report = asyncio.run(main(args.rounds, args.ops))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics_latest.md").write_text(report)
    print(report)
