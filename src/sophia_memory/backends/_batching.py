"""What the SQLite and Snowflake engines' writer threads share: the loop that takes queued
operations in batches (block for the first, then take whatever else is already queued, up to a
bound: one commit), and handing the results back to the waiting futures."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

__all__ = ["batches", "resolve"]


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


def resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Set each future's result or exception (on its loop's thread); one whose caller gave up
    (timeout, cancellation) is left alone."""
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
