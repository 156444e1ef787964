"""L0 pool logic on the host path (no GPU needed): budgets and presets, unit parsing, LRU by
bytes per pool, out-of-memory -> evict -> retry with spill, state_dicts as one item, and the
``cupy://`` fallback that never fails because of CuPy."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends.pools.hostpool import HostPoolBackend, PoolBackend, to_host
from sophia_memory.errors import ConfigError, UnsupportedValueError, ValueTooLargeError
from sophia_memory.gpu import detect_gpu
from sophia_memory.pools import (
    DEFAULT_POOLS,
    PRESETS,
    device_memory,
    format_bytes,
    match_preset,
    parse_size,
    plan_pools,
)
from sophia_memory.tiers import Record

from ._gpu_support import sync_test

GB, GiB = 10**9, 2**30


def pool_memory(tmp_path: Path, clock: ManualClock, pools: dict[str, Any],
                url: str = "host://?memory=1MiB") -> Memory:
    return Memory.open(path=str(tmp_path / "g.db"), clock=clock, tiers={Tier.GPU: url},
                       gpu_pools=pools, gpu_reserve=0)


def l0(mem: Memory) -> PoolBackend:
    backend = mem._core.by_tier[Tier.GPU].backend
    assert isinstance(backend, PoolBackend)
    return backend


def pool_stats(mem: Memory, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"][name]
    return stats


# -- budgets, presets, units ------------------------------------------------------------------


def test_gh200_refuses_60_40_30_11_gb_naming_every_pool_and_the_totals() -> None:
    pools = {"active_models": "60GB", "inference_cache": "40GB", "vector_cache": "30GB",
             "buffer": "11GB"}
    with pytest.raises(ConfigError) as err:
        plan_pools(pools, device_memory("GH200"), device="GH200")
    msg = str(err.value)
    for name, size in pools.items():
        assert f"{name}={format_bytes(parse_size(size))}" in msg
    assert f"total {format_bytes(141 * GB)}" in msg
    usable = 96 * GB - int(96 * GB * 0.02)
    assert f"usable {format_bytes(usable)}" in msg
    assert f"over by {format_bytes(141 * GB - usable)}" in msg


def test_40_30_20_6_gb_is_accepted_only_if_it_fits_after_the_reserve() -> None:
    pools = {"active_models": "40GB", "inference_cache": "30GB", "vector_cache": "20GB",
             "buffer": "6GB"}
    gh200 = device_memory("GH200")  # 96 GB reported
    # Exactly the device with no reserve: accepted.
    assert sum(plan_pools(pools, gh200, reserve=0, device="GH200").values()) == 96 * GB
    # The default 2 % reserve leaves 94.08 GB: refused, and the error says it is the reserve.
    with pytest.raises(ConfigError) as err:
        plan_pools(pools, gh200, device="GH200")
    msg = str(err.value)
    assert f"({format_bytes(96 * GB)} reported - {format_bytes(int(96 * GB * 0.02))} reserve)" \
        in msg
    assert f"over by {format_bytes(int(96 * GB * 0.02))}" in msg
    # The same numbers in GiB are 103 GB: refused even without a reserve.
    in_gib = {n: s.replace("GB", "GiB") for n, s in pools.items()}
    with pytest.raises(ConfigError, match=r"total 96\.00 GiB > usable 89\.41 GiB"):
        plan_pools(in_gib, gh200, reserve=0, device="GH200")
    # An H200 (141 GB) holds them with its reserve.
    assert sum(plan_pools(pools, device_memory("H200")).values()) == 96 * GB


def test_memory_open_refuses_pools_that_do_not_fit_a_preset(tmp_path: Path,
                                                            clock: ManualClock) -> None:
    with pytest.raises(ConfigError, match="do not fit on host memory"):
        pool_memory(tmp_path, clock, {"a": "60GB", "b": "40GB"}, "host://?memory=GH200")


@pytest.mark.parametrize(("device_name", "preset"), [
    ("NVIDIA A10", "A10"), ("NVIDIA A10G", "A10"), ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA GH200 480GB", "GH200"), ("NVIDIA H200", "H200"), ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-80GB", None), ("Tesla T4", None),
])
def test_presets_are_matched_from_the_device_name(device_name: str, preset: str | None) -> None:
    found = match_preset(device_name)
    assert (found.name if found else None) == preset


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_pools_on_each_preset_keep_40_30_20_6(preset: str) -> None:
    total = device_memory(preset.lower())
    assert total == PRESETS[preset].reported_bytes
    budgets = plan_pools(DEFAULT_POOLS, total)
    usable = total - int(total * 0.02)
    assert budgets["active_models"] == int(0.40 * usable)
    assert budgets["buffer"] == int(0.06 * usable)
    assert sum(budgets.values()) <= usable


@pytest.mark.parametrize(("text", "expected"), [
    ("1GiB", GiB), ("1GB", GB), ("1.5 GiB", int(1.5 * GiB)), ("512", 512), ("4KiB", 4096),
    ("4kb", 4000), ("2TiB", 2 * 2**40), (1024, 1024),
])
def test_units_distinguish_gib_from_gb(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["12 gigs", "GiB", "-1GB", "1e9", True, 1.5])
def test_unreadable_sizes_are_refused_with_the_units_spelled_out(bad: Any) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad)


def test_preset_names_work_as_host_pool_memory(tmp_path: Path, clock: ManualClock) -> None:
    mem = pool_memory(tmp_path, clock, dict(DEFAULT_POOLS), "host://?memory=H100")
    limits = {n: p["limit"] for n, p in
              mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"].items()}
    assert limits == plan_pools(DEFAULT_POOLS, PRESETS["H100"].reported_bytes, reserve=0)


# -- LRU by bytes, per pool -------------------------------------------------------------------


def arr(nbytes: int, fill: int = 0) -> np.ndarray[Any, Any]:
    return np.full(nbytes, fill, dtype=np.uint8)


def rec(value: Any, pool: str, size: int | None = None) -> Record:
    return Record(value, size=size if size is not None else value.nbytes, extra={"pool": pool})


def test_lru_by_bytes_evicts_only_within_the_pool() -> None:
    backend = HostPoolBackend({"a": 1000, "b": 1000}, block=1)
    evicted: list[str] = []
    backend.set_eviction_listener(lambda key, record: evicted.append(key))
    backend.put_nowait("b1", rec(arr(600), "b"))
    for key in ("a1", "a2", "a3"):
        backend.put_nowait(key, rec(arr(300), "a"))
    assert backend.peek("a1") is not None  # a1 is now the most recently used
    backend.put_nowait("a4", rec(arr(350), "a"))  # 900 + 350 > 1000: only a2 (LRU) goes
    assert evicted == ["a2"]
    assert backend.peek("b1") is not None
    stats = backend.stats()["pools"]
    assert stats["a"]["used"] == 950 and stats["a"]["items"] == 3
    assert stats["a"]["evictions"] == 1 and stats["b"]["evictions"] == 0
    backend.put_nowait("big", rec(arr(900), "a"))  # by bytes, oldest use first: all three
    assert evicted == ["a2", "a3", "a1", "a4"]
    with pytest.raises(ValueTooLargeError):
        backend.put_nowait("huge", rec(arr(1001), "a"))
    assert backend.peek("big") is not None  # a refused put changes nothing


def test_a_resident_array_is_returned_without_a_copy_and_owned_by_the_pool() -> None:
    backend = HostPoolBackend({"a": 4096})
    original = arr(100, 7)
    backend.put_nowait("k", rec(original, "a"))
    first, second = backend.peek("k"), backend.peek("k")
    assert first is not None and second is not None
    assert first.payload is second.payload and first.payload is not original
    original[:] = 0  # the caller's array is not the pool's
    assert int(first.payload[0]) == 7
    assert to_host(first.payload) is first.payload  # already host memory


# -- out of memory -> evict -> retry -----------------------------------------------------------


@sync_test
async def test_blocks_are_made_room_for_before_allocating_and_evicted_items_spill(
        tmp_path: Path, clock: ManualClock) -> None:
    # 100-byte arrays: the LRU counts 164 bytes each (25 fit 4096), the allocator takes a
    # 512-byte block each (8 fit): the pool would run out of memory while the LRU says it
    # fits, so put evicts by blocks first and the allocator never refuses (on CuPy each
    # refusal costs a full garbage collection).
    async with pool_memory(tmp_path, clock, {"inference_cache": 4096}) as mem:
        values = {f"w{i}": arr(100, i) for i in range(20)}
        for key, value in values.items():
            await mem.put(key, value, tier=Tier.GPU)
            st = pool_stats(mem, "inference_cache")
            assert st["allocated"] <= st["limit"] and st["used"] <= st["limit"]
        st = pool_stats(mem, "inference_cache")
        assert st["items"] == 8 and st["allocated"] == 8 * 512
        assert st["oom_retries"] == 0 and st["evictions"] == 12 and st["spills"] == 12
        assert l0(mem).allocator.collections == 0  # type: ignore[attr-defined]
        assert 0.0 < st["fragmentation"] < 1.0  # 100 of every 512 bytes hold data
        assert mem.stats()["tiers"]["GPU"]["spills"] == 12
        assert mem.stats()["tiers"]["GPU"]["backend_stats"]["device"] == "host"
        for i, (key, value) in enumerate(values.items()):
            entry = await mem.get_entry(key)
            assert entry is not None and np.array_equal(entry.value, value)
            assert entry.home and entry.tier is (Tier.SESSION if i < 12 else Tier.GPU)


@sync_test
async def test_injected_allocation_failures_evict_one_item_per_retry(
        tmp_path: Path, clock: ManualClock) -> None:
    async with pool_memory(tmp_path, clock, {"inference_cache": 8192}) as mem:
        for i in range(4):
            await mem.put(f"k{i}", arr(100, i), tier=Tier.GPU)
        allocator: Any = l0(mem).allocator
        allocator.fail_next = 2
        await mem.put("new", arr(100), tier=Tier.GPU)
        st = pool_stats(mem, "inference_cache")
        assert st["oom_retries"] == 2 and st["spills"] == 2 and st["items"] == 3
        assert sorted(await mem.keys(Tier.GPU)) == ["k2", "k3", "new"]
        assert sorted(await mem.keys(Tier.SESSION)) == ["k0", "k1"]


@sync_test
async def test_an_empty_pool_that_still_fails_raises_and_stores_nothing(
        tmp_path: Path, clock: ManualClock) -> None:
    async with pool_memory(tmp_path, clock, {"inference_cache": 1000}) as mem:
        # 600 bytes: the LRU counts 664 <= 1000, but two 512-byte blocks exceed the limit.
        with pytest.raises(ValueTooLargeError, match="'inference_cache' on host, in whole "
                           "allocation blocks"):
            await mem.put("w", arr(600), tier=Tier.GPU)
        assert await mem.get("w") is None
        st = pool_stats(mem, "inference_cache")
        assert (st["items"], st["allocated"], st["used"]) == (0, 0, 0)
        assert st["oom_retries"] == 0  # refused before anything changed: it can never fit
        allocator: Any = l0(mem).allocator
        await mem.put("ok", arr(100), tier=Tier.GPU)
        allocator.fail_next = 3  # one retry after evicting "ok", one after freeing: both fail
        with pytest.raises(ValueTooLargeError):
            await mem.put("w2", arr(100), tier=Tier.GPU)
        assert await mem.get("w2") is None
        assert np.array_equal(await mem.get("ok"), arr(100))  # spilled, not lost
        assert pool_stats(mem, "inference_cache")["allocated"] == 0


@sync_test
async def test_pools_never_exceed_their_limit_under_churn(tmp_path: Path,
                                                          clock: ManualClock) -> None:
    rng = np.random.default_rng(7)
    pools = {"active_models": 16 * 1024, "inference_cache": 8 * 1024}
    async with pool_memory(tmp_path, clock, pools) as mem:
        allocator: Any = l0(mem).allocator
        latest: dict[str, np.ndarray[Any, Any]] = {}
        for step in range(400):
            key = f"k{int(rng.integers(60))}"
            value = rng.integers(0, 255, int(rng.integers(1, 3000)), dtype=np.uint8)
            if rng.random() < 0.05:
                allocator.fail_next = int(rng.integers(1, 3))
            pool = "active_models" if rng.random() < 0.5 else "inference_cache"
            try:
                await mem.put(key, value, tier=Tier.GPU, pool=pool)
            except ValueTooLargeError:
                latest.pop(key, None)  # refused: the key's older value was superseded
                allocator.fail_next = 0
            else:
                latest[key] = value
            for name, limit in pools.items():
                st = pool_stats(mem, name)
                assert st["allocated"] <= limit and st["used"] <= limit, (step, name, st)
            if step % 50 == 0:
                await mem.get(f"k{int(rng.integers(60))}")  # reorders the LRU
        total = sum(pool_stats(mem, n)["oom_retries"] for n in pools)
        assert total > 0
        await mem.flush()
        for key, value in latest.items():
            assert np.array_equal(await mem.get(key), value), key


@sync_test
async def test_a_named_pool_bigger_than_the_default_takes_what_the_default_cannot(
        tmp_path: Path, clock: ManualClock) -> None:
    """The capacity check goes by the pool an item names, not the default pool: an 8 KiB
    array fits a 64 KiB pool beside a 1 KiB default, by put(pool=) and by promotion of an
    item whose metadata names the pool; the 1 KiB pool still refuses it."""
    pools = {"small": "1KiB", "big": "64KiB"}
    url = "host://?memory=1MiB&default_pool=small"
    async with pool_memory(tmp_path, clock, pools, url) as mem:
        value = np.arange(1024, dtype=np.float64)
        await mem.put("g", value, tier=Tier.GPU, pool="big")
        entry = await mem.get_entry("g", promote=False)
        assert entry is not None and entry.tier is Tier.GPU
        assert np.array_equal(entry.value, value)
        with pytest.raises(ValueTooLargeError):
            await mem.put("s", value, tier=Tier.GPU, pool="small")
        await mem.put("a", value, tier=Tier.PERSISTENT, meta={"pool": "big"})
        for _ in range(2):  # an array is promoted into GPU on its second hit
            await mem.get_entry("a")
            await mem.flush()
        assert sorted(await mem.keys(Tier.GPU)) == ["a", "g"]
        assert pool_stats(mem, "big")["used"] >= 2 * value.nbytes


# -- state_dicts as one item --------------------------------------------------------------------


@sync_test
async def test_torch_state_dict_round_trips_as_one_item_and_spills_as_one(
        tmp_path: Path, clock: ManualClock) -> None:
    torch = pytest.importorskip("torch")
    state = {"layer.weight": torch.randn(8, 8), "layer.bias": torch.zeros(8),
             "norm.scale": torch.ones(8, dtype=torch.bfloat16),
             "steps": torch.tensor([3], dtype=torch.int64)}
    async with pool_memory(tmp_path, clock, {"active_models": 2048}) as mem:
        await mem.put("model", state, tier=Tier.GPU, pool="active_models")
        state["layer.bias"] += 1  # the pool holds its own copy
        st = pool_stats(mem, "active_models")
        assert st["items"] == 1 and st["allocated"] == 4 * 512
        got = await mem.get("model")
        assert isinstance(got, dict) and set(got) == set(state)
        for name, tensor in got.items():
            assert isinstance(tensor, torch.Tensor) and tensor.dtype == state[name].dtype
        assert torch.equal(got["layer.weight"], state["layer.weight"])
        assert torch.equal(got["layer.bias"], torch.zeros(8))
        # The returned tensors share the pool's memory (as on the GPU): held, they would keep
        # its blocks in use (see the held-reference tests); dropped, the blocks can return.
        del got, tensor
        # A second state_dict does not fit beside it: the first spills whole to SESSION.
        await mem.put("model2", {"w": torch.ones(16, 16)}, tier=Tier.GPU, pool="active_models")
        entry = await mem.get_entry("model")
        assert entry is not None and entry.tier is Tier.SESSION
        assert set(entry.value) == set(state)
        assert torch.equal(entry.value["layer.weight"], state["layer.weight"])
        assert entry.value["norm.scale"].dtype == torch.bfloat16


# -- cupy:// without a usable GPU -----------------------------------------------------------------


class _BrokenCupyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import cupy`` fail the way a CUDA wheel without its libraries does."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == "cupy" or fullname.startswith("cupy."):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        raise ImportError("libcudart.so.12: cannot open shared object file")


def _runtime_failing_cupy() -> types.ModuleType:
    """A CuPy that imports but whose every device call raises (no driver)."""
    def fail(*args: Any) -> Any:
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    fake = types.ModuleType("cupy")
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    fake.__version__ = "14.2.0"  # type: ignore[attr-defined]
    runtime = types.SimpleNamespace(getDeviceCount=fail, getDeviceProperties=fail,
                                    memGetInfo=fail)
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=fail,  # type: ignore[attr-defined]
                                      MemoryPool=fail)
    return fake


@pytest.fixture(params=["missing", "import-error", "runtime-error"])
def broken_cupy(request: pytest.FixtureRequest,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in [m for m in sys.modules if m == "cupy" or m.startswith("cupy.")]:
        monkeypatch.delitem(sys.modules, name)
    if request.param == "missing":
        monkeypatch.setitem(sys.modules, "cupy", None)
        expected = "CuPy is not installed"
    elif request.param == "import-error":
        monkeypatch.setattr(sys, "meta_path", [_BrokenCupyFinder(), *sys.meta_path])
        expected = "CuPy failed to import: libcudart.so.12"
    else:
        monkeypatch.setitem(sys.modules, "cupy", _runtime_failing_cupy())
        expected = "no usable CUDA device: cudaErrorInsufficientDriver"
    yield expected


def test_detect_gpu_turns_every_cupy_failure_into_a_reason(broken_cupy: str) -> None:
    info = detect_gpu(0)
    assert not info.available and broken_cupy in info.reason


@sync_test
async def test_cupy_url_without_a_gpu_falls_back_to_host_pools_with_one_warning(
        broken_cupy: str, tmp_path: Path, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sophia_memory"):
        mem = Memory.open(path=str(tmp_path / "c.db"), clock=clock,
                          tiers={Tier.GPU: "cupy://0"}, host_pool_memory="1MiB")
    async with mem:
        assert isinstance(l0(mem), HostPoolBackend)
        await mem.put("x", np.arange(10.0), tier=Tier.GPU)
        entry = await mem.get_entry("x")
        assert entry is not None and entry.tier is Tier.GPU
        assert np.array_equal(entry.value, np.arange(10.0))
        assert mem.stats()["tiers"]["GPU"]["backend_stats"]["device"] == "host"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("cupy://0: no usable GPU (") and broken_cupy in warnings[0]
    assert "host-memory pools" in warnings[0]


@pytest.mark.parametrize("url", ["cupy://gpu0", "cupy://0?bogus=1"])
def test_bad_cupy_urls_are_configuration_errors(url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "b.db"), tiers={Tier.GPU: url})


@pytest.mark.parametrize("how", ["import-error", "runtime-error"])
def test_importing_every_module_and_opening_never_touch_a_broken_cupy(how: str) -> None:
    """In a fresh interpreter: importing the package and all its modules does not import
    CuPy, and ``Memory.open()`` (default and ``cupy://``) works with a broken one."""
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, importlib.machinery, logging, pkgutil, sys, tempfile
        import types
        if {how!r} == "import-error":
            class F(importlib.abc.MetaPathFinder, importlib.abc.Loader):
                def find_spec(self, name, path, target=None):
                    if name.split(".")[0] == "cupy":
                        return importlib.machinery.ModuleSpec(name, self)
                def create_module(self, spec):
                    return None
                def exec_module(self, module):
                    raise ImportError("libcuda.so.1: cannot open shared object file")
            sys.meta_path.insert(0, F())
        else:
            def fail(*a):
                raise RuntimeError("CUDA driver error")
            cp = types.ModuleType("cupy")
            cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
            cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
                getDeviceCount=fail))
            sys.modules["cupy"] = cp
        import sophia_memory
        for m in pkgutil.walk_packages(sophia_memory.__path__, "sophia_memory."):
            importlib.import_module(m.name)
        assert {how!r} == "runtime-error" or "cupy" not in sys.modules
        import asyncio
        import numpy as np
        from sophia_memory import Memory, Tier
        logging.basicConfig(level=logging.WARNING, format="WARN %(message)s")
        async def main():
            with tempfile.TemporaryDirectory() as tmp:
                async with Memory.open(path=tmp + "/a.db") as mem:
                    await mem.put("a", np.ones(3), tier=Tier.GPU)
                async with Memory.open(path=tmp + "/b.db", tiers={{Tier.GPU: "cupy://0"}},
                                       host_pool_memory="1MiB") as mem:
                    await mem.put("a", np.ones(3), tier=Tier.GPU)
                    assert (await mem.get("a")).sum() == 3
        asyncio.run(main())
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
    warns = [line for line in done.stderr.splitlines() if line.startswith("WARN ")]
    assert len(warns) == 1 and "cupy://0: no usable GPU" in warns[0], done.stderr


def test_doctor_shows_the_l0_device_pools_budgets_and_usage(
        capsys: pytest.CaptureFixture[str]) -> None:
    from sophia_memory.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "device host: 4 pools" in out and "(they fit: checked when opened)" in out
    for name in DEFAULT_POOLS:
        assert f"pool {name}" in out
    assert "OOM retries" in out


@sync_test
async def test_a_failed_put_does_not_lose_the_value_it_was_to_replace(
        tmp_path: Path, clock: ManualClock) -> None:
    async with pool_memory(tmp_path, clock, {"inference_cache": 1000}) as mem:
        await mem.put("k", arr(100), tier=Tier.GPU)
        allocator: Any = l0(mem).allocator
        allocator.fail_next = 3  # the new value cannot be allocated even in the empty pool
        with pytest.raises(ValueTooLargeError):
            await mem.put("k", arr(200), tier=Tier.GPU)
        await mem.flush()
        assert np.array_equal(await mem.get("k"), arr(100))  # spilled, still readable


@sync_test
async def test_a_string_array_put_to_the_gpu_tier_names_its_dtype(
        tmp_path: Path, clock: ManualClock) -> None:
    async with pool_memory(tmp_path, clock, {"inference_cache": 4096}) as mem:
        with pytest.raises(UnsupportedValueError) as info:
            await mem.put("s", np.array(["a", "b"]), tier=Tier.GPU)
        assert "<U1" in str(info.value) or "str" in str(info.value)
        assert "not ndarray" not in str(info.value)
