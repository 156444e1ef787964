"""The whole-Memory state machine with L2-L5 on the emulated Snowflake (fakesnow + the
vector shim): every example gets a fresh emulated account. Fewer examples than the embedded
run, so it stays well under a minute."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, settings

pytest.importorskip("snowflake.connector")
pytest.importorskip("fakesnow")

from sophia_memory import Memory, Tier

from .conftest import small_memory
from .snowflake_shim import emulated_snowflake
from .test_state_machine import TieredMemoryMachine

USED: dict[str, int] = {}
URL = "snowflake://tester:s3cret@acct-test/TESTDB/SOPHIA_AI_MEMORY"


class SnowflakeMachine(TieredMemoryMachine):
    def make_memory(self) -> Memory:
        self.emulator = contextlib.ExitStack()
        self.emulator.enter_context(emulated_snowflake())
        return small_memory(self.dir, self.clock, tiers={
            Tier.CORTEX: URL, Tier.PERSISTENT: URL, Tier.VECTOR: URL + "?dim=4",
            Tier.WORKFLOW: URL + "?retain=3"})

    def teardown(self) -> None:
        tiers = self.mem.stats()["tiers"]
        for name in ("CORTEX", "PERSISTENT", "WORKFLOW"):
            USED[name] = USED.get(name, 0) + tiers[name].get("puts", 0)
        try:
            super().teardown()
        finally:
            self.emulator.close()


@pytest.mark.snowflake
@pytest.mark.filterwarnings("ignore:Arrow output:UserWarning")
def test_state_machine_with_l2_to_l5_on_emulated_snowflake() -> None:
    SnowflakeMachine.TestCase.settings = settings(
        max_examples=20, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    USED.clear()
    SnowflakeMachine.TestCase().runTest()
    assert all(USED.get(name, 0) > 0 for name in ("CORTEX", "PERSISTENT", "WORKFLOW")), USED
