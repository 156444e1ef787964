"""What produced a run (command, versions, machine) and how its results are written out."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from _harness import ContestantResult, Settings, SuiteResult

__all__ = ["environment", "render_markdown", "render_suite_table", "write_results"]

PACKAGES = ("sophia-memory", "cachetools", "cashews", "aiocache", "diskcache", "msgpack",
            "numpy", "torch", "redis", "hiredis")
REPO = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(settings: Settings, ignored_env: dict[str, str]) -> dict[str, Any]:
    """The command, date, interpreter, library versions, machine and source revision.

    Call it from inside the event loop the benchmarks run on (its class is recorded)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    dirty = _git("status", "--porcelain", "--", "src")
    return {
        "command": shlex.join(sys.orig_argv),
        "cwd": os.getcwd(),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": settings.mode,
        "settings": {k: v for k, v in vars(settings).items() if k != "mode"},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "build": " ".join(platform.python_build()),
            "executable": sys.executable,
            "event_loop": type(asyncio.get_running_loop()).__name__,
        },
        "versions": {name: _version(name) for name in PACKAGES}
        | {"sqlite (library)": sqlite3.sqlite_version},
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": affinity,
            "memory_gib": _mem_total_gib(),
            "load_average_at_start": load_average(),
        },
        "source": {
            "git_commit": _git("rev-parse", "HEAD"),
            "src_modified_since_commit": None if dirty is None else bool(dirty),
        },
        "ignored_environment": ignored_env,
    }


# -- formatting -------------------------------------------------------------------------------

def fmt_us(ns: float) -> str:
    us = ns / 1000
    if us < 10:
        return f"{us:.2f} µs"
    if us < 1000:
        return f"{us:.1f} µs"
    return f"{us / 1000:.2f} ms"


def fmt_rate(ns: float) -> str:
    rate = 1e9 / ns
    return f"{rate / 1000:.1f} k/s" if rate >= 1000 else f"{rate:.0f} /s"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                                 ) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                         for i, w in enumerate(widths)) + "|"
    return [line(header), sep, *(line(r) for r in rows)]


def _speedup(r: ContestantResult, ref: ContestantResult) -> str:
    if r is ref:
        return "1.00 (ref)"
    return f"{r.median_ns / ref.median_ns:.2f}x"


def render_suite_table(result: SuiteResult, labels: bool = False) -> list[str]:
    """A Markdown table (also readable as plain text) of one suite's contestants."""
    ref = result.reference
    show_rate = result.suite.show_rate
    header = ["contestant", "ops/round", "median", "p90"]
    if show_rate:
        header.append("ops/s (median)")
    header.append("sophia speed-up")
    if labels:
        header.append("what is timed")
    rows = []
    for r in result.results:
        row = [r.name, f"{r.ops_per_round:,}", fmt_us(r.median_ns), fmt_us(r.p90_ns)]
        if show_rate:
            row.append(fmt_rate(r.median_ns))
        row.append(_speedup(r, ref))
        if labels:
            row.append(r.label.replace("|", "\\|"))
        rows.append(row)
    right = {1, 2, 3, 4} | ({5} if show_rate else set())
    return _table(header, rows, right)


def render_targets(results: list[SuiteResult]) -> list[str]:
    rows = []
    for res in results:
        for t in res.targets:
            unit = " µs" if t.target.measure == "median_us" else "x"
            rows.append([res.suite.key, t.target.text, f"{t.value:.2f}{unit}",
                         f"{t.target.cmp} {t.target.bound:g}{unit}",
                         "PASS" if t.passed else "FAIL"])
    if not rows:
        return []
    return _table(["suite", "target", "measured", "required", "result"], rows, {2, 3})


def render_markdown(env: dict[str, Any], results: list[SuiteResult], elapsed_s: float
                    ) -> str:
    m = env["machine"]
    py = env["python"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
    src = env["source"]
    lines = [
        "# sophia_memory benchmark results",
        "",
        f"- command: `{env['command']}` (in `{env['cwd']}`)",
        f"- date (UTC): {env['date_utc']}; mode: {env['mode']}; "
        f"rounds: {env['settings']['rounds']}; total time {elapsed_s:.0f} s",
        f"- python: {py['implementation']} {py['version']} ({py['build']})",
        f"- versions: {versions}",
        f"- machine: {m['platform']}; CPU: {m['cpu_model']}, {m['cpu_count']} cores "
        f"({m['cpus_usable']} usable); memory {m['memory_gib']} GiB; "
        f"load average at start {m['load_average_at_start']}, "
        f"at end {m.get('load_average_at_end')}",
        f"- source: commit {src['git_commit']}"
        + (" with uncommitted changes under src/" if src["src_modified_since_commit"] else ""),
        *(f"- **warning**: {w}" for w in env.get("warnings", [])),
        "",
        "Times are per operation: the median over rounds of (round time / operations), "
        "with the 90th percentile over rounds as p90. *sophia speed-up* is the row's median "
        "time divided by sophia's (the reference): above 1, sophia is that many times "
        "faster; below 1, slower. See benchmarks/README.md.",
        "",
    ]
    targets = render_targets(results)
    if targets:
        lines += ["## Targets", "", *targets, ""]
    for res in results:
        s = res.suite
        lines += [f"## {s.title} (`{s.key}`)", "", f"One operation: {s.unit}.", "",
                  *render_suite_table(res, labels=True), ""]
        lines += [f"- {note}" for note in s.notes]
        for key, value in res.info.items():
            lines.append(f"- {key}: `{json.dumps(value)}`")
        lines.append("")
    return "\n".join(lines)


def write_results(out_dir: Path, stem: str, env: dict[str, Any], results: list[SuiteResult],
                  elapsed_s: float) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**env, "elapsed_s": round(elapsed_s, 1),
            "all_targets_passed": all(t.passed for r in results for t in r.targets),
            "suites": [r.as_dict() for r in results]}
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    md_path.write_text(render_markdown(env, results, elapsed_s) + "\n", encoding="utf-8")
    return json_path, md_path
