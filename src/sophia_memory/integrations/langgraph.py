"""LangGraph checkpoints in a :class:`~sophia_memory.Memory`: :class:`SophiaCheckpointSaver`.

>>> from sophia_memory import Memory
>>> from sophia_memory.integrations.langgraph import SophiaCheckpointSaver
>>> async with Memory.open() as mem:                                 # doctest: +SKIP
...     graph = builder.compile(checkpointer=SophiaCheckpointSaver(mem))
...     await graph.ainvoke(inputs, {"configurable": {"thread_id": "t-1"}})

A checkpointer implementing every capability LangGraph defines (put, put_writes, get_tuple,
list with metadata filters, delete_thread, and the extended copy_thread, delete_for_runs and
prune), in async and synchronous form. Values go through the saver's ``serde`` (LangGraph's
``JsonPlusSerializer`` by default: msgpack, never pickle); an ``EncryptedSerializer`` works too.

**Where things live.** Each thread has a namespace view of its own under ``namespace`` (default
``"langgraph"``), and in it, for each checkpoint namespace ``ns``:

* ``c/<ns>/<checkpoint id>``: one row per checkpoint, self-contained: the checkpoint with its
  channel values and its metadata (each one serde payload), the parent's id and the run id;
* ``w/<ns>/<checkpoint id>``: the checkpoint's pending writes, in ``writes_sort_key`` order;
* ``h/<ns>``: the head: the id of the latest checkpoint and a copy of its pending writes.

``aput`` writes the row and the head in one ``put_many`` (one transaction on SQL tiers);
``aput_writes`` writes the writes row and, for the head checkpoint, the head. Rows are
self-contained, so a read is one key and copy, prune and delete never have to re-link blobs;
the price is that a channel that did not change is stored again with the next checkpoint
(LangGraph's own savers store one blob per channel version instead).

**Which tier.** Durable rows go to ``Tier.PERSISTENT`` by default (``tier=`` takes any tier).
Checkpoints are immutable records addressed by id, and deleting single checkpoints
(``delete_for_runs``, ``prune``) is part of the contract. ``Tier.WORKFLOW`` would append a
version on every overwrite of a head or writes row, drop checkpoints silently past
``workflow_retain`` versions of a key, and cost more per write (a put to a tier clears the
copies in every tier above it; WORKFLOW has three slower tiers above, PERSISTENT one). Its
optimistic concurrency would guard against two processes writing one thread at once, which
LangGraph does not do: one run owns a thread at a time. Within a process the saver serialises
the writers of each (thread, namespace), so concurrent ``aput_writes`` of parallel tasks never
lose a write.

**Hot threads.** The latest checkpoint is found through the head, and both the head and the row
are ordinary memory keys: the first read of a thread copies them into ``Tier.SESSION`` (the
memory's promotion), after which ``aget_tuple`` of the latest checkpoint is two in-process
hits and one serde decode (a Redis hit each, when SESSION is on Redis). A write replaces the
head and so drops its SESSION copy.

**Threads and runs.** ``list(None)`` and ``delete_for_runs`` need to find threads: the saver
keeps an index of thread ids and one of (run id, thread) pairs beside the threads, written the
first time this saver writes a thread or a run. ``delete_thread`` removes a thread from the
index; a run index entry whose checkpoints are gone is harmless and goes with
``delete_for_runs``. The latest checkpoint is the one put last (LangGraph's ids grow, so it is
also the greatest id).
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from ..errors import MissingDependencyError
from ..memory import Memory
from ..tiers import Tier
from ._bridge import Bridge, ClosesBridge, name_for, on_memory_loop, on_memory_loop_iter

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("langgraph-checkpoint", "langgraph",
                                 "sophia_memory.integrations.langgraph") from exc

__all__ = ["SophiaCheckpointSaver"]

_CHUNK = 128  # keys per get_many / put_many in list, copy and delete
_EARLY_MAX = 1024  # writes remembered for checkpoints that were not the head yet
_STRATEGIES = ("keep_latest", "delete")


def _esc(text: str) -> str:
    """``text`` with ``%`` and ``/`` escaped, so ``/`` can separate the parts of a key."""
    if "%" in text or "/" in text:
        return text.replace("%", "%25").replace("/", "%2F")
    return text


def _unesc(text: str) -> str:
    if "%" in text:
        return text.replace("%2F", "/").replace("%25", "%")
    return text


def _head_key(ns: str) -> str:
    return f"h/{_esc(ns)}"


def _row_key(ns: str, checkpoint_id: str) -> str:
    return f"c/{_esc(ns)}/{_esc(checkpoint_id)}"


def _parse_row_key(key: str) -> tuple[str, str]:
    """``(escaped ns, checkpoint id)`` of a ``c/`` key."""
    ns, _, cid = key[2:].rpartition("/")
    return ns, _unesc(cid)


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                             "checkpoint_id": checkpoint_id}}


class SophiaCheckpointSaver(ClosesBridge, BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over a :class:`Memory` (see the module docstring for layout).

    ``SophiaCheckpointSaver(memory)`` uses an open memory; its async methods run on the
    memory's loop and its synchronous ones work from other threads while that loop runs.
    ``SophiaCheckpointSaver.open(**memory_options)`` opens a memory of its own on a private
    loop thread, for synchronous programs (``graph.invoke``); close it (or use ``with``).

    ``tier``: where rows are durable (default ``Tier.PERSISTENT``). ``ttl``: seconds every
    row lives (None: until deleted). ``namespace``: the memory namespace the saver keeps its
    threads and indexes in. ``serde``: LangGraph's serializer protocol.
    """

    def __init__(self, memory: Memory, *, serde: SerializerProtocol | None = None,
                 tier: Tier = Tier.PERSISTENT, ttl: float | None = None,
                 namespace: str = "langgraph") -> None:
        self._setup(Bridge(memory), serde=serde, tier=tier, ttl=ttl, namespace=namespace)

    def _setup(self, bridge: Bridge, *, serde: SerializerProtocol | None, tier: Tier,
               ttl: float | None, namespace: str) -> None:
        super().__init__(serde=serde)
        self._bridge = bridge
        self.memory = bridge.memory
        self.tier = tier
        self.ttl = ttl
        self._root = bridge.memory.namespace(namespace)
        self._threads = self._root.namespace("index:threads")
        #: One lock per (thread, namespace) in use; they vanish with their last user.
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = \
            weakref.WeakValueDictionary()
        #: Writes stored for a checkpoint before it became the head: LangGraph runs a step's
        #: ``aput_writes`` concurrently with the ``aput`` of the checkpoint they belong to, so
        #: they may come first; the ``aput`` then starts the head with them.
        self._early: OrderedDict[tuple[str, str, str], list[list[Any]]] = OrderedDict()
        #: The head each (thread, namespace) was last given here: an ``aput`` of the same
        #: checkpoint again keeps the writes stored for it (read back only then).
        self._heads: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._indexed_threads: set[str] = set()
        self._indexed_runs: set[tuple[str, str]] = set()

    @classmethod
    def open(cls, *, serde: SerializerProtocol | None = None, tier: Tier = Tier.PERSISTENT,
             ttl: float | None = None, namespace: str = "langgraph",
             **memory_options: Any) -> SophiaCheckpointSaver:
        """A saver with a memory of its own (``Memory.open(**memory_options)``) on a private
        loop thread: for synchronous code. :meth:`close` closes both."""
        saver = cls.__new__(cls)
        saver._setup(Bridge.open(memory_options), serde=serde, tier=tier, ttl=ttl,
                     namespace=namespace)
        return saver

    # -- helpers ---------------------------------------------------------------------------------

    def _thread(self, thread_id: str) -> Memory:
        return self._root.namespace(name_for("t", str(thread_id)))

    def _lock(self, thread_id: str, ns: str) -> asyncio.Lock:
        key = (thread_id, ns)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _tuple(self, thread_id: str, row: dict[str, Any],
               writes: Sequence[Sequence[Any]]) -> CheckpointTuple:
        loads = self.serde.loads_typed
        ns, parent = row["ns"], row["p"]
        checkpoint: Checkpoint = loads(tuple(row["cp"]))
        return CheckpointTuple(
            config=_config(thread_id, ns, row["id"]),
            checkpoint=checkpoint,
            metadata=loads(tuple(row["md"])),
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=[(w[0], w[2], loads((w[3], w[4]))) for w in writes],
        )

    async def _index(self, thread_id: str, run_id: str | None) -> None:
        """Note the thread (and the run) in the indexes, once per saver."""
        thread_id = str(thread_id)
        if thread_id not in self._indexed_threads:
            await self._threads.put(name_for("t", thread_id), thread_id, tier=self.tier,
                                    ttl=self.ttl)
            self._indexed_threads.add(thread_id)
        if run_id and (run_id, thread_id) not in self._indexed_runs:
            runs = self._root.namespace(name_for("r", run_id))
            await runs.put(name_for("t", thread_id), thread_id, tier=self.tier, ttl=self.ttl)
            self._indexed_runs.add((run_id, thread_id))

    async def _rows(self, view: Memory, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for i in range(0, len(keys), _CHUNK):
            found.update(await view.get_many(keys[i:i + _CHUNK]))
        return found

    # -- writes ----------------------------------------------------------------------------------

    @on_memory_loop
    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions,
                   ) -> RunnableConfig:
        """Store ``checkpoint`` (with all its channel values) as the thread's latest."""
        conf = config["configurable"]
        thread_id = conf["thread_id"]
        ns = conf.get("checkpoint_ns", "")
        cid = checkpoint["id"]
        stored: dict[str, Any] = dict(checkpoint)
        versions = checkpoint["channel_versions"]
        values = checkpoint["channel_values"]
        if any(k not in versions for k in values):  # as LangGraph's savers load them
            stored["channel_values"] = {k: v for k, v in values.items() if k in versions}
        meta = get_checkpoint_metadata(config, metadata)
        run = meta.get("run_id")
        run_id = None if run is None else str(run)
        dumps = self.serde.dumps_typed
        row = {"id": cid, "ns": ns, "p": conf.get("checkpoint_id"),
               "run": run_id,
               "cp": list(dumps(stored)), "md": list(dumps(meta))}
        view = self._thread(thread_id)
        async with self._lock(thread_id, ns):
            early = self._early.pop((thread_id, ns, cid), None)
            if early is None:
                early = []
                if self._heads.get((thread_id, ns)) == cid:  # the head put again
                    head = await view.get(_head_key(ns))
                    if head is not None and head["id"] == cid:
                        early = head["w"]
            await view.put_many({_row_key(ns, cid): row,
                                 _head_key(ns): {"id": cid, "w": early}},
                                tier=self.tier, ttl=self.ttl)
            self._heads[(thread_id, ns)] = cid
            self._heads.move_to_end((thread_id, ns))
            if len(self._heads) > _EARLY_MAX:
                self._heads.popitem(last=False)
        await self._index(thread_id, run_id)
        return _config(thread_id, ns, cid)

    @on_memory_loop
    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        """Store a task's writes for the checkpoint ``config`` names. A regular write already
        stored for (task, index) is kept; special ones (error, interrupt, ...) replace."""
        conf = config["configurable"]
        thread_id = conf["thread_id"]
        ns = conf.get("checkpoint_ns", "")
        cid = conf["checkpoint_id"]
        view = self._thread(thread_id)
        head_key, writes_key = _head_key(ns), f"w/{_esc(ns)}/{_esc(cid)}"
        async with self._lock(thread_id, ns):
            head = await view.get(head_key)
            at_head = head is not None and head["id"] == cid
            current = head["w"] if at_head else await view.get(writes_key, ())
            merged = self._merge(current, writes, task_id, task_path)
            if merged is None:
                return
            items: dict[str, Any] = {writes_key: merged}
            if at_head:
                items[head_key] = {"id": cid, "w": merged}
            await view.put_many(items, tier=self.tier, ttl=self.ttl)
            if not at_head:  # perhaps the checkpoint's own aput is still to come
                self._early[(thread_id, ns, cid)] = merged
                self._early.move_to_end((thread_id, ns, cid))
                if len(self._early) > _EARLY_MAX:
                    self._early.popitem(last=False)

    def _merge(self, current: Sequence[Sequence[Any]], writes: Sequence[tuple[str, Any]],
               task_id: str, task_path: str) -> list[list[Any]] | None:
        """``current`` with ``writes`` added, in ``writes_sort_key`` order; None if unchanged."""
        by_key = {(w[0], w[1]): list(w) for w in current}
        changed = False
        dumps = self.serde.dumps_typed
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            if idx >= 0 and (task_id, idx) in by_key:
                continue
            kind, payload = dumps(value)
            by_key[(task_id, idx)] = [task_id, idx, channel, kind, payload, task_path]
            changed = True
        if not changed:
            return None
        return sorted(by_key.values(), key=lambda w: (w[5], w[0], w[1]))

    # -- reads -----------------------------------------------------------------------------------

    @on_memory_loop
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the thread's latest in its namespace."""
        conf = config["configurable"]
        thread_id = conf["thread_id"]
        ns = conf.get("checkpoint_ns", "")
        view = self._thread(thread_id)
        cid = get_checkpoint_id(config)
        if cid is None:
            head = await view.get(_head_key(ns))
            if head is None:
                return None
            row = await view.get(_row_key(ns, head["id"]))
            writes = head["w"]
        else:
            writes_key = f"w/{_esc(ns)}/{_esc(cid)}"
            found = await view.get_many([_row_key(ns, cid), writes_key])
            row = found.get(_row_key(ns, cid))
            writes = found.get(writes_key, ())
        return None if row is None else self._tuple(thread_id, row, writes)

    @on_memory_loop_iter
    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace, when it names one;
        and only its checkpoint, when it names one), or of every thread for None; whose
        metadata has every ``filter`` item; older than ``before``; at most ``limit``."""
        if limit is not None and limit <= 0:
            return
        if config is None:
            thread_ids = await self._all_threads()
            ns = only = None
        else:
            conf = config["configurable"]
            thread_ids = [conf["thread_id"]]
            ns = conf.get("checkpoint_ns")
            only = get_checkpoint_id(config)
        before_id = get_checkpoint_id(before) if before else None
        left = limit
        for thread_id in thread_ids:
            async for tup in self._list_thread(thread_id, ns, only, before_id, filter):
                yield tup
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return

    async def _all_threads(self) -> list[str]:
        names = await self._threads.keys(self.tier)
        found = await self._rows(self._threads, names)
        return [found[n] for n in names if n in found]

    async def _list_thread(self, thread_id: str, ns: str | None, only: str | None,
                           before_id: str | None, meta_filter: dict[str, Any] | None,
                           ) -> AsyncIterator[CheckpointTuple]:
        view = self._thread(thread_id)
        keys = await view.keys(self.tier)
        present = set(keys)
        want_ns = None if ns is None else _esc(ns)
        rows: list[tuple[str, str]] = []
        for key in keys:
            if not key.startswith("c/"):
                continue
            key_ns, cid = _parse_row_key(key)
            if ((want_ns is not None and key_ns != want_ns) or (only and cid != only)
                    or (before_id and cid >= before_id)):
                continue
            rows.append((cid, key))
        rows.sort(reverse=True)
        loads = self.serde.loads_typed
        for i in range(0, len(rows), _CHUNK):
            chunk = rows[i:i + _CHUNK]
            wanted = [k for _, k in chunk]
            wanted += [w for _, k in chunk if (w := "w" + k[1:]) in present]
            found = await view.get_many(wanted)
            for _, key in chunk:
                row = found.get(key)
                if row is None:
                    continue  # deleted meanwhile
                if meta_filter:
                    meta = loads(tuple(row["md"]))
                    # a missing key reads as None, as in LangGraph's own savers
                    if any(meta.get(k) != v for k, v in meta_filter.items()):
                        continue
                yield self._tuple(thread_id, row, found.get("w" + key[1:], ()))

    # -- maintenance -----------------------------------------------------------------------------

    @on_memory_loop
    async def adelete_thread(self, thread_id: str) -> None:
        """Remove every checkpoint and write of ``thread_id`` (all namespaces)."""
        view = self._thread(thread_id)
        keys = await view.keys(self.tier)
        for i in range(0, len(keys), _CHUNK):
            await view.delete_many(keys[i:i + _CHUNK])
        await self._threads.delete(name_for("t", str(thread_id)))
        self._indexed_threads.discard(str(thread_id))

    @on_memory_loop
    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, write and head of one thread into another (same ids)."""
        source, target = self._thread(source_thread_id), self._thread(target_thread_id)
        keys = await source.keys(self.tier)
        if not keys:
            return
        runs: set[str] = set()
        for i in range(0, len(keys), _CHUNK):
            found = await source.get_many(keys[i:i + _CHUNK])
            if found:
                await target.put_many(found, tier=self.tier, ttl=self.ttl)
            runs.update(row["run"] for k, row in found.items()
                        if k.startswith("c/") and row.get("run"))
        await self._index(target_thread_id, None)
        for run_id in sorted(runs):
            await self._index(target_thread_id, run_id)

    @on_memory_loop
    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep only the latest checkpoint (and its writes) of each namespace
        of each thread; ``delete``: remove the threads. Rows are self-contained, so the kept
        checkpoint needs none of the removed ones."""
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown prune strategy {strategy!r}; use one of {_STRATEGIES}")
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
                continue
            view = self._thread(thread_id)
            keys = await view.keys(self.tier)
            heads = await self._rows(view, [k for k in keys if k.startswith("h/")])
            latest: dict[str, str] = {k[2:]: head["id"] for k, head in heads.items()}
            for key in keys:  # a namespace without a head keeps its greatest id
                if key.startswith("c/"):
                    key_ns, cid = _parse_row_key(key)
                    if f"h/{key_ns}" not in heads and cid > latest.get(key_ns, ""):
                        latest[key_ns] = cid
            doomed = [k for k in keys if k[:2] in ("c/", "w/")
                      and _parse_row_key(k)[1] != latest.get(_parse_row_key(k)[0])]
            for i in range(0, len(doomed), _CHUNK):
                await view.delete_many(doomed[i:i + _CHUNK])

    @on_memory_loop
    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints (and their writes) whose metadata names one of ``run_ids``,
        in every thread and namespace. A head left pointing at a removed checkpoint moves to
        the newest remaining one of its namespace."""
        for run in run_ids:
            run_id = str(run)
            runs = self._root.namespace(name_for("r", run_id))
            names = await runs.keys(self.tier)
            found = await self._rows(runs, names)
            for thread_id in sorted(set(found.values())):
                await self._delete_run(thread_id, run_id)
            for i in range(0, len(names), _CHUNK):
                await runs.delete_many(names[i:i + _CHUNK])
            self._indexed_runs = {p for p in self._indexed_runs if p[0] != run_id}

    async def _delete_run(self, thread_id: str, run_id: str) -> None:
        view = self._thread(thread_id)
        keys = await view.keys(self.tier)
        rows = await self._rows(view, [k for k in keys if k.startswith("c/")])
        doomed = {k for k, row in rows.items() if row.get("run") == run_id}
        if not doomed:
            return
        present = set(keys)
        heads = await self._rows(view, [k for k in keys if k.startswith("h/")])
        moves: dict[str, Any] = {}
        gone: list[str] = []
        for head_key, head in heads.items():
            key_ns = head_key[2:]
            if f"c/{key_ns}/{_esc(head['id'])}" not in doomed:
                continue
            left = sorted((_parse_row_key(k)[1] for k in rows
                           if k not in doomed and _parse_row_key(k)[0] == key_ns), reverse=True)
            if not left:
                gone.append(head_key)
                continue
            writes_key = f"w/{key_ns}/{_esc(left[0])}"
            writes = await view.get(writes_key, []) if writes_key in present else []
            moves[head_key] = {"id": left[0], "w": writes}
        if moves:
            await view.put_many(moves, tier=self.tier, ttl=self.ttl)
        doomed_writes = ["w" + k[1:] for k in doomed if "w" + k[1:] in present]
        dropped = [*gone, *sorted(doomed), *doomed_writes]
        for i in range(0, len(dropped), _CHUNK):
            await view.delete_many(dropped[i:i + _CHUNK])

    # -- synchronous forms -------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._bridge.run(self.aget_tuple(config))

    def list(self, config: RunnableConfig | None, *,
             filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None,
             limit: int | None = None) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before,
                                                limit=limit)]

        yield from self._bridge.run(collect())

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        return self._bridge.run(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        self._bridge.run(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._bridge.run(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._bridge.run(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._bridge.run(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._bridge.run(self.aprune(thread_ids, strategy=strategy))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as LangGraph's own savers make them: a zero-padded counter (ordered as
        strings) plus a random tail, so versions made on forks of one checkpoint differ."""
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"
