"""Acceptance (issue 16): a state machine whose rules run concurrently, several operations in
flight per step, checked by the linearizability checker.

:class:`~sophia_memory.testing.ConcurrentMemoryStateMachine` over a Memory whose SESSION
holds one or two items (so every put evicts and spills) under each eviction policy, and
whose CORTEX, PERSISTENT and WORKFLOW are gated backends that yield a seeded random number of
times around every call: operations of four clients suspend inside the engine while others
start, finish, flush, spill and promote. The history must be linearizable per key whenever
nothing is in flight.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize

from sophia_memory import Memory, Tier
from sophia_memory.policies import POLICY_NAMES
from sophia_memory.testing import ConcurrentMemoryStateMachine, reset_gated

GATED = {Tier.CORTEX: "cc", Tier.PERSISTENT: "cp", Tier.WORKFLOW: "cw"}


class GatedConcurrentMachine(ConcurrentMemoryStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.policy = "lru"
        self.session_items = 1

    @initialize(policy=st.sampled_from(sorted(POLICY_NAMES)), session_items=st.sampled_from([1, 2]))
    def choose_session(self, policy: str, session_items: int) -> None:
        self.policy, self.session_items = policy, session_items

    def make_memory(self) -> Memory:
        reset_gated()
        tiers: dict[Tier, str | None] = {
            Tier.GPU: None, Tier.VECTOR: None,
            Tier.SESSION: f"memory://?max_items={self.session_items}&policy={self.policy}"}
        for i, (tier, name) in enumerate(GATED.items()):
            tiers[tier] = f"gated://{name}?yields=3&seed={self.seed + i}"
        return Memory.open(tiers=tiers, clock=self.clock, purge_interval=0)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            reset_gated()


GatedConcurrentMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, derandomize=True,
    database=None, suppress_health_check=[HealthCheck.too_slow])


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
