"""VectorIndex (DESIGN.md §3 "Vector tier"): exact top-k, checked against references.

* a brute-force float64 NumPy reference over a dict of the vectors, on random data, under
  randomized interleavings of add / overwrite / remove, for k in {1, 10, 100}, both metrics;
* faiss ``IndexFlatIP`` (skipped without faiss-cpu), inputs normalised for cosine;
* batched search equals single searches; prefix (namespace) filtering; min_score;
* every invalid input raises InvalidArgumentError (or InvalidKeyError for keys);
* a Hypothesis state machine against a dict-of-vectors model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sophia_memory.errors import InvalidArgumentError, InvalidKeyError, SophiaMemoryError
from sophia_memory.vector_index import VectorIndex

SEP = "\x1f"
METRICS = ["cosine", "ip"]


class Reference:
    """The obvious implementation: a dict of float64 vectors and a full sort per query."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.vecs: dict[str, np.ndarray] = {}

    def prep(self, v: Any) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return v / np.linalg.norm(v, axis=-1, keepdims=True) if self.metric == "cosine" else v

    def add(self, key: str, v: Any) -> None:
        self.vecs[key] = self.prep(v)

    def remove(self, key: str) -> bool:
        return self.vecs.pop(key, None) is not None

    def search(self, q: Any, k: int, min_score: float | None = None,
               prefix: str | None = None) -> list[tuple[str, float]]:
        q = self.prep(q)
        hits = [(key, float(v @ q)) for key, v in self.vecs.items()
                if prefix is None or key.startswith(prefix)]
        hits.sort(key=lambda h: (-h[1], h[0]))
        hits = hits[:k]
        return [h for h in hits if min_score is None or h[1] >= min_score]


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Same keys in the same order; scores equal up to float32 rounding."""
    assert [key for key, _ in got] == [key for key, _ in want]
    if want:
        assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-6)


def compare(ix: VectorIndex, ref: Reference, queries: np.ndarray, **kw: Any) -> None:
    for k in (1, 10, 100):
        batch = ix.search_batch(queries, k=k, **kw)
        for q, hits in zip(queries, batch, strict=True):
            want = ref.search(q, k, **kw)
            assert_same(ix.search(q, k=k, **kw), want)
            assert_same(hits, ix.search(q, k=k, **kw))


# -- agreement with references ---------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_ops_match_reference(metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 24
    ix, ref = VectorIndex(metric=metric), Reference(metric)
    universe = [f"t{i % 3}{SEP}k{i}" for i in range(1500)]
    queries = rng.standard_normal((5, dim))
    for phase in range(6):
        for _ in range(400):
            op = rng.random()
            key = universe[int(rng.integers(len(universe)))]
            if op < 0.6:  # add or overwrite
                v = rng.standard_normal(dim).astype(np.float32)
                ix.add(key, v)
                ref.add(key, v)
            else:
                assert ix.remove(key) == ref.remove(key)
        if phase % 2 == 0:  # bulk: fresh keys, overwrites and a repeated key at once
            keys = [universe[int(i)] for i in rng.integers(len(universe), size=200)]
            mat = rng.standard_normal((200, dim)).astype(np.float32)
            ix.add_many(keys, mat)
            for key, v in zip(keys, mat, strict=True):
                ref.add(key, v)
        else:
            gone = [universe[int(i)] for i in rng.integers(len(universe), size=100)]
            expected = len(set(gone) & ref.vecs.keys())
            for key in gone:
                ref.remove(key)
            assert ix.remove_many(gone) == expected
        assert len(ix) == len(ref.vecs)
        assert sorted(ix.keys()) == sorted(ref.vecs)
        compare(ix, ref, queries)
        compare(ix, ref, queries, prefix=f"t1{SEP}")


@pytest.mark.parametrize("metric", METRICS)
def test_matches_faiss_flat_ip(metric: str) -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    n, dim = 5000, 64
    data = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    keys = [f"v{i:05d}" for i in range(n)]
    ix = VectorIndex(dim, metric=metric)
    ix.add_many(keys, data)
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries_f = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    else:
        queries_f = queries
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    for k in (1, 10, 100):
        dist, ids = flat.search(queries_f, k)
        for row, hits in enumerate(ix.search_batch(queries, k=k)):
            assert [key for key, _ in hits] == [keys[i] for i in ids[row]]
            assert np.allclose([s for _, s in hits], dist[row], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_batch_equals_single(metric: str) -> None:
    rng = np.random.default_rng(3)
    ix = VectorIndex(metric=metric)
    ix.add_many([f"k{i}" for i in range(300)], rng.standard_normal((300, 16)))
    queries = rng.standard_normal((9, 16))
    for k in (1, 5, 300, 1000):  # equal up to rounding: one GEMM against GEMVs
        batch = ix.search_batch(queries, k=k)
        assert len(batch) == len(queries)
        for q, hits in zip(queries, batch, strict=True):
            assert len(hits) == min(k, 300)
            assert_same(hits, ix.search(q, k=k))
    assert ix.search_batch(np.zeros((0, 16))) == []


@pytest.mark.parametrize("metric", METRICS)
def test_prefix_filter_equals_filtered_reference(metric: str) -> None:
    rng = np.random.default_rng(4)
    ix, ref = VectorIndex(metric=metric), Reference(metric)
    # "big" holds most rows (full scan then index), "small" few (gathered rows), plus keys
    # without a namespace and a namespace that is a prefix of another.
    keys = ([f"big{SEP}{i}" for i in range(700)] + [f"small{SEP}{i}" for i in range(40)]
            + [f"bigger{SEP}{i}" for i in range(30)] + [f"bare{i}" for i in range(50)])
    mat = rng.standard_normal((len(keys), 8)).astype(np.float32)
    ix.add_many(keys, mat)
    for key, v in zip(keys, mat, strict=True):
        ref.add(key, v)
    for key in keys[::7]:  # deletes shuffle rows across namespaces
        ix.remove(key)
        ref.remove(key)
    queries = rng.standard_normal((3, 8))
    for prefix in [f"big{SEP}", f"small{SEP}", "big", "b", "bare1", f"small{SEP}1",
                   f"none{SEP}", "none", SEP, f"big{SEP}{SEP}", ""]:
        compare(ix, ref, queries, prefix=prefix or None)
        compare(ix, ref, queries, prefix=prefix)


def test_min_score_filters_after_top_k() -> None:
    ix = VectorIndex(2, metric="ip")
    ix.add_many(["a", "b", "c", "d"], [[4, 0], [3, 0], [2, 0], [1, 0]])
    assert ix.search([1, 0], k=3, min_score=2.5) == [("a", 4.0), ("b", 3.0)]
    assert ix.search([1, 0], k=1, min_score=0.0) == [("a", 4.0)]
    assert ix.search([1, 0], k=10, min_score=2.0) == [("a", 4.0), ("b", 3.0), ("c", 2.0)]
    assert ix.search([1, 0], k=10, min_score=9.0) == []
    assert ix.search_batch([[1, 0], [-1, 0]], k=2, min_score=-2.0) == [
        [("a", 4.0), ("b", 3.0)], [("d", -1.0), ("c", -2.0)]]


def test_ties_are_broken_by_key() -> None:
    ix = VectorIndex(2, metric="ip")
    for key in ["e", "b", "d", "a", "c"]:
        ix.add(key, [1, 1])
    ix.add("z", [2, 2])
    ix.remove("b")  # moves "z" into b's row
    assert ix.search([1, 0], k=3) == [("z", 2.0), ("a", 1.0), ("c", 1.0)]
    assert ix.search([1, 0], k=1) == [("z", 2.0)]
    assert [key for key, _ in ix.search([0, 1], k=10)] == ["z", "a", "c", "d", "e"]


def test_top_k_exact_when_the_column_sample_misses_the_best() -> None:
    """Large n: the k-th best is bounded from a column sample, then refined. Put every good
    score (with ties across the k-th place) in rows the sample skips."""
    rng = np.random.default_rng(5)
    n = 6000
    vecs = np.zeros((n, 2), np.float32)
    vecs[:, 1] = 1.0
    good = np.arange(1, n, 4)[rng.permutation(n // 4)[:11]]  # rows 1 mod 4: never sampled
    vecs[good[:3], 0] = 5.0
    vecs[good[3:], 0] = 3.0
    names = [f"{int(x):08d}" for x in rng.permutation(10**7)[:n]]  # key order != row order
    ix, ref = VectorIndex(2, metric="ip"), Reference("ip")
    ix.add_many(names, vecs)
    for key, v in zip(names, vecs, strict=True):
        ref.add(key, v)
    queries = np.array([[1.0, 0.0], [1.0, 0.5], [-1.0, 0.0]])
    for k in (1, 3, 5, 11, 12):
        for q, hits in zip(queries, ix.search_batch(queries, k=k), strict=True):
            assert hits == ref.search(q, k)
            assert ix.search(q, k=k) == hits


# -- container behaviour ---------------------------------------------------------------------


def test_container_basics_and_growth() -> None:
    ix = VectorIndex(metric="cosine")
    assert len(ix) == 0 and ix.dim is None and ix.memory_bytes() == 0
    assert ix.search([1.0, 2.0, 3.0]) == []  # empty: nothing found, nothing fixed
    ix.add("a", [3, 0, 4])
    assert ix.dim == 3 and "a" in ix and "b" not in ix and 5 not in ix
    np.testing.assert_allclose(ix.vector("a"), [0.6, 0.0, 0.8], rtol=1e-6)
    ix.add("a", [0, 2, 0])  # overwrite replaces the row
    assert len(ix) == 1
    np.testing.assert_allclose(ix.vector("a"), [0, 1, 0])
    assert ix.memory_bytes() == 16 * 3 * 4
    ix.add_many([f"k{i}" for i in range(20)], np.ones((20, 3)))
    assert len(ix) == 21 and ix.memory_bytes() == 32 * 3 * 4  # capacity doubled
    assert sorted(ix.keys()) == sorted(["a", *(f"k{i}" for i in range(20))])
    assert ix.remove("a") and not ix.remove("a")
    assert ix.remove_many(["k1", "k1", "nope", "k2"]) == 2
    assert len(ix) == 18 and "k1" not in ix
    with pytest.raises(KeyError):
        ix.vector("k1")
    ix.clear()
    assert len(ix) == 0 and ix.memory_bytes() == 0 and ix.dim == 3


def test_add_many_repeated_key_keeps_last_row() -> None:
    ix = VectorIndex(2, metric="ip")
    ix.add("x", [9, 9])
    ix.add_many(["x", "y", "x", "y", "z"], [[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]])
    assert len(ix) == 3
    assert [ix.vector(k).tolist() for k in "xyz"] == [[3, 0], [4, 0], [5, 0]]


def test_accepts_lists_tuples_dtypes_and_torch() -> None:
    ix = VectorIndex(3, metric="ip")
    ix.add("list", [1, 2, 3])
    ix.add("tuple", (1.5, 2.5, 3.5))
    ix.add("int8", np.array([1, 0, -1], dtype=np.int8))
    ix.add("uint16", np.array([1, 2, 3], dtype=np.uint16))
    ix.add("f16", np.array([0.5, 0.25, 1], dtype=np.float16))
    ix.add("f64", np.array([1e-3, 2, 3], dtype=np.float64))
    ix.add_many(("m1", "m2"), [[1, 1, 1], (2, 2, 2)])
    torch = pytest.importorskip("torch")
    ix.add("torch", torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert ix.search(torch.tensor([0.0, 0.0, 1.0]), k=1) == [("tuple", 3.5)]
    assert ix.vector("uint16").dtype == np.float32
    assert len(ix) == 9


@pytest.mark.parametrize("scale", [1e-30, 1e-36, 1e30, 1e37])
def test_cosine_normalises_tiny_and_huge_vectors(scale: float) -> None:
    ix = VectorIndex(2)
    ix.add("v", np.array([3.0, 4.0]) * scale)
    np.testing.assert_allclose(ix.vector("v"), [0.6, 0.8], rtol=1e-5)
    assert ix.search(np.array([1.0, 0.0]) * scale)[0][1] == pytest.approx(0.6, rel=1e-5)


BAD_VECTORS: list[tuple[str, Any]] = [
    ("wrong dimension", [1.0, 2.0]),
    ("NaN", [1.0, float("nan"), 0.0]),
    ("inf", [1.0, float("inf"), 0.0]),
    ("overflows float32", np.array([1e300, 0, 0])),
    ("strings", ["1", "2", "3"]),
    ("object array", np.array([1, None, 3], dtype=object)),
    ("ragged", [[1, 2], [3]]),
    ("complex", np.array([1j, 0, 0])),
    ("bool", np.array([True, False, True])),
    ("rank 0", 3.0),
    ("rank 2", [[1.0, 2.0, 3.0]]),
    ("not an array", {"a": 1}),
    ("empty", []),
]


@pytest.mark.parametrize(("why", "bad"), BAD_VECTORS, ids=[w for w, _ in BAD_VECTORS])
def test_invalid_vectors_raise(why: str, bad: Any) -> None:
    ix = VectorIndex(3, metric="ip")
    ix.add("ok", [1, 2, 3])
    with pytest.raises(InvalidArgumentError) as err:
        ix.add("new", bad)
    assert isinstance(err.value, ValueError) and isinstance(err.value, SophiaMemoryError)
    assert str(err.value)
    with pytest.raises(InvalidArgumentError):
        ix.search(bad)
    assert ix.keys() == ["ok"]


def test_invalid_arguments_raise() -> None:
    ix = VectorIndex(3)
    with pytest.raises(InvalidArgumentError, match="zero vector"):
        ix.add("z", [0, 0, 0])
    with pytest.raises(InvalidArgumentError, match="zero vector"):
        ix.search([0, 0, 0])
    ix.add("a", [1, 2, 3])
    for k in (0, -1, 1.5, True, "3"):
        with pytest.raises(InvalidArgumentError, match="k must be"):
            ix.search([1, 2, 3], k=k)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="keys for"):
        ix.add_many(["x", "y"], np.ones((3, 3)))
    with pytest.raises(InvalidArgumentError, match="2-D"):
        ix.add_many(["x"], np.ones(3))
    with pytest.raises(InvalidArgumentError, match="2-D"):
        ix.search_batch(np.ones(3))
    with pytest.raises(InvalidArgumentError, match="zero vector"):  # all or nothing
        ix.add_many(["x", "y"], [[1, 1, 1], [0, 0, 0]])
    for key in ("", 5, None):
        with pytest.raises(InvalidKeyError):
            ix.add(key, [1, 1, 1])  # type: ignore[arg-type]
    assert ix.keys() == ["a"]
    with pytest.raises(InvalidArgumentError, match="metric"):
        VectorIndex(metric="l2")  # type: ignore[arg-type]
    for dim in (0, -3, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="dim"):
            VectorIndex(dim)  # type: ignore[arg-type]


def test_failed_first_add_fixes_no_dimension() -> None:
    ix = VectorIndex(metric="ip")
    with pytest.raises(InvalidArgumentError):
        ix.add("a", [1.0, float("nan")])
    ix.add_many([], np.zeros((0, 5)))
    assert ix.dim is None
    ix.add("a", [1, 2, 3, 4])
    assert ix.dim == 4


# -- Hypothesis: the index against a dict of vectors -----------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "e", f"t1{SEP}a", f"t1{SEP}b", f"t2{SEP}a"])
DIM = 3
# Small integers: inner products are exact in float32, so ties really tie.
VECS = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM).filter(any)


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, dict[str, np.ndarray]] = {"ip": {}, "cosine": {}}
        self.ix = {m: VectorIndex(DIM, metric=m) for m in METRICS}  # type: ignore[misc]

    @rule(key=KEYS, vec=VECS)
    def add(self, key: str, vec: list[int]) -> None:
        for m in METRICS:
            self.ix[m].add(key, vec)
            self.model[m][key] = np.asarray(vec, np.float64)

    @rule(keys=st.lists(KEYS, max_size=6), data=st.data())
    def add_many(self, keys: list[str], data: st.DataObject) -> None:
        vecs = [data.draw(VECS) for _ in keys]
        for m in METRICS:
            self.ix[m].add_many(keys, np.asarray(vecs, np.float32).reshape(len(keys), DIM))
            self.model[m].update(zip(keys, (np.asarray(v, np.float64) for v in vecs),
                                     strict=True))

    @rule(keys=st.lists(KEYS, max_size=3))
    def remove(self, keys: list[str]) -> None:
        for m in METRICS:
            gone = set(keys) & self.model[m].keys()
            for key in gone:
                del self.model[m][key]
            assert self.ix[m].remove_many(keys) == len(gone)

    @rule(q=VECS, k=st.integers(1, 10), prefix=st.sampled_from([None, "t1", f"t1{SEP}", "b"]))
    def search(self, q: list[int], k: int, prefix: str | None) -> None:
        ref = Reference("ip")
        ref.vecs = dict(self.model["ip"])
        assert self.ix["ip"].search(q, k=k, prefix=prefix) == ref.search(q, k, prefix=prefix)
        # cosine of integer vectors ties up to rounding: compare scores, and each key's score
        ref = Reference("cosine")
        ref.vecs = {key: ref.prep(v) for key, v in self.model["cosine"].items()}
        got = self.ix["cosine"].search(q, k=k, prefix=prefix)
        want = ref.search(q, k, prefix=prefix)
        assert len(got) == len(want)
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
        qn = ref.prep(q)
        for key, score in got:
            assert score == pytest.approx(float(ref.vecs[key] @ qn), abs=1e-6)

    @invariant()
    def same_contents(self) -> None:
        for m in METRICS:
            ix, model = self.ix[m], self.model[m]
            assert len(ix) == len(model) and sorted(ix.keys()) == sorted(model)
            for key, v in model.items():
                want = v / np.linalg.norm(v) if m == "cosine" else v
                np.testing.assert_allclose(ix.vector(key), want, rtol=1e-6, atol=1e-7)


IndexMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                          deadline=None)
TestIndexMachine = IndexMachine.TestCase
