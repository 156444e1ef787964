"""A Hypothesis state machine whose operations overlap, judged by the linearizability checker.

:class:`MemoryStateMachine` runs one operation at a time against a model. This machine keeps
several operations **in flight across steps**: a step starts operations (each on an idle
client, so one client has at most one call running, as a coroutine would), lets the event
loop run a few turns, or waits for everything in flight. Between those, the operations of
different clients suspend inside the engine and the backends (over gated backends, at a
seeded random number of points per call) while others start, finish, spill, promote and
evict. Every call and return is recorded by a :class:`~.linearizability.HistoryRecorder`;
whenever nothing is in flight the history so far must be linearizable per key
(:func:`~.linearizability.check_history`), so a failure is found at the step that made it
and Hypothesis shrinks the steps::

    class MyConcurrentMachine(ConcurrentMemoryStateMachine):
        def make_memory(self) -> Memory:
            return Memory.open(tiers={Tier.SESSION: "memory://?max_items=1",
                                      Tier.CORTEX: f"gated://c?yields=3&seed={self.seed}"},
                               clock=self.clock, purge_interval=0)

    TestMyConcurrent = MyConcurrentMachine.TestCase

Operations: ``put`` (to a home tier drawn from :attr:`homes`), ``put_many``, ``delete``,
``delete_many``, ``get``, ``get_many`` over :attr:`keys`, and ``flush`` (which moves spilled
items down while others run). Every value put is unique, so a read of a superseded value is
told apart. TTLs are left to :class:`MemoryStateMachine`: the register model has no expiry.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ..clock import ManualClock
from ..memory import Memory
from ..tiers import Tier
from .linearizability import HistoryRecorder, RecordingClient
from .memory import exercised

__all__ = ["ConcurrentMemoryStateMachine", "perform"]

Op = tuple[Any, ...]


def _operations(keys: tuple[str, ...], homes: tuple[Tier, ...]) -> st.SearchStrategy[Op]:
    key = st.sampled_from(keys)
    key_set = st.lists(key, min_size=1, max_size=len(keys), unique=True).map(tuple)
    home = st.sampled_from(homes)
    return st.one_of(
        st.tuples(st.just("put"), key, home),
        st.tuples(st.just("put_many"), key_set, home),
        st.tuples(st.just("delete"), key),
        st.tuples(st.just("delete_many"), key_set),
        st.tuples(st.just("get"), key),
        st.tuples(st.just("get_many"), key_set),
        st.tuples(st.just("flush")),
    )


async def perform(client: RecordingClient, op: Op, value: str) -> None:
    """Run ``op`` through ``client``: ``("put", key, tier)``, ``("put_many", keys, tier)``
    (each key's value is ``value.key``), ``("delete", key)``, ``("delete_many", keys)``,
    ``("get", key)``, ``("get_many", keys)`` or ``("flush",)``; ``value`` should be written
    once in a history, so that every read names the write it saw."""
    kind = op[0]
    if kind == "put":
        await client.put(op[1], value, tier=op[2])
    elif kind == "put_many":
        await client.put_many({k: f"{value}.{k}" for k in op[1]}, tier=op[2])
    elif kind == "delete":
        await client.delete(op[1])
    elif kind == "delete_many":
        await client.delete_many(op[1])
    elif kind == "get":
        await client.get(op[1])
    elif kind == "get_many":
        await client.get_many(op[1])
    elif kind == "flush":
        await client.flush()
    else:
        raise ValueError(f"unknown operation {op!r}")


_KEYS = ("k0", "k1", "k2")
_HOMES = (Tier.SESSION, Tier.CORTEX, Tier.PERSISTENT, Tier.WORKFLOW)


class ConcurrentMemoryStateMachine(RuleBasedStateMachine):
    """A whole Memory with up to :attr:`clients` operations in flight at once.

    Override :meth:`make_memory`; it runs in the first step, after ``self.seed`` (a drawn
    integer for the backends' interleaving, e.g. ``gated://...&seed=``) and ``self.clock``
    are set. The memory's event loop is ``self.loop``.
    """

    #: Clients, so also the most operations in flight at once.
    clients: ClassVar[int] = 4
    #: The keys operations draw from (few, so operations meet on them).
    keys: ClassVar[tuple[str, ...]] = _KEYS
    #: The home tiers puts draw from; each must be enabled in the memory.
    homes: ClassVar[tuple[Tier, ...]] = _HOMES
    #: Evidence over every run of this class: :data:`~.memory.COUNTERS` from the memory's
    #: stats, plus ``"reads during writes"`` (pairs of overlapping read and write on one
    #: key), ``"several in flight"`` (steps that left two or more operations running) and
    #: ``"most in flight"`` (the largest number running at once).
    exercised: ClassVar[Counter[str]] = Counter()
    #: Seconds a step may take to finish what is in flight before the run fails as hung: a
    #: guard against hanging, not a timing claim.
    step_guard: ClassVar[float] = 120.0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.seed = 0
        self.mem: Memory | None = None
        self.recorder: HistoryRecorder | None = None
        self.running: dict[int, asyncio.Task[None]] = {}
        self._values = itertools.count()
        self._most = 0
        self._several = 0

    def make_memory(self) -> Memory:
        """The memory under test, on ``self.clock``; ``self.seed`` is drawn per run."""
        raise NotImplementedError

    # -- running operations ------------------------------------------------------------------

    def _client(self, index: int) -> RecordingClient:
        assert self.recorder is not None
        return self.recorder.client(f"c{index}")

    async def _perform(self, client: RecordingClient, op: Op) -> None:
        await perform(client, op, f"{client.name}.{next(self._values)}")

    def _turn(self, turns: int) -> None:
        async def yields() -> None:
            for _ in range(turns):
                await asyncio.sleep(0)

        self.loop.run_until_complete(yields())
        self._reap()

    def _reap(self) -> None:
        """Forget finished operations; an operation that raised fails the step."""
        for index, task in list(self.running.items()):
            if task.done():
                del self.running[index]
                task.result()

    def _settle(self) -> None:
        """Run until nothing is in flight, then check the history so far."""
        pending = [t for t in self.running.values() if not t.done()]
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=self.step_guard))
            stuck = [t for t in pending if not t.done()]
            if stuck:
                raise AssertionError(f"operations still in flight after {self.step_guard} s: "
                                     + ", ".join(repr(t) for t in stuck))
        self._reap()
        assert self.recorder is not None
        result = self.recorder.check()
        assert result.ok, result.report

    # -- rules -------------------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**16))
    def open_memory(self, seed: int) -> None:
        self.seed = seed
        self.mem = self.make_memory()
        self.recorder = HistoryRecorder(self.mem)

    # No rule has a precondition on what is in flight: over a real server that depends on
    # timing, and Hypothesis must be able to replay the same rule choices.
    @rule(ops=st.data(), turns=st.integers(0, 4))
    def start(self, ops: st.DataObject, turns: int) -> None:
        """Start operations at once, one per idle client (as many as are drawn and idle;
        none when every client is busy),
        then let the loop run ``turns`` turns (zero: they have not even begun when the next
        step starts more). What is drawn does not depend on which clients are idle, so a
        run over a real server (whose timing varies) replays the same draws."""
        drawn = ops.draw(st.lists(_operations(self.keys, self.homes), min_size=1,
                                  max_size=self.clients), label="operations")
        idle = [i for i in range(self.clients) if i not in self.running]
        for index, op in zip(idle, drawn, strict=False):
            self.running[index] = self.loop.create_task(
                self._perform(self._client(index), op))
        self._turn(turns)

    @rule(turns=st.integers(1, 12))
    def run_a_while(self, turns: int) -> None:
        """Let what is in flight move on ``turns`` loop turns; some of it finishes."""
        self._turn(turns)

    @rule()
    def settle(self) -> None:
        """Wait for everything in flight; the history so far must be linearizable."""
        self._settle()

    @invariant()
    def count_overlap(self) -> None:
        in_flight = sum(not t.done() for t in self.running.values())
        self._most = max(self._most, in_flight)
        self._several += in_flight >= 2

    def teardown(self) -> None:
        cls = type(self)
        if "exercised" not in cls.__dict__:
            cls.exercised = Counter()
        try:
            if self.mem is not None:
                self._settle()
                end = self._client(self.clients)  # reads alone at the end
                self.loop.run_until_complete(self._closing_reads(end))
                self._settle()
                assert self.recorder is not None
                cls.exercised.update(exercised(self.mem.stats()))
                cls.exercised["reads during writes"] += self.recorder.concurrent_pairs()
                cls.exercised["several in flight"] += self._several
                cls.exercised["most in flight"] = max(cls.exercised["most in flight"],
                                                      self._most)
        finally:
            for task in self.running.values():
                task.cancel()
            if self.mem is not None:
                self.loop.run_until_complete(self.mem.close())
            self.loop.close()

    async def _closing_reads(self, end: RecordingClient) -> None:
        await end.get_many(self.keys)
        await end.flush()
        for key in self.keys:
            await end.get(key)
