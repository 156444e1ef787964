"""Redis commands packed by hiredis and sent on a redis-py client's own pooled connections
(:class:`Wire`), the fast path of :class:`~.backend.RedisBackend` off Cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["Wire", "wire_for"]


class Wire:
    """Commands packed by hiredis (C) and sent on the client's own pooled connections.

    The same pool, connections, parser, health checks and error types as the client's calls,
    without redis-py's per-command bookkeeping (observability hooks, retry wrapper, response
    callbacks, pipeline stacks). A pipeline is what redis-py's is: every command packed into
    one write, then every reply read; an error reply is raised once all replies are read.

    A connection that fails or is cancelled mid-call is disconnected before it goes back to
    the pool, so no reply is ever read by the wrong call; an error reply (read whole) keeps
    its connection. A connection-level failure is retried once on a fresh connection, as
    redis-py's client retries it: a connection the server dropped while idle, or a Sentinel
    primary that was demoted (the retry asks the Sentinels again). The front's deadline
    bounds both attempts together.
    """

    __slots__ = ("pack", "pool", "refused", "releasing", "retryable")

    def __init__(self, pool: Any, pack: Callable[[tuple[Any, ...]], bytes],
                 retryable: type[BaseException], refused: type[BaseException]) -> None:
        self.pool = pool
        self.pack = pack
        self.retryable = retryable
        self.refused = refused
        self.releasing: set[asyncio.Task[None]] = set()

    async def one(self, *args: Any) -> Any:
        """One command's reply (bytes, not decoded)."""
        packed = self.pack(args)
        try:
            return await self._send(packed, 0)
        except self.retryable:
            return await self._send(packed, 0)

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands``, sent in one write (not a transaction)."""
        pack = self.pack
        packed = b"".join([pack(c) for c in commands])
        try:
            return await self._send(packed, len(commands))  # type: ignore[no-any-return]
        except self.retryable:
            return await self._send(packed, len(commands))  # type: ignore[no-any-return]

    async def _send(self, packed: bytes, replies: int) -> Any:
        """Send ``packed`` and read one reply (``replies`` 0) or a list of ``replies``."""
        pool = self.pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed)
            read = conn.read_response
            if not replies:
                return await read(disable_decoding=True)
            out: list[Any] = []
            error: BaseException | None = None
            for _ in range(replies):
                try:
                    out.append(await read(disable_decoding=True))
                except self.refused as exc:  # an error reply: read whole, read on
                    out.append(exc)
                    error = error or exc
            if error is not None:
                raise error
            return out
        except self.refused:
            raise  # every reply was read: the connection is in step
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            try:
                await pool.release(conn)
            except asyncio.CancelledError:  # cut off waiting for the pool: give it back later
                task = asyncio.get_running_loop().create_task(self._release_later(conn))
                self.releasing.add(task)
                task.add_done_callback(self.releasing.discard)
                raise

    async def _release_later(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
            await self.pool.release(conn)


def wire_for(client: Any) -> Wire | None:
    """A :class:`Wire` over ``client``'s pool when that is a plain redis-py pool with hiredis
    installed and the default key encoding; None (use the client's methods) otherwise, e.g.
    for fakeredis or a client pinned to one connection."""
    try:
        import hiredis
        from redis.asyncio import Redis
        from redis.asyncio.connection import ConnectionPool
        from redis.exceptions import ConnectionError as LinkError
        from redis.exceptions import ResponseError
    except ImportError:
        return None
    pool = getattr(client, "connection_pool", None)
    if (not isinstance(client, Redis) or not isinstance(pool, ConnectionPool)
            or getattr(client, "single_connection_client", False)
            or not pool.connection_class.__module__.startswith("redis.")):
        return None
    kwargs = pool.connection_kwargs
    if (kwargs.get("encoding", "utf-8").lower().replace("_", "-") not in ("utf-8", "utf8")
            or kwargs.get("encoding_errors", "strict") != "strict"):
        return None
    return Wire(pool, hiredis.pack_command, LinkError, ResponseError)
