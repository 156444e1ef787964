"""Hit-ratio study: every sophia eviction policy on the shared traces, beside libCacheSim and
theine, in one run.

    python benchmarks/hit_ratio.py [--traces DIR] [--out benchmarks/results]

Model (the one ``shared/traces/README.md`` states): every request is a get; a miss inserts
the object (size 1); capacity = max(10, round(unique ids x size)) at 1, 5, 10 and 20 % of the
unique ids; the miss ratio is over the whole trace, compulsory misses included. sophia's
policies are driven directly (their ``insert``/``access``/``victim``/``remove`` hooks, exactly
what :class:`~sophia_memory.policies.BoundedStore` calls), not through ``Memory``.
libCacheSim runs its own C replay of the same trace; theine is driven by get/set. theine's
miss count changes from run to run (its Rust core draws at random and takes no seed; at
lirs-sprite 1 % five runs spread over 3 points), so it runs ``THEINE_RUNS`` times and its
cell is the median, with the runs' range beside it.

Second part, admission: an L1 of each size over an unbounded slower tier that holds every
object after its first request. A request that misses L1 but hits the slower tier is
promoted into L1 - always (no admission), or only when L1's
:meth:`~sophia_memory.policies.BoundedStore.admit` agrees (with admission, as
``engine/promotion.py`` does). Reported: L1's miss ratio (requests not served by L1).

Writes ``hit_ratio_latest.md``, ``hit_ratio_latest.json`` and ``hit_ratio.png`` (miss ratio
against cache size, one line per policy, one panel per trace) into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sophia_memory.policies import DEFAULT_POLICY, POLICY_NAMES, BoundedStore, policy_from_name
from sophia_memory.tiers import Record

REPO = Path(__file__).resolve().parent.parent
TRACES = ("cloudphysics-io", "lirs-multi1", "lirs-sprite")
SIZES = (0.01, 0.05, 0.10, 0.20)
#: libCacheSim's policies in the study (its class names), in the order of the issue's table.
LCS = ("LRU", "FIFO", "ARC", "S3FIFO", "Sieve", "WTinyLFU", "LIRS")
OURS = tuple(f"sophia-{name}" for name in ("lru", "fifo", "sieve", "s3fifo", "wtinylfu",
                                            "adaptive"))

Trace = list[Any]


def load(path: Path) -> Trace:
    """One id per line; numeric ids as ints (their hash is deterministic, so a run is
    reproducible; str hashes change with PYTHONHASHSEED)."""
    with gzip.open(path, "rt") as fh:
        ids = fh.read().split()
    try:
        return [int(x) for x in ids]
    except ValueError:
        return ids


def capacity(trace: Trace, size: float) -> int:
    return max(10, round(len(set(trace)) * size))


# -- sophia ------------------------------------------------------------------------------------

def replay_policy(name: str, trace: Trace, cap: int) -> int:
    """Misses of policy ``name`` at ``cap`` items (a tight loop over the policy's hooks)."""
    policy = policy_from_name(name)
    policy.bind(cap, None, lambda key: 1)
    held: set[Any] = set()
    access, insert, remove, victim = policy.access, policy.insert, policy.remove, policy.victim
    misses = 0
    for key in trace:
        if key in held:
            access(key)
            continue
        misses += 1
        if len(held) >= cap:
            out = victim()
            remove(out)
            held.discard(out)
        held.add(key)
        insert(key)
    return misses


def replay_hierarchy(name: str, trace: Trace, cap: int, admission: bool) -> int:
    """Requests L1 (a BoundedStore of ``cap`` items, policy ``name``) did not serve, over an
    unbounded slower tier; promotion with or without L1's admission."""
    l1 = BoundedStore(cap, None, policy_from_name(name))
    below: set[Any] = set()
    rec = Record(None, size=1)
    misses = 0
    peek, admit, put = l1.peek, l1.admit, l1.set
    for key in trace:
        if peek(key) is not None:
            continue
        misses += 1
        if key not in below:
            below.add(key)  # first request: put to the slower tier, its home
        elif not admission or admit(key, 1):
            put(key, rec)
    return misses


# -- the references ------------------------------------------------------------------------------

def libcachesim_misses(trace_file: str, n: int, cap: int) -> dict[str, tuple[int, str]]:
    """libCacheSim's miss counts: its defaults, except where a default caches nothing at this
    capacity (S3-FIFO's small queue under 2 objects, W-TinyLFU's window under 1): then the
    smallest setting that works, noted beside the number."""
    import libcachesim as lcs

    out: dict[str, tuple[int, str]] = {}
    for name in LCS:
        note = ""
        kwargs: dict[str, Any] = {}
        if name == "S3FIFO" and int(cap * 0.1) < 2:
            kwargs["small_size_ratio"] = 2 / cap + 1e-9
            note = f"small={kwargs['small_size_ratio']:.3f}"
        if name == "WTinyLFU" and int(cap * 0.01) < 1:
            kwargs["window_size"] = 1 / cap + 1e-9
            note = f"window={kwargs['window_size']:.3f}"
        cache = getattr(lcs, name)(cap, **kwargs)
        reader = lcs.TraceReader(trace_file, lcs.TraceType.PLAIN_TXT_TRACE)
        ratio, _ = cache.process_trace(reader)
        out[name] = (round(ratio * n), note)
    return out


#: Runs of theine per cell (odd: the median is one of them).
THEINE_RUNS = 5


def theine_median(trace: Trace, cap: int) -> tuple[int, str]:
    """theine's median misses over :data:`THEINE_RUNS` runs, and the runs' range as a note."""
    runs = sorted(theine_misses(trace, cap) for _ in range(THEINE_RUNS))
    n = len(trace)
    return runs[len(runs) // 2], (f"median of {THEINE_RUNS}, {runs[0] / n:.4f}-"
                                  f"{runs[-1] / n:.4f}")


def theine_misses(trace: Trace, cap: int) -> int:
    from theine import Cache

    cache: Any = Cache(cap, nolock=True)
    get, put = cache.get, cache.set
    misses = 0
    try:
        for key in trace:
            if not get(key)[1]:
                misses += 1
                put(key, key)
    finally:
        cache.close()
    return misses


# -- the run -------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(trace_dir: Path, with_refs: bool) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {}
    have_lcs = with_refs and _version("libcachesim") is not None
    have_theine = with_refs and _version("theine") is not None
    with tempfile.TemporaryDirectory() as tmp:
        for tname in TRACES:
            trace = load(trace_dir / f"{tname}.trace.gz")
            n, unique = len(trace), len(set(trace))
            txt = os.path.join(tmp, f"{tname}.txt")
            with open(txt, "w", encoding="ascii") as fh:
                fh.write("\n".join(map(str, trace)) + "\n")
            rows = []
            for size in SIZES:
                cap = capacity(trace, size)
                row: dict[str, Any] = {"size": size, "capacity": cap, "misses": {},
                                       "notes": {}, "seconds": {}}
                for name in POLICY_NAMES:
                    t0 = time.perf_counter()
                    row["misses"][f"sophia-{name}"] = replay_policy(name, trace, cap)
                    row["seconds"][f"sophia-{name}"] = round(time.perf_counter() - t0, 2)
                if have_lcs:
                    t0 = time.perf_counter()
                    for name, (misses, note) in libcachesim_misses(txt, n, cap).items():
                        row["misses"][f"libCacheSim-{name}"] = misses
                        if note:
                            row["notes"][f"libCacheSim-{name}"] = note
                    row["seconds"]["libCacheSim (all)"] = round(time.perf_counter() - t0, 2)
                if have_theine:
                    t0 = time.perf_counter()
                    row["misses"]["theine"], row["notes"]["theine"] = theine_median(trace, cap)
                    row["seconds"]["theine"] = round(time.perf_counter() - t0, 2)
                row["miss_ratio"] = {k: round(v / n, 4) for k, v in row["misses"].items()}
                row["hierarchy"] = {}
                for name in ("lru", "sieve", "s3fifo", "wtinylfu", "adaptive"):
                    for adm in (False, True):
                        label = f"{name}, {'admission' if adm else 'always promote'}"
                        row["hierarchy"][label] = round(
                            replay_hierarchy(name, trace, cap, adm) / n, 4)
                rows.append(row)
                best = min(row["miss_ratio"].items(), key=lambda kv: kv[1])
                _progress(f"{tname:16} {size:>4.0%} cap={cap:<6} best {best[0]}={best[1]:.4f}  "
                          f"sophia: " + " ".join(
                              f"{k[7:]}={row['miss_ratio'][k]:.4f}" for k in OURS
                              if k in row["miss_ratio"]))
            results[tname] = {"requests": n, "unique": unique, "rows": rows}
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()} {os.cpu_count()} CPUs",
        "versions": {d: _version(d) for d in ("sophia-memory", "libcachesim", "theine",
                                              "matplotlib")},
        "default_policy": DEFAULT_POLICY,
        "model": "every request a get, a miss inserts, size 1; capacity = max(10, "
                 "round(unique x size)); miss ratio over the whole trace",
        "elapsed_s": round(time.perf_counter() - started, 1),
        "traces": results,
    }


# -- the report ----------------------------------------------------------------------------------

def acceptance(data: dict[str, Any], policy: str) -> dict[str, Any]:
    """Worst gap of ``policy`` to the best policy in the study and to LRU, over every trace
    and size (the issue's acceptance: within 0.01 of the best, at most 0.005 worse than LRU)."""
    to_best, to_lru = [], []
    for tname, tr in data["traces"].items():
        for row in tr["rows"]:
            ratios = row["miss_ratio"]
            best = min(ratios.items(), key=lambda kv: kv[1])
            mine = ratios[policy]
            to_best.append((round(mine - best[1], 4), tname, row["size"], best[0]))
            to_lru.append((round(mine - ratios["sophia-lru"], 4), tname, row["size"]))
    worst_best, worst_lru = max(to_best), max(to_lru)
    return {"policy": policy, "worst_gap_to_best": worst_best, "worst_gap_to_lru": worst_lru,
            "passes": worst_best[0] <= 0.01 and worst_lru[0] <= 0.005}


def render(data: dict[str, Any]) -> str:
    lines = ["# Hit-ratio study", "",
             f"`{data['command']}` - {data['date']}, commit {data['git_commit']}, Python "
             f"{data['python']}, {data['machine']}; " + ", ".join(
                 f"{k} {v}" for k, v in data["versions"].items() if v) +
             f"; {data['elapsed_s']} s.", "",
             f"Model: {data['model']}. Miss ratios (lower is better); **bold** is the best "
             "policy of the row. sophia's policies are driven through their hooks.", ""]
    for tname, tr in data["traces"].items():
        rows = tr["rows"]
        names = list(rows[0]["miss_ratio"])
        lines += [f"## {tname} ({tr['requests']:,} requests, {tr['unique']:,} unique)", "",
                  "| policy | " + " | ".join(f"{r['size']:.0%} ({r['capacity']:,})"
                                            for r in rows) + " |",
                  "|---|" + "---:|" * len(rows)]
        for name in names:
            cells = []
            for r in rows:
                value = r["miss_ratio"][name]
                cell = f"{value:.4f}"
                if value == min(r["miss_ratio"].values()):
                    cell = f"**{cell}**"
                if name in r["notes"]:
                    cell += f" ({r['notes'][name]})"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "L1 over an unbounded slower tier: L1 miss ratio, promotion with and "
                  "without admission", "",
                  "| L1 policy, promotion | " + " | ".join(f"{r['size']:.0%}" for r in rows)
                  + " |", "|---|" + "---:|" * len(rows)]
        for label in rows[0]["hierarchy"]:
            lines.append(f"| {label} | " + " | ".join(
                f"{r['hierarchy'][label]:.4f}" for r in rows) + " |")
        lines.append("")
    lines += ["## Acceptance (issue 12)", "",
              "Worst gap over every trace and size: policy - best policy of the study, and "
              "policy - LRU (miss ratio points; the bar: <= 0.01 and <= 0.005).", "",
              "| policy | worst gap to best (where) | worst gap to LRU (where) | passes |",
              "|---|---|---|---|"]
    for acc in data["acceptance"]:
        b, lru = acc["worst_gap_to_best"], acc["worst_gap_to_lru"]
        lines.append(f"| {acc['policy']} | {b[0]:+.4f} ({b[1]} {b[2]:.0%}, best {b[3]}) | "
                     f"{lru[0]:+.4f} ({lru[1]} {lru[2]:.0%}) | {'yes' if acc['passes'] else 'no'}"
                     " |")
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(data["traces"].items())
    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 5))
    for ax, (tname, tr) in zip(axes, traces, strict=True):
        rows = tr["rows"]
        sizes = [100 * r["size"] for r in rows]
        for name in rows[0]["miss_ratio"]:
            ours = name.startswith("sophia-")
            ax.plot(sizes, [r["miss_ratio"][name] for r in rows], label=name,
                    marker="o" if ours else ".", linewidth=2.2 if ours else 1.0,
                    linestyle="-" if ours else "--")
        ax.set_title(f"{tname} ({tr['requests']:,} requests)")
        ax.set_xlabel("cache size (% of unique ids)")
        ax.set_ylabel("miss ratio")
        ax.set_xticks(sizes)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=REPO.parent / "shared" / "traces")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-references", action="store_true",
                        help="sophia's policies only (no libCacheSim, no theine)")
    args = parser.parse_args(argv)
    if not args.traces.is_dir():
        parser.error(f"no traces at {args.traces} (see shared/traces/README.md)")
    data = run(args.traces, with_refs=not args.no_references)
    data["acceptance"] = [acceptance(data, name) for name in OURS]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hit_ratio_latest.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "hit_ratio_latest.md").write_text(render(data))
    if _version("matplotlib") is not None:
        plot(data, args.out / "hit_ratio.png")
    _progress(f"wrote {args.out}/hit_ratio_latest.{{md,json}} and hit_ratio.png "
              f"({data['elapsed_s']} s)")
    for acc in data["acceptance"]:
        _progress(f"{acc['policy']}: worst gap to best {acc['worst_gap_to_best']}, "
                  f"to LRU {acc['worst_gap_to_lru']}, passes={acc['passes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
