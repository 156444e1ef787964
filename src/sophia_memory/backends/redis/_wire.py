"""Auto-pipelining for :class:`~.backend.RedisBackend` (:class:`Wire`; on Cluster one per node,
:class:`ClusterWire`): every
command issued by any coroutine in one event-loop iteration is packed by hiredis and written
to the server at once, on a small fixed set of connections, and each reply goes back to the
caller that sent its command.

Why: a service has hundreds or thousands of requests in flight. With a connection per call,
1,000 concurrent callers need 1,000 connections (redis-py's default pool raises "Too many
connections" past 100, and a blocking pool makes callers queue for one); here they share
``links`` connections (default 2), and the server answers a whole iteration's commands from
one read. Measured side by side in ``benchmarks/bench_load.py``.

How:

* A call packs its command and queues it with a future; the first call of an iteration
  schedules one flush (``loop.call_soon``). The flush writes every queued command in one
  write and appends the futures, in the same order, to that connection's ``waiting`` queue.
* Each connection's transport hands what arrives to a protocol of this module (no reader
  task, no stream buffer) that feeds a hiredis reader and gives each complete reply to the
  future at the head of ``waiting``: replies come back in the order the commands were
  written, so the n-th reply is the n-th command's. A call of several commands
  (a pipeline) takes that many replies; an error reply among them is raised once all are in.
* Cancellation (the front's deadline) cancels only the caller's future: its reply, when it
  arrives, is read by the connection's protocol and dropped, so no caller ever reads
  another's reply. A command whose caller was cancelled before the flush is never sent.
* Waiting for a connection is waiting on the future: the front's deadline bounds it. A
  connection that cannot be opened fails the calls queued for it at once (connection refused
  is the tier's fault: the breaker counts it); a connection that is lost fails the calls
  waiting on it, each of which is sent again once on a fresh connection, as redis-py's client
  retries (a connection the server dropped while idle; a Sentinel primary that was demoted:
  its ``READONLY`` reply drops the connection and the retry asks the Sentinels again). The
  front's deadline bounds both attempts together.

The connections are made by the client's own pool class and settings (address, TLS,
credentials, database, Sentinel discovery) and then read by this module; they speak RESP2 so
that no push message can ever come between a command and its reply. They are not counted in
the pool's ``max_connections`` (the pool still serves ``SCAN`` for ``keys()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ClusterWire", "Wire", "cluster_wire_for", "wire_for"]

_INCOMPLETE = object()  # what the hiredis reader returns while a reply is incomplete


class _Many:
    """The replies of one pipelined call of ``count`` commands, gathered in order; ``keep``:
    error replies are handed back among the replies instead of raised."""

    __slots__ = ("count", "future", "keep", "replies")

    def __init__(self, future: asyncio.Future[Any], count: int, keep: bool = False) -> None:
        self.future = future
        self.count = count
        self.keep = keep
        self.replies: list[Any] = []


class _Link(asyncio.Protocol):
    """One connection, read by this protocol once redis-py has opened it (handshake done):
    each chunk that arrives is fed to the hiredis reader and every complete reply is handed to
    the call at the head of ``waiting``, in the transport's callback, with no reader task."""

    def __init__(self, wire: Wire, conn: Any, parser: Any) -> None:
        self.wire = wire
        self.conn = conn
        self.parser = parser
        #: What was written here and awaits its reply, in write order (the queue's items).
        self.waiting: deque[tuple[bytes, Any, bool]] = deque()
        self.lost = False
        stream = conn._reader
        self.transport: asyncio.Transport = conn._writer.transport
        leftover = bytes(getattr(stream, "_buffer", b""))
        self.transport.set_protocol(self)  # from here on, what arrives comes to us
        if leftover:
            self.data_received(leftover)

    @property
    def usable(self) -> bool:
        return not self.lost and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        parser, waiting = self.parser, self.waiting
        wire = self.wire
        wire.heard = time.monotonic()
        refused, many = wire.refused, _Many
        try:
            parser.feed(data)
            reply = parser.gets()
            while reply is not _INCOMPLETE:
                if not waiting:
                    raise wire.link_error("a reply nobody asked for: connection out of step")
                if type(reply) is refused and wire.sentinel \
                        and str(reply).startswith("READONLY"):
                    # the primary was demoted: drop the link, the retry asks the Sentinels
                    raise wire.link_error(f"Redis primary is read-only now: {reply}")
                entry = waiting[0][1]
                if type(entry) is many:
                    entry.replies.append(reply)
                    if len(entry.replies) == entry.count:
                        waiting.popleft()
                        future = entry.future
                        if not future.done():
                            errors = () if entry.keep else [
                                r for r in entry.replies if type(r) is refused]
                            if errors:
                                future.set_exception(errors[0])
                            else:
                                future.set_result(entry.replies)
                else:
                    waiting.popleft()
                    if not entry.done():  # else cancelled: the reply is dropped here
                        if type(reply) is refused:
                            entry.set_exception(reply)
                        else:
                            entry.set_result(reply)
                reply = parser.gets()
        except Exception as exc:  # a protocol error, or out of step: this link is done
            wire._drop(self, exc)

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire._drop(self, exc or self.wire.link_error("Connection closed by server."))

    def close(self) -> None:
        self.lost = True
        with contextlib.suppress(Exception):
            self.transport.close()


class Wire:
    """Commands of every caller, written together on ``links`` shared connections (see the
    module doc). ``pool`` is a redis-py asyncio connection pool (plain or Sentinel) whose
    connection class and settings make the connections; ``pack`` packs one command (hiredis);
    ``link_error`` is the driver's connection error (raised when a connection is lost),
    ``refused`` its error-reply class (an error reply is a call's own failure)."""

    __slots__ = ("batches", "closed", "commands", "connecting", "heard", "link_error", "links",
                 "opened", "pack", "pool", "queue", "refused", "scheduled", "sentinel", "size")

    def __init__(self, pool: Any, pack: Callable[[tuple[Any, ...]], bytes],
                 link_error: type[Exception], refused: type[Exception], *, links: int = 2,
                 sentinel: bool = False) -> None:
        self.pool = pool
        self.pack = pack
        self.link_error = link_error
        self.refused = refused
        self.size = max(1, links)
        self.sentinel = sentinel
        self.links: list[_Link] = []
        #: Commands waiting for the next write: (packed, future or _Many, sent once before).
        self.queue: list[tuple[bytes, Any, bool]] = []
        self.scheduled = False
        self.connecting: asyncio.Task[None] | None = None
        self.closed = False
        #: Figures for stats(): writes made, commands sent, connections opened.
        self.batches = self.commands = self.opened = 0
        #: When the server last sent anything (``time.monotonic()``).
        self.heard = -float("inf")

    def answered_within(self, seconds: float) -> bool:
        """Whether the server sent replies in the last ``seconds`` on a connection that is
        still open: a call that timed out meanwhile waited in a queue (overload), not on a
        server that stopped answering."""
        return (time.monotonic() - self.heard < seconds
                and any(link.usable for link in self.links))

    # -- calls ------------------------------------------------------------------------------

    def one(self, *args: Any) -> asyncio.Future[Any]:
        """The future of one command's reply (bytes, not decoded); an error reply is raised
        when it is awaited."""
        return self._submit(self.pack(args), 0)

    def pipeline(self, commands: list[tuple[Any, ...]], *,
                 keep: bool = False) -> asyncio.Future[list[Any]]:
        """The future of the replies of ``commands``, written together (not a transaction).
        An error reply among them is raised once every reply is in (``keep``: handed back in
        its place among the replies)."""
        pack = self.pack
        return self._submit(b"".join([pack(c) for c in commands]), len(commands), keep)

    def _submit(self, packed: bytes, count: int, keep: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.closed:
            future.set_exception(self.link_error("the Redis backend is closed"))
            return future
        self.queue.append((packed, future if not count else _Many(future, count, keep),
                           False))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._flush)
        return future

    # -- writing ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write everything queued in this iteration to one connection, in one write."""
        self.scheduled = False
        queue = self.queue
        if not queue:
            return
        link = self._pick()
        if link is None:  # none open yet: the queue waits for the connection being opened
            self._open_soon()
            return
        self.queue = []
        out: list[bytes] = []
        waiting = link.waiting
        for item in queue:
            entry = item[1]
            future = entry if type(entry) is not _Many else entry.future
            if future.done():  # cancelled (its deadline passed) before it was written
                continue
            out.append(item[0])
            waiting.append(item)
        if out:
            link.transport.write(b"".join(out))
            self.batches += 1
            self.commands += len(out)

    def _pick(self) -> _Link | None:
        """The open connection with the fewest calls waiting; opens another while fewer than
        ``size`` are open and every open one is busy."""
        best: _Link | None = None
        for link in self.links:
            if link.usable and (best is None or len(link.waiting) < len(best.waiting)):
                best = link
        if (best is None or best.waiting) and len(self.links) < self.size:
            self._open_soon()
        return best

    def _open_soon(self) -> None:
        if self.connecting is None and not self.closed:
            self.connecting = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            import hiredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = self.pool
            # RESP2: no push message can come between a command and its reply. One attempt
            # (redis-py retries a connect with backoff): a refused connection fails the calls
            # waiting for it now, and the breaker, not a retry loop, spaces the next tries.
            conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2,
                                            "retry": Retry(NoBackoff(), 0)})
            await conn.connect()  # a Sentinel-managed connection asks the Sentinels here
            if self.closed:
                await conn.disconnect(nowait=True)
                return
            self.links.append(_Link(self, conn, hiredis.Reader(replyError=self.refused,
                                                               notEnoughData=_INCOMPLETE)))
            self.opened += 1
        except asyncio.CancelledError:
            self._fail(self._take_queue(), self.link_error("the Redis backend is closed"))
            raise
        except Exception as exc:  # refused, unreachable, bad credentials: the queued calls'
            if not any(link.usable for link in self.links):
                self._fail(self._take_queue(), exc)
        finally:
            self.connecting = None
        if self.queue and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _take_queue(self) -> list[tuple[bytes, Any, bool]]:
        queue, self.queue = self.queue, []
        return queue

    def _fail(self, items: list[tuple[bytes, Any, bool]], exc: BaseException) -> None:
        """Fail every call in ``items`` with an error of its own (never one instance for
        many callers: each raise would lengthen its traceback)."""
        for _, entry, _ in items:
            future = entry if type(entry) is not _Many else entry.future
            if not future.done():
                err = self.link_error(f"Redis connection failed: {exc}")
                err.__cause__ = exc
                future.set_exception(err)

    def _drop(self, link: _Link, exc: BaseException) -> None:
        """``link`` is lost (or out of step): close it. The calls waiting on it are sent
        again, once, on a fresh connection (as redis-py's client retries a lost connection);
        those sent twice already fail with the connection error."""
        with contextlib.suppress(ValueError):
            self.links.remove(link)
        link.close()
        items = list(link.waiting)
        link.waiting.clear()
        again: list[tuple[bytes, Any, bool]] = []
        failed: list[tuple[bytes, Any, bool]] = []
        for packed, entry, retried in items:
            if retried or self.closed:
                failed.append((packed, entry, retried))
            else:
                if type(entry) is _Many:
                    entry.replies.clear()
                again.append((packed, entry, True))
        self._fail(failed, exc)
        if again:
            self.queue[:0] = again  # first in line, in their order
            if not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    # -- closing and figures ----------------------------------------------------------------

    async def close(self) -> None:
        """Close the connections; calls still waiting fail with the connection error."""
        self.closed = True
        task = self.connecting
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for link in list(self.links):
            self._drop(link, self.link_error("the Redis backend is closed"))
        self._fail(self._take_queue(), self.link_error("the Redis backend is closed"))

    def stats(self) -> dict[str, Any]:
        return {"connections": sum(1 for lk in self.links if lk.usable),
                "waiting": sum(len(lk.waiting) for lk in self.links),
                "queued": len(self.queue), "batches": self.batches, "commands": self.commands,
                "connections_opened": self.opened}


def wire_for(client: Any, links: int = 2, *, sentinel: bool = False) -> Wire | None:
    """A :class:`Wire` over ``client``'s pool when that is a plain (or Sentinel) redis-py pool
    with hiredis installed and the default key encoding; None (use the client's methods)
    otherwise, e.g. for fakeredis or a client pinned to one connection."""
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
            or not pool.connection_class.__module__.startswith("redis.")
            or not hasattr(pool.connection_class, "connect_check_health")):
        return None
    kwargs = pool.connection_kwargs
    if (kwargs.get("encoding", "utf-8").lower().replace("_", "-") not in ("utf-8", "utf8")
            or kwargs.get("encoding_errors", "strict") != "strict"):
        return None
    return Wire(pool, hiredis.pack_command, LinkError, ResponseError, links=links,
                sentinel=sentinel)


#: Error replies that mean "ask the cluster's client": the slot moved (``MOVED``), is moving
#: (``ASK``, ``TRYAGAIN``) or the cluster is reconfiguring (``CLUSTERDOWN``).
_REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")


class ClusterWire:
    """Auto-pipelining on Redis Cluster, per node: each single-key command goes to the
    :class:`Wire` of the primary that owns its key's hash slot (redis-py's slot function and
    the cluster client's slot map), one :class:`Wire` per node, made on first use with
    ``links`` connections; so a node's commands issued in one event-loop iteration go out in
    one write.

    A command whose reply is a redirection (``MOVED``, ``ASK``, ``TRYAGAIN``,
    ``CLUSTERDOWN``), or whose node's connection failed, is sent again through the cluster
    client's own method, which follows redirections and refreshes the slot map; the next
    commands are routed by the refreshed map, and the :class:`Wire` of a node no longer in it
    is closed. Both attempts are bounded by the front's deadline; cancelling a call cancels
    only its futures (the :class:`Wire` guarantees: no reply is read by another caller)."""

    __slots__ = ("client", "closed", "closing", "link_error", "links", "pack", "redirects",
                 "refused", "starting", "wires")

    def __init__(self, client: Any, pack: Callable[[tuple[Any, ...]], bytes],
                 link_error: type[Exception], refused: type[Exception], *,
                 links: int = 2) -> None:
        self.client = client
        self.pack = pack
        self.link_error = link_error
        self.refused = refused
        self.links = links
        #: The node's name (``host:port``) -> its Wire.
        self.wires: dict[str, Wire] = {}
        self.closing: set[asyncio.Task[None]] = set()
        self.closed = False
        self.starting: asyncio.Future[Any] | None = None
        #: Commands sent again through the cluster client (redirected, or node unreachable).
        self.redirects = 0

    def _wire_of(self, key: str | bytes) -> Wire | None:
        """The Wire of the primary that owns ``key``'s slot (None: the map does not say)."""
        from redis.crc import key_slot

        nodes = self.client.nodes_manager.slots_cache.get(
            key_slot(key.encode() if isinstance(key, str) else key))
        if not nodes or self.closed:
            return None
        node = nodes[0]
        wire = self.wires.get(node.name)
        if wire is None:
            wire = self.wires[node.name] = Wire(node, self.pack, self.link_error,
                                                self.refused, links=self.links)
        return wire

    def _redirected(self, exc: BaseException) -> bool:
        if self.closed:
            return False
        if isinstance(exc, self.link_error):
            return True
        return isinstance(exc, self.refused) and str(exc).startswith(_REDIRECTS)

    async def _ready(self) -> None:
        """Discover the cluster on the first call: one discovery that every caller waiting for
        it shares (they all go on in the same iteration, so their commands share writes)."""
        if not self.client.nodes_manager.slots_cache:
            task = self.starting
            if task is None or task.done():
                task = self.starting = asyncio.ensure_future(self.client.initialize())
                task.add_done_callback(_retrieve)
            await asyncio.shield(task)

    async def _by_client(self, command: tuple[Any, ...]) -> Any:
        """``command`` through the cluster client (redirections followed, map refreshed)."""
        self.redirects += 1
        try:
            return await self.client.execute_command(*command)
        finally:
            self._prune()

    def _prune(self) -> None:
        """Close the Wires of nodes that are no longer in the client's map."""
        known = self.client.nodes_manager.nodes_cache
        for name in [n for n in self.wires if n not in known]:
            task = asyncio.get_running_loop().create_task(self.wires.pop(name).close())
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)

    async def one(self, *args: Any) -> Any:
        """One single-key command (its key is ``args[1]``), on its node's Wire."""
        await self._ready()
        wire = self._wire_of(args[1])
        if wire is not None:
            try:
                return await wire.one(*args)
            except (self.refused, self.link_error) as exc:
                if not self._redirected(exc):
                    raise
        return await self._by_client(args)

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands`` (each on one hash slot, named by its first key), in
        order: each node's share written together on its Wire, the nodes in parallel. An error
        reply other than a redirection is raised once every reply is in."""
        await self._ready()
        groups: dict[Wire, list[int]] = {}
        again: list[int] = []  # the commands for the cluster client
        for i, command in enumerate(commands):
            wire = self._wire_of(command[1])
            (again if wire is None else groups.setdefault(wire, [])).append(i)
        replies: list[Any] = [None] * len(commands)
        wires = list(groups)
        results: list[Any]
        if len(wires) == 1:
            try:
                results = [await wires[0].pipeline([commands[i] for i in groups[wires[0]]],
                                                   keep=True)]
            except (self.refused, self.link_error) as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *[w.pipeline([commands[i] for i in groups[w]], keep=True) for w in wires],
                return_exceptions=True)
        refused = self.refused
        failure: BaseException | None = None
        for wire, result in zip(wires, results, strict=True):
            where = groups[wire]
            if isinstance(result, BaseException):
                if not self._redirected(result):
                    raise result
                again += where
                continue
            for i, reply in zip(where, result, strict=True):
                if isinstance(reply, refused):
                    if self._redirected(reply):
                        again.append(i)
                    elif failure is None:
                        failure = reply
                replies[i] = reply
        if failure is not None:
            raise failure
        if again:
            again.sort()
            for i, reply in zip(again, await asyncio.gather(
                    *[self._by_client(commands[i]) for i in again]), strict=True):
                replies[i] = reply
        return replies

    def answered_within(self, seconds: float) -> bool:
        return any(w.answered_within(seconds) for w in self.wires.values())

    async def close(self) -> None:
        self.closed = True
        if self.starting is not None and not self.starting.done():
            self.starting.cancel()
        wires = list(self.wires.values())
        self.wires.clear()
        for wire in wires:
            await wire.close()
        for task in list(self.closing):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def stats(self) -> dict[str, Any]:
        """The figures of every node's Wire added up, ``redirects``, and ``nodes``: each
        node's own figures by name."""
        nodes = {name: w.stats() for name, w in self.wires.items()}
        out: dict[str, Any] = {k: sum(n[k] for n in nodes.values()) for k in (
            "connections", "waiting", "queued", "batches", "commands", "connections_opened")}
        out["redirects"] = self.redirects
        out["nodes"] = nodes
        return out


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a shared task's failure as seen (its waiters, if any are left, raise it)."""
    if not task.cancelled():
        task.exception()


def cluster_wire_for(client: Any, links: int = 2) -> ClusterWire | None:
    """A :class:`ClusterWire` over a redis-py asyncio ``RedisCluster`` with hiredis installed
    and the default key encoding; None (use the client's methods) otherwise."""
    try:
        import hiredis
        from redis.asyncio.cluster import RedisCluster
        from redis.exceptions import ConnectionError as LinkError
        from redis.exceptions import ResponseError
    except ImportError:
        return None
    if not isinstance(client, RedisCluster):
        return None
    kwargs = getattr(client, "connection_kwargs", {})
    cls = kwargs.get("connection_class")
    if ((kwargs.get("encoding") or "utf-8").lower().replace("_", "-") not in ("utf-8", "utf8")
            or (kwargs.get("encoding_errors") or "strict") != "strict"
            or (cls is not None and not cls.__module__.startswith("redis."))):
        return None
    return ClusterWire(client, hiredis.pack_command, LinkError, ResponseError, links=links)
