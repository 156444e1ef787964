"""LangChain's own standard suites (unmodified) against SophiaLLMCache and SophiaStore, plus
what they do not cover: semantic hits and their limits, TTL, canonical keys shared between
caches, values through a serde, and the runnable example."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests import (
    AsyncCacheTestSuite,
    BaseStoreAsyncTests,
    BaseStoreSyncTests,
    SyncCacheTestSuite,
)

from sophia_memory import InvalidArgumentError, ManualClock, Memory, Tier
from sophia_memory.integrations.langchain import SophiaLLMCache, SophiaStore

ROOT = Path(__file__).resolve().parents[1]


class TestSyncCacheSuite(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> Iterator[SophiaLLMCache]:
        with SophiaLLMCache.open(path=str(tmp_path / "cache.db")) as cache:
            yield cache


class TestAsyncCacheSuite(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, tmp_path: Path) -> AsyncIterator[SophiaLLMCache]:
        async with Memory.open(path=str(tmp_path / "cache.db")) as mem:
            yield SophiaLLMCache(mem)


class TestSyncStoreSuite(BaseStoreSyncTests[bytes]):
    @pytest.fixture
    def kv_store(self, tmp_path: Path) -> Iterator[SophiaStore]:
        with SophiaStore.open(path=str(tmp_path / "store.db")) as store:
            yield store

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"bar", b"buzz"


class TestAsyncStoreSuite(BaseStoreAsyncTests[Any]):
    """On the SESSION tier, with values that need a serde (LangChain Documents)."""

    @pytest.fixture
    async def kv_store(self, tmp_path: Path) -> AsyncIterator[SophiaStore]:
        from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

        async with Memory.open(path=str(tmp_path / "store.db")) as mem:
            yield SophiaStore(mem, tier=Tier.SESSION, serde=JsonPlusSerializer())

    @pytest.fixture
    def three_values(self) -> tuple[Document, Document, Document]:
        return (Document(page_content="foo", metadata={"n": 1}), Document(page_content="bar"),
                Document(page_content="buzz", metadata={"tags": ["x"]}))


def _topic_embedder(dim: int = 16) -> Any:
    """Deterministic embeddings: one direction per topic word, so paraphrases sharing the
    topic words land close and other questions do not (what a real model does, made exact)."""
    topics = ("capital", "france", "bread", "bake")

    def embed(text: str) -> np.ndarray[Any, Any]:
        vec = np.zeros(dim, dtype=np.float32)
        words = text.lower().replace("?", " ").split()
        for i, topic in enumerate(topics):
            vec[i] = sum(w.startswith(topic) for w in words)
        vec[-1] = 0.05 * (len(words) % 3)  # a little per-text difference
        return vec

    return embed


def _chat_prompt(text: str) -> str:
    from langchain_core.load import dumps

    return dumps([HumanMessage(content=text)])


async def test_semantic_hit_reports_its_similarity_and_respects_the_threshold(
        tmp_path: Path) -> None:
    async with Memory.open(path=str(tmp_path / "s.db")) as mem:
        cache = SophiaLLMCache(mem, embed=_topic_embedder(), semantic=True)
        llm = "fake-chat-model---[('stop', None)]"
        answer = [ChatGeneration(message=AIMessage(content="Paris"))]
        await cache.aupdate(_chat_prompt("What is the capital of France?"), llm, answer)
        hit = await cache.alookup_hit(_chat_prompt("capital of France please?"), llm)
        assert hit is not None and hit.semantic and 0.9 <= hit.similarity < 1.0
        assert await cache.alookup(_chat_prompt("capital of France please?"), llm) == answer
        exact = await cache.alookup_hit(_chat_prompt("What is the capital of France?"), llm)
        assert exact is not None and not exact.semantic and exact.similarity == 1.0
        assert await cache.alookup(_chat_prompt("How do I bake bread?"), llm) is None
        # another model or a sampling model is never answered from a neighbour
        assert await cache.alookup(_chat_prompt("capital of France please?"), "other") is None
        hot = '{"kwargs": {"temperature": 0.7}}---[]'
        await cache.aupdate(_chat_prompt("What is the capital of France?"), hot, answer)
        assert await cache.alookup(_chat_prompt("capital of France please?"), hot) is None
        # without semantic=True the same cache answers exact calls only
        plain = SophiaLLMCache(mem, embed=_topic_embedder())
        assert await plain.alookup(_chat_prompt("capital of France please?"), llm) is None


async def test_entries_expire_and_keys_are_shared_by_every_cache_of_the_namespace(
        tmp_path: Path) -> None:
    clock = ManualClock()
    async with Memory.open(path=str(tmp_path / "t.db"), clock=clock) as mem:
        cache = SophiaLLMCache(mem, ttl=60)
        gens = [Generation(text="4", generation_info={"n": 1}), Generation(text="four")]
        await cache.aupdate("2+2?", "llm-a", gens)
        assert await SophiaLLMCache(mem).alookup("2+2?", "llm-a") == gens
        assert await SophiaLLMCache(mem, namespace="other").alookup("2+2?", "llm-a") is None
        hit = await cache.alookup_hit("2+2?", "llm-a")
        assert hit is not None and hit.key.startswith("cortex:")
        entry = await mem.namespace("langchain-llm").get_entry(hit.key)
        assert entry is not None and entry.expires_at is not None
        clock.advance(61)
        assert await cache.alookup("2+2?", "llm-a") is None


async def test_a_chat_model_reads_through_the_cache(tmp_path: Path) -> None:
    async with Memory.open(path=str(tmp_path / "m.db")) as mem:
        cache = SophiaLLMCache(mem)
        model = FakeListChatModel(responses=["first", "second"], cache=cache)
        assert (await model.ainvoke("hello")).content == "first"
        assert (await model.ainvoke("hello")).content == "first"  # from the cache
        assert (await model.ainvoke("bye")).content == "second"
        await cache.aclear()
        assert (await model.ainvoke("hello")).content == "first"  # the model again (cycles)


async def test_an_answer_the_memory_cannot_store_is_returned_not_cached(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Metadata holding a datetime: the model's answer reaches the caller (the call was
    paid for) and is not cached, with a warning, as LangChain's SQLiteCache does."""
    import datetime

    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    def answers() -> Iterator[AIMessage]:
        while True:
            yield AIMessage(content="Paris",
                            response_metadata={"created": datetime.datetime(2024, 1, 1)})

    async with Memory.open(path=str(tmp_path / "m.db")) as mem:
        cache = SophiaLLMCache(mem)
        model = GenericFakeChatModel(messages=answers(), cache=cache)
        with caplog.at_level("WARNING", logger="sophia_memory.integrations.langchain"):
            assert (await model.ainvoke("capital?")).content == "Paris"
        assert "LLM answer not cached: cannot store a value of type datetime" in caplog.text
        assert await mem.namespace("langchain-llm").keys(Tier.CORTEX) == []


async def test_every_generation_kind_round_trips_without_pickle(tmp_path: Path) -> None:
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk

    gens = [ChatGeneration(message=AIMessage(content="", tool_calls=[
                {"name": "f", "args": {"a": [1, 2]}, "id": "c1"}]), generation_info={"x": 1}),
            ChatGenerationChunk(message=AIMessageChunk(content="part")),
            GenerationChunk(text="chunk"), Generation(text="plain")]
    async with Memory.open(path=str(tmp_path / "g.db")) as mem:
        cache = SophiaLLMCache(mem)
        await cache.aupdate("p", "llm", gens)
        back = await SophiaLLMCache(mem).alookup("p", "llm")
        assert back == gens and [type(g) for g in back] == [type(g) for g in gens]
        hit = await cache.alookup_hit("p", "llm")
        assert hit is not None and all(isinstance(row, dict) for row in hit.value)


def test_arguments_are_checked(tmp_path: Path) -> None:
    from sophia_memory import integrations

    assert integrations.SophiaStore is SophiaStore  # reachable from the package, lazily
    with pytest.raises(InvalidArgumentError, match="embed"):
        SophiaLLMCache.open(path=str(tmp_path / "a.db"), semantic=True)
    with pytest.raises(InvalidArgumentError, match="VECTOR"):
        SophiaStore.open(path=str(tmp_path / "b.db"), tier=Tier.VECTOR)


async def test_sync_calls_on_the_loop_thread_say_what_to_do(tmp_path: Path) -> None:
    async with Memory.open(path=str(tmp_path / "l.db")) as mem:
        store = SophiaStore(mem)
        with pytest.raises(RuntimeError, match="async method"):
            store.mget(["a"])


@pytest.mark.slow
def test_the_cache_example_runs() -> None:
    """With the real all-MiniLM-L6-v2 model (about 15 s to load here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "langchain_cache.py")],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "repeated call: cache hit" in done.stdout
    assert "paraphrased call: semantic cache hit" in done.stdout
