"""What the SQLite and Snowflake engines share: one engine per database within the process,
reference counted (:class:`SharedEngine`); the writer thread's loop that takes queued
operations in batches (block for the first, then take whatever else is already queued, up to a
bound: one commit); and handing the results back to the waiting futures, on their own loops.

The registries are per process. An engine's threads and connections do not survive ``fork``
(the threads are gone in the child, and SQLite forbids using a connection across a fork), so
a forked child starts with empty registries (``os.register_at_fork``) and never receives its
parent's engine; an engine a child inherited anyway (through an open backend) refuses work
and is abandoned, not closed, when released there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, ClassVar, Self

__all__ = ["Result", "SharedEngine", "batches", "deliver"]

#: What an operation came to: its future, and a value or an exception.
Result = tuple[asyncio.Future[Any], Any, BaseException | None]


class SharedEngine:
    """An engine shared by every backend of one identity (a file, an account and schema) in
    the process. Subclasses declare their own ``_registry`` and ``_registry_lock`` and call
    ``super().__init__()``. ``pid`` is the process that made the engine: it is shared only
    within that process."""

    _registry: ClassVar[dict[Hashable, Any]]
    _registry_lock: ClassVar[threading.Lock]
    _identity: Hashable = None

    def __init__(self) -> None:
        self._refs = 0
        self._closed = False
        self.pid = os.getpid()

    @property
    def foreign(self) -> bool:
        """Whether this engine was made by another process (this one is a forked child)."""
        return self.pid != os.getpid()

    @classmethod
    def _shared(cls, identity: Hashable, make: Callable[[], Self]) -> Self:
        """The open engine for ``identity`` (made by ``make`` if there is none), with one more
        reference."""
        with cls._registry_lock:
            engine = cls._registry.get(identity)
            if engine is None or engine._closed or engine.foreign:
                engine = make()
                engine._identity = identity
                cls._registry[identity] = engine
            engine._refs += 1
            return engine

    def _unshare(self) -> bool:
        """Drop one reference; True when it was the last: the caller then shuts down. An
        engine inherited through ``fork`` is never shut down here: its threads do not exist in
        this process and its connections are the parent's."""
        if self.foreign:
            return False
        with self._registry_lock:
            self._refs -= 1
            if self._refs > 0 or self._closed:
                return False
            self._closed = True
            if self._registry.get(self._identity) is self:
                del self._registry[self._identity]
            return True


def _reset_registries_in_child() -> None:
    """After ``fork``, in the child: empty registries and fresh locks (a lock another thread
    held at the fork would stay held for good in the child)."""
    todo = list(SharedEngine.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "_registry" in cls.__dict__:
            cls._registry = {}
            cls._registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # no fork (and no hook) on Windows
    os.register_at_fork(after_in_child=_reset_registries_in_child)


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
