"""Optional metrics sink: the L0 pools' usage and device figures, written to Snowflake at a
maintenance cadence.

Each :meth:`SnowflakeMetricsSink.write_once` takes one snapshot of a memory's L0 (GPU) tier,
through :meth:`Memory.stats` (the pool backend's ``stats()``), and writes it to two tables in the
configured database and schema (created if missing, unless ``create=0``):

* ``GPU_MEMORY_POOLS(POOL_NAME, ALLOCATED_MEMORY_GB, USED_MEMORY_GB, POOL_TYPE, LAST_UPDATED)``:
  one row per pool and device, kept current by a ``MERGE`` on ``(POOL_NAME, POOL_TYPE)``.
  ``ALLOCATED_MEMORY_GB`` is the pool's budget (its ``limit``), ``USED_MEMORY_GB`` the bytes
  stored in it (``used``, what the budget is charged with), both in GiB (2**30 bytes);
  ``POOL_TYPE`` is the device: ``host`` for host-memory pools, ``cuda:<n>`` on a GPU.
* ``GPU_PERFORMANCE_METRICS(METRIC_ID, GPU_ID, MEMORY_UTILIZATION, COMPUTE_UTILIZATION,
  TEMPERATURE_CELSIUS, POWER_USAGE_WATTS, RECORDED_AT)``: one new row per device and snapshot.
  ``METRIC_ID`` is a random UUID, ``GPU_ID`` the device as above, ``MEMORY_UTILIZATION`` the
  pools' used bytes over their budgets in percent. Compute utilisation (percent), temperature
  and power come from NVML when ``pynvml`` is importable and the device is a GPU, else NULL.

Timestamps are UTC wall-clock time (``TIMESTAMP_NTZ``). Identifiers are validated and quoted,
every value is bound. Writes go through the same engine (writer thread, connections) as the
Snowflake tiers of that account and schema. A failed snapshot is logged (the URL's password
never appears) and counted in :attr:`SnowflakeMetricsSink.errors`; it never reaches the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ...errors import BackendError, ConfigError
from .._url import parse_url
from .snowflake import SETTINGS_OPTIONS, SnowflakeSettings, check_identifier
from .snowflake_engine import SnowflakeEngine, driver

__all__ = ["SnowflakeMetricsSink"]

log = logging.getLogger(__name__)

POOLS_TABLE = "GPU_MEMORY_POOLS"
METRICS_TABLE = "GPU_PERFORMANCE_METRICS"
_GIB = float(1 << 30)
#: The options of the sink's ``snowflake://`` URL.
METRICS_OPTIONS = (*SETTINGS_OPTIONS, "timeout")


class _HasStats(Protocol):
    def stats(self) -> dict[str, Any]: ...


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _device_id(device: str) -> str:
    """``cuda:0`` from a pool backend's ``cuda:0 (NVIDIA H200)``; ``host`` stays ``host``."""
    return device.split(" (", 1)[0].strip() or "unknown"


def _nvml_figures(device: str) -> tuple[float | None, float | None, float | None]:
    """(compute utilisation %, temperature °C, power W) of ``cuda:<n>`` from NVML; None for
    each figure that is not available (no pynvml, no driver, not a GPU)."""
    if not device.startswith("cuda:"):
        return None, None, None
    try:
        index = int(device.split(":", 1)[1])
        nvml: Any = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # absent, or no NVIDIA driver: NULLs
        return None, None, None
    try:
        handle = _nvml_handle(nvml, index)
        reads: list[Callable[[], Any]] = [
            lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # milliwatts
        ]
        figures: list[float | None] = []
        for read in reads:
            try:
                figures.append(float(read()))
            except Exception:  # that figure is not supported on this device
                figures.append(None)
        return figures[0], figures[1], figures[2]
    except Exception:
        return None, None, None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _nvml_handle(nvml: Any, index: int) -> Any:
    """NVML's handle for CUDA device ``index``: by PCI bus id when CuPy is loaded (CUDA and
    NVML number devices differently under ``CUDA_VISIBLE_DEVICES``), else by index."""
    import sys

    cupy = sys.modules.get("cupy")
    if cupy is not None:
        with contextlib.suppress(Exception):
            bus_id = cupy.cuda.runtime.deviceGetPCIBusId(index)
            return nvml.nvmlDeviceGetHandleByPciBusId(bus_id.encode()
                                                      if isinstance(bus_id, str) else bus_id)
    return nvml.nvmlDeviceGetHandleByIndex(index)


class SnowflakeMetricsSink:
    """Writes a memory's L0 pool usage and device metrics to Snowflake every ``interval_s``
    seconds (:meth:`start` / :meth:`stop`), or once per :meth:`write_once` call.

    ``url_or_settings`` is a ``snowflake://`` URL (the same form as the tiers'; options
    ``warehouse``, ``role``, ``create``, ``readers``, ``login_timeout``, ``private_key_file``,
    ``authenticator``, ``timeout``; ``SNOWFLAKE_*`` fill in what it leaves out) or
    :class:`~.snowflake.SnowflakeSettings`. ``timeout`` bounds one snapshot's write.
    """

    def __init__(self, url_or_settings: str | SnowflakeSettings, interval_s: float = 60.0, *,
                 timeout: float = 30.0, pools_table: str = POOLS_TABLE,
                 metrics_table: str = METRICS_TABLE,
                 clock: Callable[[], dt.datetime] = _utc_now,
                 device_metrics: Callable[[str], tuple[float | None, float | None,
                                                       float | None]] = _nvml_figures) -> None:
        if isinstance(url_or_settings, SnowflakeSettings):
            settings = url_or_settings
        else:
            settings, timeout = self._parse(url_or_settings, timeout)
        if not interval_s > 0:
            raise ConfigError(f"metrics interval must be > 0 seconds, got {interval_s!r}")
        if not timeout > 0:
            raise ConfigError(f"metrics timeout must be > 0 seconds, got {timeout!r}")
        self.settings = settings
        self.interval_s = float(interval_s)
        self.timeout = float(timeout)
        schema = f'"{settings.database}"."{settings.schema}"'
        self._schema = schema
        self._pools = f'{schema}."{check_identifier(pools_table, "table name")}"'
        self._metrics = f'{schema}."{check_identifier(metrics_table, "table name")}"'
        self._clock = clock
        self._device_metrics = device_metrics
        #: Snapshots written, rows written, snapshots that failed, and the last failure.
        self.writes = 0
        self.rows_written = 0
        self.errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        connect_kwargs = settings.connect_kwargs(self.timeout)

        def connect() -> Any:
            return driver().connect(**connect_kwargs)

        self.engine = SnowflakeEngine.acquire(settings.identity(), connect, settings.readers,
                                              None)

    @staticmethod
    def _parse(url: str, timeout: float) -> tuple[SnowflakeSettings, float]:
        parsed = parse_url(url)
        if parsed.scheme != "snowflake":
            raise ConfigError(f"{parsed.redacted()}: the metrics sink needs a snowflake:// URL")
        parsed.check(METRICS_OPTIONS, "the metrics sink")
        return SnowflakeSettings.from_url(parsed), parsed.seconds("timeout", timeout)

    # -- DDL --------------------------------------------------------------------------------------

    def table_ddl(self) -> list[str]:
        """The ``CREATE TABLE IF NOT EXISTS`` statements this sink runs."""
        return [
            f"CREATE TABLE IF NOT EXISTS {self._pools} (\n"
            "    POOL_NAME VARCHAR NOT NULL,\n    ALLOCATED_MEMORY_GB FLOAT,\n"
            "    USED_MEMORY_GB FLOAT,\n    POOL_TYPE VARCHAR NOT NULL,\n"
            "    LAST_UPDATED TIMESTAMP_NTZ,\n    PRIMARY KEY (POOL_NAME, POOL_TYPE)\n)",
            f"CREATE TABLE IF NOT EXISTS {self._metrics} (\n"
            "    METRIC_ID VARCHAR NOT NULL,\n    GPU_ID VARCHAR,\n    MEMORY_UTILIZATION FLOAT,\n"
            "    COMPUTE_UTILIZATION FLOAT,\n    TEMPERATURE_CELSIUS FLOAT,\n"
            "    POWER_USAGE_WATTS FLOAT,\n    RECORDED_AT TIMESTAMP_NTZ,\n"
            "    PRIMARY KEY (METRIC_ID)\n)",
        ]

    def _ensure(self, cur: Any) -> None:
        if not self.settings.create:
            return
        eng = self.engine
        eng.once(f"schema {self._schema}", lambda: eng.execute(
            cur, f"CREATE SCHEMA IF NOT EXISTS {self._schema}"))
        for table, ddl in zip((self._pools, self._metrics), self.table_ddl(), strict=True):
            eng.once(f"table {table}", lambda ddl=ddl: eng.execute(cur, ddl))  # type: ignore[misc]

    # -- snapshots --------------------------------------------------------------------------------

    async def snapshot(self, memory: _HasStats,
                       ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The rows one write adds: (pool rows, device metric rows); empty without an L0 tier.
        The memory's stats are read on the event loop, NVML is asked in a worker thread."""
        gpu = memory.stats().get("tiers", {}).get("GPU", {})
        backend_stats = gpu.get("backend_stats") if isinstance(gpu, Mapping) else None
        if not isinstance(backend_stats, Mapping) or not isinstance(
                backend_stats.get("pools"), Mapping):
            return [], []
        device = _device_id(str(backend_stats.get("device", "unknown")))
        now = self._clock()
        pool_rows: list[tuple[Any, ...]] = []
        limit_total = used_total = 0
        for name, pool in backend_stats["pools"].items():
            limit, used = int(pool.get("limit", 0)), int(pool.get("used", 0))
            limit_total += limit
            used_total += used
            pool_rows.append((str(name), limit / _GIB, used / _GIB, device, now))
        memory_util = 100.0 * used_total / limit_total if limit_total else None
        compute, temperature, power = await asyncio.to_thread(self._device_metrics, device)
        metric_rows = [(uuid.uuid4().hex, device, memory_util, compute, temperature, power, now)]
        return pool_rows, metric_rows

    def _write(self, cur: Any, pool_rows: Sequence[tuple[Any, ...]],
               metric_rows: Sequence[tuple[Any, ...]]) -> int:
        self._ensure(cur)
        eng = self.engine
        if pool_rows:
            marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(pool_rows))
            eng.execute(cur, (
                f"MERGE INTO {self._pools} AS t USING (SELECT column1::VARCHAR AS POOL_NAME, "
                "column2::FLOAT AS ALLOCATED_MEMORY_GB, column3::FLOAT AS USED_MEMORY_GB, "
                "column4::VARCHAR AS POOL_TYPE, column5::TIMESTAMP_NTZ AS LAST_UPDATED "
                f"FROM VALUES {marks}) AS s "
                "ON t.POOL_NAME = s.POOL_NAME AND t.POOL_TYPE = s.POOL_TYPE "
                "WHEN MATCHED THEN UPDATE SET ALLOCATED_MEMORY_GB = s.ALLOCATED_MEMORY_GB, "
                "USED_MEMORY_GB = s.USED_MEMORY_GB, LAST_UPDATED = s.LAST_UPDATED "
                "WHEN NOT MATCHED THEN INSERT (POOL_NAME, ALLOCATED_MEMORY_GB, USED_MEMORY_GB, "
                "POOL_TYPE, LAST_UPDATED) VALUES (s.POOL_NAME, s.ALLOCATED_MEMORY_GB, "
                "s.USED_MEMORY_GB, s.POOL_TYPE, s.LAST_UPDATED)"),
                [v for row in pool_rows for v in row])
        if metric_rows:
            marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(metric_rows))
            eng.execute(cur, (
                f"INSERT INTO {self._metrics} (METRIC_ID, GPU_ID, MEMORY_UTILIZATION, "
                "COMPUTE_UTILIZATION, TEMPERATURE_CELSIUS, POWER_USAGE_WATTS, RECORDED_AT) "
                f"VALUES {marks}"), [v for row in metric_rows for v in row])
        return len(pool_rows) + len(metric_rows)

    async def write_once(self, memory: _HasStats) -> bool:
        """Write one snapshot of ``memory``'s L0 pools; True when it was written (or there was
        nothing to write), False when it failed (logged, counted in :attr:`errors`)."""
        if self._closed:
            raise BackendError("the metrics sink is closed")
        try:
            pool_rows, metric_rows = await self.snapshot(memory)
            if not pool_rows and not metric_rows:
                return True
            written = await asyncio.wait_for(
                self.engine.write(lambda cur: self._write(cur, pool_rows, metric_rows)),
                self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a metrics failure never reaches the memory
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("metrics sink: writing to %s.%s failed: %s", self.settings.database,
                        self.settings.schema, self.last_error)
            return False
        self.writes += 1
        self.rows_written += int(written)
        return True

    # -- periodic task ----------------------------------------------------------------------------

    def start(self, memory: _HasStats) -> asyncio.Task[None]:
        """Write a snapshot now and then every ``interval_s`` seconds (real time) in a task of
        the running loop, until :meth:`stop`."""
        if self._closed:
            raise BackendError("the metrics sink is closed")
        if self._task is not None and not self._task.done():
            raise RuntimeError("the metrics sink is already running")
        self._task = asyncio.get_running_loop().create_task(self._run(memory),
                                                            name="sophia-snowflake-metrics")
        return self._task

    async def _run(self, memory: _HasStats) -> None:
        while True:
            await self.write_once(memory)
            await asyncio.sleep(self.interval_s)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop the periodic task (a write in progress is cancelled); :meth:`start` may run
        it again."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop, and release the connections (shared with the Snowflake tiers)."""
        await self.stop()
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self.engine.release)

    async def __aenter__(self) -> SnowflakeMetricsSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> dict[str, Any]:
        return {"tables": [self._pools, self._metrics], "interval_s": self.interval_s,
                "running": self.running, "writes": self.writes,
                "rows_written": self.rows_written, "errors": self.errors,
                "last_error": self.last_error}
