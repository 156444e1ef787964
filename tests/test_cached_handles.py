"""@mem.cached functions expose the key a call uses and can forget one call's result."""

from __future__ import annotations

import asyncio

from sophia_memory import Cached, Memory, Tier


async def test_key_and_invalidate_address_one_call(mem: Memory) -> None:
    calls: list[tuple[str, int]] = []

    @mem.cached(tier=Tier.PERSISTENT)
    async def summarise(text: str, n: int = 3) -> str:
        calls.append((text, n))
        return text[:n]

    assert isinstance(summarise, Cached) and summarise.__name__ == "summarise"
    assert summarise.key("abcdef") == summarise.key("abcdef", 3) == summarise.key("abcdef", n=3)
    assert summarise.key("abcdef") != summarise.key("abcdef", 4)
    assert await summarise("abcdef") == "abc"
    assert await summarise("abcdef", n=4) == "abcd"
    assert await mem.get(summarise.key("abcdef")) == "abc"
    assert await summarise.invalidate("abcdef") is True
    assert await summarise.invalidate("abcdef") is False  # nothing held any more
    assert await mem.get(summarise.key("abcdef")) is None
    assert await mem.get(summarise.key("abcdef", 4)) == "abcd"  # the other call is kept
    assert await summarise("abcdef") == "abc"
    assert calls == [("abcdef", 3), ("abcdef", 4), ("abcdef", 3)]


async def test_a_custom_key_function_is_what_key_returns(mem: Memory) -> None:
    @mem.cached(key=lambda user, **_: f"profile:{user}")
    async def profile(user: str, *, fresh: bool = False) -> dict[str, str]:
        return {"user": user}

    assert profile.key("u1") == "profile:u1"
    await profile("u1")
    assert await mem.get("profile:u1") == {"user": "u1"}
    assert await profile.invalidate("u1") and await mem.get("profile:u1") is None


async def test_methods_bind_and_share_one_entry_per_argument(mem: Memory) -> None:
    class Model:
        def __init__(self) -> None:
            self.calls = 0

        @mem.cached()
        async def answer(self, q: str) -> str:
            self.calls += 1
            return q.upper()

    a, b = Model(), Model()
    assert await a.answer("hi") == "HI"
    assert await b.answer("hi") == "HI"  # the instance is not part of the key
    assert (a.calls, b.calls) == (1, 0)
    assert a.answer.key("hi") == b.answer.key("hi")
    assert await b.answer.invalidate("hi")
    assert await b.answer("hi") == "HI" and b.calls == 1


async def test_invalidate_during_a_load_leaves_no_stale_value(mem: Memory) -> None:
    gate = asyncio.Event()

    @mem.cached()
    async def slow(x: int) -> int:
        await gate.wait()
        return x * 2

    task = asyncio.create_task(slow(21))
    await asyncio.sleep(0)
    assert await slow.invalidate(21) is False  # nothing stored yet
    gate.set()
    assert await task == 42
    assert await mem.get(slow.key(21)) == 42
