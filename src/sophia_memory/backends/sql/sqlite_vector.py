"""The vector tier's SQLite table plus its exact in-memory index (``sqlite:///?table=vector``,
the default for L4).

Each row stores the item's value and its float32 ``embedding`` (and ``dim``). The index, a
:class:`~sophia_memory.vector_index.VectorIndex` per metric asked for, is built from the table
when the backend opens (the configured metric) or on the first search with another metric,
and kept in step afterwards: a put or delete updates it once its commit is done, so a search
never sees a row the table does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...errors import ConfigError, InvalidArgumentError
from ...tiers import Record
from ...vector_index import VectorIndex
from .sqlite import Layout, SQLiteBackend

__all__ = ["VECTOR_LAYOUT", "SQLiteVectorBackend"]

Metric = Literal["cosine", "ip"]

#: The embedding travels in ``Record.extra["embedding"]`` (float32 bytes) and is not read back
#: with the record: searches use the index, and promoted copies need no vector.
VECTOR_LAYOUT = Layout(meta=(("embedding", "BLOB"), ("dim", "INTEGER")),
                       derived=("embedding", "dim"))


class SQLiteVectorBackend(SQLiteBackend):
    """Items with an embedding, searched exactly by cosine or inner product."""

    # Not :class:`~sophia_memory.backends.Conditional` (each row's vector is indexed beside
    # it, which put_if would skip).
    read_for_update = None  # type: ignore[assignment]
    put_if = None  # type: ignore[assignment]

    layout = VECTOR_LAYOUT

    def __init__(self, path: str | Path, table: str, synchronous: str = "normal",
                 dim: int | None = None, metric: str = "cosine") -> None:
        if metric not in ("cosine", "ip"):
            raise ConfigError(f"vector metric must be cosine or ip, got {metric!r}")
        super().__init__(path, table, synchronous)
        self.metric: Metric = metric  # type: ignore[assignment]
        self._indexes: dict[str, VectorIndex] = {}
        try:
            stored = self._read(f"SELECT dim FROM {self._t} WHERE dim IS NOT NULL LIMIT 1", ())
            if stored and dim is not None and stored[0][0] != dim:
                raise ConfigError(f"table {table} holds {stored[0][0]}-dimensional vectors, "
                                  f"configured dim is {dim}")
            self.dim: int | None = stored[0][0] if stored else dim
            self.index(self.metric)  # rebuilt on open
        except BaseException:  # found only once the file is open: release what was opened
            self.engine.release()
            raise

    def index(self, metric: str) -> VectorIndex:
        """The index for ``metric``, built from the table on first use."""
        found = self._indexes.get(metric)
        if found is None:
            if metric not in ("cosine", "ip"):
                raise InvalidArgumentError(f"metric must be 'cosine' or 'ip', not {metric!r}")
            found = VectorIndex(self.dim, metric)  # type: ignore[arg-type]
            rows = self._read(f"SELECT {self.layout.key}, embedding FROM {self._t} "
                              "WHERE embedding IS NOT NULL", ())
            if rows:
                keys = [r[0] for r in rows]
                matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                found.add_many(keys, matrix.reshape(len(rows), -1))
            self._indexes[metric] = found
        return found

    def prepare(self, vector: object) -> np.ndarray[Any, Any]:
        """``vector`` checked (numeric, 1-D, finite, of the space's dimension) as float32.
        The first vector fixes the dimension of a new space."""
        if hasattr(vector, "detach"):  # a torch tensor, possibly on a device
            tensor: Any = vector.detach().cpu()
            try:
                vector = tensor.numpy()
            except TypeError:  # bfloat16 and other dtypes NumPy lacks: as float32
                vector = tensor.float().numpy()
        try:
            arr = np.asarray(vector)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"vector is not a numeric array: {exc}") from exc
        if arr.dtype.kind not in "fiu":
            raise InvalidArgumentError(f"vector must hold real numbers, got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.size == 0:
            raise InvalidArgumentError(f"vector must be 1-D and non-empty, got shape "
                                       f"{arr.shape}")
        if self.dim is not None and arr.size != self.dim:
            raise InvalidArgumentError(f"vector has dimension {arr.size}, the vector tier "
                                       f"holds {self.dim}")
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise InvalidArgumentError("vector contains NaN or infinity")
        if self.metric == "cosine" and not arr.any():
            raise InvalidArgumentError("a zero vector has no cosine similarity")
        return arr

    def _after_put(self, records: Mapping[str, Record]) -> None:
        for key, rec in records.items():
            blob = rec.extra.get("embedding")
            for index in self._indexes.values():
                if isinstance(blob, bytes):
                    index.add(key, np.frombuffer(blob, dtype=np.float32))
                else:
                    index.remove(key)
            if isinstance(blob, bytes) and self.dim is None:
                self.dim = len(blob) // 4

    async def put(self, key: str, record: Record) -> None:
        await super().put(key, record)
        self._after_put({key: record})

    async def put_many(self, records: Mapping[str, Record]) -> None:
        await super().put_many(records)
        self._after_put(records)

    def _forget(self, keys: Iterable[str]) -> None:
        for index in self._indexes.values():
            index.remove_many(keys)

    async def delete(self, key: str, now: float) -> bool:
        try:
            return await super().delete(key, now)
        finally:
            self._forget([key])

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        keys = list(keys)
        try:
            return await super().delete_many(keys, now)
        finally:
            self._forget(keys)

    async def purge_expired(self, now: float) -> int:
        dead = await self.engine.submit(
            f"DELETE FROM {self._t} WHERE expires_at IS NOT NULL AND expires_at <= ? "
            f"RETURNING {self.layout.key}", (now,), fetch=True)
        self._forget(r[0] for r in dead)
        return len(dead)

    async def search(self, queries: object, k: int, metric: str | None, prefix: str,
                     min_score: float | None) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(key, score)`` per row of ``queries``, among keys directly in the
        namespace ``prefix`` (keys of nested namespaces are left out)."""
        index = self.index(metric or self.metric)
        fetch = k
        while True:
            batches = index.search_batch(queries, fetch, min_score, prefix or None)
            cut = len(prefix)
            kept = [[h for h in hits if "\x1f" not in h[0][cut:]] for hits in batches]
            if all(len(h) >= k for h in kept) or fetch >= len(index):
                return [h[:k] for h in kept]
            fetch = min(len(index), fetch * 4)

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats.update(dim=self.dim, metric=self.metric, indexed={
            m: {"vectors": len(i), "bytes": i.memory_bytes()} for m, i in self._indexes.items()})
        return stats

    def describe(self) -> str:
        return super().describe() + f" + exact {self.metric} index (numpy)"
