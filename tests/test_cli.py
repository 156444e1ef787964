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


def test_bench_leaves_the_memorys_own_keys_alone(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: object,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """bench measures in a namespace of its own and clears that: a key of the memory's own
    named like the bench's keys survives, and nothing of the bench is left."""
    import asyncio

    from sophia_memory import Memory, Tier

    monkeypatch.setenv("SOPHIA_MEMORY_PATH", f"{tmp_path}/m.db")

    async def put_and_count(put: bool) -> tuple[object, int]:
        async with Memory.open() as mem:
            if put:
                await mem.put("demo:persistent:3", "precious", tier=Tier.PERSISTENT)
            return (await mem.get("demo:persistent:3"),
                    sum([len(await mem.keys(t)) for t in (Tier.CORTEX, Tier.PERSISTENT)]))

    assert asyncio.run(put_and_count(True)) == ("precious", 1)
    assert main(["bench", "-n", "5"]) == 0
    assert asyncio.run(put_and_count(False)) == ("precious", 1)
    capsys.readouterr()
    assert main(["bench", "-n", "5", "--report", "/proc/nope"]) == 1  # refused before the run
    assert "cannot write the report to /proc/nope" in capsys.readouterr().err


def test_urls_with_passwords_are_never_shown(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed URLs (a missing ':', a password with an unencoded '/') and a metrics
    address with a password: doctor, stats and errors show ``user:***@``."""
    for url in ("redis//admin:S3cretPW@127.0.0.1:6391/0",
                "redis://admin:S3cr/etPW@127.0.0.1:6391/0"):
        monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", url)
        for args in (["doctor"], ["stats"], ["stats", "--json"], ["clear", "--tier", "L3"]):
            main(args)
            shown = capsys.readouterr()
            assert "S3cr" not in shown.out + shown.err, (url, args)
            assert "admin:***@" in shown.out + shown.err, (url, args)
    monkeypatch.delenv("SOPHIA_MEMORY_SESSION_URL")
    assert main(["stats", "--from", "http://user:PW123@127.0.0.1:6391/metrics"]) == 1
    err = capsys.readouterr().err
    assert "PW123" not in err and "user:***@127.0.0.1:6391" in err


def test_stats_from_a_page_that_is_not_metrics_is_a_one_line_error(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    page = f"{tmp_path}/page.html"
    with open(page, "w") as f:
        f.write("<!DOCTYPE HTML>\n<html>not metrics</html>\n")
    assert main(["stats", "--from", page]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not Prometheus metrics text" in err
    assert "Traceback" not in err


def test_doctor_checks_the_codec_before_any_database_exists(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh deployment (no database yet) with codec pickle and a short signing key: the
    doctor fails as every other command would, naming the problem, and creates nothing."""
    toml = f"{tmp_path}/c.toml"
    with open(toml, "w") as f:
        f.write('codec = "pickle"\n')
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", toml)
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", f"{tmp_path}/db/m.db")
    monkeypatch.setenv("SOPHIA_MEMORY_SIGNING_KEY", "shortKEY9")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "configuration: INVALID - the signed pickle codec needs a signing key of at least " \
        "16 bytes" in out and "shortKEY9" not in out
    import os
    assert not os.path.exists(f"{tmp_path}/db")
