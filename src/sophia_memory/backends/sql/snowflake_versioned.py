"""The workflow tier's Snowflake table: every put appends a version (``snowflake://...`` for
L5), with the semantics of :class:`~sophia_memory.backends.sqlite_versioned.SQLiteVersionedBackend`.

Rows are one per ``(MEMORY_KEY, VERSION)``; the newest version is the key's value. Appends run
on the engine's single writer thread, so within a process the check of ``expected_version``
and the insert cannot interleave with another append; the insert is also guarded in SQL
(``WHERE NOT EXISTS`` a version at or above the new one), which stops an append from another
process that committed before this one started. Two processes appending the same key at the
same instant are not excluded: Snowflake runs concurrent ``INSERT ... SELECT`` without a lock
and does not enforce the primary key, so both may write the same version (see docs/snowflake.md,
"Verified against the emulator only"). Retention keeps the newest
``retain`` versions: older rows are deleted after each append, and reads never show a version
retention has passed even before that delete has run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...errors import BackendError, VersionConflictError
from ...tiers import Record
from ..base import RetainedVersions
from .snowflake import SnowflakeBackend, SnowflakeSettings, _chunks

__all__ = ["SnowflakeVersionedBackend"]

_LATEST = "QUALIFY ROW_NUMBER() OVER (PARTITION BY MEMORY_KEY ORDER BY VERSION DESC) = 1"
_VERSION_INDEX = 6  # of VERSION in a written row: key, variant, payload, expires, home, size


class SnowflakeVersionedBackend(RetainedVersions, SnowflakeBackend):
    """Append-only versions per key, with retention of the newest ``retain``."""

    # Not :class:`~sophia_memory.backends.Conditional` (versions are appended with an
    # expected version instead).
    read_for_update = None  # type: ignore[assignment]
    put_if = None  # type: ignore[assignment]

    def __init__(self, settings: SnowflakeSettings, table: str, *, retain: int | None = 100,
                 **kw: Any) -> None:
        self._keep_retain(retain)  # before the engine (and its threads) is opened
        super().__init__(settings, table, **kw)

    def table_ddl(self) -> str:
        return self.layout.ddl(self._t, primary=(self._k, "VERSION"))

    def _insert_sql(self, source: str, refs: Sequence[str], version: str | None = None,
                    tail: str = "") -> str:
        cols = self.layout.written
        exprs = [version if c.name == "VERSION" and version else c.expr.format(ref)
                 for c, ref in zip(cols, refs, strict=True)]
        return (f"INSERT INTO {self._t} ({', '.join(c.name for c in cols)}, UPDATED_AT) "
                f"SELECT {', '.join(exprs)}, CURRENT_TIMESTAMP() FROM {source}{tail}")

    # -- writes -------------------------------------------------------------------------------

    async def append(self, key: str, record: Record, expected_version: int | None) -> int:
        row = list(self._row(key, record))

        def run(cur: Any) -> int:
            self._ensure(cur)
            eng = self.engine
            for _attempt in range(3):
                (top,), = eng.query(cur, f"SELECT MAX(VERSION) FROM {self._t} WHERE "
                                         f"{self._k} = ?", [key])
                current = None if top is None else int(top)
                if expected_version is not None and (current or 0) != expected_version:
                    raise VersionConflictError(key, expected_version, current)
                version = (current or 0) + 1
                row[_VERSION_INDEX] = version
                source, refs, params = self._values([tuple(row)])
                eng.execute(cur, self._insert_sql(
                    source, refs, tail=f" WHERE NOT EXISTS (SELECT 1 FROM {self._t} WHERE "
                                       f"{self._k} = ? AND VERSION >= ?)"),
                            [*params, key, version])
                if (cur.rowcount or 0) > 0:
                    if self.retain is not None and version > self.retain:
                        eng.execute(cur, f"DELETE FROM {self._t} WHERE {self._k} = ? AND "
                                         "VERSION <= ?", [key, version - self.retain])
                    return version
                if expected_version is not None:  # another process appended in between
                    raise VersionConflictError(key, expected_version, version)
            raise BackendError(f"appending a version of {key!r} kept losing to other writers")

        return int(await self.engine.write(run))

    async def put(self, key: str, record: Record) -> None:
        await self.append(key, record, None)

    async def put_many(self, records: Mapping[str, Record]) -> None:
        """One new version per key: a single INSERT numbering each key's version from the
        table's newest (staged through ``write_pandas`` for large batches)."""
        if not records:
            return
        rows = [self._row(k, r) for k, r in records.items()]
        keys = list(records)

        def run(cur: Any) -> None:
            self._ensure(cur)
            eng = self.engine
            if len(rows) > 256:
                refs = self._load_stage(cur, rows)
                source = f"(SELECT * FROM {self._stage}) AS s"
                keyset = f"SELECT {self._k} FROM {self._stage}"
                params: list[Any] = []
                key_params: list[Any] = []
            else:
                values, refs, params = self._values(rows)
                source = f"(SELECT * FROM {values}) AS s"
                keyset = ", ".join("?" * len(keys))
                key_params = keys
            top = (f"SELECT {self._k} AS TOPK, MAX(VERSION) AS TOP FROM {self._t} "
                   f"WHERE {self._k} IN ({keyset}) GROUP BY {self._k}")
            eng.execute(cur, self._insert_sql(
                source, [f"s.{r}" for r in refs], version="COALESCE(m.TOP, 0) + 1",
                tail=f" LEFT JOIN ({top}) AS m ON m.TOPK = s.{refs[0]}"),
                [*params, *key_params])
            if self.retain is not None:
                eng.execute(cur, f"DELETE FROM {self._t} AS t USING ({top}) AS m WHERE "
                                 f"t.{self._k} = m.TOPK AND t.VERSION <= m.TOP - ?",
                            [*key_params, self.retain])

        await self.engine.write(run)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return 0

        def run(cur: Any) -> int:
            self._ensure(cur)
            removed = 0
            for chunk in _chunks(keys):
                marks = ", ".join("?" * len(chunk))
                latest = self.engine.query(cur, f"SELECT EXPIRES_AT FROM {self._t} WHERE "
                                                f"{self._k} IN ({marks}) {_LATEST}", chunk)
                removed += sum(1 for (exp,) in latest if exp is None or exp > now)
                self.engine.execute(cur, f"DELETE FROM {self._t} WHERE {self._k} IN ({marks})",
                                    chunk)
            return removed

        return int(await self.engine.write(run))

    async def purge_expired(self, now: float) -> int:
        """Whole keys whose newest version expired (an older version must not come back to
        life), then expired older versions."""

        def run(cur: Any) -> int:
            self._ensure(cur)
            eng = self.engine
            eng.execute(cur, f"DELETE FROM {self._t} WHERE {self._k} IN (SELECT {self._k} FROM "
                             f"{self._t} {_LATEST} AND EXPIRES_AT IS NOT NULL AND "
                             "EXPIRES_AT <= ?)", [now])
            removed = max(0, cur.rowcount or 0)
            eng.execute(cur, f"DELETE FROM {self._t} WHERE EXPIRES_AT IS NOT NULL AND "
                             "EXPIRES_AT <= ?", [now])
            return removed + max(0, cur.rowcount or 0)

        return int(await self.engine.write(run))

    # -- reads --------------------------------------------------------------------------------

    async def get(self, key: str, now: float) -> Record | None:
        rows = await self._query(f"SELECT {self._select} FROM {self._t} WHERE {self._k} = ? "
                                 "ORDER BY VERSION DESC LIMIT 1", [key])
        return self._record(rows[0]) if rows else None

    async def exists(self, key: str, now: float) -> bool:
        rec = await self.get(key, now)
        return rec is not None and not rec.expired(now)

    def _get_many_sql(self, marks: str) -> str:
        return (f"SELECT {self._k}, {self._select} FROM {self._t} WHERE {self._k} IN ({marks}) "
                f"{_LATEST}")

    async def keys(self, prefix: str, now: float) -> list[str]:
        where, params = (f" WHERE STARTSWITH({self._k}, ?)", [prefix]) if prefix else ("", [])
        rows = await self._query(f"SELECT {self._k} FROM {self._t}{where} {_LATEST} AND "
                                 f"{self._live}", [*params, now])
        return [r[0] for r in rows]

    async def get_version(self, key: str, version: int) -> Record | None:
        sql = f"SELECT {self._select} FROM {self._t} WHERE {self._k} = ? AND VERSION = ?"
        params: list[Any] = [key, version]
        if self.retain is not None:  # hide a version retention is about to delete
            sql += f" AND VERSION > (SELECT MAX(VERSION) FROM {self._t} WHERE {self._k} = ?) - ?"
            params += [key, self.retain]
        rows = await self._query(sql, params)
        return self._record(rows[0]) if rows else None

    async def history(self, key: str, limit: int | None) -> list[Record]:
        cap = [n for n in (limit, self.retain) if n is not None]
        tail = f" LIMIT {int(min(cap))}" if cap else ""
        rows = await self._query(f"SELECT {self._select} FROM {self._t} WHERE {self._k} = ? "
                                 f"ORDER BY VERSION DESC{tail}", [key])
        return [self._record(r) for r in rows]
