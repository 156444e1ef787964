"""Timing machinery shared by every suite: contestants, interleaved rounds, statistics.

A *suite* pits sophia_memory (its *reference* contestant) against *anchors*: what a user would
otherwise write or pick. Every contestant is an ``async`` callable that performs ``ops``
operations in a tight loop; the harness times whole calls with ``time.perf_counter_ns`` and
divides, so the clock's own cost never lands on a single operation.

Fairness on a small, noisy machine:

* each contestant's operation count is calibrated once so one round takes about
  ``round_s`` seconds (capped at ``max_ops``), unless the suite fixes it;
* rounds interleave the contestants (A, B, C, then B, C, A, ...: every round runs each
  contestant once, and the starting one rotates so nobody always runs first or last);
* the garbage collector is run before every timed call and left enabled during it;
* the figure reported is the median over rounds of the per-operation time, with the 90th
  percentile over rounds beside it as the spread.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Contestant",
    "ContestantResult",
    "Settings",
    "Suite",
    "SuiteResult",
    "Target",
    "TargetResult",
    "measure",
]

#: ``run(ops, pass_no)``: perform ``ops`` operations. ``pass_no`` is unique per call, so a
#: contestant that writes can use fresh keys on every call.
RunFn = Callable[[int, int], Awaitable[None]]
#: A hook returning facts to put in the report (validity checks, backend counters).
InfoFn = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Settings:
    """How long and how hard to measure."""

    mode: str
    rounds: int
    round_s: float  # target duration of one contestant's call in a round
    min_ops: int
    max_ops: int
    sqlite_items: int  # rows preloaded for the SQLite get suite
    put_total: int  # puts per round in the SQLite put suite
    writers: int  # concurrent writers in the SQLite put suite
    seed: int

    @classmethod
    def full(cls) -> Settings:
        return cls(mode="full", rounds=11, round_s=0.25, min_ops=2_000, max_ops=200_000,
                   sqlite_items=10_000, put_total=20_000, writers=100, seed=20261122)

    @classmethod
    def quick(cls) -> Settings:
        return cls(mode="quick", rounds=3, round_s=0.02, min_ops=200, max_ops=20_000,
                   sqlite_items=2_000, put_total=2_000, writers=100, seed=20261122)


@dataclass(frozen=True)
class Contestant:
    """One thing being timed. ``ops`` fixes the operations per round (else calibrated)."""

    name: str
    label: str
    run: RunFn
    ops: int | None = None


@dataclass(frozen=True)
class Target:
    """An acceptance criterion on the reference contestant.

    ``measure`` is ``median_us`` (the reference's median time per operation, µs),
    ``speedup`` (``against``'s median time / the reference's: above 1, sophia is faster) or
    ``time_ratio`` (the reference's median time / ``against``'s: the inverse).
    """

    text: str
    measure: Literal["median_us", "speedup", "time_ratio"]
    cmp: Literal["<=", ">=", ">"]
    bound: float
    against: str | None = None


@dataclass
class Suite:
    """Contestants timed side by side; ``reference`` names sophia_memory's contestant."""

    key: str
    title: str
    unit: str  # what one operation is, for the report
    reference: str
    contestants: list[Contestant]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    show_rate: bool = False
    before: InfoFn | None = None  # after calibration, before the timed rounds
    after: InfoFn | None = None  # after the timed rounds


@dataclass
class ContestantResult:
    name: str
    label: str
    ops_per_round: int
    rounds_ns: list[float]  # time per operation in each round, in run order

    @property
    def median_ns(self) -> float:
        return statistics.median(self.rounds_ns)

    @property
    def p90_ns(self) -> float:
        return percentile(self.rounds_ns, 0.90)

    def as_dict(self, reference: ContestantResult) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "ops_per_round": self.ops_per_round,
            "rounds": len(self.rounds_ns),
            "per_op_ns": {
                "median": round(self.median_ns, 1),
                "p90": round(self.p90_ns, 1),
                "min": round(min(self.rounds_ns), 1),
                "max": round(max(self.rounds_ns), 1),
            },
            "ops_per_s_median": round(1e9 / self.median_ns, 1),
            # above 1: sophia_memory (the reference) is that many times faster than this row
            "speedup_of_reference": round(self.median_ns / reference.median_ns, 3),
            "rounds_ns": [round(x, 1) for x in self.rounds_ns],
        }


@dataclass
class TargetResult:
    target: Target
    value: float

    @property
    def passed(self) -> bool:
        t = self.target
        if t.cmp == "<=":
            return self.value <= t.bound
        return self.value >= t.bound if t.cmp == ">=" else self.value > t.bound

    def as_dict(self) -> dict[str, Any]:
        t = self.target
        return {"text": t.text, "measure": t.measure, "against": t.against, "cmp": t.cmp,
                "bound": t.bound, "value": round(self.value, 3), "passed": self.passed}


@dataclass
class SuiteResult:
    suite: Suite
    results: list[ContestantResult]
    targets: list[TargetResult]
    info: dict[str, Any]
    elapsed_s: float

    @property
    def reference(self) -> ContestantResult:
        return self.by_name(self.suite.reference)

    def by_name(self, name: str) -> ContestantResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        s = self.suite
        ref = self.reference
        return {
            "key": s.key,
            "title": s.title,
            "unit": s.unit,
            "reference": s.reference,
            "notes": s.notes,
            "contestants": [r.as_dict(ref) for r in self.results],
            "targets": [t.as_dict() for t in self.targets],
            "info": self.info,
            "elapsed_s": round(self.elapsed_s, 2),
        }


def percentile(data: list[float], q: float) -> float:
    """The ``q`` quantile of ``data`` by linear interpolation between closest ranks."""
    xs = sorted(data)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class _Passes:
    """Hands out the unique ``pass_no`` each call of a contestant receives."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        self._next += 1
        return self._next


async def _timed(c: Contestant, ops: int, passes: _Passes) -> int:
    gc.collect()
    t0 = time.perf_counter_ns()
    await c.run(ops, passes.take())
    return time.perf_counter_ns() - t0


async def _calibrate(c: Contestant, settings: Settings, passes: _Passes) -> int:
    """Operations per round: fixed by the contestant, else enough for ``round_s`` seconds.

    The calibration calls double as warm-up (caches, statement caches, lazy set-up)."""
    if c.ops is not None:
        await c.run(min(c.ops, max(settings.min_ops, c.ops // 10)), passes.take())
        return c.ops
    ops = settings.min_ops
    while True:
        elapsed = await _timed(c, ops, passes)
        if elapsed >= 0.02e9 or ops >= settings.max_ops:
            break
        ops = min(ops * 4, settings.max_ops)
    per_op = elapsed / ops
    wanted = int(settings.round_s * 1e9 / max(per_op, 1.0))
    return max(settings.min_ops, min(settings.max_ops, wanted))


async def measure(suite: Suite, settings: Settings,
                  progress: Callable[[str], None] | None = None) -> SuiteResult:
    """Calibrate, run the interleaved rounds and evaluate the suite's targets."""
    started = time.perf_counter()
    passes = _Passes()
    contestants = suite.contestants
    ops = {c.name: await _calibrate(c, settings, passes) for c in contestants}
    info: dict[str, Any] = {}
    if suite.before is not None:
        info.update(await suite.before())
    samples: dict[str, list[float]] = {c.name: [] for c in contestants}
    n = len(contestants)
    for rnd in range(settings.rounds):
        for i in range(n):
            c = contestants[(rnd + i) % n]
            elapsed = await _timed(c, ops[c.name], passes)
            samples[c.name].append(elapsed / ops[c.name])
        if progress is not None:
            progress(f"  {suite.key}: round {rnd + 1}/{settings.rounds}")
    if suite.after is not None:
        info.update(await suite.after())
    results = [ContestantResult(c.name, c.label, ops[c.name], samples[c.name])
               for c in contestants]
    result = SuiteResult(suite, results, [], info, 0.0)
    result.targets = [TargetResult(t, _target_value(t, result)) for t in suite.targets]
    result.elapsed_s = time.perf_counter() - started
    return result


def _target_value(t: Target, result: SuiteResult) -> float:
    ref = result.reference.median_ns
    if t.measure == "median_us":
        return ref / 1000
    assert t.against is not None, f"target {t.text!r} needs 'against'"
    other = result.by_name(t.against).median_ns
    return other / ref if t.measure == "speedup" else ref / other
