"""The tracking link of :class:`~.backend.RedisBackend`: one RESP2 connection on which Redis
reports every write under the backend's prefix (``CLIENT TRACKING ... BCAST``), so in-process
copies above the tier are dropped when another process writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..base import InvalidationListener

__all__ = ["Tracker"]

log = logging.getLogger("sophia_memory")

_CHANNEL = "__redis__:invalidate"
_RETRY_MIN, _RETRY_MAX = 0.05, 2.0  # seconds between attempts to re-open the tracking link
_HEALTH = 5.0  # seconds: an idle tracking link is pinged this often
_PING = "sophia-memory"
_STOP_WAIT = 1.0  # seconds: how long stop() waits for a cancel to take before repeating it


class Tracker:
    """The tracking link: one RESP2 connection that asks Redis to report every write under
    ``prefix`` to itself and listens for the reports. Re-opened with backoff when it fails;
    the listener hears None whenever the link goes down or comes (back) up."""

    def __init__(self, connect: Callable[[], Any], prefix: str,
                 listener: InvalidationListener, errors: tuple[type[BaseException], ...],
                 refused: tuple[type[BaseException], ...]) -> None:
        self.connect = connect
        self.prefix = prefix.encode()
        self.listener = listener
        self.errors = errors
        self.refused = refused
        self.live = asyncio.Event()
        self.invalidations = 0
        self.reconnects = 0
        self.client_id: int | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        delay = _RETRY_MIN
        while True:
            client = self.connect()
            pubsub = client.pubsub()
            try:
                await self._subscribe(pubsub)
                delay = _RETRY_MIN
                heard = time.monotonic()
                me = asyncio.current_task()
                while True:
                    msg = await pubsub.get_message(timeout=_HEALTH)
                    if me is not None and me.cancelling():
                        raise asyncio.CancelledError  # a cancel the timeout swallowed
                    if msg is None:
                        # Silence: ask for a sign of life; a link that gives none is dead
                        # even if its socket is still open (a partition, a lost primary).
                        if time.monotonic() - heard > 2 * _HEALTH:
                            raise ConnectionError("no reply on the tracking link")
                        await pubsub.ping(_PING)
                        continue
                    heard = time.monotonic()
                    if msg["type"] == "message":
                        self._deliver(msg["data"])
            except self.refused as exc:  # the server cannot track (e.g. too old, or a proxy)
                log.warning("Redis refused key tracking (%s): other processes' writes will "
                            "not invalidate this process's copies", exc)
                return
            except self.errors as exc:  # (the builtin ConnectionError is an OSError)
                log.info("Redis tracking link lost (%s); re-opening", exc)
            except Exception as exc:  # never stop tracking silently
                log.warning("Redis tracking link failed (%r); re-opening", exc)
            finally:
                if self.live.is_set():
                    self.live.clear()
                    self.listener(None)  # whatever changed meanwhile is unknown
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            self.reconnects += 1
            await asyncio.sleep(delay)  # real time: a reconnection cadence
            delay = min(delay * 2, _RETRY_MAX)

    async def _subscribe(self, pubsub: Any) -> None:
        await pubsub.connect()
        conn = pubsub.connection
        await conn.send_command("CLIENT", "ID")
        self.client_id = client_id = await conn.read_response()
        await conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST",
                                "PREFIX", self.prefix)
        reply = await conn.read_response()
        if isinstance(reply, Exception):
            raise reply
        await pubsub.subscribe(_CHANNEL)
        while True:  # wait for the confirmation: from here on, no write goes unreported
            msg = await pubsub.get_message(timeout=_HEALTH)
            if msg is not None and msg["type"] == "subscribe":
                break
        self.live.set()
        self.listener(None)  # copies made before the link was up may be stale

    def _deliver(self, data: Any) -> None:
        if data is None:  # FLUSHDB / FLUSHALL
            self.listener(None)
            return
        cut = len(self.prefix)
        keys = [raw[cut:].decode("utf-8", "surrogateescape") for raw in data
                if raw.startswith(self.prefix)]
        if keys:
            self.invalidations += len(keys)
            self.listener(keys)

    async def stop(self) -> None:
        task = self.task
        if task is None:
            return
        # A cancel that lands as get_message's own timeout expires can be taken for that
        # timeout and lost (asyncio.timeout on Python 3.11): the task then waits on, and
        # close would hang. So the cancel is repeated until the task has ended.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_STOP_WAIT)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
