"""SQLite backend (``sqlite:///path?table=name``): the embedded default for L2, L3 and L5.

One file holds one table per tier. Per file there is one :class:`SQLiteEngine`:

* **Reads** run on the caller's thread on that thread's read connection: a primary-key lookup
  in the page cache costs microseconds, far less than a hop to a worker thread. WAL mode lets
  them proceed while the writer commits. One connection per thread, not one for all: a read
  transaction belongs to a connection, so on a shared one a statement still open in one
  thread would pin another thread's reads to an older snapshot, and a read right after that
  thread's own committed write could miss it.
* **Writes** go to a single writer thread that takes everything queued, runs it in one
  ``BEGIN IMMEDIATE`` transaction and commits (group commit). Each ``put`` awaits the commit
  that contains it, so it returns only once its data is in the database file's WAL: durable
  against the process being killed. ``synchronous=NORMAL`` (the default) may lose the last
  commits on power loss; ``?synchronous=full`` fsyncs every group commit.

Connections re-apply their pragmas when opened. A batch that fails is rolled back and its
operations retried one by one, so one bad operation cannot fail its neighbours.

Any number of processes and threads may open one file at once: a backend's tables, indexes and
triggers (:class:`Schema`) are checked read-only first and, when something is missing or
differs, set up in one ``BEGIN IMMEDIATE`` transaction that checks again under the write lock,
retried while SQLite reports the database locked (as diskcache does).
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..._support import library_error
from ...errors import BackendError, ConfigError, DecodeError
from ...tiers import Record
from ..base import Backend
from ._batching import Result, SharedEngine, batches, deliver

__all__ = ["CORTEX_LAYOUT", "DEFAULT_LAYOUT", "Layout", "SQLiteBackend", "SQLiteEngine", "Schema",
           "check_identifier"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # fullmatch: "$" would allow "\n"
_BATCH_MAX = 2048
_IN_CHUNK = 500
_COLS = "payload, expires_at, home, size, version, created_at, extra"  # default layout
#: How long opening retries while another process holds the database locked.
_LOCKED_DEADLINE = 60.0
_T = TypeVar("_T")


def check_identifier(name: str) -> str:
    """``name`` if it is a safe SQL identifier, else ConfigError."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ConfigError(f"invalid table name {name!r}: letters, digits and _ only")
    return name


class _Op:
    __slots__ = ("fetch", "future", "group", "loop", "many", "params", "sql")

    def __init__(self, sql: str, params: Any, future: asyncio.Future[Any], *, many: bool,
                 fetch: bool, group: bool) -> None:
        self.sql = sql
        self.params = params
        self.many = many
        self.fetch = fetch
        self.future = future
        self.loop = future.get_loop()
        #: Consecutive ops of the same statement with ``group`` run as one executemany.
        self.group = group


_STOP = object()


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced: the engine must close the read connections
    still open at release without keeping a finished thread's connection alive."""


def _retry_locked(fn: Callable[[], _T]) -> _T:
    """``fn()``, run again while SQLite reports the database locked or busy: the busy timeout
    does not cover every case (e.g. a file another process is still converting to WAL)."""
    deadline = time.monotonic() + _LOCKED_DEADLINE
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (1.0 + random.random()))  # jitter: racing openers spread out
        delay = min(delay * 2, 0.1)


def _normal(sql: str | None) -> str | None:
    return None if sql is None else " ".join(sql.split())


@dataclass(frozen=True)
class Schema:
    """What one backend needs in the file. ``creates``: ``(name, CREATE ... IF NOT EXISTS)``
    pairs, run when the object is missing (an existing table is never altered). ``triggers``:
    ``(name, CREATE TRIGGER ...)`` pairs kept with exactly that SQL (replaced when it differs,
    e.g. another retention); None: the trigger must not exist."""

    creates: tuple[tuple[str, str], ...]
    triggers: tuple[tuple[str, str | None], ...] = ()

    def holds(self, conn: sqlite3.Connection) -> bool:
        """Whether the database on ``conn`` holds this schema already."""
        names = [n for n, _ in self.creates] + [n for n, _ in self.triggers]
        marks = ",".join("?" * len(names))
        found = dict(conn.execute(f"SELECT name, sql FROM sqlite_master WHERE name IN ({marks})",
                                  names).fetchall())
        return (all(name in found for name, _ in self.creates)
                and all(_normal(found.get(name)) == _normal(sql) for name, sql in self.triggers))

    def apply(self, conn: sqlite3.Connection) -> None:
        """Create what is missing and replace triggers that differ (inside a transaction)."""
        for _name, create in self.creates:
            conn.execute(create)
        for name, trigger in self.triggers:
            row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND "
                               "name = ?", (name,)).fetchone()
            current = None if row is None else row[0]
            if _normal(current) == _normal(trigger):
                continue
            if current is not None:
                conn.execute(f'DROP TRIGGER "{name}"')
            if trigger is not None:
                conn.execute(trigger)


class SQLiteEngine(SharedEngine):
    """One database file: a read connection, a writer thread with group commit."""

    _registry: ClassVar[dict[Hashable, SQLiteEngine]] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def acquire(cls, path: str | Path, synchronous: str = "normal") -> SQLiteEngine:
        """The engine for ``path`` (shared within the process; reference counted)."""
        resolved = str(Path(path).expanduser().resolve())
        return cls._shared(resolved, lambda: cls(resolved, synchronous))

    def __init__(self, path: str, synchronous: str = "normal") -> None:
        if synchronous.lower() not in ("normal", "full"):
            raise ConfigError("sqlite synchronous must be 'normal' or 'full'")
        self.path = path
        self.synchronous = synchronous.upper()
        super().__init__()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, or where nothing can be created
            raise BackendError(f"cannot open SQLite database {path}: cannot create its "
                               f"directory: {exc.strerror or exc}") from exc
        self._local = threading.local()
        self._readers: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        try:
            first = _retry_locked(self._open_reader)  # the file is in WAL mode from here on
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open SQLite database {path}: {exc}") from exc
        self._keep_reader(first)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.commits = 0
        self.ops = 0
        self._thread = threading.Thread(target=self._run, name=f"sophia-sqlite-writer:{path}",
                                        daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30.0, factory=_Connection)
        for pragma in (f"synchronous={self.synchronous}", "busy_timeout=30000",
                       "temp_store=MEMORY", "cache_size=-65536", "mmap_size=268435456",
                       "foreign_keys=OFF"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _keep_reader(self, conn: sqlite3.Connection) -> None:
        self._local.conn = conn
        self._readers.add(conn)

    @property
    def reader(self) -> sqlite3.Connection:
        """The calling thread's read connection (opened on its first read; closed when the
        thread ends or the engine is released)."""
        try:
            conn: sqlite3.Connection = self._local.conn
        except AttributeError:
            if self._closed:
                raise BackendError("the SQLite engine is closed") from None
            try:
                conn = _retry_locked(self._connect)
            except sqlite3.Error as exc:
                raise BackendError(f"cannot open SQLite database {self.path}: {exc}") from exc
            self._keep_reader(conn)
        return conn

    def ensure_schema(self, schema: Schema) -> None:
        """Make the file hold ``schema`` (at open time, before any write is queued). Checked
        on the read connection first, taking no lock: the common case. Otherwise applied in
        one ``BEGIN IMMEDIATE`` transaction on a connection of its own, checked again under
        the write lock, so concurrent openers of one file, in any processes and threads, all
        succeed."""

        def apply() -> None:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if not schema.holds(conn):
                        schema.apply(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()

        try:
            if not _retry_locked(lambda: schema.holds(self.reader)):
                _retry_locked(apply)
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite schema set-up in {self.path} failed: {exc}") from exc

    # -- writes -----------------------------------------------------------------------------

    def submit(self, sql: str, params: Any, *, many: bool = False, fetch: bool = False,
               group: bool = False) -> asyncio.Future[Any]:
        """Queue one write for the next group commit; the future resolves after the commit.
        ``group``: the result is not needed, so it may share an executemany with its
        neighbours."""
        if self._closed or self.foreign:
            raise BackendError("the SQLite engine is closed" if self._closed else
                               f"the SQLite engine of {self.path} belongs to process {self.pid} "
                               "(this process was forked from it): open the memory again here")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(sql, params, fut, many=many, fetch=fetch, group=group))
        return fut

    def _run(self) -> None:
        conn = self._connect()
        try:
            for batch in batches(self._queue, _STOP, _BATCH_MAX):
                self._commit(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _execute(conn: sqlite3.Connection, op: _Op) -> Any:
        if op.many:
            return conn.executemany(op.sql, op.params).rowcount
        cur = conn.execute(op.sql, op.params)
        return cur.fetchall() if op.fetch else cur.rowcount

    @classmethod
    def _execute_batch(cls, conn: sqlite3.Connection, batch: list[_Op]) -> list[Any]:
        """Run ``batch`` in order; runs of groupable ops of one statement use executemany."""
        values: list[Any] = []
        i = 0
        while i < len(batch):
            op = batch[i]
            j = i + 1
            if op.group:
                while j < len(batch) and batch[j].group and batch[j].sql == op.sql:
                    j += 1
            if j - i > 1:
                conn.executemany(op.sql, [o.params for o in batch[i:j]])
                values.extend([None] * (j - i))
            else:
                values.append(cls._execute(conn, op))
            i = j
        return values

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[Result] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = self._execute_batch(conn, batch)
            conn.execute("COMMIT")
            results = [(op.future, v, None) for op, v in zip(batch, values, strict=True)]
            self.commits += 1
        except (sqlite3.Error, OverflowError):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for op in batch:  # isolate the failing operation
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    value = self._execute(conn, op)
                    conn.execute("COMMIT")
                    results.append((op.future, value, None))
                    self.commits += 1
                except (sqlite3.Error, OverflowError) as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    # a full disk refuses writes only; a constraint or an unbindable value
                    # is that operation's own fault (see _support.fault_of)
                    err = library_error(exc, "SQLite write failed")
                    err.__cause__ = exc
                    results.append((op.future, None, err))
        self.ops += len(batch)
        deliver(batch, results)

    def release(self) -> None:
        """Drop one reference; the last one stops the writer and closes the file."""
        if not self._unshare():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        for conn in list(self._readers):
            conn.close()


@dataclass(frozen=True)
class Layout:
    """Column names of a tier's table. ``meta`` columns hold ``Record.extra`` entries of the
    same name (e.g. the Cortex table's ``processing_time_ms``) so analysts can query them."""

    key: str = "key"
    value: str = "payload"
    meta: tuple[tuple[str, str], ...] = ()
    #: Meta columns computed on write (``ttl`` from the expiry), not read back into extra.
    derived: tuple[str, ...] = ()

    @property
    def columns(self) -> str:
        """The record columns, in :func:`_row_to_record` order."""
        meta = "".join(f", {name}" for name, _ in self.meta)
        return f"{self.value}, expires_at, home, size, version, created_at, extra{meta}"

    def schema(self, table: str) -> Schema:
        meta = "".join(f",\n    {name} {sqltype}" for name, sqltype in self.meta)
        return Schema(creates=((table, f"""
            CREATE TABLE IF NOT EXISTS "{table}" (
                {self.key} TEXT NOT NULL UNIQUE,
                {self.value} BLOB NOT NULL,
                expires_at REAL,
                home INTEGER NOT NULL DEFAULT 1,
                size INTEGER NOT NULL DEFAULT 0,
                version INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL,
                extra TEXT{meta}
            )"""), expires_index(table)))


def expires_index(table: str) -> tuple[str, str]:
    """The partial index on ``expires_at`` every tier table has (purges use it)."""
    return (f"{table}_expires", f'CREATE INDEX IF NOT EXISTS "{table}_expires" ON "{table}"'
                                "(expires_at) WHERE expires_at IS NOT NULL")


DEFAULT_LAYOUT = Layout()

#: The platform's ``CORTEX_CACHE_ENHANCED`` columns (``cache_value`` holds the encoded value;
#: ``ttl`` is the TTL in seconds the item was stored with).
CORTEX_LAYOUT = Layout(key="cache_key", value="cache_value", meta=(
    ("gpu_processed", "INTEGER"), ("processing_time_ms", "REAL"),
    ("gpu_memory_used_mb", "REAL"), ("ttl", "REAL"), ("prompt_embedding", "BLOB")),
    derived=("ttl",))


_NUMBER = (int, float)


def _row_to_record(row: tuple[Any, ...], layout: Layout = DEFAULT_LAYOUT) -> Record:
    """The record a row holds; :class:`DecodeError` for a row no writer of ours leaves (cells
    of the wrong type, an ``extra`` that is not a JSON object), e.g. written by hand."""
    payload, expires_at, home, size, version, created_at, extra = row[:7]
    if (type(payload) is not bytes or not isinstance(created_at, _NUMBER)
            or not (expires_at is None or isinstance(expires_at, _NUMBER))
            or not isinstance(size, int) or not isinstance(version, int)):
        raise DecodeError("a stored row has cells of the wrong type (payload "
                          f"{type(payload).__name__}, expires_at {type(expires_at).__name__}, "
                          f"created_at {type(created_at).__name__})")
    extras: dict[str, Any] = {}
    if extra:
        try:
            extras = json.loads(extra)
        except (TypeError, ValueError) as exc:  # JSONDecodeError, bytes that are not UTF-8
            raise DecodeError(f"a stored row's metadata is not JSON: {exc}") from exc
        if type(extras) is not dict:
            raise DecodeError("a stored row's metadata is not a JSON object")
    for (name, _), value in zip(layout.meta, row[7:], strict=True):
        if value is not None and name not in layout.derived:
            extras[name] = value
    return Record(payload, expires_at, bool(home), size, version, created_at, extras)


class SQLiteBackend(Backend):
    """One tier's table in an embedded SQLite file."""

    scheme = "sqlite"
    layout: Layout = DEFAULT_LAYOUT

    def __init__(self, path: str | Path, table: str, synchronous: str = "normal",
                 layout: Layout | None = None) -> None:
        if layout is not None:
            self.layout = layout
        self.table = check_identifier(table)
        if str(path) in ("", ":memory:"):
            raise ConfigError("sqlite needs a file path (use memory:// for an in-process tier)")
        self.engine = SQLiteEngine.acquire(path, synchronous)
        try:
            self.engine.ensure_schema(self._schema(table))
        except BaseException:
            self.engine.release()
            raise
        self._closed = False
        t = f'"{table}"'
        lay = self.layout
        k, cols = lay.key, lay.columns
        marks = ", ".join("?" * (8 + len(lay.meta)))
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols.split(", "))
        self._sql_get = f"SELECT {cols} FROM {t} WHERE {k} = ?"
        self._sql_get_many = f"SELECT {k}, {cols} FROM {t} WHERE {k} IN "
        self._sql_exists = (f"SELECT 1 FROM {t} WHERE {k} = ? AND "
                            "(expires_at IS NULL OR expires_at > ?)")
        self._sql_put = (f"INSERT INTO {t} ({k}, {cols}) VALUES ({marks}) "
                         f"ON CONFLICT({k}) DO UPDATE SET {updates}")
        # Conditional writes: insert only where nothing is, or update only the row as read
        # (every column compared NULL-safely); the writer thread reports the rows changed.
        self._sql_insert_new = (f"INSERT INTO {t} ({k}, {cols}) VALUES ({marks}) "
                                f"ON CONFLICT({k}) DO NOTHING")
        names = cols.split(", ")
        self._sql_update_if = (f"UPDATE {t} SET ({cols}) = ({', '.join('?' * len(names))}) "
                               f"WHERE {k} = ? AND "
                               + " AND ".join(f"{c} IS ?" for c in names))
        self._sql_delete = f"DELETE FROM {t} WHERE {k} = ? RETURNING expires_at"
        self._sql_delete_many = f"DELETE FROM {t} WHERE {k} IN "
        self._sql_keys = f"SELECT {k} FROM {t} WHERE (expires_at IS NULL OR expires_at > ?)"
        self._sql_purge = f"DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?"
        self._t = t

    def _schema(self, table: str) -> Schema:
        """The tables, indexes and triggers this backend needs."""
        return self.layout.schema(table)

    def _read(self, sql: str, params: Any) -> list[Any]:
        try:
            return self.engine.reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite read failed: {exc}") from exc

    def _params(self, key: str, r: Record) -> tuple[Any, ...]:
        meta = self.layout.meta
        extra = r.extra
        if meta and extra:
            names = {name for name, _ in meta}
            rest = {n: v for n, v in extra.items() if n not in names}
            values = tuple(extra.get(name) for name, _ in meta)
        else:
            rest, values = extra, (None,) * len(meta)
        if r.expires_at is not None and "ttl" in self.layout.derived:
            values = tuple(round(r.expires_at - r.created_at, 6) if name == "ttl" and v is None
                           else v for (name, _), v in zip(meta, values, strict=True))
        return (key, r.payload, r.expires_at, int(r.home), r.size, r.version, r.created_at,
                json.dumps(rest) if rest else None, *values)

    async def get(self, key: str, now: float) -> Record | None:
        try:
            row = self.engine.reader.execute(self._sql_get, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite read failed: {exc}") from exc
        return None if row is None else _row_to_record(row, self.layout)

    async def exists(self, key: str, now: float) -> bool:
        return bool(self._read(self._sql_exists, (key, now)))

    async def get_many(self, keys: Iterable[str], now: float) -> dict[str, Record]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Record] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._read(self._sql_get_chunk(marks), chunk):
                found[row[0]] = _row_to_record(row[1:], self.layout)
        return found

    def _sql_get_chunk(self, marks: str) -> str:
        """The SELECT of ``get_many`` for one chunk of keys (``marks`` are its ``?``)."""
        return f"{self._sql_get_many}({marks})"

    async def put(self, key: str, record: Record) -> None:
        await self.engine.submit(self._sql_put, self._params(key, record), group=True)

    async def put_many(self, records: Mapping[str, Record]) -> None:
        if records:
            rows = [self._params(k, r) for k, r in records.items()]
            await self.engine.submit(self._sql_put, rows, many=True)

    async def read_for_update(self, key: str, now: float,
                              ) -> tuple[Record | None, tuple[Any, ...] | None]:
        """The record under ``key`` and its row as stored (None: no row)."""
        try:
            row = self.engine.reader.execute(self._sql_get, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite read failed: {exc}") from exc
        return (None, None) if row is None else (_row_to_record(row, self.layout), tuple(row))

    async def put_if(self, key: str, record: Record, token: tuple[Any, ...] | None) -> bool:
        """Insert where no row is (``token`` None), or update the row only if it still holds
        exactly ``token``: one statement, so atomic against other connections."""
        params = self._params(key, record)
        if token is None:
            changed = await self.engine.submit(self._sql_insert_new, params)
        else:
            changed = await self.engine.submit(self._sql_update_if,
                                               (*params[1:], key, *token))
        return bool(changed)

    async def delete(self, key: str, now: float) -> bool:
        rows = await self.engine.submit(self._sql_delete, (key,), fetch=True)
        return any(exp is None or exp > now for (exp,) in rows)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        keys = list(dict.fromkeys(keys))
        removed = 0
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = await self.engine.submit(
                f"{self._sql_delete_many}({marks}) RETURNING expires_at", chunk, fetch=True)
            removed += sum(1 for (exp,) in rows if exp is None or exp > now)
        return removed

    async def keys(self, prefix: str, now: float) -> list[str]:
        if not prefix:
            rows = self._read(self._sql_keys, (now,))
        else:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            k = self.layout.key
            rows = self._read(f"{self._sql_keys} AND {k} >= ? AND {k} < ?",
                              (now, prefix, upper))
        return [r[0] for r in rows]

    async def purge_expired(self, now: float) -> int:
        return int(await self.engine.submit(self._sql_purge, (now,)))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.release()

    def stats(self) -> dict[str, Any]:
        (count,) = self._read(f"SELECT count(*) FROM {self._t}", ())[0]
        return {"rows": count, "path": self.engine.path, "commits": self.engine.commits,
                "writes": self.engine.ops}

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} {self.engine.path} table {self.table}"
