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
import hashlib
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from ..memory import Memory
from ..sync import _LoopThread

__all__ = ["Bridge", "name_for"]

T = TypeVar("T")

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

    def bind(self) -> None:
        """Remember the running loop as the memory's (called by the async methods)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

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


class ClosesBridge:
    """``close()`` and the ``with`` statement of the adapters: they close the memory and its
    loop thread when the adapter's own ``open()`` made them, and nothing otherwise."""

    _bridge: Bridge

    def close(self) -> None:
        """Close the memory and its loop thread if :meth:`open` made them; else nothing."""
        self._bridge.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
