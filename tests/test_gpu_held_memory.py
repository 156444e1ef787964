"""L0 pool memory held by references, on the host allocator (which frees the way CuPy does:
a block returns to its pool only when the last reference to its array dies). Each case has one
clear outcome: the put succeeds, or it raises ValueTooLargeError saying how many bytes are
held and why, and no value is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.hostpool import HostAllocator, HostPoolBackend, PoolBackend
from sophia_memory.errors import ValueTooLargeError
from sophia_memory.tiers import Record

from ._gpu_support import sync_test


def arr(n: int, fill: int = 0) -> np.ndarray[Any, Any]:
    return np.full(n, fill, np.uint8)


def rec(value: Any, pool: str = "p", size: int | None = None) -> Record:
    return Record(value, size=value.nbytes if size is None else size, extra={"pool": pool})


def backend_with_log(limit: int = 4096) -> tuple[HostPoolBackend, dict[str, Any]]:
    backend = HostPoolBackend({"p": limit})
    spilled: dict[str, Any] = {}
    backend.set_eviction_listener(lambda key, record: spilled.update({key: record.payload}))
    return backend, spilled


def payload(backend: PoolBackend, key: str) -> Any:
    record = backend.peek(key)
    assert record is not None
    return record.payload


def test_a_block_returns_to_its_pool_only_when_the_last_reference_dies() -> None:
    alloc = HostAllocator({"p": 4096})
    allocation = alloc.store("p", arr(1000, 3))
    view = allocation.payload[10:20]
    assert (alloc.in_use("p"), alloc.allocated("p")) == (1024, 1024)
    alloc.release("p", allocation)
    del allocation
    assert alloc.in_use("p") == 1024  # a view keeps the buffer alive
    del view
    assert (alloc.in_use("p"), alloc.allocated("p")) == (0, 1024)  # cached, as in CuPy
    alloc.free_cached("p")
    assert alloc.allocated("p") == 0


def test_a_torch_tensor_from_the_pool_keeps_its_block() -> None:
    torch = pytest.importorskip("torch")
    backend, _ = backend_with_log()
    state = {"w": torch.ones(300), "s": torch.ones(4, dtype=torch.bfloat16)}
    backend.put_nowait("t", Record(state, size=1208, extra={"pool": "p"}))
    tail = payload(backend, "t")["w"][100:]  # a view of the pool's float32 block
    backend.pop_nowait("t")  # the bf16 tensor dies with the record: its block returns
    assert backend.allocator.in_use("p") == 1536 == backend.held_bytes("p")
    del tail
    assert backend.allocator.in_use("p") == 0


def test_replacing_a_value_larger_than_half_its_pool_succeeds() -> None:
    """Review 5a: the old value's references kept its blocks while the new one allocated."""
    backend, spilled = backend_with_log(4096)
    backend.put_nowait("k", rec(arr(3000, 1)))
    backend.put_nowait("k", rec(arr(3000, 2)))
    assert np.array_equal(payload(backend, "k"), arr(3000, 2))
    assert not spilled and backend.allocator.in_use("p") == 3072
    stats = backend.stats()["pools"]["p"]
    assert (stats["items"], stats["held"], stats["oom_retries"]) == (1, 0, 0)


@sync_test
async def test_replacing_a_value_a_reader_holds_fails_clearly_and_keeps_the_old_value(
        tmp_path: Path) -> None:
    async with Memory.open(path=str(tmp_path / "h.db"), clock=ManualClock(),
                           tiers={Tier.GPU: "host://?memory=4KiB"},
                           gpu_pools={"inference_cache": 1.0}, gpu_reserve=0) as mem:
        await mem.put("k", arr(3000, 1), tier=Tier.GPU)
        reader = await mem.get("k")  # shares the pool's memory
        with pytest.raises(ValueTooLargeError) as err:
            await mem.put("k", arr(3000, 2), tier=Tier.GPU)
        msg = str(err.value)
        assert "'inference_cache' on host: 3072 of its 4096 bytes are held" in msg
        assert "results of get" in msg and "to_host" in msg
        await mem.flush()
        entry = await mem.get_entry("k")  # the put failed: the old value stays readable
        assert entry is not None and entry.tier is Tier.SESSION
        assert np.array_equal(entry.value, arr(3000, 1))
        assert np.array_equal(reader, arr(3000, 1))  # and the reader's array is intact
        del reader, entry
        await mem.put("k", arr(3000, 2), tier=Tier.GPU)  # the blocks came back
        entry = await mem.get_entry("k")
        assert entry is not None and entry.tier is Tier.GPU
        assert np.array_equal(entry.value, arr(3000, 2))


def test_memory_held_outside_the_pool_refuses_at_once_without_evicting() -> None:
    """Review 5b: evicting cannot free what callers hold; the old loop spilled the whole
    pool and then blamed the value's size."""
    backend, spilled = backend_with_log(4096)
    for i in range(8):
        backend.put_nowait(f"x{i}", rec(arr(100, i)))
    held = [payload(backend, f"x{i}") for i in range(6)]  # results of get, held
    for i in range(6):
        backend.pop_nowait(f"x{i}")  # deleted: their blocks stay in use while held
    assert backend.held_bytes("p") == 6 * 512
    with pytest.raises(ValueTooLargeError, match="3072 of its 4096 bytes are held"):
        backend.put_nowait("big", rec(arr(1500)))
    stats = backend.stats()["pools"]["p"]
    assert stats["evictions"] == 0 and not spilled and stats["items"] == 2
    assert stats["held_refusals"] == 1
    backend.put_nowait("small", rec(arr(500)))  # what fits beside the held memory still goes
    del held
    backend.put_nowait("big", rec(arr(1500)))
    assert backend.held_bytes("p") == 0


def test_an_eviction_that_frees_nothing_still_spills_a_separate_copy() -> None:
    backend, spilled = backend_with_log(2048)
    backend.put_nowait("a", rec(arr(1000, 7)))
    reader = payload(backend, "a")
    backend.put_nowait("b", rec(arr(1000, 8)))
    backend.put_nowait("c", rec(arr(1000, 9)))
    # "a" went first (the LRU's bytes) and freed nothing (its block is held): "b" went too.
    assert list(spilled) == ["a", "b"] and np.array_equal(spilled["a"], arr(1000, 7))
    assert not np.shares_memory(spilled["a"], reader)  # the spill is not the pool's memory
    assert backend.held_bytes("p") == 1024
    with pytest.raises(ValueTooLargeError, match="1024 of its 2048 bytes are held"):
        backend.put_nowait("d", rec(arr(1500)))  # cannot fit beside the held block
    assert list(spilled) == ["a", "b"] and backend.peek("c") is not None  # nothing more went
    del reader
    backend.put_nowait("d", rec(arr(1500)))
    assert list(spilled) == ["a", "b", "c"]
    assert backend.held_bytes("p") == 0 and backend.allocator.in_use("p") == 1536


def test_closing_while_a_result_is_held_leaves_no_negative_accounting() -> None:
    backend, _ = backend_with_log()
    backend.put_nowait("a", rec(arr(1000)))
    reader = payload(backend, "a")
    alloc = backend.allocator
    asyncio.run(backend.close())
    assert alloc.in_use("p") == 0
    del reader
    assert alloc.in_use("p") == 0 and alloc.allocated("p") == 0


def test_the_host_allocator_counts_cupys_free_and_collect_path() -> None:
    """Review 8: a new block past the limit makes CuPy free its cache and collect garbage;
    the pool logic frees the cache first, so churn never takes that path."""
    alloc = HostAllocator({"p": 2048})
    a = alloc.store("p", arr(1000))
    b = alloc.store("p", arr(1000))
    del a
    c = alloc.store("p", arr(300))  # reuses (splits) the cached 1024-byte block
    assert alloc.collections == 0 and alloc.allocated("p") == 2048
    del c
    with pytest.raises(Exception, match="out of memory"):
        alloc.store("p", arr(1500))
    assert alloc.collections == 1  # and it raised: 1024 of 2048 still in use by b
    del b
    backend, _ = backend_with_log(2048)
    for i in range(50):
        backend.put_nowait(f"k{i % 7}", rec(arr(200 + 37 * (i % 9), i)))
    assert backend.allocator.collections == 0  # type: ignore[attr-defined]
    assert backend.stats()["pools"]["p"]["oom_retries"] == 0
