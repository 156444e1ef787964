"""PASS / FAIL / SKIP for each claim the L0 GPU pools make, on this machine's device.

    PYTHONPATH=src python benchmarks/gpu_probe.py [--out DIR]

Every claim runs on its own and the probe never stops early: a failing or crashing claim is
reported (with its error) and the next one runs. Without a usable GPU the device claims print
SKIP with the reason detection gave, and the configuration claims (which need no device) still
run. Writes ``probe.json`` under ``--out`` (default ``$OUT``, else a temporary directory).
Exit status: 1 if any claim FAILED, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.gpupool import CupyPoolBackend
from sophia_memory.backends.pools.hostpool import to_host
from sophia_memory.errors import ConfigError, ValueTooLargeError
from sophia_memory.gpu import GpuInfo, detect_gpu
from sophia_memory.pools import DEFAULT_POOLS, device_memory, format_bytes, plan_pools

KiB, MiB = 2**10, 2**20


class Skip(Exception):
    """The claim cannot be checked here (no device, no CUDA torch)."""


def memory(tmp: Path, pools: dict[str, Any], **kw: Any) -> Memory:
    return Memory.open(path=str(tmp / f"probe{time.monotonic_ns()}.db"), clock=ManualClock(),
                       tiers={Tier.GPU: "cupy://0"}, gpu_pools=pools, gpu_reserve=0, **kw)


def l0(mem: Memory) -> CupyPoolBackend:
    backend = mem._core.by_tier[Tier.GPU].backend
    if not isinstance(backend, CupyPoolBackend):
        raise AssertionError(f"L0 is {type(backend).__name__}, not the CuPy pools")
    return backend


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


class Probe:
    def __init__(self, gpu: GpuInfo, tmp: Path) -> None:
        self.gpu = gpu
        self.tmp = tmp
        self.results: list[dict[str, Any]] = []

    def device(self) -> Any:
        if not self.gpu.available:
            raise Skip(f"no device: {self.gpu.reason}")
        import cupy

        return cupy

    def run(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        try:
            detail, status = fn(), "PASS"
        except Skip as exc:
            detail, status = str(exc), "SKIP"
        except Exception as exc:
            detail, status = f"{type(exc).__name__}: {exc}", "FAIL"
            traceback.print_exc(file=sys.stderr)
        took = time.perf_counter() - t0
        self.results.append({"claim": name, "status": status, "detail": detail,
                             "seconds": round(took, 3)})
        print(f"{status:<4}  {name}: {detail}", flush=True)

    # -- configuration (no device needed) ---------------------------------------------------------

    def detection(self) -> str:
        cp = self.device()
        check(bool(self.gpu.name) and (self.gpu.total_bytes or 0) > 2**30, f"got {self.gpu}")
        return (f"{self.gpu.name}, {format_bytes(self.gpu.total_bytes or 0)} reported "
                f"(CuPy {cp.__version__})")

    def default_split(self) -> str:
        self.device()
        total = int(self.gpu.total_bytes or 0)
        budgets = plan_pools(DEFAULT_POOLS, total)
        usable = total - int(total * 0.02)
        check(sum(budgets.values()) <= usable, "the default pools exceed usable memory")
        check(budgets["active_models"] == int(0.40 * usable), "40 % pool is off")
        return ", ".join(f"{n}={format_bytes(b)}" for n, b in budgets.items()) + \
            f" of usable {format_bytes(usable)}"

    def gh200_refusal(self) -> str:
        pools = {"active_models": "60GB", "inference_cache": "40GB", "vector_cache": "30GB",
                 "buffer": "11GB"}
        try:
            plan_pools(pools, device_memory("GH200"), device="GH200")
        except ConfigError as exc:
            msg = str(exc)
            check(all(n in msg for n in pools) and "total" in msg and "usable" in msg, msg)
            return msg
        raise AssertionError("60+40+30+11 GB was accepted on the 96 GB GH200 preset")

    # -- the device ----------------------------------------------------------------------------

    def resident_pointer(self) -> str:
        cp = self.device()

        async def main() -> str:
            async with memory(self.tmp, {"inference_cache": "16MiB"}) as mem:
                await mem.put("x", np.arange(1 << 20, dtype=np.float32), tier=Tier.GPU)
                a, b = await mem.get("x"), await mem.get("x")
                pool = l0(mem)._held["x"][1].handle[0]
                check(isinstance(a, cp.ndarray), f"get returned {type(a)}")
                check(a.data.ptr == b.data.ptr == pool.data.ptr, "pointers differ")
                return f"ptr 0x{a.data.ptr:x} on every get"
        return asyncio.run(main())

    def churn_limits(self) -> str:
        self.device()
        budgets = {"active_models": 8 * MiB, "inference_cache": 4 * MiB}

        async def main() -> str:
            rng = np.random.default_rng(1)
            peak = dict.fromkeys(budgets, 0)
            async with memory(self.tmp, budgets) as mem:
                backend = l0(mem)
                for step in range(400):
                    pool = ("active_models", "inference_cache")[step % 2]
                    n = int(rng.integers(1, 300_000))
                    await mem.put(f"k{int(rng.integers(100))}", rng.random(n, np.float32),
                                  tier=Tier.GPU, pool=pool)
                    for name, limit in budgets.items():
                        mp = backend.allocator.memory_pool(name)
                        total = int(mp.total_bytes())
                        check(mp.get_limit() == limit, f"{name}: CuPy limit {mp.get_limit()}")
                        check(total <= limit, f"step {step}: {name} total {total} > {limit}")
                        peak[name] = max(peak[name], total)
                spills = sum(p["spills"] for p in
                             mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"].values())
                check(spills > 0, "no spills: the churn did not fill the pools")
                return f"peak total_bytes {peak} within {budgets}; {spills} spills"
        return asyncio.run(main())

    def oom_retry(self) -> str:
        self.device()

        async def main() -> str:
            async with memory(self.tmp, {"inference_cache": "64KiB"}) as mem:
                for i in range(8):
                    await mem.put(f"w{i}", np.full(2000, i, np.float32), tier=Tier.GPU)
                mp = l0(mem).allocator.memory_pool("inference_cache")
                mp.set_limit(size=48 * KiB)  # CuPy refuses what the pool logic expects to fit
                await mem.put("w8", np.full(2000, 8, np.float32), tier=Tier.GPU)
                st = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"]["inference_cache"]
                check(st["oom_retries"] == 2 and st["spills"] == 3, f"stats {st}")
                check(int(mp.total_bytes()) <= 48 * KiB, "over CuPy's limit")
                await mem.flush()
                for i in range(9):
                    got = to_host(await mem.get(f"w{i}"))
                    check(np.array_equal(got, np.full(2000, i, np.float32)), f"w{i} lost")
                return "2 OutOfMemoryErrors -> 3 evictions (spilled, readable) -> stored"
        return asyncio.run(main())

    def spill_and_promotion(self) -> str:
        cp = self.device()

        async def main() -> str:
            async with memory(self.tmp, {"inference_cache": "64KiB"}) as mem:
                a = np.full(10_000, 1, np.float32)
                await mem.put("a", a, tier=Tier.GPU)
                await mem.put("b", a * 2, tier=Tier.GPU)
                await mem.flush()
                entry = await mem.get_entry("a")
                check(entry is not None and entry.tier is Tier.SESSION, f"a: {entry}")
                await mem.put("c", a * 3, tier=Tier.PERSISTENT)
                for _ in range(2):
                    await mem.get("c")
                    await mem.flush()
                entry = await mem.get_entry("c")
                check(entry is not None and entry.tier is Tier.GPU and
                      isinstance(entry.value, cp.ndarray), f"c: {entry}")
                return "evicted home item spilled to SESSION; 2nd hit promoted c into L0"
        return asyncio.run(main())

    def stream_order(self) -> str:
        cp = self.device()

        async def main() -> str:
            async with memory(self.tmp, {"inference_cache": "512MiB"}) as mem:
                bad = []
                for label, stream in (("null", cp.cuda.Stream.null),
                                      ("non-blocking", cp.cuda.Stream(non_blocking=True))):
                    with stream:
                        x = cp.zeros(32 * MiB // 4, cp.float32)
                        for _ in range(50):
                            x += 1
                        await mem.put("x", x, tier=Tier.GPU)
                    got = await mem.get("x")
                    lo, hi = float(got.min()), float(got.max())
                    if lo != hi or lo != 50.0:
                        bad.append(f"{label}: min {lo} max {hi}")
                    del got, x
                check(not bad, "; ".join(bad))
                return "CuPy input written by 50 queued kernels stored whole (both streams)"
        return asyncio.run(main())

    def torch_bf16(self) -> str:
        self.device()
        try:
            import torch
        except ImportError as exc:
            raise Skip("torch is not installed") from exc
        if not torch.cuda.is_available():
            raise Skip("torch has no CUDA")

        async def main() -> str:
            state = {"w": torch.randn(256, 256, device="cuda"),
                     "s": torch.randn(1024, device="cuda").to(torch.bfloat16),
                     "t": torch.randn(64, 128, device="cuda").T, "c": torch.ones(10)}
            async with memory(self.tmp, {"active_models": "8MiB"}) as mem:
                await mem.put("m", state, tier=Tier.GPU, pool="active_models")
                got = await mem.get("m")
                arrays = l0(mem)._held["m"][1].handle[0]
                for k, t in got.items():
                    check(t.is_cuda and t.dtype == state[k].dtype, f"{k}: {t.dtype} {t.device}")
                    check(t.data_ptr() == arrays[k].data.ptr, f"{k}: not the pool's memory")
                    check(torch.equal(t.cpu().float(), state[k].cpu().float()), f"{k} differs")
                return "state_dict with bf16 and a strided CUDA tensor: zero-copy, equal"
        return asyncio.run(main())

    def pinned_bounded(self) -> str:
        cp = self.device()

        async def main() -> str:
            pinned = cp.get_default_pinned_memory_pool()
            before = pinned.n_free_blocks()
            async with memory(self.tmp, {"active_models": "1GiB"}) as mem:
                for i in range(3):
                    await mem.put(f"big{i}", np.full(64 * MiB, i, np.float32), tier=Tier.GPU,
                                  pool="active_models")
                alloc = l0(mem).allocator
                check(len(alloc._pinned) == 2, f"{len(alloc._pinned)} pinned buffers")
                check(pinned.n_free_blocks() == before, "CuPy's pinned pool grew")
                got = await mem.get("big2")
                check(float(got[-1]) == 2.0, "the last chunk did not arrive")
                return (f"3 x 256 MiB puts through 2 x {format_bytes(alloc.staging_chunk)} "
                        "pinned buffers")
        return asyncio.run(main())

    def held_refusal(self) -> str:
        self.device()

        async def main() -> str:
            async with memory(self.tmp, {"inference_cache": "64KiB"}) as mem:
                big = np.ones(12_000, np.float32)
                await mem.put("a", big, tier=Tier.GPU)
                reader = await mem.get("a")
                try:
                    await mem.put("b", big, tier=Tier.GPU)
                except ValueTooLargeError as exc:
                    check("held" in str(exc), str(exc))
                else:
                    raise AssertionError("a put succeeded while a reader held the pool")
                del reader
                await mem.put("b", big, tier=Tier.GPU)
                return "held get result refused by name; after del, the put succeeds"
        return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or tempfile.mkdtemp())
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = detect_gpu(0)
    print(f"device: {gpu.name or 'none'} ({gpu.reason})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Probe(gpu, Path(tmp))
        probe.run("detection names the device and its memory", probe.detection)
        probe.run("default 40:30:20:6 split fits after the reserve", probe.default_split)
        probe.run("60+40+30+11 GB refused on the 96 GB GH200 preset, by name",
                  probe.gh200_refusal)
        probe.run("resident get returns the same device pointer", probe.resident_pointer)
        probe.run("each pool's limit holds under churn (CuPy's counters)", probe.churn_limits)
        probe.run("out-of-memory evicts, frees and retries", probe.oom_retry)
        probe.run("spill to L1 and promotion into L0", probe.spill_and_promotion)
        probe.run("pool stream waits for the caller's stream", probe.stream_order)
        probe.run("torch state_dict with bf16 round-trips zero-copy", probe.torch_bf16)
        probe.run("pinned staging stays bounded", probe.pinned_bounded)
        probe.run("a held get result is refused by name, not by size", probe.held_refusal)
    counts = {s: sum(r["status"] == s for r in probe.results) for s in ("PASS", "FAIL", "SKIP")}
    (out / "probe.json").write_text(json.dumps(
        {"device": gpu.name, "reason": gpu.reason, "cupy": gpu.cupy_version,
         "results": probe.results, "counts": counts}, indent=2))
    print(f"probe: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"-> {out / 'probe.json'}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
