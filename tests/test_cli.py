"""The sophia-memory command: demo, doctor, stats, bench on the embedded default."""

from __future__ import annotations

import pytest

from sophia_memory.cli import main


def test_demo_exercises_every_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-n", "20"]) == 0
    out = capsys.readouterr().out
    for tier in ("L0 GPU", "L1 SESSION", "L2 CORTEX", "L3 PERSISTENT", "L4 VECTOR",
                 "L5 WORKFLOW"):
        assert f"{tier}" in out
    # Every tier was measured and judged against its budget. Whether it is *within* budget
    # depends on the machine's speed (a benchmark's question): here only that the verdict
    # agrees with the figures printed beside it.
    rows = [line.split() for line in out.splitlines()
            if line.startswith("L") and line.split()[2:3] and line.split()[2].endswith("ms")]
    assert [f"{r[0]} {r[1]}" for r in rows] == [
        "L0 GPU", "L1 SESSION", "L2 CORTEX", "L3 PERSISTENT", "L4 VECTOR", "L5 WORKFLOW"]
    for row in rows:
        get_p95, budget = float(row[4].removesuffix("ms")), float(row[5].removesuffix("ms"))
        verdict = " ".join(row[6:])
        assert verdict.startswith(("within budget (", "OVER BUDGET")), row
        if verdict.startswith("within"):
            assert get_p95 <= budget, row
    assert "semantic hit, similarity" in out and "exact hit" in out
    assert "doc:gpu" in out.split("L4 VECTOR: exact top-3")[1].splitlines()[1]
    assert "versions [2, 1]" in out


def test_doctor_reports_no_gpu_and_open_tiers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "GPU:" in out and "no problems found" in out
    assert out.count(" ok: ") == 6  # one round trip (or file check) per tier


def test_doctor_flags_bad_configuration(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", "nonsense")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "L1 SESSION     INVALID - malformed backend URL" in out
    assert "L1 SESSION     FAILED: invalid URL: malformed backend URL" in out
    assert "1 tier(s) failed: SESSION" in out


def test_stats_and_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats"]) == 0
    assert "L3 PERSISTENT" in capsys.readouterr().out
    assert main(["bench", "-n", "10"]) == 0
    assert "L3 PERSISTENT" in capsys.readouterr().out
