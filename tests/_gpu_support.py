"""Helpers of the GPU test modules, which must run under plain pytest: the GPU machines have
pytest but not pytest-asyncio, so their tests are synchronous functions that run their
coroutine with :func:`asyncio.run` (and pass with or without pytest-asyncio here)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

P = ParamSpec("P")


def sync_test(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Turn an ``async def`` test into a plain one (same name, same fixtures) that runs it
    in a fresh event loop."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run
