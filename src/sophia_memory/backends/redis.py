"""Redis backend (``redis://``, ``rediss://``, ``unix://``) on ``redis.asyncio``.

Each key holds one string: a small envelope (magic, a msgpack header with the record's
metadata, then the codec's payload). The item's expiry is kept in the header and also set as
the Redis key's expiry (``PX``: the item's TTL plus a minute's grace, so a clock that differs
from Redis' never loses a live item early) so Redis frees the memory; liveness is decided by
the header against the memory's clock. A value without the envelope (written by
another client) is handed to the codec as it is, which refuses anything it did not write:
nothing is ever unpickled unless the signed pickle codec is configured.

Keys are stored under a prefix (``?prefix=``, default ``sm:``). ``get_many`` is one ``MGET``,
``put_many`` and ``delete_many`` one non-transactional pipeline; driver errors become
:class:`BackendError`, and the front adds a timeout and a circuit breaker (this backend is
:class:`Remote`).

Not built yet: Cluster and Sentinel URLs, and invalidation of other processes' in-process
copies (Redis key tracking).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from ..errors import BackendError, MissingDependencyError
from ..tiers import Record
from .base import Backend

__all__ = ["RedisBackend"]

_MAGIC = b"SMr1"
_EXPIRY_GRACE_MS = 60_000
_HEAD = struct.Struct("<I")


def _pack(rec: Record) -> bytes:
    header = msgpack.packb([rec.expires_at, rec.home, rec.size, rec.version, rec.created_at,
                            rec.extra or None])
    return b"".join((_MAGIC, _HEAD.pack(len(header)), header, rec.payload))


def _unpack(raw: bytes) -> Record:
    if raw[:4] == _MAGIC and len(raw) >= 8:
        (hlen,) = _HEAD.unpack_from(raw, 4)
        try:
            expires_at, home, size, version, created_at, extra = msgpack.unpackb(
                raw[8 : 8 + hlen])
            return Record(raw[8 + hlen :], expires_at, bool(home), size, version, created_at,
                          extra or {})
        except (ValueError, TypeError, msgpack.UnpackException):
            pass
    return Record(raw, None, True, len(raw))  # foreign: the codec decides (and refuses)


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisBackend(Backend):
    """One Redis (or a compatible server) as a tier's store."""

    scheme = "redis"

    def __init__(self, client: Any, prefix: str = "sm:", call_timeout: float = 2.0,
                 description: str = "redis") -> None:
        self.client = client
        self.prefix = prefix
        self.call_timeout = call_timeout
        self._description = description
        self._closed = False
        try:
            from redis.exceptions import RedisError
        except ImportError:  # fakeredis clients still raise redis' errors
            RedisError = OSError  # type: ignore[misc,assignment]
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)

    @classmethod
    def from_url(cls, url: str, prefix: str, call_timeout: float) -> RedisBackend:
        """Connect lazily to ``url`` (redis://, rediss://, unix://)."""
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise MissingDependencyError("redis", "redis", "the Redis backend") from exc
        client = aioredis.Redis.from_url(url, socket_timeout=call_timeout,
                                         socket_connect_timeout=call_timeout)
        host = url.rsplit("@", maxsplit=1)[-1]
        return cls(client, prefix, call_timeout, f"redis {host.split('?')[0]}")

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except self._errors as exc:
            raise BackendError(f"Redis call failed: {exc}") from exc

    @staticmethod
    def _px(rec: Record) -> int | None:
        if rec.expires_at is None:
            return None
        return max(1, int((rec.expires_at - rec.created_at) * 1000)) + _EXPIRY_GRACE_MS

    async def get(self, key: str, now: float) -> Record | None:
        raw = await self._run(self.client.get(self._k(key)))
        return None if raw is None else _unpack(raw)

    async def get_many(self, keys: Iterable[str], now: float) -> dict[str, Record]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        raws = await self._run(self.client.mget([self._k(k) for k in keys]))
        return {k: _unpack(raw) for k, raw in zip(keys, raws, strict=True) if raw is not None}

    async def exists(self, key: str, now: float) -> bool:
        rec = await self.get(key, now)
        return rec is not None and not rec.expired(now)

    async def put(self, key: str, record: Record) -> None:
        await self._run(self.client.set(self._k(key), _pack(record), px=self._px(record)))

    async def put_many(self, records: Mapping[str, Record]) -> None:
        if not records:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, rec in records.items():
            pipe.set(self._k(key), _pack(rec), px=self._px(rec))
        await self._run(pipe.execute())

    async def delete(self, key: str, now: float) -> bool:
        raw = await self._run(self.client.getdel(self._k(key)))
        return raw is not None and not _unpack(raw).expired(now)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return 0
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
            close = getattr(self.client, "aclose", None) or self.client.close
            await self._run(close())

    def describe(self) -> str:
        return f"{self._description} (prefix {self.prefix!r})"
