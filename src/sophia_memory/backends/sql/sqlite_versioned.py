"""The workflow tier's SQLite table: every put appends a version (``sqlite:///?table=workflow``
with ``versioned=1``, the default for L5).

Rows are ``(key, version)``-unique. The newest version is the key's value; older ones are kept
for ``history`` and ``get(version=)`` until retention (the newest ``retain`` versions per key,
enforced by a trigger in the same transaction as the insert) removes them. The optimistic
check of ``expected_version`` and the insert are one SQL statement, run by the single writer
thread, so concurrent appends cannot both pass the same check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...errors import BackendError, VersionConflictError
from ...tiers import Record
from ..base import RetainedVersions
from .sqlite import _COLS, Schema, SQLiteBackend, _row_to_record, expires_index

__all__ = ["SQLiteVersionedBackend"]

_INSERT_COLS = "payload, expires_at, home, size, created_at, extra"
_LATEST = "version = (SELECT MAX(version) FROM {t} AS u WHERE u.key = {t}.key)"


class SQLiteVersionedBackend(RetainedVersions, SQLiteBackend):
    """Append-only versions per key, with retention of the newest ``retain``."""

    # Not :class:`~sophia_memory.backends.Conditional` (versions are appended with an
    # expected version instead).
    read_for_update = None  # type: ignore[assignment]
    put_if = None  # type: ignore[assignment]

    def __init__(self, path: str | Path, table: str, synchronous: str = "normal",
                 retain: int | None = 100) -> None:
        self._keep_retain(retain)
        super().__init__(path, table, synchronous)
        t = self._t
        latest = _LATEST.format(t=t)
        self._sql_get = f"SELECT {_COLS} FROM {t} WHERE key = ? ORDER BY version DESC LIMIT 1"
        self._sql_exists = (f"SELECT 1 FROM {t} WHERE key = ? AND {latest} AND "
                            "(expires_at IS NULL OR expires_at > ?)")
        next_version = f"(SELECT COALESCE(MAX(version), 0) FROM {t} WHERE key = ?)"
        self._sql_append = (f"INSERT INTO {t} (key, version, {_INSERT_COLS}) "
                            f"SELECT ?, v + 1, ?, ?, ?, ?, ?, ? FROM (SELECT {next_version} AS v)"
                            " RETURNING version")
        self._sql_append_if = (f"INSERT INTO {t} (key, version, {_INSERT_COLS}) "
                               f"SELECT ?, v + 1, ?, ?, ?, ?, ?, ? FROM "
                               f"(SELECT {next_version} AS v) WHERE v = ? RETURNING version")
        self._sql_delete = f"DELETE FROM {t} WHERE key = ? RETURNING version, expires_at"
        # A key whose newest version expired is gone as a whole: purging only that row would
        # bring the older version back to life. So first whole keys, then stray old versions
        # (two statements: SQLite may run the halves of an OR as separate passes).
        self._sql_purge_keys = (f"DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE "
                                f"{latest} AND expires_at IS NOT NULL AND expires_at <= ?)")
        self._latest = latest

    def _schema(self, table: str) -> Schema:
        t = f'"{table}"'
        # One statement, created with exactly this text: a reopen with the same retention
        # finds it in place (and takes no write lock); another retention replaces it inside
        # the set-up transaction.
        trigger = None if self.retain is None else (
            f'CREATE TRIGGER "{table}_retain" AFTER INSERT ON {t} BEGIN '
            f"DELETE FROM {t} WHERE key = NEW.key AND version <= NEW.version - {self.retain}; "
            "END")
        return Schema(creates=((table, f"""
            CREATE TABLE IF NOT EXISTS {t} (
                key TEXT NOT NULL,
                version INTEGER NOT NULL,
                payload BLOB NOT NULL,
                expires_at REAL,
                home INTEGER NOT NULL DEFAULT 1,
                size INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL,
                extra TEXT,
                UNIQUE (key, version)
            )"""), expires_index(table)), triggers=((f"{table}_retain", trigger),))

    def _insert_params(self, key: str, r: Record) -> tuple[Any, ...]:
        params = self._params(key, r)
        return (key, *params[1:5], params[6], params[7], key)

    async def append(self, key: str, record: Record, expected_version: int | None) -> int:
        params = self._insert_params(key, record)
        if expected_version is None:
            rows = await self.engine.submit(self._sql_append, params, fetch=True)
        else:
            rows = await self.engine.submit(self._sql_append_if, (*params, expected_version),
                                            fetch=True)
        if rows:
            return int(rows[0][0])
        current = self._read(f"SELECT MAX(version) FROM {self._t} WHERE key = ?", (key,))[0][0]
        if expected_version is None:
            raise BackendError(f"appending a version of {key!r} inserted nothing")
        raise VersionConflictError(key, expected_version, current)

    async def put(self, key: str, record: Record) -> None:
        await self.append(key, record, None)

    async def put_many(self, records: Mapping[str, Record]) -> None:
        if records:
            rows = [self._insert_params(k, r) for k, r in records.items()]
            await self.engine.submit(self._sql_append, rows, many=True)

    async def get_version(self, key: str, version: int) -> Record | None:
        rows = self._read(f"SELECT {_COLS} FROM {self._t} WHERE key = ? AND version = ?",
                          (key, version))
        return _row_to_record(rows[0]) if rows else None

    async def history(self, key: str, limit: int | None) -> list[Record]:
        rows = self._read(f"SELECT {_COLS} FROM {self._t} WHERE key = ? ORDER BY version DESC "
                          "LIMIT ?", (key, -1 if limit is None else limit))
        return [_row_to_record(r) for r in rows]

    def _sql_get_chunk(self, marks: str) -> str:
        return (f"SELECT key, {_COLS} FROM {self._t} WHERE key IN ({marks}) "
                f"AND {self._latest}")

    @staticmethod
    def _live_latest(rows: list[Any], now: float) -> bool:
        if not rows:
            return False
        _version, exp = max(rows)
        return bool(exp is None or exp > now)

    async def delete(self, key: str, now: float) -> bool:
        rows = await self.engine.submit(self._sql_delete, (key,), fetch=True)
        return self._live_latest(rows, now)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        removed = 0
        for key in dict.fromkeys(keys):
            removed += await self.delete(key, now)
        return removed

    async def purge_expired(self, now: float) -> int:
        removed = int(await self.engine.submit(self._sql_purge_keys, (now,)))
        return removed + await super().purge_expired(now)

    async def keys(self, prefix: str, now: float) -> list[str]:
        live = "(expires_at IS NULL OR expires_at > ?)"
        sql = f"SELECT key FROM {self._t} WHERE {self._latest} AND {live}"
        if not prefix:
            return [r[0] for r in self._read(sql, (now,))]
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return [r[0] for r in self._read(sql + " AND key >= ? AND key < ?", (now, prefix, upper))]
