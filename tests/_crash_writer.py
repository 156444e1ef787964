"""The child process of ``tests/test_crash_safety.py``: writes keys with mixed homes until it
is SIGKILLed, logging every operation to an append-only file.

Run as ``python tests/_crash_writer.py DB LOG SEED``. Several asyncio tasks issue puts,
put_many, deletes and gets at once over three groups of keys:

* ``d..`` keys only ever have durable homes (CORTEX, PERSISTENT, VECTOR, WORKFLOW), so one key
  is often written to two homes and the upper one shadows the lower;
* ``m..`` keys mix SESSION with durable homes;
* ``s..`` keys live in SESSION only, which holds so few items that they spill to CORTEX all
  the time.

Log lines (one ``os.write`` each, so a line is never interleaved with another):

* ``S <op id> <put|put_many|delete> <home|-> <key>[,<key>...]`` before the operation is issued;
* ``A <op id>`` once it returned (acknowledged), fsync'd before the task goes on.

The value a put writes is :func:`value_for` of its key and op id, so the parent can tell from a
value read back which operation wrote it. The parent opens the same file with
:func:`open_memory`, the configuration used here.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
from typing import Any

from sophia_memory import Memory, Tier

DURABLE_HOMES = ("CORTEX", "PERSISTENT", "VECTOR", "WORKFLOW")
D_KEYS = [f"d{i:02}" for i in range(12)]
M_KEYS = [f"m{i:02}" for i in range(12)]
S_KEYS = [f"s{i:02}" for i in range(8)]
ALL_KEYS = D_KEYS + M_KEYS + S_KEYS
TASKS = 4
VECTOR_DIM = 4


def open_memory(path: str) -> Memory:
    """The configuration of the child and of the parent's check: SESSION holds 4 items (so
    items spill to CORTEX constantly), the GPU tier is off (values are str)."""
    return Memory.open(path=path, tiers={Tier.GPU: None, Tier.SESSION: "memory://?max_items=4"},
                       vector_dim=VECTOR_DIM)


def value_for(key: str, op_id: int) -> str:
    return f"{key}@{op_id}"


def vector_for(op_id: int) -> list[float]:
    return [1.0, (op_id % 13) / 13.0, 0.5, ((op_id * 7) % 11) / 11.0]


class Writer:
    def __init__(self, mem: Memory, fd: int, seed: int) -> None:
        self.mem = mem
        self.fd = fd
        self.seed = seed
        self.ids = itertools.count(1)

    def log(self, line: str, sync: bool = False) -> None:
        os.write(self.fd, (line + "\n").encode())
        if sync:
            os.fsync(self.fd)

    def start(self, op: str, home: str, keys: list[str]) -> int:
        op_id = next(self.ids)
        self.log(f"S {op_id} {op} {home} {','.join(keys)}")
        return op_id

    def ack(self, op_id: int) -> None:
        self.log(f"A {op_id}", sync=True)

    async def one(self, rng: random.Random) -> None:
        mem = self.mem
        kind = rng.choices(["put", "put_many", "delete", "get"], [55, 12, 15, 18])[0]
        if kind == "get":
            key = rng.choice(ALL_KEYS)
            if rng.random() < 0.5:
                await mem.get(key)
            else:
                await mem.get_many(rng.sample(ALL_KEYS, 3))
            return
        if kind == "delete":
            keys = rng.sample(ALL_KEYS, rng.choice([1, 1, 1, 2]))
            op_id = self.start("delete", "-", keys)
            if len(keys) == 1:
                await mem.delete(keys[0])
            else:
                await mem.delete_many(keys)
            self.ack(op_id)
            return
        group = rng.choices(["d", "m", "s"], [4, 4, 3])[0]
        if group == "s":
            home, pool = "SESSION", S_KEYS
        elif group == "m":
            home = rng.choice(["SESSION", "SESSION", "CORTEX", "PERSISTENT", "WORKFLOW"])
            pool = M_KEYS
        else:
            home, pool = rng.choice(DURABLE_HOMES), D_KEYS
        if kind == "put_many" and home != "VECTOR":
            keys = rng.sample(pool, rng.randint(2, 4))
            op_id = self.start("put_many", home, keys)
            await mem.put_many({k: value_for(k, op_id) for k in keys}, tier=Tier[home])
            self.ack(op_id)
            return
        key = rng.choice(pool)
        op_id = self.start("put", home, [key])
        extra: dict[str, Any] = {"vector": vector_for(op_id)} if home == "VECTOR" else {}
        await mem.put(key, value_for(key, op_id), tier=Tier[home], **extra)
        self.ack(op_id)

    async def task(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        for _ in range(100_000):  # the parent kills the process long before
            await self.one(rng)
            if rng.random() < 0.3:
                await asyncio.sleep(0)


async def main(db: str, log_path: str, seed: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with open_memory(db) as mem:
        writer = Writer(mem, fd, seed)
        writer.log("R", sync=True)  # open: the parent starts counting from here
        await asyncio.gather(*(writer.task(n) for n in range(TASKS)))
    writer.log("DONE", sync=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
