"""L0 on a GPU through CuPy (``cupy://0``).

Every test takes the ``cp`` fixture: ``device`` (marked ``gpu``: real CuPy on a usable CUDA
device, skipped with the detection's reason without one) and, for the tests that need no CUDA
torch, ``standin`` (the CPU stand-in of ``tests/_cupy_standin.py``, so the tests' own logic
runs everywhere). The tests are plain functions that run their coroutine with asyncio.run:
the GPU machines have pytest but not pytest-asyncio. Not yet run on a device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.gpupool import CupyPoolBackend
from sophia_memory.backends.pools.hostpool import to_host
from sophia_memory.errors import ValueTooLargeError
from sophia_memory.gpu import detect_gpu

from . import _cupy_standin
from ._gpu_support import sync_test

_GPU = detect_gpu(0)
_NO_GPU = pytest.mark.skipif(not _GPU.available, reason=f"no usable GPU: {_GPU.reason}")
_ON_DEVICE = pytest.param("device", marks=[pytest.mark.gpu, _NO_GPU])
KiB = 1024


@pytest.fixture(params=[_ON_DEVICE, "standin"])
def cp(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The CuPy module the test runs on."""
    if request.param == "standin":
        _cupy_standin.install(monkeypatch)
    import cupy

    yield cupy


@pytest.fixture
def device_cp() -> Any:
    """Real CuPy on a device, for tests the stand-in cannot run (CUDA torch, kernels)."""
    if not _GPU.available:
        pytest.skip(f"no usable GPU: {_GPU.reason}")
    import cupy

    return cupy


def gpu_memory(tmp_path: Path, pools: dict[str, Any]) -> Memory:
    return Memory.open(path=str(tmp_path / "gpu.db"), clock=ManualClock(),
                       tiers={Tier.GPU: "cupy://0"}, gpu_pools=pools, gpu_reserve=0)


def l0(mem: Memory) -> CupyPoolBackend:
    backend = mem._core.by_tier[Tier.GPU].backend
    assert isinstance(backend, CupyPoolBackend), type(backend)
    return backend


def pool_stats(mem: Memory, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"][name]
    return stats


def pool_array(mem: Memory, key: str) -> Any:
    """The pool's own device array behind ``key``."""
    arrays, _origin = l0(mem)._held[key][1].handle
    return arrays


def standin(cp: Any) -> bool:
    return "standin" in cp.__version__


@pytest.mark.parametrize("pools", [{"inference_cache": "1MiB", "buffer": "64KiB"}])
@sync_test
async def test_each_pool_is_a_cupy_memory_pool_limited_to_its_budget(
        cp: Any, tmp_path: Path, pools: dict[str, str]) -> None:
    async with gpu_memory(tmp_path, pools) as mem:
        backend = l0(mem)
        assert backend.allocator.device.startswith("cuda:0 (")
        for name, size in {"inference_cache": 2**20, "buffer": 64 * KiB}.items():
            assert backend.allocator.memory_pool(name).get_limit() == size  # CuPy's own


@sync_test
async def test_a_resident_get_returns_the_pools_device_memory(cp: Any, tmp_path: Path) -> None:
    async with gpu_memory(tmp_path, {"inference_cache": "1MiB"}) as mem:
        value = np.arange(1000, dtype=np.float32)
        await mem.put("x", value, tier=Tier.GPU)
        first, second = await mem.get("x"), await mem.get("x")
        assert isinstance(first, cp.ndarray)
        assert first.data.ptr == second.data.ptr == pool_array(mem, "x").data.ptr
        mp = l0(mem).allocator.memory_pool("inference_cache")
        assert mp.used_bytes() == 4096 and pool_stats(mem, "inference_cache")["in_use"] == 4096
        assert np.array_equal(to_host(first), value)


@sync_test
async def test_numpy_and_cupy_values_round_trip_with_dtype_and_shape(
        cp: Any, tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "f16": np.linspace(-1, 1, 33, dtype=np.float16), "i8": np.arange(-5, 5, dtype=np.int8),
        "bool": np.array([True, False, True]), "c64": np.arange(6, dtype=np.complex64) * 1j,
        "u64": np.array([2**63 + 5], dtype=np.uint64), "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "strided": np.arange(40, dtype=np.int32)[::3],
    }
    async with gpu_memory(tmp_path, {"inference_cache": "1MiB"}) as mem:
        for key, value in values.items():
            await mem.put(key, value, tier=Tier.GPU)
        source = cp.asarray(np.arange(100, dtype=np.float64))
        await mem.put("cupy", source, tier=Tier.GPU)
        for key, value in values.items():
            got = await mem.get(key)
            assert isinstance(got, cp.ndarray) and got.dtype == value.dtype, key
            assert got.shape == value.shape and np.array_equal(to_host(got), value), key
        got = await mem.get("cupy")
        assert isinstance(got, cp.ndarray) and got.data.ptr != source.data.ptr  # a pool copy
        assert np.array_equal(to_host(got), np.arange(100.0))


@sync_test
async def test_each_pools_limit_holds_under_churn_by_cupys_counters(
        cp: Any, tmp_path: Path) -> None:
    budgets = {"active_models": 256 * KiB, "inference_cache": 128 * KiB}
    rng = np.random.default_rng(5)
    async with gpu_memory(tmp_path, budgets) as mem:
        backend = l0(mem)
        latest: dict[str, Any] = {}
        for step in range(300):
            key, pool = f"k{int(rng.integers(80))}", ("active_models", "inference_cache")[step % 2]
            value = rng.random(int(rng.integers(1, 6000))).astype(np.float32)
            await mem.put(key, value, tier=Tier.GPU, pool=pool)
            latest[key] = value
            for name, limit in budgets.items():
                mp = backend.allocator.memory_pool(name)
                assert mp.total_bytes() <= mp.get_limit() == limit, (step, name)
                assert pool_stats(mem, name)["allocated"] == mp.total_bytes()
        assert sum(pool_stats(mem, n)["spills"] for n in budgets) > 0
        await mem.flush()
        for key, value in latest.items():
            assert np.array_equal(to_host(await mem.get(key)), value), key


@sync_test
async def test_out_of_memory_from_cupy_evicts_frees_and_retries(cp: Any, tmp_path: Path) -> None:
    # CuPy's limit is lowered under the pool logic's feet (as when the device runs short):
    # its OutOfMemoryError makes put evict at least the value's size more, free, and retry.
    async with gpu_memory(tmp_path, {"inference_cache": "64KiB"}) as mem:
        # 8,000 bytes each: 8 KiB of blocks, 8,064 bytes for the LRU: 8 fit both ways.
        values = {f"w{i}": np.full(2000, i, np.float32) for i in range(9)}
        for key in list(values)[:8]:
            await mem.put(key, values[key], tier=Tier.GPU)
        mp = l0(mem).allocator.memory_pool("inference_cache")
        mp.set_limit(size=48 * KiB)
        await mem.put("w8", values["w8"], tier=Tier.GPU)
        st = pool_stats(mem, "inference_cache")
        assert st["oom_retries"] == 2 and st["spills"] == 3 and st["items"] == 6
        assert mp.total_bytes() <= 48 * KiB
        await mem.flush()
        for key, value in values.items():
            entry = await mem.get_entry(key)
            assert entry is not None and np.array_equal(to_host(entry.value), value), key
            assert entry.tier is (Tier.SESSION if key in ("w0", "w1", "w2") else Tier.GPU)


@sync_test
async def test_spill_to_session_and_promotion_into_the_pools(cp: Any, tmp_path: Path) -> None:
    """An evicted home item spills to SESSION as NumPy; an array read twice from a slower tier
    is promoted into the pools. (Hits in SESSION, an in-process tier, promote nothing: a
    spilled item comes back to L0 when it is put again or read from below SESSION.)"""
    async with gpu_memory(tmp_path, {"inference_cache": "64KiB"}) as mem:
        a, b = np.full(10_000, 1, np.float32), np.full(10_000, 2, np.float32)  # 40 KB each
        await mem.put("a", a, tier=Tier.GPU)
        await mem.put("b", b, tier=Tier.GPU)
        await mem.flush()
        entry = await mem.get_entry("a")
        assert entry is not None and entry.tier is Tier.SESSION and entry.home
        assert type(entry.value) is np.ndarray and np.array_equal(entry.value, a)
        c = np.full(3000, 3, np.float32)
        await mem.put("c", c, tier=Tier.PERSISTENT)
        for _ in range(2):  # the second hit promotes it
            assert np.array_equal(await mem.get("c"), c)
            await mem.flush()
        entry = await mem.get_entry("c")
        assert entry is not None and entry.tier is Tier.GPU and not entry.home
        assert isinstance(entry.value, cp.ndarray) and np.array_equal(to_host(entry.value), c)


@sync_test
async def test_a_held_result_blocks_its_pool_until_dropped(cp: Any, tmp_path: Path) -> None:
    async with gpu_memory(tmp_path, {"inference_cache": "64KiB"}) as mem:
        big = np.ones(12_000, np.float32)  # 48,000 bytes: 47 KiB of blocks
        await mem.put("a", big, tier=Tier.GPU)
        reader = await mem.get("a")
        with pytest.raises(ValueTooLargeError, match="bytes are held by arrays"):
            await mem.put("b", big * 2, tier=Tier.GPU)
        entry = await mem.get_entry("a")  # "a" spilled: the LRU's bytes made room for "b"
        assert entry is not None and entry.tier is Tier.SESSION
        assert np.array_equal(entry.value, big) and np.array_equal(to_host(reader), big)
        del reader, entry  # the block returns at once (reference counting, as CuPy frees)
        await mem.put("b", big * 2, tier=Tier.GPU)
        assert np.array_equal(to_host(await mem.get("b")), big * 2)


@sync_test
async def test_replacing_an_item_larger_than_half_its_pool(cp: Any, tmp_path: Path) -> None:
    async with gpu_memory(tmp_path, {"inference_cache": "64KiB"}) as mem:
        for i in range(3):
            await mem.put("k", np.full(12_000, i, np.float32), tier=Tier.GPU)
        got = await mem.get("k")
        assert np.array_equal(to_host(got), np.full(12_000, 2, np.float32))
        assert pool_stats(mem, "inference_cache")["spills"] == 0


# -- on the device only: CUDA torch, kernels and streams ------------------------------------------


@pytest.mark.gpu
@sync_test
async def test_torch_values_come_back_as_cuda_tensors_sharing_the_pools_memory(
        device_cp: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    state = {"w": torch.randn(64, 64, device="cuda"), "b": torch.zeros(64),
             "s": torch.randn(8, device="cuda").to(torch.bfloat16),
             "t": torch.randn(32, 48, device="cuda").T,  # strided: a contiguous temporary
             "i": torch.arange(10, dtype=torch.int64)}
    if hasattr(torch, "float8_e4m3fn"):
        state["f8"] = torch.randn(16, device="cuda").to(torch.float8_e4m3fn)
    async with gpu_memory(tmp_path, {"active_models": "4MiB"}) as mem:
        await mem.put("model", state, tier=Tier.GPU, pool="active_models")
        got = await mem.get("model")
        arrays = pool_array(mem, "model")
        assert set(got) == set(state)
        for k, t in got.items():
            assert isinstance(t, torch.Tensor) and t.is_cuda and t.dtype == state[k].dtype, k
            assert t.data_ptr() == arrays[k].data.ptr != state[k].data_ptr(), k
            assert torch.equal(t.cpu().view(torch.uint8), state[k].cpu().contiguous()
                               .view(torch.uint8)), k
        del got, arrays, t
        await mem.put("other", {"x": torch.ones(1024, 1024, device="cuda")}, tier=Tier.GPU,
                      pool="active_models")  # 4 MiB: "model" spills
        await mem.flush()
        entry = await mem.get_entry("model")
        assert entry is not None and entry.tier is Tier.SESSION
        for k, t in entry.value.items():
            assert t.device.type == "cpu" and t.dtype == state[k].dtype, k


@pytest.mark.gpu
@sync_test
async def test_a_cupy_input_still_being_written_is_read_after_the_kernels(
        device_cp: Any, tmp_path: Path) -> None:
    cp = device_cp
    async with gpu_memory(tmp_path, {"inference_cache": "256MiB"}) as mem:
        for stream in (cp.cuda.Stream.null, cp.cuda.Stream(non_blocking=True)):
            with stream:
                x = cp.zeros(16 * 2**20, cp.float32)  # 64 MiB
                for _ in range(30):
                    x += 1  # queued; not finished when put starts
                await mem.put("x", x, tier=Tier.GPU)
            got = await mem.get("x")
            assert float(got.min()) == float(got.max()) == 30.0
            del x, got


@pytest.mark.gpu
@sync_test
async def test_a_freed_block_is_rewritten_only_after_the_kernels_that_read_it(
        device_cp: Any, tmp_path: Path) -> None:
    cp = device_cp
    n = 16 * 2**20
    # 160 MiB: the freed 64 MiB block is reused from the cache (freeing it to the device
    # would synchronise the device and hide a race).
    async with gpu_memory(tmp_path, {"inference_cache": "160MiB"}) as mem:
        await mem.put("old", np.full(n, 7, np.float32), tier=Tier.GPU)
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            r = await mem.get("old")
            out = cp.zeros(n, cp.float32)
            for _ in range(30):
                out += r  # reads the pool's block, queued
            await mem.delete("old")
            del r  # the block returns to the pool while the kernels still read it
            await mem.put("new", np.full(n, -1, np.float32), tier=Tier.GPU)  # reuses it
        stream.synchronize()
        assert float(out.min()) == float(out.max()) == 210.0


@pytest.mark.gpu
def test_detection_names_the_device_and_its_memory() -> None:
    if not _GPU.available:
        pytest.skip(f"no usable GPU: {_GPU.reason}")
    assert _GPU.name and _GPU.total_bytes and _GPU.total_bytes > 2**30
