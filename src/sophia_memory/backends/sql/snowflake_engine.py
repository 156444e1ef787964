"""Connections to one Snowflake schema: a bounded pool of reader threads and one writer thread
with group commit (the machinery under :mod:`sophia_memory.backends.snowflake`).

The connector is synchronous, so every call runs off the event loop, and every connection runs
at most one query at a time:

* **Reads** go to a pool of ``readers`` worker threads; a task borrows an idle connection (or
  opens one: never more connections than threads) and gives it back when its query is done.
* **Writes** go to one writer thread with its own connection. It takes everything queued and
  runs it in order; consecutive *upserts* into the same table are folded into one ``MERGE``
  statement (last write of a key wins), which commits by itself in autocommit mode. So a burst
  of concurrent ``put`` calls costs a couple of statements, and each ``put`` awaits the commit
  that holds it. If a folded statement fails, its operations are retried one by one, so one bad
  row cannot fail its neighbours.

One engine serves every tier opened on the same account, user, database and schema (reference
counted). Driver errors become :class:`~sophia_memory.errors.BackendError` here, with the
driver's exception as ``__cause__``; :attr:`statements` counts what was sent to Snowflake.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Protocol

from ...errors import BackendError, MissingDependencyError
from ._batching import Result, SharedEngine, batches, deliver

__all__ = ["MergeTarget", "SnowflakeEngine", "driver"]

_BATCH_MAX = 4096
_STOP = object()


def driver() -> Any:
    """The ``snowflake.connector`` module, or MissingDependencyError naming the extra."""
    try:
        import snowflake.connector
        import snowflake.connector.pandas_tools  # write_pandas, looked up per call
    except ImportError as exc:
        raise MissingDependencyError("snowflake-connector-python", "snowflake",
                                     "the Snowflake backend") from exc
    return snowflake.connector


class MergeTarget(Protocol):
    """A table that takes upsert rows (tuples whose first item is the key) in one MERGE."""

    def merge(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert ``rows`` (distinct keys) with as few statements as it can."""
        ...


class _Op:
    __slots__ = ("fn", "future", "loop", "rows", "target")

    def __init__(self, future: asyncio.Future[Any], fn: Callable[[Any], Any] | None,
                 target: MergeTarget | None, rows: Sequence[tuple[Any, ...]]) -> None:
        self.future = future
        self.loop = future.get_loop()
        self.fn = fn
        self.target = target
        self.rows = rows


class SnowflakeEngine(SharedEngine):
    """The connections of one Snowflake schema: reader pool, writer thread, counters."""

    _registry: ClassVar[dict[Hashable, SnowflakeEngine]] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def acquire(cls, identity: Hashable, connect: Callable[[], Any], readers: int,
                statement_timeout: int | None) -> SnowflakeEngine:
        """The engine for ``identity`` (shared within the process; reference counted)."""
        return cls._shared(identity, lambda: cls(connect, readers, statement_timeout))

    def __init__(self, connect: Callable[[], Any], readers: int = 4,
                 statement_timeout: int | None = None) -> None:
        driver_module = driver()
        self._errors: tuple[type[BaseException], ...] = (driver_module.errors.Error, OSError)
        self._connect = connect
        self.statement_timeout = statement_timeout
        self.readers = max(1, readers)
        super().__init__()
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="sophia-snowflake-read")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Taken to queue a write and when the writer stops taking them: a write is queued
        #: only while the writer is there to run it (or to fail it, see ``_fail_queued``).
        self._submit_lock = threading.Lock()
        self._writer_done = False
        #: Statements sent (reads and writes), write batches, rows merged, bulk loads.
        self.statements = 0
        self.write_batches = 0
        self.merged_rows = 0
        self.bulk_loads = 0
        #: DDL that has run once on this engine (``once``).
        self._done: set[str] = set()
        self._once_lock = threading.Lock()
        self._writer_conn: Any = None
        self._writer = threading.Thread(target=self._run_writer, daemon=True,
                                        name="sophia-snowflake-writer")
        self._writer.start()

    # -- connections and statements ---------------------------------------------------------------

    def _open(self) -> Any:
        try:
            conn = self._connect()
        except Exception as exc:  # driver errors, and e.g. ValueError for a bad key file
            raise BackendError(f"cannot connect to Snowflake: {exc}") from exc
        with self._opened_lock:
            self._opened.append(conn)
        return conn

    def _discard(self, conn: Any) -> None:
        with self._opened_lock:
            if conn in self._opened:
                self._opened.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def execute(self, cur: Any, sql: str, params: Sequence[Any] | None = None) -> Any:
        """Run one statement on ``cur`` (counted); driver errors become BackendError."""
        self.statements += 1
        try:
            if self.statement_timeout:
                return cur.execute(sql, params, timeout=self.statement_timeout)
            return cur.execute(sql, params)
        except self._errors as exc:
            raise BackendError(f"Snowflake statement failed: {exc}") from exc

    def query(self, cur: Any, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        """Run a SELECT and fetch every row."""
        self.execute(cur, sql, params)
        try:
            return list(cur.fetchall())
        except self._errors as exc:
            raise BackendError(f"Snowflake fetch failed: {exc}") from exc

    def once(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` (DDL) the first time ``name`` is asked for on this engine."""
        if name in self._done:
            return
        with self._once_lock:
            if name not in self._done:
                fn()
                self._done.add(name)

    def forget(self, name: str) -> None:
        """Let ``once(name)`` run again (the object it created is gone)."""
        with self._once_lock:
            self._done.discard(name)

    def bulk_load(self, frame: Any, table: str, database: str, schema: str) -> None:
        """``write_pandas`` of ``frame`` into the (session-scoped) table
        ``database.schema.table`` (validated identifiers, unquoted: the driver quotes them) on
        the writer's connection (call it from a write): PUT of compressed Parquet plus COPY
        INTO on real Snowflake. Named in full, so it works whatever the session's current
        schema is."""
        if threading.current_thread() is not self._writer or self._writer_conn is None:
            raise BackendError("bulk loads run on the writer thread only")
        tools = driver().pandas_tools  # looked up per call: the emulator patches it
        self.bulk_loads += 1
        try:
            ok, *_ = tools.write_pandas(self._writer_conn, frame, table, database=database,
                                        schema=schema, quote_identifiers=True)
        except self._errors as exc:
            raise BackendError(f"Snowflake bulk load failed: {exc}") from exc
        if not ok:
            raise BackendError(f"Snowflake bulk load into {table} reported failure")

    def _gone(self) -> BackendError:
        if self.foreign:
            return BackendError(f"this Snowflake engine belongs to process {self.pid} (this "
                                "process was forked from it): open the memory again here")
        return BackendError("the Snowflake engine is closed")

    # -- reads ------------------------------------------------------------------------------------

    def _read_task(self, fn: Callable[[Any], Any]) -> Any:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._open()
        healthy = True
        try:
            cur = conn.cursor()
            try:
                return fn(cur)
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
        except BackendError as exc:
            healthy = not isinstance(exc.__cause__, OSError) and not conn.is_closed()
            raise
        finally:
            if healthy and not self._closed:
                self._idle.put(conn)
            else:
                self._discard(conn)

    async def read(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(cursor)`` on a pooled connection in a reader thread."""
        if self._closed or self.foreign:
            raise self._gone()
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, self._read_task, fn)
        except RuntimeError as exc:  # the pool was shut down after the check above
            raise BackendError("the Snowflake engine is closed") from exc
        return await fut

    # -- writes -----------------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any] | None, target: MergeTarget | None,
                rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._submit_lock:
            if self._closed or self._writer_done or self.foreign:
                raise self._gone()
            self._queue.put(_Op(fut, fn, target, rows))
        return fut

    def write(self, fn: Callable[[Any], Any]) -> asyncio.Future[Any]:
        """Queue ``fn(cursor)`` for the writer thread; the future holds its result."""
        return self._submit(fn, None, ())

    def upsert(self, target: MergeTarget, rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[Any]:
        """Queue rows for ``target``'s next MERGE; the future resolves once it committed."""
        return self._submit(None, target, rows)

    def _run_writer(self) -> None:
        conn: Any = None
        try:
            for batch in batches(self._queue, _STOP, _BATCH_MAX):
                conn = self._run_batch(conn, batch)
        finally:
            with self._submit_lock:
                self._writer_done = True
            self._fail_queued()
            if conn is not None:
                self._discard(conn)

    def _fail_queued(self) -> None:
        """Fail every operation still queued once the writer has stopped: one queued while
        ``release`` raced it (its stop marker went in first) would otherwise never resolve."""
        left: list[_Op] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Op):
                left.append(item)
        deliver(left, [(op.future, None, BackendError("the Snowflake engine is closed"))
                             for op in left])

    def _run_batch(self, conn: Any, batch: list[_Op]) -> Any:
        results: list[Result] = []
        try:
            if conn is None or conn.is_closed():
                conn = self._open()
            self._writer_conn = conn
            cur = conn.cursor()
        except Exception as exc:  # the writer thread must outlive any failure
            error = exc if isinstance(exc, BackendError) else BackendError(
                f"Snowflake writer connection failed: {exc}")
            results = [(op.future, None, error) for op in batch]
            conn = None
        else:
            self.write_batches += 1
            i = 0
            while i < len(batch):
                op = batch[i]
                j = i + 1
                if op.target is not None:
                    while j < len(batch) and batch[j].target is op.target:
                        j += 1
                results.extend(self._run_ops(cur, batch[i:j]))
                i = j
            with contextlib.suppress(Exception):
                cur.close()
        deliver(batch, results)
        return conn

    def _run_ops(self, cur: Any, ops: list[_Op],
                 ) -> list[Result]:
        """Run one call, or fold a run of upserts for one table into one MERGE."""
        first = ops[0]
        try:
            if first.target is None:
                assert first.fn is not None
                return [(first.future, first.fn(cur), None)]
            rows: dict[Any, tuple[Any, ...]] = {}
            for op in ops:
                for row in op.rows:
                    rows.pop(row[0], None)  # a later write of a key wins (and moves last)
                    rows[row[0]] = row
            first.target.merge(cur, list(rows.values()))
            self.merged_rows += len(rows)
            return [(op.future, None, None) for op in ops]
        except Exception as exc:  # delivered to the caller that queued the operation
            if len(ops) == 1:
                return [(first.future, None, exc)]
        return [r for op in ops for r in self._run_ops(cur, [op])]

    # -- life cycle -------------------------------------------------------------------------------

    def pending(self) -> int:
        """Writes queued and not yet taken by the writer."""
        return self._queue.qsize()

    def connections(self) -> int:
        with self._opened_lock:
            return len(self._opened)

    def release(self) -> None:
        """Drop one reference; the last one stops the threads and closes the connections."""
        if not self._unshare():
            return
        self._queue.put(_STOP)
        self._writer.join(timeout=60)
        self._pool.shutdown(wait=True)
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()
