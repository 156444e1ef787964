"""A Hypothesis state machine of a whole tiered :class:`~sophia_memory.Memory` against a model.

Subclass :class:`MemoryStateMachine` with a ``make_memory`` that opens the memory to test
(your backends, tiny bounds so eviction, spill and promotion happen all the time), then run
its ``TestCase``::

    class MyMemoryMachine(MemoryStateMachine):
        session_max_items = 4

        def make_memory(self) -> Memory:
            return Memory.open(path=str(self.dir / "m.db"), clock=self.clock, tiers={
                Tier.SESSION: "memory://?max_items=4", Tier.CORTEX: "mydb://..."})

    TestMyMemory = MyMemoryMachine.TestCase

The rules put (to every key-value tier the memory has enabled, with and without TTLs), put
arrays to GPU, put_many, get, get_many, delete, exists, ``incr``, ``add`` and
``compare_and_set`` (on every key-value tier), move the clock, flush and purge, one at a
time; :mod:`~sophia_memory.testing.linearizability` checks concurrent runs.

The model keeps, per key, the value each tier holds as a *home* (where it was put) with its
expiry. ``get`` must return the live home value of the fastest tier. A ``put`` to tier T
replaces T's home and clears the tiers above T; ``delete`` clears all. One corner is looser:
when a faster home has expired, a spill may already have written it over a slower home (the
spilled copy then expires too), so the slower home *or* nothing is accepted.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from collections import Counter
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ..clock import ManualClock
from ..errors import InvalidArgumentError
from ..memory import Memory
from ..tiers import Tier

__all__ = ["MemoryStateMachine", "exercised", "same_value"]

T = TypeVar("T")

KEYS = st.sampled_from([f"k{i}" for i in range(8)])
SCALARS = st.one_of(st.integers(-5, 5), st.text(max_size=5), st.binary(max_size=5),
                    st.lists(st.integers(0, 3), max_size=3), st.tuples(st.booleans()))
ARRAYS = st.builds(lambda n, v: np.full(n, v, dtype=np.int64), st.integers(1, 64),
                   st.integers(0, 9))
KV_TIERS = st.sampled_from([Tier.SESSION, Tier.CORTEX, Tier.PERSISTENT, Tier.WORKFLOW])
TTLS = st.one_of(st.none(), st.sampled_from([1.0, 5.0, 30.0]))

#: The counters :func:`exercised` sums.
COUNTERS = ("spills", "promotions", "evictions", "hits")


def same_value(a: Any, b: Any) -> bool:
    """Equal values of the same type; arrays by dtype and contents."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.dtype == b.dtype and bool(np.array_equal(a, b)))
    return type(a) is type(b) and bool(a == b)


def exercised(stats: Mapping[str, Any], names: tuple[str, ...] = COUNTERS) -> Counter[str]:
    """Each counter in ``names`` summed over every place it appears in ``Memory.stats()``
    (per tier, per backend, per component): evidence that a run did spill, promote, evict."""
    totals: Counter[str] = Counter()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k in names and isinstance(v, int) and not isinstance(v, bool):
                    totals[k] += v
                else:
                    walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(stats)
    return totals


def _may_miss(ok: list[Any]) -> bool:
    return any(v is None for v in ok)


def _must_miss(ok: list[Any]) -> bool:
    return len(ok) == 1 and ok[0] is None


class MemoryStateMachine(RuleBasedStateMachine):
    """The whole tiered memory, one operation at a time, against a dict model.

    Override :meth:`make_memory`. ``self.dir`` is a fresh directory and ``self.clock`` a
    :class:`~sophia_memory.ManualClock` the memory must use (rules move it).
    """

    #: The SESSION bound the memory was opened with, checked after every step (None: not).
    session_max_items: ClassVar[int | None] = None
    #: Totals of :data:`COUNTERS` over every run of this class (see :func:`exercised`).
    exercised: ClassVar[Counter[str]] = Counter()
    #: Seconds one step (or the closing teardown) may take before the run fails as hung,
    #: with the stacks of the tasks still pending: a guard against hanging, not a timing
    #: claim.
    step_guard: ClassVar[float] = 120.0

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.mem = self.make_memory()
        self.enabled = frozenset(self.mem.tiers)
        # key -> {tier: (value, expires_at)}
        self.model: dict[str, dict[Tier, tuple[Any, float | None]]] = {}

    def make_memory(self) -> Memory:
        """The memory under test, on ``self.clock``, its files under ``self.dir``."""
        raise NotImplementedError

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(self._guarded(coro))

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait([task], timeout=self.step_guard)
        if done:
            return task.result()
        stacks = io.StringIO()
        for pending in asyncio.all_tasks():
            if pending is not asyncio.current_task():
                print(repr(pending), file=stacks)
                pending.print_stack(limit=20, file=stacks)
        task.cancel()
        raise AssertionError(f"a step did not finish within {self.step_guard} s; pending "
                             f"tasks:\n{stacks.getvalue()}")

    def teardown(self) -> None:
        cls = type(self)
        if "exercised" not in cls.__dict__:
            cls.exercised = Counter()
        try:
            cls.exercised.update(exercised(self.mem.stats()))
            self.run(self.mem.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model ---------------------------------------------------------------------------

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

    def _accepts(self, key: str, found: bool, value: Any) -> bool:
        return any(same_value(value, v) if v is not None else not found
                   for v in self.acceptable(key))

    # -- rules -------------------------------------------------------------------------------

    @rule(key=KEYS, value=SCALARS, tier=KV_TIERS, ttl=TTLS)
    def put(self, key: str, value: Any, tier: Tier, ttl: float | None) -> None:
        if tier not in self.enabled:
            return
        self.run(self.mem.put(key, value, tier=tier, ttl=ttl))
        self._put_model(key, value, tier, ttl)

    @precondition(lambda self: Tier.GPU in self.enabled)
    @rule(key=KEYS, value=ARRAYS, ttl=TTLS)
    def put_array(self, key: str, value: Any, ttl: float | None) -> None:
        self.run(self.mem.put(key, value, tier=Tier.GPU, ttl=ttl))
        self._put_model(key, value.copy(), Tier.GPU, ttl)

    @rule(items=st.dictionaries(KEYS, SCALARS, max_size=4), tier=KV_TIERS)
    def put_many(self, items: dict[str, Any], tier: Tier) -> None:
        if tier not in self.enabled:
            return
        self.run(self.mem.put_many(items, tier=tier))
        for k, v in items.items():
            self._put_model(k, v, tier, None)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        missing = object()
        got = self.run(self.mem.get(key, missing))
        assert self._accepts(key, got is not missing, got), (key, got, self.acceptable(key))

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[str]) -> None:
        got = self.run(self.mem.get_many(keys))
        for key in set(keys):
            assert self._accepts(key, key in got, got.get(key)), (
                key, got.get(key), self.acceptable(key))

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        existed = self.run(self.mem.delete(key))
        ok = self.acceptable(key)
        if not _may_miss(ok):
            assert existed
        elif _must_miss(ok):
            assert not existed
        self.model.pop(key, None)

    @rule(key=KEYS)
    def exists(self, key: str) -> None:
        ok = self.acceptable(key)
        present = self.run(self.mem.exists(key))
        if _must_miss(ok):
            assert not present
        elif not _may_miss(ok):
            assert present

    # -- the staples: the item they work on is the fastest live home at or below the tier ----

    def _known(self, key: str, tier: Tier) -> bool:
        """Whether the model can tell what a staple on ``tier`` finds. Not when a home of
        the key has expired, nor when a faster tier holds it too: a spill of that faster
        home writes over the slower one, and the model does not follow spills (see the
        module's docstring)."""
        homes = self.model.get(key, {})
        return all(self._live(e) and t >= tier for t, e in homes.items())

    def _current(self, key: str, tier: Tier) -> tuple[Any, float | None] | None:
        """The model's item a staple on ``tier`` works on (None: there is none)."""
        homes = self.model.get(key, {})
        below = [homes[t] for t in sorted(homes) if t >= tier]
        return below[0] if below else None

    def _write_model(self, key: str, value: Any, tier: Tier, expires_at: float | None) -> None:
        homes = self.model.setdefault(key, {})
        for t in [t for t in homes if t <= tier]:
            del homes[t]
        homes[tier] = (value, expires_at)

    @rule(key=KEYS, tier=KV_TIERS, delta=st.integers(-3, 3), ttl=TTLS)
    def incr(self, key: str, tier: Tier, delta: int, ttl: float | None) -> None:
        if tier not in self.enabled or not self._known(key, tier):
            return
        current = self._current(key, tier)
        if current is not None and type(current[0]) is not int:
            try:
                self.run(self.mem.incr(key, delta, tier=tier))
            except InvalidArgumentError:
                return  # nothing written
            raise AssertionError(f"incr of {current[0]!r} was not refused")
        got = self.run(self.mem.incr(key, delta, tier=tier, ttl=ttl))
        if current is None:
            assert got == delta, (key, got)
            self._write_model(key, got, tier,
                              None if ttl is None else self.clock.time() + ttl)
        else:
            assert got == current[0] + delta, (key, got, current)
            self._write_model(key, got, tier, current[1])  # keeps the item's expiry

    @rule(key=KEYS, value=SCALARS, tier=KV_TIERS, ttl=TTLS)
    def add(self, key: str, value: Any, tier: Tier, ttl: float | None) -> None:
        if tier not in self.enabled or not self._known(key, tier):
            return
        current = self._current(key, tier)
        added = self.run(self.mem.add(key, value, tier=tier, ttl=ttl))
        assert added is (current is None), (key, added, current)
        if added:
            self._put_model(key, value, tier, ttl)

    @rule(key=KEYS, value=SCALARS, tier=KV_TIERS, matching=st.booleans())
    def compare_and_set(self, key: str, value: Any, tier: Tier, matching: bool) -> None:
        if tier not in self.enabled or not self._known(key, tier):
            return
        current = self._current(key, tier)
        expected = current[0] if matching and current is not None else ("no such", value)
        done = self.run(self.mem.compare_and_set(key, expected, value, tier=tier))
        assert done is (current is not None and matching), (key, done, current)
        if done:
            self._put_model(key, value, tier, None)

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
        bound = self.session_max_items
        if bound is not None:
            assert stats["SESSION"]["backend_stats"].get("items", 0) <= bound
        gpu = stats.get("GPU", {}).get("backend_stats", {})
        for pool in gpu.get("pools", {}).values():
            assert pool["used"] <= pool["limit"]
