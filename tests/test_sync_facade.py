from __future__ import annotations

from pathlib import Path

import pytest

from sophia_memory import InvalidKeyError, Tier
from sophia_memory.sync import SyncMemory


def test_sync_facade_wraps_the_async_api(tmp_path: Path) -> None:
    with SyncMemory.open(path=str(tmp_path / "s.db")) as mem:
        mem.put("k", {"a": 1}, tier=Tier.PERSISTENT)
        assert mem.get("k") == {"a": 1}
        assert mem.get_many(["k", "x"]) == {"k": {"a": 1}}
        assert mem.get_or_load("x", lambda: 5, tier=Tier.PERSISTENT) == 5
        ns = mem.namespace("t")
        ns.put("k", 2)
        assert ns.get("k") == 2 and mem.get("k") == {"a": 1}
        assert mem.delete("k") is True and mem.exists("k") is False
        assert "SESSION" in mem.stats()["tiers"]
        with pytest.raises(InvalidKeyError):
            mem.get(3)
        with pytest.raises(AttributeError):
            mem.cached  # noqa: B018
    with SyncMemory.open(path=str(tmp_path / "s.db")) as again:
        assert again.get("x") == 5  # durable across reopen
