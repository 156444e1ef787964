"""Every built-in backend passes the shipped conformance suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sophia_memory import MemoryConfig, Tier
from sophia_memory.backends import open_backend
from sophia_memory.backends.base import Backend
from sophia_memory.backends.inprocess.memory import MemoryBackend
from sophia_memory.backends.pools.hostpool import HostPoolBackend
from sophia_memory.backends.sql.sqlite import CORTEX_LAYOUT, SQLiteBackend
from sophia_memory.backends.sql.sqlite_versioned import SQLiteVersionedBackend
from sophia_memory.config import DEFAULT_URLS
from sophia_memory.testing import BackendTests, Gate, GatedBackend, SharedGatedBackend


class TestMemoryBackend(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return MemoryBackend(max_items=100)


class TestMemoryBackendBytesBound(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return MemoryBackend(max_items=None, max_bytes=2000, policy="fifo")


class TestSQLiteBackend(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return SQLiteBackend(tmp_path / "conf.db", "conformance")


class TestSQLiteCortexLayout(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return SQLiteBackend(tmp_path / "conf.db", "cortex_conformance", layout=CORTEX_LAYOUT)


class TestSQLiteVersionedBackend(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return SQLiteVersionedBackend(tmp_path / "conf.db", "workflow_conformance", retain=5)


class TestHostPoolBackend(BackendTests):
    async def make_backend(self, tmp_path: Path) -> Backend:
        return HostPoolBackend({"inference_cache": 16 * 1024, "buffer": 1024})

    def payload(self, i: int) -> Any:
        return np.full(8 + i % 3, i, dtype=np.float32)

    def same_payload(self, a: Any, b: Any) -> bool:
        return bool(np.array_equal(a, b) and a.dtype == b.dtype)


class TestDefaultVectorBackend(BackendTests):
    """The VECTOR tier's default (``sqlite:///?table=vector``): search included."""

    async def make_backend(self, tmp_path: Path) -> Backend:
        config = MemoryConfig.build(path=str(tmp_path / "conf.db"))
        url = DEFAULT_URLS[Tier.VECTOR]
        assert url is not None
        return open_backend(url, Tier.VECTOR, config)


class TestGatedBackend(BackendTests):
    """The test backend of sophia_memory.testing, suspending every call at random."""

    async def make_backend(self, tmp_path: Path) -> Backend:
        return GatedBackend(f"conformance-{tmp_path.name}", gate=Gate(seed=7, max_yields=3))


class TestSharedGatedBackend(BackendTests):
    """The gated backend that reports writes made "elsewhere" (as Redis key tracking does):
    the invalidation test sees a real report."""

    async def make_backend(self, tmp_path: Path) -> Backend:
        return SharedGatedBackend(f"shared-{tmp_path.name}", gate=Gate(seed=7, max_yields=3))
