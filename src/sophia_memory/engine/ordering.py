"""Per-key ordering: striped locks and write generations.

* Every change to a key (put, delete, spill, promotion) holds the lock of the key's stripe,
  so changes to one key are applied one at a time, in order.
* A writer bumps its stripes' generations to odd before it changes anything and back to even
  afterwards. A read notes the generation before it looks; what it schedules (a promotion) is
  installed only if the generation is unchanged and even once it holds the lock: no value
  older than a concurrent write's is ever installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["KeyOrder"]

STRIPES = 4096
MASK = STRIPES - 1  # writes.Writer.put_nowait inlines it


class KeyOrder:
    """The locks and generations of all keys, in :data:`STRIPES` stripes."""

    __slots__ = ("active", "epoch", "gens", "locks")

    def __init__(self) -> None:
        self.locks = [asyncio.Lock() for _ in range(STRIPES)]
        self.gens = [0] * STRIPES
        #: Moves on whenever any write begins or ends (or another process reports writes):
        #: a reader that saw it unchanged with no write ``active`` met no write at all.
        self.epoch = 0
        self.active = 0

    @staticmethod
    def stripe(key: str) -> int:
        return hash(key) & MASK

    def gen(self, key: str) -> int:
        return self.gens[hash(key) & MASK]

    def writing(self, keys: Iterable[str]) -> _Writing:
        """``async with order.writing(keys):`` holds the keys' stripes (taken in order, so
        writers never deadlock) with their generations odd."""
        return _Writing(self, keys)

    def holding(self, keys: Iterable[str]) -> _Holding:
        """``async with order.holding(keys):`` holds the keys' stripes without marking a
        write (for a read that must not interleave with one)."""
        return _Holding(self, keys)

    def moved(self, keys: Iterable[str] | None) -> None:
        """Another process changed ``keys`` (None: any key): their generations move on by
        two, keeping a writer's parity, so no promotion of an earlier read lands."""
        self.epoch += 1
        gens = self.gens
        if keys is None:
            for i in range(STRIPES):
                gens[i] += 2
            return
        for k in keys:
            gens[hash(k) & MASK] += 2

    def stats(self) -> dict[str, Any]:
        return {"stripes": STRIPES, "locked": sum(lock.locked() for lock in self.locks)}


class _Holding:
    __slots__ = ("order", "stripes")

    def __init__(self, order: KeyOrder, keys: Iterable[str]) -> None:
        self.order = order
        if isinstance(keys, (dict, list)) and len(keys) == 1:  # the common single put
            self.stripes = [hash(next(iter(keys))) & MASK]
        else:
            self.stripes = sorted({hash(k) & MASK for k in keys})

    async def __aenter__(self) -> None:
        locks, taken = self.order.locks, 0
        try:
            for s in self.stripes:
                await locks[s].acquire()
                taken += 1
        except BaseException:
            for s in self.stripes[:taken]:
                locks[s].release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        locks = self.order.locks
        for s in self.stripes:
            locks[s].release()


class _Writing(_Holding):
    __slots__ = ()

    async def __aenter__(self) -> None:
        # _Holding.__aenter__'s acquisition, written out: every general write passes here,
        # and awaiting it through super() cost a coroutine frame per write.
        order = self.order
        locks, taken = order.locks, 0
        try:
            for s in self.stripes:
                await locks[s].acquire()
                taken += 1
        except BaseException:
            for s in self.stripes[:taken]:
                locks[s].release()
            raise
        gens = order.gens
        for s in self.stripes:
            gens[s] += 1
        order.epoch += 1
        order.active += 1

    async def __aexit__(self, *exc: object) -> None:
        order = self.order
        gens, locks = order.gens, order.locks
        for s in self.stripes:
            gens[s] += 1
            locks[s].release()
        order.epoch += 1
        order.active -= 1
