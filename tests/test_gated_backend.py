"""The gated test backend (sophia_memory.testing.gated): what makes it useful to the
linearizability tests. Its conformance run is in test_backend_conformance.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sophia_memory import ConfigError, ManualClock, Memory, Tier
from sophia_memory.backends import ObjectStore, Purging, Remote
from sophia_memory.testing import (
    Gate,
    GatedBackend,
    HistoryRecorder,
    gate,
    gated_data,
    reset_gated,
)
from sophia_memory.tiers import Record


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    reset_gated()
    yield
    reset_gated()


def tiers(cortex: str) -> dict[Tier, str | None]:
    return {Tier.GPU: None, Tier.SESSION: "memory://?max_items=2", Tier.CORTEX: cortex,
            Tier.PERSISTENT: None, Tier.VECTOR: None, Tier.WORKFLOW: None}


def test_it_is_a_slow_tier_that_purges() -> None:
    backend = GatedBackend("t")
    assert not isinstance(backend, ObjectStore)  # the engine must not read it synchronously
    assert not isinstance(backend, Remote)  # no deadline: a held call may wait for ever
    assert isinstance(backend, Purging)


async def test_opened_by_url_with_its_options() -> None:
    async with Memory.open(tiers=tiers("gated://c?yields=3&seed=5"), clock=ManualClock(),
                           purge_interval=0) as mem:
        await mem.put("k", "v", tier=Tier.CORTEX)
        assert await mem.get("k") == "v"
        assert gate("c").max_yields == 3
        assert "k" in gated_data("c")
        assert "gated in-process store 'c'" in mem.stats()["tiers"]["CORTEX"]["backend"]


@pytest.mark.parametrize(("url", "message"), [
    ("gated://c?yield=3", "unknown option"),
    ("gated://c?yields=-1", "yields"),
    ("gated://c?seed=x", "seed"),
    ("gated://c?persistent=2", "persistent"),
])
def test_bad_options_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Memory.open(tiers=tiers(url), clock=ManualClock())


async def test_a_held_call_waits_until_released() -> None:
    g = Gate()
    backend = GatedBackend("h", gate=g)
    g.hold("put", "k", "after")
    task = asyncio.ensure_future(backend.put("k", Record(b"v")))
    assert await g.wait_blocked("put", "k", "after", unless=task)
    assert not task.done()
    assert gated_data("h")["k"].payload == b"v"  # the effect is in; the return is held
    assert await backend.get("k", 0.0) is not None  # other calls pass
    assert not g.blocked("put", "other")
    g.release("put", "k", "after")
    await task
    assert not g.parked
    g.hold(["delete", "delete_many"], None)  # any key
    task = asyncio.ensure_future(backend.delete_many(["x", "k"], 0.0))
    assert await g.wait_blocked("delete_many", "x", unless=task)
    assert "k" in gated_data("h")  # held before its effect
    g.release_all()
    assert await task == 1
    assert not await g.wait_blocked("put", unless=task, spins=3)


async def test_persistent_stores_outlive_a_reopen_and_others_start_empty() -> None:
    for url, kept in (("gated://p?persistent=1", "v"), ("gated://p", None)):
        async with Memory.open(tiers=tiers(url), clock=ManualClock(),
                               purge_interval=0) as mem:
            await mem.put("k", "v", tier=Tier.CORTEX)
        async with Memory.open(tiers=tiers(url), clock=ManualClock(),
                               purge_interval=0) as mem:
            assert await mem.get("k") == kept


async def test_the_same_seed_replays_the_same_interleaving() -> None:
    async def run(seed: int) -> list[tuple[str, float, float]]:
        reset_gated()
        async with Memory.open(tiers=tiers(f"gated://r?yields=4&seed={seed}"),
                               clock=ManualClock(), purge_interval=0) as mem:
            rec = HistoryRecorder(mem)
            clients = [rec.client(f"c{i}") for i in range(3)]
            await asyncio.gather(*(c.put(f"k{j}", f"{c.name}.{j}", tier=Tier.CORTEX)
                                   for c in clients for j in range(3)),
                                 *(c.get_many(["k0", "k1", "k2"]) for c in clients))
        return [(op.client, op.call, op.ret) for op in rec.history]

    first = await run(1)
    assert first == await run(1)
    others = [await run(seed) for seed in (2, 3, 4)]
    assert any(first != other for other in others)
