"""What the integrations share: synchronous calls onto a Memory's event loop, and names that
fit a namespace.

LangGraph and LangChain call their savers and caches both from coroutines and from plain
threads. The adapters are written once, as coroutines over the async :class:`Memory`; their
synchronous methods hand the coroutine to the loop the memory lives on
(:meth:`Bridge.run`). That loop is either the caller's (an adapter built on an open
``Memory`` inside async code; the synchronous methods then work from other threads while the
loop runs) or a private one on a background thread that the adapter owns (``open()``), the
same loop thread :class:`~sophia_memory.sync.SyncMemory` runs on.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from ..memory import Memory
from ..sync import _LoopThread

__all__ = ["Bridge", "name_for", "on_memory_loop", "on_memory_loop_iter"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Longest raw text used as a namespace name; longer (or unusable) text is hashed.
_NAME_BYTES = 100


def name_for(kind: str, text: str) -> str:
    """A namespace name (or key) for ``text`` that no other text maps to: ``kind=text`` when
    ``text`` is short, valid UTF-8 and free of the namespace separator, else ``kind#<sha256>``.
    """
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
        return f"{kind}#{hashlib.sha256(raw).hexdigest()[:40]}"
    if text and len(raw) <= _NAME_BYTES and "\x1f" not in text:
        return f"{kind}={text}"
    return f"{kind}#{hashlib.sha256(raw).hexdigest()[:40]}"


class Bridge:
    """A :class:`Memory` and the event loop it belongs to."""

    __slots__ = ("_thread", "loop", "memory")

    def __init__(self, memory: Memory, thread: _LoopThread | None = None) -> None:
        self.memory = memory
        self._thread = thread
        self.loop: asyncio.AbstractEventLoop | None
        if thread is not None:
            self.loop = thread.loop
        else:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                self.loop = None  # learnt on the first async call

    @classmethod
    def open(cls, options: dict[str, Any]) -> Bridge:
        """A new :class:`Memory` (``Memory.open(**options)``) on a private loop thread."""
        thread = _LoopThread()
        try:
            memory = Memory.open(**options)
        except BaseException:
            thread.stop()
            raise
        return cls(memory, thread)

    @property
    def owns_memory(self) -> bool:
        return self._thread is not None

    def here(self) -> bool:
        """Whether the running loop is the memory's (the first async call, before any loop
        is known, makes its loop the memory's)."""
        running = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = running
        return self.loop is running

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the memory's loop: here when the caller is on it, else handed to
        it (an adapter from ``open()`` used from the caller's own loop) and awaited from
        here. The memory's background work (promotion, spill) stays on its one loop."""
        if self.here():
            return await coro
        loop = self.loop
        assert loop is not None
        if loop.is_closed() or not loop.is_running():
            coro.close()
            raise RuntimeError(
                "the memory's event loop has stopped: an adapter built on a Memory serves the "
                "loop that memory was opened on; use the adapter's open() for a memory of its "
                "own that any loop and thread can call")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the memory's loop and wait for its result (synchronous methods).

        Raises RuntimeError, naming the fix, when that cannot work: no loop is known or it is
        not running (open the adapter with ``open()`` for synchronous code), or the caller is
        on that very loop (waiting would deadlock it: use the async method).
        """
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            raise RuntimeError(
                "synchronous calls need the memory's event loop running in another thread: "
                "build the adapter with its open() classmethod (it runs its own loop), or "
                "call the async methods")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError(
                "a synchronous call on the event loop's own thread would block it forever: "
                "use the async method (e.g. aget_tuple instead of get_tuple)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self) -> None:
        """Close the memory and stop the loop thread, when this bridge opened them."""
        thread = self._thread
        if thread is not None and thread.thread.is_alive():
            thread.run(self.memory.close())
            thread.stop()


class _HasBridge:
    _bridge: Bridge


def on_memory_loop(method: F) -> F:
    """An adapter's async method, run on its memory's loop (:meth:`Bridge.call`)."""
    @functools.wraps(method)
    async def on_loop(self: _HasBridge, /, *args: Any, **kwargs: Any) -> Any:
        return await self._bridge.call(method(self, *args, **kwargs))
    return cast(F, on_loop)


def on_memory_loop_iter(method: F) -> F:
    """An adapter's async generator, run on its memory's loop: streamed when the caller is
    on that loop, else collected there and then yielded here."""
    @functools.wraps(method)
    async def on_loop(self: _HasBridge, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        bridge = self._bridge
        if bridge.here():
            async for item in method(self, *args, **kwargs):
                yield item
            return

        async def collect() -> list[Any]:
            return [item async for item in method(self, *args, **kwargs)]

        for item in await bridge.call(collect()):
            yield item
    return cast(F, on_loop)


class ClosesBridge(_HasBridge):
    """``close()`` and the ``with`` statement of the adapters: they close the memory and its
    loop thread when the adapter's own ``open()`` made them, and nothing otherwise."""

    def close(self) -> None:
        """Close the memory and its loop thread if :meth:`open` made them; else nothing."""
        self._bridge.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
