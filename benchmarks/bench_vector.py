"""VectorIndex (the L4 vector tier's exact index) against faiss ``IndexFlatIP``, side by side.

    python benchmarks/bench_vector.py [--rounds 7] [--n 100000] [--dim 384]

100k x 384 random float32 vectors, k = 10, metrics ``ip`` and ``cosine`` (faiss gets
L2-normalised data, and normalises each query inside the timed call, as a user would).
Measured in one process, in interleaved rounds (the contestant that starts alternates):

* single queries/s: ``--single`` queries, one call each;
* batched queries/s: ``--batches`` calls of ``--batch`` queries each;
* bulk insert vectors/s: ``add_many`` of all vectors into a fresh index (faiss: ``add``);
* memory per vector: the matrix (``memory_bytes()``), and everything the index holds
  (matrix + key dict + row list + namespace ids, via tracemalloc).

Every figure is the median over rounds. Each thread setting is measured separately:
faiss's OpenMP threads equal to NumPy's BLAS threads (the default here), then both at 1.
faiss returns row ids and VectorIndex ``(key, score)`` lists; the faiss figure does not
include mapping ids back to keys. Results go to ``benchmarks/results/vector_latest.{json,md}``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import glob
import json
import os
import platform
import shlex
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sophia_memory.vector_index import VectorIndex

try:
    import faiss
except ImportError:  # pragma: no cover - the comparison is the point of this script
    sys.exit("this benchmark compares against faiss: pip install faiss-cpu")

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.8  # VectorIndex queries/s must reach this fraction of faiss IndexFlatIP's
TUNED = "faiss IndexFlatIP, BLAS from nq=20"


# -- the machine and its thread pools ----------------------------------------------------------


class NumpyBlas:
    """Get/set the thread count of the OpenBLAS that NumPy bundles (None when not found)."""

    def __init__(self) -> None:
        self.get: Callable[[], int] | None = None
        self.set: Callable[[int], None] | None = None
        libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*blas*")
        for path in glob.glob(libs):
            lib = ctypes.CDLL(path)
            for suffix in ("64_", "_64_", ""):
                get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                if get is None or set_ is None:
                    get = getattr(lib, f"openblas_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    self.get, self.set = get, set_
                    return

    def threads(self) -> int | None:
        return None if self.get is None else int(self.get())


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment(blas: NumpyBlas) -> dict[str, Any]:
    np_cfg: dict[str, Any] = np.show_config(mode="dicts")  # type: ignore[func-returns-value]
    np_blas = np_cfg.get("Build Dependencies", {}).get("blas", {})
    return {
        "command": shlex.join(sys.orig_argv),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "sophia-memory": metadata.version("sophia-memory"),
        },
        "numpy_blas": {"name": np_blas.get("name"), "version": np_blas.get("version"),
                       "threads_default": blas.threads()},
        "faiss_omp_threads_default": faiss.omp_get_max_threads(),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
    }


# -- timing --------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(contestants: dict[str, Callable[[], object]], rounds: int,
                per_call: int) -> dict[str, dict[str, float]]:
    """Run every contestant once per round, rotating who starts; ops/s median and spread."""
    names = list(contestants)
    for fn in contestants.values():  # warm-up: caches, lazy BLAS initialisation
        fn()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rates[name].append(per_call / timed(contestants[name]))
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for name, v in rates.items()}


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, copy=True)
    faiss.normalize_L2(x)
    return x


def bench_metric(metric: str, data: np.ndarray, keys: list[str], *, singles: np.ndarray,
                 batches: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    ix = VectorIndex(args.dim, metric=metric)  # type: ignore[arg-type]
    ix.add_many(keys, data)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(normalised(data) if metric == "cosine" else data)

    def prep(x: np.ndarray) -> np.ndarray:
        return normalised(x) if metric == "cosine" else x

    _, ids = flat.search(prep(batches[0]), args.k)  # validity: the same top-k keys
    got = ix.search_batch(batches[0], k=args.k)
    agree = all([key for key, _ in hits] == [keys[i] for i in row]
                for hits, row in zip(got, ids, strict=True))
    k = args.k
    single = interleaved({
        "VectorIndex": lambda: [ix.search(q, k=k) for q in singles],
        "faiss IndexFlatIP": lambda: [flat.search(prep(q[None]), k) for q in singles],
    }, args.rounds, args.single)
    default_threshold = faiss.cvar.distance_compute_blas_threshold

    def faiss_blas() -> None:  # faiss < 1.14's switch: BLAS from 20 queries up
        faiss.cvar.distance_compute_blas_threshold = 20 * args.dim
        try:
            for b in batches:
                flat.search(prep(b), k)
        finally:
            faiss.cvar.distance_compute_blas_threshold = default_threshold

    batched = interleaved({
        "VectorIndex": lambda: [ix.search_batch(b, k=k) for b in batches],
        "faiss IndexFlatIP": lambda: [flat.search(prep(b), k) for b in batches],
        TUNED: faiss_blas,
    }, args.rounds, args.batch * args.batches)
    return {"topk_agree_with_faiss": agree, "single_qps": single, "batched_qps": batched}


def bench_queries(data: np.ndarray, keys: list[str], args: argparse.Namespace
                  ) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    singles = rng.standard_normal((args.single, args.dim), dtype=np.float32)
    batches = [rng.standard_normal((args.batch, args.dim), dtype=np.float32)
               for _ in range(args.batches)]
    return {metric: bench_metric(metric, data, keys, singles=singles, batches=batches, args=args)
            for metric in ("ip", "cosine")}


def bench_insert(data: np.ndarray, keys: list[str], args: argparse.Namespace
                 ) -> dict[str, Any]:
    held: list[object] = []  # the index built by the last call, freed before the next

    def vi(metric: str) -> Callable[[], object]:
        def run() -> None:
            held.clear()
            ix = VectorIndex(args.dim, metric=metric)  # type: ignore[arg-type]
            ix.add_many(keys, data)
            held.append(ix)
        return run

    def flat(metric: str) -> Callable[[], object]:
        def run() -> None:
            held.clear()
            index = faiss.IndexFlatIP(args.dim)
            index.add(normalised(data) if metric == "cosine" else data)
            held.append(index)
        return run

    rates = interleaved({"VectorIndex ip": vi("ip"), "faiss IndexFlatIP ip": flat("ip"),
                         "VectorIndex cosine": vi("cosine"),
                         "faiss IndexFlatIP cosine": flat("cosine")},
                        max(3, args.rounds // 2), len(keys))
    held.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ix = VectorIndex(args.dim, metric="ip")
    ix.add_many(keys, data)
    total = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    index = faiss.IndexFlatIP(args.dim)
    index.add(data)
    return {
        "insert_vectors_per_s": rates,
        "bytes_per_vector": {
            "VectorIndex matrix (memory_bytes)": ix.memory_bytes() / len(ix),
            "VectorIndex everything (tracemalloc)": total / len(ix),
            "faiss IndexFlatIP codes": index.codes.size() / index.ntotal,
        },
    }


def bench_memory_insert(data: np.ndarray) -> dict[str, float]:
    """End to end: one ``Memory.put_many`` of every vector into the vector tier (values,
    validation, one SQLite transaction, index update), on a fresh database."""
    import asyncio
    import tempfile

    from sophia_memory import Memory, Tier

    keys = [f"doc{i}" for i in range(len(data))]

    async def run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            async with Memory.open(path=f"{tmp}/v.db", promote=False,
                                   tiers={Tier.GPU: None, Tier.SESSION: None}) as mem:
                t0 = time.perf_counter()
                await mem.put_many({k: {"i": i} for i, k in enumerate(keys)},
                                   tier=Tier.VECTOR, vectors=dict(zip(keys, data, strict=True)))
                took = time.perf_counter() - t0
                hits = await mem.search(data[7], k=1)
                assert hits[0].key == "doc7", hits
                return len(keys) / took

    return {"Memory.put_many -> vector tier (SQLite + index)": asyncio.run(run())}


# -- report --------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [
        "# VectorIndex vs faiss IndexFlatIP",
        "",
        f"`{env['command']}` — {env['date_utc']}; {env['machine']['cpu_model']}, "
        f"{env['machine']['cpus_usable']} usable CPUs; numpy {env['versions']['numpy']} "
        f"({env['numpy_blas']['name']} {env['numpy_blas']['version']}), "
        f"faiss {env['versions']['faiss']}.",
        f"Load average (1/5/15 min) at start {env['machine']['load_average_at_start']}, "
        f"at end {env['machine']['load_average_at_end']}.",
        f"{res['n']} x {res['dim']} float32, k = {res['k']}, batches of {res['batch']}; "
        f"medians of {res['rounds']} interleaved rounds (min-max in brackets).",
        "",
        "The target: VectorIndex q/s >= 0.8 x faiss IndexFlatIP (defaults). faiss >= 1.14 "
        "uses BLAS only when nq x dim >= 128000 (nq >= 334 at dim 384), so batches of 64 take "
        "its per-query SIMD scan; the last columns force its BLAS path from 20 queries "
        "(`faiss.cvar.distance_compute_blas_threshold = 20 * dim`, the older default).",
        "",
        "| threads (numpy BLAS / faiss OMP) | metric | mode | VectorIndex q/s | faiss q/s "
        "| ratio | target | faiss BLAS q/s | ratio |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]

    def cell(r: dict[str, float]) -> str:
        return f"{r['median']:,.0f} [{r['min']:,.0f}-{r['max']:,.0f}]"

    for cfg in res["queries"]:
        for metric, r in cfg["results"].items():
            for mode in ("single", "batched"):
                rates = r[f"{mode}_qps"]
                a, b = rates["VectorIndex"], rates["faiss IndexFlatIP"]
                ratio = a["median"] / b["median"]
                tuned = (f"{cell(rates[TUNED])} | {a['median'] / rates[TUNED]['median']:.2f}"
                         if TUNED in rates else "n/a (same path) | ")
                lines.append(
                    f"| {cfg['numpy_blas_threads']} / {cfg['faiss_omp_threads']} | {metric} "
                    f"| {mode} | {cell(a)} | {cell(b)} "
                    f"| {ratio:.2f} | {'met' if ratio >= TARGET else 'MISSED'} | {tuned} |")
    lines += ["", "| bulk insert | vectors/s |", "|---|---:|"]
    for name, r in res["insert"]["insert_vectors_per_s"].items():
        lines.append(f"| {name} | {r['median']:,.0f} [{r['min']:,.0f}-{r['max']:,.0f}] |")
    for name, rate in res.get("memory_insert", {}).items():
        lines.append(f"| {name} | {rate:,.0f} (one run) |")
    lines += ["", "| memory | bytes/vector |", "|---|---:|"]
    for name, b in res["insert"]["bytes_per_vector"].items():
        lines.append(f"| {name} | {b:,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--single", type=int, default=200, help="single queries per round")
    ap.add_argument("--batch", type=int, default=64, help="queries per batch")
    ap.add_argument("--batches", type=int, default=5, help="batches per round")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    blas = NumpyBlas()
    res: dict[str, Any] = {"environment": environment(blas), "n": args.n, "dim": args.dim,
                           "k": args.k, "batch": args.batch, "rounds": args.rounds}
    data = np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32)
    keys = [f"tenant{i % 4}\x1fdoc{i}" for i in range(args.n)]
    default = blas.threads() or faiss.omp_get_max_threads()
    settings = [default] + ([1] if default > 1 and blas.set is not None else [])
    res["queries"] = []
    for threads in settings:
        if blas.set is not None:
            blas.set(threads)
        faiss.omp_set_num_threads(threads)
        print(f"queries: numpy BLAS threads {blas.threads()}, faiss OMP threads "
              f"{faiss.omp_get_max_threads()} ...", flush=True)
        res["queries"].append({"numpy_blas_threads": blas.threads(),
                               "faiss_omp_threads": faiss.omp_get_max_threads(),
                               "results": bench_queries(data, keys, args)})
    if blas.set is not None:
        blas.set(default)
    faiss.omp_set_num_threads(default)
    print("bulk insert and memory ...", flush=True)
    res["insert"] = bench_insert(data, keys, args)
    print("end-to-end insert through Memory ...", flush=True)
    res["memory_insert"] = bench_memory_insert(data)
    res["environment"]["machine"]["load_average_at_end"] = [
        round(x, 2) for x in os.getloadavg()]
    md = markdown(res)
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vector_latest.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "vector_latest.md").write_text(md)
    print(f"wrote {RESULTS / 'vector_latest.json'} and {RESULTS / 'vector_latest.md'}")


if __name__ == "__main__":
    main()
