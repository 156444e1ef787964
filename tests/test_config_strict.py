"""Misspelt configuration is refused by name, never silently replaced by a default."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophia_memory import ConfigError, Memory, MemoryConfig, Tier
from sophia_memory.config import ENV_VARIABLES, check_environment


@pytest.mark.parametrize(("typo", "meant"), [
    ("SOPHIA_MEMORY_SESION_URL", "SOPHIA_MEMORY_SESSION_URL"),
    ("SOPHIA_MEMORY_CONFG", "SOPHIA_MEMORY_CONFIG"),
    ("SOPHIA_MEMORY_PERSISTANT_URL", "SOPHIA_MEMORY_PERSISTENT_URL"),
    ("SOPHIA_MEMORY_SIGNINGKEY", "SOPHIA_MEMORY_SIGNING_KEY"),
])
def test_a_misspelt_variable_names_the_closest_spelling(typo: str, meant: str) -> None:
    with pytest.raises(ConfigError) as info:
        MemoryConfig.build(environ={typo: "x"})
    assert typo in str(info.value)
    assert f"did you mean {meant}?" in str(info.value)


def test_a_variable_in_the_wrong_case_names_its_upper_case_spelling() -> None:
    with pytest.raises(ConfigError, match=r"did you mean SOPHIA_MEMORY_SESSION_URL\?"):
        MemoryConfig.build(environ={"SOPHIA_MEMORY_session_url": "memory://"})


def test_a_misspelt_toml_key_or_option_names_the_closest_field(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('pathh = "x"\nsigning_kye = "y"\nzzzzzz = 1\n')
    with pytest.raises(ConfigError) as info:
        MemoryConfig.build(environ={"SOPHIA_MEMORY_CONFIG": str(toml)})
    assert str(info.value) == ("unknown configuration key(s): pathh (did you mean path?), "
                               "signing_kye (did you mean signing_key?), zzzzzz")
    assert "y" not in str(info.value).split("signing_kye")[1].split("(")[0]  # no value shown
    with pytest.raises(ConfigError, match=r"^unknown option\(s\): session_max_itmes \(did you "
                                          r"mean session_max_items\?\)$"):
        MemoryConfig.build(environ={}, session_max_itmes=5)


def test_an_unrelated_unknown_variable_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        check_environment({"SOPHIA_MEMORY_ZZZZZZZZZZZZZZZZZZ": "1"})
    assert "SOPHIA_MEMORY_PATH" in str(info.value)


def test_several_unknown_variables_are_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        check_environment({"SOPHIA_MEMORY_PAHT": "a", "SOPHIA_MEMORY_CONFG": "b"})
    message = str(info.value)
    assert "SOPHIA_MEMORY_CONFG" in message and "SOPHIA_MEMORY_PAHT" in message


def test_every_documented_variable_is_accepted(tmp_path: Path) -> None:
    env = {name: "none" for name in ENV_VARIABLES if name.endswith("_URL")}
    env["SOPHIA_MEMORY_SESSION_URL"] = "memory://"
    env["SOPHIA_MEMORY_PATH"] = str(tmp_path / "m.db")
    env["SOPHIA_MEMORY_SIGNING_KEY"] = "k" * 32
    cfg = MemoryConfig.build(environ=env)
    assert cfg.url_for(Tier.SESSION) == "memory://"
    assert cfg.path == str(tmp_path / "m.db")
    check_environment({"OTHER_VARIABLE": "x", "SOPHIA_MEMORYX": "y"})  # not ours: ignored


async def test_memory_open_refuses_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("SOPHIA_MEMORY_SESION_URL", "memory://")
    with pytest.raises(ConfigError, match="SOPHIA_MEMORY_SESSION_URL"):
        Memory.open(path=str(tmp_path / "m.db"))
    assert not (tmp_path / "m.db").exists()  # refused before anything was created


@pytest.mark.parametrize(("typo", "meant"), [
    ("inferance_cache", "inference_cache"), ("active_model", "active_models"),
    ("vectorcache", "vector_cache"), ("Buffer", "buffer")])
def test_a_misspelt_pool_in_a_toml_file_names_the_closest_spelling(
        typo: str, meant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "memory.toml"
    toml.write_text(f'[gpu_pools]\nactive_models = 0.4\n{typo} = 0.3\n')
    monkeypatch.setenv("SOPHIA_MEMORY_CONFIG", str(toml))
    with pytest.raises(ConfigError) as info:
        Memory.open(path=str(tmp_path / "m.db"))
    assert f"unknown pool {typo!r}: did you mean {meant!r}?" in str(info.value)
    assert not (tmp_path / "m.db").exists()  # refused at open, not at the first put


async def test_a_pool_of_ones_own_name_is_kept_and_a_misspelt_put_names_it(
        tmp_path: Path) -> None:
    import numpy as np

    async with Memory.open(path=str(tmp_path / "m.db"), gpu_reserve=0,
                           gpu_pools={"embeddings": 0.5, "inference_cache": 0.3}) as mem:
        await mem.put("e", np.ones(4, dtype=np.float32), tier=Tier.GPU, pool="embeddings")
        with pytest.raises(ConfigError, match="did you mean 'embeddings'"):
            await mem.put("e", np.ones(4, dtype=np.float32), tier=Tier.GPU, pool="embedings")
