"""A synchronous facade for scripts and notebooks that run no event loop.

One thin wrapper, not a second implementation: :class:`SyncMemory` owns a private event loop
on a background thread and runs each call of the async :class:`~sophia_memory.Memory` there.

>>> from sophia_memory.sync import SyncMemory
>>> with SyncMemory.open() as mem:                               # doctest: +SKIP
...     mem.put("k", [1, 2])
...     mem.get("k")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from .clock import Clock
from .config import MemoryConfig
from .memory import Memory
from .tiers import Entry, Hit, Tier

__all__ = ["SyncMemory"]

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sophia-memory-sync",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SyncMemory:
    """Every coroutine method of :class:`Memory` as a blocking call, same names and arguments.

    Each method is spelled out with its signature, so a type checker catches a misspelt
    method or argument (a test keeps them equal to :class:`Memory`'s). ``cached`` is not
    offered (it decorates async functions); use ``get_or_load`` with a plain function as the
    loader instead.
    """

    def __init__(self, memory: Memory, runner: _LoopThread, owner: bool = True) -> None:
        self._memory = memory
        self._runner = runner
        self._owner = owner

    @classmethod
    def open(cls, config: MemoryConfig | None = None, *, clock: Clock | None = None,
             **options: Any) -> SyncMemory:
        """Open a :class:`Memory` (same arguments as :meth:`Memory.open`)."""
        runner = _LoopThread()
        try:
            memory = Memory.open(config, clock=clock, **options)
        except BaseException:
            runner.stop()
            raise
        return cls(memory, runner)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    # -- what Memory offers, blocking -----------------------------------------------------------

    @property
    def config(self) -> MemoryConfig:
        return self._memory.config

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return self._memory.tiers

    def get(self, key: str, default: Any = None, *, version: int | None = None) -> Any:
        return self._run(self._memory.get(key, default, version=version))

    def get_entry(self, key: str, *, promote: bool = True) -> Entry | None:
        return self._run(self._memory.get_entry(key, promote=promote))

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return self._run(self._memory.get_many(keys))

    def exists(self, key: str) -> bool:
        return self._run(self._memory.exists(key))

    def history(self, key: str, limit: int | None = None) -> list[Entry]:
        return self._run(self._memory.history(key, limit))

    @overload
    def put(self, key: str, value: Any, *, tier: Literal[Tier.WORKFLOW],
            ttl: float | timedelta | None = None, pool: str | None = None,
            expected_version: int | None = None, meta: Mapping[str, Any] | None = None,
            vector: Any = None) -> int: ...

    @overload
    def put(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
            ttl: float | timedelta | None = None, pool: str | None = None,
            expected_version: int | None = None, meta: Mapping[str, Any] | None = None,
            vector: Any = None) -> int | None: ...

    def put(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
            ttl: float | timedelta | None = None, pool: str | None = None,
            expected_version: int | None = None, meta: Mapping[str, Any] | None = None,
            vector: Any = None) -> int | None:
        return self._run(self._memory.put(key, value, tier=tier, ttl=ttl, pool=pool,
                                          expected_version=expected_version, meta=meta,
                                          vector=vector))

    def put_many(self, items: Mapping[str, Any], *, tier: Tier | str | int | None = None,
                 ttl: float | timedelta | None = None,
                 vectors: Mapping[str, Any] | None = None) -> None:
        self._run(self._memory.put_many(items, tier=tier, ttl=ttl, vectors=vectors))

    def delete(self, key: str) -> bool:
        return self._run(self._memory.delete(key))

    def delete_many(self, keys: Iterable[str]) -> int:
        return self._run(self._memory.delete_many(keys))

    def get_or_load(self, key: str, loader: Callable[[], Awaitable[Any] | Any], *,
                    tier: Tier | str | int | None = None,
                    ttl: float | timedelta | None = None,
                    meta: Mapping[str, Any] | None = None) -> Any:
        return self._run(self._memory.get_or_load(key, loader, tier=tier, ttl=ttl, meta=meta))

    def add(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
            ttl: float | timedelta | None = None) -> bool:
        return self._run(self._memory.add(key, value, tier=tier, ttl=ttl))

    def incr(self, key: str, delta: int = 1, *, tier: Tier | str | int | None = None,
             ttl: float | timedelta | None = None) -> int:
        return self._run(self._memory.incr(key, delta, tier=tier, ttl=ttl))

    def decr(self, key: str, delta: int = 1, *, tier: Tier | str | int | None = None,
             ttl: float | timedelta | None = None) -> int:
        return self._run(self._memory.decr(key, delta, tier=tier, ttl=ttl))

    def compare_and_set(self, key: str, expected: Any, value: Any, *,
                        tier: Tier | str | int | None = None,
                        ttl: float | timedelta | None = None) -> bool:
        return self._run(self._memory.compare_and_set(key, expected, value, tier=tier,
                                                      ttl=ttl))

    def touch(self, key: str, ttl: float | timedelta | None, *,
              tier: Tier | str | int | None = None) -> bool:
        return self._run(self._memory.touch(key, ttl, tier=tier))

    def ttl(self, key: str, *, tier: Tier | str | int | None = None) -> float | None:
        return self._run(self._memory.ttl(key, tier=tier))

    def clear(self, *, tier: Tier | str | int | None = None,
              namespace: str | None = None) -> int:
        return self._run(self._memory.clear(tier=tier, namespace=namespace))

    def search(self, vector: Any, k: int = 10, *, metric: str | None = None,
               min_score: float | None = None) -> list[Hit]:
        return self._run(self._memory.search(vector, k, metric=metric, min_score=min_score))

    def search_batch(self, vectors: Any, k: int = 10, *, metric: str | None = None,
                     min_score: float | None = None) -> list[list[Hit]]:
        return self._run(self._memory.search_batch(vectors, k, metric=metric,
                                                   min_score=min_score))

    def keys(self, tier: Tier | str | int) -> list[str]:
        return self._run(self._memory.keys(tier))

    def flush(self) -> None:
        self._run(self._memory.flush())

    def purge_expired(self) -> int:
        return self._run(self._memory.purge_expired())

    def stats(self) -> dict[str, Any]:
        return self._memory.stats()

    def namespace(self, name: str) -> SyncMemory:
        """A namespace view (see :meth:`Memory.namespace`) on the same loop."""
        return SyncMemory(self._memory.namespace(name), self._runner, owner=False)

    def close(self) -> None:
        """Close the memory and stop its loop thread (views only close nothing)."""
        if self._owner and self._runner.thread.is_alive():
            self._runner.run(self._memory.close())
            self._runner.stop()

    def __enter__(self) -> SyncMemory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
