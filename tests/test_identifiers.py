"""SQL identifiers are checked whole: a trailing newline (which ``$`` lets through) or any
other character outside the allowed set is refused by both SQL families."""

from __future__ import annotations

import pytest

from sophia_memory.backends.sql.snowflake import check_identifier as snowflake_identifier
from sophia_memory.backends.sql.sqlite import check_identifier as sqlite_identifier
from sophia_memory.errors import ConfigError

BAD = ["ABC\n", "ABC\r\n", "\nABC", "A BC", "A;B", 'A"B', "1ABC", "", "ABC\x00", "ÄBC"]


@pytest.mark.parametrize("name", BAD)
def test_snowflake_refuses(name: str) -> None:
    with pytest.raises(ConfigError):
        snowflake_identifier(name)


@pytest.mark.parametrize("name", [*BAD, "A$B"])
def test_sqlite_refuses(name: str) -> None:
    with pytest.raises(ConfigError):
        sqlite_identifier(name)


def test_plain_identifiers_pass() -> None:
    assert snowflake_identifier("cortex_Cache$1") == "CORTEX_CACHE$1"
    assert sqlite_identifier("cortex_cache_1") == "cortex_cache_1"
    with pytest.raises(ConfigError):
        sqlite_identifier(42)  # type: ignore[arg-type]
