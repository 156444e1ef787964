"""What an in-process put and get execute, counted in Python bytecodes: a figure that does not
move with the machine's speed, beside the anchors of ``run.py``'s L1 suites.

    python benchmarks/put_ops.py [--ops N] [--out benchmarks/results]

``run.py`` times the same operations; on the shared VM its figures move by 15-40 % between
runs (and the machine's speed by 2-3x between days), which hides a change of a few percent.
This script runs each contestant's operation ``--ops`` times under ``sys.settrace`` with
opcode events and reports, per operation, the bytecodes executed and the Python functions
entered, from the call that ``run.py`` awaits down (the event loop included where the
operation suspends). Work done in C (dict and ``OrderedDict`` operations, msgpack, ``asyncio``'s C
task) is not counted, so the figures compare Python-level work, not time: use them to judge
a change to sophia's put or get path, and ``run.py`` for the time it takes. The counts repeat
exactly from run to run, except aiocache's default (a task and a timer per call: what runs
depends on the event loop's timing, a few percent either way).

The contestants are those of ``run.py``'s ``l1_put`` and ``l1_get`` suites, set up the same
way (``_suites._open_l1_contestants``): every key present, the same value. Writes
``put_ops_latest.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from _suites import L1_KEYS, L1_VALUE, _open_l1_contestants, l1_setters
from hit_ratio import _git_commit

REPO = Path(__file__).resolve().parent.parent

Op = Callable[[str], Awaitable[Any]]


class _Counter:
    """Counts opcodes by function while installed (``sys.settrace`` with opcode events)."""

    def __init__(self) -> None:
        self.opcodes: Counter[str] = Counter()
        self.calls = 0

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            self.opcodes[f"{Path(code.co_filename).name}:{code.co_qualname}"] += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.calls += 1
        frame.f_trace_opcodes = True
        return self._local

    async def count(self, op: Op, keys: list[str]) -> None:
        sys.settrace(self._global)
        try:
            for key in keys:
                await op(key)
        finally:
            sys.settrace(None)


async def measure(ops: int) -> tuple[list[tuple[str, str, float, float]], Counter[str], int]:
    keys = [L1_KEYS[i % len(L1_KEYS)] for i in range(ops)]
    rows: list[tuple[str, str, float, float]] = []
    sophia_put = Counter[str]()
    async with AsyncExitStack() as stack:
        mem, lru, cashews, aio_default, aio_plain = await _open_l1_contestants(stack, "ops")

        put, lru_set, cashews_set, aio_default_set, aio_plain_set = l1_setters(
            mem, lru, cashews, aio_default, aio_plain)

        async def lru_get(key: str) -> Any:
            return lru.get(key)

        contestants: list[tuple[str, str, Op]] = [
            ("put", "sophia", put), ("put", "cachetools", lru_set),
            ("put", "cashews", cashews_set), ("put", "aiocache", aio_default_set),
            ("put", "aiocache_no_timeout", aio_plain_set),
            ("get", "sophia", mem.get), ("get", "cachetools", lru_get),
            ("get", "cashews", cashews.get), ("get", "aiocache", aio_default.get),
            ("get", "aiocache_no_timeout", aio_plain.get),
        ]
        for kind, name, op in contestants:
            for key in keys[:100]:  # warm up: caches and specialised bytecodes settle
                await op(key)
            counter = _Counter()
            await counter.count(op, keys)
            rows.append((kind, name, counter.opcodes.total() / ops, counter.calls / ops))
            if kind == "put" and name == "sophia":
                sophia_put = counter.opcodes
        # The value must be there afterwards: each contestant did store it.
        assert await mem.get(keys[-1]) == L1_VALUE
    return rows, sophia_put, ops


def report(rows: list[tuple[str, str, float, float]], breakdown: Counter[str],
           ops: int) -> str:
    lines = [
        "# Bytecodes per in-process put and get (`benchmarks/put_ops.py`)",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC at commit {_git_commit()}; "
        f"python {platform.python_version()}; {ops:,} operations per contestant, each key "
        f"present, value `{L1_VALUE!r}`.",
        "",
        "Python bytecodes executed and Python functions entered per operation, each "
        "contestant called as `run.py` calls it (an `async def` around the puts and around "
        "cachetools' get; the others' own `get`). Work in C is not counted: a comparison "
        "of Python-level work, not of time.",
        "",
    ]
    for kind in ("put", "get"):
        ref = next(r[2] for r in rows if r[0] == kind and r[1] == "sophia")
        lines += [f"## {kind}", "",
                  "| contestant | bytecodes / op | Python calls / op | vs sophia |",
                  "|---|---:|---:|---:|"]
        for k, name, opcodes, calls in rows:
            if k == kind:
                lines.append(f"| {name} | {opcodes:,.1f} | {calls:,.2f} | "
                             f"{opcodes / ref:.2f}x |")
        lines.append("")
    lines += ["## Where sophia's put spends them", "",
              "| function | bytecodes / put |", "|---|---:|"]
    for name, count in breakdown.most_common():
        if count / ops >= 0.5:
            lines.append(f"| `{name}` | {count / ops:,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2_000, help="operations per contestant")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.ops < 1:
        parser.error("--ops must be at least 1")
    text = report(*asyncio.run(measure(args.ops)))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "put_ops_latest.md").write_text(text)


if __name__ == "__main__":
    main()
