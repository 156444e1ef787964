"""The sync facade spells out every Memory method with the same signature, so a type checker
catches misspelt methods and arguments."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from sophia_memory import Memory
from sophia_memory.sync import SyncMemory

_NOT_OFFERED = {"cached", "from_env"}  # decorates async functions / SyncMemory.open reads env


def _public(cls: type) -> dict[str, object]:
    return {n: inspect.getattr_static(cls, n) for n in dir(cls) if not n.startswith("_")}


def test_every_memory_method_is_offered_with_the_same_parameters() -> None:
    ours, theirs = _public(SyncMemory), _public(Memory)
    missing = set(theirs) - set(ours) - _NOT_OFFERED
    assert not missing, f"SyncMemory lacks {sorted(missing)}"
    for name in sorted(set(theirs) - _NOT_OFFERED):
        mine, original = getattr(SyncMemory, name), getattr(Memory, name)
        if isinstance(inspect.getattr_static(Memory, name), property):
            assert isinstance(inspect.getattr_static(SyncMemory, name), property), name
            continue
        want = inspect.signature(original)
        got = inspect.signature(mine)
        assert list(got.parameters.values()) == list(want.parameters.values()), name
        if name not in ("open", "namespace"):
            assert got.return_annotation == want.return_annotation, name


def test_there_is_no_catch_all_attribute(tmp_path: Path) -> None:
    with SyncMemory.open(path=str(tmp_path / "s.db")) as mem, pytest.raises(AttributeError):
        mem.gett  # type: ignore[attr-defined]  # noqa: B018


def test_mypy_refuses_a_misspelt_method_and_argument(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    script = tmp_path / "typo.py"
    script.write_text(
        "from sophia_memory.sync import SyncMemory\n"
        "from sophia_memory import Tier\n"
        "def use(s: SyncMemory) -> None:\n"
        "    s.gett('k')\n"
        "    s.put('k', 1, tierr='SESSION')\n"
        "    s.put('k', 1, tier='SESSION')\n"
        "    v: int = s.put('k', 1, tier=Tier.WORKFLOW)\n"
        "    w: int = s.put('k', 1, tier=Tier.SESSION)\n")
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                          "--cache-dir", str(tmp_path / ".mypy"), str(script)],
                         capture_output=True, text=True, check=False)
    out = run.stdout
    assert run.returncode == 1, out
    assert '"SyncMemory" has no attribute "gett"' in out
    assert 'Unexpected keyword argument "tierr"' in out
    # the correct calls pass; a WORKFLOW put is typed int, any other int | None
    lines = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert lines == {4, 5, 8}, out
    assert 'expression has type "int | None", variable has type "int"' in out
