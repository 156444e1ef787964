"""The optional metrics sink on the emulator (fakesnow + tests/snowflake_shim.py): a memory's
L0 host pools land in ``GPU_MEMORY_POOLS`` and ``GPU_PERFORMANCE_METRICS`` with the right
values; identifiers are checked; failures are logged without secrets and never reach the
memory. The periodic task is driven by write_once in the tests (no sleeping)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

pytest.importorskip("snowflake.connector")
pytest.importorskip("fakesnow")

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.backends import parse_url
from sophia_memory.backends.sql.snowflake import SnowflakeSettings
from sophia_memory.backends.sql.snowflake_metrics import SnowflakeMetricsSink, _nvml_figures
from sophia_memory.errors import BackendError, ConfigError

from .snowflake_shim import emulated_snowflake

pytestmark = [pytest.mark.snowflake,
              pytest.mark.filterwarnings("ignore:Arrow output:UserWarning")]

URL = "snowflake://tester:s3cret@acct-test/TESTDB/SOPHIA_AI_MEMORY"
GIB = 1 << 30
POOLS = {"active_models": 2 * GIB, "inference_cache": GIB, "vector_cache": GIB // 2}
T0 = dt.datetime(2025, 1, 2, 3, 4, 5)


@pytest.fixture(autouse=True)
def _emulator() -> Iterator[None]:
    with emulated_snowflake():
        yield


def open_memory(tmp_path: Path) -> Memory:
    """A memory whose L0 is host pools of known budgets (whatever hardware runs the test)."""
    return Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                       tiers={Tier.GPU: "host://?memory=8GiB&default_pool=inference_cache"},
                       gpu_pools=dict(POOLS))


def query(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    import snowflake.connector

    conn = snowflake.connector.connect(account="acct-test", user="tester", database="TESTDB",
                                       schema="SOPHIA_AI_MEMORY", paramstyle="qmark")
    cur = conn.cursor()
    cur.execute(sql, params)
    return list(cur.fetchall())


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


async def test_host_pools_are_written_with_their_usage(tmp_path: Path) -> None:
    clock = Clock()
    async with open_memory(tmp_path) as mem, SnowflakeMetricsSink(URL, 60, clock=clock) as sink:
        await mem.put("weights", np.zeros(1000, dtype=np.float64), tier=Tier.GPU,
                      pool="active_models")
        await mem.put("cache", np.ones(3000, dtype=np.float32), tier=Tier.GPU)
        pools = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"]
        assert pools["active_models"]["used"] >= 8000 and pools["inference_cache"]["used"] > 0

        assert await sink.write_once(mem)
        rows = query("SELECT POOL_NAME, ALLOCATED_MEMORY_GB, USED_MEMORY_GB, POOL_TYPE, "
                     "LAST_UPDATED FROM GPU_MEMORY_POOLS ORDER BY POOL_NAME")
        assert [r[0] for r in rows] == sorted(POOLS)
        for name, allocated, used, pool_type, updated in rows:
            assert allocated == pytest.approx(POOLS[name] / GIB)
            assert used == pytest.approx(pools[name]["used"] / GIB)
            assert pool_type == "host" and updated == T0
        metrics = query("SELECT METRIC_ID, GPU_ID, MEMORY_UTILIZATION, COMPUTE_UTILIZATION, "
                        "TEMPERATURE_CELSIUS, POWER_USAGE_WATTS, RECORDED_AT "
                        "FROM GPU_PERFORMANCE_METRICS")
        assert len(metrics) == 1
        metric_id, gpu_id, memory_util, compute, temperature, power, recorded = metrics[0]
        used_total = sum(p["used"] for p in pools.values())
        assert len(metric_id) == 32 and gpu_id == "host" and recorded == T0
        assert memory_util == pytest.approx(100.0 * used_total / sum(POOLS.values()))
        assert (compute, temperature, power) == (None, None, None)  # no GPU figures for host
        assert (sink.writes, sink.rows_written, sink.errors) == (1, 4, 0)

        # Later: the pool rows are updated in place, the metrics table gains a row.
        await mem.delete("weights")
        clock.now = T0 + dt.timedelta(minutes=1)
        assert await sink.write_once(mem)
        rows = query("SELECT POOL_NAME, USED_MEMORY_GB, LAST_UPDATED FROM GPU_MEMORY_POOLS "
                     "WHERE POOL_NAME = ?", ["active_models"])
        assert rows == [("active_models", 0.0, T0 + dt.timedelta(minutes=1))]
        assert query("SELECT COUNT(*) FROM GPU_MEMORY_POOLS") == [(3,)]
        assert query("SELECT COUNT(*), COUNT(DISTINCT METRIC_ID) "
                     "FROM GPU_PERFORMANCE_METRICS") == [(2, 2)]


async def test_device_figures_are_bound_when_available(tmp_path: Path) -> None:
    asked: list[str] = []

    def figures(device: str) -> tuple[float | None, float | None, float | None]:
        asked.append(device)
        return 37.0, 61.5, 250.25

    async with open_memory(tmp_path) as mem, \
            SnowflakeMetricsSink(URL, 60, device_metrics=figures) as sink:
        assert await sink.write_once(mem)
    assert asked == ["host"]
    assert query("SELECT COMPUTE_UTILIZATION, TEMPERATURE_CELSIUS, POWER_USAGE_WATTS, "
                 "MEMORY_UTILIZATION FROM GPU_PERFORMANCE_METRICS") == [(37.0, 61.5, 250.25,
                                                                         0.0)]


def test_nvml_figures_are_null_without_a_gpu_or_pynvml() -> None:
    assert _nvml_figures("host") == (None, None, None)
    with mock.patch.dict("sys.modules", {"pynvml": None}):
        assert _nvml_figures("cuda:0") == (None, None, None)
    broken = mock.Mock()
    broken.nvmlInit.side_effect = RuntimeError("NVML Shared Library Not Found")
    with mock.patch.dict("sys.modules", {"pynvml": broken}):
        assert _nvml_figures("cuda:0") == (None, None, None)


def test_nvml_figures_when_pynvml_answers() -> None:
    nvml = mock.Mock()
    nvml.nvmlDeviceGetUtilizationRates.return_value = mock.Mock(gpu=80)
    nvml.nvmlDeviceGetTemperature.return_value = 55
    nvml.nvmlDeviceGetPowerUsage.side_effect = RuntimeError("not supported")
    with mock.patch.dict("sys.modules", {"pynvml": nvml, "cupy": None}):
        assert _nvml_figures("cuda:1") == (80.0, 55.0, None)
    nvml.nvmlDeviceGetHandleByIndex.assert_called_once_with(1)
    nvml.nvmlShutdown.assert_called_once()


async def test_a_memory_without_l0_writes_nothing(tmp_path: Path) -> None:
    async with Memory.open(path=str(tmp_path / "m.db"), clock=ManualClock(),
                           tiers={Tier.GPU: None}) as mem, SnowflakeMetricsSink(URL, 60) as sink:
        assert await sink.write_once(mem)
        assert sink.rows_written == 0 and sink.engine.statements == 0


async def test_failures_are_logged_without_secrets_and_never_reach_the_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import snowflake.connector

    error = snowflake.connector.errors.OperationalError(msg="could not reach account")
    async with open_memory(tmp_path) as mem, SnowflakeMetricsSink(URL, 60) as sink:
        with caplog.at_level(logging.WARNING), \
                mock.patch("snowflake.connector.connect", side_effect=error):
            assert not await sink.write_once(mem)
        assert sink.errors == 1 and "could not reach" in (sink.last_error or "")
        assert "could not reach" in caplog.text and "s3cret" not in caplog.text
        await mem.put("k", np.zeros(4), tier=Tier.GPU)  # the memory is untouched
        assert await sink.write_once(mem)  # and the sink recovers with the account
        assert sink.writes == 1


async def test_the_periodic_task_starts_and_stops(tmp_path: Path) -> None:
    async with open_memory(tmp_path) as mem:
        sink = SnowflakeMetricsSink(URL, 3600)
        written = asyncio.Event()
        write_once = sink.write_once

        async def signalling(memory: Any) -> bool:
            ok = await write_once(memory)
            written.set()
            return ok

        sink.write_once = signalling  # type: ignore[method-assign]
        try:
            task = sink.start(mem)
            with pytest.raises(RuntimeError, match="already running"):
                sink.start(mem)
            await asyncio.wait_for(written.wait(), timeout=30)  # the first one is written at once
            assert sink.writes == 1 and sink.running
            await sink.stop()
            assert not sink.running and task.done()
        finally:
            await sink.close()
        with pytest.raises(BackendError, match="closed"):
            await sink.write_once(mem)
    assert query("SELECT COUNT(*) FROM GPU_PERFORMANCE_METRICS") == [(1,)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pools_table": 'X"; DROP TABLE Y; --'}, "table name"),
    ({"metrics_table": "A.B"}, "table name"),
    ({"interval_s": 0}, "interval"),
])
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    args = {"interval_s": 60, **kwargs}
    with pytest.raises(ConfigError, match=message):
        SnowflakeMetricsSink(URL, **args)


@pytest.mark.parametrize("url", [
    "snowflake://u:p@acct/DB/SCHEMA; DROP TABLE X",
    "snowflake://u:p@acct/DB/SCHEMA?colour=red",
    "snowflake://u:p@acct/DB/SCHEMA?timeout=soon",
    "redis://localhost/0",
])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        SnowflakeMetricsSink(url, 60)


async def test_settings_and_custom_tables(tmp_path: Path) -> None:
    settings = SnowflakeSettings.from_url(parse_url(URL), environ={})
    async with open_memory(tmp_path) as mem, \
            SnowflakeMetricsSink(settings, 60, pools_table="my_pools",
                                 metrics_table="my_metrics") as sink:
        assert '"TESTDB"."SOPHIA_AI_MEMORY"."MY_POOLS"' in sink.table_ddl()[0]
        assert await sink.write_once(mem)
    assert query("SELECT COUNT(*) FROM MY_POOLS") == [(3,)]
    assert query("SELECT COUNT(*) FROM MY_METRICS") == [(1,)]
