"""``CupyAllocator`` on a CPU stand-in for CuPy (``tests/_cupy_standin.py``): what the review of
the ``cupy://`` pools found, checked without a device. The device itself is checked by
``tests/test_gpu.py`` (marked ``gpu``); these run everywhere."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.gpupool import CupyAllocator, CupyPoolBackend
from sophia_memory.backends.pools.hostpool import PoolBackend, to_host
from sophia_memory.errors import UnsupportedValueError, ValueTooLargeError
from sophia_memory.tiers import Record

from . import _cupy_standin
from ._gpu_support import sync_test

KiB = 1024


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> _cupy_standin.World:
    return _cupy_standin.install(monkeypatch)


def pools(budgets: dict[str, int], device: int = 0, **kw: Any) -> PoolBackend:
    return CupyPoolBackend(budgets, CupyAllocator(device, budgets, **kw))


def rec(value: Any, pool: str = "p") -> Record:
    return Record(value, size=value.nbytes if hasattr(value, "nbytes") else 64,
                  extra={"pool": pool})


def arr(n: int, fill: int = 0) -> np.ndarray[Any, Any]:
    return np.full(n, fill, np.uint8)


def test_evicting_from_a_cupy_pool_copies_out_before_it_lets_go(world: Any) -> None:
    """Review 1: the first eviction raised TypeError (release cleared the handle detach
    needed)."""
    backend = pools({"p": 2 * KiB})
    spilled: dict[str, Any] = {}
    backend.set_eviction_listener(lambda key, record: spilled.update({key: record.payload}))
    for i in range(3):
        backend.put_nowait(f"k{i}", rec(arr(1000, i)))
    assert list(spilled) == ["k0"]
    assert all(type(v) is np.ndarray for v in spilled.values())  # NumPy in, NumPy out
    assert np.array_equal(spilled["k0"], arr(1000, 0))
    held = backend.peek("k2")
    assert held is not None and type(held.payload).__name__ == "ndarray"
    assert np.array_equal(to_host(held.payload), arr(1000, 2))


def test_a_failed_replacement_on_a_cupy_pool_spills_the_old_value(world: Any) -> None:
    """Review 1, the put-failure path: the old value is copied out of the pool, then let go."""
    backend = pools({"p": 2 * KiB})
    spilled: list[Any] = []
    backend.set_eviction_listener(lambda key, record: spilled.append(record.payload))
    backend.put_nowait("k", rec(arr(1500, 5)))
    with pytest.raises(ValueTooLargeError):
        backend.put_nowait("k", rec(arr(3 * KiB)))  # over the pool: refused, nothing changes
    assert backend.peek("k") is not None and not spilled
    peeked = backend.peek("k")
    assert peeked is not None
    reader = peeked.payload  # a reader holds the old value: its 1536 bytes cannot return
    del peeked
    with pytest.raises(ValueTooLargeError, match="1536 of its 2048 bytes are held"):
        backend.put_nowait("k", rec(arr(1000)))
    assert len(spilled) == 1 and type(spilled[0]) is np.ndarray
    assert np.array_equal(spilled[0], arr(1500, 5)) and backend.peek("k") is None
    assert np.array_equal(to_host(reader), arr(1500, 5))  # the reader's array is intact


def test_the_pool_stream_waits_for_the_callers_stream_before_copying(world: Any) -> None:
    """Review 3: the non-blocking pool stream must wait for work queued on the caller's
    current stream (CuPy inputs, reused blocks) before its first copy."""
    cp = _cupy_standin._module()
    backend = pools({"p": 64 * KiB})
    pool_stream = backend.allocator._stream.ptr  # type: ignore[attr-defined]
    with cp.cuda.Stream() as caller:  # type: ignore[attr-defined]
        world.log.clear()
        src = cp.asarray(np.arange(100, dtype=np.float32))  # type: ignore[attr-defined]
        backend.put_nowait("x", rec(src))
        backend.put_nowait("y", rec(np.arange(50, dtype=np.int64)))
    copies = [i for i, e in enumerate(world.log) if e[0] in ("h2d", "d2d", "kernel")
              and e[1] == pool_stream]
    waits = [i for i, e in enumerate(world.log) if e == ("wait", pool_stream, caller.ptr)]
    assert len(copies) == 2 and len(waits) == 2
    assert waits[0] < copies[0] and waits[1] < copies[1] and copies[0] < waits[1]
    syncs = [i for i, e in enumerate(world.log) if e == ("sync", pool_stream)]
    assert syncs and syncs[-1] > copies[-1]  # put returns once its copies are done
    got = backend.peek("x")
    assert got is not None and np.array_equal(to_host(got.payload), np.arange(100.0))


def test_pinned_staging_stays_bounded_and_every_upload_is_pinned(world: Any) -> None:
    """Review 6: staging through two reused pinned buffers, whatever the value's size."""
    chunk = 4 * KiB
    backend = pools({"p": 1024 * KiB}, staging_chunk=chunk)
    rng = np.random.default_rng(3)
    values = {f"v{i}": rng.random(10_000 + 997 * i).astype(np.float32) for i in range(4)}
    world.log.clear()
    for key, value in values.items():
        backend.put_nowait(key, rec(value))
    assert world.pinned_peak <= 2 * chunk
    uploads = [e for e in world.log if e[0] == "h2d"]
    assert len(uploads) > 4 * 9 and all(e[3] for e in uploads)  # chunked, all from pinned
    for key, value in values.items():
        got = backend.peek(key)
        assert got is not None and np.array_equal(to_host(got.payload), value)  # boundaries


def test_every_pool_call_runs_on_the_pools_device(world: Any) -> None:
    """Review 9: CuPy's pool methods act on the current device; cupy://1 must not read or
    free device 0's arena."""
    backend = pools({"p": 4 * KiB}, device=1)
    backend.set_eviction_listener(lambda key, record: None)
    for i in range(12):
        backend.put_nowait(f"k{i}", rec(arr(900, i)))
    backend.stats()
    backend.allocator.free_cached("p")
    backend.allocator.close()
    calls = backend.allocator.memory_pool("p").calls  # type: ignore[attr-defined]
    assert {name for name, _ in calls} >= {"malloc", "used_bytes", "total_bytes",
                                           "free_all_blocks", "set_limit"}
    assert {device for _, device in calls} == {1}, calls


@sync_test
async def test_cupy_pools_under_churn_hold_their_limit_by_cupys_counters_without_gc(
        world: Any, tmp_path: Path) -> None:
    """Review 8 and 11: limits checked by the pool's own counters; put evicts and frees the
    cache before allocating, so CuPy never takes its free-and-collect path."""
    async with Memory.open(path=str(tmp_path / "s.db"), clock=ManualClock(),
                           tiers={Tier.GPU: "cupy://0"},
                           gpu_pools={"inference_cache": "64KiB"}, gpu_reserve=0) as mem:
        backend = mem._core.by_tier[Tier.GPU].backend
        assert isinstance(backend, CupyPoolBackend)
        mp = backend.allocator.memory_pool("inference_cache")  # type: ignore[attr-defined]
        assert mp.get_limit() == 64 * KiB
        rng = np.random.default_rng(11)
        latest: dict[str, Any] = {}
        for step in range(120):
            key = f"k{int(rng.integers(40))}"
            value = {f"p{j}": rng.random(int(rng.integers(1, 600))).astype(np.float32)
                     for j in range(int(rng.integers(1, 5)))}
            await mem.put(key, value, tier=Tier.GPU)
            latest[key] = value
            assert mp.total_bytes() <= mp.get_limit(), step
        st = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"]["inference_cache"]
        assert st["spills"] > 0 and mp.collections == 0
        assert st["in_use"] == mp.used_bytes()
        await mem.flush()
        for key, value in latest.items():
            got = to_host(await mem.get(key))
            assert all(np.array_equal(got[k], v) for k, v in value.items()), key


def test_string_dtypes_are_refused_with_the_librarys_error(world: Any) -> None:
    """Review 7: CuPy 14 raises a bare ValueError for them at allocation."""
    backend = pools({"p": 4 * KiB})
    for bad in (np.array(["a", "b"]), np.array([b"x"]),
                np.array(["2024-01-01"], dtype="datetime64[D]"), np.array([object()])):
        with pytest.raises(UnsupportedValueError, match="cannot live in a GPU pool"):
            backend.put_nowait("s", rec(bad))
        with pytest.raises(UnsupportedValueError, match="'w': arrays of dtype"):
            backend.put_nowait("s", Record({"w": bad}, size=64, extra={"pool": "p"}))
    assert backend.peek("s") is None and backend.allocator.in_use("p") == 0


def test_a_held_result_blocks_its_cupy_pool_with_a_clear_message(world: Any) -> None:
    """Review 5b on the CuPy allocator: a result of get shares the pool's memory."""
    backend = pools({"p": 4 * KiB})
    backend.set_eviction_listener(lambda key, record: None)
    backend.put_nowait("a", rec(arr(3000, 1)))
    peeked = backend.peek("a")
    assert peeked is not None
    held = peeked.payload  # zero copy: the pool's array
    del peeked
    with pytest.raises(ValueTooLargeError, match=r"3072 of its 4096 bytes are held"):
        backend.put_nowait("b", rec(arr(2000)))
    del held  # the block returns: now it fits
    backend.put_nowait("b", rec(arr(2000)))
    assert backend.allocator.in_use("p") == 2048


def test_torch_state_dicts_share_the_pools_memory(world: Any) -> None:
    torch = pytest.importorskip("torch")
    backend = pools({"p": 64 * KiB})
    spilled: dict[str, Any] = {}
    backend.set_eviction_listener(lambda key, record: spilled.update({key: record.payload}))
    state = {"w": torch.randn(16, 16), "s": torch.ones(8, dtype=torch.bfloat16),
             "t": torch.arange(12).reshape(3, 4).T}  # bf16 and a strided tensor
    backend.put_nowait("m", Record(state, size=2048, extra={"pool": "p"}))
    held = backend._held["m"][1]
    arrays, origin = held.handle
    got = held.payload
    for name, t in state.items():
        assert origin[name] == "torch" and got[name].dtype == t.dtype
        assert torch.equal(got[name], t.contiguous())
        assert got[name].data_ptr() == arrays[name].data.ptr  # the pool's memory, no copy
    backend.pop_nowait("m")
    backend.put_nowait("m", Record(state, size=2048, extra={"pool": "p"}))
    backend._evict_one("p")
    out = spilled["m"]
    assert all(isinstance(t, torch.Tensor) and torch.equal(t, state[k].contiguous())
               for k, t in out.items())


def test_the_gpu_test_modules_run_without_pytest_asyncio() -> None:
    """Review 2: the GPU machines have pytest but no pytest-asyncio, which these modules
    must not need (plain functions that run their coroutine with asyncio.run)."""
    from . import test_gpu, test_gpu_held_memory, test_gpu_pools

    for module in (test_gpu, test_gpu_pools, test_gpu_held_memory, sys.modules[__name__]):
        tests = [f for n, f in vars(module).items() if n.startswith("test_")
                 and callable(f)]
        assert tests
        coroutines = [f.__name__ for f in tests if inspect.iscoroutinefunction(f)]
        assert not coroutines, (module.__name__, coroutines)
