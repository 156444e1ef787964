"""Acceptance (issue 16): a state machine whose rules run concurrently, several operations in
flight per step, checked by the linearizability checker.

:class:`~sophia_memory.testing.ConcurrentMemoryStateMachine` over a Memory whose SESSION
holds one or two items (so every put evicts and spills) under each eviction policy, and
whose CORTEX, PERSISTENT and WORKFLOW are gated backends that yield a seeded random number of
times around every call: operations of four clients suspend inside the engine while others
start, finish, flush, spill and promote. The history must be linearizable per key whenever
nothing is in flight.

A second machine puts SESSION on the real Redis server (a fresh prefix per run, removed
after): there reads and promotions into SESSION suspend on the network as well.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize

from sophia_memory import Memory, Tier
from sophia_memory.policies import POLICY_NAMES
from sophia_memory.testing import ConcurrentMemoryStateMachine, reset_gated

from .conftest import drop_prefix, real_redis_or_skip
from .test_redis_state_machine import _redis_reachable

GATED = {Tier.CORTEX: "cc", Tier.PERSISTENT: "cp", Tier.WORKFLOW: "cw"}


def open_over_gated(machine: ConcurrentMemoryStateMachine, session: str) -> Memory:
    """The machine's memory: SESSION at ``session``, the slower tiers gated (fresh, each
    interleaving by the machine's seed), no GPU or VECTOR."""
    reset_gated()
    tiers: dict[Tier, str | None] = {Tier.GPU: None, Tier.VECTOR: None, Tier.SESSION: session}
    for i, (tier, name) in enumerate(GATED.items()):
        tiers[tier] = f"gated://{name}?yields=3&seed={machine.seed + i}"
    return Memory.open(tiers=tiers, clock=machine.clock, purge_interval=0)


class GatedConcurrentMachine(ConcurrentMemoryStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.policy = "lru"
        self.session_items = 1

    @initialize(policy=st.sampled_from(sorted(POLICY_NAMES)), session_items=st.sampled_from([1, 2]))
    def choose_session(self, policy: str, session_items: int) -> None:
        self.policy, self.session_items = policy, session_items

    def make_memory(self) -> Memory:
        return open_over_gated(
            self, f"memory://?max_items={self.session_items}&policy={self.policy}")

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            reset_gated()


class RedisConcurrentMachine(ConcurrentMemoryStateMachine):
    """SESSION on the real Redis (unbounded there: no eviction, but promotion into it)."""

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

    def make_memory(self) -> Memory:
        self.prefix = f"smcc:{uuid.uuid4().hex}:"
        sep = "&" if "?" in self.url else "?"
        return open_over_gated(self, f"{self.url}{sep}prefix={self.prefix}")

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            reset_gated()
            if self.mem is not None:
                self._drop()

    def _drop(self) -> None:
        import asyncio

        async def drop() -> None:
            client = await real_redis_or_skip(self.url)
            try:
                await drop_prefix(client, self.prefix)
            finally:
                await client.aclose()

        asyncio.run(drop())


SETTINGS = settings(max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow])
GatedConcurrentMachine.TestCase.settings = SETTINGS
RedisConcurrentMachine.TestCase.settings = settings(SETTINGS, max_examples=40)


class TestGatedConcurrent(GatedConcurrentMachine.TestCase):
    def test_operations_overlap_and_stay_linearizable(self) -> None:
        GatedConcurrentMachine.exercised.clear()
        self.runTest()
        seen = GatedConcurrentMachine.exercised
        print(dict(seen))
        # The runs did what they are for: without these the property would hold vacuously.
        for name in ("spills", "promotions", "evictions", "reads during writes",
                     "several in flight"):
            assert seen[name] > 0, (name, dict(seen))
        assert seen["most in flight"] == GatedConcurrentMachine.clients


@pytest.mark.redis
def test_with_session_on_real_redis_operations_overlap_and_stay_linearizable() -> None:
    reason = _redis_reachable()
    if reason:
        pytest.skip(reason)
    RedisConcurrentMachine.exercised.clear()
    RedisConcurrentMachine.TestCase().runTest()
    seen = RedisConcurrentMachine.exercised
    print(dict(seen))
    for name in ("promotions", "hits", "reads during writes", "several in flight"):
        assert seen[name] > 0, (name, dict(seen))
