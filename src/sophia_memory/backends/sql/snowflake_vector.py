"""The vector tier's Snowflake table: items with an ``EMBEDDING VECTOR(FLOAT, dim)`` column,
searched exactly in SQL (``snowflake://...`` for L4).

A search is one query per query vector::

    SELECT key, score FROM (
        SELECT MEMORY_KEY, VECTOR_COSINE_SIMILARITY(EMBEDDING, <query>) AS SCORE
        FROM table WHERE EMBEDDING IS NOT NULL AND NAMESPACE = ?)
    [WHERE SCORE >= ?] ORDER BY SCORE DESC, MEMORY_KEY LIMIT k

(``VECTOR_INNER_PRODUCT`` for ``metric="ip"``), so it is exact (recall 1.0), ties are ordered
by key like the embedded index, and it is consistent with every write that has returned.
``NAMESPACE`` (the key up to its last namespace separator) is written with each row, so "keys
directly in this namespace" is an equality. Vectors travel as JSON arrays cast to
``VECTOR(FLOAT, dim)`` (float32 values print exactly, so nothing is lost).

The dimension comes from ``?dim=`` / ``vector_dim``, from the rows of an existing table, or
from the first vector stored; the table is created once it is known.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, cast

import numpy as np

from ...errors import InvalidArgumentError
from ...tiers import Record
from ...vector_index import NS_SEP
from .snowflake import Column, Layout, SnowflakeBackend, SnowflakeSettings
from .sqlite_vector import SQLiteVectorBackend

__all__ = ["SnowflakeVectorBackend", "vector_layout"]

Metric = Literal["cosine", "ip"]
_SIMILARITY = {"cosine": "VECTOR_COSINE_SIMILARITY", "ip": "VECTOR_INNER_PRODUCT"}


def vector_layout(dim: int | None) -> Layout:
    """The vector table's columns for vectors of ``dim`` floats (1 as a stand-in until the
    dimension is known; no table is created before that)."""
    vector = f"VECTOR(FLOAT, {int(dim or 1)})"
    return Layout(meta=(
        Column("EMBEDDING", vector, "VARCHAR", f"PARSE_JSON({{}})::ARRAY::{vector}"),
        Column("DIM", "NUMBER(38,0)", "NUMBER(38,0)", "{}::NUMBER(38,0)"),
        Column("NAMESPACE", "VARCHAR", "VARCHAR", "{}::VARCHAR")),
        derived=("EMBEDDING", "DIM", "NAMESPACE"))


def _vector_json(values: Any) -> str:
    return json.dumps([float(x) for x in np.asarray(values, dtype=np.float32).tolist()])


class SnowflakeVectorBackend(SnowflakeBackend):
    """Items with an embedding, searched exactly by cosine or inner product in SQL."""

    # Not :class:`~sophia_memory.backends.Conditional` (items carry a vector; writes go
    # through put).
    read_for_update = None  # type: ignore[assignment]
    put_if = None  # type: ignore[assignment]

    def __init__(self, settings: SnowflakeSettings, table: str, *, dim: int | None = None,
                 metric: str = "cosine", **kw: Any) -> None:
        super().__init__(settings, table, layout=vector_layout(dim), **kw)
        self.metric: Metric = cast(Metric, metric)
        self.dim: int | None = dim

    def _set_dim(self, dim: int) -> None:
        self.dim = dim
        self.layout = vector_layout(dim)

    def _ensure(self, cur: Any) -> bool:
        if self._ready:
            return True
        if self.dim is None:
            eng = self.engine
            found = eng.query(cur, f"SELECT COUNT(*) FROM \"{self.settings.database}\"."
                                   "INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = ? AND "
                                   "TABLE_NAME = ?", [self.settings.schema, self.table])
            if not found[0][0]:
                return False  # nothing stored yet; created by the first put
            (stored,), = eng.query(cur, f"SELECT MAX(DIM) FROM {self._t}")
            if stored is not None:
                self._set_dim(int(stored))
            self._ready = True
            return True
        return super()._ensure(cur)

    def prepare(self, vector: object) -> np.ndarray[Any, Any]:
        """``vector`` checked (numeric, 1-D, finite, of the space's dimension) as float32;
        the same checks as the embedded vector tier."""
        # One source of truth for the checks: they read only ``dim`` and ``metric``.
        prepared: np.ndarray[Any, Any] = SQLiteVectorBackend.prepare(cast(Any, self), vector)
        return prepared

    def _derived(self, col: Column, key: str, r: Record) -> Any:
        blob = r.extra.get("embedding")
        if col.name == "NAMESPACE":
            return key[: key.rfind(NS_SEP) + 1]
        if not isinstance(blob, bytes):
            return None
        if col.name == "DIM":
            return len(blob) // 4
        return _vector_json(np.frombuffer(blob, dtype=np.float32))

    def _row(self, key: str, r: Record) -> tuple[Any, ...]:
        blob = r.extra.get("embedding")
        if isinstance(blob, bytes):
            dim = len(blob) // 4
            if self.dim is None:
                self._set_dim(dim)
            elif dim != self.dim:
                raise InvalidArgumentError(f"vector has dimension {dim}, the vector tier "
                                           f"holds {self.dim}")
        return super()._row(key, r)

    async def search(self, queries: object, k: int, metric: str | None, prefix: str,
                     min_score: float | None) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(key, score)`` per row of ``queries``, among keys directly in the
        namespace ``prefix``: one ``ORDER BY score DESC LIMIT k`` query per row."""
        metric = metric or self.metric
        if metric not in _SIMILARITY:
            raise InvalidArgumentError(f"metric must be 'cosine' or 'ip', not {metric!r}")
        rows = [np.asarray(q, dtype=np.float32).reshape(-1) for q in cast(Any, queries)]
        if not rows:
            return []
        if self.dim is None:
            await self.engine.read(self._ensure)  # learn the dimension of an existing table
            if self.dim is None:
                return [[] for _ in rows]
        if any(q.size != self.dim for q in rows):
            raise InvalidArgumentError(f"query vectors must have dimension {self.dim}")
        namespace = prefix[: prefix.rfind(NS_SEP) + 1]
        where = "EMBEDDING IS NOT NULL AND NAMESPACE = ?"
        base: list[Any] = [namespace]
        if prefix != namespace:
            where += f" AND STARTSWITH({self._k}, ?)"
            base.append(prefix)
        vector = f"PARSE_JSON(?)::ARRAY::VECTOR(FLOAT, {int(self.dim)})"
        inner = (f"SELECT {self._k} AS K, {_SIMILARITY[metric]}(EMBEDDING, {vector}) AS SCORE "
                 f"FROM {self._t} WHERE {where}")
        cut = "" if min_score is None else " WHERE SCORE >= ?"
        sql = f"SELECT K, SCORE FROM ({inner}){cut} ORDER BY SCORE DESC, K LIMIT {int(k)}"

        async def one(q: np.ndarray[Any, Any]) -> list[tuple[str, float]]:
            params = [_vector_json(q), *base]
            if min_score is not None:
                params.append(float(min_score))
            found = await self._query(sql, params)
            return [(key, float(score)) for key, score in found]

        return list(await asyncio.gather(*(one(q) for q in rows)))

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats.update(dim=self.dim, metric=self.metric)
        return stats

    def describe(self) -> str:
        return super().describe() + f" + exact {self.metric} search in SQL"

