"""The ``sophia-memory`` command: ``demo``, ``doctor``, ``stats``, ``bench``, ``load`` and
``clear``."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._support import scrubbed, ttl_seconds
from .backends import parse_url
from .codecs import codec_from_name
from .config import MemoryConfig
from .doctor import check_tiers, outside_view
from .engine import InProcessTier
from .errors import MissingDependencyError, SophiaMemoryError, VersionConflictError
from .gpu import detect_gpu
from .memory import Memory
from .pools import format_bytes, match_preset, plan_pools
from .tiers import Tier

__all__ = ["main"]

_SAMPLE_VALUES: dict[Tier, Any] = {
    Tier.GPU: np.arange(4096, dtype=np.float32).reshape(64, 64),
    Tier.SESSION: {"user": 42, "cart": [1, 2, 3], "locale": "en"},
    Tier.CORTEX: {"model": "llama3-70b", "answer": "Paris is the capital of France."},
    Tier.PERSISTENT: {"note": "durable memory", "tags": ["a", "b"]},
    Tier.VECTOR: {"title": "a document", "text": "what the embedding describes"},
    Tier.WORKFLOW: {"step": 3, "status": "running", "inputs": {"doc": 7}},
}


async def _timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_RNG = np.random.default_rng(0)


async def _put_next(mem: Memory, keys: Iterator[str], value: Any, tier: Tier) -> None:
    vector = _RNG.standard_normal(384).astype(np.float32) if tier is Tier.VECTOR else None
    await mem.put(next(keys), value, tier=tier, vector=vector)


async def measure_tiers(mem: Memory, n: int,
                        progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Put/get latency of each enabled tier's own storage (promotion is off in ``mem``);
    ``progress`` is told which tier is being measured."""
    rows = []
    for step, tier in enumerate(Tier, 1):
        if progress is not None:
            progress(f"[{step}/{len(Tier)}] L{tier.value} {tier.name}: {n} puts, {n} gets")
        if tier not in mem.tiers:
            why = mem.stats()["tiers"][tier.name].get("reason", "switched off")
            rows.append({"tier": tier, "status": why})
            continue
        value = _SAMPLE_VALUES[tier]
        keys = [f"demo:{tier.name.lower()}:{i}" for i in range(n)]
        put_keys, get_keys = iter(keys), iter(keys)
        puts = await _timed(functools.partial(_put_next, mem, put_keys, value, tier), n)
        gets = await _timed(lambda: mem.get(next(get_keys)), n)  # noqa: B023 - awaited here
        got = await mem.get(keys[0])
        ok = bool(np.array_equal(got, value)) if tier is Tier.GPU else got == value
        rows.append({"tier": tier, "status": "ok" if ok else "WRONG VALUE",
                     "put_p50": statistics.median(puts), "get_p50": statistics.median(gets),
                     "get_p95": _pct(gets, 0.95), "put_p95": _pct(puts, 0.95)})
    return rows


def print_tier_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'tier':<14}{'put p50':>10}{'get p50':>10}{'get p95':>10}{'budget':>9}  verdict")
    for row in rows:
        tier: Tier = row["tier"]
        label = f"L{tier.value} {tier.name}"
        if "get_p50" not in row:
            print(f"{label:<14}{'-':>10}{'-':>10}{'-':>10}{tier.budget_ms:>7.0f}ms  "
                  f"not available: {row['status']}")
            continue
        worst = max(row["get_p95"], row["put_p95"])
        verdict = row["status"] if row["status"] != "ok" else (
            f"within budget ({tier.budget_ms / worst:,.0f}x headroom)"
            if worst <= tier.budget_ms else "OVER BUDGET")
        print(f"{label:<14}{row['put_p50']:>8.3f}ms{row['get_p50']:>8.3f}ms"
              f"{row['get_p95']:>8.3f}ms{tier.budget_ms:>7.0f}ms  {verdict}")


async def _demo(n: int) -> int:
    with tempfile.TemporaryDirectory(prefix="sophia-demo-") as tmp:
        path = Path(tmp) / "memory.db"
        print(f"sophia_memory {__version__} demo on the embedded default (database {path})\n")
        async with Memory.open(path=str(path), promote=False) as mem:
            for tier in mem.tiers:
                backend = mem.stats()["tiers"][tier.name]["backend"]
                print(f"  L{tier.value} {tier.name:<11} {backend}")
            print(f"\nlatency of each tier's own storage, {n} puts and gets each "
                  "(p95 against the platform's budget):")
            rows = await measure_tiers(mem, n)
            print_tier_table(rows)
        async with Memory.open(path=str(path)) as mem:
            print("\npromotion: a PERSISTENT value read once is copied into SESSION")
            entry = await mem.get_entry("demo:persistent:0")
            assert entry is not None
            print(f"  first get served by {entry.tier}")
            await mem.flush()
            entry = await mem.get_entry("demo:persistent:0")
            assert entry is not None
            print(f"  after flush, served by {entry.tier} (a copy; its home stays PERSISTENT)")
            await _demo_l2_l4_l5(mem)


        failed = [r for r in rows if r["status"] not in ("ok",) and "get_p50" in r]
        return 1 if failed else 0


def _toy_embedding(text: str) -> np.ndarray[Any, Any]:
    """A deterministic stand-in for a sentence model: bag of hashed words."""
    vec = np.zeros(384, dtype=np.float32)
    for word in text.lower().replace("?", "").split():
        vec[hash_word(word) % 384] += 1.0
    return vec


def hash_word(word: str) -> int:
    return int.from_bytes(word.encode()[:8].ljust(8, b"_"), "little")


async def _demo_l2_l4_l5(mem: Memory) -> None:
    from .cortex import CortexCache

    print("\nL2 CORTEX: an LLM call through the result cache")
    cache = CortexCache(mem, embed=_toy_embedding, threshold=0.8)

    async def llm() -> str:
        await asyncio.sleep(0.05)  # stands in for a 50 ms model call
        return "Tiered memory keeps hot data in fast tiers and spills the rest."

    params = {"temperature": 0}
    for prompt, semantic in (("what is tiered memory", False), ("what is tiered memory", False),
                             ("explain what tiered memory is", True)):
        t0 = time.perf_counter()
        hit = await cache.complete("llama3-70b", prompt, params, llm, semantic=semantic)
        took = (time.perf_counter() - t0) * 1000
        how = ("computed" if not hit.cached else
               f"semantic hit, similarity {hit.similarity:.3f}" if hit.semantic else "exact hit")
        print(f"  {prompt!r:<32} {took:8.3f} ms  {how}")

    print("\nL4 VECTOR: exact top-3 by cosine similarity")
    docs = {"doc:gpu": "gpu memory pools hold model weights",
            "doc:redis": "redis holds the session state",
            "doc:sql": "snowflake tables hold durable memory",
            "doc:llm": "the llm answer cache avoids repeated model calls"}
    await mem.put_many({k: {"text": t} for k, t in docs.items()}, tier=Tier.VECTOR,
                       vectors={k: _toy_embedding(t) for k, t in docs.items()})
    t0 = time.perf_counter()
    hits = await mem.search(_toy_embedding("where do model weights live gpu memory"), k=3)
    took = (time.perf_counter() - t0) * 1000
    for h in hits:
        print(f"  {h.key:<10} score {h.score:.3f}  {h.value['text']}")
    print(f"  search took {took:.3f} ms (budget {Tier.VECTOR.budget_ms:.0f} ms)")

    print("\nL5 WORKFLOW: versions and optimistic concurrency")
    v1 = await mem.put("wf:demo", {"step": 1}, tier=Tier.WORKFLOW)
    v2 = await mem.put("wf:demo", {"step": 2}, tier=Tier.WORKFLOW, expected_version=v1)
    try:
        await mem.put("wf:demo", {"step": "stale"}, tier=Tier.WORKFLOW, expected_version=v1)
    except VersionConflictError as exc:
        print(f"  a writer holding version {v1} is refused: current is {exc.current_version}")
    history = await mem.history("wf:demo")
    print(f"  versions {[e.version for e in history]} (newest first); "
          f"version {v1} was {await mem.get('wf:demo', version=v1)}, now {v2}")


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _doctor(read_only: bool = False) -> int:
    print(f"sophia_memory {__version__} on Python {platform.python_version()} "
          f"({platform.platform()})")
    for dist in ("numpy", "msgpack", "torch", "cupy-cuda12x", "cupy-cuda13x", "redis",
                 "snowflake-connector-python"):
        print(f"  {dist:<28}{_dist_version(dist)}")
    gpu = detect_gpu()
    if gpu.available:
        preset = match_preset(str(gpu.name))
        known = f", preset {preset.name} {preset.nominal}" if preset else ""
        print(f"\nGPU: {gpu.name} ({format_bytes(gpu.total_bytes or 0)} reported{known})")
    else:
        print(f"\nGPU: none usable - {gpu.reason}; L0 runs on host-memory pools")
    try:
        config = MemoryConfig.build()
        codec_from_name(config.codec, config.signing_key)  # e.g. a signing key too short
    except SophiaMemoryError as exc:
        print(f"\nconfiguration: INVALID - {exc}")
        return 1
    print(f"\nembedded database: {config.resolved_path()}")
    print(f"default tier: {config.default_tier}")
    for tier in Tier:
        url = config.url_for(tier)
        try:
            shown = "off" if url is None else parse_url(url).redacted()
        except SophiaMemoryError as exc:
            shown = f"INVALID - {exc}"
        print(f"  L{tier.value} {tier.name:<11} {shown}")
    checks = asyncio.run(check_tiers(config, read_only=read_only))
    failed = [c for c in checks if not c.ok]
    print(f"\nround trips ({'read only' if read_only else 'put, get, delete of a scratch key'}"
          "; latency against each tier's budget):")
    for c in checks:
        took = "" if c.latency_ms is None else \
            f" {c.latency_ms:.2f} ms (budget {c.tier.budget_ms:g} ms" + \
            (", OVER)" if c.over_budget else ")")
        state = "ok" if c.ok else "FAILED"
        print(f"  L{c.tier.value} {c.tier.name:<11} {state}:{took} {c.detail}")
        if c.fix:
            print(f"  {'':<15}fix: {c.fix}")
        if c.stats:
            _print_pools(c.stats)
    if gpu.available and gpu.total_bytes:
        try:
            plan_pools(config.gpu_pools, gpu.total_bytes, config.gpu_reserve, str(gpu.name))
        except SophiaMemoryError as exc:
            print(f"\nINVALID: the L0 pools do not fit the GPU: {exc}")
            return 1
        print(f"\nL0 pools fit {gpu.name} ({format_bytes(gpu.total_bytes)} reported, "
              f"reserve {config.gpu_reserve})")
    if failed:
        print(f"\n{len(failed)} tier(s) failed: " + ", ".join(c.tier.name for c in failed))
        return 1
    print("\nno problems found")
    return 0


def _print_pools(stats: dict[str, Any]) -> None:
    """The L0 device and each pool's budget, usage and counters (validated at open)."""
    pools = stats.get("pools") or {}
    if not pools:
        return
    total = sum(p["limit"] for p in pools.values())
    print(f"      device {stats.get('device')}: {len(pools)} pools, "
          f"{format_bytes(total)} budgeted (they fit: checked when opened)")
    for name, p in pools.items():
        print(f"      pool {name:<16}{format_bytes(p['limit']):>12} budget"
              f"{format_bytes(p['used']):>12} used  {p['items']} items  "
              f"{p.get('evictions', 0)} evictions  {p.get('oom_retries', 0)} OOM retries")


def _stats(source: str | None, as_json: bool) -> int:
    """Without ``source``: what a fresh process can see of the configured tiers (rows, file
    sizes), creating nothing. With ``source`` (a running service's metrics address, or a
    file of its scraped text): its live counters per tier."""
    if source is None:
        views = outside_view(MemoryConfig.build())
        status = 0 if all(v.ok for v in views) else 1  # an invalid URL or unreadable file
        if as_json:
            print(json.dumps([{"tier": v.tier.name, "backend": v.backend, "held": v.held,
                               "ok": v.ok} for v in views], indent=2))
            return status
        print("what can be seen from outside a running process (live counters: "
              "stats --from <metrics address>):")
        for v in views:
            print(f"  L{v.tier.value} {v.tier.name:<11} {v.held}")
            print(f"  {'':<15}{v.backend}")
        return status
    try:
        from .doctor import live_view
    except ImportError:
        raise MissingDependencyError("prometheus-client", "metrics",
                                     "stats --from") from None
    text = _fetch(source)
    try:
        tiers = live_view(text)
    except ValueError as exc:  # prometheus_client's parser, on a page that is not metrics
        raise SophiaMemoryError(f"{scrubbed(source)} is not Prometheus metrics text: "
                                f"{exc}") from None
    if not tiers:
        print(f"error: no sophia_memory metrics at {scrubbed(source)}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(tiers, indent=2))
        return 0
    columns = ("hits", "misses", "puts", "deletes", "errors", "refused", "items", "bytes",
               "evictions", "spills", "promotions", "breaker_read", "breaker_write")
    print(f"{'tier':<11}" + "".join(f"{c:>14}" for c in columns))
    for name, row in tiers.items():
        cells = "".join(f"{_cell(row.get(c)):>14}" for c in columns)
        print(f"{name:<11}{cells}")
    return 0


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.3g}"


def _fetch(source: str) -> str:
    """The metrics text at ``source``: an http(s) address or a file."""
    if source.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=5) as reply:  # http(s) only, above
                return str(reply.read().decode())
        except OSError as exc:
            raise SophiaMemoryError(f"cannot read metrics from {scrubbed(source)}: "
                                    f"{exc}") from None
    try:
        return Path(source).read_text()
    except OSError as exc:
        raise SophiaMemoryError(f"cannot read metrics from {source}: {exc}") from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report_dir(report: Path | None) -> Path | None:
    """``report``, made if needed: a directory that cannot be is refused before the run."""
    if report is not None:
        try:
            report.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SophiaMemoryError(f"cannot write the report to {report}: "
                                    f"{exc.strerror or exc}") from None
    return report


async def _bench(n: int, report: Path | None = None) -> int:
    async with Memory.open(promote=False) as mem:
        print(f"per-tier latency of the configured memory, {n} operations each:")
        # A namespace of its own: the run never touches (or removes) the memory's own keys.
        scratch = mem.namespace(f"sophia-bench-{uuid.uuid4().hex[:12]}")
        try:
            rows = await measure_tiers(scratch, n, _progress)
        finally:
            await scratch.clear()
        print_tier_table(rows)
    if report is not None:
        written = write_bench_report(rows, n, report)
        print("report: " + ", ".join(str(p) for p in written))
    return 0


def write_bench_report(rows: list[dict[str, Any]], n: int, out: Path) -> list[Path]:
    """``out/bench_report.md`` (the table, with the command and machine) and, where
    matplotlib is installed, ``out/bench_latency.png``: each tier's put and get p95 against
    its budget, on a log scale."""
    out.mkdir(parents=True, exist_ok=True)
    measured = [r for r in rows if "get_p50" in r]
    lines = [f"# sophia-memory bench ({n} operations per tier)", "",
             f"- sophia_memory {__version__}, Python {platform.python_version()}, "
             f"{platform.platform()}",
             f"- date (UTC): {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", "",
             "| tier | put p50 | put p95 | get p50 | get p95 | budget | p95 / budget |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in measured:
        t: Tier = r["tier"]
        worst = max(r["get_p95"], r["put_p95"])
        lines.append(f"| L{t.value} {t.name} | {r['put_p50']:.3f} ms | {r['put_p95']:.3f} ms "
                     f"| {r['get_p50']:.3f} ms | {r['get_p95']:.3f} ms | {t.budget_ms:g} ms "
                     f"| {worst / t.budget_ms:.4f} |")
    for r in rows:
        if "get_p50" not in r:
            lines.append(f"| L{r['tier'].value} {r['tier'].name} | - | - | - | - | "
                         f"{r['tier'].budget_ms:g} ms | not available: {r['status']} |")
    written = [out / "bench_report.md"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        lines += ["", "(no plot: matplotlib is not installed)"]
    else:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [f"L{r['tier'].value} {r['tier'].name}" for r in measured]
        xs = np.arange(len(measured))
        ax.bar(xs - 0.2, [r["put_p95"] for r in measured], 0.4, label="put p95")
        ax.bar(xs + 0.2, [r["get_p95"] for r in measured], 0.4, label="get p95")
        ax.scatter(xs, [r["tier"].budget_ms for r in measured], marker="_", s=900,
                   color="red", label="budget", zorder=3)
        ax.set_yscale("log")
        ax.set_ylabel("milliseconds (log)")
        ax.set_xticks(xs, names, rotation=20)
        ax.set_title("latency against budget, per tier")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "bench_latency.png", dpi=110)
        plt.close(fig)
        written.append(out / "bench_latency.png")
        lines += ["", "![latency against budget](bench_latency.png)"]
    (out / "bench_report.md").write_text("\n".join(lines) + "\n")
    return written


_LOAD_BATCH = 1000


def _read_items(source: str) -> dict[str, tuple[int, Any, float | None]]:
    """The items of a JSON Lines file (``-``: standard input), one object a line:
    ``{"key": ..., "value": ..., "ttl": seconds (optional)}``, as ``{key: (line number,
    value, ttl)}`` (a key given twice: its last line). A bad line is named by its number."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise SophiaMemoryError(f"cannot read {source}: {exc}") from None
    items: dict[str, tuple[int, Any, float | None]] = {}
    # Lines end at \n only (JSON Lines): str.splitlines would also split at U+2028, U+0085
    # and the like, which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SophiaMemoryError(f"{source}:{number}: not JSON ({exc})") from None
        if (type(obj) is not dict or not {"key", "value"} <= obj.keys()
                or not obj.keys() <= {"key", "value", "ttl"}):
            raise SophiaMemoryError(f'{source}:{number}: expected {{"key": ..., "value": ..., '
                                    '"ttl": ...} (ttl optional)')
        if type(obj["key"]) is not str:
            raise SophiaMemoryError(f"{source}:{number}: the key must be a string")
        try:
            ttl = ttl_seconds(obj.get("ttl"))
        except SophiaMemoryError as exc:
            raise SophiaMemoryError(f"{source}:{number}: {exc}") from None
        items.pop(obj["key"], None)  # the last line of a key wins, in its place
        items[obj["key"]] = (number, obj["value"], ttl)
    return items


async def _load(source: str, items: dict[str, tuple[int, Any, float | None]],
                tier: str | None, namespace: str | None) -> int:
    """Put ``items`` in batches of 1,000 (one ``put_many`` per TTL within a batch), with
    progress on stderr. Every key and value is checked before the first batch is written,
    and a tier that lives in this process (gone when the command exits) is refused."""
    async with Memory.open() as root:
        mem = root.namespace(namespace) if namespace is not None else root
        core = mem._core
        slot = core.slot(mem._tier(tier))
        if isinstance(slot, InProcessTier):
            raise SophiaMemoryError(
                f"{slot.tier} is in this process ({slot.backend.describe()}): what is loaded "
                "would be gone when this command exits; pass --tier with a stored tier "
                "(CORTEX, PERSISTENT, WORKFLOW) or configure a shared one")
        limit = core.config.max_value_bytes
        for key, (number, value, _) in items.items():
            try:
                mem._key(key)
                size = core.codec.measure(value)
            except SophiaMemoryError as exc:
                raise SophiaMemoryError(f"{source}:{number}: {exc}") from None
            if size > limit:
                raise SophiaMemoryError(f"{source}:{number}: the value is about {size} bytes, "
                                        f"over max_value_bytes={limit}")
        keys = list(items)
        for start in range(0, len(keys), _LOAD_BATCH):
            by_ttl: dict[float | None, dict[str, Any]] = {}
            for key in keys[start : start + _LOAD_BATCH]:
                _, value, ttl = items[key]
                by_ttl.setdefault(ttl, {})[key] = value
            for ttl, group in by_ttl.items():
                await mem.put_many(group, tier=slot.tier, ttl=ttl)
            _progress(f"loaded {min(start + _LOAD_BATCH, len(keys)):,} of {len(keys):,} items")
    print(f"loaded {len(keys):,} items into {slot.tier.name}"
          + (f" (namespace {namespace!r})" if namespace else ""))
    return 0


async def _clear(tier: str | None, namespace: str | None) -> int:
    async with Memory.open() as mem:
        if tier is not None:
            slot = mem._core.slot(mem._tier(tier))
            if isinstance(slot, InProcessTier):
                raise SophiaMemoryError(f"{slot.tier} is in this process: a fresh one holds "
                                        "nothing to clear (clear it inside the service)")
        removed = await mem.clear(tier=tier, namespace=namespace)
    where = tier or "every tier"
    print(f"removed {removed:,} items from {where}"
          + (f" (namespace {namespace!r})" if namespace else ""))
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number of operations, at least 1 (a one-line error
    otherwise, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sophia-memory", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} (Python {platform.python_version()})")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="exercise all six tiers on the embedded default")
    demo.add_argument("-n", type=_count, default=300, help="operations per tier")
    doctor = sub.add_parser("doctor", help="check every configured tier with a round trip "
                            "and report what is misconfigured (creates nothing)")
    doctor.add_argument("--read-only", action="store_true",
                        help="only read (no scratch key is written)")
    stats = sub.add_parser("stats", help="what can be seen of the configured tiers from "
                           "here, or a running service's live counters (--from)")
    stats.add_argument("--from", dest="source", metavar="ADDRESS",
                       help="a running service's metrics address (http://host:port/metrics) "
                       "or a file of its scraped metrics")
    stats.add_argument("--json", action="store_true", help="JSON instead of a table")
    bench = sub.add_parser("bench", help="per-tier latency of the configured memory")
    bench.add_argument("-n", type=_count, default=1000, help="operations per tier")
    bench.add_argument("--report", type=Path, metavar="DIR",
                       help="also write DIR/bench_report.md and a plot of latency against "
                       "budget (the plot needs matplotlib)")
    load = sub.add_parser("load", help="put the items of a JSON Lines file (- for stdin): "
                          '{"key": ..., "value": ..., "ttl": ...} a line')
    load.add_argument("file")
    load.add_argument("--tier", help="the tier to put them in (default: the default tier)")
    load.add_argument("--namespace", help="the namespace to put them in")
    clear = sub.add_parser("clear", help="remove every item, or a tier's or a namespace's")
    clear.add_argument("--tier", help="only this tier")
    clear.add_argument("--namespace", help="only this namespace")
    args = parser.parse_args(argv)
    try:
        if args.command == "load":
            return asyncio.run(_load(args.file, _read_items(args.file), args.tier,
                                     args.namespace))
        if args.command == "clear":
            return asyncio.run(_clear(args.tier, args.namespace))
        if args.command == "demo":
            return asyncio.run(_demo(args.n))
        if args.command == "doctor":
            return _doctor(args.read_only)
        if args.command == "stats":
            return _stats(args.source, args.json)
        return asyncio.run(_bench(args.n, _report_dir(args.report)))
    except SophiaMemoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
