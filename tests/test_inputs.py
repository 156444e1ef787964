"""Acceptance: "Bad input gets a typed error and stores nothing".

Every bad put is checked twice: it raises the specific error type, and afterwards no tier
holds anything (each enabled tier's ``keys`` is empty and the key reads as missing).
"""

from __future__ import annotations

import math
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import (
    ConfigError,
    InvalidArgumentError,
    InvalidKeyError,
    ManualClock,
    Memory,
    SignatureError,
    Tier,
    UnsupportedValueError,
    ValueTooLargeError,
)

# In-process, plain SQLite and versioned SQLite homes; validation does not depend on the tier
# otherwise, so the matrix stays small.
PUT_TIERS = [Tier.SESSION, Tier.CORTEX, Tier.PERSISTENT, Tier.WORKFLOW]
SIGNING_KEY = b"s" * 32


async def assert_nothing_stored(mem: Memory, key: str | None = None) -> None:
    for tier in mem.tiers:
        assert await mem.keys(tier) == [], f"{tier} holds keys after a refused put"
    await mem.flush()
    for tier in mem.tiers:
        assert await mem.keys(tier) == [], f"{tier} holds keys after background work"
    if key is not None:
        assert await mem.get(key) is None
        assert not await mem.exists(key)
        assert await mem.get_many([key]) == {}


class NotStorable:
    pass


# -- keys -------------------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(42, id="int"),
    pytest.param(b"key", id="bytes"),
    pytest.param(None, id="none"),
    pytest.param(("a", "b"), id="tuple"),
    pytest.param(["a"], id="list"),
    pytest.param("", id="empty"),
    pytest.param("a\x1fb", id="unit-separator"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("ok\udfffok", id="lone-low-surrogate"),
    pytest.param("x" * 1025, id="over-limit-ascii"),
    pytest.param("é" * 513, id="over-limit-utf8-2-byte"),   # 513 chars, 1026 bytes
    pytest.param("😀" * 257, id="over-limit-utf8-4-byte"),  # 257 chars, 1028 bytes
]


@pytest.mark.parametrize("tier", [Tier.SESSION, Tier.CORTEX])
@pytest.mark.parametrize("key", BAD_KEYS)
async def test_put_with_bad_key_raises_invalid_key_and_stores_nothing(
        mem: Memory, key: Any, tier: Tier) -> None:
    with pytest.raises(InvalidKeyError):
        await mem.put(key, "value", tier=tier)
    await assert_nothing_stored(mem)


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_put_with_bad_key_to_gpu_tier_raises_invalid_key(mem: Memory, key: Any) -> None:
    with pytest.raises(InvalidKeyError):
        await mem.put(key, np.zeros(4, dtype=np.float32), tier=Tier.GPU)
    await assert_nothing_stored(mem)


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_reads_and_deletes_with_bad_key_raise_invalid_key(mem: Memory, key: Any) -> None:
    for call in (mem.get(key), mem.get_entry(key), mem.exists(key), mem.delete(key),
                 mem.get_many(["fine", key]), mem.delete_many([key])):
        with pytest.raises(InvalidKeyError):
            await call


async def test_key_length_limit_counts_utf8_bytes(tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "k.db"), clock=clock, max_key_bytes=8) as mem:
        await mem.put("é" * 4, 1, tier=Tier.PERSISTENT)      # 4 chars, 8 bytes: at the limit
        await mem.put("12345678", 2, tier=Tier.SESSION)
        with pytest.raises(InvalidKeyError, match="bytes"):
            await mem.put("é" * 5, 3, tier=Tier.PERSISTENT)  # 5 chars, 10 bytes
        with pytest.raises(InvalidKeyError):
            await mem.put("1234567😀", 4, tier=Tier.SESSION)  # 8 chars, 11 bytes
        assert await mem.get("é" * 4) == 1
        assert await mem.get("12345678") == 2
        assert await mem.keys(Tier.PERSISTENT) == ["é" * 4]
        assert await mem.keys(Tier.SESSION) == ["12345678"]


async def test_unusual_but_valid_keys_are_accepted(mem: Memory) -> None:
    keys = ["x" * 1024, "é" * 512, " ", "\x00nul", "a/b:c", "\u2028", "😀", "tab\tnl\n"]
    for i, key in enumerate(keys):
        await mem.put(key, i, tier=Tier.PERSISTENT)
    for i, key in enumerate(keys):
        assert await mem.get(key) == i
    assert sorted(await mem.keys(Tier.PERSISTENT)) == sorted(keys)


# -- values -----------------------------------------------------------------------------------

BAD_VALUES = [
    pytest.param(object(), id="object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(frozenset({1}), id="frozenset"),
    pytest.param({1: "a"}, id="dict-int-keys"),
    pytest.param({"ok": {("t",): 1}}, id="nested-dict-tuple-key"),
    pytest.param([1, [2, [3, [4, object()]]]], id="deep-unsupported-in-list"),
    pytest.param({"a": [(1, {2, 3})]}, id="set-in-tuple-in-dict"),
    pytest.param(NotStorable(), id="class-instance"),
    pytest.param(1 + 2j, id="complex"),
    pytest.param(range(3), id="range"),
    pytest.param(lambda: None, id="function"),
    pytest.param(np.ma.array([1, 2]), id="masked-array"),
    # kept as objects in SESSION, but no serialising tier below could hold them:
    pytest.param(np.array([1, None], dtype=object), id="object-dtype"),
    pytest.param(np.zeros(2, dtype=[("a", "i4")]), id="structured-dtype"),
    pytest.param("lone \ud800", id="lone-surrogate-str"),
]


@pytest.mark.parametrize("tier", PUT_TIERS)
@pytest.mark.parametrize("value", BAD_VALUES)
async def test_put_of_unsupported_value_raises_and_stores_nothing(
        mem: Memory, value: Any, tier: Tier) -> None:
    with pytest.raises(UnsupportedValueError):
        await mem.put("k", value, tier=tier)
    await assert_nothing_stored(mem, "k")


@pytest.mark.parametrize("value", ["text", {"a": 1}, [np.zeros(2)], b"raw", 3])
async def test_gpu_tier_refuses_non_array_values(mem: Memory, value: Any) -> None:
    with pytest.raises(UnsupportedValueError):
        await mem.put("k", value, tier=Tier.GPU)
    await assert_nothing_stored(mem, "k")


async def test_pool_argument_outside_gpu_tier_is_refused(mem: Memory) -> None:
    with pytest.raises(InvalidArgumentError):
        await mem.put("k", np.zeros(2), tier=Tier.SESSION, pool="buffer")
    await assert_nothing_stored(mem, "k")


@pytest.mark.parametrize("tier", PUT_TIERS)
async def test_value_over_max_value_bytes_raises_and_stores_nothing(
        tmp_path: Path, clock: ManualClock, tier: Tier) -> None:
    async with Memory.open(path=str(tmp_path / "v.db"), clock=clock,
                           max_value_bytes=256) as mem:
        for big in (b"x" * 300, "y" * 300, list(range(300)), np.zeros(64, dtype=np.float64)):
            with pytest.raises(ValueTooLargeError) as info:
                await mem.put("big", big, tier=tier)
            assert info.value.limit == 256
            assert info.value.size > 256
        await assert_nothing_stored(mem, "big")
        await mem.put("small", b"x" * 100, tier=tier)  # under the limit: accepted
        assert await mem.get("small") == b"x" * 100


async def test_value_over_limit_does_not_replace_the_old_value(
        tmp_path: Path, clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "v.db"), clock=clock,
                           max_value_bytes=256) as mem:
        await mem.put("k", "old", tier=Tier.PERSISTENT)
        with pytest.raises(ValueTooLargeError):
            await mem.put("k", "n" * 1000, tier=Tier.PERSISTENT)
        assert await mem.get("k") == "old"


# -- TTL and tier -------------------------------------------------------------------------------

BAD_TTLS = [
    pytest.param(-1, id="negative"),
    pytest.param(0, id="zero"),
    pytest.param(0.0, id="zero-float"),
    pytest.param(-0.5, id="negative-float"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="minus-inf"),
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param("60", id="str"),
    pytest.param(timedelta(0), id="timedelta-zero"),
    pytest.param(timedelta(seconds=-5), id="timedelta-negative"),
    pytest.param([60], id="list"),
]


@pytest.mark.parametrize("tier", [Tier.SESSION, Tier.CORTEX])
@pytest.mark.parametrize("ttl", BAD_TTLS)
async def test_put_with_bad_ttl_raises_and_stores_nothing(
        mem: Memory, ttl: Any, tier: Tier) -> None:
    with pytest.raises(InvalidArgumentError, match="ttl"):
        await mem.put("k", "v", tier=tier, ttl=ttl)
    await assert_nothing_stored(mem, "k")


@pytest.mark.parametrize("tier", [
    pytest.param("nope", id="unknown-name"),
    pytest.param(9, id="level-9"),
    pytest.param(-1, id="level-minus-1"),
    pytest.param(6, id="level-6"),
    pytest.param("L7", id="L7"),
    pytest.param(True, id="bool"),
    pytest.param(2.0, id="float"),
    pytest.param(b"SESSION", id="bytes"),
])
async def test_put_to_unknown_tier_raises_invalid_argument(mem: Memory, tier: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="tier"):
        await mem.put("k", "v", tier=tier)
    await assert_nothing_stored(mem, "k")


async def test_tier_may_be_named_by_name_or_level(mem: Memory) -> None:
    await mem.put("a", 1, tier="persistent")
    await mem.put("b", 2, tier=3)
    await mem.put("c", 3, tier="L2")
    assert await mem.keys(Tier.PERSISTENT) == ["a", "b"]
    assert await mem.keys(Tier.CORTEX) == ["c"]


async def test_put_to_vector_tier_without_vector_raises_and_stores_nothing(
        mem: Memory) -> None:
    with pytest.raises(InvalidArgumentError):
        await mem.put("k", "v", tier=Tier.VECTOR)
    await assert_nothing_stored(mem, "k")


# -- put_many ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", PUT_TIERS)
@pytest.mark.parametrize(("bad_item", "error"), [
    pytest.param(("bad", object()), UnsupportedValueError, id="bad-value"),
    pytest.param(("bad", {1: 2}), UnsupportedValueError, id="int-key-dict"),
    pytest.param(("", "v"), InvalidKeyError, id="empty-key"),
    pytest.param(("x\x1fy", "v"), InvalidKeyError, id="separator-key"),
    pytest.param((7, "v"), InvalidKeyError, id="int-key"),
    pytest.param(("x" * 2000, "v"), InvalidKeyError, id="long-key"),
    pytest.param(("bad", b"x" * 5000), ValueTooLargeError, id="too-large"),
])
async def test_put_many_with_one_bad_item_stores_none(
        tmp_path: Path, clock: ManualClock, tier: Tier, bad_item: tuple[Any, Any],
        error: type[Exception]) -> None:
    bad_key, bad_value = bad_item
    async with Memory.open(path=str(tmp_path / "pm.db"), clock=clock,
                           max_value_bytes=4096) as mem:
        items: dict[Any, Any] = {"a": 1, "b": [2], bad_key: bad_value, "z": "last"}
        with pytest.raises(error):
            await mem.put_many(items, tier=tier)
        await assert_nothing_stored(mem)
        for k in ("a", "b", "z"):
            assert await mem.get(k) is None


@pytest.mark.parametrize("ttl", [-1, 0, math.nan, True])
async def test_put_many_with_bad_ttl_stores_none(mem: Memory, ttl: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        await mem.put_many({"a": 1, "b": 2}, tier=Tier.PERSISTENT, ttl=ttl)
    await assert_nothing_stored(mem)


# -- malformed configuration -----------------------------------------------------------------

@pytest.mark.parametrize("tiers", [
    pytest.param({Tier.SESSION: "nonsense"}, id="no-scheme"),
    pytest.param({Tier.SESSION: "://x"}, id="empty-scheme"),
    pytest.param({Tier.PERSISTENT: "sqlite://host/x.db"}, id="sqlite-with-host"),
    pytest.param({Tier.SESSION: "memory://?bogus=1"}, id="memory-unknown-option"),
    pytest.param({Tier.SESSION: "memory://somehost"}, id="memory-with-host"),
    pytest.param({Tier.SESSION: "memory://?max_items=lots"}, id="memory-non-int"),
    pytest.param({Tier.SESSION: "memory://?max_items=-3"}, id="memory-negative"),
    pytest.param({Tier.SESSION: "memory://?policy=random"}, id="memory-unknown-policy"),
    pytest.param({Tier.CORTEX: "unknown://x"}, id="unknown-scheme"),
    pytest.param({Tier.CORTEX: "sqlite:///?table=bad-name"}, id="sqlite-bad-table"),
    pytest.param({Tier.CORTEX: "sqlite:///?table=x;drop"}, id="sqlite-injection-table"),
    pytest.param({Tier.CORTEX: "sqlite:///?synchronous=off"}, id="sqlite-bad-synchronous"),
    pytest.param({Tier.CORTEX: "sqlite:///?zzz=1"}, id="sqlite-unknown-option"),
    pytest.param({Tier.GPU: "host://?memory=lots"}, id="host-bad-size"),
    pytest.param({Tier.GPU: "host://?default_pool=nope"}, id="host-unknown-pool"),
    pytest.param({Tier.WORKFLOW: 42}, id="url-not-a-string"),
    pytest.param({Tier.WORKFLOW: "memory://"}, id="in-process-below-sqlite"),
    pytest.param({t: None for t in Tier}, id="every-tier-off"),
])
def test_malformed_tier_config_raises_config_error_at_open(
        tmp_path: Path, tiers: dict[Any, Any]) -> None:
    with pytest.raises(ConfigError):
        Memory.open(path=str(tmp_path / "c.db"), tiers=tiers)


def test_failed_open_releases_the_backends_it_opened(tmp_path: Path) -> None:
    import threading

    def writers() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("sophia-sqlite")}

    before = writers()
    with pytest.raises(ConfigError):  # CORTEX and PERSISTENT are open when WORKFLOW fails
        Memory.open(path=str(tmp_path / "rel.db"), tiers={Tier.WORKFLOW: "unknown://x"})
    assert writers() == before


# -- tampered stored payloads -----------------------------------------------------------------

def _tamper(db: Path, table: str, key: str) -> None:
    conn = sqlite3.connect(db)
    try:
        (payload,) = conn.execute(f'SELECT payload FROM "{table}" WHERE key = ?',
                                  (key,)).fetchone()
        altered = bytearray(payload)
        altered[-1] ^= 0x01  # one bit of the pickled body
        conn.execute(f'UPDATE "{table}" SET payload = ? WHERE key = ?', (bytes(altered), key))
        conn.commit()
    finally:
        conn.close()


async def test_tampered_signed_pickle_in_sqlite_is_refused_on_read(
        tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "signed.db"
    opts: dict[str, Any] = {"path": str(db), "clock": clock, "codec": "pickle",
                            "signing_key": SIGNING_KEY}
    async with Memory.open(**opts) as mem:
        await mem.put("k", {"set": {1, 2}}, tier=Tier.PERSISTENT)
        await mem.put("untouched", {"n": 1}, tier=Tier.PERSISTENT)
    _tamper(db, "persistent", "k")
    async with Memory.open(**opts) as mem:
        with pytest.raises(SignatureError):
            await mem.get("k")
        assert await mem.get("untouched") == {"n": 1}
        assert await mem.delete("k")  # the refused row can still be removed
        assert await mem.get("k") is None


async def test_payload_signed_with_another_key_is_refused_on_read(
        tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "signed.db"
    async with Memory.open(path=str(db), clock=clock, codec="pickle",
                           signing_key=b"a" * 32) as mem:
        await mem.put("k", [1, 2], tier=Tier.CORTEX)
    async with Memory.open(path=str(db), clock=clock, codec="pickle",
                           signing_key=b"b" * 32) as mem:
        with pytest.raises(SignatureError):
            await mem.get("k")


async def test_foreign_payload_in_sqlite_is_refused_by_signed_codec(
        tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "mixed.db"
    async with Memory.open(path=str(db), clock=clock) as mem:  # msgpack writer
        await mem.put("k", [1, 2], tier=Tier.PERSISTENT)
    async with Memory.open(path=str(db), clock=clock, codec="pickle",
                           signing_key=SIGNING_KEY) as mem:
        with pytest.raises(SignatureError):
            await mem.get("k")


# -- found by a review (2026-12-03) ------------------------------------------------------------

async def test_many_calls_refuse_one_str_and_what_is_not_a_collection(mem: Memory) -> None:
    """One str is not a key per character: get_many("abc") and delete_many("abc") are refused
    (nothing deleted), as are a None and a put_many of pairs instead of a mapping."""
    for k in "abc":
        await mem.put(k, k)
    for call in (mem.get_many("abc"), mem.delete_many("abc"), mem.get_many(b"abc"),
                 mem.get_many(None), mem.delete_many(3), mem.put_many([("a", 1)])):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="takes"):
            await call
    assert await mem.get_many(["a", "b", "c"]) == {"a": "a", "b": "b", "c": "c"}
    assert await mem.get_many(k for k in "ab") == {"a": "a", "b": "b"}  # any iterable


async def test_a_str_subclass_key_is_its_string_on_every_path(mem: Memory) -> None:
    """A StrEnum member is the plain string it holds, on the first read and the next, on a
    miss, a put, get_many and delete (before, the first read refused it, the next found it)."""
    import enum

    class K(enum.StrEnum):
        A = "a"
        B = "b"

    await mem.put("a", 1)
    assert [await mem.get(K.A) for _ in range(3)] == [1, 1, 1]
    assert await mem.get(K.B) is None
    await mem.put(K.B, 2)
    assert await mem.get("b") == 2 and await mem.get_many([K.A, K.B]) == {"a": 1, "b": 2}
    assert await mem.keys(Tier.SESSION) == ["a", "b"]
    assert all(type(k) is str for k in await mem.keys(Tier.SESSION))
    assert await mem.delete(K.A) and await mem.get("a") is None


async def test_get_or_load_and_cached_refuse_bad_arguments_before_loading(mem: Memory) -> None:
    calls = []

    async def expensive() -> str:
        calls.append(1)
        return "r"

    for kwargs in ({"ttl": -1}, {"ttl": 0}, {"tier": "bogus"}, {"meta": {1: 2}}):
        with pytest.raises(InvalidArgumentError):
            await mem.get_or_load("k", expensive, **kwargs)  # type: ignore[arg-type]
    for kwargs in ({"ttl": 0}, {"tier": "bogus"}):
        with pytest.raises(InvalidArgumentError):
            mem.cached(**kwargs)  # type: ignore[arg-type]
    assert calls == [] and await mem.get("k") is None
    assert await mem.get_or_load("k", expensive, ttl=5) == "r" and calls == [1]


def test_a_database_directory_that_cannot_be_made_is_a_backend_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    from sophia_memory.errors import BackendError

    with pytest.raises(BackendError, match=r"cannot open SQLite database .*file/sub/m\.db: "
                                           r"cannot create its directory"):
        Memory.open(path=str(blocker / "sub" / "m.db"))


def test_an_option_given_twice_in_a_url_is_refused(tmp_path: Path) -> None:
    for url, name in (("memory://?policy=bogus&policy=lru", "policy"),
                      ("memory://?max_items=5&max_items=7", "max_items")):
        with pytest.raises(ConfigError, match=rf"^memory:// URL gives option '{name}' more "
                                              r"than once$"):
            Memory.open(path=str(tmp_path / "m.db"), tiers={Tier.SESSION: url})
    assert not (tmp_path / "m.db").exists()


async def test_a_value_larger_than_the_tier_names_its_byte_bound(tmp_path: Path,
                                                               clock: ManualClock) -> None:
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock,
                           tiers={Tier.SESSION: "memory://?max_bytes=100"}) as mem:
        for tier in (None, Tier.SESSION):  # the put's fast path and its general one
            with pytest.raises(ValueTooLargeError, match=r"^value is 305 bytes, over the limit "
                               r"of 100 bytes \(Tier.SESSION capacity\)$") as raised:
                await mem.put("k", "y" * 300, tier=tier)
            assert raised.value.limit == 100
        await assert_nothing_stored(mem, "k")


async def test_none_as_an_option_is_a_value_where_the_field_takes_none(
        tmp_path: Path, clock: ManualClock) -> None:
    """Memory.open(session_max_items=None) means no item bound, as in MemoryConfig (before,
    the None was dropped and the default bound kept)."""
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock, session_max_items=None,
                           session_max_bytes=None) as mem:
        held = mem.stats()["tiers"]["SESSION"]["backend_stats"]
        assert (held["max_items"], held["max_bytes"]) == (None, None)
    async with Memory.open(path=str(tmp_path / "m.db"), clock=clock, signing_key=None) as mem:
        held = mem.stats()["tiers"]["SESSION"]["backend_stats"]
        assert (held["max_items"], held["max_bytes"]) == (100_000, 512 * 2**20)
