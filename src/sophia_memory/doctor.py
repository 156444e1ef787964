"""``sophia-memory doctor``: connect to every configured tier and say what works.

Each enabled tier gets a round trip on a scratch key (put, get, delete; ``read_only``: a get
only), timed against the tier's latency budget. A tier that fails is named with the error and
a fix. The doctor creates nothing: an embedded database file that does not exist yet is
reported (with whether it could be created) and left alone, and an existing one is read
through a read-only connection when ``read_only`` is set.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._support import scrubbed
from .backends import Backend, ObjectStore, _lookup, open_backend, parse_url
from .codecs import codec_from_name
from .config import MemoryConfig
from .tiers import Record, Tier

__all__ = ["TierCheck", "TierView", "check_tiers", "live_view", "outside_view"]

T = TypeVar("T")


@dataclass
class TierCheck:
    """What the doctor found for one tier."""

    tier: Tier
    backend: str  #: the URL, password redacted
    ok: bool
    detail: str
    latency_ms: float | None = None  #: the slowest operation of the round trip
    fix: str | None = None
    stats: dict[str, Any] | None = None  #: the backend's own figures (L0: device and pools)

    @property
    def over_budget(self) -> bool:
        return self.latency_ms is not None and self.latency_ms > self.tier.budget_ms


async def check_tiers(config: MemoryConfig, *, read_only: bool = False,
                      limit_s: float = 5.0) -> list[TierCheck]:
    """One :class:`TierCheck` per enabled tier, fastest tier first."""
    results = []
    for tier in Tier:
        url = config.url_for(tier)
        if url is None:
            continue
        results.append(await _check(tier, url, config, read_only, limit_s))
    return results


def _sqlite_file(url: str, config: MemoryConfig) -> Path | None:
    parsed = parse_url(url)
    if parsed.scheme != "sqlite":
        return None
    path = parsed.path[1:] if parsed.path.startswith("/./") else parsed.path
    return Path(path) if path and path != "/" else config.resolved_path()


async def _check(tier: Tier, url: str, config: MemoryConfig, read_only: bool,
                 limit_s: float) -> TierCheck:
    try:
        shown = parse_url(url).redacted()
        file = _sqlite_file(url, config)
    except Exception as exc:
        return TierCheck(tier, scrubbed(url, query=False), False, f"invalid URL: {exc}",
                         fix=f"correct SOPHIA_MEMORY_{tier.name}_URL or the [tiers] table")
    if file is not None and not file.exists():
        return _not_created(tier, shown, file)
    if file is not None and read_only:
        return _sqlite_read_only(tier, shown, file, url)
    try:
        return await asyncio.wait_for(_round_trip(tier, url, shown, config, read_only),
                                      limit_s)
    except TimeoutError:
        return TierCheck(tier, shown, False, f"no answer within {limit_s:g} s",
                         fix=_fix(tier, url, "timeout"))
    except Exception as exc:
        return TierCheck(tier, shown, False, f"{type(exc).__name__}: {exc}",
                         fix=_fix(tier, url, str(exc)))


def _not_created(tier: Tier, shown: str, file: Path) -> TierCheck:
    parent = file.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return TierCheck(tier, shown, True, f"{file} does not exist yet; the first use "
                         "creates it (the doctor creates nothing)")
    return TierCheck(tier, shown, False, f"{file} does not exist and {parent} is not "
                     "writable", fix="set SOPHIA_MEMORY_PATH to a writable place, or make "
                     f"{parent} writable")


def _sqlite_read_only(tier: Tier, shown: str, file: Path, url: str) -> TierCheck:
    table = parse_url(url).options.get("table", tier.name.lower())
    t0 = time.perf_counter()
    try:
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?",
                                 (table,)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return TierCheck(tier, shown, False, f"cannot read {file}: {exc}",
                         fix=f"check that {file} is a readable SQLite database")
    ms = (time.perf_counter() - t0) * 1000
    detail = f"read {file} (table {table} {'present' if found else 'not created yet'})"
    return TierCheck(tier, shown, True, detail, ms)


async def _round_trip(tier: Tier, url: str, shown: str, config: MemoryConfig,
                      read_only: bool) -> TierCheck:
    backend: Backend = open_backend(url, tier, config)
    key = f"__sophia_doctor__:{os.getpid()}:{secrets.token_hex(4)}"
    timings: list[float] = []

    async def timed(op: Awaitable[T]) -> T:
        t0 = time.perf_counter()
        result = await op
        timings.append((time.perf_counter() - t0) * 1000)
        return result

    try:
        now = time.time()
        writes = not read_only and tier is not Tier.VECTOR  # a vector put needs a vector
        if writes:
            # the GPU pools hold arrays; every other tier takes any value
            value: object = np.zeros(4, np.float32) if tier is Tier.GPU else {"doctor": True}
            if isinstance(backend, ObjectStore):
                payload: object = value
                size = 16
            else:
                payload = codec_from_name(config.codec, config.signing_key).encode(value)
                size = len(payload)
            await timed(backend.put(key, Record(payload, now + 60, True, size, 0, now, {})))
            got = await timed(backend.get(key, now))
            await timed(backend.delete(key, now))
            if got is None:
                return TierCheck(tier, shown, False, "a value just put could not be read back",
                                 max(timings), fix="check that the URL points at one server "
                                 "and database (not a read replica)")
            what = "put, get and delete of a scratch key"
        else:
            await timed(backend.get(key, now))
            what = "get of a scratch key (read only)" if read_only else \
                "get of a scratch key (a write to VECTOR needs a vector)"
        figures = backend.stats() if tier is Tier.GPU else None
    finally:
        await backend.close()
    return TierCheck(tier, shown, True, what, max(timings), stats=figures)


def _fix(tier: Tier, url: str, error: str) -> str:
    text = error.lower()
    where = f"SOPHIA_MEMORY_{tier.name}_URL (or [tiers] {tier.name.lower()} in the TOML file)"
    if "timeout" in text or "timed out" in text:
        return f"the server did not answer in time: check that it runs and is reachable; {where}"
    if any(s in text for s in ("auth", "password", "wrongpass", "credentials")):
        return f"the server refused the credentials: check user and password in {where}"
    if any(s in text for s in ("refused", "connect", "111", "unreachable", "name or service")):
        return f"nothing answers there: start the server, or fix host and port in {where}"
    return f"see the error above; the tier's URL is {where}"


# -- what `sophia-memory stats` can show ---------------------------------------------------------


@dataclass
class TierView:
    """What can be seen of one tier from outside the processes that use it."""

    tier: Tier
    backend: str
    held: str  #: rows and file size, or why nothing can be seen from here

    @property
    def ok(self) -> bool:
        """False when the tier's URL is invalid or its database cannot be read."""
        return not self.held.startswith(("invalid URL: ", "cannot read "))


def outside_view(config: MemoryConfig) -> list[TierView]:
    """Each enabled tier as seen from a fresh process, creating and writing nothing: rows per
    SQLite table (through a read-only connection) and the file's size; in-process tiers and
    servers say where their live figures are."""
    views = []
    for tier in Tier:
        url = config.url_for(tier)
        if url is None:
            continue
        try:
            parsed = parse_url(url)
            _lookup(parsed.scheme)  # a scheme no backend serves (a typo) is invalid here too
            file = _sqlite_file(url, config)
        except Exception as exc:
            views.append(TierView(tier, scrubbed(url, query=False), f"invalid URL: {exc}"))
            continue
        shown = parsed.redacted()
        if file is None:
            where = "in-process" if parsed.scheme in ("memory", "host", "cupy") else "a server"
            views.append(TierView(tier, shown, f"{where}: live counters only inside the "
                                  "running process (stats --from its metrics address)"))
        elif not file.exists():
            views.append(TierView(tier, shown, f"{file} does not exist yet"))
        else:
            table = parsed.options.get("table", tier.name.lower())
            views.append(TierView(tier, shown, _sqlite_rows(file, table)))
    return views


def _sqlite_rows(file: Path, table: str) -> str:
    size = file.stat().st_size
    try:
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            present = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                   "AND name = ?", (table,)).fetchone()[0]
            # the name is checked against sqlite_master above and quoted: never user SQL
            rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] \
                if present else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot read {file}: {exc}"
    what = f"{rows:,} rows in {table}" if rows is not None else f"no table {table} yet"
    return f"{what}; file {size / 2**20:.1f} MiB"


def live_view(text: str) -> dict[str, dict[str, float]]:
    """Per-tier figures from a running service's Prometheus metrics (the text a scrape of
    :mod:`sophia_memory.metrics` returns)."""
    from prometheus_client.parser import text_string_to_metric_families

    tiers: dict[str, dict[str, float]] = {}
    names = {"sophia_memory_items": "items", "sophia_memory_bytes": "bytes",
             "sophia_memory_evictions_total": "evictions",
             "sophia_memory_spills_total": "spills",
             "sophia_memory_promotions_total": "promotions"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            tier = s.labels.get("tier")
            if tier is None:
                continue
            row = tiers.setdefault(tier, {})
            if s.name == "sophia_memory_operations_total":
                column = {("get", "hit"): "hits", ("get", "miss"): "misses",
                          ("put", "ok"): "puts", ("delete", "ok"): "deletes",
                          ("call", "error"): "errors", ("call", "refused"): "refused"}.get(
                    (s.labels.get("operation", ""), s.labels.get("outcome", "")))
                if column:
                    row[column] = s.value
            elif s.name == "sophia_memory_breaker_open":
                row[f"breaker_{s.labels.get('direction', 'read')}"] = s.value
            elif s.name in names:
                row[names[s.name]] = s.value
    return tiers
