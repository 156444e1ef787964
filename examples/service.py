"""A small asyncio service using sophia_memory as its memory layer.

It answers "requests" (here: a list of prompts) through an LLM-result cache with
single-flight loading, keeps per-user session state with a TTL, and records a durable audit
row per request. Configuration comes from the environment (SOPHIA_MEMORY_*), so the same code
runs on the embedded default on a laptop and on Redis/Snowflake in production.

Run: .venv/bin/python examples/service.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from sophia_memory import Memory, Tier


class AnswerService:
    def __init__(self, mem: Memory) -> None:
        self.mem = mem
        self.llm_calls = 0

    async def _llm(self, prompt: str) -> str:
        self.llm_calls += 1
        await asyncio.sleep(0.02)  # the slow model call
        return prompt.upper()

    async def handle(self, user: str, prompt: str) -> str:
        session = self.mem.namespace(f"user-{user}")
        history = await session.get("history", [])
        answer = await self.mem.get_or_load(f"answer:{prompt}", lambda: self._llm(prompt),
                                            tier=Tier.CORTEX, ttl=3600)
        await session.put("history", [*history, prompt][-10:], tier=Tier.SESSION, ttl=1800)
        await self.mem.put(f"audit:{time.time_ns()}", {"user": user, "prompt": prompt},
                           tier=Tier.PERSISTENT)
        return str(answer)


async def serve(mem: Memory) -> None:
    service = AnswerService(mem)
    prompts = {"ann": ["hello", "bye"] * 10, "bob": ["hello"] * 20, "cy": ["bye"] * 20}

    async def session(user: str) -> int:
        # One user's requests in order: history is read-modify-write.
        return len([await service.handle(user, p) for p in prompts[user]])

    answered = sum(await asyncio.gather(*(session(u) for u in prompts)))
    print(f"{answered} requests, {service.llm_calls} LLM calls")
    print("ann's history:", await mem.namespace("user-ann").get("history"))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # used unless SOPHIA_MEMORY_PATH names a file
        options: dict[str, Any] = {} if os.environ.get("SOPHIA_MEMORY_PATH") else {
            "path": os.path.join(tmp, "svc.db")}
        async with Memory.open(**options) as mem:  # reads SOPHIA_MEMORY_* from the environment
            print("SESSION tier:", mem.stats()["tiers"]["SESSION"]["backend"])
            await serve(mem)


if __name__ == "__main__":
    asyncio.run(main())
