"""L0 on a real GPU through CuPy (``cupy://0``). Every test here needs a usable CUDA device and
skips, saying why, without one. Written without a GPU: not yet run on one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.hostpool import PoolBackend, to_host
from sophia_memory.gpu import detect_gpu

_GPU = detect_gpu(0)
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _GPU.available, reason=f"no usable GPU: {_GPU.reason}")]

KiB = 1024


def gpu_memory(tmp_path: Path, clock: ManualClock, pools: dict[str, Any]) -> Memory:
    return Memory.open(path=str(tmp_path / "gpu.db"), clock=clock,
                       tiers={Tier.GPU: "cupy://0"}, gpu_pools=pools)


def pool_stats(mem: Memory, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"][name]
    return stats


async def test_cupy_pools_open_on_the_device_with_their_limits(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    import cupy

    async with gpu_memory(tmp_path, clock, {"inference_cache": "1MiB", "buffer": "64KiB"}) as mem:
        backend = mem._core.by_tier[Tier.GPU].backend
        assert isinstance(backend, PoolBackend) and backend.scheme == "cupy"
        stats = mem.stats()["tiers"]["GPU"]["backend_stats"]
        assert stats["device"].startswith("cuda:0")
        assert stats["pools"]["buffer"]["limit"] == 64 * KiB
        value = np.arange(1000, dtype=np.float32)
        await mem.put("x", value, tier=Tier.GPU)
        first, second = await mem.get("x"), await mem.get("x")
        assert isinstance(first, cupy.ndarray) and first is second  # resident: no copy
        assert np.array_equal(to_host(first), value)
        assert pool_stats(mem, "inference_cache")["allocated"] >= value.nbytes


async def test_torch_tensors_come_back_as_cuda_torch_through_dlpack(
        tmp_path: Path, clock: ManualClock) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    state = {"w": torch.randn(64, 64, device="cuda"), "b": torch.zeros(64),
             "s": torch.ones(8, dtype=torch.bfloat16, device="cuda")}
    async with gpu_memory(tmp_path, clock, {"active_models": "4MiB"}) as mem:
        await mem.put("model", state, tier=Tier.GPU, pool="active_models")
        got = await mem.get("model")
        assert set(got) == set(state)
        for k, t in got.items():
            assert isinstance(t, torch.Tensor) and t.is_cuda and t.dtype == state[k].dtype
            assert torch.equal(t.cpu(), state[k].cpu())
        assert pool_stats(mem, "active_models")["items"] == 1


async def test_out_of_memory_evicts_spills_and_retries_on_the_device(
        tmp_path: Path, clock: ManualClock) -> None:
    # A state_dict of 64 four-byte arrays: the LRU counts ~5 KiB, CuPy takes 64 * 512 bytes.
    pools = {"inference_cache": "64KiB"}
    async with gpu_memory(tmp_path, clock, pools) as mem:
        items = {f"m{i}": {f"p{j}": np.full(1, i * 100 + j, np.float32) for j in range(64)}
                 for i in range(6)}
        for key, value in items.items():
            await mem.put(key, value, tier=Tier.GPU)
            st = pool_stats(mem, "inference_cache")
            assert st["allocated"] <= 64 * KiB
        st = pool_stats(mem, "inference_cache")
        assert st["oom_retries"] > 0 and st["spills"] > 0
        for key, value in items.items():
            got = to_host(await mem.get(key))
            assert all(np.array_equal(got[k], v) for k, v in value.items()), key
        assert any(e is not None and e.tier is Tier.SESSION
                   for e in [await mem.get_entry(k) for k in items])
