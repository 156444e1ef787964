"""An exact in-memory top-k index over float32 vectors keyed by ``str`` (the L4 vector tier).

Rows live in one preallocated ``(capacity, dim)`` float32 matrix whose capacity doubles as it
fills; a delete moves the last row into the hole, so live rows stay contiguous in ``[:n]`` and a
search is one BLAS product over them (recall is 1.0 by construction). Under ``"cosine"`` rows and
queries are L2-normalised on the way in, so every search is an inner product.

Results are ``(key, score)`` pairs, best first; equal scores are ordered by key (``str``
order), independently of row order, so results never depend on the history of deletes. Every
key tied with the k-th score is gathered before that sort, so many exact ties cost more.
A batch and single searches agree up to float32 rounding (one GEMM against GEMVs).
The capacity never shrinks on deletes; ``clear()`` frees it.

Not thread-safe: concurrent searches are fine, but no mutation may run beside anything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import InvalidArgumentError, InvalidKeyError

__all__ = ["VectorIndex"]

Metric = Literal["cosine", "ip"]
Hits = list[tuple[str, float]]
#: Separator between a namespace and the rest of a key ("tenant\x1fkey").
NS_SEP = "\x1f"
_ACCEPTED_KINDS = "fiu"  # real float, signed and unsigned int


class VectorIndex:
    """Exact cosine or inner-product top-k over float32 vectors, keyed by ``str``.

    ``dim`` is fixed: declared here, or taken from the first vector added. ``xp`` is the array
    module holding the matrix: NumPy by default; CuPy (``xp=cupy``) runs the same code on the
    GPU but is **untested** here. Invalid vectors raise :class:`InvalidArgumentError`.
    """

    def __init__(self, dim: int | None = None, metric: Metric = "cosine",
                 xp: ModuleType = np) -> None:
        if metric not in ("cosine", "ip"):
            raise InvalidArgumentError(f"metric must be 'cosine' or 'ip', not {metric!r}")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise InvalidArgumentError(f"dim must be a positive int or None, not {dim!r}")
        self.dim = dim
        self.metric: Metric = metric
        self._xp = xp
        self.clear()

    # -- bookkeeping -------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every vector and free the matrix; ``dim`` and ``metric`` are kept."""
        self._mat: Any = None                      # xp float32 (capacity, dim)
        self._row_ns = np.zeros(0, np.int32)       # host: namespace id of each row
        self._keys: list[str] = []                 # row -> key
        self._rows: dict[str, int] = {}            # key -> row
        self._ns_ids: dict[str, int] = {"": 0}     # namespace ("tenant\x1f" or "") -> id

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def keys(self) -> list[str]:
        """The keys, in row order (which deletes permute)."""
        return list(self._keys)

    def memory_bytes(self) -> int:
        """Bytes of the vector matrix actually allocated (capacity x dim x 4), 0 when empty."""
        return 0 if self._mat is None else int(self._mat.nbytes)

    def vector(self, key: str) -> Any:
        """A copy of the stored row of ``key`` (normalised under cosine); KeyError if absent."""
        return self._mat[self._rows[key]].copy()

    def _reserve(self, needed: int) -> None:
        cap = 0 if self._mat is None else self._mat.shape[0]
        if needed <= cap:
            return
        assert self.dim is not None
        new_cap = max(needed, 2 * cap, 16)
        mat = self._xp.empty((new_cap, self.dim), dtype=self._xp.float32)
        ns = np.zeros(new_cap, np.int32)
        n = len(self._keys)
        if n:
            mat[:n] = self._mat[:n]
            ns[:n] = self._row_ns[:n]
        self._mat, self._row_ns = mat, ns

    # -- validation --------------------------------------------------------------------------

    def _coerce(self, data: object, rank: int, what: str, fix_dim: bool = False) -> Any:
        """``data`` as an xp float32 array of ``rank``, finite, of the index's dimension.

        With ``fix_dim`` an index without a dimension takes ``data``'s, once it is valid.
        """
        xp = self._xp
        try:
            arr = xp.asarray(data)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"{what} is not a numeric array: {exc}") from exc
        if arr.dtype.kind not in _ACCEPTED_KINDS:
            raise InvalidArgumentError(
                f"{what} must hold real numbers, got dtype {arr.dtype} (strings, objects, "
                "bools and complex numbers are refused)")
        if arr.ndim != rank:
            want = "(dim,)" if rank == 1 else "(n, dim)"
            raise InvalidArgumentError(f"{what} must be {rank}-D {want}, got shape {arr.shape}")
        width = int(arr.shape[-1])
        dim = width if self.dim is None else self.dim  # no dim yet: the index is empty
        if width != dim or width == 0:
            raise InvalidArgumentError(f"{what} has dimension {width}, the index has {dim}")
        if arr.shape[0] == 0:
            return arr.astype(xp.float32)  # no rows: fixes no dimension
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
            arr = arr.astype(xp.float32, copy=False)
        # A finite sum proves every element finite (NaN and inf propagate) without a mask;
        # only a non-finite sum, which may be a mere overflow, needs the elementwise check.
        if not bool(xp.isfinite(arr.sum())) and not bool(xp.isfinite(arr).all()):
            raise InvalidArgumentError(f"{what} contains NaN or infinity (after casting to "
                                       "float32)")
        if self.metric == "cosine":
            arr = self._normalise(arr.reshape(-1, width), what).reshape(arr.shape)
        if fix_dim:
            self.dim = dim
        return arr

    def _normalise(self, arr: Any, what: str) -> Any:
        xp = self._xp
        sq = xp.einsum("ij,ij->i", arr, arr)
        bad = ~((sq > np.finfo(np.float32).tiny) & xp.isfinite(sq))
        if bool(bad.any()):  # underflow or overflow: rescale those rows by their max first
            peak = xp.abs(arr[bad]).max(axis=1, keepdims=True)
            if not bool((peak > 0).all()):
                raise InvalidArgumentError(f"{what} contains a zero vector, which has no cosine")
            arr = arr.copy()
            arr[bad] = arr[bad] / peak
            sq = xp.einsum("ij,ij->i", arr, arr)
        return arr / xp.sqrt(sq)[:, None]

    @staticmethod
    def _check_key(key: object) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidKeyError(f"a key must be a non-empty str, not {key!r}")
        return key

    # -- mutation ----------------------------------------------------------------------------

    def add(self, key: str, vector: object) -> None:
        """Insert ``vector`` under ``key``, replacing the row of an existing key."""
        self._put([self._check_key(key)], self._coerce(vector, 1, "vector", fix_dim=True)[None])

    def add_many(self, keys: Sequence[str], matrix: object) -> None:
        """Insert row ``i`` of ``matrix`` under ``keys[i]``; all or nothing.

        Existing keys get their row replaced; a key repeated in ``keys`` keeps its last row.
        """
        keys = list(keys)
        if not all(isinstance(k, str) and k for k in keys):
            for k in keys:
                self._check_key(k)
        arr = self._coerce(matrix, 2, "matrix", fix_dim=True)
        if arr.shape[0] != len(keys):
            raise InvalidArgumentError(f"{len(keys)} keys for {arr.shape[0]} rows")
        if keys:
            self._put(keys, arr)

    def _put(self, keys: list[str], arr: Any) -> None:
        n0, m = len(self._keys), len(keys)
        self._reserve(n0 + m)
        rows_of, names = self._rows, self._keys
        fresh = dict(zip(keys, range(n0, n0 + m), strict=True))
        if len(fresh) == m and rows_of.keys().isdisjoint(fresh):  # all new and distinct
            rows_of.update(fresh)
            names.extend(keys)
            ids = self._ns_ids  # namespace: up to the first NS_SEP, "" without one
            known = ids.setdefault  # this loop is most of a bulk insert
            self._row_ns[n0:n0 + m] = [known(k[:k.find(NS_SEP) + 1], len(ids)) for k in keys]
            self._mat[n0:n0 + m] = arr
            return
        last: dict[int, int] = {}  # row -> position in keys of its last occurrence
        for i, key in enumerate(keys):
            row = rows_of.get(key)
            if row is None:
                row = rows_of[key] = len(names)
                names.append(key)
                ns = key[:key.find(NS_SEP) + 1]
                self._row_ns[row] = self._ns_ids.setdefault(ns, len(self._ns_ids))
            last[row] = i
        dst = np.fromiter(last.keys(), np.int64, len(last))
        src = np.fromiter(last.values(), np.int64, len(last))
        self._mat[self._xp.asarray(dst)] = arr[self._xp.asarray(src)]

    def remove(self, key: str) -> bool:
        """Delete ``key``; True if it was there. O(1): the last row moves into the hole."""
        row = self._rows.pop(key, None)
        if row is None:
            return False
        last = len(self._keys) - 1
        moved = self._keys.pop()
        if row != last:
            self._mat[row] = self._mat[last]
            self._row_ns[row] = self._row_ns[last]
            self._keys[row] = moved
            self._rows[moved] = row
        return True

    def remove_many(self, keys: Iterable[str]) -> int:
        """Delete every key in ``keys``; returns how many were there."""
        return sum(self.remove(k) for k in keys)

    # -- search ------------------------------------------------------------------------------

    def search(self, query: object, k: int = 10, min_score: float | None = None,
               prefix: str | None = None) -> Hits:
        """The ``k`` best ``(key, score)`` pairs for ``query``, best first.

        Only keys starting with ``prefix`` compete when it is given; ``min_score`` then drops
        the pairs scoring below it. Fewer than ``k`` keys: all of them.
        """
        return self._search(self._coerce(query, 1, "query")[None], k, min_score, prefix)[0]

    def search_batch(self, queries: object, k: int = 10, min_score: float | None = None,
                     prefix: str | None = None) -> list[Hits]:
        """:meth:`search` for each row of the 2-D ``queries``, with one matrix product."""
        return self._search(self._coerce(queries, 2, "queries"), k, min_score, prefix)

    def _search(self, q: Any, k: int, min_score: float | None, prefix: str | None
                ) -> list[Hits]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"k must be an int >= 1, not {k!r}")
        xp, n = self._xp, len(self._keys)
        cand = self._prefix_rows(prefix) if prefix and n else None
        if n == 0 or q.shape[0] == 0 or (cand is not None and cand.size == 0):
            return [[] for _ in range(q.shape[0])]
        if cand is None:
            scores = q @ self._mat[:n].T
        else:  # a small namespace: gather and scan its rows; a big one: scan all, then pick
            cand = xp.asarray(cand)
            scores = q @ self._mat[cand].T if 4 * cand.size < n else (q @ self._mat[:n].T)[:, cand]
        m = scores.shape[1]
        flat = self._top_flat(scores, k) if k < m else xp.arange(scores.size)
        qi, col = xp.divmod(flat, m)
        vals = scores.ravel()[flat].tolist()
        rows = (col if cand is None else cand[col]).tolist()
        out: list[Hits] = [[] for _ in range(q.shape[0])]
        names = self._keys
        for i, row, v in zip(qi.tolist(), rows, vals, strict=True):
            out[i].append((names[row], v))
        for i, hits in enumerate(out):
            hits.sort(key=lambda h: (-h[1], h[0]))
            out[i] = [h for h in hits[:k] if min_score is None or h[1] >= min_score]
        return out

    def _top_flat(self, scores: Any, k: int) -> Any:
        """Flat indices of the scores >= their row's k-th best (so ties with it too).

        A column sample's k-th best bounds the row's from below; the candidates above that
        bound (about ``k * step`` a row) are padded into a small matrix whose partition gives
        the exact k-th best. This replaces a partition (and copy) of every score.
        """
        xp = self._xp
        b, m = scores.shape
        step = max(1, m // (256 * k))
        sample = scores[:, ::step]
        low = xp.partition(sample, sample.shape[1] - k, axis=1)[:, sample.shape[1] - k]
        flat = xp.flatnonzero(scores >= low[:, None])  # 1-D: 20x faster than 2-D nonzero
        if step == 1:
            return flat  # the sample was everything: low is exact
        qi = flat // m
        pos = xp.arange(flat.size) - xp.searchsorted(qi, xp.arange(b))[qi]
        vals = scores.ravel()[flat]
        pad = xp.full((b, int(pos.max()) + 1), -xp.inf, dtype=scores.dtype)
        pad[qi, pos] = vals
        kth = xp.partition(pad, pad.shape[1] - k, axis=1)[:, pad.shape[1] - k]
        return flat[vals >= kth[qi]]

    def _prefix_rows(self, prefix: str) -> Any:
        """Host int array of the rows whose key starts with ``prefix`` (ascending)."""
        n = len(self._keys)
        cut = prefix.find(NS_SEP)
        if cut >= 0:  # the key's namespace is determined: compare ids, then the rest
            nid = self._ns_ids.get(prefix[:cut + 1], -1)
            rows = np.flatnonzero(self._row_ns[:n] == nid)
            if cut + 1 < len(prefix):
                rows = rows[[self._keys[r].startswith(prefix) for r in rows.tolist()]]
            return rows
        ids = [i for ns, i in self._ns_ids.items() if ns.startswith(prefix) and i != 0]
        mask = np.isin(self._row_ns[:n], np.asarray(ids, np.int32))
        bare = np.flatnonzero(self._row_ns[:n] == 0)  # keys without a namespace
        mask[bare[[self._keys[r].startswith(prefix) for r in bare.tolist()]]] = True
        return np.flatnonzero(mask)
