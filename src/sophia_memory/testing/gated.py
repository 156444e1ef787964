"""A test backend whose calls suspend where a test says: ``gated://name``.

Real slow tiers suspend their callers mid-call (a thread hop, a network round trip), and that
is when other coroutines run: a read can look at the tiers while a put or delete is half done.
The embedded SQLite backend reads without suspending, so a test on it rarely sees those
interleavings. :class:`GatedBackend` keeps its records in process, like ``memory://``, but it
is *not* an :class:`~sophia_memory.backends.ObjectStore`: the engine treats it as a slow tier,
and every call passes a :class:`Gate` twice, before its effect and after it (the effect itself
is atomic, as one round trip or one transaction is). At each passage the gate can

* yield to the event loop a number of times drawn from its seeded random generator
  (``max_yields``; the same seed and program give the same interleaving), and
* hold the call until the test releases it (:meth:`Gate.hold`, :meth:`Gate.release`), keyed
  by method names, a key and the passage (``"before"`` or ``"after"``), and
* make the call fail with :class:`~sophia_memory.errors.BackendError` before its effect
  (:meth:`Gate.fail`), as a tier that drops a connection does.

A ``shared=1`` backend (:class:`SharedGatedBackend`) also stands for a store that other
processes write: it accepts the engine's invalidation listener, and
:meth:`SharedGatedBackend.write_elsewhere` changes a record and reports the key the way Redis
key tracking does; :meth:`SharedGatedBackend.report` reports without changing anything.

Opened by URL once :mod:`sophia_memory.testing` is imported::

    Memory.open(tiers={Tier.CORTEX: "gated://c?yields=3&seed=7", ...})

Options: ``yields`` (the most yields per passage, default 0), ``seed``, ``shared=1`` and
``persistent=1``:
the records live in a module-level dict by name, and a backend opened with ``persistent=1``
finds what the last one of that name left (a restart); without it each open starts empty.
:func:`gate` returns the gate of a name, :func:`gated_data` its records, :func:`reset_gated`
forgets them.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ..backends import Backend, BackendURL, register
from ..backends.base import InvalidationListener
from ..errors import BackendError, ConfigError
from ..tiers import Record

if TYPE_CHECKING:
    from ..config import MemoryConfig
    from ..tiers import Tier

__all__ = ["Gate", "GatedBackend", "Point", "SharedGatedBackend", "gate", "gated_data",
           "reset_gated"]

#: Where a call passes its gate: before its effect or after it (before returning).
Point = Literal["before", "after"]


@dataclass(eq=False)
class _Hold:
    methods: frozenset[str] | None
    key: str | None
    point: Point
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, keys: tuple[str, ...], point: Point) -> bool:
        return (point == self.point and (self.methods is None or method in self.methods)
                and (self.key is None or self.key in keys))


@dataclass(eq=False)
class _Failure:
    methods: frozenset[str] | None
    key: str | None
    times: int

    def matches(self, method: str, keys: tuple[str, ...]) -> bool:
        return ((self.methods is None or method in self.methods)
                and (self.key is None or self.key in keys))


def _methods(methods: str | Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    return frozenset([methods] if isinstance(methods, str) else methods)


class Gate:
    """Decides how long each call of the gated backends sharing it is suspended."""

    def __init__(self, seed: int = 0, max_yields: int = 0) -> None:
        self.rng = random.Random(seed)
        #: The most times a passage yields to the event loop (drawn uniformly from 0..this).
        self.max_yields = max_yields
        self._holds: list[_Hold] = []
        self._failures: list[_Failure] = []
        #: Calls made to fail so far: (method, keys).
        self.failed: list[tuple[str, tuple[str, ...]]] = []
        #: Calls waiting at a hold now: (method, keys, point).
        self.parked: list[tuple[str, tuple[str, ...], Point]] = []
        #: The latest calls that passed (method, keys), oldest first.
        self.log: deque[tuple[str, tuple[str, ...]]] = deque(maxlen=10_000)

    def seed(self, seed: int) -> None:
        """Restart the random generator (the same seed replays the same yields)."""
        self.rng.seed(seed)

    def hold(self, methods: str | Iterable[str] | None = None, key: str | None = None,
             point: Point = "before") -> None:
        """Stop calls of ``methods`` (None: any) touching ``key`` (None: any) at ``point``
        until :meth:`release` with the same arguments."""
        self._holds.append(_Hold(_methods(methods), key, point))

    def release(self, methods: str | Iterable[str] | None = None, key: str | None = None,
                point: Point = "before") -> None:
        """Let the calls a :meth:`hold` with these arguments stopped go on."""
        wanted = _methods(methods)
        for h in [h for h in self._holds
                  if (h.methods, h.key, h.point) == (wanted, key, point)]:
            self._holds.remove(h)
            h.event.set()

    def fail(self, methods: str | Iterable[str] | None = None, key: str | None = None,
             times: int = 1) -> None:
        """Make the next ``times`` calls of ``methods`` (None: any) touching ``key`` (None:
        any) raise :class:`~sophia_memory.errors.BackendError` before their effect."""
        if times < 1:
            raise ValueError("times must be at least 1")
        self._failures.append(_Failure(_methods(methods), key, times))

    def release_all(self) -> None:
        for h in self._holds:
            h.event.set()
        self._holds.clear()

    def blocked(self, methods: str | Iterable[str] | None = None, key: str | None = None,
                point: Point | None = None) -> bool:
        """Whether a call matching the arguments waits at a hold now."""
        wanted = _methods(methods)
        return any((wanted is None or m in wanted) and (key is None or key in keys)
                   and (point is None or p == point) for m, keys, p in self.parked)

    async def wait_blocked(self, methods: str | Iterable[str] | None = None,
                           key: str | None = None, point: Point | None = None, *,
                           unless: asyncio.Future[Any] | None = None,
                           spins: int = 10_000) -> bool:
        """Yield to the event loop until a matching call waits at a hold (True), or
        ``unless`` is done or ``spins`` yields have passed (False)."""
        for _ in range(spins):
            if self.blocked(methods, key, point):
                return True
            if unless is not None and unless.done():
                return False
            await asyncio.sleep(0)
        return self.blocked(methods, key, point)

    async def passage(self, method: str, keys: tuple[str, ...], point: Point) -> None:
        """Where a gated call suspends: random yields, then any hold that matches."""
        if point == "before":
            self.log.append((method, keys))
            failure = next((f for f in self._failures if f.matches(method, keys)), None)
            if failure is not None:
                failure.times -= 1
                if not failure.times:
                    self._failures.remove(failure)
                self.failed.append((method, keys))
                raise BackendError(f"gated call {method}{keys} failed as the test asked")
        if self.max_yields:
            for _ in range(self.rng.randint(0, self.max_yields)):
                await asyncio.sleep(0)
        while True:
            hold = next((h for h in self._holds if h.matches(method, keys, point)), None)
            if hold is None:
                return
            entry = (method, keys, point)
            self.parked.append(entry)
            try:
                await hold.event.wait()
            finally:
                self.parked.remove(entry)


_GATES: dict[str, Gate] = {}
_STORES: dict[str, dict[str, Record]] = {}


def gate(name: str) -> Gate:
    """The gate of the gated backends named ``name`` (made on first use)."""
    return _gate_of(name)


def _gate_of(name: str) -> Gate:
    found = _GATES.get(name)
    if found is None:
        found = _GATES[name] = Gate()
    return found


def gated_data(name: str) -> dict[str, Record]:
    """The records the gated backend ``name`` holds (the live dict: for inspection)."""
    return _STORES.setdefault(name, {})


def reset_gated(name: str | None = None) -> None:
    """Forget the records and the gate of ``name`` (None: of every name); holds are
    released first."""
    for n in [name] if name is not None else list(_GATES):
        g = _GATES.pop(n, None)
        if g is not None:
            g.release_all()
    for n in [name] if name is not None else list(_STORES):
        _STORES.pop(n, None)


def _copy(rec: Record) -> Record:
    return replace(rec, extra=dict(rec.extra))


class GatedBackend(Backend):
    """An in-process store of records whose every call passes a :class:`Gate`."""

    scheme = "gated"

    def __init__(self, name: str = "gated", *, gate: Gate | None = None,
                 persistent: bool = False) -> None:
        self.name = name
        #: Shared by every gated backend of this name unless one is given.
        self.gate = gate if gate is not None else _gate_of(name)
        self.persistent = persistent
        if persistent:
            self._data = _STORES.setdefault(name, {})
        else:
            self._data = _STORES[name] = {}
        self._closed = False

    async def _pass(self, method: str, keys: tuple[str, ...], point: Point) -> None:
        if self._closed:
            raise BackendError(f"gated backend {self.name!r} is closed")
        await self.gate.passage(method, keys, point)

    async def get(self, key: str, now: float) -> Record | None:
        await self._pass("get", (key,), "before")
        rec = self._data.get(key)
        found = None if rec is None else _copy(rec)
        await self._pass("get", (key,), "after")
        return found

    async def get_many(self, keys: Iterable[str], now: float) -> dict[str, Record]:
        wanted = tuple(keys)
        await self._pass("get_many", wanted, "before")
        found = {k: _copy(r) for k in wanted if (r := self._data.get(k)) is not None}
        await self._pass("get_many", wanted, "after")
        return found

    async def put(self, key: str, record: Record) -> None:
        await self._pass("put", (key,), "before")
        self._data[key] = _copy(record)
        await self._pass("put", (key,), "after")

    async def put_many(self, records: Mapping[str, Record]) -> None:
        keys = tuple(records)
        await self._pass("put_many", keys, "before")
        self._data.update((k, _copy(r)) for k, r in records.items())
        await self._pass("put_many", keys, "after")

    async def read_for_update(self, key: str, now: float) -> tuple[Record | None, Any]:
        """The record and, as the token, the stored object itself (identity)."""
        await self._pass("read_for_update", (key,), "before")
        rec = self._data.get(key)
        found = None if rec is None else _copy(rec)
        await self._pass("read_for_update", (key,), "after")
        return found, rec

    async def put_if(self, key: str, record: Record, token: Any) -> bool:
        await self._pass("put_if", (key,), "before")
        done = self._data.get(key) is token
        if done:
            self._data[key] = _copy(record)
        await self._pass("put_if", (key,), "after")
        return done

    async def delete(self, key: str, now: float) -> bool:
        await self._pass("delete", (key,), "before")
        rec = self._data.pop(key, None)
        await self._pass("delete", (key,), "after")
        return rec is not None and not rec.expired(now)

    async def delete_many(self, keys: Iterable[str], now: float) -> int:
        wanted = tuple(dict.fromkeys(keys))
        await self._pass("delete_many", wanted, "before")
        removed = [r for k in wanted if (r := self._data.pop(k, None)) is not None]
        await self._pass("delete_many", wanted, "after")
        return sum(not r.expired(now) for r in removed)

    async def keys(self, prefix: str, now: float) -> list[str]:
        await self._pass("keys", (), "before")
        found = [k for k, r in self._data.items() if k.startswith(prefix) and not r.expired(now)]
        await self._pass("keys", (), "after")
        return found

    async def purge_expired(self, now: float) -> int:
        await self._pass("purge_expired", (), "before")
        dead = [k for k, r in self._data.items() if r.expired(now)]
        for k in dead:
            del self._data[k]
        await self._pass("purge_expired", (), "after")
        return len(dead)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.persistent and _STORES.get(self.name) is self._data:
            del _STORES[self.name]

    def stats(self) -> dict[str, Any]:
        return {"items": len(self._data), "calls": len(self.gate.log),
                "parked": len(self.gate.parked)}

    def describe(self) -> str:
        kept = ", persistent" if self.persistent else ""
        return f"gated in-process store {self.name!r} (yields <= {self.gate.max_yields}{kept})"


class SharedGatedBackend(GatedBackend):
    """A gated backend that other processes write too: it reports their writes to the
    engine's invalidation listener (:class:`~sophia_memory.backends.Invalidating`)."""

    def __init__(self, name: str = "gated", *, gate: Gate | None = None,
                 persistent: bool = False) -> None:
        super().__init__(name, gate=gate, persistent=persistent)
        self.listener: InvalidationListener | None = None
        #: What was reported, in order: lists of keys, or None (everything may have changed).
        self.reported: list[list[str] | None] = []

    def set_invalidation_listener(self, listener: InvalidationListener) -> None:
        self.listener = listener

    def report(self, keys: list[str] | None) -> None:
        """Tell the listener that ``keys`` (None: any key) changed elsewhere."""
        self.reported.append(None if keys is None else list(keys))
        if self.listener is not None:
            self.listener(None if keys is None else list(keys))

    def write_elsewhere(self, key: str, record: Record | None, *, report: bool = True) -> None:
        """Another process puts ``record`` under ``key`` (None: deletes it); reported to the
        listener at once unless ``report`` is false (then call :meth:`report` later)."""
        if record is None:
            self._data.pop(key, None)
        else:
            self._data[key] = _copy(record)
        if report:
            self.report([key])

    def describe(self) -> str:
        return super().describe().replace("gated in-process store", "shared gated store")


def _natural(url: BackendURL, name: str) -> int | None:
    """A non-negative integer option (0 is a value here, not "no limit"), or None."""
    value = url.options.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise ConfigError(f"{url.redacted()}: option {name}={value!r}: takes an integer >= 0")
    return int(value)


def open_gated(url: BackendURL, tier: Tier, config: MemoryConfig) -> Backend:
    """The ``gated://name?yields=N&seed=S&persistent=1&shared=1`` factory (name: the
    tier's)."""
    persistent = url.flag("persistent", False)
    shared = url.flag("shared", False)
    yields, seed = _natural(url, "yields"), _natural(url, "seed")
    name = url.netloc or url.path.strip("/") or tier.name.lower()
    g = _gate_of(name)
    if yields is not None:
        g.max_yields = yields
    if seed is not None:
        g.seed(seed)
    kind = SharedGatedBackend if shared else GatedBackend
    return kind(name, gate=g, persistent=persistent)


register("gated", open_gated, ("persistent", "seed", "shared", "yields"))
