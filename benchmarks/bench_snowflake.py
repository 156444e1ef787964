"""The Snowflake backend's write paths on the emulator (fakesnow on DuckDB), side by side.

    .venv/bin/python benchmarks/bench_snowflake.py [--items 10000] [--row-sample 500]
        [--put-sample 100] [--concurrent 100] [--rounds 3]

* ``put_many`` of ``--items`` records through the backend: a session-scoped staging table
  loaded with ``write_pandas`` and one ``MERGE``.
* Row-by-row: what code without the backend would do, one ``INSERT`` per row through the
  connector (autocommit: one commit per row), and the backend's own ``put`` awaited one after
  another (one ``MERGE`` each, which the emulator runs as several DuckDB statements). A
  row-by-row run of 10,000 rows takes over a minute on the emulator, so these are measured on
  ``--row-sample`` / ``--put-sample`` rows and extrapolated per row to ``--items`` (the output
  says so).
* Group commit: ``--concurrent`` single ``put`` calls started together; counts the statements
  that reached the connector (each DML statement commits by itself in autocommit mode) and the
  writer's batches.

Everything runs against the emulator, so absolute times say nothing about a real account
(where each statement is a network round trip of tens of milliseconds: the ratios of
statements matter more there, not less). Results go to
``benchmarks/results/snowflake_latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.snowflake_shim: the emulator with VECTOR support

from fakesnow.cursor import FakeSnowflakeCursor  # noqa: E402
from tests.snowflake_shim import emulated_snowflake  # noqa: E402

from sophia_memory import Tier  # noqa: E402
from sophia_memory.backends import parse_url  # noqa: E402
from sophia_memory.backends.sql import open_snowflake  # noqa: E402
from sophia_memory.backends.sql.snowflake import SnowflakeBackend  # noqa: E402
from sophia_memory.codecs import MsgpackCodec  # noqa: E402
from sophia_memory.config import MemoryConfig  # noqa: E402
from sophia_memory.tiers import Record  # noqa: E402

URL = "snowflake://bench:pw@bench-acct/BENCHDB/SOPHIA_AI_MEMORY"
PACKAGES = ("sophia-memory", "snowflake-connector-python", "fakesnow", "duckdb", "sqlglot",
            "pandas", "pyarrow", "msgpack")


@contextmanager
def counting_executions() -> Iterator[list[int]]:
    """Counts every ``cursor.execute`` that reaches the (emulated) connector."""
    counter = [0]
    original = FakeSnowflakeCursor.execute

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return original(self, *args, **kwargs)

    FakeSnowflakeCursor.execute = execute  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        FakeSnowflakeCursor.execute = original  # type: ignore[method-assign]


def records(n: int, tag: str) -> dict[str, Record]:
    codec = MsgpackCodec()
    out = {}
    for i in range(n):
        payload = codec.encode({"user": i, "tag": tag, "cart": [i, i + 1, i + 2]})
        out[f"{tag}:{i}"] = Record(payload, size=len(payload), created_at=time.time())
    return out


def open_table(table: str) -> SnowflakeBackend:
    backend = open_snowflake(parse_url(f"{URL}?table={table}"), Tier.PERSISTENT, MemoryConfig())
    assert isinstance(backend, SnowflakeBackend)
    return backend


async def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def bench_put_many(items: int, round_no: int) -> tuple[float, int, int]:
    backend = open_table(f"BENCH_PUT_MANY_{round_no}")
    try:
        await backend.put("warm-up", records(1, "w")["w:0"])  # table exists before timing
        data = records(items, f"r{round_no}")
        with counting_executions() as executed:
            seconds = await timed(lambda: backend.put_many(data))
        sample = list(data)[:: max(1, items // 100)]
        found = await backend.get_many(sample, 0.0)
        assert len(found) == len(sample), "put_many lost rows"
        return seconds, executed[0], backend.engine.bulk_loads
    finally:
        await backend.close()


async def bench_row_by_row_sql(rows: int, round_no: int) -> float:
    """One INSERT per row through the connector, as code without the backend would write."""
    backend = open_table(f"BENCH_ROWS_{round_no}")
    try:
        await backend.put("warm-up", records(1, "w")["w:0"])
        cols = backend.layout.written
        exprs = ", ".join(c.expr.format(f"column{i + 1}") for i, c in enumerate(cols))
        marks = ", ".join("?" * len(cols))
        # Real Snowflake refuses PARSE_JSON inside VALUES, hence INSERT ... SELECT.
        sql = (f"INSERT INTO {backend._t} ({', '.join(c.name for c in cols)}) "
               f"SELECT {exprs} FROM VALUES ({marks})")
        data = [backend._row(k, r) for k, r in records(rows, f"s{round_no}").items()]

        def insert_all(cur: Any) -> None:
            for row in data:
                backend.engine.execute(cur, sql, row)

        return await timed(lambda: backend.engine.write(insert_all))
    finally:
        await backend.close()


async def bench_sequential_puts(rows: int, round_no: int) -> float:
    backend = open_table(f"BENCH_SEQ_{round_no}")
    try:
        await backend.put("warm-up", records(1, "w")["w:0"])
        data = records(rows, f"q{round_no}")

        async def run() -> None:
            for k, r in data.items():
                await backend.put(k, r)

        return await timed(run)
    finally:
        await backend.close()


async def bench_group_commit(concurrent: int, round_no: int) -> tuple[float, int, int]:
    backend = open_table(f"BENCH_GROUP_{round_no}")
    try:
        await backend.put("warm-up", records(1, "w")["w:0"])
        data = records(concurrent, f"g{round_no}")
        batches = backend.engine.write_batches
        with counting_executions() as executed:
            seconds = await timed(lambda: asyncio.gather(
                *(backend.put(k, r) for k, r in data.items())))
        found = await backend.get_many(list(data), 0.0)
        assert len(found) == concurrent
        return seconds, executed[0], backend.engine.write_batches - batches
    finally:
        await backend.close()


def environment() -> dict[str, Any]:
    versions = {}
    for dist in PACKAGES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"command": shlex.join(sys.orig_argv), "date": dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"), "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "cpus": cpus, "versions": versions}


async def main(args: argparse.Namespace) -> str:
    put_many, rows_sql, rows_put, group = [], [], [], []
    with emulated_snowflake():
        for r in range(args.rounds):
            put_many.append(await bench_put_many(args.items, r))
            rows_sql.append(await bench_row_by_row_sql(args.row_sample, r))
            rows_put.append(await bench_sequential_puts(args.put_sample, r))
            group.append(await bench_group_commit(args.concurrent, r))
    env = environment()
    pm = statistics.median(s for s, _, _ in put_many)
    per_row_sql = statistics.median(rows_sql) / args.row_sample
    per_row_put = statistics.median(rows_put) / args.put_sample
    extrapolated_sql = per_row_sql * args.items
    extrapolated_put = per_row_put * args.items
    ratio_sql, ratio_put = extrapolated_sql / pm, extrapolated_put / pm
    g_seconds = statistics.median(s for s, _, _ in group)
    g_statements = max(n for _, n, _ in group)
    g_batches = max(b for _, _, b in group)
    pm_statements = max(n for _, n, _ in put_many)
    verdict_ratio = "met" if ratio_sql >= 50 else "NOT met"
    verdict_group = "met" if g_statements <= 5 else "NOT met"
    v = env["versions"]
    lines = [
        "# Snowflake backend write paths (emulator)",
        "",
        f"`{env['command']}` — {env['date']}; Python {env['python']} on {env['platform']}; "
        f"{env['cpu']}, {env['cpus']} usable CPUs.",
        "Versions: " + ", ".join(f"{k} {v[k]}" for k in PACKAGES) + ".",
        "",
        "Against **fakesnow** (Snowflake SQL translated to DuckDB, in process), not a real "
        "account: absolute times say nothing about Snowflake, where every statement is a "
        "network round trip. Medians of "
        f"{args.rounds} rounds; each round uses fresh tables.",
        "",
        "| write path | rows | seconds | per row (ms) | statements sent |",
        "|---|---:|---:|---:|---:|",
        f"| `put_many` (write_pandas → staging table, one MERGE) | {args.items:,} | {pm:.3f} | "
        f"{pm / args.items * 1e3:.4f} | {pm_statements} |",
        f"| row-by-row `INSERT`, one per row (measured on {args.row_sample} rows) | "
        f"{args.items:,} (extrapolated) | {extrapolated_sql:.1f} | {per_row_sql * 1e3:.3f} | "
        f"{args.items:,} |",
        f"| backend `put` awaited one by one (measured on {args.put_sample} rows) | "
        f"{args.items:,} (extrapolated) | {extrapolated_put:.1f} | {per_row_put * 1e3:.3f} | "
        f"{args.items:,} |",
        "",
        f"**put_many vs row-by-row INSERT: {ratio_sql:,.0f}x** (target ≥ 50x: {verdict_ratio}); "
        f"vs sequential `put`: {ratio_put:,.0f}x. The row-by-row figures are the per-row time "
        f"of the sampled rows multiplied by {args.items:,} (a full row-by-row run of "
        "10,000 rows takes over a minute on the emulator); `put_many`'s statements are: "
        "create the staging table if missing, truncate it, the MERGE (write_pandas' load "
        "is counted apart: on a real account it is a PUT and a COPY INTO).",
        "",
        "| group commit | concurrent puts | seconds | statements reaching the connector "
        "(= commits, autocommit) | writer batches |",
        "|---|---:|---:|---:|---:|",
        f"| `asyncio.gather` of single `put` calls | {args.concurrent} | {g_seconds:.3f} | "
        f"{g_statements} | {g_batches} |",
        "",
        f"Target: {args.concurrent} concurrent puts commit in ≤ 5 round trips: {verdict_group} "
        "(worst round). The first put starts a MERGE at once; the rest queue meanwhile and "
        "share the next one.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--row-sample", type=int, default=500)
    parser.add_argument("--put-sample", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "snowflake_latest.md")
    import warnings

    warnings.filterwarnings("ignore", message="Arrow output")
    report = asyncio.run(main(parser.parse_args()))
    out: Path = parser.parse_args().out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(report)
