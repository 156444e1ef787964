"""A linearizability checker for per-key register histories, and a recorder that makes them.

A *history* is what concurrent clients saw: each operation on one key with the moment it was
called and the moment it returned. It is **linearizable** when every operation can be given a
single instant between its call and its return such that, taken in the order of those instants,
the operations behave like one register per key: ``put`` sets the value, ``delete`` sets it to
absent (and reports whether a value was there), ``get`` returns the current value or absent. So
a ``get`` may return the value of the latest completed put, or of a put or delete still in
flight, but never a value that a completed put or delete had superseded (DESIGN.md §3,
"Consistency").

The search is the algorithm of Wing & Gong (1993) with the memoisation of Lowe (2017), as used
by Knossos and Porcupine: walk the calls and returns in time order; at a call, try to linearize
that operation now (if the register model accepts it); at a return whose operation is not yet
linearized, undo the last choice. A cache of ``(set of linearized operations, register state)``
prunes every configuration already explored, which keeps histories of a few dozen operations
per key cheap. Keys are independent registers, so each key's history is checked on its own.

Times are any totally ordered numbers; :class:`HistoryRecorder` uses a counter that moves on at
every call and every return (the real-time order within one event loop), never the wall clock::

    recorder = HistoryRecorder(mem)
    a, b = recorder.client("a"), recorder.client("b")
    await asyncio.gather(a.put("k", "v1"), b.get("k"))
    result = check_history(recorder.history)
    assert result.ok, result.report

On failure :attr:`CheckResult.report` names the key and prints a small failing history (the
key's operations, reduced while they stay non-linearizable) as a timeline, one line per
operation: ``[call, return] client op(args) -> result``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from ..memory import Memory
    from ..tiers import Tier

__all__ = [
    "ABSENT",
    "NEVER",
    "UNKNOWN",
    "CheckResult",
    "HistoryRecorder",
    "Operation",
    "RecordingClient",
    "check_history",
    "check_key",
    "concurrent_pairs",
    "timeline",
]

Kind = Literal["put", "delete", "get"]


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: The output of a ``get`` that found nothing (distinct from a stored ``None``).
ABSENT: Final[Any] = _Marker("absent")
#: The output of an operation whose result was not observed (it raised, or the batch call it
#: belonged to reports only a total): any result is accepted for it.
UNKNOWN: Final[Any] = _Marker("unknown")
#: The return time of an operation that never returned (it raised): it may take effect at any
#: moment after its call, or not at all.
NEVER: Final = float("inf")

_NO_VALUE = -1  # register state "absent": no put's value is current


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation on one key as a client saw it.

    ``value`` is the value a put wrote (None for get and delete); ``output`` is what the
    operation returned: the value read or :data:`ABSENT` for a get, whether a live value was
    removed for a delete (a bool), None for a put, :data:`UNKNOWN` when not observed.
    ``call`` < ``ret``; ``ret`` is :data:`NEVER` for an operation that did not return.
    """

    key: str
    kind: Kind
    value: Any
    output: Any
    call: float
    ret: float
    client: str = ""
    #: How the client called it (``put_many``, ``get_many``...), for the report.
    via: str = ""
    #: The home tier a put named (its name), for the report.
    tier: str = ""

    def describe(self) -> str:
        via = f" [{self.via}]" if self.via and self.via != self.kind else ""
        at = f" @{self.tier}" if self.tier else ""
        args = f"{self.key!r}, {self.value!r}" if self.kind == "put" else repr(self.key)
        out = "ok" if self.kind == "put" and self.output is None else repr(self.output)
        return f"{self.kind}({args}){at}{via} -> {out}"


# -- the register model ----------------------------------------------------------------------

Same = Callable[[Any, Any], bool]


def _equal(a: Any, b: Any) -> bool:
    return type(a) is type(b) and bool(a == b)


def _step(op: Operation, index: int, state: int, values: Sequence[Any],
          same: Same) -> int | None:
    """The register state after ``op`` (the index of the put whose value is current, or
    ``_NO_VALUE``) if ``op`` is legal in ``state``, else None."""
    if op.kind == "put":
        return index
    if op.kind == "delete":
        if op.output is UNKNOWN or bool(op.output) == (state != _NO_VALUE):
            return _NO_VALUE
        return None
    out = op.output
    if out is UNKNOWN:
        return state
    if out is ABSENT:
        return state if state == _NO_VALUE else None
    return state if state != _NO_VALUE and same(values[state], out) else None


def _linearizable(ops: Sequence[Operation], same: Same,
                  tally: list[int] | None = None) -> tuple[bool, list[int]]:
    """Wing & Gong's search with Lowe's cache over one key's operations.

    Returns whether a linearization exists and the longest legal order found (indexes into
    ``ops``), for the report. ``tally[0]`` is increased by the number of configurations the
    search explored (the size of its cache): the measure of its work.
    """
    n = len(ops)
    if n == 0:
        return True, []
    values = [op.value for op in ops]
    # Events: (time, is_return, op index); calls sort before returns at equal times, which
    # treats touching intervals as overlapping (the lenient reading).
    events = sorted([(op.call, 0, i) for i, op in enumerate(ops)]
                    + [(op.ret, 1, i) for i, op in enumerate(ops)])
    # A doubly linked list over the events, with ``head`` as its sentinel. Linearizing an
    # operation lifts its call and return out of the list; undoing puts them back (in the
    # reverse order, as in dancing links).
    head = len(events)
    nxt = [*range(1, head), head, 0]
    prv = [head, *range(head - 1), head - 1]
    ret_event = [0] * n
    for e, (_, is_ret, i) in enumerate(events):
        if is_ret:
            ret_event[i] = e

    def lift(e: int) -> None:
        for x in (e, ret_event[events[e][2]]):
            nxt[prv[x]] = nxt[x]
            prv[nxt[x]] = prv[x]

    def unlift(e: int) -> None:
        for x in (ret_event[events[e][2]], e):
            nxt[prv[x]] = x
            prv[nxt[x]] = x

    cache: set[tuple[int, int]] = set()
    stack: list[tuple[int, int]] = []  # (call event, register state before it)
    linearized = 0  # bitset of linearized operations
    state = _NO_VALUE
    best: list[int] = []
    e = nxt[head]
    while nxt[head] != head:
        # The list always ends with a return, so ``e`` never runs past it.
        _, is_ret, i = events[e]
        if not is_ret:
            new = _step(ops[i], i, state, values, same)
            if new is not None:
                seen = (linearized | 1 << i, new)
                if seen not in cache:
                    cache.add(seen)
                    stack.append((e, state))
                    linearized |= 1 << i
                    state = new
                    lift(e)
                    e = nxt[head]
                    continue
            e = nxt[e]
            continue
        # An operation returns here that no legal order has placed yet: undo the last choice.
        if len(stack) > len(best):
            best = [events[s][2] for s, _ in stack]
        if not stack:
            if tally is not None:
                tally[0] += len(cache)
            return False, best
        e, state = stack.pop()
        linearized &= ~(1 << events[e][2])
        unlift(e)
        e = nxt[e]
    if tally is not None:
        tally[0] += len(cache)
    return True, [events[s][2] for s, _ in stack]


def check_key(ops: Sequence[Operation], same: Same = _equal) -> bool:
    """Whether one key's operations are linearizable as a register starting absent."""
    return _linearizable(ops, same)[0]


# -- results and reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of :func:`check_history`. True when linearizable."""

    ok: bool
    #: The first key whose history is not linearizable (None when ok).
    key: str | None = None
    #: That key's whole history, and a reduced one that still fails.
    history: tuple[Operation, ...] = ()
    minimal: tuple[Operation, ...] = ()
    #: The longest legal order of the reduced history's operations that the search found.
    longest: tuple[Operation, ...] = ()
    keys_checked: int = 0
    operations: int = 0
    #: Configurations (linearized set, register state) the search explored, over every key
    #: checked: its work, independent of the machine's speed.
    explored: int = 0

    def __bool__(self) -> bool:
        return self.ok

    @property
    def report(self) -> str:
        """A readable account: ok, or the key and its failing history as a timeline."""
        if self.ok:
            return (f"linearizable: {self.operations} operations on {self.keys_checked} "
                    "key(s)")
        lines = [f"key {self.key!r} is not linearizable: {len(self.history)} operations on it, "
                 f"{len(self.minimal)} of them still fail on their own:",
                 *timeline(self.minimal)]
        if self.longest:
            order = ", ".join(op.describe() for op in self.longest)
            lines.append(f"longest legal order found: {order}; no operation can go next")
        else:
            lines.append("no operation can go first")
        if len(self.minimal) < len(self.history):
            lines += ["the key's whole history:", *timeline(self.history)]
        return "\n".join(lines)


def timeline(ops: Iterable[Operation]) -> list[str]:
    """One line per operation, by call time: ``[call, return] client op(args) -> result``."""
    rows = sorted(ops, key=lambda op: (op.call, op.ret))
    width = max((len(_time(t)) for op in rows for t in (op.call, op.ret)), default=1)
    cwidth = max((len(op.client) for op in rows), default=0)
    return [f"  [{_time(op.call):>{width}}, {_time(op.ret):>{width}}] "
            f"{op.client:<{cwidth}} {op.describe()}".rstrip() for op in rows]


def _time(t: float) -> str:
    if t == NEVER:
        return "never"
    return str(int(t)) if float(t).is_integer() else f"{t:g}"


def _without(ops: Sequence[Operation], i: int, same: Same) -> list[Operation] | None:
    """``ops`` without operation ``i``, such that if the result is not linearizable neither
    is ``ops`` (None when no such result exists).

    Dropping a get only removes a constraint. Dropping a put is safe when no remaining get
    read its value, and a delete when no remaining get read absent; the state a delete finds
    can then change, so the deletes whose outputs could be affected (True after a dropped put,
    False after a dropped delete) are weakened to :data:`UNKNOWN`. Without this care a
    reduced history could fail for a reason the real one does not have.
    """
    op = ops[i]
    rest = [*ops[:i], *ops[i + 1:]]
    if op.kind == "get":
        return rest
    reads = [r.output for r in rest if r.kind == "get" and r.output is not UNKNOWN]
    if op.kind == "put":
        if any(out is not ABSENT and same(op.value, out) for out in reads):
            return None
        affected = True
    else:
        if any(out is ABSENT for out in reads):
            return None
        affected = False
    return [replace(r, output=UNKNOWN) if r.kind == "delete" and r.output is not UNKNOWN
            and bool(r.output) is affected else r for r in rest]


def _reduce(ops: list[Operation], same: Same, budget: int = 400) -> list[Operation]:
    """Drop operations one at a time (reads first) while what is left still fails, keeping
    every step sound (:func:`_without`): a small failing history, not always the smallest."""
    current = list(ops)
    changed = True
    while changed and budget > 0:
        changed = False
        order = sorted(range(len(current)), key=lambda j: (current[j].kind != "get", -j))
        for i in order:
            if budget <= 0:
                break
            trial = _without(current, i, same)
            if trial is None or not trial:
                continue
            budget -= 1
            if not check_key(trial, same):
                current = trial
                changed = True
                break
    return current


def check_history(history: Iterable[Operation], same: Same = _equal) -> CheckResult:
    """Check a history key by key; the result of the first key that fails, else ok.

    ``same(written, read)`` decides whether a read returned a written value (default: equal
    type and ``==``; pass one that compares arrays for array values).
    """
    by_key: dict[str, list[Operation]] = {}
    count = 0
    for op in history:
        if op.ret <= op.call:
            raise ValueError(f"operation returns before it is called: {op}")
        by_key.setdefault(op.key, []).append(op)
        count += 1
    tally = [0]
    for key in sorted(by_key):
        ops = by_key[key]
        if _linearizable(ops, same, tally)[0]:
            continue
        small = _reduce(ops, same)
        _, order = _linearizable(small, same)
        return CheckResult(False, key, tuple(ops), tuple(small),
                           tuple(small[i] for i in order), len(by_key), count, tally[0])
    return CheckResult(True, keys_checked=len(by_key), operations=count, explored=tally[0])


def concurrent_pairs(history: Iterable[Operation]) -> int:
    """How many (read, write) pairs on the same key overlapped in time: a history where this
    is 0 tests nothing a sequential run would not."""
    by_key: dict[str, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    pairs = 0
    for ops in by_key.values():
        reads = [op for op in ops if op.kind == "get"]
        writes = [op for op in ops if op.kind != "get"]
        pairs += sum(1 for r in reads for w in writes if r.call < w.ret and w.call < r.ret)
    return pairs


# -- recording ---------------------------------------------------------------------------------


class HistoryRecorder:
    """Wraps a :class:`~sophia_memory.Memory` and records every call made through it.

    Each call takes a tick of a shared counter when it is invoked and another when it
    returns, so the history holds the real-time order of one event loop. Batch calls
    (``put_many``, ``get_many``, ``delete_many``) are recorded as one operation per key, each
    with the batch's interval; ``delete_many`` reports only a total, so its per-key outputs
    are :data:`UNKNOWN`. A call that raises is recorded as never returning (it may or may not
    have taken effect) and the exception propagates.

    Values put must be distinct (a unique value per put) for a stale read to be told apart.
    """

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.history: list[Operation] = []
        self._clock = itertools.count(1)

    def client(self, name: str) -> RecordingClient:
        """A handle whose operations are recorded under ``name``."""
        return RecordingClient(self, name)

    def tick(self) -> int:
        return next(self._clock)

    def check(self, same: Same = _equal) -> CheckResult:
        """:func:`check_history` of everything recorded so far."""
        return check_history(self.history, same)

    def concurrent_pairs(self) -> int:
        """:func:`concurrent_pairs` of everything recorded so far."""
        return concurrent_pairs(self.history)


def _tier_name(tier: Tier | str | int | None) -> str:
    if tier is None:
        return ""
    name = getattr(tier, "name", None)
    return name if isinstance(name, str) else str(tier)


class RecordingClient:
    """One client's view of a :class:`HistoryRecorder`: the Memory methods that read and
    write keys, recorded. Arguments are those of :class:`~sophia_memory.Memory`."""

    def __init__(self, recorder: HistoryRecorder, name: str) -> None:
        self.recorder = recorder
        self.name = name

    def _add(self, ops: Iterable[Operation]) -> None:
        self.recorder.history.extend(ops)

    def _failed(self, pending: Iterable[Operation]) -> None:
        self._add(replace(op, output=UNKNOWN, ret=NEVER) for op in pending)

    async def put(self, key: str, value: Any, *, tier: Tier | str | int | None = None,
                  ) -> None:
        op = Operation(key, "put", value, None, self.recorder.tick(), NEVER, self.name, "put",
                       _tier_name(tier))
        try:
            await self.recorder.memory.put(key, value, tier=tier)
        except BaseException:
            self._failed([op])
            raise
        self._add([replace(op, ret=self.recorder.tick())])

    async def put_many(self, items: Mapping[str, Any], *,
                       tier: Tier | str | int | None = None) -> None:
        call = self.recorder.tick()
        ops = [Operation(k, "put", v, None, call, NEVER, self.name, "put_many",
                         _tier_name(tier)) for k, v in items.items()]
        try:
            await self.recorder.memory.put_many(items, tier=tier)
        except BaseException:
            self._failed(ops)
            raise
        ret = self.recorder.tick()
        self._add(replace(op, ret=ret) for op in ops)

    async def delete(self, key: str) -> bool:
        op = Operation(key, "delete", None, UNKNOWN, self.recorder.tick(), NEVER, self.name,
                       "delete")
        try:
            existed = await self.recorder.memory.delete(key)
        except BaseException:
            self._failed([op])
            raise
        self._add([replace(op, output=existed, ret=self.recorder.tick())])
        return existed

    async def delete_many(self, keys: Iterable[str]) -> int:
        keys = list(dict.fromkeys(keys))
        call = self.recorder.tick()
        ops = [Operation(k, "delete", None, UNKNOWN, call, NEVER, self.name, "delete_many")
               for k in keys]
        try:
            removed = await self.recorder.memory.delete_many(keys)
        except BaseException:
            self._failed(ops)
            raise
        ret = self.recorder.tick()
        if len(ops) == 1:
            ops = [replace(ops[0], output=bool(removed))]
        self._add(replace(op, ret=ret) for op in ops)
        return removed

    async def get(self, key: str) -> Any:
        """The value, or :data:`ABSENT` when there is none."""
        op = Operation(key, "get", None, UNKNOWN, self.recorder.tick(), NEVER, self.name, "get")
        try:
            value = await self.recorder.memory.get(key, ABSENT)
        except BaseException:
            self._failed([op])
            raise
        self._add([replace(op, output=value, ret=self.recorder.tick())])
        return value

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(dict.fromkeys(keys))
        call = self.recorder.tick()
        ops = [Operation(k, "get", None, UNKNOWN, call, NEVER, self.name, "get_many")
               for k in keys]
        try:
            found = await self.recorder.memory.get_many(keys)
        except BaseException:
            self._failed(ops)
            raise
        ret = self.recorder.tick()
        self._add(replace(op, output=found.get(op.key, ABSENT), ret=ret) for op in ops)
        return found

    async def flush(self) -> None:
        """``Memory.flush`` (not an operation on any key: not recorded)."""
        await self.recorder.memory.flush()
