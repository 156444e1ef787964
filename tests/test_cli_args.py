"""The CLI's own arguments: --version, and one-line errors for bad counts."""

from __future__ import annotations

import pytest

from sophia_memory import __version__
from sophia_memory.cli import main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sophia-memory {__version__} (Python ")


@pytest.mark.parametrize("bad", ["0", "-3", "ten", "1.5"])
@pytest.mark.parametrize("command", ["demo", "bench"])
def test_a_bad_count_is_a_one_line_error(command: str, bad: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "-n", bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "argument -n: " in err
    assert err.strip().splitlines()[-1].startswith("sophia-memory")
