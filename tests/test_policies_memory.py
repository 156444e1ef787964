"""The whole-Memory state machine (sophia_memory.testing.MemoryStateMachine) with the in-process
tier on each eviction policy, chosen by ``memory://?policy=``: tiny bounds, so eviction, spill,
promotion and admission happen all the time, against the plain model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from sophia_memory import Memory, Tier
from sophia_memory.errors import ConfigError
from sophia_memory.policies import POLICY_NAMES
from sophia_memory.testing import MemoryStateMachine

from .conftest import small_memory


def _machine(policy: str) -> type[MemoryStateMachine]:
    class PolicyMachine(MemoryStateMachine):
        session_max_items = 4

        def make_memory(self) -> Memory:
            return small_memory(self.dir, self.clock, tiers={
                Tier.SESSION: f"memory://?max_items=4&policy={policy}&admission=1"})

    PolicyMachine.__name__ = f"PolicyMachine_{policy}"
    PolicyMachine.TestCase.settings = settings(
        max_examples=60, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    return PolicyMachine


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_memory_state_machine_with_policy(policy: str) -> None:
    machine = _machine(policy)
    machine.exercised.clear()
    machine.TestCase("runTest").runTest()
    counts = machine.exercised
    for name in ("spills", "evictions", "hits"):
        assert counts[name] > 0, (policy, name, counts)


@pytest.mark.parametrize("policy", POLICY_NAMES)
async def test_memory_url_chooses_the_policy(policy: str, tmp_path: object) -> None:
    mem = Memory.open(path=f"{tmp_path}/p.db", tiers={
        Tier.SESSION: f"memory://?max_items=8&policy={policy}"})
    try:
        session = mem.stats()["tiers"]["SESSION"]
        assert session["backend"].startswith(f"in-process {policy} ")
    finally:
        await mem.close()


def test_memory_url_refuses_an_unknown_policy(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match=r"policy='arc'.*fifo, lru, s3fifo, sieve, wtinylfu"):
        Memory.open(path=f"{tmp_path}/p.db", tiers={Tier.SESSION: "memory://?policy=arc"})
