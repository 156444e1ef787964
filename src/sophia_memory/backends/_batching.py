"""What the SQLite and Snowflake engines share: one engine per database within the process,
reference counted (:class:`SharedEngine`); the writer thread's loop that takes queued
operations in batches (block for the first, then take whatever else is already queued, up to a
bound: one commit); and handing the results back to the waiting futures, on their own loops."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, ClassVar, Self

__all__ = ["Result", "SharedEngine", "batches", "deliver"]

#: What an operation came to: its future, and a value or an exception.
Result = tuple[asyncio.Future[Any], Any, BaseException | None]


class SharedEngine:
    """An engine shared by every backend of one identity (a file, an account and schema) in
    the process. Subclasses declare their own ``_registry`` and ``_registry_lock``, and set
    ``_refs = 0`` and ``_closed = False`` in ``__init__``."""

    _registry: ClassVar[dict[Hashable, Any]]
    _registry_lock: ClassVar[threading.Lock]
    _identity: Hashable = None
    _refs: int
    _closed: bool

    @classmethod
    def _shared(cls, identity: Hashable, make: Callable[[], Self]) -> Self:
        """The open engine for ``identity`` (made by ``make`` if there is none), with one more
        reference."""
        with cls._registry_lock:
            engine = cls._registry.get(identity)
            if engine is None or engine._closed:
                engine = make()
                engine._identity = identity
                cls._registry[identity] = engine
            engine._refs += 1
            return engine

    def _unshare(self) -> bool:
        """Drop one reference; True when it was the last: the caller then shuts down."""
        with self._registry_lock:
            self._refs -= 1
            if self._refs > 0 or self._closed:
                return False
            self._closed = True
            if self._registry.get(self._identity) is self:
                del self._registry[self._identity]
            return True


def batches(q: queue.SimpleQueue[Any], stop: object, limit: int) -> Iterator[list[Any]]:
    """Batches of the items put on ``q``, until ``stop`` is taken (what was queued before it
    is still yielded)."""
    while True:
        first = q.get()
        if first is stop:
            return
        batch = [first]
        while len(batch) < limit:
            try:
                nxt = q.get_nowait()
            except queue.Empty:
                break
            if nxt is stop:
                yield batch
                return
            batch.append(nxt)
        yield batch


def deliver(batch: Sequence[Any], results: list[Result]) -> None:
    """Hand each operation's result to its future, on the loop that awaits it (``op.loop``):
    one callback per loop for the whole batch."""
    if not batch:
        return
    first = batch[0].loop
    by_loop: dict[asyncio.AbstractEventLoop, list[Result]] = {}
    if all(op.loop is first for op in batch):
        by_loop[first] = results
    else:
        for op, item in zip(batch, results, strict=True):
            by_loop.setdefault(op.loop, []).append(item)
    for loop, items in by_loop.items():
        # RuntimeError: that loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(results: list[Result]) -> None:
    for fut, value, exc in results:
        if fut.done():  # the caller gave up (timeout, cancellation)
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
