"""`sophia-memory stats`: what a fresh process can see (rows, file sizes; creating nothing),
and a running service's live counters read from its metrics."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from sophia_memory import Memory, Tier
from sophia_memory.cli import main


async def test_outside_view_counts_rows_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "none" / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(missing))
    from sophia_memory.config import MemoryConfig
    from sophia_memory.doctor import outside_view

    views = {v.tier: v for v in outside_view(MemoryConfig.build())}
    assert views[Tier.PERSISTENT].held == f"{missing} does not exist yet"
    assert "in-process" in views[Tier.SESSION].held
    assert not missing.parent.exists()
    path = tmp_path / "m.db"
    async with Memory.open(path=str(path)) as mem:
        await mem.put_many({"a": 1, "b": 2, "c": 3}, tier=Tier.PERSISTENT)
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(path))
    views = {v.tier: v for v in outside_view(MemoryConfig.build())}
    assert views[Tier.PERSISTENT].held.startswith("3 rows in persistent; file ")
    assert views[Tier.CORTEX].held.startswith("0 rows in cortex_cache")


def test_stats_json_lists_every_enabled_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tier"] for r in rows] == [t.name for t in Tier]


async def test_stats_from_a_services_metrics(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from sophia_memory.metrics import register

    registry = prometheus_client.CollectorRegistry()
    async with Memory.open(path=str(tmp_path / "m.db")) as mem:
        register(mem, registry)
        await mem.put("k", 1)
        await mem.get("k")
        await mem.get("missing")
        scraped = tmp_path / "metrics.txt"
        scraped.write_bytes(prometheus_client.generate_latest(registry))
    assert main(["stats", "--from", str(scraped), "--json"]) == 0
    tiers = json.loads(capsys.readouterr().out)
    assert tiers["SESSION"]["puts"] == 1 and tiers["SESSION"]["hits"] >= 1
    assert tiers["PERSISTENT"]["misses"] >= 1 and tiers["PERSISTENT"]["breaker_read"] == 0
    assert main(["stats", "--from", str(scraped)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["tier", "hits", "misses", "puts"]
    assert any(line.startswith("SESSION") for line in table)


def test_stats_from_a_dead_address_is_a_one_line_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("prometheus_client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["stats", "--from", f"http://127.0.0.1:{port}/metrics"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read metrics from http://127.0.0.1:")
    assert len(err.splitlines()) == 1


def test_bench_shows_progress_and_writes_a_report(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "-n", "5", "--report", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert progress[0] == "[1/6] L0 GPU: 5 puts, 5 gets"
    assert len(progress) == 6
    report = (tmp_path / "r" / "bench_report.md").read_text()
    assert "| L3 PERSISTENT |" in report and "| p95 / budget |" in report
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in report
    else:
        assert (tmp_path / "r" / "bench_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_fails_on_an_invalid_url_or_an_unreadable_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What it can show it shows, and the exit status is 1 when a tier's URL is invalid or
    its database cannot be read (a corrupt file), as doctor's would be."""
    monkeypatch.setenv("SOPHIA_MEMORY_PERSISTENT_URL", "sqlte:///x.db")  # no such scheme
    assert main(["stats"]) == 1
    assert "invalid URL: no backend for URL scheme 'sqlte'" in capsys.readouterr().out
    monkeypatch.delenv("SOPHIA_MEMORY_PERSISTENT_URL")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all" * 100)
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(corrupt))
    assert main(["stats", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in rows if r["tier"] == "PERSISTENT"] == [False]
    monkeypatch.delenv("SOPHIA_MEMORY_PATH")
    assert main(["stats"]) == 0
