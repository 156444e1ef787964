"""One factory convention for every scheme: every URL option is checked before anything is
opened; an unknown option is a ConfigError naming it, the closest valid spelling and the valid
options."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import ConfigError, MemoryConfig, Tier
from sophia_memory.backends import BackendURL, open_backend, parse_url, register
from sophia_memory.backends.inprocess.memory import MemoryBackend
from sophia_memory.backends.redis import DRIVER_OPTIONS

SNOWFLAKE = "snowflake://u:p@acct/DB/SCHEMA"


@pytest.mark.parametrize(("url", "tier", "typo", "meant"), [
    ("memory://?max_item=3", Tier.SESSION, "max_item", "max_items"),
    ("sqlite:///{db}?tabel=t", Tier.PERSISTENT, "tabel", "table"),
    ("sqlite:///{db}?retian=3", Tier.WORKFLOW, "retian", "retain"),
    ("sqlite:///{db}?metirc=ip", Tier.VECTOR, "metirc", "metric"),
    ("host://?memroy=1MiB", Tier.GPU, "memroy", "memory"),
    ("cupy://0?default_pol=a", Tier.GPU, "default_pol", "default_pool"),
    (SNOWFLAKE + "?warehose=WH", Tier.PERSISTENT, "warehose", "warehouse"),
    ("redis://127.0.0.1:6379/0?prefx=a:", Tier.SESSION, "prefx", "prefix"),
    ("redis://127.0.0.1:6379/0?socket_timout=3", Tier.SESSION, "socket_timout",
     "socket_timeout"),
    ("redis+cluster://127.0.0.1:7000?trackng=0", Tier.SESSION, "trackng", "tracking"),
    ("redis+sentinel://127.0.0.1:26379/svc?timeot=2", Tier.SESSION, "timeot", "timeout"),
])
def test_an_unknown_option_names_itself_the_closest_spelling_and_the_valid_ones(
        tmp_path: Path, url: str, tier: Tier, typo: str, meant: str) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(ConfigError) as err:
        open_backend(url.format(db=db), tier, MemoryConfig(path=str(db)))
    message = str(err.value)
    assert f"unknown option(s) {typo!r} (did you mean {meant!r}?)" in message
    assert "valid options" in message and meant in message.split("valid options")[1]
    assert not db.exists()  # refused before the file was opened


def test_nothing_is_opened_for_a_refused_sqlite_url(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    writers = {t.name for t in threading.enumerate()}
    for url in (f"sqlite:///{db}?zzz=1", f"sqlite:///{db}?synchronous=off",
                f"sqlite:///{db}?table=bad-name", f"sqlite:///{db}?versioned=2"):
        with pytest.raises(ConfigError):
            open_backend(url, Tier.PERSISTENT, MemoryConfig())
    assert not db.exists()
    assert {t.name for t in threading.enumerate()} <= writers


@pytest.mark.parametrize(("url", "tier", "what"), [
    ("sqlite:///{db}?retain=3", Tier.PERSISTENT, "for a key/value table"),
    ("sqlite:///{db}?layout=kv", Tier.WORKFLOW, "for a versioned table (versioned=1)"),
    ("sqlite:///{db}?vector=1&retain=3", Tier.PERSISTENT, "for a vector table (vector=1)"),
    (SNOWFLAKE + "?dim=3", Tier.WORKFLOW, "for the WORKFLOW tier"),
    ("redis+cluster://127.0.0.1:7000?db=1", Tier.SESSION, "redis+cluster://"),
])
def test_an_option_that_does_not_apply_is_refused_with_where_it_applies(
        tmp_path: Path, url: str, tier: Tier, what: str) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(ConfigError, match="unknown option") as err:
        open_backend(url.format(db=db), tier, MemoryConfig())
    assert what in str(err.value)
    assert not db.exists()


@pytest.mark.parametrize(("url", "message"), [
    ("memory://?max_items=lots", "max_items='lots': takes an integer"),
    ("sqlite:///{db}?synchronous=off", "takes one of normal, full"),
    (SNOWFLAKE + "?timeout=-1", "timeout='-1': takes a number of seconds > 0"),
    (SNOWFLAKE + "?readers=0", "readers='0': takes a positive integer"),
    ("redis://127.0.0.1:6379/0?tracking=maybe", "takes 0 or 1"),
    ("redis://127.0.0.1:6379/0?db=one", "db='one': takes an integer"),
    ("redis://127.0.0.1:6379/0?socket_timeout=soon", "takes a number"),
])
def test_a_bad_value_names_the_option_and_what_it_takes(tmp_path: Path, url: str,
                                                        message: str) -> None:
    tier = Tier.PERSISTENT if url.startswith(("sqlite", "snowflake")) else Tier.SESSION
    with pytest.raises(ConfigError) as err:
        open_backend(url.format(db=tmp_path / "never.db"), tier, MemoryConfig())
    assert message in str(err.value)


def test_the_password_never_appears_in_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        open_backend("snowflake://u:s3cret@acct/DB?colour=red", Tier.PERSISTENT, MemoryConfig())
    assert "s3cret" not in str(err.value) and "u:***@acct" in str(err.value)


def test_a_third_party_scheme_registered_with_its_options_is_checked_before_its_factory(
        ) -> None:
    calls: list[BackendURL] = []

    def factory(url: BackendURL, tier: Tier, config: MemoryConfig) -> MemoryBackend:
        calls.append(url)
        return MemoryBackend(max_items=url.integer("size", 10))

    register("thirdparty-test", factory, options=["size"])
    with pytest.raises(ConfigError, match=r"'sise' \(did you mean 'size'\?\)"):
        open_backend("thirdparty-test://?sise=3", Tier.SESSION, MemoryConfig())
    assert not calls
    backend = open_backend("thirdparty-test://?size=3", Tier.SESSION, MemoryConfig())
    assert isinstance(backend, MemoryBackend) and backend.stats()["max_items"] == 3


def test_parse_url_keeps_the_options_for_the_factory() -> None:
    url = parse_url("sqlite:///tmp/x.db?table=t&synchronous=full")
    assert (url.scheme, url.path, url.options) == ("sqlite", "/tmp/x.db",
                                                   {"table": "t", "synchronous": "full"})
    url.check(["table", "synchronous"])  # passes: nothing unknown


# -- Redis: our options plus redis-py's own -------------------------------------------------


def _redis_py_url_options() -> set[str]:
    connection: Any = pytest.importorskip("redis.asyncio.connection")
    names = set(connection.URL_QUERY_ARGUMENT_PARSERS)
    for cls in (connection.AbstractConnection, connection.SSLConnection):
        names.update(inspect.signature(cls.__init__).parameters)
    return names


def test_every_redis_driver_option_is_one_redis_py_takes_from_a_url() -> None:
    unknown = set(DRIVER_OPTIONS) - _redis_py_url_options()
    assert not unknown, f"options redis-py does not know: {sorted(unknown)}"
    assert not {"decode_responses", "encoding"} & set(DRIVER_OPTIONS)  # values stay bytes


async def test_redis_driver_options_reach_the_client_and_ours_do_not() -> None:
    pytest.importorskip("redis")
    backend: Any = open_backend("redis://127.0.0.1:6379/0?prefix=t:&timeout=1.5&tracking=0&"
                                "socket_timeout=3&db=2&client_name=sm-test&max_connections=7",
                                Tier.SESSION, MemoryConfig())
    try:
        kwargs = backend.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["db"], kwargs["client_name"]) == (3.0, 2,
                                                                                  "sm-test")
        assert backend.client.connection_pool.max_connections == 7
        assert not {"prefix", "timeout", "tracking"} & set(kwargs)
        assert (backend.prefix, backend.call_timeout) == ("t:", 1.5)
        assert backend.stats()["tracking"] is False
    finally:
        await backend.close()  # lazy client: nothing was connected


def test_a_malformed_url_or_a_config_shows_no_password() -> None:
    """Errors about URLs that do not parse, and the repr of a configuration (logged by
    users, kept by error trackers), mask the password, the query and the signing key."""
    for url in ("redis//alice:S3cretPW@127.0.0.1:6379/0",
                "re dis://alice:S3cretPW@127.0.0.1:6379/0",
                "redis://alice:S3cr/et?PW@127.0.0.1:6379/0",
                "redis://alice:S3cretPW@127.0.0.1:notaport/0"):
        with pytest.raises(ConfigError) as err:
            open_backend(url, Tier.SESSION, MemoryConfig())
        assert "S3cr" not in str(err.value) and "alice:***@" in str(err.value), url
    config = MemoryConfig.build(None, environ={}, codec="pickle",
                                signing_key=b"0123456789abcdefSECRETKEY", tiers={
                                    Tier.SESSION: "redis://alice:S3cretPW@h:1/0?password=Q"})
    shown = repr(config)
    assert "S3cret" not in shown and "SECRETKEY" not in shown and "password=Q" not in shown
    assert "'redis://alice:***@h:1/0?...'" in shown and "signing_key='***'" in shown
    with pytest.raises(ConfigError) as err:
        MemoryConfig.build(None, environ={}, signing_key=["TOPSECRETKEY123"])
    assert "TOPSECRET" not in str(err.value) and "got list" in str(err.value)


def test_an_empty_redis_prefix_is_refused() -> None:
    """With prefix='' the tier's keys, and what clear() removes, would be the whole
    database's, other applications' included."""
    with pytest.raises(ConfigError, match="option prefix=''"):
        open_backend("redis://127.0.0.1:6379/0?prefix=", Tier.SESSION, MemoryConfig())
