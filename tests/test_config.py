"""Configuration: environment variables, the TOML file, explicit arguments winning over both,
tiers switched off or not built, and GPU pool sizing and validation."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sophia_memory import (
    ConfigError,
    ManualClock,
    Memory,
    MemoryConfig,
    Tier,
    TierUnavailableError,
)
from sophia_memory.pools import DEFAULT_POOLS, PRESETS, parse_size, plan_pools

GB = 10**9
GiB = 2**30


def session_max_items(mem: Memory) -> Any:
    return mem.stats()["tiers"]["SESSION"]["backend_stats"]["max_items"]


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sophia.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- environment -------------------------------------------------------------------------------

async def test_session_url_from_environment_takes_effect(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", "memory://?max_items=2")
    async with Memory.open(path=str(tmp_path / "e.db"), clock=clock) as mem:
        assert session_max_items(mem) == 2
        for i in range(3):
            await mem.put(f"k{i}", i, tier=Tier.SESSION)
        await mem.flush()
        assert await mem.keys(Tier.SESSION) == ["k1", "k2"]
        assert await mem.keys(Tier.CORTEX) == ["k0"]  # evicted, spilled


async def test_sqlite_path_from_environment(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "nested" / "dir" / "env.db"
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(db))
    async with Memory.open(clock=clock) as mem:
        await mem.put("k", "v", tier=Tier.PERSISTENT)
        assert mem.config.resolved_path() == db
    assert db.is_file()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT key FROM persistent").fetchall() == [("k",)]
    finally:
        conn.close()
    assert not (tmp_path / "xdg").exists()  # nothing written to the default location


async def test_default_path_without_configuration_is_under_xdg_data_home(
        tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(clock=clock) as mem:
        await mem.put("k", "v", tier=Tier.PERSISTENT)
    assert (tmp_path / "xdg" / "sophia_memory" / "memory.db").is_file()


@pytest.mark.parametrize("off", ["none", "NONE", "off", "disabled", " None "])
async def test_none_in_environment_switches_a_tier_off(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock, off: str) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_CORTEX_URL", off)
    async with Memory.open(path=str(tmp_path / "off.db"), clock=clock) as mem:
        assert Tier.CORTEX not in mem.tiers
        with pytest.raises(TierUnavailableError) as info:
            await mem.put("k", "v", tier=Tier.CORTEX)
        assert "switched off" in str(info.value)
        assert info.value.tier is Tier.CORTEX
        assert mem.stats()["tiers"]["CORTEX"]["enabled"] is False
        assert await mem.get("k") is None  # reads still work
        await mem.put("k", "v", tier=Tier.PERSISTENT)
        assert await mem.get("k") == "v"


async def test_switching_off_the_default_tier_makes_bare_puts_fail_loudly(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", "none")
    async with Memory.open(path=str(tmp_path / "off.db"), clock=clock) as mem:
        with pytest.raises(TierUnavailableError):
            await mem.put("k", "v")  # default tier is SESSION
        assert await mem.get("k") is None
        for tier in mem.tiers:
            assert await mem.keys(tier) == []


async def test_toml_file_sets_tiers_default_tier_and_options(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "from-toml.db"
    toml = write_toml(tmp_path, f"""
default_tier = "PERSISTENT"
path = "{db.as_posix()}"
max_key_bytes = 16

[tiers]
SESSION = "memory://?max_items=3"
CORTEX = "none"

[gpu_pools]
inference_cache = 0.5
buffer = 0.25
""")
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(toml))
    async with Memory.open(clock=clock, host_pool_memory="1MiB") as mem:
        assert mem.config.default_tier is Tier.PERSISTENT
        assert mem.config.max_key_bytes == 16
        assert mem.config.gpu_pools == {"inference_cache": 0.5, "buffer": 0.25}
        assert session_max_items(mem) == 3
        assert Tier.CORTEX not in mem.tiers
        await mem.put("k", "v")  # no tier: the TOML default
        entry = await mem.get_entry("k")
        assert entry is not None and entry.tier is Tier.PERSISTENT
        pools = mem.stats()["tiers"]["GPU"]["backend_stats"]["pools"]
        assert set(pools) == {"inference_cache", "buffer"}
    assert db.is_file()


async def test_environment_wins_over_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          clock: ManualClock) -> None:
    toml = write_toml(tmp_path, '[tiers]\nSESSION = "memory://?max_items=3"\n')
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(toml))
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", "memory://?max_items=2")
    async with Memory.open(path=str(tmp_path / "w.db"), clock=clock) as mem:
        assert session_max_items(mem) == 2


async def test_explicit_arguments_win_over_environment_and_toml(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock) -> None:
    env_db, toml_db, explicit_db = (tmp_path / n for n in ("env.db", "toml.db", "arg.db"))
    toml = write_toml(tmp_path, f'default_tier = "PERSISTENT"\npath = "{toml_db.as_posix()}"\n'
                                '[tiers]\nSESSION = "memory://?max_items=3"\n')
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(toml))
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", "memory://?max_items=2")
    monkeypatch.setenv("SOPHIA_MEMORY_PATH", str(env_db))
    async with Memory.open(path=str(explicit_db), clock=clock, default_tier=Tier.CORTEX,
                           tiers={Tier.SESSION: "memory://?max_items=7"}) as mem:
        assert session_max_items(mem) == 7
        assert mem.config.default_tier is Tier.CORTEX
        await mem.put("k", "v")
        entry = await mem.get_entry("k")
        assert entry is not None and entry.tier is Tier.CORTEX
    assert explicit_db.is_file()
    assert not env_db.exists()
    assert not toml_db.exists()


async def test_explicit_config_object_wins_over_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_SESSION_URL", "memory://?max_items=2")
    config = MemoryConfig(tiers={Tier.SESSION: "memory://?max_items=9"},
                          path=str(tmp_path / "cfg.db"), default_tier=Tier.PERSISTENT)
    async with Memory.open(config, clock=clock) as mem:
        assert session_max_items(mem) == 9
        assert mem.config.default_tier is Tier.PERSISTENT


async def test_explicit_config_object_with_a_default_value_still_wins(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clock: ManualClock) -> None:
    toml = write_toml(tmp_path, 'default_tier = "PERSISTENT"\n')
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(toml))
    config = MemoryConfig(path=str(tmp_path / "cfg.db"), default_tier=Tier.SESSION)
    async with Memory.open(config, clock=clock) as mem:
        assert mem.config.default_tier is Tier.SESSION


def test_unknown_option_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        Memory.open(path=str(tmp_path / "u.db"), bogus=1)


def test_unknown_key_in_toml_raises_config_error(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(write_toml(tmp_path, "bogus = 1\n")))
    with pytest.raises(ConfigError, match="bogus"):
        Memory.open(path=str(tmp_path / "u.db"))


@pytest.mark.parametrize("text", ["default_tier = \n", "[tiers\nSESSION = 1", "x = 'unterminated",
                                  "a = 1\na = 2\n"])
def test_invalid_toml_raises_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          text: str) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(write_toml(tmp_path, text)))
    with pytest.raises(ConfigError, match="TOML"):
        Memory.open(path=str(tmp_path / "t.db"))


def test_missing_toml_file_raises_config_error(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        Memory.open(path=str(tmp_path / "t.db"))


@pytest.mark.parametrize("options", [
    pytest.param({"codec": "xml"}, id="codec"),
    pytest.param({"max_key_bytes": 0}, id="max-key-bytes"),
    pytest.param({"max_value_bytes": 0}, id="max-value-bytes"),
    pytest.param({"call_timeout": 0}, id="call-timeout"),
    pytest.param({"breaker_threshold": 0}, id="breaker-threshold"),
    pytest.param({"breaker_reset": -1}, id="breaker-reset"),
    pytest.param({"session_max_items": 0}, id="session-max-items"),
    pytest.param({"gpu_pools": {"buffer": 1.5}}, id="pool-fraction"),
    pytest.param({"gpu_pools": {}}, id="no-pools"),
])
def test_invalid_option_values_raise_config_error(tmp_path: Path,
                                                  options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "o.db"), **options)


@pytest.mark.parametrize("options", [
    pytest.param({"tiers": {"nope": "memory://"}}, id="tiers-key"),
    pytest.param({"default_tier": "nope"}, id="default-tier"),
    pytest.param({"cache_only": ["nope"]}, id="cache-only"),
])
def test_unknown_tier_name_in_configuration_raises_config_error(
        tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "o.db"), **options)


@pytest.mark.parametrize("toml", [
    pytest.param('max_key_bytes = "10"\n', id="max-key-bytes-str"),
    pytest.param('call_timeout = "fast"\n', id="call-timeout-str"),
    pytest.param('tiers = "memory://"\n', id="tiers-str"),
])
def test_option_of_wrong_type_in_toml_raises_config_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, toml: str) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(write_toml(tmp_path, toml)))
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "o.db"))


# -- tiers not built / switched off --------------------------------------------------------------

async def test_switched_off_tier_is_reported(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "v.db"), clock=clock,
                           tiers={Tier.VECTOR: None}) as mem:
        assert Tier.VECTOR not in mem.tiers
        with pytest.raises(TierUnavailableError, match="switched off") as info:
            await mem.put("doc", "text", tier=Tier.VECTOR, vector=[1.0, 2.0])
        assert info.value.tier is Tier.VECTOR
        vector = mem.stats()["tiers"]["VECTOR"]
        assert vector["enabled"] is False
        assert "switched off" in vector["reason"]
        assert await mem.get("doc") is None
        with pytest.raises(TierUnavailableError):
            await mem.keys(Tier.VECTOR)
        with pytest.raises(TierUnavailableError):
            await mem.search([1.0, 2.0])


async def test_tiers_switched_off_explicitly(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "x.db"), clock=clock,
                           tiers={Tier.GPU: None, Tier.WORKFLOW: "off"}) as mem:
        assert mem.tiers == (Tier.SESSION, Tier.CORTEX, Tier.PERSISTENT, Tier.VECTOR)
        stats = mem.stats()["tiers"]
        assert stats["GPU"]["enabled"] is False
        assert stats["WORKFLOW"]["enabled"] is False
        assert "switched off" in stats["WORKFLOW"]["reason"]
        for tier in (Tier.GPU, Tier.WORKFLOW):
            with pytest.raises(TierUnavailableError, match="switched off"):
                await mem.put("k", b"x", tier=tier)


# -- GPU pools -----------------------------------------------------------------------------------

def test_pools_that_do_not_fit_name_every_pool_and_the_totals() -> None:
    gh200 = PRESETS["GH200"]
    pools = {"active_models": "60GB", "inference_cache": "40GB", "vector_cache": "30GB",
             "buffer": "11GB"}
    with pytest.raises(ConfigError) as info:
        plan_pools(pools, gh200.reported_bytes, device="GH200")
    msg = str(info.value)
    for name in pools:
        assert name in msg
    assert "GH200" in msg
    assert "total" in msg and "usable" in msg
    assert f"{141 * GB / GiB:.2f} GiB" in msg  # the sum of the pools
    assert f"{96 * GB * 0.98 / GiB:.2f} GiB" in msg  # what the device can give


def test_pools_that_do_not_fit_are_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="active_models"):
        Memory.open(path=str(tmp_path / "p.db"), host_pool_memory="96GB",
                    gpu_pools={"active_models": "60GB", "inference_cache": "40GB",
                               "vector_cache": "30GB", "buffer": "11GB"})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_pools_fit_every_preset(preset: str) -> None:
    total = PRESETS[preset].reported_bytes
    budgets = plan_pools(DEFAULT_POOLS, total)
    usable = total - int(total * 0.02)
    assert set(budgets) == set(DEFAULT_POOLS)
    assert sum(budgets.values()) <= usable
    for name, fraction in DEFAULT_POOLS.items():
        assert budgets[name] == int(fraction * usable)
    assert budgets["active_models"] > budgets["inference_cache"] > budgets["vector_cache"] \
        > budgets["buffer"]


def test_absolute_pools_that_fit_are_accepted() -> None:
    budgets = plan_pools({"a": "40GB", "b": "20GiB", "c": 1024}, PRESETS["GH200"].reported_bytes)
    assert budgets == {"a": 40 * GB, "b": 20 * GiB, "c": 1024}


def test_pools_exactly_filling_usable_memory_fit() -> None:
    assert plan_pools({"all": 1.0}, 1000, reserve=0) == {"all": 1000}
    assert plan_pools({"a": 600, "b": 400}, 1000, reserve=0) == {"a": 600, "b": 400}
    with pytest.raises(ConfigError):
        plan_pools({"a": 600, "b": 401}, 1000, reserve=0)


@pytest.mark.parametrize(("text", "expected"), [
    ("1GiB", GiB), ("1GB", GB), ("24GiB", 24 * GiB), ("24GB", 24 * GB), ("1.5GiB", 3 * GiB // 2),
    ("512MiB", 512 * 2**20), ("512MB", 512 * 10**6), ("4KiB", 4096), ("4kb", 4000),
    ("2 gib", 2 * GiB), ("1TiB", 2**40), ("1TB", 10**12), ("123", 123), ("10B", 10),
    (0, 0), (4096, 4096),
])
def test_parse_size_tells_gib_from_gb(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


def test_gib_and_gb_differ_by_the_right_ratio() -> None:
    assert parse_size("80GiB") - parse_size("80GB") == 80 * (GiB - GB)


@pytest.mark.parametrize("bad", ["", "GB", "1 GiBs", "-1GB", "1e9", "1,5GB", "lots", "1 G",
                                 True, False, -1, 1.5, None, [1]])
def test_parse_size_refuses_what_it_cannot_read(bad: Any) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0000001, 1.5, math.nan, math.inf])
def test_pool_fractions_out_of_range_are_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match="buffer"):
        plan_pools({"buffer": fraction}, 10 * GB)


@pytest.mark.parametrize("pools", [
    pytest.param({}, id="no-pools"),
    pytest.param({"bad name": 0.1}, id="bad-name"),
    pytest.param({"zero": "0GB"}, id="zero-size"),
    pytest.param({"a": "nonsense"}, id="bad-size"),
])
def test_invalid_pool_specs_are_refused(pools: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        plan_pools(pools, 10 * GB)


def test_reserve_leaving_no_memory_is_refused() -> None:
    with pytest.raises(ConfigError, match="reserve"):
        plan_pools(DEFAULT_POOLS, 10 * GB, reserve="10GB")
