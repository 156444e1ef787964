"""The conformance suite every backend passes (subclass :class:`BackendTests`).

Every backend runs the core tests (get/put/delete/keys, the many-variants, expiry, hostile
keys, close). A backend with an optional ability (a protocol of
:mod:`sophia_memory.backends`) also runs that ability's tests; the others skip them, saying
why: ``Purging`` (``purge_expired``), ``ObjectStore`` (synchronous access), ``Evicting``
(eviction reported to the listener), ``Searchable`` (exact top-k search, namespaces,
``min_score``, unusable vectors refused), ``Versioned`` (append, ``expected_version``
conflicts, history, ``get_version``), ``Conditional`` (``put_if`` writes only over exactly
what ``read_for_update`` saw) and ``Invalidating`` (the listener is accepted).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..backends import (
    Backend,
    Conditional,
    Evicting,
    Invalidating,
    ObjectStore,
    Purging,
    Searchable,
    Versioned,
)
from ..errors import InvalidArgumentError, VersionConflictError
from ..tiers import Record

__all__ = ["BackendTests"]

NOW = 1_000_000.0
HOSTILE_KEYS = ["a'b", 'a"b', "x; DROP TABLE t; --", "select", "ключ", "🔑", "a b", "%_", "\\"]


#: Figures that only grow while a backend is open (where a backend reports them).
_COUNTERS = frozenset({"writes", "commits", "statements", "commands", "batches",
                       "write_batches", "merged_rows", "evictions", "invalidations"})


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_plain(value: object, where: str) -> None:
    """``value`` is made of JSON types, with string keys and finite numbers >= 0."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where}: key {k!r} is not a str"
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        assert math.isfinite(value) and value >= 0, f"{where} = {value!r}"
    else:
        assert value is None or isinstance(value, (str, bool)), f"{where} = {value!r}"


class BackendTests:
    """Behaviour every backend must show. Override :meth:`make_backend`; override
    :meth:`payload` and :meth:`same_payload` if the backend only stores some payloads."""

    async def make_backend(self, tmp_path: Path) -> Backend:
        raise NotImplementedError

    def payload(self, i: int) -> Any:
        """A payload distinct for each ``i``."""
        return f"payload-{i}".encode() * (1 + i % 3)

    def same_payload(self, a: Any, b: Any) -> bool:
        return bool(a == b)

    def vector(self, i: int) -> Any:
        """A vector distinct in direction for each ``i`` (for searchable backends), of
        dimension :attr:`vector_dim`."""
        v = np.zeros(self.vector_dim, dtype=np.float32)
        v[i % self.vector_dim] = 1.0
        v[(i + 1) % self.vector_dim] = 0.5 * (1 + i // self.vector_dim)
        return v

    def record(self, i: int, **kw: Any) -> Record:
        payload = self.payload(i)
        size = int(getattr(payload, "nbytes", None) or len(payload))
        kw.setdefault("created_at", NOW)
        return Record(payload, size=size, **kw)

    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[Backend]:
        b = await self.make_backend(tmp_path)
        try:
            yield b
        finally:
            await b.close()

    async def test_missing_key_is_none(self, backend: Backend) -> None:
        assert await backend.get("absent", NOW) is None
        assert not await backend.exists("absent", NOW)
        assert await backend.delete("absent", NOW) is False

    async def test_put_get_round_trip_keeps_metadata(self, backend: Backend) -> None:
        rec = self.record(1, expires_at=NOW + 60, home=False, version=7,
                          extra={"pool": "buffer"})
        await backend.put("k", rec)
        got = await backend.get("k", NOW)
        assert got is not None
        assert self.same_payload(got.payload, self.payload(1))
        assert (got.expires_at, got.home, got.created_at) == (NOW + 60, False, NOW)
        # A versioned backend numbers versions itself; others keep the record's.
        assert got.version == (1 if isinstance(backend, Versioned) else 7)
        assert got.size == rec.size
        assert got.extra == {"pool": "buffer"}

    async def test_overwrite_replaces(self, backend: Backend) -> None:
        await backend.put("k", self.record(1))
        await backend.put("k", self.record(2))
        got = await backend.get("k", NOW)
        assert got is not None and self.same_payload(got.payload, self.payload(2))

    async def test_delete_reports_and_removes(self, backend: Backend) -> None:
        await backend.put("k", self.record(1))
        assert await backend.exists("k", NOW)
        assert await backend.delete("k", NOW) is True
        assert await backend.get("k", NOW) is None
        assert await backend.delete("k", NOW) is False

    async def test_expired_record_is_not_live(self, backend: Backend) -> None:
        await backend.put("k", self.record(1, expires_at=NOW + 10))
        assert await backend.exists("k", NOW + 9)
        assert not await backend.exists("k", NOW + 10)
        assert await backend.keys("", NOW + 10) == []
        got = await backend.get("k", NOW + 11)
        assert got is None or got.expired(NOW + 11)
        assert await backend.delete("k", NOW + 11) is False

    async def test_many_variants(self, backend: Backend) -> None:
        records = {f"k{i}": self.record(i) for i in range(5)}
        await backend.put_many(records)
        found = await backend.get_many(["k0", "k3", "nope", "k4"], NOW)
        assert sorted(found) == ["k0", "k3", "k4"]
        assert self.same_payload(found["k3"].payload, self.payload(3))
        assert await backend.delete_many(["k0", "k1", "nope"], NOW) == 2
        assert sorted(await backend.keys("", NOW)) == ["k2", "k3", "k4"]

    async def test_empty_many_calls(self, backend: Backend) -> None:
        await backend.put_many({})
        assert await backend.get_many([], NOW) == {}
        assert await backend.delete_many([], NOW) == 0

    async def test_keys_by_prefix(self, backend: Backend) -> None:
        for i, key in enumerate(["a:1", "a:2", "ab", "b:1"]):
            await backend.put(key, self.record(i))
        assert sorted(await backend.keys("a:", NOW)) == ["a:1", "a:2"]
        assert sorted(await backend.keys("a", NOW)) == ["a:1", "a:2", "ab"]
        assert len(await backend.keys("", NOW)) == 4

    async def test_hostile_keys_round_trip(self, backend: Backend) -> None:
        for i, key in enumerate(HOSTILE_KEYS):
            await backend.put(key, self.record(i))
        for i, key in enumerate(HOSTILE_KEYS):
            got = await backend.get(key, NOW)
            assert got is not None and self.same_payload(got.payload, self.payload(i)), key
        assert sorted(await backend.keys("", NOW)) == sorted(HOSTILE_KEYS)

    async def test_close_is_idempotent(self, tmp_path: Path) -> None:
        b = await self.make_backend(tmp_path)
        await b.put("k", self.record(1))
        await b.close()
        await b.close()

    async def test_describe_and_stats(self, backend: Backend) -> None:
        """``describe()`` is one stable, non-empty line; ``stats()`` holds plain figures
        (JSON types, string keys, numbers finite and >= 0) that follow the writes: an item
        or row count grows by exactly the items put, and no counter goes backwards."""
        text = backend.describe()
        assert isinstance(text, str) and text.strip() and "\n" not in text, text
        assert backend.describe() == text
        before = backend.stats()
        _check_plain(before, "stats()")
        for i in range(3):
            await backend.put(f"stats-{i}", self.record(i))
        assert await backend.get("stats-2", NOW) is not None
        after = backend.stats()
        _check_plain(after, "stats()")
        for name in ("items", "rows"):
            if _is_number(before.get(name)):
                assert after[name] == before[name] + 3, (name, before[name], after[name])
        for name, value in before.items():
            if name in _COUNTERS and _is_number(value):
                assert _is_number(after.get(name)) and after[name] >= value, (name, after)

    async def test_conditional_writes(self, backend: Backend) -> None:
        if not isinstance(backend, Conditional):
            pytest.skip("backend has no conditional writes")
        rec, token = await backend.read_for_update("c", NOW)
        assert rec is None
        assert await backend.put_if("c", self.record(1), token) is True  # nothing was there
        assert await backend.put_if("c", self.record(2), token) is False  # now something is
        rec, token = await backend.read_for_update("c", NOW)
        assert rec is not None and self.same_payload(rec.payload, self.payload(1))
        await backend.put("c", self.record(3))  # another writer comes first
        assert await backend.put_if("c", self.record(4), token) is False
        got = await backend.get("c", NOW)
        assert got is not None and self.same_payload(got.payload, self.payload(3))
        rec, token = await backend.read_for_update("c", NOW)
        assert await backend.put_if("c", self.record(5, expires_at=NOW + 10,
                                                      extra={"m": 1}), token) is True
        got = await backend.get("c", NOW)
        assert got is not None and self.same_payload(got.payload, self.payload(5))
        assert (got.expires_at, got.extra) == (NOW + 10, {"m": 1})
        rec, token = await backend.read_for_update("c", NOW)
        assert await backend.delete("c", NOW) is True  # removed in between
        assert await backend.put_if("c", self.record(6), token) is False
        assert await backend.get("c", NOW) is None
        # an expired item is written over by its own token
        await backend.put("e", self.record(7, expires_at=NOW - 1))
        rec, token = await backend.read_for_update("e", NOW)
        assert rec is not None and rec.expired(NOW)
        assert await backend.put_if("e", self.record(8), token) is True
        got = await backend.get("e", NOW)
        assert got is not None and self.same_payload(got.payload, self.payload(8))
        for key in HOSTILE_KEYS:
            rec, token = await backend.read_for_update(key, NOW)
            assert await backend.put_if(key, self.record(9), token) is True
            got = await backend.get(key, NOW)
            assert got is not None and self.same_payload(got.payload, self.payload(9))

    async def test_purge_expired(self, backend: Backend) -> None:
        if not isinstance(backend, Purging):
            pytest.skip("backend has no purge_expired")
        await backend.put("old", self.record(1, expires_at=NOW + 1))
        await backend.put("new", self.record(2, expires_at=NOW + 100))
        await backend.put("never", self.record(3))
        assert await backend.purge_expired(NOW + 50) == 1
        assert sorted(await backend.keys("", NOW)) == ["never", "new"]

    async def test_object_store_peek(self, backend: Backend) -> None:
        if not isinstance(backend, ObjectStore):
            pytest.skip("not an in-process object store")
        rec = self.record(1)
        backend.put_nowait("k", rec)
        got = backend.peek("k")
        assert got is not None and self.same_payload(got.payload, self.payload(1))
        backend.discard("k", Record(b"other"))
        assert backend.peek("k") is not None  # discard only removes that exact record
        backend.discard("k", got)
        assert backend.peek("k") is None
        backend.put_nowait("k", self.record(2))
        popped = backend.pop_nowait("k")
        assert popped is not None and backend.pop_nowait("k") is None

    async def test_eviction_reports_to_listener(self, tmp_path: Path) -> None:
        b = await self.make_backend(tmp_path)
        try:
            if not isinstance(b, Evicting):
                pytest.skip("backend does not evict")
            evicted: list[str] = []
            b.set_eviction_listener(lambda key, rec: evicted.append(key))
            for i in range(self.eviction_items):
                await b.put(f"e{i}", self.record(i))
            assert evicted, "writing past the bound evicted nothing"
            left = set(await b.keys("", NOW))
            assert not left & set(evicted)
            assert left | set(evicted) == {f"e{i}" for i in range(self.eviction_items)}
        finally:
            await b.close()

    async def test_versions(self, backend: Backend) -> None:
        if not isinstance(backend, Versioned):
            pytest.skip("backend keeps no versions")
        assert await backend.append("v", self.record(1), None) == 1
        assert await backend.append("v", self.record(2), 1) == 2
        got = await backend.get("v", NOW)
        assert got is not None and got.version == 2
        assert self.same_payload(got.payload, self.payload(2))
        old = await backend.get_version("v", 1)
        assert old is not None and self.same_payload(old.payload, self.payload(1))
        assert [r.version for r in await backend.history("v", None)] == [2, 1]
        assert [r.version for r in await backend.history("v", 1)] == [2]

    async def test_version_conflicts_and_history(self, backend: Backend) -> None:
        if not isinstance(backend, Versioned):
            pytest.skip("backend keeps no versions")
        assert await backend.append("v", self.record(1), 0) == 1  # 0: must not exist yet
        with pytest.raises(VersionConflictError) as conflict:
            await backend.append("v", self.record(2), 0)
        assert conflict.value.current_version == 1
        with pytest.raises(VersionConflictError) as conflict:
            await backend.append("v", self.record(2), 5)
        assert conflict.value.current_version == 1
        with pytest.raises(VersionConflictError) as conflict:
            await backend.append("new", self.record(2), 3)
        assert conflict.value.current_version in (None, 0)
        assert await backend.get("new", NOW) is None  # a refused append leaves nothing
        await backend.put("v", self.record(2))  # a plain put appends too
        assert await backend.append("v", self.record(3), 2) == 3
        assert [r.version for r in await backend.history("v", None)] == [3, 2, 1]
        assert [r.version for r in await backend.history("v", 2)] == [3, 2]
        assert await backend.get_version("v", 9) is None
        two = await backend.get_version("v", 2)
        assert two is not None and self.same_payload(two.payload, self.payload(2))
        assert await backend.delete("v", NOW) is True  # every version goes
        assert await backend.history("v", None) == []
        assert await backend.get_version("v", 1) is None
        assert await backend.append("v", self.record(4), 0) == 1

    async def _put_vectors(self, backend: Any, keys: dict[str, int]) -> None:
        for key, i in keys.items():
            arr = backend.prepare(self.vector(i))
            await backend.put(key, self.record(i, extra={"embedding": arr.tobytes(),
                                                         "dim": int(arr.size)}))

    async def test_search_is_exact_and_follows_writes(self, backend: Backend) -> None:
        if not isinstance(backend, Searchable):
            pytest.skip("backend cannot search")
        b: Any = backend
        keys = {f"s{i}": i for i in range(6)}
        await self._put_vectors(b, {**keys, "ns\x1fs0": 0})
        queries = np.stack([b.prepare(self.vector(0)), b.prepare(self.vector(3))])
        hits = await b.search(queries, 3, None, "", None)
        assert [row[0][0] for row in hits] == ["s0", "s3"]
        for row in hits:
            assert len(row) == 3
            scores = [score for _, score in row]
            assert scores == sorted(scores, reverse=True)
            assert all("\x1f" not in key for key, _ in row)  # nested namespaces left out
        assert hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
        exact = await b.search(queries[:1], 6, None, "", 0.999)
        assert [key for key, _ in exact[0]] == ["s0"]
        ns = await b.search(queries[:1], 6, None, "ns\x1f", None)
        assert [key for key, _ in ns[0]] == ["ns\x1fs0"]
        await b.delete("s0", NOW)
        await self._put_vectors(b, {"s1": 0})  # s1 now points where s0 did
        hits = await b.search(queries[:1], 2, None, "", None)
        assert hits[0][0][0] == "s1" and "s0" not in [key for key, _ in hits[0]]

    async def test_search_refuses_unusable_vectors(self, backend: Backend) -> None:
        if not isinstance(backend, Searchable):
            pytest.skip("backend cannot search")
        await self._put_vectors(backend, {"s0": 0})  # fixes the dimension
        good = self.vector(1)
        for bad in (np.full_like(good, np.nan), np.append(good, 1.0), ["a"] * good.size,
                    good.reshape(1, -1)):
            with pytest.raises(InvalidArgumentError):
                backend.prepare(bad)

    async def test_invalidation_listener_is_accepted(self, backend: Backend) -> None:
        if not isinstance(backend, Invalidating):
            pytest.skip("backend reports no invalidations")
        replaced: list[list[str] | None] = []
        reports: list[list[str] | None] = []
        # Setting a listener takes a plain callable; a second call replaces the first one
        # (the engine sets one per open memory).
        backend.set_invalidation_listener(replaced.append)
        backend.set_invalidation_listener(reports.append)
        before = len(replaced)
        await backend.put("k", self.record(1))
        got = await backend.get("k", NOW)
        assert got is not None and self.same_payload(got.payload, self.payload(1))
        await backend.put_many({"a": self.record(2), "b": self.record(3)})
        assert sorted(await backend.keys("", NOW)) == ["a", "b", "k"]
        assert await backend.delete("k", NOW) is True
        assert await backend.get("k", NOW) is None
        write_elsewhere = getattr(backend, "write_elsewhere", None)
        if callable(write_elsewhere):  # a test double that can play another process
            write_elsewhere("a", self.record(4))
            assert ["a"] in reports, "a write by another process was not reported"
            got = await backend.get("a", NOW)
            assert got is not None and self.same_payload(got.payload, self.payload(4))
        assert len(replaced) == before, "the replaced listener was still called"
        for keys in reports:  # a list of keys (never a bare str, which iterates by char)
            assert keys is None or (type(keys) is list and all(type(k) is str for k in keys)), \
                f"malformed invalidation report {keys!r}"

    #: How many records overflow the backend ``make_backend`` returns (for evicting ones).
    eviction_items = 1000
    #: The dimension of :meth:`vector` (for searchable backends).
    vector_dim = 4
