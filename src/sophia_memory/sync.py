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
import functools
import inspect
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from .memory import Memory

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

    ``cached`` is not offered (it decorates async functions); use ``get_or_load`` with a
    plain function as the loader instead.
    """

    def __init__(self, memory: Memory, runner: _LoopThread, owner: bool = True) -> None:
        self._memory = memory
        self._runner = runner
        self._owner = owner

    @classmethod
    def open(cls, *args: Any, **kwargs: Any) -> SyncMemory:
        """Open a :class:`Memory` (same arguments as :meth:`Memory.open`)."""
        runner = _LoopThread()
        try:
            memory = Memory.open(*args, **kwargs)
        except BaseException:
            runner.stop()
            raise
        return cls(memory, runner)

    def __getattr__(self, name: str) -> Any:
        if name == "cached":
            raise AttributeError("SyncMemory has no cached(); use get_or_load with a loader")
        attr = getattr(self._memory, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return call

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
