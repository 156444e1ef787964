"""Resident memory of a tight put loop over a bounded SESSION (issue 17, "Bounded memory").

    python benchmarks/spill_memory.py                       # 200,000 puts, SESSION of 20,000
    python benchmarks/spill_memory.py --puts 50000 --tracemalloc

Puts ``--puts`` values of about ``--value-bytes`` to a SESSION bounded to ``--session-items``
in a loop that never yields on its own (each ``await mem.put(...)``; only the engine's
backpressure can make it wait). Every evicted item must spill to CORTEX (SQLite in a temporary
directory). Prints the peak number of items waiting to spill, the growth of resident memory
over the loop (``/proc/self/statm`` sampled every 1,000 puts, and ``ru_maxrss``), optionally
the peak of Python allocations (tracemalloc, slower), and how long the loop and the final
``flush()`` took. The SESSION itself holds ``--session-items`` values, so part of the growth is
expected; ``session_estimate`` is that part, from the items' counted bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from sophia_memory import ManualClock, Memory, Tier

MiB = 2**20


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak so far is the best there is
        return maxrss_bytes()


def maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def spill_section(mem: Memory) -> dict[str, Any]:
    """``stats()["spill"]`` where the engine has it, else the old ``stats()["spilling"]``."""
    stats = mem.stats()
    section = stats.get("spill")
    if isinstance(section, dict):
        return section
    return {"items": int(stats.get("spilling", 0))}


async def measure(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    mem = Memory.open(path=str(path), clock=ManualClock(),
                      tiers={Tier.GPU: None,
                             Tier.SESSION: f"memory://?max_items={args.session_items}"})
    pad = "x" * max(0, args.value_bytes - 12)
    try:
        await mem.put("warm-up", pad, tier=Tier.SESSION)
        await mem.flush()
        if args.tracemalloc:
            tracemalloc.start()
        base_rss, base_max = rss_bytes(), maxrss_bytes()
        peak_rss, peak_items, peak_bytes = base_rss, 0, 0
        t0 = time.perf_counter()
        for i in range(args.puts):
            await mem.put(f"k{i}", f"{i:011} {pad}", tier=Tier.SESSION)
            if i % 1000 == 999:
                peak_rss = max(peak_rss, rss_bytes())
                section = spill_section(mem)
                peak_items = max(peak_items, int(section["items"]))
                peak_bytes = max(peak_bytes, int(section.get("bytes", 0)))
        loop_s = time.perf_counter() - t0
        section = spill_section(mem)
        peak_items = max(peak_items, int(section["items"]), int(section.get("peak_items", 0)))
        peak_rss = max(peak_rss, rss_bytes())
        traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
        if args.tracemalloc:
            tracemalloc.stop()
        session = mem.stats()["tiers"]["SESSION"]["backend_stats"]
        t1 = time.perf_counter()
        await mem.flush()
        flush_s = time.perf_counter() - t1
        left = int(spill_section(mem)["items"])
    finally:
        t2 = time.perf_counter()
        await mem.close()
        close_s = time.perf_counter() - t2
    return {
        "puts": args.puts, "session_items": args.session_items,
        "value_bytes": args.value_bytes,
        "spill_bound_items": section.get("max_items"),
        "spill_bound_bytes": section.get("max_bytes"),
        "peak_spill_items": peak_items, "peak_spill_bytes": peak_bytes or None,
        "rss_growth_mib": round((peak_rss - base_rss) / MiB, 1),
        "maxrss_growth_incl_flush_mib": round((maxrss_bytes() - base_max) / MiB, 1),
        "tracemalloc_peak_mib": None if traced is None else round(traced / MiB, 1),
        "session_estimate_mib": round(int(session.get("bytes", 0)) / MiB, 1),
        "loop_s": round(loop_s, 2), "flush_s": round(flush_s, 2),
        "close_s": round(close_s, 2), "left_in_spill_buffer_after_flush": left,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=200_000)
    parser.add_argument("--session-items", type=int, default=20_000)
    parser.add_argument("--value-bytes", type=int, default=1000)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace Python allocations (slower)")
    args = parser.parse_args(argv)
    for name in list(os.environ):
        if name.startswith("SOPHIA_MEMORY_"):
            del os.environ[name]  # measure the configuration described here, nothing else
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args, Path(tmp) / "spill.db"))
    print(f"{result['puts']} puts over a {result['session_items']}-item SESSION: peak "
          f"{result['peak_spill_items']} items waiting to spill (bound "
          f"{result['spill_bound_items']}), resident memory +{result['rss_growth_mib']} MiB "
          f"(SESSION itself ~{result['session_estimate_mib']} MiB), loop {result['loop_s']} s, "
          f"flush {result['flush_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
