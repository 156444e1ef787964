"""The doctor connects to every tier, names the one that fails with a fix, creates nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sophia_memory import Memory, MemoryConfig, Tier
from sophia_memory.cli import main
from sophia_memory.doctor import check_tiers

from .conftest import real_redis_or_skip


def _dead_port() -> int:
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def test_a_dead_redis_port_fails_the_session_tier_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "not" / "yet" / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", f"redis://127.0.0.1:{_dead_port()}/0")
    before = _files(tmp_path)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.lstrip().startswith("L1 SESSION") and
                "FAILED" in x)
    assert "refused" in line.lower() or "connect" in line.lower()
    assert "fix: nothing answers there" in out and "SOPHIA_MEMORY_SESSION_URL" in out
    assert "1 tier(s) failed: SESSION" in out
    assert _files(tmp_path) == before  # no database file, no parent directories


async def test_wrong_credentials_fail_with_a_credentials_fix(tmp_path: Path) -> None:
    client = await real_redis_or_skip("redis://127.0.0.1:6379/0")
    await client.aclose()
    cfg = MemoryConfig.build(path=str(tmp_path / "m.db"), tiers={
        Tier.SESSION: "redis://nobody:wrong-secret@127.0.0.1:6379/0"})
    checks = {c.tier: c for c in await check_tiers(cfg)}
    session = checks[Tier.SESSION]
    assert not session.ok and session.fix is not None
    assert "credentials" in session.fix
    assert "wrong-secret" not in session.backend + session.detail + session.fix
    assert checks[Tier.PERSISTENT].ok and not (tmp_path / "m.db").exists()


async def test_a_healthy_redis_gets_a_timed_round_trip_and_keeps_no_key(tmp_path: Path) -> None:
    client = await real_redis_or_skip("redis://127.0.0.1:6379/13")
    try:
        cfg = MemoryConfig.build(path=str(tmp_path / "m.db"), tiers={
            Tier.SESSION: "redis://127.0.0.1:6379/13?prefix=doctortest:"})
        session = next(c for c in await check_tiers(cfg) if c.tier is Tier.SESSION)
        assert session.ok, session.detail
        assert session.detail == "put, get and delete of a scratch key"
        assert session.latency_ms is not None and session.latency_ms >= 0
        assert await client.keys("doctortest:*") == []
    finally:
        await client.aclose()


async def test_an_existing_database_is_checked_and_read_only_writes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    async with Memory.open(path=str(path)) as mem:
        await mem.put("k", 1, tier=Tier.PERSISTENT)
    cfg = MemoryConfig.build(path=str(path))
    stamp = path.stat().st_mtime_ns, path.stat().st_size
    checks = {c.tier: c for c in await check_tiers(cfg, read_only=True)}
    assert all(c.ok for c in checks.values()), [c.detail for c in checks.values()]
    assert checks[Tier.PERSISTENT].detail == f"read {path} (table persistent present)"
    assert (path.stat().st_mtime_ns, path.stat().st_size) == stamp
    writing = {c.tier: c for c in await check_tiers(cfg)}
    assert writing[Tier.PERSISTENT].detail == "put, get and delete of a scratch key"
    async with Memory.open(path=str(path)) as mem:
        assert await mem.keys(Tier.PERSISTENT) == ["k"]  # the scratch key is gone


async def test_an_unwritable_place_for_the_database_fails(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cfg = MemoryConfig.build(path=str(locked / "sub" / "m.db"))
        persistent = next(c for c in await check_tiers(cfg) if c.tier is Tier.PERSISTENT)
        import os
        if os.access(locked, os.W_OK):  # running as root: permissions do not bind
            assert persistent.ok
        else:
            assert not persistent.ok and "not writable" in persistent.detail
        assert not (locked / "sub").exists()
    finally:
        locked.chmod(0o700)
