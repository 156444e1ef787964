"""Small pieces the front composes: per-tier statistics, the circuit breaker, the deadline
watchdog for remote calls, call keys, argument checks made before anything reaches a driver
(:func:`ttl_seconds`, :func:`check_meta`, :func:`check_search`), and the one place where an
exception is classified as the request's fault or the tier's (:func:`fault_of`,
:func:`library_error`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import math
import numbers
from collections import deque
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal

from .errors import (
    BackendError,
    DecodeError,
    InvalidArgumentError,
    SophiaMemoryError,
    TierUnavailableError,
    UnsupportedValueError,
    WriteRefusedError,
)

__all__ = ["MAX_TTL", "META_COLUMNS", "CircuitBreaker", "Deadlines", "Fault", "TierStats",
           "canonical_hash", "check_meta", "check_search", "fault_of", "library_error",
           "scrubbed", "ttl_seconds"]


class TierStats:
    """Counters and a window of recent latencies (seconds) for one tier."""

    __slots__ = ("deletes", "errors", "hits", "latencies", "misses", "promotions", "puts",
                 "refused", "spills", "spills_dropped")

    def __init__(self, window: int = 2048) -> None:
        self.hits = self.misses = self.puts = self.deletes = self.errors = 0
        #: Calls the tier answered with the request's fault (a typed error to that caller
        #: alone; never counted toward the breaker). ``errors`` counts the tier's faults.
        self.refused = 0
        self.promotions = self.spills = self.spills_dropped = 0
        self.latencies: deque[float] = deque(maxlen=window)

    def percentiles(self) -> dict[str, float | None]:
        """p50/p95/p99 of the recent latencies, in milliseconds."""
        if not self.latencies:
            return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
        data = sorted(self.latencies)
        n = len(data)

        def pick(q: float) -> float:
            return round(data[min(n - 1, int(q * n))] * 1000, 4)

        return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99)}


class CircuitBreaker:
    """Closed until ``threshold`` consecutive failures; then open for ``reset_after`` seconds,
    after which one trial call is let through (half-open): success closes it again."""

    __slots__ = ("_clock", "failures", "opened_at", "reset_after", "threshold", "trips")

    def __init__(self, threshold: int, reset_after: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trips = 0

    def twin(self) -> CircuitBreaker:
        """A new breaker with the same settings and clock (e.g. a tier's write health)."""
        return CircuitBreaker(self.threshold, self.reset_after, self._clock)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self.opened_at >= self.reset_after else "open"

    def allow(self) -> bool:
        """Whether a call may go to the tier now."""
        if self.opened_at is None:
            return True
        if self._clock() - self.opened_at >= self.reset_after:
            self.opened_at = self._clock()  # one trial per reset period
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            if self.opened_at is None:
                self.trips += 1
            self.opened_at = self._clock()


class Deadlines:
    """Cuts off calls that run past their deadline, with one watchdog task for all of them
    instead of a timer per call (``asyncio.timeout`` schedules and cancels a timer handle on
    every call: a remote tier's hot path pays for it on each get and put).

    A call registers its task and deadline (:meth:`enter`), and removes them when it ends
    (:meth:`leave`). The watchdog wakes every ``tick`` seconds of the loop's clock while calls
    are registered and cancels the tasks whose deadline has passed; :meth:`expired` tells the
    call that the CancelledError it caught was the watchdog's, so it raises TimeoutError
    instead. A call is cut off between its deadline and ``tick`` seconds later.
    """

    __slots__ = ("calls", "cut", "tick", "watchdog")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.calls: dict[asyncio.Task[Any], float] = {}
        self.cut: set[asyncio.Task[Any]] = set()
        self.watchdog: asyncio.Task[None] | None = None

    def enter(self, seconds: float) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is None or task in self.calls:  # not in a task, or nested: no second deadline
            return None
        loop = task.get_loop()
        self.calls[task] = loop.time() + seconds
        if self.watchdog is None:
            self.watchdog = loop.create_task(self._watch())
        return task

    def leave(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self.calls.pop(task, None)
            self.cut.discard(task)

    def expired(self, task: asyncio.Task[Any] | None) -> bool:
        """After a CancelledError: whether the watchdog cut ``task`` off (then the cancel
        request is withdrawn)."""
        if task is not None and task in self.cut:
            self.cut.discard(task)
            task.uncancel()
            return True
        return False

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.calls:
                await asyncio.sleep(self.tick)  # loop time: a watchdog's cadence
                now = loop.time()
                for task, deadline in list(self.calls.items()):
                    if deadline <= now and task not in self.cut and not task.done():
                        self.cut.add(task)
                        task.cancel()
        finally:
            self.watchdog = None

    async def close(self) -> None:
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise UnsupportedValueError("cache-key arguments: dict keys must be str")
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    raise UnsupportedValueError(
        f"cannot build a cache key from an argument of type {type(value).__qualname__}; "
        "pass key= to cached() to build keys yourself")


def canonical_hash(*parts: Any) -> str:
    """A stable hex digest of JSON-like ``parts``: equal for equal data whatever the dict
    order, the same across processes and runs."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- arguments checked before anything reaches a driver ---------------------------------------

#: The longest TTL any tier takes, in seconds (100 years of 365.25 days). Every tier can
#: represent it (Redis' millisecond expiry, SQL REAL and TIMESTAMP columns); longer ones are
#: refused at the front instead of overflowing a driver. ``ttl=None`` means no expiry.
MAX_TTL = 100 * 365.25 * 86400


def ttl_seconds(ttl: object) -> float | None:
    """``ttl`` (seconds as a real number, or a ``timedelta``) as seconds in ``(0, MAX_TTL]``;
    None for None. Anything else raises :class:`InvalidArgumentError`: negative, zero, NaN,
    infinite, too large for a float (``10**400``), over :data:`MAX_TTL`, or not a number."""
    if ttl is None:
        return None
    value: object = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"ttl must be a number of seconds or a timedelta, got "
                                   f"{ttl!r}")
    try:
        seconds = float(value)
    except (OverflowError, ValueError):
        seconds = math.inf
    if math.isnan(seconds) or seconds <= 0:
        raise InvalidArgumentError(f"ttl must be positive, got {ttl!r}")
    if seconds > MAX_TTL:
        shown = f"{seconds:.4g}" if math.isfinite(seconds) else "too large for a float"
        raise InvalidArgumentError(f"ttl is {shown} seconds, over the maximum of "
                                   f"{MAX_TTL:.0f} (100 years); use ttl=None for no expiry")
    return seconds


_REAL = "a real number"
#: Metadata names that have columns of their own in the platform's tables (the Cortex table's
#: ``CORTEX_CACHE_ENHANCED`` columns, the vector tier's embedding), and what each takes.
META_COLUMNS: dict[str, str] = {"gpu_processed": "a bool or an int",
                                "processing_time_ms": _REAL, "gpu_memory_used_mb": _REAL,
                                "prompt_embedding": "bytes", "embedding": "bytes",
                                "dim": "an int"}
_INT64 = (-(2**63), 2**63 - 1)
_META_DEPTH = 32


def _column_ok(kind: str, value: object) -> bool:
    if value is None:
        return True
    if kind == "bytes":
        return isinstance(value, bytes)
    if isinstance(value, bool):
        return kind == "a bool or an int"
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return kind == _REAL and isinstance(value, float) and math.isfinite(value)


def _meta_value(name: str, value: object, depth: int) -> None:
    """Refuse a metadata value every tier could not keep (JSON-like: None, bool, int64, finite
    float, str; lists and dicts of them, str keys)."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidArgumentError(f"meta[{name!r}]: int {value} is outside the 64-bit "
                                       "range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"meta[{name!r}]: {value} is not a finite number")
        return
    if depth >= _META_DEPTH:
        raise InvalidArgumentError(f"meta[{name!r}] is nested deeper than {_META_DEPTH}")
    if isinstance(value, (list, tuple)):
        for item in value:
            _meta_value(name, item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidArgumentError(f"meta[{name!r}]: dict keys must be str, got "
                                           f"{type(key).__qualname__}")
            _meta_value(name, item, depth + 1)
        return
    raise InvalidArgumentError(f"meta[{name!r}]: a {type(value).__qualname__} cannot be kept "
                               "as metadata (JSON-like values only: None, bool, int, float, "
                               "str, lists and dicts of them)")


def check_meta(meta: object) -> dict[str, Any]:
    """``meta`` as a new dict, after checking that every tier can keep it: a mapping with
    ``str`` keys and JSON-like values; names with a column of their own
    (:data:`META_COLUMNS`) take that column's type. Raises :class:`InvalidArgumentError`."""
    if not isinstance(meta, Mapping):
        raise InvalidArgumentError(f"meta must be a dict with str keys, got "
                                   f"{type(meta).__qualname__}")
    out: dict[str, Any] = {}
    for name, value in meta.items():
        if type(name) is not str:
            raise InvalidArgumentError(f"meta keys must be str, got {type(name).__qualname__}")
        column = META_COLUMNS.get(name)
        if column is not None:
            if not _column_ok(column, value):
                raise InvalidArgumentError(f"meta[{name!r}] is stored in a column that takes "
                                           f"{column}, got {type(value).__qualname__} "
                                           f"{value!r:.60}")
        else:
            _meta_value(name, value, 0)
        out[name] = value
    return out


def check_search(k: object, metric: object, min_score: object) -> None:
    """Refuse bad :meth:`~sophia_memory.Memory.search` arguments with
    :class:`InvalidArgumentError` before any backend sees them."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"k must be an int >= 1, got {k!r}")
    if metric is not None and metric not in ("cosine", "ip"):
        raise InvalidArgumentError(f"metric must be 'cosine', 'ip' or None, got {metric!r}")
    if min_score is not None and (isinstance(min_score, bool)
                                  or not isinstance(min_score, numbers.Real)
                                  or math.isnan(float(min_score))):
        raise InvalidArgumentError(f"min_score must be a number or None, got {min_score!r}")


# -- whose fault a failure is -----------------------------------------------------------------

Fault = Literal["request", "tier", "write"]
"""``"request"``: this call's own arguments or data (a value, TTL, metadata or key the server
refused; a value of another type under the key): that call fails alone. ``"tier"``: the tier
cannot serve (connection refused or lost, timeout, server loading or unreachable): counts
toward its circuit breaker. ``"write"``: the tier answers but refuses writes (out of memory,
disk full, read-only): counts toward its write health only, reads keep being served."""

#: Redis error replies that mean the server refuses writes, not this request.
_REDIS_WRITE = ("OOM", "MISCONF", "READONLY", "NOREPLICAS", "NOTREPLICAS")
#: Redis error replies that mean the server (or the link to it) cannot serve at all.
_REDIS_TIER = ("LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "NOAUTH",
               "WRONGPASS", "NOPERM", "MOVED", "ASK", "CROSSSLOT")
#: redis-py's classes for some error replies (their message lacks the first word).
_REDIS_WRITE_CLASSES = frozenset({"OutOfMemoryError", "ReadOnlyError"})
_REDIS_TIER_CLASSES = frozenset({"BusyLoadingError", "AuthenticationError", "NoPermissionError",
                                 "AuthenticationWrongNumberOfArgsError", "MaxConnectionsError",
                                 "ClusterDownError", "MasterDownError", "TryAgainError",
                                 "MovedError", "AskError", "ClusterError"})
_REDIS_TIER_TEXT = ("max number of clients", "unknown command", "too many connections")
_SQLITE_WRITE = ("database or disk is full", "readonly database", "read-only")
_ENOSPC = frozenset({errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _driver_fault(exc: BaseException) -> Fault | None:
    """The fault of a driver's exception (redis-py, hiredis, sqlite3), told by class names and
    error codes so that no optional driver is imported; None when it is not a driver's."""
    module = type(exc).__module__
    names = _names(exc)
    text = str(exc)
    if module.startswith(("redis", "hiredis", "valkey", "coredis")) or "ReplyError" in names:
        if names & _REDIS_WRITE_CLASSES:  # redis-py strips the reply's first word
            return "write"
        if names & _REDIS_TIER_CLASSES:
            return "tier"
        if "ResponseError" in names or "ReplyError" in names:
            word = text.split(" ", 1)[0]
            if word in _REDIS_WRITE:
                return "write"
            low = text.lower()
            if word in _REDIS_TIER or any(t in low for t in _REDIS_TIER_TEXT):
                return "tier"
            return "request"  # ERR ..., WRONGTYPE, EXECABORT: this command's fault
        if "DataError" in names:  # refused client-side: an argument it cannot encode
            return "request"
        return "tier"  # ConnectionError, TimeoutError, AuthenticationError, ...
    if module == "sqlite3":
        if "OperationalError" in names:
            low = text.lower()
            return "write" if any(t in low for t in _SQLITE_WRITE) else "tier"
        if names & {"IntegrityError", "ProgrammingError", "InterfaceError", "DataError"}:
            return "request"  # a constraint, a parameter it cannot bind, a value too big
        return "tier"
    return None


def fault_of(exc: BaseException) -> Fault:
    """Whose fault ``exc`` is (see :data:`Fault`): the one classification the guard of every
    remote tier (:class:`~sophia_memory.engine.RemoteTier`) and the backends' edges use."""
    if isinstance(exc, WriteRefusedError):
        return "write"
    if isinstance(exc, (BackendError, TierUnavailableError)):
        # a backend's error is the tier's fault, or a refused write's when it says so or
        # was raised from one
        cause = exc.__cause__
        if isinstance(cause, (BackendError, TierUnavailableError)):
            return fault_of(cause)
        if cause is not None and not isinstance(cause, SophiaMemoryError) \
                and fault_of(cause) == "write":
            return "write"
        return "tier"
    if isinstance(exc, SophiaMemoryError):
        return "request"  # InvalidArgumentError, DecodeError, VersionConflictError, ...
    found = _driver_fault(exc)
    if found is not None:
        return found
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, ENOSPC, ...
        return "write" if exc.errno in _ENOSPC else "tier"
    if isinstance(exc, (TypeError, ValueError, ArithmeticError, LookupError)):
        return "request"  # OverflowError, JSONDecodeError, UnicodeError, ...
    return "tier"


def library_error(exc: BaseException, context: str) -> SophiaMemoryError:
    """The library's error for ``exc`` (raise it ``from exc``): a request's fault becomes
    :class:`DecodeError` (a stored value of another type or shape: Redis ``WRONGTYPE``,
    undecodable data) or :class:`InvalidArgumentError`; a write refusal
    :class:`WriteRefusedError`; anything else :class:`BackendError`. Library errors are
    returned as they are."""
    if isinstance(exc, SophiaMemoryError):
        return exc
    fault = fault_of(exc)
    text = f"{context}: {exc}"
    if fault == "request":
        if (str(exc).startswith("WRONGTYPE") or isinstance(exc, UnicodeDecodeError)
                or "JSONDecodeError" in _names(exc)):
            return DecodeError(text)
        return InvalidArgumentError(text)
    if fault == "write":
        return WriteRefusedError(text)
    return BackendError(text)


def scrubbed(url: str, query: bool = True) -> str:
    """``url`` safe to show, whether or not it parses: the text between ``//`` and the last
    ``@`` is the user and a masked password (``user:***@``, or ``***@``), and the query is
    ``?...`` (left out with ``query=False``): a password with an unencoded ``/``, ``#``, ``?``
    or ``@`` is masked too."""
    start = url.find("//") + 2 if "//" in url else 0
    at = url.rfind("@")
    if at >= start:
        user, colon, _ = url[start:at].partition(":")
        url = f"{url[:start]}{user.split('/')[0] if colon else ''}{colon}***{url[at:]}"
    head, mark, _ = url.partition("?")
    return head + ("?..." if mark and query else "")
