"""Acceptance: the shipped state machine (sophia_memory.testing.MemoryStateMachine) drives a
whole Memory with tiny bounded tiers (eviction, spill and promotion happen all the time)
against a plain model and finds no difference."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from sophia_memory import Memory
from sophia_memory.testing import MemoryStateMachine

from .conftest import small_memory


class TieredMemoryMachine(MemoryStateMachine):
    session_max_items = 4

    def make_memory(self) -> Memory:
        return small_memory(self.dir, self.clock)


TieredMemoryMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


class TestTieredMemory(TieredMemoryMachine.TestCase):
    def test_machine_exercised_eviction_spill_and_promotion(self) -> None:
        TieredMemoryMachine.exercised.clear()
        self.runTest()
        counts = TieredMemoryMachine.exercised
        print(dict(counts))
        for name in ("spills", "promotions", "evictions", "hits"):
            assert counts[name] > 0, (name, counts)
