"""SophiaCheckpointSaver against LangGraph's own conformance suite (every base and extended
capability) over the embedded default, the workflow tier, and Redis + SQLite; its synchronous
form under a real graph; what the suite does not check (hot reads from SESSION, concurrent
writes, head moves, TTL, serde, missing extra); and the runnable agent example."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypedDict

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph

from sophia_memory import ManualClock, Memory, MissingDependencyError, Tier
from sophia_memory.integrations.langgraph import SophiaCheckpointSaver

from .conftest import drop_prefix, real_redis_or_skip

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")
EVERY_CAPABILITY = {"put", "put_writes", "get_tuple", "list", "delete_thread",
                    "delete_for_runs", "copy_thread", "prune"}


async def _conformance(tmp_path: Path, **options: Any) -> None:
    tier = options.pop("saver_tier", Tier.PERSISTENT)
    made = iter(range(100))

    @checkpointer_test(name=f"sophia-{uuid.uuid4().hex[:8]}")
    async def factory() -> AsyncIterator[SophiaCheckpointSaver]:
        async with Memory.open(path=str(tmp_path / f"cp{next(made)}.db"), **options) as mem:
            yield SophiaCheckpointSaver(mem, tier=tier)

    report = await validate(factory)
    failures = {cap: r.failures for cap, r in report.results.items() if r.passed is not True}
    assert not failures
    assert {cap for cap, r in report.results.items() if r.detected} == EVERY_CAPABILITY
    assert report.passed_all_base() and report.conformance_level() == "FULL"


@pytest.mark.parametrize("tier", [Tier.PERSISTENT, Tier.WORKFLOW])
async def test_conformance_on_the_embedded_default(tmp_path: Path, tier: Tier) -> None:
    await _conformance(tmp_path, saver_tier=tier)


@pytest.mark.redis
async def test_conformance_with_session_on_redis(tmp_path: Path) -> None:
    client = await real_redis_or_skip(REDIS_URL)
    prefix = f"smlg:{uuid.uuid4().hex}:"
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}"
    try:
        await _conformance(tmp_path, tiers={Tier.SESSION: url})
        # the hot path went through Redis: promoted heads and rows are there
        assert [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()


@pytest.mark.snowflake
@pytest.mark.filterwarnings("ignore:Arrow output:UserWarning")
async def test_every_capability_with_persistent_on_emulated_snowflake(tmp_path: Path) -> None:
    """One pass over every capability (the full conformance run passes too, but takes about
    a minute on the emulator: each statement costs milliseconds there)."""
    pytest.importorskip("snowflake.connector")
    pytest.importorskip("fakesnow")
    from .snowflake_shim import emulated_snowflake

    url = "snowflake://tester:s3cret@acct-test/TESTDB/SOPHIA_AI_MEMORY"
    with emulated_snowflake():
        async with Memory.open(path=str(tmp_path / "sf.db"),
                               tiers={Tier.PERSISTENT: url}) as mem:
            assert "Snowflake" in mem.stats()["tiers"]["PERSISTENT"]["backend"]
            saver = SophiaCheckpointSaver(mem)
            first = await _put(saver, "sf", step=0, run_id="r1")
            await saver.aput_writes(first, [("ch", {"v": 1})], "task")
            second = await _put(saver, "sf", parent=first, step=1, run_id="r2")
            tup = await saver.aget_tuple(first)
            assert tup is not None and tup.pending_writes == [("task", "ch", {"v": 1})]
            listed = [t.config async for t in saver.alist(generate_config("sf"))]
            assert listed == [second, first]
            assert len([t async for t in saver.alist(None, filter={"step": 1})]) == 1
            await saver.acopy_thread("sf", "sf-copy")
            await saver.adelete_for_runs(["r2"])
            latest = await saver.aget_tuple(generate_config("sf-copy"))
            assert latest is not None and latest.config["configurable"]["checkpoint_id"] == \
                first["configurable"]["checkpoint_id"]
            await saver.aprune(["sf"], strategy="delete")
            await saver.adelete_thread("sf-copy")
            assert [t async for t in saver.alist(None)] == []


@pytest.fixture
async def mem(tmp_path: Path) -> AsyncIterator[Memory]:
    async with Memory.open(path=str(tmp_path / "lg.db")) as m:
        yield m


async def _put(saver: SophiaCheckpointSaver, thread: str, parent: dict[str, Any] | None = None,
               **meta: Any) -> dict[str, Any]:
    config = generate_config(thread)
    if parent is not None:
        config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
    cp = generate_checkpoint(channel_values={"x": meta.get("step", 0)},
                             channel_versions={"x": meta.get("step", 0) + 1})
    return dict(await saver.aput(config, cp, generate_metadata(**meta), {"x": 1}))


async def test_the_latest_checkpoint_of_a_hot_thread_is_served_from_session(
        mem: Memory) -> None:
    saver = SophiaCheckpointSaver(mem)
    await _put(saver, "hot", step=1)
    first = await saver.aget_tuple(generate_config("hot"))
    await mem.flush()  # the first read's promotion into SESSION
    durable = mem.stats()["tiers"]["PERSISTENT"]["hits"]
    for _ in range(5):
        again = await saver.aget_tuple(generate_config("hot"))
        assert again is not None and first is not None
        assert again.checkpoint == first.checkpoint
        assert again.checkpoint is not first.checkpoint  # decoded afresh: callers may mutate
    assert mem.stats()["tiers"]["PERSISTENT"]["hits"] == durable
    assert mem.stats()["tiers"]["SESSION"]["hits"] >= 10


async def test_concurrent_writes_of_parallel_tasks_are_all_kept(mem: Memory) -> None:
    saver = SophiaCheckpointSaver(mem)
    stored = await _put(saver, "fan-out")
    await asyncio.gather(*(saver.aput_writes(stored, [("ch", i), ("other", -i)], f"task-{i}",
                                             task_path=f"~{i % 3}") for i in range(20)))
    tup = await saver.aget_tuple(stored)
    assert tup is not None and tup.pending_writes is not None
    assert len(tup.pending_writes) == 40
    paths = [f"~{int(t.split('-')[1]) % 3}" for t, _, _ in tup.pending_writes]
    assert paths == sorted(paths)  # writes_sort_key order: task path first
    # the same writes through a fresh saver (nothing cached in the saver itself)
    again = await SophiaCheckpointSaver(mem).aget_tuple(generate_config("fan-out"))
    assert again is not None and again.pending_writes == tup.pending_writes


@pytest.mark.parametrize("writes_first", [True, False])
async def test_writes_racing_the_put_of_their_checkpoint_are_kept(mem: Memory,
                                                                  writes_first: bool) -> None:
    """LangGraph runs a step's aput_writes concurrently with the aput of the checkpoint they
    belong to (an interrupt's write may land first); the head must show them either way."""
    saver = SophiaCheckpointSaver(mem)
    first = await _put(saver, "race", step=0)
    cp = generate_checkpoint()
    config = generate_config("race", checkpoint_id=first["configurable"]["checkpoint_id"])
    target = generate_config("race", checkpoint_id=cp["id"])
    put = saver.aput(config, cp, generate_metadata(step=1), {})
    write = saver.aput_writes(target, [("__interrupt__", {"ask": "approve?"})], "task")
    await asyncio.gather(*((write, put) if writes_first else (put, write)))
    for tup in (await saver.aget_tuple(generate_config("race")),
                await SophiaCheckpointSaver(mem).aget_tuple(target)):
        assert tup is not None and tup.checkpoint["id"] == cp["id"]
        assert tup.pending_writes == [("task", "__interrupt__", {"ask": "approve?"})]


async def test_deleting_the_latest_run_moves_the_head_back(mem: Memory) -> None:
    saver = SophiaCheckpointSaver(mem)
    first = await _put(saver, "t", step=0, run_id="run-1")
    await saver.aput_writes(first, [("ch", "kept")], "task")
    await _put(saver, "t", parent=first, step=1, run_id="run-2")
    await saver.adelete_for_runs(["run-2"])
    latest = await saver.aget_tuple(generate_config("t"))
    assert latest is not None and latest.config == first | {}
    assert latest.pending_writes == [("task", "ch", "kept")]
    await saver.adelete_for_runs(["run-1"])
    assert await saver.aget_tuple(generate_config("t")) is None
    assert [t async for t in saver.alist(None)] == []


async def test_list_over_every_thread_and_filters(mem: Memory) -> None:
    saver = SophiaCheckpointSaver(mem)
    a = await _put(saver, "a", step=0, source="input")
    await _put(saver, "a", parent=a, step=1, source="loop", score=7)
    await _put(saver, "b", step=0, source="loop")
    everything = [t async for t in saver.alist(None)]
    assert len(everything) == 3
    loops = [t.config["configurable"]["thread_id"]
             async for t in saver.alist(None, filter={"source": "loop"})]
    assert sorted(loops) == ["a", "b"]
    assert len([t async for t in saver.alist(None, filter={"score": 7}, limit=5)]) == 1
    assert len([t async for t in saver.alist(None, limit=2)]) == 2
    await saver.adelete_thread("a")
    assert [t.config["configurable"]["thread_id"] async for t in saver.alist(None)] == ["b"]


async def test_rows_expire_with_ttl(tmp_path: Path) -> None:
    clock = ManualClock()
    async with Memory.open(path=str(tmp_path / "ttl.db"), clock=clock) as mem:
        saver = SophiaCheckpointSaver(mem, ttl=60)
        await _put(saver, "short")
        assert await saver.aget_tuple(generate_config("short")) is not None
        clock.advance(61)
        assert await saver.aget_tuple(generate_config("short")) is None


async def test_values_go_through_the_serde(mem: Memory) -> None:
    calls: list[str] = []

    class Spy(JsonPlusSerializer):
        def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
            kind, data = super().dumps_typed(obj)
            calls.append(kind)
            return kind, data

    saver = SophiaCheckpointSaver(mem, serde=Spy())
    stored = await _put(saver, "s")
    await saver.aput_writes(stored, [("ch", {"v": b"\x00"})], "task")
    assert calls and "pickle" not in calls
    tup = await saver.aget_tuple(stored)
    assert tup is not None and tup.pending_writes == [("task", "ch", {"v": b"\x00"})]


def test_a_missing_langgraph_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sophia_memory.integrations.langgraph")
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.base", None)
    with pytest.raises(MissingDependencyError, match=r"sophia-memory\[langgraph\]"):
        importlib.import_module("sophia_memory.integrations.langgraph")


class _State(TypedDict):
    n: int


def _graph(saver: SophiaCheckpointSaver) -> Any:
    builder = StateGraph(_State)
    builder.add_node("inc", lambda s: {"n": s["n"] + 1})
    builder.add_node("double", lambda s: {"n": s["n"] * 2})
    builder.add_edge(START, "inc")
    builder.add_edge("inc", "double")
    builder.add_edge("double", END)
    return builder.compile(checkpointer=saver)


def test_the_synchronous_api_under_a_real_graph(tmp_path: Path) -> None:
    with SophiaCheckpointSaver.open(path=str(tmp_path / "sync.db")) as saver:
        graph = _graph(saver)
        config = {"configurable": {"thread_id": "sync-1"}}
        assert graph.invoke({"n": 1}, {**config, "metadata": {"run_id": "run-a"}}) == {"n": 4}
        assert graph.get_state(config).values == {"n": 4}
        history = list(graph.get_state_history(config))
        assert [s.values.get("n") for s in history] == [4, 2, 1, None]
        assert len(list(saver.list(config, filter={"source": "loop"}))) == 3
        saver.copy_thread("sync-1", "sync-2")
        assert graph.get_state({"configurable": {"thread_id": "sync-2"}}).values == {"n": 4}
        saver.prune(["sync-1"])
        assert len(list(saver.list(config))) == 1
        assert {t.metadata.get("run_id") for t in saver.list(None)} == {"run-a"}
        saver.delete_for_runs(["run-a"])  # both threads' checkpoints
        assert list(saver.list(None)) == []
        saver.delete_thread("sync-2")
        assert saver.get_tuple(config) is None and list(saver.list(None)) == []


async def test_sync_calls_on_the_loop_thread_say_what_to_do(mem: Memory) -> None:
    saver = SophiaCheckpointSaver(mem)
    with pytest.raises(RuntimeError, match="aget_tuple"):
        saver.get_tuple(generate_config("x"))
    with pytest.raises(ValueError, match="strategy"):
        await saver.aprune(["x"], strategy="keep_some")


@pytest.mark.slow
def test_the_agent_example_resumes_in_a_second_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "langgraph_agent.py"),
                           "--path", str(tmp_path / "agent.db")],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "process 1: interrupted before the tool call get_weather" in out
    assert "process 2 (pid" in out and "pending tool call: get_weather" in out
    assert "waiting interrupt(s) for ['get_weather']" in out
    assert "final answer: It is 21 degrees and sunny in Paris." in out


def test_a_saver_from_open_serves_async_calls_from_any_loop(tmp_path: Path) -> None:
    """An adapter from open() owns its memory's loop: async calls from the caller's own
    loops (one asyncio.run after another, as a notebook or a test does) run there, so the
    memory's background work stays on that one loop and survives the callers' loops."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver = SophiaCheckpointSaver.open(path=str(tmp_path / "m.db"))
    try:
        base: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

        async def step(i: int) -> tuple[int, list[int]]:
            await saver.aput(base, empty_checkpoint(), {"step": i}, {})
            listed = [t.metadata["step"] async for t in saver.alist(base)]  # type: ignore[typeddict-item]
            found = await saver.aget_tuple(base)
            assert found is not None
            return found.metadata["step"], listed  # type: ignore[typeddict-item]

        assert [asyncio.run(step(i)) for i in range(3)] == [(0, [0]), (1, [1, 0]),
                                                          (2, [2, 1, 0])]
        worker = saver._bridge.memory._core.promoter.worker
        assert worker is not None and worker.get_loop() is saver._bridge.loop
        assert not worker.done()  # still serving: no caller's closed loop took it down
        assert saver.get_tuple(base).metadata["step"] == 2  # type: ignore[union-attr,typeddict-item]
    finally:
        saver.close()


async def test_a_filter_on_none_matches_a_missing_metadata_key(mem: Memory) -> None:
    """As in LangGraph's InMemorySaver and SqliteSaver: {"k": None} matches a checkpoint
    whose metadata has no "k" (or "k": None), not one whose "k" holds a value."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver = SophiaCheckpointSaver(mem)
    base: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    for metadata in ({"n": 1}, {"n": 2, "k": None}, {"n": 3, "k": "v"}):
        await saver.aput(base, empty_checkpoint(), metadata, {})  # type: ignore[arg-type]
    found = [t.metadata["n"] async for t in saver.alist(None, filter={"k": None})]  # type: ignore[typeddict-item]
    assert sorted(found) == [1, 2]


async def test_putting_the_head_again_keeps_its_pending_writes(mem: Memory) -> None:
    """As InMemorySaver: the same checkpoint put again (same id) keeps the writes stored for
    it, read as the latest and by id."""
    from langgraph.checkpoint.base import empty_checkpoint

    saver = SophiaCheckpointSaver(mem)
    base: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    stored = await saver.aput(base, checkpoint, {"v": 1}, {})  # type: ignore[arg-type]
    await saver.aput_writes(stored, [("x", 1)], "task")
    await saver.aput(base, checkpoint, {"v": 2}, {})  # type: ignore[arg-type]
    latest, by_id = await saver.aget_tuple(base), await saver.aget_tuple(stored)
    assert latest is not None and by_id is not None
    assert latest.pending_writes == by_id.pending_writes == [("task", "x", 1)]
    assert latest.metadata["v"] == 2  # type: ignore[typeddict-item]
