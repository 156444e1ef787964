"""``sophia-memory load`` (JSON Lines, batched, with progress) and ``sophia-memory clear``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sophia_memory import Memory, Tier
from sophia_memory.cli import main


def _read(path: Path, keys: list[str], namespace: str | None = None) -> dict[str, object]:
    async def go() -> dict[str, object]:
        async with Memory.open(path=str(path)) as root:
            mem = root.namespace(namespace) if namespace else root
            return await mem.get_many(keys)
    return asyncio.run(go())


def test_load_puts_every_line_with_progress_then_clear_removes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    lines = [json.dumps({"key": f"k{i}", "value": {"n": i}}) for i in range(2500)]
    lines.insert(10, "")  # blank lines are skipped
    lines.append(json.dumps({"key": "short", "value": [1, 2], "ttl": 60}))
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert main(["load", str(src), "--tier", "PERSISTENT", "--namespace", "imp"]) == 0
    out, err = capsys.readouterr()
    assert "loaded 2,501 items into PERSISTENT (namespace 'imp')" in out
    assert [line for line in err.splitlines() if line.startswith("loaded")] == [
        "loaded 1,000 of 2,501 items", "loaded 2,000 of 2,501 items",
        "loaded 2,501 of 2,501 items"]
    got = _read(db, ["k0", "k2499", "short"], "imp")
    assert got == {"k0": {"n": 0}, "k2499": {"n": 2499}, "short": [1, 2]}
    assert _read(db, ["k0"]) == {}  # in the namespace only
    assert main(["clear", "--namespace", "imp"]) == 0
    assert "removed 2,501 items from every tier (namespace 'imp')" in capsys.readouterr().out
    assert _read(db, ["k0", "short"], "imp") == {}


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "items.jsonl:2: not JSON"),
    ('{"key": "a"}', 'items.jsonl:2: expected {"key": ..., "value": ..., "ttl": ...}'),
    ('{"key": 1, "value": 2}', "items.jsonl:2: the key must be a string"),
    ('{"key": "a", "value": 2, "colour": "red"}', "items.jsonl:2: expected"),
])
def test_a_bad_line_is_named_and_nothing_is_stored(
        line: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    src = tmp_path / "items.jsonl"
    src.write_text(json.dumps({"key": "first", "value": 1}) + "\n" + line + "\n")
    assert main(["load", str(src)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not db.exists()  # nothing opened, nothing stored


def test_load_of_a_missing_file_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", str(tmp_path / "nope.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read")


def test_clear_of_one_tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))

    async def fill() -> None:
        async with Memory.open(path=str(db)) as mem:
            await mem.put("c", 1, tier=Tier.CORTEX)
            await mem.put("p", 2, tier=Tier.PERSISTENT)
    asyncio.run(fill())
    assert main(["clear", "--tier", "CORTEX"]) == 0
    assert "removed 1 items from CORTEX" in capsys.readouterr().out
    assert _read(db, ["c", "p"]) == {"p": 2}


@pytest.mark.parametrize("ttl", ["[1]", "-1", "true", '"60"'])
def test_a_bad_ttl_anywhere_stores_nothing(ttl: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    lines = [json.dumps({"key": f"n{i}", "value": i}) for i in range(1500)]
    lines.append('{"key": "bad", "value": 1, "ttl": ' + ttl + "}")
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert main(["load", str(src), "--tier", "PERSISTENT"]) == 1
    err = capsys.readouterr().err
    assert "items.jsonl:1501: " in err and "ttl" in err and "Traceback" not in err
    assert not db.exists()  # refused before anything was opened


def test_a_bad_key_or_value_is_refused_before_any_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    lines = [json.dumps({"key": f"n{i}", "value": i}) for i in range(1500)]
    lines.append(json.dumps({"key": "", "value": 1}))
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert main(["load", str(src), "--tier", "PERSISTENT"]) == 1
    assert "items.jsonl:1501: keys must not be empty" in capsys.readouterr().err
    assert _read(db, ["n0", "n1499"]) == {}


def test_the_last_line_of_a_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join([json.dumps({"key": "k", "value": "v1", "ttl": 50}),
                              json.dumps({"key": "k", "value": "v2"}),
                              json.dumps({"key": "k", "value": "v3", "ttl": 50})]) + "\n")
    assert main(["load", str(src), "--tier", "PERSISTENT"]) == 0
    assert "loaded 1 items into PERSISTENT" in capsys.readouterr().out
    assert _read(db, ["k"]) == {"k": "v3"}


def test_in_process_tiers_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(tmp_path / "m.db"))
    src = tmp_path / "items.jsonl"
    src.write_text(json.dumps({"key": "k", "value": 1}) + "\n")
    assert main(["load", str(src)]) == 1  # the default tier, SESSION, is in-process
    assert "Tier.SESSION is in this process" in capsys.readouterr().err
    assert main(["clear", "--tier", "GPU"]) == 1
    assert "Tier.GPU is in this process" in capsys.readouterr().err


def test_lines_end_at_newlines_only_and_an_empty_namespace_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON string may hold U+2028 or U+0085 raw (json.dumps(ensure_ascii=False)): the
    line stays whole and later lines keep their numbers; --namespace "" is refused as
    clear refuses it, not taken for the root."""
    db = tmp_path / "m.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    src = tmp_path / "items.jsonl"
    lines = [json.dumps({"key": "a", "value": "x\u2028y\x85z"}, ensure_ascii=False),
             json.dumps({"key": "b", "value": 1}), "not json"]
    src.write_text("\r\n".join(lines[:2]) + "\n", encoding="utf-8")
    assert main(["load", str(src), "--tier", "PERSISTENT"]) == 0
    assert _read(db, ["a", "b"]) == {"a": "x\u2028y\x85z", "b": 1}
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["load", str(src), "--tier", "PERSISTENT"]) == 1
    assert "items.jsonl:3: not JSON" in capsys.readouterr().err
    src.write_text(lines[1] + "\n")
    assert main(["load", str(src), "--tier", "PERSISTENT", "--namespace", ""]) == 1
    assert "invalid namespace name ''" in capsys.readouterr().err
