"""The LRU policy, through the BoundedStore the in-process tier uses, misses exactly as often as
libCacheSim's LRU on every shared trace (whole traces, at 1, 5, 10 and 20 % of their unique
ids; model as in shared/traces/README.md: every request a get, a miss inserts, size 1)."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import pytest

from sophia_memory.policies import BoundedStore, LRUPolicy
from sophia_memory.tiers import Record

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
NAMES = ("cloudphysics-io", "lirs-multi1", "lirs-sprite")


def _trace(name: str) -> list[str]:
    path = TRACES / f"{name}.trace.gz"
    if not path.exists():
        pytest.skip(f"shared trace {path} is not on this machine")
    with gzip.open(path, "rt") as fh:
        return fh.read().split()


def _lru_misses(trace: list[str], cap: int) -> int:
    store = BoundedStore(cap, None, LRUPolicy())
    rec = Record(None, size=1)
    misses = 0
    for key in trace:
        if store.peek(key) is None:
            misses += 1
            store.set(key, rec)
    return misses


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
            assert _lru_misses(trace, cap) == theirs, (name, size, cap)
