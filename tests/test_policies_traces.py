"""The LRU policy, through the BoundedStore the in-process tier uses, misses exactly as often as
libCacheSim's LRU on every shared trace (whole traces, at 1, 5, 10 and 20 % of their unique
ids; model as in shared/traces/README.md: every request a get, a miss inserts, size 1); the
default policy is within 1 point of the best policy of the hit-ratio study and at most half a
point worse than LRU at each of those sizes."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from sophia_memory.policies import DEFAULT_POLICY, BoundedStore, policy_from_name
from sophia_memory.tiers import Record

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
NAMES = ("cloudphysics-io", "lirs-multi1", "lirs-sprite")
#: The study's recorded run: the reference policies' misses (libCacheSim, theine's median).
STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "hit_ratio_latest.json"


def _trace(name: str) -> list[str]:
    path = TRACES / f"{name}.trace.gz"
    if not path.exists():
        pytest.skip(f"shared trace {path} is not on this machine")
    with gzip.open(path, "rt") as fh:
        return fh.read().split()


def replay(store: BoundedStore, trace: list[Any]) -> int:
    """The study's model through ``store``: every request a get, a miss inserts (size 1).
    Returns the misses."""
    rec = Record(None, size=1)
    misses = 0
    for key in trace:
        if store.peek(key) is None:
            misses += 1
            store.set(key, rec)
    return misses


def _misses(trace: list[Any], cap: int, policy: str = "lru") -> int:
    return replay(BoundedStore(cap, None, policy_from_name(policy)), trace)


@pytest.mark.parametrize("name", NAMES)
def test_lru_equals_libcachesim_lru(name: str) -> None:
    lcs = pytest.importorskip("libcachesim", reason="libcachesim is not installed "
                              "(pip install sophia-memory[bench])")
    trace = _trace(name)
    unique = len(set(trace))
    with tempfile.TemporaryDirectory() as tmp:
        txt = os.path.join(tmp, "trace.txt")
        with open(txt, "w", encoding="ascii") as fh:
            fh.write("\n".join(trace) + "\n")
        for size in (0.01, 0.05, 0.10, 0.20):
            cap = max(10, round(unique * size))
            reader = lcs.TraceReader(txt, lcs.TraceType.PLAIN_TXT_TRACE)
            ratio, _ = lcs.LRU(cap).process_trace(reader)
            theirs = round(ratio * len(trace))
            assert abs(ratio * len(trace) - theirs) < 1e-6  # a whole number of misses
            assert _misses(trace, cap) == theirs, (name, size, cap)


@pytest.mark.parametrize("name", NAMES)
def test_the_default_policy_is_near_the_best_of_the_study(name: str) -> None:
    """Ids as ints, as the study replays them (their hash is the same in every process, so
    the frequency sketches are too); the other contestants' misses are the study's record."""
    trace = [int(x) for x in _trace(name)]
    rows = json.loads(STUDY.read_text())["traces"][name]["rows"]
    for row in rows:
        cap, n = row["capacity"], len(trace)
        others = {k: v for k, v in row["misses"].items() if k != f"sophia-{DEFAULT_POLICY}"}
        mine = _misses(trace, cap, DEFAULT_POLICY)
        lru = _misses(trace, cap, "lru")
        assert lru == others["sophia-lru"]
        best = min(others.values())
        assert mine / n <= best / n + 0.01, (row["size"], mine / n, best / n)
        assert mine / n <= lru / n + 0.005, (row["size"], mine / n, lru / n)
        assert mine == row["misses"][f"sophia-{DEFAULT_POLICY}"]  # the record is this code's
