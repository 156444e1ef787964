"""Redis backend on ``redis.asyncio``: ``redis://``, ``rediss://``, ``unix://``,
``redis+sentinel://`` and ``redis+cluster://``.

Each key holds one string: a small envelope (magic, a fixed binary header with the record's
metadata, its ``extra`` dict in msgpack if any, then the codec's payload). The item's expiry
is kept in the header and also set as the Redis key's expiry (``PX``: the item's TTL plus a
minute's grace, so a clock that differs from Redis' never loses a live item early) so Redis
frees the memory; liveness is decided by the header against the memory's clock. A value
without the envelope (written by another client) is handed to the codec as it is, which
refuses anything it did not write: nothing is ever unpickled unless the signed pickle codec
is configured.

Keys are stored under a prefix (``?prefix=``, default ``sm:``). ``get_many`` is one ``MGET``
(one per hash slot on Cluster); ``put_many`` is one ``MSET`` (one per hash slot on Cluster)
when no item has a TTL, else one non-transactional pipeline (``SET ... PX`` per item), as is
``delete_many``. Commands are auto-pipelined (:class:`~._wire.Wire`): every command issued in
one event-loop iteration, by any number of coroutines, is packed by hiredis and written at once
on a small fixed set of connections (``?connections=``, default 2), and each reply goes back to
its caller; ``get_payloads`` reads values without building records. On Cluster this is done
per node (:class:`~._wire.ClusterWire`: each key's command goes to the Wire of the node that
owns its slot; a redirection or an unreachable node sends that command through the cluster
client's own method, which follows it). ``?wire=0`` uses the client's methods instead.

Failures are classified once (:func:`~sophia_memory._support.fault_of`) and mapped here, at the
edge: an error reply that is the command's own fault (``WRONGTYPE``: the key holds another
type; ``ERR``: an argument the server refused) becomes :class:`DecodeError` or
:class:`InvalidArgumentError` for that call alone; a server that refuses writes (``OOM`` under
``noeviction``, ``MISCONF``, ``READONLY``) :class:`WriteRefusedError`; anything else
:class:`BackendError`. The front bounds each call by ``call_timeout`` (redis-py's
``socket_timeout`` is off unless the URL sets it) and keeps a circuit breaker for the tier and
one for its writes (this backend is :class:`Remote`).

Coherence between processes: when the front keeps in-process copies above this tier, it
registers an invalidation listener, and the backend keeps one extra connection (RESP2) with
``CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX <prefix>`` subscribed to
``__redis__:invalidate``. Every write under the prefix, by any client, reports the key there,
and the front drops its copies. While that connection is down the listener is told that every
key may have changed (on loss and again on reconnection). ``?tracking=0`` switches it off.
Not available on Redis Cluster (tracking is per node); there, copies above this tier are only
as fresh as their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack

from ..._support import library_error
from ...errors import ConfigError, MissingDependencyError
from ...tiers import Record
from ..base import Backend, InvalidationListener
from ._tracker import Tracker
from ._wire import ClusterWire, Wire, cluster_wire_for, wire_for

log = logging.getLogger("sophia_memory")

__all__ = ["RedisBackend"]

_MAGIC = b"SMr2"
#: The envelope's fixed header: magic, expiry (NaN: none), created, size, version, home, and
#: the length of the msgpack-encoded ``extra`` that follows it (0: none); then the payload.
_HEAD = struct.Struct("<4sddqqBI")
_EXPIRY_GRACE_MS = 60_000
_FAILED = "Redis call failed"

#: ``put_if``: store ARGV[2] (with PX ARGV[3] when not empty) only if the key still holds
#: exactly the string ARGV[1] (empty: nothing). One script, so atomic in the server.
_PUT_IF = """
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


def _pack(rec: Record) -> bytes:
    extra = msgpack.packb(rec.extra) if rec.extra else b""
    expires = math.nan if rec.expires_at is None else rec.expires_at
    return b"".join((_HEAD.pack(_MAGIC, expires, rec.created_at, rec.size, rec.version,
                                rec.home, len(extra)), extra, rec.payload))


def _unpack(raw: bytes) -> Record:
    if raw[:4] == _MAGIC and len(raw) >= _HEAD.size:
        _, expires, created, size, version, home, xlen = _HEAD.unpack_from(raw)
        end = _HEAD.size + xlen
        extra: dict[str, Any] = {}
        if xlen:
            try:
                extra = msgpack.unpackb(raw[_HEAD.size : end])
            except (ValueError, TypeError, msgpack.UnpackException):
                return Record(raw, None, True, len(raw))
            if not isinstance(extra, dict):
                return Record(raw, None, True, len(raw))
        return Record(raw[end:], None if math.isnan(expires) else expires, bool(home), size,
                      version, created, extra)
    return Record(raw, None, True, len(raw))  # foreign: the codec decides (and refuses)


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisBackend(Backend):
    """One Redis (a server, a Sentinel-managed primary, or a Cluster) as a tier's store.

    ``client`` is a ``redis.asyncio`` client (or a compatible one, e.g. fakeredis);
    ``tracking`` builds a RESP2 client to the same server for the tracking link (None: no
    invalidation of other processes' copies). ``wire`` (default: when possible) sends the
    data commands through :class:`~._wire.Wire` (auto-pipelined on ``connections`` shared
    connections) instead of the client's methods; on Cluster through
    :class:`~._wire.ClusterWire` (one such Wire per node).
    """

    scheme = "redis"

    def __init__(self, client: Any, prefix: str = "sm:", call_timeout: float = 2.0,
                 description: str = "redis", *, cluster: bool = False,
                 tracking: Callable[[], Any] | None = None, sentinel: Any = None,
                 wire: bool | None = None, connections: int = 2) -> None:
        self.client = client
        self._wire: Wire | ClusterWire | None = None
        if wire is not False:
            self._wire = cluster_wire_for(client, connections) if cluster else wire_for(
                client, connections, sentinel=sentinel is not None)
        if wire and self._wire is None:
            raise ConfigError("wire=True needs a redis-py client on a plain connection pool "
                              "(on Cluster: a redis-py RedisCluster client), with hiredis "
                              "installed and the default key encoding")
        self.prefix = prefix
        self.call_timeout = call_timeout
        self._description = description
        self._closed = False
        self._cluster = cluster
        self._sentinel = sentinel
        self._mget = client.mget_nonatomic if cluster else client.mget
        self._tracking = tracking
        self._tracker: Tracker | None = None
        self._track_pending = False
        try:
            from redis.exceptions import RedisError, ResponseError
        except ImportError:  # fakeredis clients still raise redis' errors
            RedisError = ResponseError = OSError  # type: ignore[misc,assignment]
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._refused: tuple[type[BaseException], ...] = (ResponseError,)

    @classmethod
    def from_url(cls, url: str, prefix: str, call_timeout: float,
                 tracking: bool = True, wire: bool | None = None, *,
                 connections: int = 2) -> RedisBackend:
        """Connect lazily to ``url``: redis://, rediss://, unix://, ``redis+sentinel://[user:
        pw@]host:port[,host:port...]/service[/db]`` or ``redis+cluster://[user:pw@]host:port
        [,host:port...]``. A query string is redis-py's (plain schemes only); the factory
        (:func:`~sophia_memory.backends.redis.open_redis`) has checked it."""
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis", "the Redis backend") from exc
        # Connecting is bounded here; each call is bounded by the front (one deadline per
        # call). redis-py's own socket_timeout (5 s by default since redis-py 6) is switched
        # off: it costs a timer per reply and a task per write. A URL's ?socket_timeout=
        # still wins.
        timeouts: dict[str, Any] = {"socket_connect_timeout": call_timeout,
                                    "socket_timeout": None}
        scheme, _, rest = url.partition("://")
        creds, _, hostpart = rest.rpartition("@")
        hosts, _, path = hostpart.partition("/")
        where = f"{scheme}://{hosts}"
        if scheme in ("redis+cluster", "rediss+cluster"):
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(h, p) for h, p in _host_ports(hosts, url, 6379)]
            user, password = _credentials(creds)
            client: Any = RedisCluster(startup_nodes=nodes, username=user, password=password,
                                  ssl=scheme.startswith("rediss"), **timeouts)
            return cls(client, prefix, call_timeout, f"redis cluster {where}", cluster=True,
                       wire=wire, connections=connections)
        if scheme in ("redis+sentinel", "rediss+sentinel"):
            from redis.asyncio.sentinel import Sentinel

            parts = [p for p in path.split("?")[0].split("/") if p]
            if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise ConfigError(f"{where}/...: a Sentinel URL names the service: "
                                  "redis+sentinel://host:26379/<service>[/<db>]")
            service, db = parts[0], int(parts[1]) if len(parts) == 2 else 0
            user, password = _credentials(creds)
            # The Sentinels are asked with bounded reads (a partitioned one must not hold up
            # finding the primary: the next one is asked on a timeout); the primary's
            # connections get the timeouts above. As before, no credentials go to Sentinels.
            sentinel = Sentinel(_host_ports(hosts, url, 26379),  # type: ignore[no-untyped-call]
                                sentinel_kwargs={"socket_connect_timeout": call_timeout,
                                                 "socket_timeout": call_timeout}, **timeouts)
            opts: dict[str, Any] = {"db": db, "username": user, "password": password,
                    "ssl": scheme.startswith("rediss"), **timeouts}
            client = sentinel.master_for(service, **opts)

            def tracking_client() -> Any:
                return sentinel.master_for(service, protocol=2,
                                           **{**opts, "socket_timeout": None})

            return cls(client, prefix, call_timeout, f"redis sentinel {where}/{service}",
                       tracking=tracking_client if tracking else None, sentinel=sentinel,
                       wire=wire, connections=connections)
        try:
            client = aioredis.Redis.from_url(url, **timeouts)  # lazy: nothing connects here
        except ValueError as exc:  # a value redis-py cannot parse (e.g. db=x)
            raise ConfigError(f"{where}: {exc}") from None

        def plain_tracking_client() -> Any:
            return aioredis.Redis.from_url(url, protocol=2,
                                           socket_connect_timeout=call_timeout)

        return cls(client, prefix, call_timeout, f"redis {where}",
                   tracking=plain_tracking_client if tracking else None, wire=wire,
                   connections=connections)

    # -- invalidation of other processes' copies --------------------------------------------

    def set_invalidation_listener(self, listener: InvalidationListener) -> None:
        """Report other clients' writes to ``listener`` from the first call on (no-op on
        Cluster, or with tracking switched off)."""
        if self._tracking is None:
            if self._cluster:
                log.warning("%s: no key tracking on Redis Cluster; in-process copies above "
                            "it are not invalidated by other processes' writes",
                            self._description)
            return
        self._tracker = Tracker(self._tracking, self.prefix, listener, self._errors,
                                 self._refused)
        self._track_pending = True

    async def wait_tracking(self, seconds: float) -> bool:
        """Wait until the tracking link is up (for tests and start-up); whether it is."""
        tracker = self._tracker
        if tracker is None:
            return False
        if self._track_pending:
            self._track_pending = False
            tracker.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await tracker.live.wait()
        return tracker.live.is_set()

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _start_tracking(self) -> None:
        if self._track_pending:
            self._track_pending = False
            self._tracker.start()  # type: ignore[union-attr]

    async def _run(self, coro: Any) -> Any:
        self._start_tracking()
        try:
            return await coro
        except self._errors as exc:  # classified once: the request's fault or the tier's
            raise library_error(exc, _FAILED) from exc

    @staticmethod
    def _px(rec: Record) -> int | None:
        if rec.expires_at is None:
            return None
        return max(1, int((rec.expires_at - rec.created_at) * 1000)) + _EXPIRY_GRACE_MS

    # get, put and _fetch await the driver themselves (no _run): one coroutine less per call
    # on the paths every request takes.

    async def get(self, key: str, now: float) -> Record | None:
        wire = self._wire
        if self._track_pending:
            self._start_tracking()
        try:
            if wire is not None:
                raw = await wire.one("GET", self.prefix + key)
            else:
                raw = await self.client.get(self.prefix + key)
        except self._errors as exc:
            raise library_error(exc, _FAILED) from exc
        return None if raw is None else _unpack(raw)

    async def _fetch(self, keys: list[str]) -> list[bytes | None]:
        """The stored strings of ``keys``, in order: one ``MGET`` (per slot on Cluster)."""
        p = self.prefix
        wire = self._wire
        if self._track_pending:
            self._start_tracking()
        try:
            if wire is not None:
                if type(wire) is ClusterWire:
                    return await _cluster_mget(wire, [p + k for k in keys])
                return await wire.one("MGET", *[p + k for k in keys])  # type: ignore[no-any-return]
            return await self._mget([p + k for k in keys])  # type: ignore[no-any-return]
        except self._errors as exc:
            raise library_error(exc, _FAILED) from exc

    async def get_many(self, keys: Iterable[str], now: float) -> dict[str, Record]:
        keys = list(dict.fromkeys(keys))
        return self._read(keys, await self._fetch(keys), None) if keys else {}

    async def get_payloads(self, keys: list[str], now: float) -> dict[str, Any]:
        """The live payloads among ``keys`` (distinct): ``get_many`` without the records."""
        return self._read(keys, await self._fetch(keys), now) if keys else {}

    @staticmethod
    def _read(keys: list[str], raws: list[bytes | None], now: float | None) -> dict[str, Any]:
        """``{key: Record}`` of what was found (``now`` None), or ``{key: payload}`` of what is
        live at ``now``: the per-key loop of every batch read, :func:`_unpack` inlined for
        the common envelope (no ``extra``)."""
        found: dict[str, Any] = {}
        size, unpack = _HEAD.size, _HEAD.unpack_from
        for k, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            if len(raw) >= size:
                magic, expires, created, nbytes, version, home, xlen = unpack(raw)
                if magic == _MAGIC and not xlen:
                    if now is None:
                        found[k] = Record(raw[size:], None if math.isnan(expires) else expires,
                                          home == 1, nbytes, version, created, {})
                    elif not expires <= now:  # NaN (no expiry) compares False: live
                        found[k] = raw[size:]
                    continue
            rec = _unpack(raw)
            if now is None:
                found[k] = rec
            elif not rec.expired(now):
                found[k] = rec.payload
        return found

    async def exists(self, key: str, now: float) -> bool:
        rec = await self.get(key, now)
        return rec is not None and not rec.expired(now)

    def _set(self, key: str, rec: Record) -> tuple[Any, ...]:
        px = self._px(rec)
        if px is None:
            return ("SET", self.prefix + key, _pack(rec))
        return ("SET", self.prefix + key, _pack(rec), "PX", px)

    async def put(self, key: str, record: Record) -> None:
        wire = self._wire
        if self._track_pending:
            self._start_tracking()
        try:
            if wire is not None:
                await wire.one(*self._set(key, record))
            else:
                await self.client.set(self._k(key), _pack(record), px=self._px(record))
        except self._errors as exc:
            raise library_error(exc, _FAILED) from exc

    async def put_many(self, records: Mapping[str, Record]) -> None:
        if not records:
            return
        wire = self._wire
        if wire is not None:
            if all(r.expires_at is None for r in records.values()):
                p = self.prefix
                if type(wire) is ClusterWire:  # one MSET per hash slot
                    from redis.crc import key_slot

                    by_slot: dict[int, list[Any]] = {}
                    for k, r in records.items():
                        by_slot.setdefault(key_slot((p + k).encode()), ["MSET"]).extend(
                            (p + k, _pack(r)))
                    await self._run(wire.pipeline([tuple(c) for c in by_slot.values()]))
                    return
                args: list[Any] = ["MSET"]
                for k, r in records.items():
                    args += (p + k, _pack(r))
                await self._run(wire.one(*args))  # one command
            else:
                await self._run(wire.pipeline([self._set(k, r) for k, r in records.items()]))
            return
        plain = {self._k(k): _pack(r) for k, r in records.items() if r.expires_at is None}
        if len(plain) == len(records) and not self._cluster:
            await self._run(self.client.mset(plain))  # one command
            return
        pipe = self.client.pipeline(transaction=False)
        for key, rec in records.items():
            if rec.expires_at is not None or self._cluster:
                pipe.set(self._k(key), _pack(rec), px=self._px(rec))
        if plain and not self._cluster:
            pipe.mset(plain)
        await self._run(pipe.execute())

    # -- conditional writes (Conditional): the token is the stored string itself -------------

    async def read_for_update(self, key: str, now: float) -> tuple[Record | None, bytes]:
        """The record under ``key`` and the exact string stored (b"": none)."""
        wire = self._wire
        if wire is not None:
            raw = await self._run(wire.one("GET", self.prefix + key))
        else:
            raw = await self._run(self.client.get(self.prefix + key))
        return (None, b"") if raw is None else (_unpack(raw), raw)

    async def put_if(self, key: str, record: Record, token: bytes) -> bool:
        """One Lua script: ``SET`` only if the key still holds ``token`` byte for byte."""
        px = self._px(record)
        args = (self.prefix + key, token, _pack(record), "" if px is None else px)
        wire = self._wire
        if type(wire) is Wire:
            done = await self._run(wire.one("EVAL", _PUT_IF, 1, *args))
        else:  # Cluster (EVAL is routed by its key) or the client's own methods
            done = await self._run(self.client.eval(_PUT_IF, 1, *args))
        return bool(done)

    async def delete(self, key: str, now: float) -> bool:
        wire = self._wire
        if wire is not None:
            raw = await self._run(wire.one("GETDEL", self.prefix + key))
        else:
            raw = await self._run(self.client.getdel(self._k(key)))
        return raw is not None and not _unpack(raw).expired(now)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return 0
        wire = self._wire
        if wire is not None:
            p = self.prefix
            raws = await self._run(wire.pipeline([("GETDEL", p + k) for k in keys]))
        else:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.getdel(self._k(key))
            raws = await self._run(pipe.execute())
        return sum(1 for raw in raws if raw is not None and not _unpack(raw).expired(now))

    async def keys(self, prefix: str, now: float) -> list[str]:
        pattern = _escape_glob(self.prefix + prefix) + "*"
        found: list[str] = []
        cut = len(self.prefix)
        async for name in self.client.scan_iter(match=pattern, count=1000):
            found.append(name.decode() if isinstance(name, bytes) else name)
        live = await self.get_many([k[cut:] for k in found], now)
        return [k for k, rec in live.items() if not rec.expired(now)]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._tracker is not None:
                self._track_pending = False
                await self._tracker.stop()
            if self._wire is not None:
                await self._wire.close()
            close = getattr(self.client, "aclose", None) or self.client.close
            try:
                await self._run(close())
            finally:
                for client in getattr(self._sentinel, "sentinels", ()):
                    with contextlib.suppress(Exception):
                        await client.aclose()

    def answered_within(self, seconds: float) -> bool:
        """Whether Redis sent replies in the last ``seconds`` (the front's guard then counts a
        timed-out call as overload, not as a failing tier). False off the pipelined path."""
        return self._wire is not None and self._wire.answered_within(seconds)

    def stats(self) -> dict[str, Any]:
        """Tracking figures, and the auto-pipeline's (``pipeline``: open connections, calls
        waiting for replies and queued for the next write, writes and commands so far)."""
        tracker = self._tracker
        out: dict[str, Any] = {"tracking": False} if tracker is None else {
            "tracking": tracker.live.is_set(), "invalidations": tracker.invalidations,
            "tracking_reconnects": tracker.reconnects}
        if self._wire is not None:
            out["pipeline"] = self._wire.stats()
        return out

    def describe(self) -> str:
        return f"{self._description} (prefix {self.prefix!r})"


async def _cluster_mget(wire: ClusterWire, names: list[str]) -> list[bytes | None]:
    """``names``' values on Cluster, in order: one ``MGET`` per hash slot, each node's
    written together."""
    from redis.crc import key_slot

    slots: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        slots.setdefault(key_slot(name.encode()), []).append(i)
    if len(slots) == 1:
        return await wire.one("MGET", *names)  # type: ignore[no-any-return]
    groups = list(slots.values())
    replies = await wire.pipeline([("MGET", *[names[i] for i in g]) for g in groups])
    out: list[bytes | None] = [None] * len(names)
    for group, values in zip(groups, replies, strict=True):
        for i, value in zip(group, values, strict=True):
            out[i] = value
    return out


def _credentials(creds: str) -> tuple[str | None, str | None]:
    from urllib.parse import unquote

    if not creds:
        return None, None
    user, sep, password = creds.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None)


def _host_ports(hosts: str, url: str, default_port: int) -> list[tuple[str, int]]:
    found = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]")
        if not host or (sep and not port.isdigit()):
            raise ConfigError(f"malformed host list {hosts!r} in a Redis URL")
        found.append((host, int(port) if sep else default_port))
    return found
