"""The conformance suite every backend passes (subclass :class:`BackendTests`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ..backends.base import Backend, Evicting, ObjectStore, Purging, Versioned
from ..tiers import Record

__all__ = ["BackendTests"]

NOW = 1_000_000.0
HOSTILE_KEYS = ["a'b", 'a"b', "x; DROP TABLE t; --", "select", "ключ", "🔑", "a b", "%_", "\\"]


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
        assert isinstance(backend.describe(), str) and backend.describe()
        assert isinstance(backend.stats(), dict)

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

    #: How many records overflow the backend ``make_backend`` returns (for evicting ones).
    eviction_items = 1000
