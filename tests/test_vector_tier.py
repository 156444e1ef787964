"""The vector tier (L4) through Memory: exact search against references, consistency with
puts and deletes, persistence, namespaces and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import InvalidArgumentError, ManualClock, Memory, Tier

DIM = 24


def reference(vectors: dict[str, np.ndarray[Any, Any]], query: np.ndarray[Any, Any], k: int,
              metric: str) -> list[tuple[str, float]]:
    keys = sorted(vectors)
    mat = np.stack([vectors[key] for key in keys]).astype(np.float64)
    q = query.astype(np.float64)
    if metric == "cosine":
        mat = mat / np.linalg.norm(mat, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    scores = mat @ q
    order = sorted(range(len(keys)), key=lambda i: (-scores[i], keys[i]))[:k]
    return [(keys[i], float(scores[i])) for i in order]


@pytest.mark.parametrize("metric", ["cosine", "ip"])
async def test_search_equals_brute_force_with_deletes_and_overwrites(
        tmp_path: Path, clock: ManualClock, metric: str) -> None:
    rng = np.random.default_rng(7)
    model: dict[str, np.ndarray[Any, Any]] = {}
    values: dict[str, Any] = {}
    async with Memory.open(path=str(tmp_path / "v.db"), clock=clock,
                           vector_metric=metric) as mem:
        initial = {f"doc{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(400)}
        await mem.put_many({k: {"n": k} for k in initial}, tier=Tier.VECTOR, vectors=initial)
        model.update(initial)
        values.update({k: {"n": k} for k in initial})
        for step in range(300):  # interleave deletes and overwrites
            key = f"doc{rng.integers(0, 450)}"
            if rng.random() < 0.3:
                await mem.delete(key)
                model.pop(key, None)
                values.pop(key, None)
            else:
                vec = rng.standard_normal(DIM).astype(np.float32)
                await mem.put(key, step, tier=Tier.VECTOR, vector=vec)
                model[key], values[key] = vec, step
        for k in (1, 10, 100):
            for _ in range(5):
                query = rng.standard_normal(DIM).astype(np.float32)
                hits = await mem.search(query, k=k, metric=metric)
                expected = reference(model, query, k, metric)
                assert [h.key for h in hits] == [key for key, _ in expected]
                np.testing.assert_allclose([h.score for h in hits],
                                           [s for _, s in expected], rtol=1e-4, atol=1e-5)
                assert all(h.value == values[h.key] for h in hits)
        queries = rng.standard_normal((8, DIM)).astype(np.float32)
        batched = await mem.search_batch(queries, k=10, metric=metric)
        single = [await mem.search(q, k=10, metric=metric) for q in queries]
        assert [[h.key for h in row] for row in batched] == [[h.key for h in row]
                                                             for row in single]


async def test_search_equals_faiss_index_flat_ip(mem: Memory) -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2000, DIM)).astype(np.float32)
    await mem.put_many({f"v{i}": i for i in range(len(data))}, tier=Tier.VECTOR,
                       vectors={f"v{i}": data[i] for i in range(len(data))})
    index = faiss.IndexFlatIP(DIM)
    index.add(data)
    queries = rng.standard_normal((10, DIM)).astype(np.float32)
    scores, ids = index.search(queries, 10)
    for q, row_ids, row_scores in zip(queries, ids, scores, strict=True):
        hits = await mem.search(q, k=10, metric="ip")
        assert [h.value for h in hits] == row_ids.tolist()
        np.testing.assert_allclose([h.score for h in hits], row_scores, rtol=1e-4)


async def test_index_survives_close_and_open(tmp_path: Path, clock: ManualClock) -> None:
    rng = np.random.default_rng(11)
    path = str(tmp_path / "p.db")
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    async with Memory.open(path=path, clock=clock) as mem:
        for i in range(300):
            await mem.put(f"d{i}", i, tier=Tier.VECTOR,
                          vector=rng.standard_normal(DIM).astype(np.float32))
        await mem.delete("d3")
        before = [[(h.key, h.score) for h in row] for row in await mem.search_batch(queries)]
    async with Memory.open(path=path, clock=clock) as mem:
        after = [[(h.key, h.score) for h in row] for row in await mem.search_batch(queries)]
        assert after == before
        assert all("d3" not in [k for k, _ in row] for row in after)


async def test_search_is_per_namespace_and_respects_ttl(mem: Memory, clock: ManualClock) -> None:
    a, b = mem.namespace("a"), mem.namespace("b")
    v = np.ones(DIM, dtype=np.float32)
    await a.put("doc", "A", tier=Tier.VECTOR, vector=v)
    await b.put("doc", "B", tier=Tier.VECTOR, vector=v)
    await mem.put("doc", "root", tier=Tier.VECTOR, vector=v, ttl=5)
    assert [(h.key, h.value) for h in await a.search(v)] == [("doc", "A")]
    assert [(h.key, h.value) for h in await b.search(v)] == [("doc", "B")]
    assert [(h.key, h.value) for h in await mem.search(v)] == [("doc", "root")]
    clock.advance(5)
    assert await mem.search(v) == []
    assert await mem.purge_expired() >= 1
    assert await mem.search(v) == [] and len(await a.search(v)) == 1


async def test_expired_items_not_purged_yet_do_not_take_places_in_the_top_k(
        mem: Memory, clock: ManualClock) -> None:
    """Top-k over the live items: expired ones the purger has not removed yet are skipped
    and the search looks further, so k live hits come back while k live items match."""
    v = np.ones(DIM, dtype=np.float32)
    for i in range(5):  # the nearest five expire
        await mem.put(f"near{i}", i, tier=Tier.VECTOR, vector=v, ttl=5)
    far = v.copy()
    far[0] = -1.0
    for i in range(3):
        await mem.put(f"far{i}", i, tier=Tier.VECTOR, vector=far + i)
    clock.advance(5)
    assert {h.key for h in await mem.search(v, k=1)} <= {"far0", "far1", "far2"}
    assert len(await mem.search(v, k=1)) == 1
    assert sorted(h.key for h in await mem.search(v, k=3)) == ["far0", "far1", "far2"]
    assert len(await mem.search(v, k=10)) == 3  # every live item, no more
    rows = await mem.search_batch([v, far], k=2)
    assert [len(row) for row in rows] == [2, 2]


async def test_min_score(mem: Memory) -> None:
    await mem.put("x", 1, tier=Tier.VECTOR, vector=[1.0, 0.0])
    await mem.put("y", 2, tier=Tier.VECTOR, vector=[0.0, 1.0])
    hits = await mem.search([1.0, 0.1], k=5, min_score=0.5)
    assert [h.key for h in hits] == ["x"]


@pytest.mark.parametrize("bad", [
    [float("nan"), 1.0, 2.0], [float("inf"), 1.0, 2.0], [1.0, 2.0], [[1.0, 2.0, 3.0]],
    ["a", "b", "c"], [], np.array([1, 2, 3], dtype=object), [0.0, 0.0, 0.0],
])
async def test_bad_vectors_are_refused_and_store_nothing(mem: Memory, bad: Any) -> None:
    await mem.put("ok", 1, tier=Tier.VECTOR, vector=[1.0, 2.0, 3.0])  # fixes dim 3
    with pytest.raises(InvalidArgumentError):
        await mem.put("bad", 2, tier=Tier.VECTOR, vector=bad)
    assert not await mem.exists("bad")
    with pytest.raises(InvalidArgumentError):
        await mem.search(bad)


async def test_vector_only_for_the_vector_tier(mem: Memory) -> None:
    with pytest.raises(InvalidArgumentError):
        await mem.put("k", 1, tier=Tier.PERSISTENT, vector=[1.0])
    with pytest.raises(InvalidArgumentError):
        await mem.put_many({"k": 1}, tier=Tier.VECTOR)
    with pytest.raises(InvalidArgumentError):
        await mem.search([1.0], k=0)


async def test_torch_vectors_are_accepted(mem: Memory) -> None:
    torch = pytest.importorskip("torch")
    await mem.put("t", "torch", tier=Tier.VECTOR, vector=torch.tensor([0.5, 0.5]))
    hits = await mem.search(torch.tensor([1.0, 1.0]))
    assert hits[0].key == "t" and hits[0].score == pytest.approx(1.0)
