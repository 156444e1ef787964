"""Acceptance: a Hypothesis state machine drives a whole Memory with tiny bounded tiers
(eviction, spill and promotion happen all the time) against a plain model and finds no
difference.

The model keeps, per key, the value each tier holds as a *home* (where it was put) with its
expiry. ``get`` must return the live home value of the fastest tier. A ``put`` to tier T
replaces T's home and clears the tiers above T; ``delete`` clears all. One corner is looser:
when a faster home has expired, a spill may already have written it over a slower home (the
spilled copy then expires too), so the slower home *or* nothing is accepted.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sophia_memory import ManualClock, Memory, Tier

from .conftest import small_memory

KEYS = st.sampled_from([f"k{i}" for i in range(8)])
SCALARS = st.one_of(st.integers(-5, 5), st.text(max_size=5), st.binary(max_size=5),
                    st.lists(st.integers(0, 3), max_size=3), st.tuples(st.booleans()))
ARRAYS = st.builds(lambda n, v: np.full(n, v, dtype=np.int64), st.integers(1, 64),
                   st.integers(0, 9))
KV_TIERS = st.sampled_from([Tier.SESSION, Tier.CORTEX, Tier.PERSISTENT, Tier.WORKFLOW])
TTLS = st.one_of(st.none(), st.sampled_from([1.0, 5.0, 30.0]))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.dtype == b.dtype and np.array_equal(a, b))
    return type(a) is type(b) and bool(a == b)


EXERCISED: dict[str, int] = {}


def may_miss(ok: list[Any]) -> bool:
    return any(v is None for v in ok)


def must_miss(ok: list[Any]) -> bool:
    return len(ok) == 1 and ok[0] is None


class TieredMemoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.mem = self.make_memory()
        # key -> {tier: (value, expires_at)}
        self.model: dict[str, dict[Tier, tuple[Any, float | None]]] = {}

    def make_memory(self) -> Memory:
        return small_memory(self.dir, self.clock)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for tier in self.mem.stats()["tiers"].values():
            for name in ("spills", "promotions", "hits"):
                EXERCISED[name] = EXERCISED.get(name, 0) + tier.get(name, 0)
            EXERCISED["evictions"] = EXERCISED.get("evictions", 0) + tier.get(
                "backend_stats", {}).get("evictions", 0)
        self.run(self.mem.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _live(self, entry: tuple[Any, float | None]) -> bool:
        exp = entry[1]
        return exp is None or exp > self.clock.time()

    def acceptable(self, key: str) -> list[Any]:
        """Values a get may return now (``None`` meaning missing)."""
        homes = self.model.get(key, {})
        expired_above = False
        for tier in sorted(homes):
            entry = homes[tier]
            if self._live(entry):
                if expired_above:
                    return [v for t, (v, e) in homes.items()
                            if t >= tier and self._live((v, e))] + [None]
                return [entry[0]]
            expired_above = True
        return [None]

    def _put_model(self, key: str, value: Any, tier: Tier, ttl: float | None) -> None:
        homes = self.model.setdefault(key, {})
        for t in [t for t in homes if t <= tier]:
            del homes[t]
        homes[tier] = (value, None if ttl is None else self.clock.time() + ttl)

    @rule(key=KEYS, value=SCALARS, tier=KV_TIERS, ttl=TTLS)
    def put(self, key: str, value: Any, tier: Tier, ttl: float | None) -> None:
        self.run(self.mem.put(key, value, tier=tier, ttl=ttl))
        self._put_model(key, value, tier, ttl)

    @rule(key=KEYS, value=ARRAYS, ttl=TTLS)
    def put_array(self, key: str, value: Any, ttl: float | None) -> None:
        self.run(self.mem.put(key, value, tier=Tier.GPU, ttl=ttl))
        self._put_model(key, value.copy(), Tier.GPU, ttl)

    @rule(items=st.dictionaries(KEYS, SCALARS, max_size=4), tier=KV_TIERS)
    def put_many(self, items: dict[str, Any], tier: Tier) -> None:
        self.run(self.mem.put_many(items, tier=tier))
        for k, v in items.items():
            self._put_model(k, v, tier, None)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        got = self.run(self.mem.get(key))
        ok = self.acceptable(key)
        assert any(same(got, v) if v is not None else got is None for v in ok), (key, got, ok)

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[str]) -> None:
        got = self.run(self.mem.get_many(keys))
        for key in set(keys):
            ok = self.acceptable(key)
            value = got.get(key)
            assert any(same(value, v) if v is not None else key not in got for v in ok), (
                key, value, ok)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        existed = self.run(self.mem.delete(key))
        ok = self.acceptable(key)
        if not may_miss(ok):
            assert existed
        elif must_miss(ok):
            assert not existed
        self.model.pop(key, None)

    @rule(key=KEYS)
    def exists(self, key: str) -> None:
        ok = self.acceptable(key)
        present = self.run(self.mem.exists(key))
        if must_miss(ok):
            assert not present
        elif not may_miss(ok):
            assert present

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 10.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def flush(self) -> None:
        self.run(self.mem.flush())

    @precondition(lambda self: self.model)
    @rule()
    def purge(self) -> None:
        self.run(self.mem.purge_expired())

    @invariant()
    def bounded_tiers_hold_their_limits(self) -> None:
        stats = self.mem.stats()["tiers"]
        assert stats["SESSION"]["backend_stats"].get("items", 0) <= 4
        for pool in stats["GPU"]["backend_stats"]["pools"].values():
            assert pool["used"] <= pool["limit"]


TieredMemoryMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


class TestTieredMemory(TieredMemoryMachine.TestCase):  # type: ignore[misc,valid-type]
    def test_machine_exercised_eviction_spill_and_promotion(self) -> None:
        EXERCISED.clear()
        self.runTest()
        print(EXERCISED)
        for name in ("spills", "promotions", "evictions", "hits"):
            assert EXERCISED.get(name, 0) > 0, (name, EXERCISED)
