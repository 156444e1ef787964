"""Quickstart: the async API on the embedded default (no servers, no GPU needed).

Run: .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np

from sophia_memory import Memory, Tier


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with Memory.open(path=str(Path(tmp) / "memory.db")) as mem:
            # Memory.open() reads SOPHIA_MEMORY_*: SOPHIA_MEMORY_SESSION_URL=redis://... for Redis.
            print("SESSION tier:", mem.stats()["tiers"]["SESSION"]["backend"])

            # Session state in SESSION (in-process by default), expiring in an hour.
            await mem.put("user:42", {"cart": [1, 2]}, tier=Tier.SESSION, ttl=3600)
            print("session:", await mem.get("user:42"))

            # Durable memory in SQLite; the first read promotes a copy into SESSION.
            await mem.put("profile:42", {"name": "Ada", "plan": "pro"}, tier=Tier.PERSISTENT)
            print("entry:", await mem.get_entry("profile:42"))
            await mem.flush()
            entry = await mem.get_entry("profile:42")
            print("after promotion, served by:", entry.tier if entry else None)

            # Arrays live in named L0 pools (host memory when there is no GPU).
            weights = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
            await mem.put("layer0", weights, tier=Tier.GPU, pool="active_models")
            print("array back with dtype/shape:", (await mem.get("layer0")).shape)

            # Memoise an async function: concurrent callers share one computation.
            @mem.cached(tier=Tier.CORTEX, ttl=86400)
            async def complete(prompt: str, model: str) -> str:
                await asyncio.sleep(0.01)  # an LLM call would go here
                return f"{model} says hello to {prompt}"

            print(await asyncio.gather(*(complete("you", "m1") for _ in range(3))))

            # Tenants cannot see each other's keys.
            a, b = mem.namespace("tenant-a"), mem.namespace("tenant-b")
            await a.put("settings", {"theme": "dark"})
            print("tenant-b sees:", await b.get("settings"))

            print("SESSION stats:", {k: v for k, v in mem.stats()["tiers"]["SESSION"].items()
                                     if k in ("hits", "misses", "puts", "promotions")})


if __name__ == "__main__":
    asyncio.run(main())
