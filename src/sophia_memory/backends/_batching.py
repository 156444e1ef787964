"""The writer threads' loop, shared by the SQLite and Snowflake engines: block for the first
queued operation, then take whatever else is already queued, up to a bound, as one batch (one
commit)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

__all__ = ["batches"]


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
