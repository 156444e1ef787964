"""The L0 GPU pools side by side with raw CuPy and torch, in one run on one device.

    PYTHONPATH=src python benchmarks/bench_gpu.py [--out DIR] [--quick]

1. put of 256 MiB from host memory through ``cupy://0`` vs a raw pinned CuPy host-to-device
   copy of the same bytes (and CuPy's own pageable ``cupy.asarray``);
2. resident ``get`` latency at several sizes (it returns the pool's array: no copy);
3. eviction churn at 2x a pool's budget (puts/s, evictions, spills);
4. exact vector search: ``VectorIndex`` on CuPy, its matrix in the ``vector_cache`` pool, vs
   torch on the GPU and the NumPy index, 100k x 384 and 1M x 384, k = 10, single and batched.

Writes ``bench_gpu.json`` and ``bench_gpu.md`` (with the device, versions and command) under
``--out`` (default ``$OUT``, else a temporary directory). Without a usable GPU it says so,
writes that, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.gpupool import CupyPoolBackend
from sophia_memory.gpu import detect_gpu
from sophia_memory.vector_index import VectorIndex

MiB = 2**20


def median_time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memory(tmp: Path, pools: dict[str, Any]) -> Memory:
    return Memory.open(path=str(tmp / f"b{time.monotonic_ns()}.db"), clock=ManualClock(),
                       tiers={Tier.GPU: "cupy://0"}, gpu_pools=pools, gpu_reserve=0)


def l0(mem: Memory) -> CupyPoolBackend:
    backend = mem._core.by_tier[Tier.GPU].backend
    assert isinstance(backend, CupyPoolBackend), type(backend)
    return backend


async def bench_put(cp: Any, tmp: Path, repeat: int) -> dict[str, Any]:
    n = 256 * MiB
    host = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    dev = cp.empty(n, cp.uint8)
    pinned_mem = cp.cuda.alloc_pinned_memory(n)
    pinned = np.frombuffer(pinned_mem, np.uint8, n)
    pinned[...] = host
    sync = cp.cuda.Device().synchronize

    def raw_pinned() -> None:
        dev.set(pinned, stream=cp.cuda.get_current_stream())

    def raw_pageable() -> None:
        cp.asarray(host)

    out: dict[str, Any] = {"bytes": n}
    out["raw_pinned_h2d_s"] = median_time(raw_pinned, repeat, sync)
    out["raw_asarray_s"] = median_time(raw_pageable, repeat, sync)
    async with memory(tmp, {"active_models": "1GiB"}) as mem:
        times = []
        for i in range(repeat):
            sync()
            t0 = time.perf_counter()
            await mem.put(f"p{i % 2}", host, tier=Tier.GPU, pool="active_models")
            times.append(time.perf_counter() - t0)
        out["put_s"] = statistics.median(times)
        out["staging_chunk"] = l0(mem).allocator.staging_chunk
    for key in ("raw_pinned_h2d_s", "raw_asarray_s", "put_s"):
        out[key.replace("_s", "_GBps")] = round(n / out[key] / 1e9, 2)
    out["put_vs_raw_pinned"] = round(out["raw_pinned_h2d_s"] / out["put_s"], 3)
    return out


async def bench_get(cp: Any, tmp: Path, calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with memory(tmp, {"inference_cache": "1GiB"}) as mem:
        for size in (4 * 1024, MiB, 64 * MiB, 256 * MiB):
            await mem.put("k", np.zeros(size, np.uint8), tier=Tier.GPU)
            await mem.get("k")
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                got = await mem.get("k")
                times.append(time.perf_counter() - t0)
                del got
            times.sort()
            out[f"{size}"] = {"p50_us": round(times[len(times) // 2] * 1e6, 2),
                              "p99_us": round(times[int(len(times) * 0.99)] * 1e6, 2)}
            await mem.delete("k")
    return out


async def bench_churn(cp: Any, tmp: Path) -> dict[str, Any]:
    budget, item = 256 * MiB, 8 * MiB
    async with memory(tmp, {"inference_cache": budget}) as mem:
        value = np.ones(item, np.uint8)
        total = 2 * budget
        t0 = time.perf_counter()
        for i in range(total // item):
            await mem.put(f"c{i}", value, tier=Tier.GPU)
        took = time.perf_counter() - t0
        await mem.flush()
        st = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"]["inference_cache"]
        mp = l0(mem).allocator.memory_pool("inference_cache")
        return {"budget": budget, "item": item, "puts": total // item,
                "puts_per_s": round(total / item / took, 1),
                "GBps": round(total / took / 1e9, 2), "evictions": st["evictions"],
                "spills": st["spills"], "oom_retries": st["oom_retries"],
                "cupy_total_bytes": int(mp.total_bytes()), "limit": int(mp.get_limit())}


async def bench_search(cp: Any, tmp: Path, sizes: list[int], dim: int,
                       repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(2)
    for n in sizes:
        mat = rng.standard_normal((n, dim), dtype=np.float32)
        queries = rng.standard_normal((64, dim), dtype=np.float32)
        row = await _search_one(cp, tmp, mat, queries, repeat)
        out[f"{n}x{dim}"] = {k: round(v, 3) if isinstance(v, float) else v
                             for k, v in row.items()}
    return out


async def _search_one(cp: Any, tmp: Path, mat: np.ndarray[Any, Any],
                      queries: np.ndarray[Any, Any], repeat: int) -> dict[str, Any]:
    keys = [f"d{i}" for i in range(len(mat))]
    dim = mat.shape[1]
    sync = cp.cuda.Device().synchronize
    row: dict[str, Any] = {}
    async with memory(tmp, {"vector_cache": "4GiB"}) as mem:
        pool = l0(mem).allocator.memory_pool("vector_cache")
        gpu_index = VectorIndex(dim, xp=cp)
        with cp.cuda.using_allocator(pool.malloc):  # the matrix lives in vector_cache
            gpu_index.add_many(keys, mat)
        row["vector_cache_bytes"] = int(pool.used_bytes())
        row["cupy_single_ms"] = 1e3 * median_time(
            lambda: gpu_index.search(queries[0], 10), repeat, sync)
        row["cupy_batch64_ms"] = 1e3 * median_time(
            lambda: gpu_index.search_batch(queries, 10), repeat, sync)
        gpu_hits = [k for k, _ in gpu_index.search(queries[0], 10)]
        gpu_index.clear()
    cpu_index = VectorIndex(dim)
    cpu_index.add_many(keys, mat)
    cpu_repeat = max(3, repeat // 2)
    row["numpy_single_ms"] = 1e3 * median_time(
        lambda: cpu_index.search(queries[0], 10), cpu_repeat, lambda: None)
    row["numpy_batch64_ms"] = 1e3 * median_time(
        lambda: cpu_index.search_batch(queries, 10), cpu_repeat, lambda: None)
    expect = [k for k, _ in cpu_index.search(queries[0], 10)]
    row["cupy_agrees_with_numpy"] = gpu_hits == expect
    try:
        import torch
    except ImportError:
        return row
    if torch.cuda.is_available():
        tm = torch.from_numpy(mat).cuda()
        tm = tm / tm.norm(dim=1, keepdim=True)
        tq = torch.from_numpy(queries).cuda()
        tq = tq / tq.norm(dim=1, keepdim=True)

        def single() -> Any:
            return torch.topk(tm @ tq[0], 10).indices.tolist()

        def batch() -> Any:
            return torch.topk(tq @ tm.T, 10, dim=1).indices.tolist()

        row["torch_single_ms"] = 1e3 * median_time(single, repeat, torch.cuda.synchronize)
        row["torch_batch64_ms"] = 1e3 * median_time(batch, repeat, torch.cuda.synchronize)
        row["torch_agrees_with_numpy"] = [keys[i] for i in single()] == expect
    return row


def environment(gpu: Any) -> dict[str, Any]:
    versions = {}
    for name in ("numpy", "cupy", "torch"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module else None
    return {"device": gpu.name, "device_bytes": gpu.total_bytes,
            "command": "PYTHONPATH=src python " + shlex.join(sys.argv),
            "python": platform.python_version(), "machine": platform.node(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions}


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [f"# L0 GPU pools: {env['device']}", "", f"`{env['command']}`, {env['when']}, "
             f"versions {env['versions']}", ""]
    for section, body in res.items():
        if section == "environment":
            continue
        lines += [f"## {section}", "", "```", json.dumps(body, indent=2), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or tempfile.mkdtemp())
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 100k rows only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = detect_gpu(0)
    if not gpu.available:
        note = {"skipped": f"no device: {gpu.reason}", "command": shlex.join(sys.argv)}
        (out / "bench_gpu.json").write_text(json.dumps(note, indent=2))
        print(f"bench_gpu: SKIP, no device: {gpu.reason}")
        return 0
    import cupy as cp

    repeat = 3 if args.quick else 7
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    res: dict[str, Any] = {"environment": environment(gpu)}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("put_256MiB", lambda: bench_put(cp, tmp, repeat)),
            ("resident_get", lambda: bench_get(cp, tmp, 200 if args.quick else 2000)),
            ("eviction_churn_2x_budget", lambda: bench_churn(cp, tmp)),
            ("vector_search_k10", lambda: bench_search(cp, tmp, sizes, 384, repeat)),
        ]
        for name, step in steps:
            t0 = time.perf_counter()
            try:
                res[name] = asyncio.run(step())
            except Exception as exc:  # one failed section must not lose the others
                res[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name} ({time.perf_counter() - t0:.1f} s): {json.dumps(res[name])}",
                  flush=True)
            (out / "bench_gpu.json").write_text(json.dumps(res, indent=2))
    (out / "bench_gpu.md").write_text(markdown(res))
    print(f"bench_gpu: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
